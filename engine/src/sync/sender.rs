//! The source side: scan, answer the receiver's verdicts, read, hash and compress content.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::blocks;
use super::{Result, SyncError, WINDOW};
use crate::compress::{Compressor, LevelControl, Packed};
use crate::confine::{self, display_bytes};
use crate::progress::{Event, SharedReporter, Summary};
use crate::scan::{Scanned, Scanner};
use crate::volume::RootWatch;
use crate::wire::{
    CHUNK_SIZE, Compression, DeltaChunk, Entry, EntryKind, FileFailure, Message, SyncOptions, Timestamp,
    decode_message, encode_data, encode_message,
};

pub(super) const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Bytes of small messages gathered before they are written.
const BATCH: usize = 64 * 1024;
/// Lowest zstd level for changed blocks (when compression is on): they are few, so fewer bytes
/// matter more than the CPU, whatever the link. Level 3 is what `rsync -z` uses.
const DELTA_MIN_LEVEL: i32 = 3;

/// A file entry sent and waiting for the receiver's verdict.
struct Waiting {
    path: Vec<u8>,
    size: u64,
    mtime: Timestamp,
}

/// A file the receiver asked for, for a content worker to send.
struct Job {
    id: u64,
    waiting: Waiting,
    basis: Option<Basis>,
}

/// What the tree thread and the content workers of one session share.
pub(super) struct Shared {
    root: Arc<OwnedFd>,
    /// Tells whether `root` is still what the volume's path resolves to.
    watch: RootWatch,
    options: SyncOptions,
    reporter: SharedReporter,
    on_wire: Arc<AtomicU64>,
    level_control: Mutex<LevelControl>,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    files_transferred: AtomicU64,
    bytes_transferred: AtomicU64,
    problems: Mutex<Problems>,
    last_progress: Mutex<Instant>,
    /// The first error of a content worker; it ends the session.
    failure: Mutex<Option<SyncError>>,
    failed: AtomicBool,
}

#[derive(Default)]
struct Problems {
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Shared {
    pub(super) fn new(
        (root, watch): (Arc<OwnedFd>, RootWatch),
        options: SyncOptions,
        reporter: SharedReporter,
        on_wire: Arc<AtomicU64>,
    ) -> Arc<Shared> {
        let level_control = Mutex::new(LevelControl::for_lanes(options.streams));
        Arc::new(Shared {
            root,
            watch,
            options,
            reporter,
            on_wire,
            level_control,
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            files_transferred: AtomicU64::new(0),
            bytes_transferred: AtomicU64::new(0),
            problems: Mutex::new(Problems::default()),
            last_progress: Mutex::new(Instant::now()),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
        })
    }

    /// A file that vanished, changed or could not be read: an error, or a warning in a stage run.
    fn problem(&self, message: &str) {
        if self.options.stage {
            self.warn(message);
        } else {
            let mut problems = self.problems.lock().expect("no thread panics holding the problems lock");
            problems.errors.push(message.to_owned());
        }
    }

    /// Something the user should know that fails nothing: shown now and in the summary.
    fn warn(&self, message: &str) {
        let mut problems = self.problems.lock().expect("no thread panics holding the problems lock");
        problems.warnings.push(message.to_owned());
        self.reporter.on_event(&Event::Warning { message: message.to_owned() });
    }

    fn done(&self, size: u64) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(size, Ordering::Relaxed);
    }

    /// Reports progress if the last report is [`PROGRESS_EVERY`] old (or `now`).
    pub(super) fn progress(&self, now: bool) {
        let Ok(mut last) = self.last_progress.try_lock() else { return };
        if !now && last.elapsed() < PROGRESS_EVERY {
            return;
        }
        *last = Instant::now();
        self.reporter.on_event(&Event::Progress {
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_transferred: self.bytes_transferred.load(Ordering::Relaxed),
            bytes_on_wire: self.on_wire.load(Ordering::Relaxed),
        });
    }

    /// Records a content worker's failure (the first one counts) and stops the session.
    fn fail(&self, error: SyncError) {
        self.failure.lock().expect("no thread panics holding the failure lock").get_or_insert(error);
        self.failed.store(true, Ordering::Release);
    }

    fn take_failure(&self) -> Option<SyncError> {
        self.failure.lock().expect("no thread panics holding the failure lock").take()
    }
}

/// One connection of the session, as a thread uses it.
pub(super) struct Lane {
    pub(super) out: mpsc::Sender<Vec<u8>>,
    pub(super) replies: mpsc::Receiver<Result<super::InFrame>>,
}

