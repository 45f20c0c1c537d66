//! Scanning a source volume: entries with full metadata, streamed in path order.
//!
//! The walk is depth first; within a directory, names are sorted bytewise, and a directory's
//! entry comes before its contents. Memory holds one stack frame per directory level (its
//! handle and its remaining names), never the whole tree. Directories are opened by handle
//! relative to their parent with `O_NOFOLLOW`, so a directory swapped for a symlink during the
//! scan is reported, not followed out of the volume.
//!
//! Mount points: the scan stays on the root's file system (as `du -x`). An entry on another
//! device, or a directory that is a mount point (a bind mount of the same device too: opened
//! with `RESOLVE_NO_XDEV`), comes out as [`Scanned::MountPoint`] and is not entered, unless
//! [`ScanOptions::mounts`] lets it cross them.
//! Excludes: an entry an exclude pattern matches is left out, and an excluded directory is not
//! entered ([`crate::exclude`]).
//!
//! Hard links: the first name of an inode with `st_nlink > 1` is the *leader*; later names
//! become [`EntryKind::Hardlink`] entries pointing at the leader's id. The map from inode to
//! leader id holds only multiply-linked inodes.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::FileType;

use crate::confine::{self, Mounts, cname};
use crate::exclude::Excludes;
use crate::meta;
use crate::wire::{Entry, EntryKind, Timestamp, Xattr};

/// A problem with one entry that does not stop the scan.
#[derive(Debug)]
pub struct ScanProblem {
    /// Path of the entry (lossy).
    pub path: String,
    /// Path of the entry, raw bytes relative to the root.
    pub raw: Vec<u8>,
    /// What went wrong.
    pub error: io::Error,
}

/// One item produced by the scanner.
#[derive(Debug)]
pub enum Scanned {
    /// An entry to send.
    Entry(Entry),
    /// An entry that could not be read (vanished, unreadable, swapped under us).
    Problem(ScanProblem),
    /// A mount point inside the tree (its path), skipped with what is mounted there.
    MountPoint(Vec<u8>),
}

struct Frame {
    dir: OwnedFd,
    prefix: Vec<u8>,
    names: confine::NamesIter,
}

/// What a scan needs to know of the session it serves.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions<'a> {
    /// Exclude patterns ([`crate::exclude`]): what they match is left out.
    pub excludes: &'a [Vec<u8>],
    /// Whether the scan enters file systems mounted inside the tree.
    pub mounts: Mounts,
    /// Which extended attributes entries carry.
    pub xattrs: meta::XattrPolicy,
}

/// Streams the entries of a tree in path order.
pub struct Scanner {
    stack: Vec<Frame>,
    next_id: u64,
    inodes: HashMap<(u64, u64), u64>,
    policy: meta::XattrPolicy,
    /// Whether entries carry their extended attributes (not for [`totals`]).
    xattrs: bool,
    withheld: meta::Withheld,
    /// The root's device, and whether the scan may leave it.
    device: u64,
    mounts: Mounts,
    excludes: Excludes,
}

impl Scanner {
    /// Starts a scan of the tree whose root directory handle is `root`, leaving out what
    /// `options.excludes` match (invalid patterns are an `InvalidInput` error).
    pub fn new(root: &OwnedFd, options: ScanOptions<'_>) -> io::Result<Self> {
        let excludes =
            Excludes::new(options.excludes).map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let dir = confine::open_dir(root.as_fd(), b"")?;
        let names = confine::list_dir(dir.as_fd())?;
        let device = rustix::fs::fstat(&dir)?.st_dev;
        Ok(Scanner {
            stack: vec![Frame { dir, prefix: Vec::new(), names: names.into_iter() }],
            next_id: 0,
            inodes: HashMap::new(),
            policy: options.xattrs,
            xattrs: true,
            withheld: meta::Withheld::default(),
            device,
            mounts: options.mounts,
            excludes,
        })
    }

    /// The attributes met so far that are not copied (the caller may note the root's).
    pub fn withheld_mut(&mut self) -> &mut meta::Withheld {
        &mut self.withheld
    }

