//! Volume grants, and the roots sessions work in.
//!
//! A grant names a directory by *path*, and the agent never pins it: what is at a path changes
//! under a running agent (a PV attached after it started, a kubelet remount), and a handle
//! opened at start would then point at the directory hidden under the mount, on the node's
//! root disk. So every session resolves the path afresh ([`CheckedGrant::resolve`]) and checks
//! that the directory found there is what the grant meant:
//!
//! - a plain grant: the directory found at start, on the same mount (device, inode and mount
//!   id, from `statx(STATX_MNT_ID)`; device and inode on kernels before 5.8);
//! - a mount grant ([`VolumeGrant::mount`], `NAME=PATH:mount`, for PVs): whatever file system is
//!   mounted there now, but a mount point it must be (`STATX_ATTR_MOUNT_ROOT`, or `..` on
//!   another device or the same inode on older kernels).
//!
//! A session holds a [`VolumeRoot`]: the handle it resolved and a [`RootWatch`] that resolves
//! the path again now and then (at most every [`WATCH_EVERY`]) and once more before the
//! session deletes or declares its end. A root that changed under a running session ends it.
//!
//! Grants may not overlap: one inside another would let a copy between them read what it
//! writes and delete what it reads. [`overlap`] compares the chains of (device, inode) from
//! each directory up to `/`, so no spelling of a path (symlinks, `..`, bind mounts) hides it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags, StatxAttributes, StatxFlags};

/// Longest a running session goes without checking that its root is still what its path
/// resolves to (when it is doing anything: the checks ride on the frames it handles).
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Permission to serve or receive one volume.
#[derive(Debug, Clone)]
pub struct VolumeGrant {
    /// The name peers use.
    pub name: String,
    /// Where it is mounted on this node.
    pub path: PathBuf,
    /// Only readable: the agent will not receive into it.
    pub read_only: bool,
    /// The path is a mount point (a PV): each session takes whatever file system is mounted
    /// there then, and refuses while none is. Without it, each session must find the very
    /// directory (and mount) found at start.
    pub mount: bool,
}

/// Where a directory is: its device, inode and mount, and whether it is a mount's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    device: u64,
    inode: u64,
    /// `None` on kernels without `STATX_MNT_ID` (before 5.8).
    mount_id: Option<u64>,
    mount_root: bool,
}

fn place(dir: BorrowedFd<'_>) -> io::Result<Place> {
    match rustix::fs::statx(dir, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS | StatxFlags::MNT_ID) {
        Ok(statx) => {
            let mount_root = if statx.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
                statx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
            } else {
                is_mount_root_by_parent(dir)?
            };
            Ok(Place {
                device: rustix::fs::makedev(statx.stx_dev_major, statx.stx_dev_minor),
                inode: statx.stx_ino,
                mount_id: StatxFlags::from_bits_retain(statx.stx_mask)
                    .contains(StatxFlags::MNT_ID)
                    .then_some(statx.stx_mnt_id),
                mount_root,
            })
        }
        Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            let stat = rustix::fs::fstat(dir)?;
            Ok(Place {
                device: stat.st_dev,
                inode: stat.st_ino,
                mount_id: None,
                mount_root: is_mount_root_by_parent(dir)?,
            })
        }
        Err(error) => Err(error.into()),
    }
}

/// A mount's root has its parent on another device, or is its own parent (`/`). A bind mount
/// of a directory of the same file system is not seen this way (kernels before 5.8 only).
fn is_mount_root_by_parent(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let own = rustix::fs::fstat(dir)?;
    let parent = rustix::fs::statat(dir, c"..", AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(own.st_dev != parent.st_dev || own.st_ino == parent.st_ino)
}

/// Whether `dir` is the root of a mount (`STATX_ATTR_MOUNT_ROOT`; on kernels before 5.8, its
/// parent on another device).
pub fn is_mount_root(dir: BorrowedFd<'_>) -> io::Result<bool> {
    place(dir).map(|place| place.mount_root)
}

/// Whether `dir` is the root of a whole file system, so that the file system's counters are
/// the directory's: a mount root that is not a bind mount of a directory inside a larger file
/// system (as local-path and NFS-subdirectory provisioners and hostPath volumes make PVs). Read
/// from `/proc/self/mountinfo` (the mount's root within its file system is `/`); false when it
/// cannot be told.
#[must_use]
pub fn is_file_system_root(dir: BorrowedFd<'_>) -> bool {
    let Ok(Place { mount_root: true, mount_id: Some(id), .. }) = place(dir) else { return false };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let id = id.to_string();
    mounts.lines().map(|line| line.split(' ').collect::<Vec<_>>()).any(|fields| {
        fields.first() == Some(&id.as_str()) && fields.get(3) == Some(&"/")
    })
}

/// What changed at a volume's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A file system is mounted over the directory.
    MountedOver,
    /// The file system mounted there was unmounted.
    Unmounted,
    /// Another file system is mounted there than before.
    Remounted,
    /// Another directory is there (moved, or removed and made again).
    Replaced,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::MountedOver => "a file system was mounted over it",
            Change::Unmounted => "the file system mounted there was unmounted",
            Change::Remounted => "another file system (or another mount of it) is mounted there now",
            Change::Replaced => "another directory is there now (it was moved, or removed and made again)",
        })
    }
}