/// Streams the tree on the first lane and hands requested files to one content worker per lane.
pub(super) fn run(shared: &Arc<Shared>, first: Lane, others: Vec<Lane>) -> Result<Summary> {
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(others.len() + 1);
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let started = Instant::now();
    std::thread::scope(|scope| {
        let first_worker = Worker::new(shared.clone(), first.out.clone(), None);
        let workers: Vec<_> = std::iter::once(first_worker)
            .chain(others.into_iter().map(|lane| Worker::new(shared.clone(), lane.out, Some(lane.replies))))
            .map(|worker| {
                let jobs = jobs_rx.clone();
                scope.spawn(move || worker.run(&jobs))
            })
            .collect();
        drop(jobs_rx);
        let mut tree = Tree {
            shared: shared.clone(),
            out: first.out,
            replies: first.replies,
            jobs: Some(jobs_tx),
            workers,
            waiting: HashMap::new(),
            batch: Vec::new(),
            summary: Summary::default(),
        };
        let result = tree.stream();
        if let Err(error) = result {
            // Stop the workers (they find the queue closed or the session failed), close our
            // side of the first lane, and find out why the session ended.
            shared.failed.store(true, Ordering::Release);
            let Tree { out, mut replies, jobs, workers, .. } = tree;
            drop((out, jobs));
            for worker in workers {
                let _ = worker.join();
            }
            let error = match shared.take_failure() {
                Some(SyncError::Disconnected(_)) | None => error,
                Some(first) => first,
            };
            return Err(match error {
                // The connection broke: the receiver probably said why before closing.
                SyncError::Disconnected(_) => remote_reason(&mut replies).unwrap_or(error),
                error => error,
            });
        }
        let mut summary = result.map(|()| std::mem::take(&mut tree.summary))?;
        // A dry run sends no content: what would be sent is what the receiver counted.
        summary.dry_run = shared.options.dry_run;
        if !summary.dry_run {
            summary.files_transferred = shared.files_transferred.load(Ordering::Relaxed);
            summary.bytes_transferred = shared.bytes_transferred.load(Ordering::Relaxed);
        }
        let problems =
            std::mem::take(&mut *shared.problems.lock().expect("no thread panics holding the problems lock"));
        summary.errors = problems.errors;
        summary.warnings.splice(0..0, problems.warnings);
        summary.elapsed_s = started.elapsed().as_secs_f64();
        shared.progress(true);
        Ok(summary)
    })
}

/// The tree thread: scans, sends entries and takes the receiver's verdicts.
struct Tree<'scope> {
    shared: Arc<Shared>,
    out: mpsc::Sender<Vec<u8>>,
    replies: mpsc::Receiver<Result<super::InFrame>>,
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    workers: Vec<std::thread::ScopedJoinHandle<'scope, Result<()>>>,
    waiting: HashMap<u64, Waiting>,
    /// Encoded small messages (entries) not yet handed to the writer.
    batch: Vec<u8>,
    summary: Summary,
}

