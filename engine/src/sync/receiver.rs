//! The target side: check entries, request content, verify it and put it in place.
//!
//! A regular file is written to `.mover-tmp-<session>-<id>` in its final directory, checked
//! against the sender's digest ([`super::digest`]: blake3 of its pieces), given its metadata, and only then renamed over its final name
//! (a [`VerifiedFile`] is the only thing that can be renamed into place). Symlinks, FIFOs and
//! hard links are also created under a temporary name and renamed, so an entry is replaced
//! atomically and a planted symlink at the final name is replaced, never followed.
//!
//! A session may use several connections (*lanes*, `--streams`). The first carries the tree:
//! entries, verdicts, deletions and directory metadata ([`run`]). Every lane, the first
//! included, carries file content, one file at a time per lane ([`Lane`]; [`run_lane`] for the
//! others). The lanes share one [`Group`]: which files were requested, which are being
//! received, hard links waiting for their files, and the report. The end of the tree waits
//! until every requested file has arrived or failed.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use tokio::sync::mpsc;

use super::blocks;
use super::deletion::Deletions;
use super::links;
use super::{Result, SyncError, WINDOW};
use crate::compress::Decompressor;
use crate::confine::{self, RelPath, cname};
use crate::meta;
use crate::progress::{Change, ChangeAction, ChangeKind, Differs, Event, SharedReporter};
use crate::volume::RootWatch;
use crate::wire::{
    CHUNK_SIZE, DataChunkRef, DeltaChunk, Entry, EntryKind, FileFailure, Incoming, Message, ReceiverReport,
    SyncOptions, decode_incoming, encode_message,
};

/// Warnings kept in the end-of-session report.
const MAX_WARNINGS: usize = 1000;

/// Bytes of replies gathered before they are written.
const REPLY_BATCH: usize = 64 * 1024;

/// Replies gathered before they are written, whatever their size: an eighth of the sender's
/// window, so it gets verdicts while it still scans instead of once it has stopped for them.
const REPLY_COUNT: usize = WINDOW / 8;

/// Most files the receiver accepts as requested-but-not-yet-delivered.
const MAX_PENDING: usize = WINDOW * 2;

/// Files at least this big are written past the page cache (`O_DIRECT`), where the
/// filesystem allows it: see [`DirectWrites`].
const DIRECT_MIN: u64 = 4 << 20;

/// Offset, length and memory alignment of direct writes: 4 KiB, which covers the logical block
/// size of nearly every device (a write it does not cover is redone through the cache).
const DIRECT_ALIGN: usize = 4096;

/// A file being received into its temporary name.
struct OpenFile {
    id: u64,
    entry: Entry,
    path: RelPath,
    dir: Arc<OwnedFd>,
    tmp: CString,
    file: std::fs::File,
    /// The file this one replaces, when only changed blocks are sent: unsent ranges come
    /// from here.
    basis: Option<std::fs::File>,
    /// The basis is the file being written (a resumed partial, or the final file itself with
    /// `--inplace`): unsent ranges are already in place and only need hashing.
    resumed: bool,
    /// The file being written started as a clone of the basis (a reflink, on filesystems that
    /// share extents: XFS, btrfs): unsent ranges are already in place and only need hashing,
    /// read from the basis.
    cloned: bool,
    /// `--inplace`: `file` is the final name itself; nothing to rename, nothing to discard.
    inplace: bool,
    hasher: super::digest::FileDigest,
    /// Everything before this offset has been hashed.
    position: u64,
    /// Set while `file` is written past the page cache.
    direct: Option<DirectWrites>,
}

/// Bytes gathered into one direct write: fewer, larger writes for the device.
const DIRECT_WRITE: usize = 2 << 20;

/// Direct writes handed to the write thread and not yet done, besides the one being gathered.
/// Two measured no faster than one (case (c) on a loop ext4: 1.46-1.73 s against 1.45-1.55 s),
/// and each costs a buffer per stream.
const DIRECT_IN_FLIGHT: usize = 1;

/// Writes of a big file that bypass the page cache (`O_DIRECT`), through aligned copies of the
/// data, written behind by a thread of their own. A migration streams gigabytes that nobody on
/// the target node reads soon: through the cache they would evict the node's working set (the
/// applications still running there) and cost the kernel a fresh page for every 4 KiB, the
/// dearest part of receiving on the machines measured (see the benchmark notes in README.md).
/// A direct write waits for the device, so the lane gathers the next one (reads the basis,
/// hashes, decompresses) while [`DIRECT_IN_FLIGHT`] is written. Verification does not
/// need the cache either: content is hashed before it is written. Reads (the basis, a resumed
/// partial) still go through the cache.
struct DirectWrites {
    /// Where the buffers come from and go back to when the file is done.
    pool: Arc<BufferPool>,
    /// The write being gathered: its buffer, and the file offset and length it stands for.
    gathering: Option<(Aligned, u64, usize)>,
    to_writer: Option<std::sync::mpsc::SyncSender<(Aligned, u64, usize)>>,
    /// Buffers the write thread is done with.
    free: std::sync::mpsc::Receiver<Aligned>,
    writer: Option<std::thread::JoinHandle<io::Result<()>>>,
    /// The file started empty: what is not written is a hole, zeros, so a short hole between
    /// two writes may be written as zeros to keep gathering.
    started_empty: bool,
}

/// Longest run of zero pages written as zeros inside a gathered direct write, rather than left
/// as a hole at the cost of ending the write there. A database copied page by page has a free
/// (zero) page every few dozen: left as holes they cut its 2 MiB writes into writes of about
/// 120 KiB, each waiting for the device (case (c) of the benchmark). Longer zero runs (a VM
/// image's unused space) stay holes.
const DIRECT_HOLE_FILL: u64 = 64 << 10;

/// A buffer of [`DIRECT_WRITE`] bytes at an address aligned to [`DIRECT_ALIGN`].
struct Aligned {
    bytes: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Aligned {
        let bytes = vec![0; DIRECT_WRITE + DIRECT_ALIGN];
        let start = bytes.as_ptr().align_offset(DIRECT_ALIGN);
        Aligned { bytes, start }
    }

    fn get(&self, len: usize) -> &[u8] {
        &self.bytes[self.start..self.start + len]
    }

    fn get_mut(&mut self, from: usize, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start + from..self.start + from + len]
    }
}

/// The buffers of direct writes, kept across files: a fresh buffer costs the kernel a page
/// fault per 4 KiB, which on the machines measured is as dear as the write (see [`DirectWrites`]).
#[derive(Default)]
pub(super) struct BufferPool(Mutex<Vec<Aligned>>);

impl BufferPool {
    fn take(&self) -> Aligned {
        self.0.lock().expect("no thread panics holding the buffer pool").pop().unwrap_or_else(Aligned::new)
    }

    fn give(&self, buffer: Aligned) {
        self.0.lock().expect("no thread panics holding the buffer pool").push(buffer);
    }
}

impl DirectWrites {
    /// Turns `O_DIRECT` on for `file` and starts its write thread; `None` where the filesystem
    /// refuses the flag (tmpfs before Linux 6.6, some FUSE and network filesystems): the file
    /// is then written as usual.
    fn enable(file: &std::fs::File, pool: &Arc<BufferPool>, started_empty: bool) -> Option<DirectWrites> {
        let flags = rustix::fs::fcntl_getfl(file).ok()?;
        let behind = file.try_clone().ok()?;
        rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT).ok()?;
        let (to_writer, jobs) = std::sync::mpsc::sync_channel(DIRECT_IN_FLIGHT);
        let (done, free) = std::sync::mpsc::sync_channel(DIRECT_IN_FLIGHT + 1);
        for _ in 0..=DIRECT_IN_FLIGHT {
            done.send(pool.take()).expect("room for every buffer");
        }
        let spawned =
            std::thread::Builder::new().name("mover-write".into()).spawn(move || write_behind(&behind, &jobs, &done));
        let Ok(writer) = spawned else {
            let _ = rustix::fs::fcntl_setfl(file, flags);
            return None;
        };
        Some(DirectWrites {
            pool: pool.clone(),
            gathering: None,
            to_writer: Some(to_writer),
            free,
            writer: Some(writer),
            started_empty,
        })
    }

    /// Hands `data` for `offset` (both multiples of [`DIRECT_ALIGN`]) to the write thread,
    /// gathered with what came just before it. An error is that of an earlier write.
    fn write(&mut self, mut data: &[u8], mut offset: u64) -> io::Result<()> {
        debug_assert!(data.len().is_multiple_of(DIRECT_ALIGN) && offset.is_multiple_of(DIRECT_ALIGN as u64));
        while !data.is_empty() {
            // Zeros that join `data` to what is gathered: none when it follows at once.
            let join = self.gathering.as_ref().and_then(|(_, start, len)| {
                let hole = offset.checked_sub(start + *len as u64)?;
                let fits = (*len as u64).saturating_add(hole) < DIRECT_WRITE as u64;
                (fits && (hole == 0 || self.started_empty && hole <= DIRECT_HOLE_FILL)).then_some(hole as usize)
            });
            if let Some(hole) = join {
                let (buffer, _, len) = self.gathering.as_mut().expect("checked above");
                buffer.get_mut(*len, hole).fill(0);
                *len += hole;
            } else {
                self.submit()?;
                let Ok(buffer) = self.free.recv() else { return Err(self.writer_error()) };
                self.gathering = Some((buffer, offset, 0));
            }
            let (buffer, _, len) = self.gathering.as_mut().expect("set above");
            let n = (DIRECT_WRITE - *len).min(data.len());
            buffer.get_mut(*len, n).copy_from_slice(&data[..n]);
            *len += n;
            if *len == DIRECT_WRITE {
                self.submit()?;
            }
            data = &data[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Hands the write being gathered to the write thread.
    fn submit(&mut self) -> io::Result<()> {
        let Some(job) = self.gathering.take() else { return Ok(()) };
        if self.to_writer.as_ref().is_some_and(|to_writer| to_writer.send(job).is_ok()) {
            Ok(())
        } else {
            Err(self.writer_error())
        }
    }

    /// Waits until everything handed over is written; the first error of any write. The
    /// buffers go back to the pool.
    fn finish(&mut self) -> io::Result<()> {
        let submitted = self.submit();
        self.to_writer = None;
        let written = match self.writer.take().map(std::thread::JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(error))) => Err(error),
            Some(Err(_)) => Err(io::Error::other("the write thread panicked")),
        };
        if let Some((buffer, _, _)) = self.gathering.take() {
            self.pool.give(buffer);
        }
        for buffer in self.free.try_iter() {
            self.pool.give(buffer);
        }
        written.and(submitted)
    }

    /// Why the write thread stopped (it stops at its first error).
    fn writer_error(&mut self) -> io::Error {
        match self.finish() {
            Err(error) => error,
            Ok(()) => io::Error::other("the write thread stopped"),
        }
    }
}

