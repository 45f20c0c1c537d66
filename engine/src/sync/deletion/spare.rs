//! Sparing what the exclude patterns match from the deletion pass, as rsync does without
//! `--delete-excluded`: an excluded name is never a candidate ([`excluded_names`]), and a
//! candidate directory that holds excluded entries is not removed whole: only what in it is
//! not excluded goes, and the directories on the way to what stays are kept
//! ([`spare_excluded`]; rsync says "cannot delete non-empty directory" for those).
//!
//! The walk below a candidate directory uses handles and an explicit stack (a deep tree cannot
//! overflow the thread's stack), keeps one path buffer for the whole walk, and never follows a
//! symlink. A directory it cannot enter stays one candidate, so the count and removal that
//! follow meet the same error and report it.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::FileType;

use super::{DeletionError, Identity, join, open_listed};
use crate::confine;
use crate::exclude::Excludes;

/// A candidate for deletion: its directory, that directory's identity, its name.
type Candidate = (Vec<u8>, Identity, Vec<u8>);

fn is_dir(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    confine::lstat(dir, name)
        .is_ok_and(|stat| stat.is_some_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory))
}

/// The names of `names` (listed in `dir`, at `path` from the root) that `excludes` match.
pub(super) fn excluded_names(
    excludes: &Excludes,
    dir: BorrowedFd<'_>,
    path: &[u8],
    names: &confine::Names,
) -> HashSet<Vec<u8>> {
    if excludes.is_empty() {
        return HashSet::new();
    }
    names.iter().filter(|name| excludes.excludes(&join(path, name), || is_dir(dir, name))).map(<[u8]>::to_vec).collect()
}

/// One directory of the walk below a candidate.
struct Level {
    dir: OwnedFd,
    identity: Identity,
    names: confine::NamesIter,
    /// Its own name, and the length of the path buffer without it.
    name: Vec<u8>,
    parent_len: usize,
    /// Children that may go whole (not excluded, nothing excluded below).
    whole: Vec<Vec<u8>>,
    /// Something below is excluded: this directory stays.
    keeps: bool,
}

/// Opens directory `name` in `dir` for the walk; `None` when it is not a directory, or not one
/// the walk can enter.
fn enter(dir: BorrowedFd<'_>, name: &[u8], parent_len: usize) -> Option<Level> {
    let dir = confine::open_subdir(dir, name).ok()?;
    let stat = rustix::fs::fstat(&dir).ok()?;
    let names = confine::list_dir(dir.as_fd()).ok()?;
    Some(Level {
        dir,
        identity: (stat.st_dev, stat.st_ino),
        names: names.into_iter(),
        name: name.to_vec(),
        parent_len,
        whole: Vec::new(),
        keeps: false,
    })
}

/// The candidates once excluded entries below candidate directories are spared: a directory
/// with nothing excluded below stays one candidate; one with something excluded below is
/// replaced by its children that may go (recursively).
pub(super) fn spare_excluded(
    root: BorrowedFd<'_>,
    excludes: &Excludes,
    candidates: Vec<Candidate>,
) -> Result<Vec<Candidate>, DeletionError> {
    let mut spared = Vec::with_capacity(candidates.len());
    for (parent, identity, name) in candidates {
        let top = {
            let dir = open_listed(root, &parent, identity)?;
            enter(dir.as_fd(), &name, 0)
        };
        let Some(top) = top else {
            spared.push((parent, identity, name));
            continue;
        };
        let mut path = join(&parent, &name);
        let mut stack = vec![top];
        while let Some(level) = stack.last_mut() {
            if let Some(child) = level.names.next() {
                let own_len = path.len();
                path.push(b'/');
                path.extend_from_slice(&child);
                if excludes.excludes(&path, || is_dir(level.dir.as_fd(), &child)) {
                    level.keeps = true;
                } else if let Some(below) = enter(level.dir.as_fd(), &child, own_len) {
                    stack.push(below);
                    continue;
                } else {
                    level.whole.push(child);
                }
                path.truncate(own_len);
                continue;
            }
            let done = stack.pop().expect("not empty");
            if done.keeps {
                spared.extend(done.whole.into_iter().map(|child| (path.clone(), done.identity, child)));
                if let Some(up) = stack.last_mut() {
                    up.keeps = true;
                }
            } else if let Some(up) = stack.last_mut() {
                up.whole.push(done.name);
            } else {
                spared.push((parent.clone(), identity, name.clone()));
            }
            path.truncate(done.parent_len);
        }
    }
    Ok(spared)
}

#[cfg(test)]
mod tests {
    use super::super::Deletions;
    use super::*;

    #[test]
    fn excluded_entries_stay_also_inside_a_directory_that_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let at = |path: &str| tmp.path().join(path);
        std::fs::create_dir_all(at("old/sub")).unwrap();
        std::fs::create_dir_all(at("gone/deeper")).unwrap();
        for file in ["keep", "c.log", "extra", "old/a", "old/x.log", "old/sub/y.log", "old/sub/b", "gone/deeper/d"] {
            std::fs::write(at(file), b"").unwrap();
        }
        let root = confine::open_dir(std::fs::File::open(tmp.path()).unwrap().as_fd(), b"").unwrap();
        let excludes = Excludes::new(&["*.log"]).unwrap();
        let mut deletions = Deletions::new(true, "test").with_excludes(excludes);
        assert!(deletions.enter(root.as_fd(), b"", b"keep", false).unwrap());
        // `extra`, `old/a`, `old/sub/b`, and `gone` with the two entries below it.
        assert_eq!(deletions.finish(root.as_fd(), true, |_| Ok(())).unwrap(), 6);
        for kept in ["keep", "c.log", "old/x.log", "old/sub/y.log"] {
            assert!(at(kept).exists(), "{kept} was deleted");
        }
        for deleted in ["extra", "old/a", "old/sub/b", "gone"] {
            assert!(!at(deleted).exists(), "{deleted} is still there");
        }
    }
}