impl Tree<'_> {
    /// Queues a small message; small messages are written in batches (see [`Self::flush`]).
    fn send(&mut self, message: &Message) -> Result<()> {
        self.batch.extend_from_slice(&encode_message(message));
        if self.batch.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands the queued small messages to the writer: before waiting for the receiver, and
    /// whenever [`BATCH`] bytes have gathered.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.out.blocking_send(batch).map_err(|_| SyncError::Disconnected("while we were sending"))
    }

    fn check_workers(&self) -> Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.shared.take_failure().unwrap_or(SyncError::Disconnected("(a content lane failed)")));
        }
        Ok(())
    }

    fn stream(&mut self) -> Result<()> {
        let mut scanner = Scanner::new(&self.shared.root, super::scan_options(&self.shared.options))
            .map_err(|source| SyncError::Io { op: "cannot scan the source volume", path: ".".into(), source })?;
        let root_entry = self.root_entry(scanner.withheld_mut())?;
        self.send(&Message::Entry(root_entry))?;
        let mut scanning = true;
        loop {
            self.check_workers()?;
            self.shared.watch.check_now_and_then()?;
            while let Ok(reply) = self.replies.try_recv() {
                self.handle_reply(decode_message(&reply?)?)?;
            }
            if scanning && self.waiting.len() < WINDOW {
                match scanner.next() {
                    Some(Scanned::Entry(entry)) => self.send_entry(entry)?,
                    Some(Scanned::Problem(problem)) => {
                        let message = format!("cannot read `{}`: {}", problem.path, problem.error);
                        self.shared.problem(&message);
                        // The target keeps its copy: an unreadable source is no reason to delete.
                        // (A path the target would refuse has no copy there to keep.)
                        if crate::confine::RelPath::new(&problem.raw).is_ok() {
                            self.send(&Message::Keep { path: problem.raw })?;
                        }
                    }
                    Some(Scanned::MountPoint(path)) => {
                        self.shared.warn(&format!(
                            "skipped `{}`: another file system is mounted there (the copy stays on the source \
                             volume's own file system unless told to cross mounts)",
                            display_bytes(&path)
                        ));
                        // What the target has there is not the source's to delete.
                        self.send(&Message::Keep { path })?;
                    }
                    None => {
                        scanning = false;
                        if !self.shared.reporter.wants_early_totals() {
                            self.shared.reporter.on_event(&Event::Totals {
                                files: self.summary.files_total,
                                bytes: self.summary.bytes_total,
                            });
                        }
                    }
                }
                continue;
            }
            if !scanning && self.waiting.is_empty() {
                break;
            }
            self.flush()?;
            let reply = self.replies.blocking_recv().ok_or(SyncError::Disconnected("before answering"))?;
            self.handle_reply(decode_message(&reply?)?)?;
        }
        // Every file is answered: let the workers finish what they were given. Content on the
        // first lane then precedes the end of the tree.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            worker.join().map_err(|_| SyncError::Disconnected("(a content worker panicked)"))??;
        }
        self.check_workers()?;
        // What was read came from the volume, not from a directory hidden under a mount since.
        self.shared.watch.check()?;
        self.send(&Message::EndOfEntries)?;
        self.flush()?;
        loop {
            let reply =
                self.replies.blocking_recv().ok_or(SyncError::Disconnected("before acknowledging the end"))??;
            match decode_message(&reply)? {
                Message::Done(report) => {
                    // What the source holds and mover never copies, then what the target could
                    // not take.
                    self.summary.not_preserved = scanner.withheld_mut().messages();
                    self.summary.not_preserved.extend(report.not_preserved);
                    self.summary.entries_deleted = report.entries_deleted;
                    if self.shared.options.dry_run {
                        self.summary.files_transferred = report.files_written;
                        self.summary.bytes_transferred = report.bytes_written;
                    }
                    // The target's warnings (a mount kept, metadata it could not set) are the
                    // user's to see as they come, like the source's own.
                    for message in &report.warnings {
                        self.shared.reporter.on_event(&Event::Warning { message: message.clone() });
                    }
                    self.summary.warnings.extend(report.warnings);
                    return Ok(());
                }
                other => self.handle_reply(other)?,
            }
        }
    }

    /// The volume root itself travels first, as an entry with an empty path.
    fn root_entry(&self, withheld: &mut crate::meta::Withheld) -> Result<Entry> {
        let io = |source| SyncError::Io { op: "cannot read the source volume root", path: ".".into(), source };
        let root = &self.shared.root;
        let stat = rustix::fs::fstat(root.as_fd()).map_err(|e| io(e.into()))?;
        let dir = confine::open_dir(root.as_fd(), b"").map_err(io)?;
        let xattrs =
            crate::meta::read_xattrs_and(dir.as_fd(), b".", super::xattr_policy(&self.shared.options), |attr| {
                withheld.note(attr, b"");
            })
            .map_err(io)?;
        Ok(Entry {
            id: u64::MAX,
            path: Vec::new(),
            kind: EntryKind::Dir,
            mode: stat.st_mode & 0o7777,
            uid: stat.st_uid,
            gid: stat.st_gid,
            mtime: Timestamp { sec: stat.st_mtime, nsec: u32::try_from(stat.st_mtime_nsec).unwrap_or(0) },
            atime: Timestamp { sec: stat.st_atime, nsec: u32::try_from(stat.st_atime_nsec).unwrap_or(0) },
            xattrs,
        })
    }

    fn send_entry(&mut self, entry: Entry) -> Result<()> {
        self.summary.entries_total += 1;
        match entry.kind {
            EntryKind::File { size, .. } => {
                self.summary.files_total += 1;
                self.summary.bytes_total += size;
                self.waiting.insert(entry.id, Waiting { path: entry.path.clone(), size, mtime: entry.mtime });
            }
            EntryKind::Hardlink { .. } => self.summary.files_total += 1,
            _ => {}
        }
        self.send(&Message::Entry(entry))
    }

    fn handle_reply(&mut self, reply: Message) -> Result<()> {
        match reply {
            Message::Need { id } => {
                let waiting = self.take_waiting(id)?;
                self.dispatch(Job { id, waiting, basis: None })?;
            }
            Message::NeedBlocks { id, signature, shifts } => {
                let signature = blocks::BasisSignature::parse(signature).map_err(SyncError::Protocol)?;
                let waiting = self.take_waiting(id)?;
                self.dispatch(Job { id, waiting, basis: Some(Basis::new(signature, shifts)) })?;
            }
            Message::Skip { id } => {
                let waiting = self.take_waiting(id)?;
                self.shared.done(waiting.size);
            }
            Message::Change(change) => self.shared.reporter.on_event(&Event::Change(change)),
            Message::Error(error) => return Err(SyncError::Remote(error)),
            other => return Err(SyncError::Protocol(format!("unexpected {} message from the receiver", other.name()))),
        }
        self.shared.progress(false);
        Ok(())
    }

    /// Hands a requested file to the next free content worker (waits while all are busy).
    fn dispatch(&mut self, job: Job) -> Result<()> {
        // Entries queued so far go first, so the receiver sees them before content of later ones.
        self.flush()?;
        let jobs = self.jobs.as_ref().ok_or(SyncError::Protocol("a verdict after the end of the tree".into()))?;
        jobs.send(job)
            .map_err(|_| self.shared.take_failure().unwrap_or(SyncError::Disconnected("(every content lane is gone)")))
    }

    fn take_waiting(&mut self, id: u64) -> Result<Waiting> {
        self.waiting
            .remove(&id)
            .ok_or_else(|| SyncError::Protocol(format!("verdict for entry {id}, which is not waiting for one")))
    }
}

