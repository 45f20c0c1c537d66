//! Hard links on the target: which existing inodes the receiver may change.
//!
//! An inode with more than one link has names the receiver does not account for: a name in the
//! target that the source no longer links to this one (a link the source broke), or a name
//! outside the volume root (anyone on the node who can reach the file system may hard-link a
//! file into the target). Writing such an inode, or setting its owner, extended attributes,
//! mode or times, changes the file under every one of its names. So the receiver changes an
//! existing inode only when the name is its one link ([`alone`]):
//! - an `--inplace` update writes the file at its name only then;
//! - metadata that changed while size and mtime did not is set on the inode only then;
//! - a partial file is resumed only if it is one of mover's own, which have one link
//!   ([`crate::reserved::is_own_file`]).
//!
//! Otherwise the entry is replaced: received into a temporary file (its content verified like
//! any other, from the old version as basis), given its metadata and renamed over the name. The
//! other names keep the old inode, untouched. A clone only ever writes its new inode. A link
//! group the source kept is then made whole again by linking its other names to the new inode.
//!
//! A session writes each file once, before it makes that file's links, so it never meets an
//! inode with several links that it made itself: there is no link group it could account for
//! by having made it.
//!
//! The check is made on the open handle (`fstat`), not only on the name's `lstat`, so a link
//! added between the two is seen. A link added once the handle is open names a file of the
//! target, like a link made after the copy.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::{FileType, Stat};

use crate::confine;

/// Whether `stat` is of a regular file whose only name is the one the receiver looked up.
pub(super) fn alone(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile && stat.st_nlink == 1
}

/// Opens the regular file `name` in `dir` for writing, if it is its inode's only name; `None`
/// when the inode has other links.
pub(super) fn open_alone_for_write(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<std::fs::File>> {
    let file = confine::open_file_write(dir, name)?;
    Ok(alone(&rustix::fs::fstat(&file)?).then_some(file))
}

/// Opens the regular file `name` in `dir` (for reading, which is enough to set its metadata),
/// if it is its inode's only name; `None` when the inode has other links.
pub(super) fn open_alone(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<std::fs::File>> {
    let file = confine::open_file_read(dir, name)?;
    Ok(alone(&rustix::fs::fstat(&file)?).then_some(file))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_file_with_another_link_is_not_opened_for_change() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), b"shared").unwrap();
        let root = confine::open_root(tmp.path()).unwrap();
        assert!(open_alone_for_write(root.as_fd(), b"a").unwrap().is_some());
        assert!(open_alone(root.as_fd(), b"a").unwrap().is_some());
        std::fs::hard_link(tmp.path().join("a"), tmp.path().join("b")).unwrap();
        for name in [&b"a"[..], b"b"] {
            assert!(open_alone_for_write(root.as_fd(), name).unwrap().is_none());
            assert!(open_alone(root.as_fd(), name).unwrap().is_none());
        }
        std::fs::remove_file(tmp.path().join("a")).unwrap();
        assert!(open_alone_for_write(root.as_fd(), b"b").unwrap().is_some());
    }
}
