//! Deleting what the source lacks, with a guard against mass deletion.
//!
//! Entries arrive depth first, and within a directory sorted bytewise, once each. The receiver
//! keeps one [`DirFrame`] per directory level on the way from the root to the current entry,
//! each with the directory's sorted listing on the target, taken when the first entry inside it
//! arrives (or when the stream leaves it, if none does), and a cursor: the names of the listing
//! that the stream passes without sending are the *candidates* for deletion. So memory per level
//! is the listing alone, however many names the directory holds and whatever the sender sends
//! (a name out of order ends the session). Nothing is deleted until the end of the session:
//! only then is the total known, and the guard refuses to delete more than half of the target's
//! entries (an empty or wrong source) unless the session allows it. Temporary files that earlier
//! interrupted sessions left are removed as directories close, with or without `--no-delete`,
//! except the partial files this session resumes ([`Deletions::claim`]): only files proven to be
//! mover's ([`reserved::is_leftover`]). Other names of the generated forms are neither counted
//! nor deleted (no source can send them); every other name, `.mover-tmp-notes` included, is an
//! entry like any other. `lost+found` at the root is file-system furniture
//! ([`reserved::is_furniture`]): neither counted nor deleted.
//! A candidate that is, or holds, a mount point is kept and reported: the walks that count and
//! delete never cross into another file system ([`confine::MountPoint`]).
//! Entries the session's exclude patterns match are never deleted, nor anything they match inside
//! a directory that goes ([`spare`]), as rsync without `--delete-excluded`.
//!
//! In a dry run nothing is removed: the guard is applied all the same, and each deletion is
//! only reported. A directory that a dry run would create has no listing to walk: it is marked
//! [`Deletions::absent`], and its listing is empty.

mod spare;

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::confine;
use crate::exclude::Excludes;
use crate::progress::{Change, ChangeAction, ChangeKind, Differs};
use crate::reserved;

/// One directory the stream is inside of.
pub(super) struct DirFrame {
    path: Vec<u8>,
    /// The last name the stream sent in this directory: the next must sort after it.
    last: Option<Vec<u8>>,
    /// The directory's names on the target, its identity then, and how many of the names the
    /// stream has passed; `None` until the first entry inside it arrives.
    listing: Option<Listing>,
    /// The handle the receiver opened to check the directory's entries, kept for the entries
    /// and for listing (only for the first [`KEPT_DEPTH`] levels: one descriptor per level).
    dir: Option<Arc<OwnedFd>>,
    /// Not on the target (a dry run does not create it): its listing is empty.
    absent: bool,
}

struct Listing {
    names: confine::Names,
    identity: Identity,
    passed: usize,
    /// Generated temporary names of other sessions found in the listing, less those this
    /// session claims; removed if they prove to be mover's leftovers.
    stale: HashSet<Vec<u8>>,
    /// Names the exclude patterns match: never deleted.
    excluded: HashSet<Vec<u8>>,
}

impl DirFrame {
    fn new(path: Vec<u8>) -> Self {
        DirFrame { path, last: None, listing: None, dir: None, absent: false }
    }

    fn shown(&self) -> String {
        if self.path.is_empty() { ".".to_owned() } else { confine::display_bytes(&self.path) }
    }
}

/// Directory levels whose handles are kept until they close; deeper ones are opened again.
const KEPT_DEPTH: usize = 64;

/// Paths of the target a mass-delete refusal names.
const SAMPLE: usize = 10;