/// After a lane broke: the error the receiver reported on it, if any.
fn remote_reason(replies: &mut mpsc::Receiver<Result<super::InFrame>>) -> Option<SyncError> {
    while let Some(reply) = replies.blocking_recv() {
        if let Ok(Message::Error(error)) = reply.map_err(|_| ()).and_then(|body| decode_message(&body).map_err(|_| ()))
        {
            return Some(SyncError::Remote(error));
        }
    }
    None
}

/// Reads, hashes, compresses and sends the content of requested files on one lane.
struct Worker {
    shared: Arc<Shared>,
    out: mpsc::Sender<Vec<u8>>,
    /// What the receiver says on this lane (only an error); `None` on the first lane, whose
    /// input the tree thread reads.
    replies: Option<mpsc::Receiver<Result<super::InFrame>>>,
    parent: Option<(Vec<u8>, OwnedFd)>,
    compressor: Option<Compressor>,
    buffer: Vec<u8>,
    /// Content bytes of the current file sent so far.
    file_sent: u64,
    /// How far into the current file the content has gone (holes included), as counted in
    /// `bytes_done`: a progress bar moves within a big file, not only when it ends.
    file_passed: u64,
}

impl Worker {
    fn new(
        shared: Arc<Shared>,
        out: mpsc::Sender<Vec<u8>>,
        replies: Option<mpsc::Receiver<Result<super::InFrame>>>,
    ) -> Worker {
        Worker {
            shared,
            out,
            replies,
            parent: None,
            compressor: None,
            buffer: vec![0; CHUNK_SIZE],
            file_sent: 0,
            file_passed: 0,
        }
    }

    /// Sends files from the queue until it closes; the first error stops the session.
    fn run(mut self, jobs: &Mutex<std::sync::mpsc::Receiver<Job>>) -> Result<()> {
        let result = self.work(jobs);
        let Err(error) = result else { return Ok(()) };
        // Another thread failed first: that error is the session's; nothing to wait for here.
        let stopped = self.shared.failed.load(Ordering::Acquire);
        let Worker { out, replies, shared, .. } = self;
        let error = match (error, replies) {
            // Our lane broke: closing our side lets the receiver's reason (if any) arrive.
            (error @ SyncError::Disconnected(_), Some(mut replies)) if !stopped => {
                drop(out);
                remote_reason(&mut replies).unwrap_or(error)
            }
            (error, _) => error,
        };
        shared.fail(error);
        Err(SyncError::Disconnected("(a content lane failed)"))
    }

