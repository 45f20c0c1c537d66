//! The state of a volume, for preflight checks: can it be listed, can a file be created in it,
//! how much space is free on its file system and how much its tree uses.
//!
//! Nothing here writes to a read-only volume. The write probe creates and removes one
//! `.mover-tmp-preflight-*` file in the root (a reserved name: mover's temporary names are the `reserved` module's).
//! The usage walk never follows symlinks, stays on the root's file system (as `du -x`), counts
//! each hard-linked inode once and stops at [`WALK_BUDGET`]; a volume that is a mount point of
//! its own file system is measured from that file system's counters instead, without a walk
//! (not a bind mount of a directory inside a larger one).

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::FileType;

use crate::confine;
use crate::wire::VolumeStatus;

/// Longest time a usage walk may take.
pub const WALK_BUDGET: Duration = Duration::from_secs(20);

/// Inspects the volume `name` whose root handle is `root`.
#[must_use]
pub fn inspect(name: &str, root: BorrowedFd<'_>, read_only: bool) -> VolumeStatus {
    let mut status = VolumeStatus { name: name.to_owned(), read_only, used_complete: true, ..VolumeStatus::default() };
    if let Err(error) = confine::open_dir(root, b"").and_then(|dir| confine::list_dir(dir.as_fd())) {
        status.unreadable = Some(error.to_string());
    }
    if !read_only && let Err(error) = probe_write(root) {
        status.unwritable = Some(error.to_string());
    }
    match rustix::fs::fstatvfs(root) {
        Ok(fs) => {
            status.free_bytes = fs.f_bavail.saturating_mul(fs.f_frsize);
            status.size_bytes = fs.f_blocks.saturating_mul(fs.f_frsize);
            // A bind mount of a directory of a larger file system (a hostPath or local-path PV)
            // is walked: the counters are the whole file system's.
            if crate::volume::is_file_system_root(root) {
                status.used_bytes = fs.f_blocks.saturating_sub(fs.f_bfree).saturating_mul(fs.f_frsize);
                return status;
            }
        }
        Err(error) => status.unreadable = Some(format!("cannot read its file system's counters: {error}")),
    }
    let (used, complete) = tree_usage(root, Instant::now() + WALK_BUDGET);
    status.used_bytes = used;
    status.used_complete = complete;
    status
}

/// Inspects a local directory (a plan's local source or target).
#[must_use]
pub fn inspect_path(name: &str, path: &Path, read_only: bool) -> VolumeStatus {
    match confine::open_root(path) {
        Ok(root) => inspect(name, root.as_fd(), read_only),
        Err(error) => VolumeStatus {
            name: name.to_owned(),
            read_only,
            unreadable: Some(format!("cannot open `{}`: {error}", path.display())),
            unwritable: (!read_only).then(|| format!("cannot open `{}`: {error}", path.display())),
            ..VolumeStatus::default()
        },
    }
}

/// Creates and removes a file in the root, then gives the root back its times: a probe after a
/// copy leaves the copied root's modification time as the copy set it.
fn probe_write(root: BorrowedFd<'_>) -> io::Result<()> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let name = crate::reserved::preflight(u64::from_le_bytes(random));
    let before = rustix::fs::fstat(root)?;
    drop(confine::create_file(root, name.as_bytes())?);
    rustix::fs::unlinkat(root, confine::cname(name.as_bytes()).as_c_str(), rustix::fs::AtFlags::empty())?;
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: before.st_atime, tv_nsec: before.st_atime_nsec.cast_signed() },
        last_modification: rustix::fs::Timespec {
            tv_sec: before.st_mtime,
            tv_nsec: before.st_mtime_nsec.cast_signed(),
        },
    };
    confine::set_times_at(root, c".", &times)
}

/// Allocated bytes beneath `root`, and whether the walk saw everything.
fn tree_usage(root: BorrowedFd<'_>, deadline: Instant) -> (u64, bool) {
    let Ok(top) = rustix::fs::fstat(root) else { return (0, false) };
    let device = top.st_dev;
    let mut used = (top.st_blocks as u64).saturating_mul(512);
    let mut complete = true;
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let Ok(first) = confine::open_dir(root, b"") else { return (used, false) };
    let Ok(names) = confine::list_dir(first.as_fd()) else { return (used, false) };
    let mut stack: Vec<(OwnedFd, confine::NamesIter)> = vec![(first, names.into_iter())];
    while let Some(depth) = stack.len().checked_sub(1) {
        if Instant::now() > deadline {
            return (used, false);
        }
        let Some(name) = stack[depth].1.next() else {
            stack.pop();
            continue;
        };
        let parent = stack[depth].0.as_fd();
        let Ok(Some(stat)) = confine::lstat(parent, &name) else {
            complete = false;
            continue;
        };
        if stat.st_dev != device {
            continue;
        }
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::Directory && stat.st_nlink > 1 && !linked.insert((stat.st_dev, stat.st_ino)) {
            continue;
        }
        used = used.saturating_add((stat.st_blocks as u64).saturating_mul(512));
        if kind == FileType::Directory {
            match confine::open_subdir(parent, &name).and_then(|dir| Ok((confine::list_dir(dir.as_fd())?, dir))) {
                Ok((names, dir)) => stack.push((dir, names.into_iter())),
                // A bind mount of the same device: not the volume's, as any other mount.
                Err(error) if confine::is_mount_crossing(&error) => {}
                Err(_) => complete = false,
            }
        }
    }
    (used, complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_tree_and_probes_writes_without_leaving_anything() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![7u8; 1 << 20]).unwrap();
        std::fs::hard_link(dir.path().join("sub/a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("escape")).unwrap();
        let status = inspect_path("v", dir.path(), false);
        assert_eq!(status.unreadable, None);
        assert_eq!(status.unwritable, None);
        assert!(status.used_complete);
        // 1 MiB once (hard link counted once, symlink not followed), plus directory blocks.
        assert!(status.used_bytes >= 1 << 20 && status.used_bytes < (1 << 20) + (256 << 10), "{status:?}");
        assert!(status.free_bytes > 0 && status.size_bytes >= status.free_bytes);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 3, "the write probe left something: {left:?}");
    }

    #[test]
    fn the_write_probe_leaves_the_roots_times_alone() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let old = std::fs::FileTimes::new()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000));
        std::fs::File::open(dir.path()).unwrap().set_times(old).unwrap();
        let status = inspect_path("v", dir.path(), false);
        assert_eq!(status.unwritable, None);
        assert_eq!(std::fs::metadata(dir.path()).unwrap().mtime(), 1_600_000_000);
    }

    #[test]
    fn read_only_volumes_are_not_probed_and_missing_ones_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let status = inspect_path("v", dir.path(), true);
        assert_eq!((status.unreadable, status.unwritable), (None, None));
        let status = inspect_path("v", &dir.path().join("missing"), false);
        assert!(status.unreadable.unwrap().contains("cannot open"));
        assert!(status.unwritable.is_some());
    }
}