/// Why the deletions were not done.
#[derive(Debug, thiserror::Error)]
pub enum DeletionError {
    /// Over half of the target would go.
    #[error(
        "refusing to delete {deleted} of the target's {total} entries (more than half): is the source right? \
         Nothing was deleted: this session allows no mass deletion. It would delete {}", sample_text(sample, *more)
    )]
    MassDelete {
        /// Entries that would be deleted.
        deleted: u64,
        /// Entries on the target.
        total: u64,
        /// The first paths that would be deleted (a directory with what is beneath it).
        sample: Vec<String>,
        /// Paths that would be deleted besides the sample.
        more: u64,
    },
    /// The peer sent a name twice or out of order (a well-behaved sender never does).
    #[error("`{path}` was sent twice or out of order (names in a directory must come sorted, once each)")]
    Duplicate {
        /// Path relative to the root.
        path: String,
    },
    /// A directory was moved or replaced on the target while the session ran (not by us).
    #[error(
        "directory `{path}` was replaced on the target during the copy; nothing was deleted: \
         run the copy again once nothing else changes the target"
    )]
    Replaced {
        /// Path relative to the root.
        path: String,
    },
    /// A file operation failed.
    #[error("cannot delete or list `{path}`")]
    Io {
        /// Path relative to the root.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// `` `a`, `b/` and 3 more ``.
fn sample_text(sample: &[String], more: u64) -> String {
    let mut text = sample.iter().map(|path| format!("`{path}`")).collect::<Vec<_>>().join(", ");
    if more > 0 {
        text = format!("{text} and {more} more");
    }
    text
}

/// A directory's device and inode.
pub(super) type Identity = (u64, u64);

/// Tracks candidates for deletion during a session.
pub(super) struct Deletions {
    enabled: bool,
    session_prefix: Vec<u8>,
    frames: Vec<DirFrame>,
    /// Directory, its device and inode when it was listed, and the name to delete.
    candidates: Vec<(Vec<u8>, Identity, Vec<u8>)>,
    listed: u64,
    /// Candidates kept because a file system is mounted at or below them, as warnings.
    kept_mounts: Vec<String>,
    /// Report, do not remove (see the module doc).
    dry_run: bool,
    excludes: Excludes,
}

pub(super) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut path = parent.to_vec();
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

impl Deletions {
    pub(super) fn new(enabled: bool, session: &str) -> Self {
        Deletions {
            enabled,
            session_prefix: reserved::session_prefix(session),
            frames: vec![DirFrame::new(Vec::new())],
            candidates: Vec::new(),
            listed: 0,
            kept_mounts: Vec::new(),
            dry_run: false,
            excludes: Excludes::default(),
        }
    }

    /// A dry run: [`Self::finish`] removes nothing, and leftovers stay.
    pub(super) fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// The directory just entered is not on the target (a dry run would create it): nothing
    /// in it to list or delete.
    pub(super) fn absent(&mut self) {
        if let Some(frame) = self.frames.last_mut() {
            frame.absent = true;
        }
    }

    /// Keeps what `excludes` match.
    pub(super) fn with_excludes(mut self, excludes: Excludes) -> Self {
        self.excludes = excludes;
        self
    }

    /// Records an entry `name` in directory `parent`; closes the directories the stream left.
    /// Returns false when the entry is not inside a directory the stream is in (out of order).
    pub(super) fn enter(
        &mut self,
        root: BorrowedFd<'_>,
        parent: &[u8],
        name: &[u8],
        is_dir: bool,
    ) -> Result<bool, DeletionError> {
        while self.frames.last().is_some_and(|frame| frame.path != parent) {
            let frame = self.frames.pop().expect("checked");
            self.close(root, frame)?;
        }
        let Some(frame) = self.frames.last_mut() else { return Ok(false) };
        if frame.last.as_deref().is_some_and(|last| name <= last) {
            return Err(DeletionError::Duplicate { path: confine::display_bytes(&join(parent, name)) });
        }
        let last = frame.last.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(name);
        let level = self.frames.len() - 1;
        self.pass(root, level, Some(name))?;
        if is_dir {
            self.frames.push(DirFrame::new(join(parent, name)));
        }
        Ok(true)
    }

    /// Lists directory `level` if not yet done, and moves its cursor up to `name` (to the end
    /// without one): the names passed are candidates, `name` itself is kept.
    fn pass(&mut self, root: BorrowedFd<'_>, level: usize, name: Option<&[u8]>) -> Result<(), DeletionError> {
        let frame = &mut self.frames[level];
        if frame.listing.is_none() && frame.absent {
            let (stale, excluded) = (HashSet::new(), HashSet::new());
            frame.listing =
                Some(Listing { names: confine::Names::default(), identity: (0, 0), passed: 0, stale, excluded });
        }
        if frame.listing.is_none() {
            let shown = frame.shown();
            let io = |source| DeletionError::Io { path: shown.clone(), source };
            let dir = if let Some(dir) = &frame.dir {
                dir.clone()
            } else {
                let dir = confine::open_dir(root, &frame.path).map_err(|source| {
                    // Made (or found) a directory moments ago: none there now means something
                    // else changed the target meanwhile.
                    if confine::no_directory_there(&source) {
                        DeletionError::Replaced { path: shown.clone() }
                    } else {
                        io(source)
                    }
                })?;
                let dir = Arc::new(dir);
                if level < KEPT_DEPTH {
                    frame.dir = Some(dir.clone());
                }
                dir
            };
            let stat = rustix::fs::fstat(&dir).map_err(|e| io(e.into()))?;
            let names = confine::list_dir(dir.as_fd()).map_err(io)?;
            let mut stale = HashSet::new();
            for name in names.iter() {
                if reserved::is_furniture(&frame.path, name) {
                    continue;
                }
                if reserved::is_generated(name) {
                    if !name.starts_with(&self.session_prefix) {
                        stale.insert(name.to_vec());
                    }
                } else {
                    self.listed += 1;
                }
            }
            let excluded = spare::excluded_names(&self.excludes, dir.as_fd(), &frame.path, &names);
            let identity = (stat.st_dev, stat.st_ino);
            frame.listing = Some(Listing { names, identity, passed: 0, stale, excluded });
        }
        let listing = frame.listing.as_mut().expect("just listed");
        while listing.passed < listing.names.len() {
            let listed = listing.names.get(listing.passed);
            if name.is_some_and(|name| listed >= name) {
                if name == Some(listed) {
                    listing.passed += 1;
                }
                break;
            }
            listing.passed += 1;
            if self.enabled
                && !reserved::is_generated(listed)
                && !reserved::is_furniture(&frame.path, listed)
                && !listing.excluded.contains(listed)
            {
                self.candidates.push((frame.path.clone(), listing.identity, listed.to_vec()));
            }
        }
        Ok(())
    }

    /// The level and frame of `path` if it is one of the two innermost directories: the
    /// current one or, after [`Self::enter`] of a directory, its parent.
    fn frame(&mut self, path: &[u8]) -> Option<(usize, &mut DirFrame)> {
        self.frames.iter_mut().enumerate().rev().take(2).find(|(_, frame)| frame.path == path)
    }

    /// The kept handle of `path` if it is the current directory (or its parent, see
    /// [`Self::frame`]).
    pub(super) fn current_dir(&mut self, path: &[u8]) -> Option<Arc<OwnedFd>> {
        self.frame(path)?.1.dir.clone()
    }

    /// Keeps `dir`, the handle of `path`, for listing that directory when it closes, if it is
    /// the current one (or its parent).
    pub(super) fn opened(&mut self, path: &[u8], dir: &Arc<OwnedFd>) {
        if let Some((level, frame)) = self.frame(path)
            && level < KEPT_DEPTH
        {
            frame.dir.get_or_insert_with(|| dir.clone());
        }
    }

    /// Marks the temporary name `name` in the current directory as in use (a partial file this
    /// session resumes or writes), so the cleanup of stale temporary files spares it.
    pub(super) fn claim(&mut self, name: &[u8]) {
        if let Some(listing) = self.frames.last_mut().and_then(|frame| frame.listing.as_mut()) {
            listing.stale.remove(name);
        }
    }

    /// The stream left `frame`: the rest of its listing are candidates, and the temporary
    /// files of earlier sessions in it go (from the directory listed, if still in place).
    fn close(&mut self, root: BorrowedFd<'_>, frame: DirFrame) -> Result<(), DeletionError> {
        self.frames.push(frame);
        let level = self.frames.len() - 1;
        self.pass(root, level, None)?;
        let frame = self.frames.pop().expect("just pushed");
        let listing = frame.listing.as_ref().expect("passed");
        if listing.stale.is_empty() || self.dry_run {
            return Ok(());
        }
        let dir = match &frame.dir {
            Some(dir) => dir.clone(),
            None => match open_listed(root, &frame.path, listing.identity) {
                Ok(dir) => Arc::new(dir),
                Err(DeletionError::Replaced { .. }) => return Ok(()),
                Err(error) => return Err(error),
            },
        };
        let io = |source| DeletionError::Io { path: frame.shown(), source };
        for name in &listing.stale {
            // Only what mover made ([`reserved::is_leftover`]): no peer can send these names,
            // and a directory, or a partial file that is not provably ours, is left alone.
            if confine::lstat(dir.as_fd(), name).map_err(io)?.is_some_and(|stat| reserved::is_leftover(name, &stat)) {
                match rustix::fs::unlinkat(&*dir, confine::cname(name).as_c_str(), rustix::fs::AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(error) => return Err(io(error.into())),
                }
            }
        }
        Ok(())
    }

    /// Closes every directory, applies the guard and deletes (in a dry run, deletes nothing);
    /// `on_delete` hears of each entry deleted, a directory once with what is beneath it.
    /// Returns the entries deleted.
    pub(super) fn finish(
        &mut self,
        root: BorrowedFd<'_>,
        allow_mass_delete: bool,
        mut on_delete: impl FnMut(Change) -> Result<(), DeletionError>,
    ) -> Result<u64, DeletionError> {
        while let Some(frame) = self.frames.pop() {
            self.close(root, frame)?;
        }
        if !self.excludes.is_empty() {
            let candidates = std::mem::take(&mut self.candidates);
            self.candidates = spare::spare_excluded(root, &self.excludes, candidates)?;
        }
        let mut deleted = 0;
        let mut total = self.listed;
        let mut mounted = Vec::new();
        let mut changes = Vec::with_capacity(self.candidates.len());
        for (index, (parent, identity, name)) in self.candidates.iter().enumerate() {
            let dir = open_listed(root, parent, *identity)?;
            let io = |source| DeletionError::Io { path: confine::display_bytes(&join(parent, name)), source };
            let below = match confine::count_below(dir.as_fd(), name) {
                Ok(below) => below,
                Err(error) => match confine::mount_point(&error) {
                    Some(mount) => {
                        mounted.push((index, join(parent, &mount.0)));
                        continue;
                    }
                    None => return Err(io(error)),
                },
            };
            let kind =
                confine::lstat(dir.as_fd(), name).map_err(io)?.map_or(ChangeKind::File, |stat| change_kind(&stat));
            deleted += 1 + below;
            total += below;
            let path = confine::display_bytes(&join(parent, name));
            changes.push(Change {
                action: ChangeAction::Delete,
                kind,
                path,
                differs: Differs::default(),
                entries: 1 + below,
            });
        }
        self.keep_mounted(mounted);
        if deleted * 2 > total && !allow_mass_delete {
            let sample = changes.iter().take(SAMPLE).map(shown_path).collect();
            let more = changes.len().saturating_sub(SAMPLE) as u64;
            return Err(DeletionError::MassDelete { deleted, total, sample, more });
        }
        for ((parent, identity, name), change) in std::mem::take(&mut self.candidates).into_iter().zip(changes) {
            if !self.dry_run {
                let dir = open_listed(root, &parent, identity)?;
                let io = |source| DeletionError::Io { path: confine::display_bytes(&join(&parent, &name)), source };
                confine::remove_any(dir.as_fd(), &name).map_err(io)?;
            }
            on_delete(change)?;
        }
        Ok(deleted)
    }
}

impl Deletions {
    /// Takes the candidates at `mounted` (index and the mount point at or below it) out of the
    /// deletions: a file system mounted inside the target is not the volume's to delete, and
    /// neither is the directory holding it.
    fn keep_mounted(&mut self, mounted: Vec<(usize, Vec<u8>)>) {
        for (index, mount) in mounted.into_iter().rev() {
            let (parent, _, name) = self.candidates.remove(index);
            let candidate = join(&parent, &name);
            let below = if candidate == mount {
                String::new()
            } else {
                format!(" (it holds `{}`)", confine::display_bytes(&mount))
            };
            self.kept_mounts.push(format!(
                "kept `{}`{below}: another file system is mounted there and mover never deletes across a mount \
                 point inside the target; unmount it and run the copy again to have it deleted",
                confine::display_bytes(&candidate)
            ));
        }
    }

    /// What the deletion pass kept because a file system is mounted there, as warnings.
    pub(super) fn take_kept_mounts(&mut self) -> Vec<String> {
        std::mem::take(&mut self.kept_mounts)
    }
}

/// The kind of change an entry of this type makes.
pub(super) fn change_kind(stat: &rustix::fs::Stat) -> ChangeKind {
    match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
        rustix::fs::FileType::Directory => ChangeKind::Dir,
        rustix::fs::FileType::Symlink => ChangeKind::Symlink,
        rustix::fs::FileType::CharacterDevice | rustix::fs::FileType::BlockDevice => ChangeKind::Device,
        rustix::fs::FileType::Fifo | rustix::fs::FileType::Socket => ChangeKind::Special,
        _ => ChangeKind::File,
    }
}