    fn work(&mut self, jobs: &Mutex<std::sync::mpsc::Receiver<Job>>) -> Result<()> {
        loop {
            let job = jobs.lock().expect("no worker panics holding the job queue").recv();
            let Ok(mut job) = job else { return Ok(()) };
            if self.shared.failed.load(Ordering::Acquire) {
                return Ok(());
            }
            if let Some(replies) = &mut self.replies {
                match replies.try_recv() {
                    Ok(reply) => {
                        return Err(match decode_message(&reply?)? {
                            Message::Error(error) => SyncError::Remote(error),
                            other => {
                                SyncError::Protocol(format!("unexpected {} message on a content lane", other.name()))
                            }
                        });
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        return Err(SyncError::Disconnected("(a content lane closed)"));
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            self.send_file(job.id, &job.waiting, job.basis.as_mut())?;
        }
    }

    /// Queues a small message behind the content sent so far.
    fn send(&mut self, message: &Message) -> Result<()> {
        self.send_frame(encode_message(message))
    }

    /// Sends one encoded frame (unless the session has failed).
    fn send_frame(&mut self, frame: Vec<u8>) -> Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(SyncError::Disconnected("(the session failed)"));
        }
        self.out.blocking_send(frame).map_err(|_| SyncError::Disconnected("while we were sending"))
    }

    fn open_source(&mut self, path: &[u8]) -> io::Result<std::fs::File> {
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        if self.parent.as_ref().is_none_or(|(cached, _)| cached.as_slice() != parent) {
            self.parent = None;
            let dir = confine::open_dir_in(self.shared.root.as_fd(), parent, super::mounts(&self.shared.options))?;
            self.parent = Some((parent.to_vec(), dir));
        }
        let dir = &self.parent.as_ref().expect("just set").1;
        confine::open_file_read(dir.as_fd(), name)
    }

    fn send_file(&mut self, id: u64, waiting: &Waiting, basis: Option<&mut Basis>) -> Result<()> {
        let shown = display_bytes(&waiting.path);
        #[cfg(feature = "test-util")]
        crate::testing::before_read(&waiting.path);
        let file = match self.open_source(&waiting.path) {
            Ok(file) => file,
            Err(error) => {
                let reason = match error.kind() {
                    io::ErrorKind::NotFound => FileFailure::Vanished,
                    _ if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => FileFailure::Changed,
                    _ => FileFailure::Unreadable,
                };
                self.shared.problem(&failure_message(&shown, reason, Some(&error)));
                return self.send(&Message::FileFailed { id, reason });
            }
        };
        self.file_sent = 0;
        self.file_passed = 0;
        let streamed = self.stream_content(id, &file, waiting, basis);
        // The file is now counted whole (done) or not at all (failed).
        let passed = std::mem::take(&mut self.file_passed);
        self.shared.bytes_done.fetch_sub(passed, Ordering::Relaxed);
        match streamed {
            Ok(Some(hash)) => {
                self.shared.done(waiting.size);
                if self.file_sent > 0 || waiting.size == 0 {
                    self.shared.files_transferred.fetch_add(1, Ordering::Relaxed);
                }
                self.send(&Message::FileEnd { id, blake3: hash })
            }
            Ok(None) => {
                self.shared.problem(&failure_message(&shown, FileFailure::Changed, None));
                self.send(&Message::FileFailed { id, reason: FileFailure::Changed })
            }
            Err(ContentError::Read(error)) => {
                self.shared.problem(&failure_message(&shown, FileFailure::Unreadable, Some(&error)));
                self.send(&Message::FileFailed { id, reason: FileFailure::Unreadable })
            }
            Err(ContentError::Sync(error)) => Err(error),
        }
    }

    /// Streams a file's content (all of it, or the blocks that differ from the receiver's
    /// basis); `Ok(None)` when it changed while being read.
    fn stream_content(
        &mut self,
        id: u64,
        file: &std::fs::File,
        waiting: &Waiting,
        mut basis: Option<&mut Basis>,
    ) -> std::result::Result<Option<[u8; 32]>, ContentError> {
        let before = rustix::fs::fstat(file).map_err(|e| ContentError::Read(e.into()))?;
        if !same_version(&before, waiting) {
            return Ok(None);
        }
        let compressor = match self.compressor.as_mut() {
            Some(compressor) => compressor,
            None => self.compressor.insert(Compressor::new(1).map_err(ContentError::Read)?),
        };
        compressor.reset();
        let mut hasher = super::digest::FileDigest::default();
        let mut hashed_to = 0u64;
        let size = waiting.size;
        // Holes are not read: a full copy skips them (the target's file starts as one hole); a
        // delta compares hole blocks with the basis through the hash of zeros.
        let sparse = u64::try_from(before.st_blocks).unwrap_or(0) * 512 < size;
        let mut offset = 0u64;
        while offset < size {
            let (mut data_start, mut data_end) =
                if sparse { blocks::data_range(file, offset, size) } else { (offset, size) };
            if let Some(basis) = basis.as_deref() {
                // Deltas work in whole blocks.
                let block = u64::from(basis.signature.block_size());
                data_start = data_start / block * block;
                data_end = data_end.div_ceil(block).saturating_mul(block).min(size);
                self.send_hole_blocks(id, offset, data_start.min(size), basis).map_err(ContentError::Sync)?;
            }
            if data_start >= size {
                break;
            }
            offset = data_start;
            while offset < data_end {
                let want = (data_end - offset).min(CHUNK_SIZE as u64) as usize;
                let got = blocks::read_full(file, &mut self.buffer[..want], offset).map_err(ContentError::Read)?;
                if got < want {
                    // Shorter than it was: truncated while we read it.
                    return Ok(None);
                }
                hasher.zeros(offset - hashed_to);
                hasher.update(&self.buffer[..want]);
                let buffer = std::mem::take(&mut self.buffer);
                let sent = match basis.as_deref_mut() {
                    None => self.send_chunk(id, offset, &buffer[..want]),
                    Some(basis) => self.send_changed_blocks(id, offset, &buffer[..want], basis),
                };
                self.buffer = buffer;
                sent?;
                offset += want as u64;
                hashed_to = offset;
                self.shared.bytes_done.fetch_add(offset - self.file_passed, Ordering::Relaxed);
                self.file_passed = offset;
                self.shared.progress(false);
            }
        }
        hasher.zeros(size - hashed_to);
        let after = rustix::fs::fstat(file).map_err(|e| ContentError::Read(e.into()))?;
        if !same_version(&after, waiting)
            || after.st_ctime != before.st_ctime
            || after.st_ctime_nsec != before.st_ctime_nsec
        {
            return Ok(None);
        }
        Ok(Some(hasher.finalize()))
    }
}

/// The receiver's signature of the file it has, and how the search for shifted content goes.
struct Basis {
    signature: blocks::BasisSignature,
    /// The receiver accepts deltas for this file.
    shifts: bool,
    /// Windows of mostly new data in a row.
    misses: u32,
    /// Where the content is in the basis relative to where it is now (basis offset minus
    /// file offset), as the last delta found it: after an insert or a cut, the rest of the
    /// file is compared there first, block against block, as rsync tries the block after a
    /// match before searching.
    shift: i64,
    /// The last delta made (reused buffer).
    delta: Vec<u8>,
    /// The signature entry of a whole block of zeros (a hole).
    zero_entry: Vec<u8>,
}

impl Basis {
    fn new(signature: blocks::BasisSignature, shifts: bool) -> Self {
        let zero_entry = blocks::zero_entry(signature.block_size() as usize, signature.block_size());
        Basis { signature, shifts, misses: 0, shift: 0, delta: Vec::new(), zero_entry }
    }