fn change(before: Place, now: Place) -> Option<Change> {
    let same_mount = now.device == before.device && now.mount_id == before.mount_id;
    if same_mount && now.inode == before.inode {
        return None;
    }
    Some(match (before.mount_root, now.mount_root) {
        (false, true) => Change::MountedOver,
        (true, false) => Change::Unmounted,
        (true, true) if !same_mount => Change::Remounted,
        _ => Change::Replaced,
    })
}

/// Why a session may not use a volume's root, or must stop using it.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Its path cannot be opened as a directory now.
    #[error("cannot open volume `{name}` at `{}`", path.display())]
    Open {
        /// Volume name.
        name: String,
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A plain grant's path no longer resolves to the directory found at start.
    #[error(
        "volume `{name}` at `{}` is no longer the directory the agent was given: {change} since the agent \
         started; restart the agent, or grant the volume as a mount point (`NAME=PATH:mount`) if a file \
         system is meant to be mounted there",
        path.display()
    )]
    Changed {
        /// Volume name.
        name: String,
        /// Its path.
        path: PathBuf,
        /// What changed.
        change: Change,
    },
    /// A mount grant's path is not a mount point.
    #[error(
        "volume `{name}` at `{}` is granted as a mount point, but no file system is mounted there: mount the \
         volume's file system there, or grant the directory itself (without `:mount`)",
        path.display()
    )]
    NotMounted {
        /// Volume name.
        name: String,
        /// Its path.
        path: PathBuf,
    },
    /// The path resolves to another directory than when the session began.
    #[error(
        "volume `{name}` at `{}` changed during the session: {change}; the session was ended and nothing more \
         is written there: run the copy again",
        path.display()
    )]
    ChangedDuringSession {
        /// Volume name.
        name: String,
        /// Its path.
        path: PathBuf,
        /// What changed.
        change: Change,
    },
    /// Two grants overlap.
    #[error(
        "volumes `{first}` (`{}`) and `{second}` (`{}`) overlap: {}; give each volume a directory of its \
         own, neither inside the other",
        first_path.display(),
        second_path.display(),
        overlap.describe(&format!("`{first}`"), &format!("`{second}`"))
    )]
    Overlap {
        /// The first volume.
        first: String,
        /// Its path.
        first_path: PathBuf,
        /// The second volume.
        second: String,
        /// Its path.
        second_path: PathBuf,
        /// How they overlap (`first` is the left side).
        overlap: Overlap,
    },
}

/// How two directories overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// They are one directory.
    Same,
    /// The first holds the second.
    Holds,
    /// The first lies inside the second.
    Inside,
}

impl Overlap {
    /// The overlap in words, `first` and `second` naming the two sides.
    #[must_use]
    pub fn describe(self, first: &str, second: &str) -> String {
        match self {
            Overlap::Same => "they are the same directory".to_owned(),
            Overlap::Holds => format!("{second} lies inside {first}"),
            Overlap::Inside => format!("{first} lies inside {second}"),
        }
    }
}

/// Device and inode of `dir` and of each directory above it, up to `/`, `dir` first.
fn ancestry(dir: BorrowedFd<'_>) -> io::Result<Vec<(u64, u64)>> {
    let id = |stat: rustix::fs::Stat| (stat.st_dev, stat.st_ino);
    let mut chain = vec![id(rustix::fs::fstat(dir)?)];
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut current = rustix::fs::openat(dir, c"..", flags, Mode::empty())?;
    // `..` of `/` is `/`; the bound only guards against a file system that never says so.
    while chain.len() < 4096 {
        let here = id(rustix::fs::fstat(&current)?);
        if chain.last() == Some(&here) {
            break;
        }
        chain.push(here);
        current = rustix::fs::openat(&current, c"..", flags, Mode::empty())?;
    }
    Ok(chain)
}