/// A path as a refusal shows it: a directory with a trailing `/`.
fn shown_path(change: &Change) -> String {
    if change.kind == ChangeKind::Dir { format!("{}/", change.path) } else { change.path.clone() }
}

/// Opens directory `path` again for deleting in it, if it is still the directory that was
/// listed (`identity`: device and inode): names listed in one directory are never deleted from
/// another that a local process put in its place meanwhile.
pub(super) fn open_listed(root: BorrowedFd<'_>, path: &[u8], identity: Identity) -> Result<OwnedFd, DeletionError> {
    let shown = || if path.is_empty() { ".".to_owned() } else { confine::display_bytes(path) };
    let dir = confine::open_dir(root, path).map_err(|source| DeletionError::Io { path: shown(), source })?;
    let stat = rustix::fs::fstat(&dir).map_err(|e| DeletionError::Io { path: shown(), source: e.into() })?;
    if (stat.st_dev, stat.st_ino) != identity {
        return Err(DeletionError::Replaced { path: shown() });
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(path: &std::path::Path) -> OwnedFd {
        confine::open_dir(std::fs::File::open(path).unwrap().as_fd(), b"").unwrap()
    }

    /// The refusal states the fact; the remedy (a flag) is the front end's to add, keyed on the
    /// variant.
    #[test]
    fn the_mass_delete_refusal_names_no_flag() {
        let error = DeletionError::MassDelete { deleted: 3, total: 4, sample: vec!["a".into()], more: 0 };
        let text = error.to_string();
        assert!(text.starts_with("refusing to delete 3 of the target's 4 entries"), "{text}");
        assert!(!text.contains("--"), "{text}");
    }

    #[test]
    fn names_listed_in_a_directory_are_not_deleted_from_one_put_in_its_place() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/keep"), b"").unwrap();
        std::fs::write(tmp.path().join("d/extra"), b"").unwrap();
        let root = root(tmp.path());
        let mut deletions = Deletions::new(true, "test");
        assert!(deletions.enter(root.as_fd(), b"", b"d", true).unwrap());
        assert!(deletions.enter(root.as_fd(), b"d", b"keep", false).unwrap());
        // Leaving `d` lists it: `extra` is a candidate.
        assert!(deletions.enter(root.as_fd(), b"", b"e", false).unwrap());
        std::fs::write(tmp.path().join("e"), b"").unwrap();
        // A local process moves `d` away and puts another directory in its place.
        std::fs::rename(tmp.path().join("d"), tmp.path().join("moved")).unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/extra"), b"not the one listed").unwrap();

        let error = deletions.finish(root.as_fd(), true, |_| Ok(())).unwrap_err();
        assert!(matches!(error, DeletionError::Replaced { ref path } if path == "d"), "{error}");
        assert!(tmp.path().join("d/extra").exists() && tmp.path().join("moved/extra").exists());
    }

    #[test]
    fn leftovers_of_other_sessions_go_unless_claimed_and_extra_names_are_found_between_sent_ones() {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let (claimed, stale, foreign, own) = (
            ".mover-tmp-part-cccccccccccccccccccccccc",
            ".mover-tmp-part-aaaaaaaaaaaaaaaaaaaaaaaa",
            ".mover-tmp-part-bbbbbbbbbbbbbbbbbbbbbbbb",
            ".mover-tmp-00000000000000aa-1",
        );
        for (name, mode) in
            [(claimed, 0o600), (stale, 0o600), (foreign, 0o644), (own, 0o600), (".mover-tmp-notes", 0o600)]
                .into_iter()
                .chain(["a", "b", "c", "d"].map(|name| (name, 0o644)))
        {
            let mut options = std::fs::File::options();
            options.write(true).create_new(true).mode(mode);
            options.open(tmp.path().join(name)).unwrap();
        }
        let root = root(tmp.path());
        let mut deletions = Deletions::new(true, "00000000000000aa");
        assert!(deletions.enter(root.as_fd(), b"", b"b", false).unwrap());
        deletions.claim(claimed.as_bytes());
        assert!(deletions.enter(root.as_fd(), b"", b"bb", false).unwrap());
        assert!(deletions.enter(root.as_fd(), b"", b"d", false).unwrap());
        // Back to an earlier name: refused, whether or not it was sent.
        for name in [&b"c"[..], b"d"] {
            assert!(matches!(deletions.enter(root.as_fd(), b"", name, false), Err(DeletionError::Duplicate { .. })));
        }
        // `.mover-tmp-notes` is a user's file the source lacks, counted like `a` and `c`; the
        // stale leftover goes uncounted; a file of another mode under a generated name stays.
        assert_eq!(deletions.finish(root.as_fd(), true, |_| Ok(())).unwrap(), 3);
        let left: Vec<String> = confine::list_dir(root.as_fd())
            .unwrap()
            .iter()
            .map(|name| String::from_utf8(name.to_vec()).unwrap())
            .collect();
        assert_eq!(left, [own, foreign, claimed, "b", "d"]);
    }

    #[test]
    fn a_directory_still_in_place_has_its_extra_names_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        for name in ["keep", "extra"] {
            std::fs::write(tmp.path().join("d").join(name), b"").unwrap();
        }
        std::fs::write(tmp.path().join("e"), b"").unwrap();
        let root = root(tmp.path());
        let mut deletions = Deletions::new(true, "test");
        for (parent, name, is_dir) in [(&b""[..], &b"d"[..], true), (b"d", b"keep", false), (b"", b"e", false)] {
            assert!(deletions.enter(root.as_fd(), parent, name, is_dir).unwrap());
        }
        assert_eq!(deletions.finish(root.as_fd(), true, |_| Ok(())).unwrap(), 1);
        assert!(!tmp.path().join("d/extra").exists() && tmp.path().join("d/keep").exists());
    }
}