    /// Bytes of the basis, rounded up to whole blocks.
    fn len(&self) -> u64 {
        self.signature.blocks() * u64::from(self.signature.block_size())
    }
}

impl Worker {
    /// The zstd level for the next chunk of `bytes`.
    fn level(&mut self, bytes: usize) -> i32 {
        match self.shared.options.compression {
            Compression::Off => 0,
            Compression::Level(level) => crate::compress::capped_level(level),
            Compression::Auto => self
                .shared
                .level_control
                .lock()
                .expect("no thread panics holding the level control")
                .observe(bytes, self.shared.on_wire.load(Ordering::Relaxed)),
        }
    }

    fn send_chunk(&mut self, id: u64, offset: u64, raw: &[u8]) -> std::result::Result<(), ContentError> {
        self.send_chunk_at_least(id, offset, raw, 0)
    }

    /// Sends one chunk, compressed at no less than `min_level` when compression is on.
    fn send_chunk_at_least(
        &mut self,
        id: u64,
        offset: u64,
        raw: &[u8],
        min_level: i32,
    ) -> std::result::Result<(), ContentError> {
        let packed = self.pack_at_least(raw, min_level)?;
        let frame = encode_data(id, offset, raw.len() as u32, packed.compressed, &packed.bytes);
        self.send_frame(frame).map_err(ContentError::Sync)?;
        self.count_sent(raw.len() as u64);
        Ok(())
    }

    /// Compresses `raw` at the current level, and no less than `min_level` when compression is on.
    fn pack_at_least<'a>(&'a mut self, raw: &'a [u8], min_level: i32) -> std::result::Result<Packed<'a>, ContentError> {
        let mut level = self.level(raw.len());
        if self.shared.options.compression != Compression::Off {
            level = level.max(min_level);
        }
        let compressor = self.compressor.as_mut().expect("set before streaming");
        compressor.set_level(level).map_err(ContentError::Read)?;
        compressor.pack(raw).map_err(ContentError::Read)
    }