/// How the directories `first` and `second` overlap, if they do, by their (device, inode)
/// chains up to `/`.
pub fn overlap(first: BorrowedFd<'_>, second: BorrowedFd<'_>) -> io::Result<Option<Overlap>> {
    let (first, second) = (ancestry(first)?, ancestry(second)?);
    Ok(if first[0] == second[0] {
        Some(Overlap::Same)
    } else if second.contains(&first[0]) {
        Some(Overlap::Holds)
    } else if first.contains(&second[0]) {
        Some(Overlap::Inside)
    } else {
        None
    })
}

/// How the directory `first` and the path `second` overlap, where `second` need not exist
/// yet (a target to create): its nearest existing ancestor stands for it.
pub fn overlap_with_path(first: BorrowedFd<'_>, second: &Path) -> io::Result<Option<Overlap>> {
    let mut existing = second;
    let found = loop {
        match crate::confine::open_root(existing) {
            Ok(dir) => break dir,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                existing = match existing.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent,
                    _ => Path::new("."),
                };
            }
            Err(error) => return Err(error),
        }
    };
    let overlap = overlap(first, found.as_fd())?;
    if existing == second {
        return Ok(overlap);
    }
    // A path yet to be made inside `first` (or inside a directory `first` holds) will be inside
    // it; one made beside `first` overlaps nothing, even where their ancestor holds `first`.
    Ok(match overlap {
        Some(Overlap::Same | Overlap::Holds) => Some(Overlap::Holds),
        Some(Overlap::Inside) | None => None,
    })
}

/// A grant checked at start: its path opened once, to learn what it meant.
#[derive(Debug)]
pub struct CheckedGrant {
    grant: VolumeGrant,
    at_start: Place,
}

impl CheckedGrant {
    /// Opens the grant's path and notes what is there; returns the handle too (to compare
    /// grants with [`overlap`]). A mount grant whose path is no mount point yet is accepted:
    /// its sessions are refused until a file system is mounted there.
    pub fn new(grant: VolumeGrant) -> io::Result<(CheckedGrant, OwnedFd)> {
        let root = crate::confine::open_root(&grant.path)?;
        let at_start = place(root.as_fd())?;
        if grant.mount && !at_start.mount_root {
            tracing::warn!(
                volume = %grant.name,
                path = %grant.path.display(),
                "granted as a mount point but nothing is mounted there yet: its sessions are refused until then"
            );
        }
        Ok((CheckedGrant { grant, at_start }, root))
    }

    /// The grant.
    #[must_use]
    pub fn grant(&self) -> &VolumeGrant {
        &self.grant
    }

    /// Resolves the grant's path afresh for a session and checks it is what the grant meant.
    pub fn resolve(&self) -> Result<VolumeRoot, VolumeError> {
        let grant = &self.grant;
        let (root, now) = open_place(grant)?;
        if grant.mount {
            if !now.mount_root {
                return Err(VolumeError::NotMounted { name: grant.name.clone(), path: grant.path.clone() });
            }
        } else if let Some(change) = change(self.at_start, now) {
            return Err(VolumeError::Changed { name: grant.name.clone(), path: grant.path.clone(), change });
        }
        let watched = Watched { grant: grant.clone(), place: now, last: Mutex::new(Instant::now()) };
        Ok(VolumeRoot { fd: Arc::new(root), watch: RootWatch(Some(Arc::new(watched))) })
    }
}

fn open_place(grant: &VolumeGrant) -> Result<(OwnedFd, Place), VolumeError> {
    let open = |source| VolumeError::Open { name: grant.name.clone(), path: grant.path.clone(), source };
    let root = crate::confine::open_root(&grant.path).map_err(open)?;
    let place = place(root.as_fd()).map_err(open)?;
    Ok((root, place))
}

/// The root a session works in, and the watch that tells whether it still should.
#[derive(Clone)]
pub struct VolumeRoot {
    fd: Arc<OwnedFd>,
    watch: RootWatch,
}

impl VolumeRoot {
    /// A directory opened for this run only (a local source or target): nothing to watch.
    #[must_use]
    pub fn unwatched(fd: OwnedFd) -> VolumeRoot {
        VolumeRoot { fd: Arc::new(fd), watch: RootWatch::default() }
    }

