//! What the lanes of one receiving session share ([`Group`]): the files requested, being
//! received, failed, and hard links waiting for them; the report; how metadata is compared and
//! applied; and the directory handles every lane opens entries through.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rustix::fs::{AtFlags, Mode};
use tokio::sync::mpsc;

use super::direct::BufferPool;
use super::is_interruption;
use crate::confine::{self, RelPath, cname};
use crate::meta;
use crate::progress::{Differs, Event, SharedReporter};
use crate::sync::{Result, SyncError};
use crate::volume::RootWatch;
use crate::wire::{Entry, EntryKind, Message, ReceiverReport, SyncOptions, encode_message};

/// Warnings kept in the end-of-session report.
pub(super) const MAX_WARNINGS: usize = 1000;

/// What a file requested as changed blocks is rebuilt from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Basis {
    /// Nothing: the whole content comes from the sender.
    None,
    /// The file at the final name (a changed file), into a new file beside it.
    Existing,
    /// The file at the final name, written where it is (`--inplace`, and the name is the
    /// inode's only one: see [`crate::sync::links`]).
    InPlace,
    /// The partial temporary file an interrupted session left (resume).
    Partial,
}

/// A file requested from the sender.
pub(super) struct Pending {
    pub(super) entry: Entry,
    pub(super) basis: Basis,
}

/// A file in place that has hard links.
#[derive(Clone)]
pub(super) struct Leader {
    pub(super) path: RelPath,
    /// Its device and inode, when the entry check saw them (an unchanged file): a link that
    /// already shares them is checked without opening the leader's directory.
    pub(super) inode: Option<(u64, u64)>,
}

/// What the lanes of one receiving session share.
pub(in crate::sync) struct Group {
    pub(super) root: Arc<OwnedFd>,
    /// Tells whether `root` is still what the volume's path resolves to.
    pub(super) watch: RootWatch,
    pub(super) options: SyncOptions,
    pub(super) reporter: SharedReporter,
    pub(super) is_root: bool,
    pub(super) session: String,
    pub(super) files: Mutex<Files>,
    /// Signalled when a file settles (arrived or failed) and when a lane ends.
    pub(super) settled: Condvar,
    /// The session failed for a reason other than a broken connection: what lanes received
    /// of unfinished files is discarded, not kept for a resume.
    pub(super) abandoned: AtomicBool,
    /// Buffers of direct writes, shared by the lanes.
    pub(super) buffers: Arc<BufferPool>,
    /// `options.excludes`, compiled: what the deletion pass keeps.
    pub(super) excludes: crate::exclude::Excludes,
    /// The extended attributes the session copies.
    pub(super) xattrs: meta::XattrPolicy,
}

/// The files of a session, as the lanes see them.
#[derive(Default)]
pub(super) struct Files {
    /// Requested, no content yet.
    pub(super) pending: HashMap<u64, Pending>,
    /// A lane is receiving them now.
    pub(super) receiving: HashSet<u64>,
    /// Files in place that have hard links (by entry id).
    pub(super) leaders: HashMap<u64, Leader>,
    /// Hard links waiting for their file, by the file's id.
    pub(super) deferred: HashMap<u64, Vec<Entry>>,
    /// Hard links in `deferred`, all leaders together (bounded).
    pub(super) deferred_count: usize,
    /// Files the sender failed to deliver: later hard links to them are skipped, not errors.
    pub(super) failed: HashSet<u64>,
    pub(super) report: ReceiverReport,
    /// Lanes other than the first that still read content.
    pub(super) lanes_open: usize,
    /// The first error of a lane other than the first; it ends the session.
    pub(super) error: Option<SyncError>,
}