    /// For the blocks of the hole `[start, end)` (block aligned) whose basis is not zeros: sends
    /// zeros (the receiver leaves them as a hole). Past the end of the basis the receiver's file
    /// is zeros already: nothing to send there.
    fn send_hole_blocks(&mut self, id: u64, start: u64, end: u64, basis: &Basis) -> Result<()> {
        let block_size = basis.signature.block_size();
        let block = u64::from(block_size);
        let zeros = vec![0u8; block_size as usize];
        let mut offset = start;
        while offset < end {
            let len = (end - offset).min(block) as usize;
            let zeros_there = |entry: &[u8]| {
                if len == zeros.len() {
                    entry == basis.zero_entry
                } else {
                    entry == blocks::zero_entry(len, block_size)
                }
            };
            if basis.signature.entry(offset / block).is_some_and(|entry| !zeros_there(entry)) {
                self.send_chunk(id, offset, &zeros[..len]).map_err(|e| match e {
                    ContentError::Sync(error) => error,
                    ContentError::Read(source) => SyncError::Io { op: "cannot compress", path: String::new(), source },
                })?;
            }
            offset += len as u64;
        }
        Ok(())
    }

    /// Sends the runs of blocks in `chunk` (at `offset`, block aligned) that the basis lacks
    /// at the same offset.
    fn send_changed_blocks(
        &mut self,
        id: u64,
        offset: u64,
        chunk: &[u8],
        basis: &mut Basis,
    ) -> std::result::Result<(), ContentError> {
        if basis.shift != 0 && self.send_if_shifted(id, offset, chunk, basis)? {
            return Ok(());
        }
        let block_size = basis.signature.block_size();
        let ours = blocks::sign(chunk, block_size);
        let ours = blocks::entries(&ours);
        let block = block_size as usize;
        let first = offset / u64::from(block_size);
        let mut run: Option<usize> = None;
        let mut changed = false;
        for (i, entry) in ours.chunks(blocks::ENTRY_LEN).enumerate() {
            let same = basis.signature.entry(first + i as u64) == Some(entry);
            match (same, run) {
                (false, None) => {
                    run = Some(i * block);
                    changed = true;
                }
                (true, Some(start)) => {
                    self.send_run(id, offset + start as u64, &chunk[start..i * block], basis)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            self.send_run(id, offset + start as u64, &chunk[start..], basis)?;
        }
        if !changed {
            // The content is back in its place.
            basis.shift = 0;
        }
        Ok(())
    }

    /// Sends `chunk` (at `offset`) as one delta when its content is at `basis.shift` from
    /// where it is in the basis, save for differences shorter than [`blocks::SHIFT_MIN_RUN`]:
    /// the blocks found there as copies, the rest (short changes, the part blocks at either end)
    /// as literals. One message for the whole chunk keeps the receiver's writes aligned.
    /// `false` (nothing sent) when the content is not there.
    fn send_if_shifted(
        &mut self,
        id: u64,
        offset: u64,
        chunk: &[u8],
        basis: &mut Basis,
    ) -> std::result::Result<bool, ContentError> {
        let block_size = basis.signature.block_size();
        let (block, block64) = (block_size as usize, u64::from(block_size));
        let shift = basis.shift;
        // The first byte of the chunk whose place in the basis starts a block.
        let first = (((block64 - offset.wrapping_add_signed(shift) % block64) % block64) as usize).min(chunk.len());
        let whole = (chunk.len() - first) / block;
        let ours = blocks::sign(&chunk[first..first + whole * block], block_size);
        let ours = blocks::entries(&ours);
        // The last block of the basis may be short: copies end before it.
        let copyable = basis.signature.blocks().saturating_sub(1);
        let found: Vec<bool> = (0..whole)
            .map(|i| {
                (offset + (first + i * block) as u64).checked_add_signed(shift).is_some_and(|there| {
                    let index = there / block64;
                    index < copyable
                        && basis.signature.entry(index) == Some(&ours[i * blocks::ENTRY_LEN..][..blocks::ENTRY_LEN])
                })
            })
            .collect();
        let longest_miss = found.split(|&found| found).map(<[bool]>::len).max().unwrap_or(0);
        let (Some(first_found), Some(last_found)) = (found.iter().position(|&f| f), found.iter().rposition(|&f| f))
        else {
            return Ok(false);
        };
        if longest_miss * block >= blocks::SHIFT_MIN_RUN {
            return Ok(false);
        }
        let place = |i: usize| (offset + (first + i * block) as u64).saturating_add_signed(shift);
        let window_start = place(first_found);
        let window_len = place(last_found + 1) - window_start;
        let mut writer = blocks::DeltaWriter::new(&mut basis.delta);
        let (mut made, mut i) = (0, first_found);
        while i <= last_found {
            let copies = found[i..].iter().take_while(|&&f| f).count();
            let start = first + i * block;
            writer.literal(&chunk[made..start]);
            writer.copy(place(i) - window_start, (copies * block) as u64);
            made = start + copies * block;
            i += copies;
            i += found[i..].iter().take_while(|&&f| !f).count();
        }
        writer.literal(&chunk[made..]);
        writer.finish();
        let delta = std::mem::take(&mut basis.delta);
        let sent = self.send_delta(id, offset, chunk.len(), window_start, window_len, &delta);
        basis.delta = delta;
        sent?;
        basis.misses = 0;
        Ok(true)
    }

    /// Sends a run of blocks the basis lacks at their offset: as a delta against the basis
    /// window around it when most of it is found there (shifted content), else as data.
    fn send_run(
        &mut self,
        id: u64,
        offset: u64,
        run: &[u8],
        basis: &mut Basis,
    ) -> std::result::Result<(), ContentError> {
        // Where the run's content was, if it moved as the content before it did.
        let there = offset.saturating_add_signed(basis.shift);
        if basis.shifts
            && basis.misses < blocks::MAX_MISSES
            && run.len() >= blocks::SHIFT_MIN_RUN
            && there < basis.len()
        {
            let block = u64::from(basis.signature.block_size());
            let window_start = there.saturating_sub(blocks::SHIFT_MARGIN) / block * block;
            let window_end = (there + run.len() as u64 + blocks::SHIFT_MARGIN).min(basis.len());
            let window = basis.signature.window(window_start / block, (window_end - window_start).div_ceil(block));
            basis.delta.clear();
            fast_rsync::diff(&window.index(), run, &mut basis.delta)
                .map_err(|e| ContentError::Read(io::Error::other(format!("cannot compute a delta: {e}"))))?;
            // Mostly copies: worth it. Mostly literal data: the window is new data, sent raw.
            if basis.delta.len() < run.len() / 2 {
                basis.misses = 0;
                if let Some((made, from)) = blocks::last_copy(&basis.delta) {
                    basis.shift = (window_start + from).wrapping_sub(offset + made).cast_signed();
                }
                let delta = std::mem::take(&mut basis.delta);
                let sent = self.send_delta(id, offset, run.len(), window_start, window_end - window_start, &delta);
                basis.delta = delta;
                return sent;
            }
            basis.misses += 1;
        }
        // Changed blocks are few: saving their bytes is worth the CPU on any link.
        self.send_chunk_at_least(id, offset, run, DELTA_MIN_LEVEL)
    }

    fn send_delta(
        &mut self,
        id: u64,
        offset: u64,
        len: usize,
        window_start: u64,
        window_len: u64,
        delta: &[u8],
    ) -> std::result::Result<(), ContentError> {
        let packed = self.pack_at_least(delta, DELTA_MIN_LEVEL)?;
        let frame = encode_message(&Message::Delta(DeltaChunk {
            id,
            offset,
            len: len as u32,
            window_start,
            window_len: window_len as u32,
            delta_len: delta.len() as u32,
            compressed: packed.compressed,
            bytes: packed.bytes.to_vec(),
        }));
        self.send_frame(frame).map_err(ContentError::Sync)?;
        // What a delta carries is mostly its literal bytes: count those, not the content made.
        self.count_sent(delta.len().min(len) as u64);
        Ok(())
    }

    fn count_sent(&mut self, bytes: u64) {
        self.file_sent += bytes;
        self.shared.bytes_transferred.fetch_add(bytes, Ordering::Relaxed);
    }
}

enum ContentError {
    Read(io::Error),
    Sync(SyncError),
}

fn failure_message(path: &str, reason: FileFailure, error: Option<&io::Error>) -> String {
    let what = match reason {
        FileFailure::Vanished => "vanished before it could be read",
        FileFailure::Changed => "changed while it was being read; it was not stored",
        FileFailure::Unreadable => "could not be read",
    };
    match error {
        Some(error) if reason == FileFailure::Unreadable => format!("`{path}` {what}: {error}"),
        _ => format!("`{path}` {what}"),
    }
}

fn same_version(stat: &rustix::fs::Stat, waiting: &Waiting) -> bool {
    u64::try_from(stat.st_size).ok() == Some(waiting.size) && crate::meta::same_mtime(stat, waiting.mtime)
}