    /// The root's handle.
    #[must_use]
    pub fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    /// The watch over it.
    #[must_use]
    pub fn watch(&self) -> &RootWatch {
        &self.watch
    }
}

/// Checks that a session's root is still what its volume's path resolves to.
#[derive(Clone, Default)]
pub struct RootWatch(Option<Arc<Watched>>);

struct Watched {
    grant: VolumeGrant,
    place: Place,
    last: Mutex<Instant>,
}

impl RootWatch {
    /// Resolves the path again and compares.
    pub fn check(&self) -> Result<(), VolumeError> {
        let Some(watched) = &self.0 else { return Ok(()) };
        let grant = &watched.grant;
        let (_, now) = open_place(grant)?;
        match change(watched.place, now) {
            None => Ok(()),
            Some(change) => {
                Err(VolumeError::ChangedDuringSession { name: grant.name.clone(), path: grant.path.clone(), change })
            }
        }
    }

    /// [`Self::check`] if the last one is [`WATCH_EVERY`] old: cheap enough to call for every
    /// frame a session handles.
    pub fn check_now_and_then(&self) -> Result<(), VolumeError> {
        let Some(watched) = &self.0 else { return Ok(()) };
        {
            let Ok(mut last) = watched.last.try_lock() else { return Ok(()) };
            if last.elapsed() < WATCH_EVERY {
                return Ok(());
            }
            *last = Instant::now();
        }
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> OwnedFd {
        crate::confine::open_root(path).unwrap()
    }

    #[test]
    fn overlap_follows_inodes_not_spellings() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/sub/deeper")).unwrap();
        std::fs::create_dir(tmp.path().join("b")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("a/sub"), tmp.path().join("b/link")).unwrap();
        let a = open(&tmp.path().join("a"));
        let sub = open(&tmp.path().join("b/link"));
        let b = open(&tmp.path().join("b"));
        assert_eq!(overlap(a.as_fd(), sub.as_fd()).unwrap(), Some(Overlap::Holds));
        assert_eq!(overlap(sub.as_fd(), a.as_fd()).unwrap(), Some(Overlap::Inside));
        assert_eq!(overlap(sub.as_fd(), open(&tmp.path().join("a/sub")).as_fd()).unwrap(), Some(Overlap::Same));
        assert_eq!(overlap(a.as_fd(), b.as_fd()).unwrap(), None);
        let missing = tmp.path().join("b/link/new/newer");
        assert_eq!(overlap_with_path(a.as_fd(), &missing).unwrap(), Some(Overlap::Holds));
        assert_eq!(overlap_with_path(b.as_fd(), &tmp.path().join("c")).unwrap(), None);
        assert_eq!(overlap_with_path(sub.as_fd(), &tmp.path().join("a")).unwrap(), Some(Overlap::Inside));
    }

    #[test]
    fn a_plain_grant_finds_its_directory_and_refuses_another_in_its_place() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v");
        std::fs::create_dir(&path).unwrap();
        let grant = VolumeGrant { name: "v".into(), path: path.clone(), read_only: false, mount: false };
        let (checked, _) = CheckedGrant::new(grant).unwrap();
        let root = checked.resolve().unwrap();
        root.watch().check().unwrap();
        std::fs::rename(&path, tmp.path().join("moved")).unwrap();
        std::fs::create_dir(&path).unwrap();
        let error = checked.resolve().err().unwrap();
        assert!(matches!(error, VolumeError::Changed { change: Change::Replaced, .. }), "{error}");
        let error = root.watch().check().unwrap_err();
        assert!(matches!(error, VolumeError::ChangedDuringSession { change: Change::Replaced, .. }), "{error}");
        assert!(error.to_string().contains("volume `v` at"), "{error}");
    }

    #[test]
    fn a_mount_grant_on_a_plain_directory_is_refused_per_session() {
        let tmp = tempfile::tempdir().unwrap();
        let grant = VolumeGrant { name: "pv".into(), path: tmp.path().to_owned(), read_only: false, mount: true };
        let (checked, _) = CheckedGrant::new(grant).unwrap();
        let error = checked.resolve().err().unwrap();
        assert!(matches!(error, VolumeError::NotMounted { .. }), "{error}");
        // `/` is a mount point wherever this runs.
        let grant = VolumeGrant { name: "root".into(), path: "/".into(), read_only: true, mount: true };
        CheckedGrant::new(grant).unwrap().0.resolve().unwrap();
    }
}