impl Group {
    /// A session's shared state; `lanes` is the number of connections it uses.
    pub(in crate::sync) fn new(
        (root, watch): (Arc<OwnedFd>, RootWatch),
        options: SyncOptions,
        reporter: SharedReporter,
        lanes: usize,
    ) -> Result<Arc<Group>> {
        let excludes =
            crate::exclude::Excludes::new(&options.excludes).map_err(|error| SyncError::Protocol(error.to_string()))?;
        let mut token = [0u8; 8];
        getrandom::fill(&mut token).map_err(|e| SyncError::Io {
            op: "cannot draw a session id",
            path: ".".into(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(Arc::new(Group {
            root,
            watch,
            reporter,
            is_root: rustix::process::geteuid().is_root(),
            session: crate::reserved::session(u64::from_le_bytes(token)),
            files: Mutex::new(Files { lanes_open: lanes.saturating_sub(1), ..Files::default() }),
            settled: Condvar::new(),
            abandoned: AtomicBool::new(false),
            buffers: Arc::default(),
            excludes,
            xattrs: crate::sync::xattr_policy(&options),
            options,
        }))
    }

    pub(super) fn files(&self) -> MutexGuard<'_, Files> {
        self.files.lock().expect("no lane panics holding the files lock")
    }

    pub(super) fn warn(&self, message: String) {
        self.reporter.on_event(&Event::Warning { message: message.clone() });
        let mut files = self.files();
        // The report travels in one frame: keep it bounded.
        let warnings = &mut files.report.warnings;
        if warnings.len() < MAX_WARNINGS {
            warnings.push(message);
        } else if warnings.len() == MAX_WARNINGS {
            warnings.push("more warnings were left out of this report (see the agent's log)".into());
        }
    }

    pub(super) fn not_preserved(&self, what: &str) {
        let mut files = self.files();
        if !files.report.not_preserved.iter().any(|known| known == what) {
            files.report.not_preserved.push(what.to_owned());
        }
    }

    pub(super) fn tmp_name(&self, id: u64) -> CString {
        crate::reserved::session_temp(&self.session, id)
    }

    pub(super) fn chown_allowed(&self) -> bool {
        if !self.is_root {
            self.not_preserved("ownership (uid/gid): the target is not running as root");
        }
        self.is_root
    }

    /// Owner, extended attributes, permission bits and times of an open file or directory, in
    /// that order (chown clears setuid bits; ACLs and mode bits share the group class).
    pub(super) fn apply_metadata(&self, fd: BorrowedFd<'_>, entry: &Entry) -> io::Result<()> {
        let mut mode = entry.mode;
        if self.chown_allowed() {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(entry.uid)),
                Some(rustix::fs::Gid::from_raw(entry.gid)),
            )?;
        } else if mode & 0o6000 != 0 && !matches!(entry.kind, EntryKind::Dir) {
            // A setuid file owned by the agent's user is not what the source had: drop the bits.
            mode &= !0o6000;
            self.not_preserved("setuid/setgid bits of files: ownership is not preserved");
        }
        meta::apply_xattrs(fd, &entry.xattrs, self.xattrs)?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
        rustix::fs::futimens(fd, &confine::timestamps(entry.atime, entry.mtime))?;
        Ok(())
    }

