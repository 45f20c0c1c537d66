//! Checking the entries of the tree against the target and making what differs: the volume
//! root, directories, hard links, symlinks and special files, and in a dry run what lies
//! beneath a directory the target lacks. Regular files are [`super::verdict`]'s.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::group::{Group, replace};
use super::{MAX_PENDING, Receiver, io_at, protocol};
use crate::confine::{self, RelPath, cname};
use crate::meta;
use crate::progress::{ChangeAction, ChangeKind, Differs};
use crate::sync::Result;
use crate::wire::{Entry, EntryKind};

impl Receiver {
    /// Checks an entry of the tree against the target, and makes, updates or requests what
    /// differs.
    pub(super) fn entry(&mut self, entry: Entry) -> Result<()> {
        if entry.path.is_empty() {
            return self.root_entry(&entry);
        }
        let path = RelPath::new(&entry.path).map_err(|e| protocol(e.to_string()))?;
        meta::check_xattrs(&entry.xattrs, self.group.xattrs)
            .map_err(|e| protocol(format!("`{}`: {e}", path.display())))?;
        let (parent, name) = path.split();
        if !self.deletions.enter(self.group.root.as_fd(), parent, name, entry.kind == EntryKind::Dir)? {
            return Err(protocol(format!(
                "`{}` arrives outside its directory (entries must come depth first)",
                path.display()
            )));
        }
        if let Some(absent) = &self.absent {
            if is_beneath(&entry.path, absent) {
                return self.absent_entry(&entry);
            }
            self.absent = None;
        }
        self.beneath_made = self.made.as_ref().is_some_and(|made| is_beneath(&entry.path, made));
        if !self.beneath_made {
            self.made = None;
        }
        let (parent, name) = (parent.to_vec(), name.to_vec());
        let at = (parent.as_slice(), name.as_slice());
        match entry.kind.clone() {
            EntryKind::Dir => self.dir_entry(&entry, &path, at),
            EntryKind::File { size, leader } => self.file_entry(entry, path, at, size, leader),
            EntryKind::Hardlink { leader } => self.hardlink_entry(entry, &path, leader),
            EntryKind::Symlink { target } => self.symlink_entry(&entry, &path, at, &target),
            EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } => {
                self.special_entry(&entry, &path, at)
            }
        }
    }

    /// The volume root: the first entry, with an empty path, and the only one.
    fn root_entry(&mut self, entry: &Entry) -> Result<()> {
        if self.seen_root || entry.kind != EntryKind::Dir {
            return Err(protocol("an entry with an empty path that is not the leading root directory"));
        }
        self.seen_root = true;
        meta::check_xattrs(&entry.xattrs, self.group.xattrs).map_err(|e| protocol(format!("volume root: {e}")))?;
        self.keep_dir(entry);
        Ok(())
    }

    /// In a dry run, an entry beneath a directory that is not on the target: new, whatever it
    /// is; nothing on the target is looked at.
    fn absent_entry(&mut self, entry: &Entry) -> Result<()> {
        let kind = match entry.kind {
            EntryKind::Dir => {
                self.deletions.absent();
                ChangeKind::Dir
            }
            EntryKind::File { .. } => ChangeKind::File,
            EntryKind::Hardlink { .. } => ChangeKind::Hardlink,
            EntryKind::Symlink { .. } => ChangeKind::Symlink,
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } => {
                if let Some(why) = self.group.devices_refused() {
                    self.group.warn(format!("device node `{}` skipped: {why}", confine::display_bytes(&entry.path)));
                    return Ok(());
                }
                ChangeKind::Device
            }
            EntryKind::Fifo | EntryKind::Socket => ChangeKind::Special,
        };
        self.report(ChangeAction::Create, kind, &entry.path, Differs::default())?;
        if let EntryKind::File { size, leader } = entry.kind {
            self.skip_as_written(entry, size, leader)?;
        }
        Ok(())
    }

    /// The directory handle of `parent` (relative to the root), cached across entries.
    /// Entries come depth first, so `parent` is the directory the deletion pass is in (or, for
    /// a directory entry, the one it just left): its handle is kept there, so the checks of its
    /// entries and its listing share one open of its path.
    pub(super) fn parent_dir(&mut self, parent: &[u8]) -> Result<Arc<OwnedFd>> {
        if let Some(dir) = self.deletions.current_dir(parent) {
            return Ok(dir);
        }
        let dir = self.dirs_cache.get(self.group.root.as_fd(), parent)?;
        self.deletions.opened(parent, &dir);
        Ok(dir)
    }

    /// A directory: made where missing (whatever is in the way is replaced); its metadata is
    /// set by the last pass.
    fn dir_entry(&mut self, entry: &Entry, path: &RelPath, (parent, name): (&[u8], &[u8])) -> Result<()> {
        let io = io_at(path);
        let dir = self.parent_dir(parent)?;
        let existing = if self.beneath_made {
            None
        } else {
            confine::lstat(dir.as_fd(), name).map_err(|e| io("cannot inspect", e))?
        };
        let is_dir = existing.is_some_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory);
        if !is_dir {
            self.report(ChangeAction::Create, ChangeKind::Dir, &entry.path, Differs::default())?;
        }
        if self.group.options.dry_run {
            // Not made: what is beneath it is all new. Directory metadata is not
            // previewed, so the directory is not kept for the last pass either.
            if !is_dir {
                self.absent = Some(entry.path.clone());
                self.deletions.absent();
            }
            return Ok(());
        }
        if self.beneath_made {
            make_dir(dir.as_fd(), name).map_err(|e| io("cannot create directory", e))?;
        } else {
            ensure_dir(dir.as_fd(), name).map_err(|e| io("cannot create directory", e))?;
            if !is_dir {
                self.made = Some(entry.path.clone());
            }
        }
        self.keep_dir(entry);
        Ok(())
    }

    /// A hard link: made now when its file is in place, once its file has arrived when that is
    /// on its way (on whichever lane carries it), and not at all when its file failed.
    fn hardlink_entry(&mut self, entry: Entry, path: &RelPath, leader: u64) -> Result<()> {
        if !entry.xattrs.is_empty() {
            return Err(protocol(format!("hard link `{}` carries extended attributes", path.display())));
        }
        let group = self.group.clone();
        let mut files = group.files();
        if let Some(leader) = files.leaders.get(&leader).cloned() {
            drop(files);
            let dir = self.parent_dir(path.split().0)?;
            let made = if group.options.dry_run {
                !Group::shares_inode(&leader, path, dir.as_fd())?
            } else {
                group.link(&leader, path, entry.id, Some(dir.as_fd()))?
            };
            if made {
                self.report(ChangeAction::Create, ChangeKind::Hardlink, &entry.path, Differs::default())?;
            }
        } else if files.pending.contains_key(&leader) || files.receiving.contains(&leader) {
            if files.deferred_count >= MAX_PENDING * 4 {
                return Err(protocol("too many hard links waiting for their files"));
            }
            files.deferred_count += 1;
            let link_path = entry.path.clone();
            files.deferred.entry(leader).or_default().push(entry);
            drop(files);
            // Made once its file has arrived, on whichever lane carries it.
            self.report(ChangeAction::Create, ChangeKind::Hardlink, &link_path, Differs::default())?;
        } else if files.failed.contains(&leader) {
            drop(files);
            group.warn(format!("hard link `{}` not created: its source file failed", path.display()));
        } else {
            return Err(protocol(format!("`{}` is a hard link to unknown entry {leader}", path.display())));
        }
        Ok(())
    }

    /// A symlink: made (under a temporary name, then renamed) unless one with the same target,
    /// owner and mtime is there.
    fn symlink_entry(
        &mut self,
        entry: &Entry,
        path: &RelPath,
        (parent, name): (&[u8], &[u8]),
        target: &[u8],
    ) -> Result<()> {
        let group = self.group.clone();
        let io = io_at(path);
        let dry_run = group.options.dry_run;
        if target.is_empty() || target.contains(&0) || target.len() > confine::MAX_PATH {
            return Err(protocol(format!("`{}` has an invalid symlink target", path.display())));
        }
        let dir = self.parent_dir(parent)?;
        let dir = dir.as_fd();
        let existing = confine::lstat(dir, name)
            .map_err(|e| io("cannot inspect", e))?
            .filter(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Symlink);
        let same_target = existing.is_some()
            && rustix::fs::readlinkat(dir, cname(name).as_c_str(), Vec::new())
                .is_ok_and(|current| current.as_bytes() == target);
        if same_target && existing.is_some_and(|stat| meta::unchanged(&stat, entry, group.compare())) {
            return Ok(());
        }
        match existing {
            Some(stat) => {
                let differs = Differs { size: !same_target, perms: false, ..group.differs(&stat, entry, None) };
                self.report(ChangeAction::Update, ChangeKind::Symlink, &entry.path, differs)?;
            }
            None => self.report(ChangeAction::Create, ChangeKind::Symlink, &entry.path, Differs::default())?,
        }
        if dry_run {
            return Ok(());
        }
        let tmp = group.tmp_name(entry.id);
        rustix::fs::symlinkat(cname(target).as_c_str(), dir, tmp.as_c_str())
            .map_err(|e| io("cannot create symlink", e.into()))?;
        self.finish_special(dir, name, &tmp, entry).map_err(|e| io("cannot create symlink", e))?;
        Ok(())
    }

    /// A FIFO, socket or device node: made (under a temporary name, then renamed) unless an
    /// identical one is there; device nodes only when the session copies them.
    fn special_entry(&mut self, entry: &Entry, path: &RelPath, (parent, name): (&[u8], &[u8])) -> Result<()> {
        let group = self.group.clone();
        let io = io_at(path);
        let dry_run = group.options.dry_run;
        let (file_type, rdev) = match entry.kind {
            EntryKind::Fifo => (FileType::Fifo, 0),
            EntryKind::Socket => (FileType::Socket, 0),
            EntryKind::CharDevice { rdev } => (FileType::CharacterDevice, rdev),
            EntryKind::BlockDevice { rdev } => (FileType::BlockDevice, rdev),
            _ => unreachable!("matched above"),
        };
        let device = matches!(entry.kind, EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. });
        if device && let Some(why) = group.devices_refused() {
            group.warn(format!("device node `{}` skipped: {why}", path.display()));
            return Ok(());
        }
        let dir = self.parent_dir(parent)?;
        let dir = dir.as_fd();
        let existing = confine::lstat(dir, name)
            .map_err(|e| io("cannot inspect", e))?
            .filter(|stat| FileType::from_raw_mode(stat.st_mode) == file_type && stat.st_rdev == rdev);
        let kind = if device { ChangeKind::Device } else { ChangeKind::Special };
        match existing {
            Some(stat) if group.differs(&stat, entry, None) == Differs::default() => return Ok(()),
            Some(stat) => {
                self.report(ChangeAction::Metadata, kind, &entry.path, group.differs(&stat, entry, None))?;
            }
            None => self.report(ChangeAction::Create, kind, &entry.path, Differs::default())?,
        }
        if dry_run {
            return Ok(());
        }
        let tmp = group.tmp_name(entry.id);
        rustix::fs::mknodat(dir, tmp.as_c_str(), file_type, Mode::from_raw_mode(0o600), rdev)
            .map_err(|e| io("cannot create special file", e.into()))?;
        self.finish_special(dir, name, &tmp, entry).map_err(|e| io("cannot create special file", e))?;
        Ok(())
    }

    /// Gives a just-created symlink or special file (at `tmp` in `dir`) its metadata and renames
    /// it over `name`. Owner and times are set with `AT_SYMLINK_NOFOLLOW`; permission bits
    /// through an `O_PATH` handle checked to be the node we created, so a swap cannot redirect
    /// the chmod.
    fn finish_special(&self, dir: BorrowedFd<'_>, name: &[u8], tmp: &CString, entry: &Entry) -> io::Result<()> {
        let chown = self.group.chown_allowed();
        let result = (|| {
            if chown {
                rustix::fs::chownat(
                    dir,
                    tmp.as_c_str(),
                    Some(rustix::fs::Uid::from_raw(entry.uid)),
                    Some(rustix::fs::Gid::from_raw(entry.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            if !matches!(entry.kind, EntryKind::Symlink { .. }) {
                let node = rustix::fs::openat(
                    dir,
                    tmp.as_c_str(),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                if FileType::from_raw_mode(rustix::fs::fstat(&node)?.st_mode) == FileType::Symlink {
                    return Err(io::Error::other("temporary node was replaced by a symlink"));
                }
                let proc = confine::proc_path(node.as_fd(), b"");
                let proc = CString::new(&proc.as_bytes()[..proc.as_bytes().len() - 1]).expect("no NUL");
                rustix::fs::chmodat(
                    rustix::fs::CWD,
                    proc.as_c_str(),
                    Mode::from_raw_mode(entry.mode),
                    AtFlags::empty(),
                )?;
            }
            confine::set_times_at(dir, tmp.as_c_str(), &confine::timestamps(entry.atime, entry.mtime))?;
            replace(dir, tmp, name)
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(dir, tmp.as_c_str(), AtFlags::empty());
        }
        result
    }
}

/// Makes sure `name` in `dir` is a real directory: a symlink or file in the way is replaced.
fn ensure_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match confine::lstat(dir, name)? {
        Some(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => return Ok(()),
        Some(_) => confine::remove_any(dir, name)?,
        None => {}
    }
    make_dir(dir, name)
}

/// Makes the directory `name` in `dir`, private (0700) until the last pass gives it its mode.
fn make_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    rustix::fs::mkdirat(dir, cname(name).as_c_str(), Mode::from_raw_mode(0o700)).map_err(io::Error::from)
}

/// Whether `path` lies beneath the directory `dir` (both relative to the root).
fn is_beneath(path: &[u8], dir: &[u8]) -> bool {
    path.strip_prefix(dir).is_some_and(|rest| rest.first() == Some(&b'/'))
}