impl Drop for DirectWrites {
    /// A file dropped before its end (a failed or cut session) has its writes finished all the
    /// same: a partial file kept for a resume holds what was received.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The write thread of a file's [`DirectWrites`]: writes each buffer and hands it back; stops at
/// the first error. A write the filesystem refuses (`EINVAL`: it needs a larger alignment, or a
/// short write left the position unaligned) is made through the cache, and so is the rest of
/// the file.
fn write_behind(
    file: &std::fs::File,
    jobs: &std::sync::mpsc::Receiver<(Aligned, u64, usize)>,
    done: &std::sync::mpsc::SyncSender<Aligned>,
) -> io::Result<()> {
    for (buffer, offset, len) in jobs {
        match file.write_all_at(buffer.get(len), offset) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                let flags = rustix::fs::fcntl_getfl(file)?;
                rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
                file.write_all_at(buffer.get(len), offset)?;
            }
            Err(error) => return Err(error),
        }
        let _ = done.send(buffer);
    }
    Ok(())
}

/// Writes `data` at `offset` of `file`: past the page cache while `direct` is set and the
/// write is aligned; otherwise (the end of a file, an odd delta) through it, for the rest of
/// the file, once the direct writes handed over are done.
fn write_run(file: &std::fs::File, data: &[u8], offset: u64, direct: &mut Option<DirectWrites>) -> io::Result<()> {
    let mut written = 0;
    if let Some(writes) = direct {
        // The whole pages direct; a last partial page (the end of the file) through the cache.
        let whole = data.len() - data.len() % DIRECT_ALIGN;
        if offset.is_multiple_of(DIRECT_ALIGN as u64) {
            writes.write(&data[..whole], offset)?;
            written = whole;
        }
        if written < data.len() {
            writes.finish()?;
            *direct = None;
            let flags = rustix::fs::fcntl_getfl(file)?;
            rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
        }
    }
    file.write_all_at(&data[written..], offset + written as u64)
}

/// What a file requested as changed blocks is rebuilt from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basis {
    /// Nothing: the whole content comes from the sender.
    None,
    /// The file at the final name (a changed file), into a new file beside it.
    Existing,
    /// The file at the final name, written where it is (`--inplace`, and the name is the
    /// inode's only one: see [`super::links`]).
    InPlace,
    /// The partial temporary file an interrupted session left (resume).
    Partial,
}

/// A file requested from the sender.
struct Pending {
    entry: Entry,
    basis: Basis,
}

/// A received file whose content matched the sender's digest.
struct VerifiedFile(OpenFile);

/// A file in place that has hard links.
#[derive(Clone)]
struct Leader {
    path: RelPath,
    /// Its device and inode, when the entry check saw them (an unchanged file): a link that
    /// already shares them is checked without opening the leader's directory.
    inode: Option<(u64, u64)>,
}

/// What the lanes of one receiving session share.
pub(super) struct Group {
    root: Arc<OwnedFd>,
    /// Tells whether `root` is still what the volume's path resolves to.
    watch: RootWatch,
    options: SyncOptions,
    reporter: SharedReporter,
    is_root: bool,
    session: String,
    files: Mutex<Files>,
    /// Signalled when a file settles (arrived or failed) and when a lane ends.
    settled: Condvar,
    /// The session failed for a reason other than a broken connection: what lanes received
    /// of unfinished files is discarded, not kept for a resume.
    abandoned: AtomicBool,
    /// Buffers of direct writes, shared by the lanes.
    buffers: Arc<BufferPool>,
    /// `options.excludes`, compiled: what the deletion pass keeps.
    excludes: crate::exclude::Excludes,
    /// The extended attributes the session copies.
    xattrs: meta::XattrPolicy,
}

/// The files of a session, as the lanes see them.
#[derive(Default)]
struct Files {
    /// Requested, no content yet.
    pending: HashMap<u64, Pending>,
    /// A lane is receiving them now.
    receiving: HashSet<u64>,
    /// Files in place that have hard links (by entry id).
    leaders: HashMap<u64, Leader>,
    /// Hard links waiting for their file, by the file's id.
    deferred: HashMap<u64, Vec<Entry>>,
    /// Hard links in `deferred`, all leaders together (bounded).
    deferred_count: usize,
    /// Files the sender failed to deliver: later hard links to them are skipped, not errors.
    failed: HashSet<u64>,
    report: ReceiverReport,
    /// Lanes other than the first that still read content.
    lanes_open: usize,
    /// The first error of a lane other than the first; it ends the session.
    error: Option<SyncError>,
}