    /// Why device nodes are not made in this session, if they are not: the session did not ask
    /// for them, or the target cannot make them (only root can).
    pub(super) fn devices_refused(&self) -> Option<&'static str> {
        if !self.options.devices {
            Some("copying device nodes is off for this session")
        } else if !self.is_root {
            Some("the target does not run as root, and only root can make device nodes")
        } else {
            None
        }
    }

    /// Whether the sender hears of every change, not only deletions.
    pub(super) fn reports_changes(&self) -> bool {
        self.options.itemize || self.options.dry_run
    }

    /// What differs between an existing entry (`stat`) and the sender's `entry`; `size` is the
    /// sender's size of a regular file. Extended attributes are not compared here.
    pub(super) fn differs(&self, stat: &rustix::fs::Stat, entry: &Entry, size: Option<u64>) -> Differs {
        Differs {
            size: size.is_some_and(|size| u64::try_from(stat.st_size).ok() != Some(size)),
            time: !meta::same_mtime(stat, entry.mtime),
            perms: stat.st_mode & 0o7777 != entry.mode,
            owner: self.is_root && stat.st_uid != entry.uid,
            group: self.is_root && stat.st_gid != entry.gid,
            xattrs: false,
        }
    }

    /// What the quick checks compare besides the mtime: the owner only where we can set it.
    pub(super) fn compare(&self) -> meta::Compare {
        meta::Compare { owner: self.is_root, ..meta::Compare::default() }
    }

    /// Whether an open file or directory already has `entry`'s mode, owner, mtime and xattrs.
    pub(super) fn metadata_matches(&self, fd: BorrowedFd<'_>, entry: &Entry) -> bool {
        let Ok(stat) = rustix::fs::fstat(fd) else { return false };
        meta::unchanged(&stat, entry, meta::Compare { mode: true, ..self.compare() })
            && meta::read_xattrs(fd, b"", self.xattrs).is_ok_and(|xattrs| xattrs == entry.xattrs)
    }

    /// Makes hard link `path` (entry `id`) to the file in place at `leader`; `dir` is the
    /// handle of the link's directory, if the caller has it.
    /// Returns false when the link was there already.
    pub(super) fn link(&self, leader: &Leader, path: &RelPath, id: u64, dir: Option<BorrowedFd<'_>>) -> Result<bool> {
        let io = |op, source| SyncError::Io { op, path: path.display(), source };
        let (parent, name) = path.split();
        let opened;
        let dir = if let Some(dir) = dir {
            dir
        } else {
            opened = open_parent(self.root.as_fd(), parent)?;
            opened.as_fd()
        };
        let existing = confine::lstat(dir, name).map_err(|e| io("cannot inspect", e))?;
        let shares = |(dev, ino): (u64, u64)| existing.is_some_and(|stat| stat.st_dev == dev && stat.st_ino == ino);
        if leader.inode.is_some_and(shares) {
            return Ok(false);
        }
        let (leader_parent, leader_name) = leader.path.split();
        let leader_dir =
            confine::open_dir(self.root.as_fd(), leader_parent).map_err(|e| io("cannot open the link source of", e))?;
        let leader_stat = rustix::fs::statat(&leader_dir, cname(leader_name).as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io("cannot inspect the link source of", e.into()))?;
        if shares((leader_stat.st_dev, leader_stat.st_ino)) {
            return Ok(false);
        }
        let leader_name = cname(leader_name);
        if existing.is_none() {
            // A free name takes the link at once: the file is in place and verified already,
            // and no temporary name is left behind if the session is killed here.
            match rustix::fs::linkat(&leader_dir, leader_name.as_c_str(), dir, cname(name).as_c_str(), AtFlags::empty()) {
                Ok(()) => return Ok(true),
                // Taken meanwhile: replaced below, as a name that was there.
                Err(rustix::io::Errno::EXIST) => {}
                Err(error) => return Err(io("cannot create hard link", error.into())),
            }
        }
        let tmp = self.tmp_name(id);
        let _ = rustix::fs::unlinkat(dir, tmp.as_c_str(), AtFlags::empty());
        rustix::fs::linkat(&leader_dir, leader_name.as_c_str(), dir, tmp.as_c_str(), AtFlags::empty())
            .map_err(|e| io("cannot create hard link", e.into()))?;
        replace(dir, &tmp, name)
            .map_err(|e| {
                let _ = rustix::fs::unlinkat(dir, tmp.as_c_str(), AtFlags::empty());
                io("cannot create hard link", e)
            })
            .map(|()| true)
    }

    /// In a dry run: whether hard link `path` (in `dir`) is already a name of its leader's file,
    /// as found unchanged (a leader that would be written has no inode to share yet).
    pub(super) fn shares_inode(leader: &Leader, path: &RelPath, dir: BorrowedFd<'_>) -> Result<bool> {
        let Some((dev, ino)) = leader.inode else { return Ok(false) };
        let existing = confine::lstat(dir, path.split().1).map_err(|source| SyncError::Io {
            op: "cannot inspect",
            path: path.display(),
            source,
        })?;
        Ok(existing.is_some_and(|stat| stat.st_dev == dev && stat.st_ino == ino))
    }

    /// A thread other than the first lane's failed: records the error as the session's, then
    /// tells the sender why on `out` (which makes it end the session).
    pub(super) fn fail(&self, error: SyncError, out: &mpsc::Sender<Vec<u8>>) {
        if !is_interruption(&error) {
            // Before the sender hears of it and closes the other lanes, which then find the
            // session abandoned and keep no half-received file.
            self.abandoned.store(true, Ordering::Release);
        }
        let told = encode_message(&Message::Error(error.to_remote()));
        // Recorded before the sender hears of it too: the first lane, which tells the sender
        // the session's reason, finds this error, not that of a lane cut off since.
        self.files().error.get_or_insert(error);
        self.settled.notify_all();
        let _ = out.blocking_send(told);
    }

    /// The file `id` is settled (arrived or failed): wake whoever waits for the end.
    pub(super) fn settle(&self, id: u64) {
        self.files().receiving.remove(&id);
        self.settled.notify_all();
    }
}

/// Opens directory `parent` (relative to the root), naming what is wrong when it cannot.
pub(super) fn open_parent(root: BorrowedFd<'_>, parent: &[u8]) -> Result<OwnedFd> {
    confine::open_dir(root, parent).map_err(|source| {
        let op = if source.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            "a symlink is in the way of"
        } else if source.kind() == io::ErrorKind::NotFound {
            "parent directory missing (entries out of order) for"
        } else {
            "cannot open the directory"
        };
        SyncError::Io { op, path: confine::display_bytes(parent), source }
    })
}

/// The handle of the directory last used, kept across entries and files.
#[derive(Default)]
pub(super) struct DirCache(Option<(Vec<u8>, Arc<OwnedFd>)>);

impl DirCache {
    pub(super) fn get(&mut self, root: BorrowedFd<'_>, parent: &[u8]) -> Result<Arc<OwnedFd>> {
        match &self.0 {
            Some((cached, dir)) if cached.as_slice() == parent => Ok(dir.clone()),
            _ => {
                self.0 = None;
                let dir = Arc::new(open_parent(root, parent)?);
                self.0 = Some((parent.to_vec(), dir.clone()));
                Ok(dir)
            }
        }
    }
}

/// Renames `tmp` over `name` in `dir`; a directory in the way is removed first (rename cannot
/// replace a directory with a non-directory).
pub(super) fn replace(dir: BorrowedFd<'_>, tmp: &CString, name: &[u8]) -> io::Result<()> {
    let target = cname(name);
    match rustix::fs::renameat(dir, tmp.as_c_str(), dir, target.as_c_str()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::ISDIR | rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST) => {
            confine::remove_any(dir, name)?;
            rustix::fs::renameat(dir, tmp.as_c_str(), dir, target.as_c_str()).map_err(io::Error::from)
        }
        Err(error) => Err(error.into()),
    }
}