    /// Whether an exclude pattern matches `name` in the directory of frame `frame_index`.
    fn excluded(&self, frame_index: usize, name: &[u8]) -> bool {
        if self.excludes.is_empty() {
            return false;
        }
        let frame = &self.stack[frame_index];
        let mut path = frame.prefix.clone();
        path.extend_from_slice(name);
        self.excludes.excludes(&path, || {
            confine::lstat(frame.dir.as_fd(), name)
                .is_ok_and(|stat| stat.is_some_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory))
        })
    }

    fn entry(&mut self, frame_index: usize, name: &[u8]) -> io::Result<(Entry, Option<OwnedFd>)> {
        let frame = &self.stack[frame_index];
        let mut path = frame.prefix.clone();
        path.extend_from_slice(name);
        let stat = confine::lstat(frame.dir.as_fd(), name)?.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if self.mounts == Mounts::Stay && stat.st_dev != self.device {
            return Err(io::Error::new(io::ErrorKind::CrossesDevices, confine::MountPoint(name.to_vec())));
        }
        let id = self.next_id;
        let file_type = FileType::from_raw_mode(stat.st_mode);
        let mut child = None;
        // Recorded only once the entry is complete, so a failure cannot shift leader ids.
        let mut new_leader = None;
        let kind = match file_type {
            FileType::Directory => {
                child = Some(confine::open_subdir_in(frame.dir.as_fd(), name, self.mounts)?);
                EntryKind::Dir
            }
            FileType::RegularFile => {
                let size = u64::try_from(stat.st_size).unwrap_or(0);
                if stat.st_nlink > 1 {
                    let key = (stat.st_dev, stat.st_ino);
                    if let Some(&leader) = self.inodes.get(&key) {
                        EntryKind::Hardlink { leader }
                    } else {
                        new_leader = Some(key);
                        EntryKind::File { size, leader: true }
                    }
                } else {
                    EntryKind::File { size, leader: false }
                }
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(frame.dir.as_fd(), cname(name).as_c_str(), Vec::new())?;
                EntryKind::Symlink { target: target.into_bytes() }
            }
            FileType::Fifo => EntryKind::Fifo,
            FileType::Socket => EntryKind::Socket,
            FileType::CharacterDevice => EntryKind::CharDevice { rdev: stat.st_rdev },
            FileType::BlockDevice => EntryKind::BlockDevice { rdev: stat.st_rdev },
            FileType::Unknown => return Err(io::Error::other("unknown file type")),
        };
        // Symlinks cannot carry user.* attributes on Linux; hard links share the leader's.
        let xattrs = match kind {
            _ if !self.xattrs => Vec::new(),
            EntryKind::Symlink { .. } | EntryKind::Hardlink { .. } => Vec::new(),
            _ => {
                let withheld = &mut self.withheld;
                meta::read_xattrs_and(frame.dir.as_fd(), name, self.policy, |attr| withheld.note(attr, &path))?
            }
        };
        if let Some(key) = new_leader {
            self.inodes.insert(key, id);
        }
        self.next_id += 1;
        let entry = entry_of((id, path, kind), &stat, xattrs);
        Ok((entry, child))
    }
}

impl Iterator for Scanner {
    type Item = Scanned;

    fn next(&mut self) -> Option<Scanned> {
        loop {
            let top = self.stack.len().checked_sub(1)?;
            let Some(name) = self.stack[top].names.next() else {
                self.stack.pop();
                continue;
            };
            // `lost+found` at the root belongs to the source's file system, not to its data.
            if (top == 0 && crate::reserved::is_furniture(b"", &name)) || self.excluded(top, &name) {
                continue;
            }
            // A name of the form mover gives its temporary files cannot travel (the target
            // would take it for one of its own): skipped, and said so.
            if crate::reserved::is_generated(&name) {
                let mut path = self.stack[top].prefix.clone();
                path.extend_from_slice(&name);
                let error = io::Error::other(
                    "its name has the form mover gives its temporary files, which are never copied: \
                     remove it if an interrupted copy left it, or rename it",
                );
                return Some(Scanned::Problem(ScanProblem { path: confine::display_bytes(&path), raw: path, error }));
            }
            if self.stack[top].prefix.len() + name.len() > confine::MAX_PATH {
                let mut path = self.stack[top].prefix.clone();
                path.extend_from_slice(&name);
                let error = io::Error::other(format!("path longer than {} bytes", confine::MAX_PATH));
                return Some(Scanned::Problem(ScanProblem { path: confine::display_bytes(&path), raw: path, error }));
            }
            match self.entry(top, &name) {
                Ok((entry, child)) => {
                    if let Some(dir) = child {
                        let mut prefix = entry.path.clone();
                        prefix.push(b'/');
                        match confine::list_dir(dir.as_fd()) {
                            Ok(names) => self.stack.push(Frame { dir, prefix, names: names.into_iter() }),
                            Err(error) => {
                                return Some(Scanned::Problem(ScanProblem {
                                    path: confine::display_bytes(&entry.path),
                                    raw: entry.path,
                                    error,
                                }));
                            }
                        }
                    }
                    return Some(Scanned::Entry(entry));
                }
                Err(error) => {
                    let mut path = self.stack[top].prefix.clone();
                    path.extend_from_slice(&name);
                    if confine::mount_point(&error).is_some() {
                        return Some(Scanned::MountPoint(path));
                    }
                    return Some(Scanned::Problem(ScanProblem {
                        path: confine::display_bytes(&path),
                        raw: path,
                        error,
                    }));
                }
            }
        }
    }
}

/// Counts regular files and their bytes, for progress totals (a metadata-only walk of what
/// `options` send).
pub fn totals(root: &OwnedFd, options: ScanOptions<'_>) -> io::Result<(u64, u64)> {
    let mut scanner = Scanner::new(root, options)?;
    scanner.xattrs = false;
    let (mut files, mut bytes) = (0, 0);
    for item in scanner.by_ref() {
        if let Scanned::Entry(Entry { kind: EntryKind::File { size, .. }, .. }) = item {
            files += 1;
            bytes += size;
        } else if let Scanned::Entry(Entry { kind: EntryKind::Hardlink { .. }, .. }) = item {
            files += 1;
        }
    }
    Ok((files, bytes))
}

/// The entry for a file with this `stat`: its permission bits, owner and times.
pub(crate) fn entry_of((id, path, kind): (u64, Vec<u8>, EntryKind), stat: &rustix::fs::Stat, xattrs: Vec<Xattr>) -> Entry {
    Entry {
        id,
        path,
        kind,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        mtime: Timestamp { sec: stat.st_mtime, nsec: u32::try_from(stat.st_mtime_nsec).unwrap_or(0) },
        atime: Timestamp { sec: stat.st_atime, nsec: u32::try_from(stat.st_atime_nsec).unwrap_or(0) },
        xattrs,
    }
}