impl Group {
    /// A session's shared state; `lanes` is the number of connections it uses.
    pub(super) fn new(
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
            xattrs: super::xattr_policy(&options),
            options,
        }))
    }

    fn files(&self) -> MutexGuard<'_, Files> {
        self.files.lock().expect("no lane panics holding the files lock")
    }

    fn warn(&self, message: String) {
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

    fn not_preserved(&self, what: &str) {
        let mut files = self.files();
        if !files.report.not_preserved.iter().any(|known| known == what) {
            files.report.not_preserved.push(what.to_owned());
        }
    }

    fn tmp_name(&self, id: u64) -> CString {
        crate::reserved::session_temp(&self.session, id)
    }

    fn chown_allowed(&self) -> bool {
        if !self.is_root {
            self.not_preserved("ownership (uid/gid): the target is not running as root");
        }
        self.is_root
    }

    /// Owner, extended attributes, permission bits and times of an open file or directory, in
    /// that order (chown clears setuid bits; ACLs and mode bits share the group class).
    fn apply_metadata(&self, fd: BorrowedFd<'_>, entry: &Entry) -> io::Result<()> {
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
    fn devices_refused(&self) -> Option<&'static str> {
        if !self.options.devices {
            Some("copying device nodes is off for this session")
        } else if !self.is_root {
            Some("the target does not run as root, and only root can make device nodes")
        } else {
            None
        }
    }

    /// Whether the sender hears of every change, not only deletions.
    fn reports_changes(&self) -> bool {
        self.options.itemize || self.options.dry_run
    }

    /// What differs between an existing entry (`stat`) and the sender's `entry`; `size` is the
    /// sender's size of a regular file. Extended attributes are not compared here.
    fn differs(&self, stat: &rustix::fs::Stat, entry: &Entry, size: Option<u64>) -> Differs {
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
    fn compare(&self) -> meta::Compare {
        meta::Compare { owner: self.is_root, ..meta::Compare::default() }
    }

    /// Whether an open file or directory already has `entry`'s mode, owner, mtime and xattrs.
    fn metadata_matches(&self, fd: BorrowedFd<'_>, entry: &Entry) -> bool {
        let Ok(stat) = rustix::fs::fstat(fd) else { return false };
        meta::unchanged(&stat, entry, meta::Compare { mode: true, ..self.compare() })
            && meta::read_xattrs(fd, b"", self.xattrs).is_ok_and(|xattrs| xattrs == entry.xattrs)
    }

    /// Makes hard link `path` (entry `id`) to the file in place at `leader`; `dir` is the
    /// handle of the link's directory, if the caller has it.
    /// Returns false when the link was there already.
    fn link(&self, leader: &Leader, path: &RelPath, id: u64, dir: Option<BorrowedFd<'_>>) -> Result<bool> {
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
        let tmp = self.tmp_name(id);
        let _ = rustix::fs::unlinkat(dir, tmp.as_c_str(), AtFlags::empty());
        rustix::fs::linkat(&leader_dir, cname(leader_name).as_c_str(), dir, tmp.as_c_str(), AtFlags::empty())
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
    fn shares_inode(leader: &Leader, path: &RelPath, dir: BorrowedFd<'_>) -> Result<bool> {
        let Some((dev, ino)) = leader.inode else { return Ok(false) };
        let existing = confine::lstat(dir, path.split().1).map_err(|source| SyncError::Io {
            op: "cannot inspect",
            path: path.display(),
            source,
        })?;
        Ok(existing.is_some_and(|stat| stat.st_dev == dev && stat.st_ino == ino))
    }

    /// A thread other than the first lane's failed: tells the sender why on `out` (which makes
    /// it end the session) and records the error as the session's.
    fn fail(&self, error: SyncError, out: &mpsc::Sender<Vec<u8>>) {
        if !is_interruption(&error) {
            // Before the sender hears of it and closes the other lanes, which then find the
            // session abandoned and keep no half-received file.
            self.abandoned.store(true, Ordering::Release);
        }
        let _ = out.blocking_send(encode_message(&Message::Error(error.to_remote())));
        self.files().error.get_or_insert(error);
        self.settled.notify_all();
    }

    /// The file `id` is settled (arrived or failed): wake whoever waits for the end.
    fn settle(&self, id: u64) {
        self.files().receiving.remove(&id);
        self.settled.notify_all();
    }
}

/// Opens directory `parent` (relative to the root), naming what is wrong when it cannot.
fn open_parent(root: BorrowedFd<'_>, parent: &[u8]) -> Result<OwnedFd> {
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
struct DirCache(Option<(Vec<u8>, Arc<OwnedFd>)>);

impl DirCache {
    fn get(&mut self, root: BorrowedFd<'_>, parent: &[u8]) -> Result<Arc<OwnedFd>> {
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

/// Receives file content on one connection: one file at a time, each verified and put in place.
struct Lane {
    group: Arc<Group>,
    dirs: DirCache,
    current: Option<OpenFile>,
    decompressor: Option<Decompressor>,
    buffer: Vec<u8>,
    gap_buffer: Vec<u8>,
    delta_buffer: Vec<u8>,
    window: Option<BasisWindow>,
    /// Files this lane put in place, and their content bytes it wrote.
    files: u64,
    bytes: u64,
}

/// The first lane: the tree, the verdicts and the end of the session, plus its share of content.
pub(super) struct Receiver {
    group: Arc<Group>,
    path: Arc<ReplyPath>,
    input: mpsc::Receiver<Result<super::InFrame>>,
    dirs_cache: DirCache,
    dirs: super::dirs::Directories,
    seen_root: bool,
    deletions: Deletions,
    /// In a dry run, the directory being walked that is not on the target (it would be
    /// created): everything beneath it is new, and nothing there is looked at.
    absent: Option<Vec<u8>>,
    /// Encoded replies not yet handed to the writer.
    replies: Vec<u8>,
    /// How many replies `replies` holds.
    replies_held: usize,
    signers: Signers,
    lane: Lane,
}

/// Runs the first lane to the end; on error, tells the sender why. The report is the whole
/// session's.
pub(super) fn run(
    group: Arc<Group>,
    out: mpsc::Sender<Vec<u8>>,
    input: mpsc::Receiver<Result<super::InFrame>>,
    written: Arc<AtomicU64>,
) -> Result<ReceiverReport> {
    let deletions = Deletions::new(group.options.delete, &group.session)
        .with_dry_run(group.options.dry_run)
        .with_excludes(group.excludes.clone());
    let dirs = super::dirs::Directories::new(group.root.clone());
    let path = Arc::new(ReplyPath { out, handed: AtomicU64::new(0), written, stopped: AtomicBool::new(false) });
    let mut receiver = Receiver {
        lane: Lane::new(group.clone()),
        signers: Signers::new(group.clone(), path.clone()),
        group,
        path,
        input,
        deletions,
        absent: None,
        dirs_cache: DirCache::default(),
        dirs,
        seen_root: false,
        replies: Vec::new(),
        replies_held: 0,
    };
    let result = receiver.receive().and_then(|()| receiver.flush_replies());
    if result.is_err() {
        // A signer waiting for room in the replies gives up, and the others sign no more.
        receiver.path.stopped.store(true, Ordering::Release);
    }
    receiver.signers.finish();
    // A lane's failure is why the session ended, even when this lane only saw the sender go.
    let result = match (result, receiver.group.files().error.take()) {
        (Err(_), Some(first)) => Err(first),
        (result, _) => result,
    };
    // Set before any lane closes its half-received file: a failed session keeps none.
    if result.as_ref().is_err_and(|error| !is_interruption(error)) {
        receiver.group.abandoned.store(true, Ordering::Release);
    }
    receiver.lane.close(result.as_ref().is_err_and(is_interruption));
    match result {
        Ok(()) => {
            let report = std::mem::take(&mut receiver.group.files().report);
            let _ = receiver.path.out.blocking_send(encode_message(&Message::Done(report.clone())));
            Ok(report)
        }
        Err(error) => {
            let _ = receiver.path.out.blocking_send(encode_message(&Message::Error(error.to_remote())));
            Err(error)
        }
    }
}

/// Runs a lane other than the first until the sender closes it; on error, tells the sender
/// why on this lane and records the error for the session. `number` names it in the log.
pub(super) fn run_lane(
    group: &Arc<Group>,
    number: usize,
    out: &mpsc::Sender<Vec<u8>>,
    mut input: mpsc::Receiver<Result<super::InFrame>>,
) {
    let _open = LaneOpen(group);
    let mut lane = Lane::new(group.clone());
    let result = (|| {
        while let Some(body) = input.blocking_recv() {
            let body = body?;
            match lane.content(decode_incoming(&body)?)? {
                None => {}
                Some(Message::Error(error)) => return Err(SyncError::Remote(error)),
                Some(other) => {
                    return Err(protocol(format!("unexpected {} message on a content lane", other.name())));
                }
            }
        }
        Ok(())
    })();
    // A lane that ends with a file half received was cut: that is an error for the session.
    let result = match (result, &lane.current) {
        (Ok(()), Some(_)) => Err(SyncError::Disconnected("in the middle of a file")),
        (result, _) => result,
    };
    let interrupted = result.as_ref().is_err_and(is_interruption);
    if let Err(error) = result {
        // Recorded before this lane's file settles, so the end of the session sees it.
        group.fail(error, out);
    }
    lane.close(interrupted);
    tracing::info!(lane = number, files = lane.files, bytes = lane.bytes, "lane finished");
}

/// Counts a lane out of the session when its thread ends, however it ends.
struct LaneOpen<'a>(&'a Group);

impl Drop for LaneOpen<'_> {
    fn drop(&mut self) {
        if let Ok(mut files) = self.0.files.lock() {
            files.lanes_open -= 1;
        }
        self.0.settled.notify_all();
    }
}

/// Bytes of replies the writer may hold unwritten. The queue also has a frame count, but a
/// batch can be large (a block signature is up to 1.5 MiB), and a sender that stops reading
/// while it sends entries of big changed files would otherwise make us hold gigabytes.
const REPLY_BUDGET: u64 = 16 << 20;

/// The first lane's way back to the sender, shared by the receiver thread (verdicts, batched)
/// and the signers (requests of big changed files, one each).
struct ReplyPath {
    out: mpsc::Sender<Vec<u8>>,
    /// Bytes of replies handed to the writer, and (counted by the writer) written.
    handed: AtomicU64,
    written: Arc<AtomicU64>,
    /// The session is over: whoever waits for room gives up.
    stopped: AtomicBool,
}

impl ReplyPath {
    /// Hands `batch` to the writer once it holds no more than [`REPLY_BUDGET`] unwritten.
    fn send(&self, batch: Vec<u8>) -> Result<()> {
        self.wait_for_room()?;
        self.handed.fetch_add(batch.len() as u64, Ordering::AcqRel);
        self.out.blocking_send(batch).map_err(|_| SyncError::Disconnected("while we were replying"))
    }

    /// Waits until the writer has written all but [`REPLY_BUDGET`] of the bytes handed to it.
    /// Only a peer that stops reading makes this wait, so a short sleep is as good as a wake-up.
    fn wait_for_room(&self) -> Result<()> {
        while self.handed.load(Ordering::Acquire).saturating_sub(self.written.load(Ordering::Acquire)) > REPLY_BUDGET {
            if self.out.is_closed() || self.stopped.load(Ordering::Acquire) {
                return Err(SyncError::Disconnected("while we were replying"));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(())
    }
}

/// Changed files whose basis is at least this big are signed on a signer thread: the tree
/// goes on meanwhile, and several big files are signed at once. Smaller ones are signed in
/// line (under a millisecond), their requests batched with the other verdicts.
const SIGN_ASIDE_MIN: u64 = CHUNK_SIZE as u64;

/// The basis of file `id`, to be signed and requested.
struct SignJob {
    id: u64,
    path: String,
    file: std::fs::File,
    size: u64,
    shifts: bool,
}

/// Threads that sign the bases of big changed files and send their requests. Reading and
/// hashing a basis of gigabytes takes seconds, which on the first lane's thread would hold up
/// every entry behind it, and the sender's work on the file, and would use one core. The
/// sender takes verdicts in any order; the end of the tree waits for these files like any other
/// requested file.
struct Signers {
    group: Arc<Group>,
    path: Arc<ReplyPath>,
    /// Started with the first job: most re-syncs have none.
    jobs: Option<std::sync::mpsc::SyncSender<SignJob>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Signers {
    fn new(group: Arc<Group>, path: Arc<ReplyPath>) -> Signers {
        Signers { group, path, jobs: None, threads: Vec::new() }
    }

    /// Queues a basis unless every signer is busy and the queue is full: then hands it back.
    fn try_sign(&mut self, job: SignJob) -> Result<Option<SignJob>> {
        match self.jobs()?.try_send(job) {
            Ok(()) => Ok(None),
            Err(std::sync::mpsc::TrySendError::Full(job)) => Ok(Some(job)),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                Err(SyncError::Disconnected("(the signers stopped)"))
            }
        }
    }

    /// Queues a basis; waits while every signer is busy and the queue is full.
    fn sign(&mut self, job: SignJob) -> Result<()> {
        self.jobs()?.send(job).map_err(|_| SyncError::Disconnected("(the signers stopped)"))
    }

    /// The queue to the signers, started with the first job.
    fn jobs(&mut self) -> Result<&std::sync::mpsc::SyncSender<SignJob>> {
        if self.jobs.is_none() {
            let count = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
            let (jobs, queue) = std::sync::mpsc::sync_channel::<SignJob>(count);
            let queue = Arc::new(Mutex::new(queue));
            for _ in 0..count {
                let (queue, group, path) = (queue.clone(), self.group.clone(), self.path.clone());
                let thread = std::thread::Builder::new()
                    .name("mover-sign".into())
                    .spawn(move || sign_requests(&queue, &group, &path))
                    .map_err(|source| SyncError::Io { op: "cannot start a thread", path: ".".into(), source })?;
                self.threads.push(thread);
            }
            self.jobs = Some(jobs);
        }
        Ok(self.jobs.as_ref().expect("set above"))
    }

    /// Lets the signers finish what they were given, and waits for them.
    fn finish(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A signer: signs bases from `queue` and sends their requests until the queue closes. A
/// failure is the session's; once the session is over (failed, or the connection gone), jobs
/// in hand stop within a chunk and queued ones are dropped.
fn sign_requests(queue: &Mutex<std::sync::mpsc::Receiver<SignJob>>, group: &Group, path: &ReplyPath) {
    let _panic = SignerPanic { group, path };
    loop {
        let job = queue.lock().expect("no signer panics holding the queue").recv();
        let Ok(job) = job else { return };
        if path.stopped.load(Ordering::Acquire) || path.out.is_closed() {
            path.stopped.store(true, Ordering::Release);
            continue;
        }
        let result = blocks::sign_file(&job.file, job.size, blocks::block_size_for(job.size), &path.stopped)
            .map_err(|source| SyncError::Io { op: "cannot read", path: job.path, source })
            .and_then(|signature| {
                path.send(encode_message(&Message::NeedBlocks { id: job.id, signature, shifts: job.shifts }))
            });
        if let Err(error) = result {
            let already = path.stopped.swap(true, Ordering::AcqRel);
            // The connection broke, or the session ended for another reason: whoever saw that
            // first says why.
            if !already && !is_interruption(&error) {
                group.fail(error, &path.out);
            }
        }
    }
}

/// Ends the session when a signer panics: the file it was signing would otherwise wait for
/// its request forever, and so would the sender.
struct SignerPanic<'a> {
    group: &'a Group,
    path: &'a ReplyPath,
}

impl Drop for SignerPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.path.stopped.store(true, Ordering::Release);
            let source = io::Error::other("the thread signing it panicked");
            self.group.fail(SyncError::Io { op: "cannot sign", path: "a changed file".into(), source }, &self.path.out);
        }
    }
}

/// The temporary name of a file being received: derived from its path, size and mtime, so an
/// interrupted run's partial file is found again by the next run for the same source version,
/// and ignored (then cleaned) once the source has changed.
fn partial_name(entry: &Entry) -> CString {
    let mut key = blake3::Hasher::new();
    key.update(&entry.path);
    if let EntryKind::File { size, .. } = entry.kind {
        key.update(&size.to_le_bytes());
    }
    key.update(&entry.mtime.sec.to_le_bytes());
    key.update(&entry.mtime.nsec.to_le_bytes());
    crate::reserved::partial(&key.finalize())
}

fn discard(open: &OpenFile) {
    if open.inplace {
        return;
    }
    let _ = rustix::fs::unlinkat(open.dir.as_fd(), open.tmp.as_c_str(), AtFlags::empty());
}

/// File content (what any lane may carry), as opposed to the tree.
fn is_content(incoming: &Incoming<'_>) -> bool {
    matches!(
        incoming,
        Incoming::Data(_) | Incoming::Message(Message::FileEnd { .. } | Message::FileFailed { .. } | Message::Delta(_))
    )
}

/// A broken connection, as opposed to bad data or a failed write.
fn is_interruption(error: &SyncError) -> bool {
    matches!(error, SyncError::Disconnected(_) | SyncError::Wire(_))
}

fn protocol(message: impl Into<String>) -> SyncError {
    SyncError::Protocol(message.into())
}

impl Receiver {
    fn receive(&mut self) -> Result<()> {
        loop {
            let body = self.next_input()?;
            let incoming = decode_incoming(&body)?;
            if is_content(&incoming) {
                // Verdicts go out before a file's content is written (which may take long), so
                // the sender can keep its other lanes busy.
                self.flush_replies()?;
            }
            let Some(message) = self.lane.content(incoming)? else { continue };
            match message {
                Message::Entry(entry) => self.entry(entry)?,
                Message::EndOfEntries => return self.finish(),
                Message::Keep { path } => {
                    let path = RelPath::new(&path).map_err(|e| protocol(e.to_string()))?;
                    let (parent, name) = path.split();
                    if !self.deletions.enter(self.group.root.as_fd(), parent, name, false)? {
                        return Err(protocol(format!("`{}` arrives outside its directory", path.display())));
                    }
                }
                Message::Error(error) => return Err(SyncError::Remote(error)),
                other => return Err(protocol(format!("unexpected {} message from the sender", other.name()))),
            }
        }
    }

    /// Queues a reply. Replies are batched into one write (up to [`REPLY_BATCH`] bytes or
    /// [`REPLY_COUNT`] replies) and sent whenever the receiver is about to wait for input, so a
    /// re-sync of many unchanged files costs a few hundred writes instead of one tiny TLS record
    /// per file.
    fn reply(&mut self, message: &Message) -> Result<()> {
        self.replies.extend_from_slice(&encode_message(message));
        self.replies_held += 1;
        if self.replies.len() >= REPLY_BATCH || self.replies_held >= REPLY_COUNT {
            self.flush_replies()?;
        }
        Ok(())
    }

    fn flush_replies(&mut self) -> Result<()> {
        if self.replies.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.replies);
        self.replies_held = 0;
        self.path.send(batch)
    }

    /// The next frame body from the sender; pending replies go out first if we would wait.
    fn next_input(&mut self) -> Result<super::InFrame> {
        if let Ok(body) = self.input.try_recv() {
            body
        } else {
            self.flush_replies()?;
            self.input.blocking_recv().ok_or(SyncError::Disconnected("in the middle of the session"))?
        }
    }

    /// Tells the sender of a change to `path`, when the session asked for changes.
    fn report(&mut self, action: ChangeAction, kind: ChangeKind, path: &[u8], differs: Differs) -> Result<()> {
        if !self.group.reports_changes() {
            return Ok(());
        }
        let path = confine::display_bytes(path);
        self.reply(&Message::Change(Change { action, kind, path, differs, entries: 1 }))
    }

    /// A file the dry run would write: counted as written, answered `Skip`.
    fn skip_as_written(&mut self, entry: &Entry, size: u64, leader: bool) -> Result<()> {
        {
            let mut files = self.group.files();
            files.report.files_written += 1;
            files.report.bytes_written += size;
            if leader {
                let path = RelPath::new(&entry.path).map_err(|e| protocol(e.to_string()))?;
                files.leaders.insert(entry.id, Leader { path, inode: None });
            }
        }
        self.reply(&Message::Skip { id: entry.id })
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
    fn parent_dir(&mut self, parent: &[u8]) -> Result<Arc<OwnedFd>> {
        if let Some(dir) = self.deletions.current_dir(parent) {
            return Ok(dir);
        }
        let dir = self.dirs_cache.get(self.group.root.as_fd(), parent)?;
        self.deletions.opened(parent, &dir);
        Ok(dir)
    }

    fn entry(&mut self, entry: Entry) -> Result<()> {
        let group = self.group.clone();
        if entry.path.is_empty() {
            if self.seen_root || entry.kind != EntryKind::Dir {
                return Err(protocol("an entry with an empty path that is not the leading root directory"));
            }
            self.seen_root = true;
            meta::check_xattrs(&entry.xattrs, group.xattrs).map_err(|e| protocol(format!("volume root: {e}")))?;
            self.keep_dir(&entry);
            return Ok(());
        }
        let path = RelPath::new(&entry.path).map_err(|e| protocol(e.to_string()))?;
        meta::check_xattrs(&entry.xattrs, group.xattrs).map_err(|e| protocol(format!("`{}`: {e}", path.display())))?;
        let (parent, name) = path.split();
        if !self.deletions.enter(group.root.as_fd(), parent, name, entry.kind == EntryKind::Dir)? {
            return Err(protocol(format!(
                "`{}` arrives outside its directory (entries must come depth first)",
                path.display()
            )));
        }
        if let Some(absent) = &self.absent {
            if entry.path.strip_prefix(absent.as_slice()).is_some_and(|rest| rest.first() == Some(&b'/')) {
                return self.absent_entry(&entry);
            }
            self.absent = None;
        }
        let io = |op, source| SyncError::Io { op, path: path.display(), source };
        let (parent, name) = path.split();
        let name = name.to_vec();
        let parent = parent.to_vec();
        let dry_run = group.options.dry_run;
        match entry.kind.clone() {
            EntryKind::Dir => {
                let dir = self.parent_dir(&parent)?;
                let existing = confine::lstat(dir.as_fd(), &name).map_err(|e| io("cannot inspect", e))?;
                let is_dir = existing.is_some_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory);
                if !is_dir {
                    self.report(ChangeAction::Create, ChangeKind::Dir, &entry.path, Differs::default())?;
                }
                if dry_run {
                    // Not made: what is beneath it is all new. Directory metadata is not
                    // previewed, so the directory is not kept for the last pass either.
                    if !is_dir {
                        self.absent = Some(entry.path.clone());
                        self.deletions.absent();
                    }
                    return Ok(());
                }
                ensure_dir(dir.as_fd(), &name).map_err(|e| io("cannot create directory", e))?;
                self.keep_dir(&entry);
            }
            EntryKind::File { size, leader } => {
                let dir = self.parent_dir(&parent)?;
                let dir = dir.as_fd();
                let existing = confine::lstat(dir, &name).map_err(|e| io("cannot inspect", e))?;
                let regular = existing.filter(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile);
                let up_to_date = !group.options.checksum
                    && regular.is_some_and(|stat| {
                        meta::unchanged(&stat, &entry, meta::Compare { size: Some(size), ..meta::Compare::default() })
                    });
                if up_to_date {
                    // Most re-synced files are untouched: one stat and one xattr listing prove it.
                    let stat = regular.expect("up to date means it exists");
                    let mut differs = group.differs(&stat, &entry, Some(size));
                    differs.xattrs = differs == Differs::default()
                        && !meta::read_xattrs(dir, &name, group.xattrs).is_ok_and(|xattrs| xattrs == entry.xattrs);
                    let same = differs == Differs::default();
                    // New metadata goes onto the inode only if this is its one name; otherwise
                    // the file is replaced, below (see `links`). A dry run only says so.
                    let settled = same
                        || dry_run
                        || match links::open_alone(dir, &name).map_err(|e| io("cannot open", e))? {
                            Some(file) => {
                                group
                                    .apply_metadata(file.as_fd(), &entry)
                                    .map_err(|e| io("cannot set metadata of", e))?;
                                true
                            }
                            None => false,
                        };
                    if settled {
                        if !same {
                            self.report(ChangeAction::Metadata, ChangeKind::File, &entry.path, differs)?;
                        }
                        if leader {
                            let inode = Some((stat.st_dev, stat.st_ino));
                            group.files().leaders.insert(entry.id, Leader { path, inode });
                        }
                        self.reply(&Message::Skip { id: entry.id })?;
                        return Ok(());
                    }
                }
                {
                    let files = group.files();
                    if files.pending.len() >= MAX_PENDING {
                        return Err(protocol(format!("more than {MAX_PENDING} files requested and not delivered")));
                    }
                    if files.pending.contains_key(&entry.id)
                        || files.receiving.contains(&entry.id)
                        || files.leaders.contains_key(&entry.id)
                    {
                        return Err(protocol(format!("entry id {} used twice", entry.id)));
                    }
                }
                match regular {
                    Some(stat) => {
                        let differs = group.differs(&stat, &entry, Some(size));
                        self.report(ChangeAction::Update, ChangeKind::File, &entry.path, differs)?;
                    }
                    None => self.report(ChangeAction::Create, ChangeKind::File, &entry.path, Differs::default())?,
                }
                if dry_run {
                    return self.skip_as_written(&entry, size, leader);
                }
                let id = entry.id;
                // An interrupted earlier run may have left part of this very version.
                let partial = partial_name(&entry);
                self.deletions.claim(partial.as_bytes());
                // Only a partial this agent could have written: a regular file it owns, mode
                // 0600, one link. Anything else under that name is ignored (and left alone).
                let partial_size = confine::lstat(dir, partial.as_bytes())
                    .map_err(|e| io("cannot inspect", e))?
                    .filter(crate::reserved::is_own_file)
                    .map_or(0, |stat| u64::try_from(stat.st_size).unwrap_or(0));
                let existing_size = regular.map_or(0, |stat| u64::try_from(stat.st_size).unwrap_or(0));
                let (basis, basis_name, basis_size) = if partial_size > 0 && partial_size <= size {
                    (Basis::Partial, partial.as_bytes(), partial_size)
                } else {
                    (Basis::Existing, name.as_slice(), existing_size)
                };
                // A changed or resumed file travels as the blocks the basis lacks.
                if basis_size == 0 || basis_size > blocks::MAX_DELTA_FILE {
                    group.files().pending.insert(id, Pending { entry, basis: Basis::None });
                    self.reply(&Message::Need { id })?;
                    return Ok(());
                }
                let file = confine::open_file_read(dir, basis_name).map_err(|e| io("cannot open", e))?;
                // `--inplace` writes the file at its name only if that is its inode's one
                // name (see `links`); otherwise the new version is written beside it.
                let alone = rustix::fs::fstat(&file).is_ok_and(|stat| links::alone(&stat));
                let basis =
                    if basis == Basis::Existing && group.options.inplace && alone { Basis::InPlace } else { basis };
                // Content copied from elsewhere in the basis needs a basis that is not
                // being written.
                let shifts = basis == Basis::Existing;
                // Pending before the request can leave.
                group.files().pending.insert(id, Pending { entry, basis });
                if basis_size >= SIGN_ASIDE_MIN {
                    let job = SignJob { id, path: path.display(), file, size: basis_size, shifts };
                    if let Some(job) = self.signers.try_sign(job)? {
                        // Every signer is busy: the verdicts gathered so far go out first,
                        // so the sender's other lanes have work meanwhile.
                        self.flush_replies()?;
                        self.signers.sign(job)?;
                    }
                } else {
                    let block_size = blocks::block_size_for(basis_size);
                    let signature = blocks::sign_file(&file, basis_size, block_size, &AtomicBool::new(false))
                        .map_err(|e| io("cannot read", e))?;
                    self.reply(&Message::NeedBlocks { id, signature, shifts })?;
                }
            }
            EntryKind::Hardlink { leader } => {
                if !entry.xattrs.is_empty() {
                    return Err(protocol(format!("hard link `{}` carries extended attributes", path.display())));
                }
                let mut files = group.files();
                if let Some(leader) = files.leaders.get(&leader).cloned() {
                    drop(files);
                    let dir = self.parent_dir(path.split().0)?;
                    let made = if dry_run {
                        !Group::shares_inode(&leader, &path, dir.as_fd())?
                    } else {
                        group.link(&leader, &path, entry.id, Some(dir.as_fd()))?
                    };
                    if made {
                        self.report(ChangeAction::Create, ChangeKind::Hardlink, &entry.path, Differs::default())?;
                    }
                } else if files.pending.contains_key(&leader) || files.receiving.contains(&leader) {
                    if files.deferred_count >= MAX_PENDING * 4 {
                        return Err(protocol("too many hard links waiting for their files"));
                    }
                    files.deferred_count += 1;
                    let path = entry.path.clone();
                    files.deferred.entry(leader).or_default().push(entry);
                    drop(files);
                    // Made once its file has arrived, on whichever lane carries it.
                    self.report(ChangeAction::Create, ChangeKind::Hardlink, &path, Differs::default())?;
                } else if files.failed.contains(&leader) {
                    drop(files);
                    group.warn(format!("hard link `{}` not created: its source file failed", path.display()));
                } else {
                    return Err(protocol(format!("`{}` is a hard link to unknown entry {leader}", path.display())));
                }
            }
            EntryKind::Symlink { target } => {
                if target.is_empty() || target.contains(&0) || target.len() > confine::MAX_PATH {
                    return Err(protocol(format!("`{}` has an invalid symlink target", path.display())));
                }
                let dir = self.parent_dir(&parent)?;
                let dir = dir.as_fd();
                let existing = confine::lstat(dir, &name)
                    .map_err(|e| io("cannot inspect", e))?
                    .filter(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Symlink);
                let same_target = existing.is_some()
                    && rustix::fs::readlinkat(dir, cname(&name).as_c_str(), Vec::new())
                        .is_ok_and(|current| current.as_bytes() == target.as_slice());
                if same_target && existing.is_some_and(|stat| meta::unchanged(&stat, &entry, group.compare())) {
                    return Ok(());
                }
                match existing {
                    Some(stat) => {
                        let differs =
                            Differs { size: !same_target, perms: false, ..group.differs(&stat, &entry, None) };
                        self.report(ChangeAction::Update, ChangeKind::Symlink, &entry.path, differs)?;
                    }
                    None => self.report(ChangeAction::Create, ChangeKind::Symlink, &entry.path, Differs::default())?,
                }
                if dry_run {
                    return Ok(());
                }
                let tmp = group.tmp_name(entry.id);
                rustix::fs::symlinkat(cname(&target).as_c_str(), dir, tmp.as_c_str())
                    .map_err(|e| io("cannot create symlink", e.into()))?;
                self.finish_special(dir, &name, &tmp, &entry).map_err(|e| io("cannot create symlink", e))?;
            }
            EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } => {
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
                let dir = self.parent_dir(&parent)?;
                let dir = dir.as_fd();
                let existing = confine::lstat(dir, &name)
                    .map_err(|e| io("cannot inspect", e))?
                    .filter(|stat| FileType::from_raw_mode(stat.st_mode) == file_type && stat.st_rdev == rdev);
                let kind = if device { ChangeKind::Device } else { ChangeKind::Special };
                match existing {
                    Some(stat) if group.differs(&stat, &entry, None) == Differs::default() => return Ok(()),
                    Some(stat) => {
                        self.report(ChangeAction::Metadata, kind, &entry.path, group.differs(&stat, &entry, None))?;
                    }
                    None => self.report(ChangeAction::Create, kind, &entry.path, Differs::default())?,
                }
                if dry_run {
                    return Ok(());
                }
                let tmp = group.tmp_name(entry.id);
                rustix::fs::mknodat(dir, tmp.as_c_str(), file_type, Mode::from_raw_mode(0o600), rdev)
                    .map_err(|e| io("cannot create special file", e.into()))?;
                self.finish_special(dir, &name, &tmp, &entry).map_err(|e| io("cannot create special file", e))?;
            }
        }
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

    /// The end of the tree: waits until every requested file has arrived or failed (on any
    /// lane), then deletes what the source lacks and sets directory metadata.
    fn finish(&mut self) -> Result<()> {
        if self.lane.current.is_some() {
            return Err(protocol("end of entries while a file is incomplete"));
        }
        {
            let mut files = self.group.files();
            loop {
                if let Some(error) = files.error.take() {
                    return Err(error);
                }
                if files.pending.is_empty() && files.receiving.is_empty() {
                    break;
                }
                if files.lanes_open == 0 {
                    return Err(protocol("end of entries while requested files are still undelivered"));
                }
                files = self.group.settled.wait(files).expect("no lane panics holding the files lock");
            }
        }
        self.dirs_cache = DirCache::default();
        // Nothing is deleted, and no success reported, in a directory hidden under a mount since.
        self.group.watch.check()?;
        let root = self.group.root.clone();
        let mut deletions = Vec::new();
        let deleted = self.deletions.finish(root.as_fd(), self.group.options.allow_mass_delete, |change| {
            deletions.push(change);
            Ok(())
        })?;
        self.group.files().report.entries_deleted = deleted;
        for kept in self.deletions.take_kept_mounts() {
            self.group.warn(kept);
        }
        // Every deletion is reported, whatever the session asked for.
        for change in deletions {
            self.reply(&Message::Change(change))?;
        }
        if self.group.options.dry_run {
            return Ok(());
        }
        // Deepest first, so setting a directory's times is not undone by work inside it.
        let group = &self.group;
        let read_error =
            |source| SyncError::Io { op: "cannot read back the list of directories for", path: ".".into(), source };
        self.dirs.drain_deepest_first(read_error, |entry| {
            let shown = if entry.path.is_empty() { ".".to_owned() } else { confine::display_bytes(&entry.path) };
            let dir = confine::open_dir(root.as_fd(), &entry.path).map_err(|source| SyncError::Io {
                op: "cannot open directory",
                path: shown.clone(),
                source,
            })?;
            if !group.metadata_matches(dir.as_fd(), &entry) {
                group.apply_metadata(dir.as_fd(), &entry).map_err(|source| SyncError::Io {
                    op: "cannot set metadata of",
                    path: shown,
                    source,
                })?;
            }
            Ok(())
        })
    }

    /// Keeps a directory entry for the last pass, which sets its metadata.
    fn keep_dir(&mut self, entry: &Entry) {
        if let Some(error) = self.dirs.push(entry) {
            self.group.warn(format!(
                "cannot keep the list of directories in an unnamed file on the target volume ({error}): \
                 it stays in memory, about 200 bytes per directory"
            ));
        }
    }
}

impl Lane {
    fn new(group: Arc<Group>) -> Lane {
        Lane {
            group,
            dirs: DirCache::default(),
            current: None,
            decompressor: None,
            buffer: Vec::with_capacity(CHUNK_SIZE),
            gap_buffer: Vec::new(),
            delta_buffer: Vec::new(),
            window: None,
            files: 0,
            bytes: 0,
        }
    }

    /// Handles a content frame (data, delta, end or failure of a file); hands anything else back.
    fn content(&mut self, incoming: Incoming<'_>) -> Result<Option<Message>> {
        self.group.watch.check_now_and_then()?;
        let message = match incoming {
            Incoming::Data(chunk) => {
                self.data(&chunk)?;
                return Ok(None);
            }
            Incoming::Message(message) => message,
        };
        match message {
            Message::FileEnd { id, blake3 } => self.file_end(id, blake3)?,
            Message::FileFailed { id, reason } => self.file_failed(id, reason)?,
            Message::Delta(delta) => self.delta(&delta)?,
            other => return Ok(Some(other)),
        }
        Ok(None)
    }

    /// After the lane's last frame: a broken connection (`interrupted`) keeps what arrived of
    /// the current file (the next run resumes from it), unless the session failed otherwise;
    /// any other failure (bad data, full disk) removes it.
    fn close(&mut self, interrupted: bool) {
        if let Some(open) = self.current.take() {
            if !interrupted || self.group.abandoned.load(Ordering::Acquire) {
                discard(&open);
            }
            self.group.settle(open.id);
        }
    }

    /// The open file for `id`, created on its first chunk (or at its end, for empty files).
    fn open_file(&mut self, id: u64) -> Result<&mut OpenFile> {
        if let Some(open) = &self.current {
            if open.id != id {
                return Err(protocol(format!("data for entry {id} while entry {} is incomplete", open.id)));
            }
        } else {
            let Pending { entry, basis } = {
                let mut files = self.group.files();
                let pending = files
                    .pending
                    .remove(&id)
                    .ok_or_else(|| protocol(format!("data for entry {id}, which was not requested")))?;
                files.receiving.insert(id);
                pending
            };
            let path = RelPath::new(&entry.path).map_err(|e| protocol(e.to_string()))?;
            let tmp = partial_name(&entry);
            let (parent, name) = path.split();
            let dir = self.dirs.get(self.group.root.as_fd(), parent)?;
            let io = |op, source| SyncError::Io { op, path: path.display(), source };
            // Checked again on the handle: a link made since the entry was checked is seen.
            let inplace_file = if basis == Basis::InPlace {
                links::open_alone_for_write(dir.as_fd(), name)
                    .map_err(|e| io("cannot open for an in-place update", e))?
            } else {
                None
            };
            let inplace = inplace_file.is_some();
            let EntryKind::File { size, .. } = entry.kind else { unreachable!("only files are requested") };
            let mut cloned = false;
            let (file, basis_file) = match basis {
                Basis::Partial => {
                    let reopen = |e| io("cannot reopen the partial file of", e);
                    let file = confine::open_file_write(dir.as_fd(), tmp.as_bytes()).map_err(reopen)?;
                    let stat = rustix::fs::fstat(&file).map_err(|e| reopen(e.into()))?;
                    if !crate::reserved::is_own_file(&stat) {
                        return Err(reopen(io::Error::other(
                            "it is no longer a private file of ours with one link (it changed during the session)",
                        )));
                    }
                    (file, Some(confine::open_file_read(dir.as_fd(), tmp.as_bytes()).map_err(reopen)?))
                }
                Basis::InPlace | Basis::Existing if let Some(file) = inplace_file => (
                    file,
                    Some(
                        confine::open_file_read(dir.as_fd(), name)
                            .map_err(|e| io("cannot reopen the previous version of", e))?,
                    ),
                ),
                Basis::InPlace | Basis::Existing => {
                    let _ = rustix::fs::unlinkat(&dir, tmp.as_c_str(), AtFlags::empty());
                    let file = confine::create_file(dir.as_fd(), tmp.as_bytes())
                        .map_err(|e| io("cannot create a temporary file for", e))?;
                    let basis = confine::open_file_read(dir.as_fd(), name)
                        .map_err(|e| io("cannot reopen the previous version of", e))?;
                    // Where extents can be shared, the new version starts as the old one and
                    // only what changed is written; elsewhere (ext4, tmpfs) this fails at once.
                    cloned = rustix::fs::ioctl_ficlone(&file, &basis).is_ok();
                    let old_size = basis.metadata().map_err(|e| io("cannot inspect", e))?.len();
                    if !cloned {
                        // A clone that failed part way (no space, quota) may have shared some
                        // extents: the file must be the empty hole the copy path expects.
                        file.set_len(0).map_err(|e| io("cannot write", e))?;
                    } else if old_size > size {
                        // Cut to the new size now (nothing is written yet, so this is cheap), so
                        // that a partial left by an interruption can be resumed.
                        file.set_len(size).map_err(|e| io("cannot write", e))?;
                    }
                    (file, Some(basis))
                }
                Basis::None => {
                    let _ = rustix::fs::unlinkat(&dir, tmp.as_c_str(), AtFlags::empty());
                    (
                        confine::create_file(dir.as_fd(), tmp.as_bytes())
                            .map_err(|e| io("cannot create a temporary file for", e))?,
                        None,
                    )
                }
            };
            let resumed = basis == Basis::Partial || inplace;
            // Not the live file of `--inplace` (another process may have it mapped, and its
            // cached pages would then disagree with what is written past them), nor a clone,
            // where only the changed blocks are written: small writes, each of which would wait
            // for the device (and, on XFS, remap an extent) instead of landing in the cache.
            let direct = if size >= DIRECT_MIN && !inplace && !cloned {
                DirectWrites::enable(&file, &self.group.buffers, !resumed)
            } else {
                None
            };
            self.current = Some(OpenFile {
                id,
                entry,
                path,
                dir,
                tmp,
                file,
                basis: basis_file,
                resumed,
                cloned,
                inplace,
                hasher: super::digest::FileDigest::default(),
                position: 0,
                direct,
            });
        }
        Ok(self.current.as_mut().expect("set above"))
    }

    fn data(&mut self, chunk: &DataChunkRef<'_>) -> Result<()> {
        if chunk.raw_len as usize > CHUNK_SIZE || chunk.bytes.len() > CHUNK_SIZE + 1024 {
            return Err(protocol(format!("data chunk of {} bytes exceeds the chunk size", chunk.raw_len)));
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut gap_buffer = std::mem::take(&mut self.gap_buffer);
        let decompressor = self.decompressor()?;
        // Raw chunks are written straight from the frame; compressed ones through `buffer`.
        let unpacked = if chunk.compressed {
            decompressor.unpack(true, chunk.bytes, chunk.raw_len as usize, &mut buffer)
        } else if chunk.bytes.len() == chunk.raw_len as usize {
            Ok(())
        } else {
            Err(io::Error::other("raw chunk length differs from its declared length"))
        };
        let content: &[u8] = if chunk.compressed { &buffer } else { chunk.bytes };
        let result = (|| {
            let open = self.open_file(chunk.id)?;
            check_range(open, chunk.offset, chunk.raw_len)?;
            unpacked.map_err(|e| protocol(format!("`{}`: {e}", open.path.display())))?;
            write_content(open, chunk.offset, content, &mut gap_buffer)?;
            self.bytes += u64::from(chunk.raw_len);
            self.group.files().report.bytes_written += u64::from(chunk.raw_len);
            Ok(())
        })();
        self.buffer = buffer;
        self.gap_buffer = gap_buffer;
        result
    }

    /// The lane's decompressor, made on first use.
    fn decompressor(&mut self) -> Result<&mut Decompressor> {
        if self.decompressor.is_none() {
            self.decompressor = Some(Decompressor::new().map_err(|e| protocol(e.to_string()))?);
        }
        Ok(self.decompressor.as_mut().expect("just set"))
    }

    /// Content made by applying an rsync delta to a window of the basis.
    fn delta(&mut self, chunk: &DeltaChunk) -> Result<()> {
        // A delta of all-literal data is its data plus a few bytes per command.
        let max_delta = 2 * CHUNK_SIZE + 4096;
        if chunk.len as usize > CHUNK_SIZE
            || u64::from(chunk.window_len) > blocks::MAX_WINDOW
            || chunk.delta_len as usize > max_delta
            || chunk.bytes.len() > max_delta + 1024
        {
            return Err(protocol(format!(
                "delta of {} bytes against a window of {} exceeds the chunk or window size",
                chunk.len, chunk.window_len
            )));
        }
        let mut delta = std::mem::take(&mut self.delta_buffer);
        let mut made = std::mem::take(&mut self.buffer);
        let mut gap_buffer = std::mem::take(&mut self.gap_buffer);
        let mut window = self.window.take();
        let decompressor = self.decompressor()?;
        let unpacked = decompressor.unpack(chunk.compressed, &chunk.bytes, chunk.delta_len as usize, &mut delta);
        let result = (|| {
            let open = self.open_file(chunk.id)?;
            check_range(open, chunk.offset, chunk.len)?;
            let shown = open.path.display();
            unpacked.map_err(|e| protocol(format!("`{shown}`: {e}")))?;
            let Some(basis) = open.basis.as_ref().filter(|_| !open.resumed) else {
                return Err(protocol(format!("a delta for `{shown}`, whose basis cannot serve one")));
            };
            let base = window
                .get_or_insert_with(BasisWindow::default)
                .load(chunk.id, basis, chunk.window_start, u64::from(chunk.window_len))
                .map_err(|source| SyncError::Io {
                    op: "cannot read the previous version of",
                    path: shown.clone(),
                    source,
                })?;
            made.clear();
            fast_rsync::apply_limited(base, &delta, &mut made, chunk.len as usize)
                .map_err(|e| protocol(format!("bad delta for `{shown}`: {e}")))?;
            if made.len() != chunk.len as usize {
                return Err(protocol(format!(
                    "a delta for `{shown}` makes {} bytes, not the {} declared",
                    made.len(),
                    chunk.len
                )));
            }
            write_content(open, chunk.offset, &made, &mut gap_buffer)?;
            self.bytes += u64::from(chunk.len);
            self.group.files().report.bytes_written += u64::from(chunk.len);
            Ok(())
        })();
        self.delta_buffer = delta;
        self.buffer = made;
        self.gap_buffer = gap_buffer;
        self.window = window;
        result
    }

    fn file_end(&mut self, id: u64, expected: [u8; 32]) -> Result<()> {
        self.open_file(id)?;
        let open = self.current.take().expect("opened above");
        // On failure the file stays counted as being received: the session ends with the error.
        let verified = self.verify(open, expected)?;
        let path = verified.0.path.clone();
        let leader = matches!(verified.0.entry.kind, EntryKind::File { leader: true, .. });
        let installed = install(verified);
        let links = {
            let mut files = self.group.files();
            if installed.is_ok() {
                self.files += 1;
                files.report.files_written += 1;
                if leader {
                    files.leaders.insert(id, Leader { path: path.clone(), inode: None });
                }
            }
            let links = files.deferred.remove(&id).unwrap_or_default();
            files.deferred_count -= links.len();
            links
        };
        // The file counts as received only once its links exist: the end of the session waits.
        installed?;
        let leader = Leader { path, inode: None };
        for link in links {
            let link_path = RelPath::new(&link.path).map_err(|e| protocol(e.to_string()))?;
            self.group.link(&leader, &link_path, link.id, None)?;
        }
        self.group.settle(id);
        Ok(())
    }

    fn file_failed(&mut self, id: u64, reason: FileFailure) -> Result<()> {
        let links = {
            let mut files = self.group.files();
            if self.current.as_ref().is_some_and(|open| open.id == id) {
                discard(&self.current.take().expect("checked"));
            } else if files.pending.remove(&id).is_none() {
                return Err(protocol(format!("failure reported for entry {id}, which was not requested")));
            }
            files.failed.insert(id);
            let links = files.deferred.remove(&id).unwrap_or_default();
            files.deferred_count -= links.len();
            links
        };
        for link in links {
            self.group.warn(format!(
                "hard link `{}` not created: its source file failed ({reason:?})",
                confine::display_bytes(&link.path)
            ));
        }
        self.group.settle(id);
        Ok(())
    }

    /// Checks the content against the sender's digest and applies metadata; on any failure the
    /// temporary file is removed and the final name is left untouched.
    fn verify(&mut self, mut open: OpenFile, expected: [u8; 32]) -> Result<VerifiedFile> {
        match self.check_and_finish(&mut open, expected) {
            Ok(()) => Ok(VerifiedFile(open)),
            Err(error) => {
                discard(&open);
                Err(error)
            }
        }
    }

    fn check_and_finish(&mut self, open: &mut OpenFile, expected: [u8; 32]) -> Result<()> {
        let EntryKind::File { size, .. } = open.entry.kind else { unreachable!("only files are opened") };
        let shown = open.path.display();
        let io = |op, source| SyncError::Io { op, path: shown.clone(), source };
        fill_gap(open, size, &mut self.gap_buffer).map_err(|e| io("cannot write", e))?;
        // What the write thread holds is on the file before its size, metadata and name.
        if let Some(mut writes) = open.direct.take() {
            writes.finish().map_err(|e| io("cannot write", e))?;
        }
        // Only when it differs (a hole at the end, a shorter clone or partial): on XFS, setting
        // the size of a file whose data is not written out yet writes it out at once.
        if open.file.metadata().map_err(|e| io("cannot inspect", e))?.len() != size {
            open.file.set_len(size).map_err(|e| io("cannot write", e))?;
        }
        if open.hasher.finalize() != expected {
            return Err(SyncError::Verification { path: open.path.display() });
        }
        self.group.apply_metadata(open.file.as_fd(), &open.entry).map_err(|e| io("cannot set metadata of", e))?;
        if self.group.options.fsync {
            open.file.sync_all().map_err(|e| io("cannot fsync", e))?;
        }
        Ok(())
    }
}

/// Renames a verified file over its final name.
fn install(verified: VerifiedFile) -> Result<()> {
    let open = verified.0;
    if open.inplace {
        return Ok(());
    }
    let (_, name) = open.path.split();
    replace(open.dir.as_fd(), &open.tmp, name).map_err(|source| {
        discard(&open);
        SyncError::Io { op: "cannot rename into place", path: open.path.display(), source }
    })
}

/// Checks that `len` bytes at `offset` come in order and within the file's size.
fn check_range(open: &OpenFile, offset: u64, len: u32) -> Result<()> {
    let EntryKind::File { size, .. } = open.entry.kind else { unreachable!("only files are requested") };
    let end = offset.checked_add(u64::from(len));
    if offset < open.position || end.is_none_or(|end| end > size) {
        return Err(protocol(format!(
            "content at offset {offset} for `{}` is out of order or beyond its size",
            open.path.display()
        )));
    }
    Ok(())
}

/// Writes content at `offset` (checked by [`check_range`]), after what lies between the last
/// content and it, and hashes it.
fn write_content(open: &mut OpenFile, offset: u64, content: &[u8], gap_buffer: &mut Vec<u8>) -> Result<()> {
    let shown = open.path.display();
    let write_error = |source| SyncError::Io { op: "cannot write", path: shown.clone(), source };
    fill_gap(open, offset, gap_buffer).map_err(write_error)?;
    open.hasher.update(content);
    // A resumed partial or a clone is not a fresh hole: its zero pages are punched out.
    let punch = open.resumed || open.cloned;
    write_pages(&open.file, content, offset, punch, &mut open.direct).map_err(write_error)?;
    open.position = offset + content.len() as u64;
    Ok(())
}

/// The part of a basis file the current deltas copy from. Consecutive windows of one file
/// overlap (they slide along with the content), so only what is new is read.
#[derive(Default)]
struct BasisWindow {
    id: u64,
    start: u64,
    bytes: Vec<u8>,
}

impl BasisWindow {
    /// The basis bytes `[start, start + len)` of file `id` (fewer at the end of the basis).
    fn load(&mut self, id: u64, basis: &std::fs::File, start: u64, len: u64) -> io::Result<&[u8]> {
        let cached_end = self.start + self.bytes.len() as u64;
        if self.id == id && start >= self.start && start <= cached_end && !self.bytes.is_empty() {
            self.bytes.drain(..(start - self.start) as usize);
        } else {
            self.bytes.clear();
        }
        self.id = id;
        self.start = start;
        let have = self.bytes.len() as u64;
        if have < len {
            let want = (len - have) as usize;
            self.bytes.resize(have as usize + want, 0);
            let got = blocks::read_full(basis, &mut self.bytes[have as usize..], start + have)?;
            self.bytes.truncate(have as usize + got);
        }
        Ok(&self.bytes[..(len as usize).min(self.bytes.len())])
    }
}

/// Brings a file being received up to `offset`: the range the sender did not send is a hole
/// (new files) or comes from the basis (changed files). Either way it is hashed.
fn fill_gap(open: &mut OpenFile, offset: u64, buffer: &mut Vec<u8>) -> io::Result<()> {
    let Some(basis) = &open.basis else {
        open.hasher.zeros(offset - open.position);
        open.position = offset;
        return Ok(());
    };
    buffer.resize(CHUNK_SIZE, 0);
    let basis_size = basis.metadata()?.len();
    let sparse = blocks::is_sparse(basis, basis_size);
    while open.position < offset {
        if sparse {
            // A hole of the basis is zeros: hash them, write nothing (the new file is a hole there).
            let (data_start, _) = blocks::data_range(basis, open.position, basis_size);
            let hole_end = data_start.min(offset);
            if hole_end > open.position {
                open.hasher.zeros(hole_end - open.position);
                open.position = hole_end;
                continue;
            }
        }
        let want = (offset - open.position).min(CHUNK_SIZE as u64) as usize;
        let got = blocks::read_full(basis, &mut buffer[..want], open.position)?;
        // Past the end of the basis the sender must have sent data; zeros keep the hash honest.
        buffer[got..want].fill(0);
        open.hasher.update(&buffer[..want]);
        if !open.resumed && !open.cloned {
            write_pages(&open.file, &buffer[..want], open.position, false, &mut open.direct)?;
        }
        open.position += want as u64;
    }
    Ok(())
}

/// Writes `data` at `offset` page by page: non-zero pages are written; all-zero pages are left
/// alone in a fresh temporary file (it starts as one hole, so they stay holes and sparse files
/// stay sparse; direct writes may still write a short run of them, see [`DIRECT_HOLE_FILL`]),
/// or, with `punch`, punched out of a reused file that may hold old data there.
fn write_pages(
    file: &std::fs::File,
    data: &[u8],
    offset: u64,
    punch: bool,
    direct: &mut Option<DirectWrites>,
) -> io::Result<()> {
    const PAGE: usize = 4096;
    let mut start = 0;
    while start < data.len() {
        let zero = blocks::is_zero(&data[start..(start + PAGE).min(data.len())]);
        let mut end = start;
        while end < data.len() && blocks::is_zero(&data[end..(end + PAGE).min(data.len())]) == zero {
            end = (end + PAGE).min(data.len());
        }
        let at = offset + start as u64;
        if !zero {
            write_run(file, &data[start..end], at, direct)?;
        } else if punch {
            let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            if rustix::fs::fallocate(file, flags, at, (end - start) as u64).is_err() {
                // No hole punching here: zeros it is.
                write_run(file, &data[start..end], at, direct)?;
            }
        }
        start = end;
    }
    Ok(())
}

/// Makes sure `name` in `dir` is a real directory: a symlink or file in the way is replaced.
fn ensure_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match confine::lstat(dir, name)? {
        Some(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => return Ok(()),
        Some(_) => confine::remove_any(dir, name)?,
        None => {}
    }
    rustix::fs::mkdirat(dir, cname(name).as_c_str(), Mode::from_raw_mode(0o700)).map_err(io::Error::from)
}

/// Renames `tmp` over `name` in `dir`; a directory in the way is removed first (rename cannot
/// replace a directory with a non-directory).
fn replace(dir: BorrowedFd<'_>, tmp: &CString, name: &[u8]) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_wait_while_the_writer_holds_too_many_bytes_and_stop_when_it_is_gone() {
        let (out, mut from_thread) = mpsc::channel::<Vec<u8>>(4);
        let path = ReplyPath {
            out,
            handed: AtomicU64::new(REPLY_BUDGET),
            written: Arc::new(AtomicU64::new(0)),
            stopped: AtomicBool::new(false),
        };
        // Within the budget: no wait.
        path.wait_for_room().unwrap();
        // Over it: waits until the writer catches up.
        path.handed.store(REPLY_BUDGET + (1 << 20), Ordering::Release);
        let writer = {
            let written = path.written.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(100));
                written.store(1 << 20, Ordering::Release);
            })
        };
        let started = std::time::Instant::now();
        path.wait_for_room().unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(50), "did not wait for the writer");
        writer.join().unwrap();
        // Over it once the session is over: an error, not a wait forever.
        path.handed.store(REPLY_BUDGET + (2 << 20), Ordering::Release);
        path.stopped.store(true, Ordering::Release);
        assert!(matches!(path.wait_for_room().unwrap_err(), SyncError::Disconnected(_)));
        // Over it with the writer gone: the same.
        path.stopped.store(false, Ordering::Release);
        from_thread.close();
        let error = path.wait_for_room().unwrap_err();
        assert!(matches!(error, SyncError::Disconnected(_)), "{error}");
    }

    /// Direct writes where everything is aligned; an unaligned write (the end of a file, an odd
    /// delta) goes through the page cache and ends direct writes for the file.
    #[test]
    fn direct_writes_fall_back_to_the_cache_when_unaligned() {
        let tmp = tempfile::tempdir().unwrap();
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp.path().join("f"))
            .unwrap();
        let Some(writes) = DirectWrites::enable(&file, &Arc::default(), true) else {
            eprintln!("skipped: {} refuses O_DIRECT", tmp.path().display());
            return;
        };
        let mut direct = Some(writes);
        let pattern = |seed: u8, len: usize| {
            (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect::<Vec<u8>>()
        };
        let mut expected = vec![0u8; 6 * CHUNK_SIZE + 100];
        // Two chunks and a half of data (more than the bounce buffer at once), a zero page inside.
        let mut first = pattern(1, 2 * CHUNK_SIZE + CHUNK_SIZE / 2);
        first[8192..12288].fill(0);
        write_pages(&file, &first, 0, false, &mut direct).unwrap();
        expected[..first.len()].copy_from_slice(&first);
        assert!(direct.is_some(), "aligned writes stay direct");
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(flags.contains(OFlags::DIRECT), "O_DIRECT is on while writes are aligned");

        // Whole pages and a partial one: the pages direct, the rest of the file through the cache.
        let tail = pattern(2, 2 * DIRECT_ALIGN + 100);
        let at = 3 * CHUNK_SIZE as u64;
        write_pages(&file, &tail, at, false, &mut direct).unwrap();
        expected[at as usize..at as usize + tail.len()].copy_from_slice(&tail);
        assert!(direct.is_none(), "a partial page ends direct writes");
        assert!(!rustix::fs::fcntl_getfl(&file).unwrap().contains(OFlags::DIRECT));
        let odd = pattern(4, 5000);
        let at = 4 * CHUNK_SIZE as u64 + 100;
        write_pages(&file, &odd, at, false, &mut direct).unwrap();
        expected[at as usize..at as usize + odd.len()].copy_from_slice(&odd);

        // Direct writes on, then an unaligned offset: written through the cache, direct off.
        let mut direct = DirectWrites::enable(&file, &Arc::default(), true);
        assert!(direct.is_some());
        let odd = pattern(5, 3 * DIRECT_ALIGN);
        let at = 4 * CHUNK_SIZE as u64 + 3 * DIRECT_ALIGN as u64 + 512;
        write_pages(&file, &odd, at, false, &mut direct).unwrap();
        expected[at as usize..at as usize + odd.len()].copy_from_slice(&odd);
        assert!(direct.is_none(), "an unaligned offset ends direct writes");
        assert!(!rustix::fs::fcntl_getfl(&file).unwrap().contains(OFlags::DIRECT));

        let last = pattern(3, CHUNK_SIZE + 100);
        let at = 5 * CHUNK_SIZE as u64;
        write_pages(&file, &last, at, false, &mut direct).unwrap();
        expected[at as usize..].copy_from_slice(&last);
        file.set_len(expected.len() as u64).unwrap();

        assert!(std::fs::read(tmp.path().join("f")).unwrap() == expected, "content differs");
    }

    /// Zero pages left out of a direct write: a short run is written as zeros in a new file (so
    /// the write is not cut short), but left alone in a file that holds data (a resumed partial).
    #[test]
    fn a_short_hole_is_written_as_zeros_only_in_a_file_that_started_empty() {
        let tmp = tempfile::tempdir().unwrap();
        for started_empty in [true, false] {
            let path = tmp.path().join(format!("f-{started_empty}"));
            let file = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
            // A file that did not start empty (a resumed partial) holds data in the hole.
            let old = if started_empty { 0 } else { 0xAA };
            let (page, fill_max) = (DIRECT_ALIGN, DIRECT_HOLE_FILL as usize);
            let size = fill_max + 6 * page;
            file.write_all_at(&vec![old; size], 0).unwrap();
            if started_empty {
                file.set_len(0).unwrap();
            }
            // Buffers come back dirty from earlier files.
            let pool = Arc::new(BufferPool::default());
            let mut dirty = Aligned::new();
            dirty.get_mut(0, DIRECT_WRITE).fill(0x55);
            pool.give(dirty);
            let Some(writes) = DirectWrites::enable(&file, &pool, started_empty) else {
                eprintln!("skipped: {} refuses O_DIRECT", tmp.path().display());
                return;
            };
            let mut direct = Some(writes);
            // Data, a two-page hole, data, a hole a page longer than DIRECT_HOLE_FILL, data.
            let mut content = vec![7u8; size];
            content[page..3 * page].fill(0);
            content[4 * page..5 * page + fill_max].fill(0);
            let mut expected = content.clone();
            write_pages(&file, &content, 0, false, &mut direct).unwrap();
            direct.take().unwrap().finish().unwrap();
            file.set_len(size as u64).unwrap();
            if !started_empty {
                for (at, byte) in content.iter().enumerate() {
                    if *byte == 0 {
                        expected[at] = old;
                    }
                }
            }
            assert!(std::fs::read(&path).unwrap() == expected, "content differs (started empty: {started_empty})");
            if started_empty {
                // The short hole was written (allocated); the long one was not.
                let allocated = std::os::unix::fs::MetadataExt::blocks(&file.metadata().unwrap()) * 512;
                assert!(
                    allocated >= 5 * page as u64 && allocated < size as u64,
                    "{allocated} bytes allocated for {size} with one short and one long hole"
                );
            }
        }
    }

    /// A direct write fails on the write thread: the lane hears of it at its next write or at
    /// the end of the file, never an `Ok` for data that is not on the file.
    #[test]
    fn a_failed_direct_write_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"").unwrap();
        // Open for reading only: every write fails (EBADF).
        let file = std::fs::File::open(tmp.path().join("f")).unwrap();
        let Some(mut writes) = DirectWrites::enable(&file, &Arc::default(), true) else {
            eprintln!("skipped: {} refuses O_DIRECT", tmp.path().display());
            return;
        };
        let data = vec![7u8; DIRECT_WRITE];
        // The first buffers are taken before any write is done; the thread's error stops the
        // ones after.
        let mut outcome = Ok(());
        for round in 0..(DIRECT_IN_FLIGHT as u64 + 4) {
            outcome = writes.write(&data, round * DIRECT_WRITE as u64);
            if outcome.is_err() {
                break;
            }
        }
        let error = outcome.and_then(|()| writes.finish()).expect_err("a write that failed was reported as done");
        assert_eq!(error.raw_os_error(), Some(libc::EBADF), "{error}");
        assert_eq!(std::fs::metadata(tmp.path().join("f")).unwrap().len(), 0);
    }
}
