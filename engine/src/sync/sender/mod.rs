//! The source side: scan, answer the receiver's verdicts, read, hash and compress content.
//!
//! One concern per file:
//! - this file: what the tree thread and the content workers share ([`Shared`]), and [`run`],
//!   which starts them and gathers the summary;
//! - [`tree`]: the tree thread, which scans, sends entries and takes the verdicts;
//! - [`queue`]: the requested files waiting for a worker;
//! - [`worker`]: a content worker per lane, which reads, hashes, compresses and sends files;
//! - [`changed`]: how a worker sends only what the receiver's basis lacks (changed blocks, deltas).

mod changed;
mod queue;
mod tree;
mod worker;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use self::changed::Basis;
use self::tree::Tree;
use self::worker::Worker;
use super::{Result, SyncError};
use crate::compress::LevelControl;
use crate::progress::{Event, SharedReporter, Summary};
use crate::volume::RootWatch;
use crate::wire::{Message, SyncOptions, Timestamp, decode_message};

pub(super) const PROGRESS_EVERY: Duration = Duration::from_millis(250);

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
    /// Nanoseconds the lanes' writers were held back by the link or the bandwidth limit:
    /// whether the link is what limits the copy (see [`LevelControl`]).
    held_back_ns: Arc<AtomicU64>,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    files_transferred: AtomicU64,
    bytes_transferred: AtomicU64,
    problems: Mutex<Problems>,
    last_progress: Mutex<Instant>,
    /// The first error of a content worker; it ends the session.
    failure: Mutex<Option<SyncError>>,
    /// The scan is over: the first lane's content worker stops (see [`Tree::end_tree_early`]).
    scan_over: AtomicBool,
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
        (on_wire, held_back_ns): (Arc<AtomicU64>, Arc<AtomicU64>),
    ) -> Arc<Shared> {
        let level_control = Mutex::new(LevelControl::for_lanes(options.streams));
        Arc::new(Shared {
            root,
            watch,
            options,
            reporter,
            on_wire,
            level_control,
            held_back_ns,
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            files_transferred: AtomicU64::new(0),
            bytes_transferred: AtomicU64::new(0),
            problems: Mutex::new(Problems::default()),
            last_progress: Mutex::new(Instant::now()),
            failure: Mutex::new(None),
            scan_over: AtomicBool::new(false),
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
    pub(super) replies: mpsc::Receiver<Result<crate::sync::InFrame>>,
}

/// Hands `bytes` (encoded frames) to a lane's writer.
fn hand_over(out: &mpsc::Sender<Vec<u8>>, bytes: Vec<u8>) -> Result<()> {
    out.blocking_send(bytes).map_err(|_| SyncError::Disconnected("while we were sending"))
}

/// Bytes of small messages gathered before they are written.
pub(super) const BATCH: usize = 64 * 1024;

/// Adds to `batch` the frames `write` puts there (the batch's room reserved when it starts),
/// and hands it to the lane's writer once it holds [`BATCH`] bytes.
fn add_to_batch(out: &mpsc::Sender<Vec<u8>>, batch: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
    if batch.is_empty() {
        batch.reserve(BATCH + super::BATCH_SLACK);
    }
    write(batch);
    if batch.len() >= BATCH {
        flush_batch(out, batch)?;
    }
    Ok(())
}

/// Hands what `batch` holds, if anything, to a lane's writer.
fn flush_batch(out: &mpsc::Sender<Vec<u8>>, batch: &mut Vec<u8>) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    hand_over(out, std::mem::take(batch))
}

/// Streams the tree on the first lane and hands requested files to one content worker per lane.
pub(super) fn run(shared: &Arc<Shared>, first: Lane, others: Vec<Lane>) -> Result<Summary> {
    let jobs = Arc::new(queue::Jobs::new(others.len() + 1));
    let started = Instant::now();
    std::thread::scope(|scope| {
        let first_worker = Worker::new(shared.clone(), first.out.clone(), None);
        let workers: Vec<_> = std::iter::once(first_worker)
            .chain(others.into_iter().map(|lane| Worker::new(shared.clone(), lane.out, Some(lane.replies))))
            .map(|worker| {
                let jobs = jobs.clone();
                scope.spawn(move || worker.run(&jobs))
            })
            .collect();
        let mut tree = Tree::new(shared.clone(), first, jobs, workers);
        if let Err(error) = tree.stream() {
            return Err(tree.stop(error));
        }
        Ok(finish_summary(shared, std::mem::take(&mut tree.summary), started))
    })
}

/// The session's summary, from the tree thread's (`summary`) and what the workers counted.
fn finish_summary(shared: &Shared, mut summary: Summary, started: Instant) -> Summary {
    // A dry run sends no content: what would be sent is what the receiver counted.
    summary.dry_run = shared.options.dry_run;
    if !summary.dry_run {
        summary.files_transferred = shared.files_transferred.load(Ordering::Relaxed);
        summary.bytes_transferred = shared.bytes_transferred.load(Ordering::Relaxed);
    }
    let problems = std::mem::take(&mut *shared.problems.lock().expect("no thread panics holding the problems lock"));
    summary.errors = problems.errors;
    summary.warnings.splice(0..0, problems.warnings);
    summary.elapsed_s = started.elapsed().as_secs_f64();
    shared.progress(true);
    summary
}

/// Why a failed session ended, from the tree thread's error (`tree`: a failure of its own, the
/// receiver's error told on the first lane, or a broken connection), the content workers'
/// first failure (`lane`), and what the receiver tells on the first lane once our side of every
/// lane is closed (`told`, read only when needed), in this order:
/// 1. a failure on this side: what the receiver says after it is a consequence;
/// 2. the receiver's error told on the first lane: its reason for the whole session (the
///    first error of any of its lanes), whatever order the lanes closed in. A content lane the
///    end of the session cut off tells only that it was cut "in the middle of a file", and may
///    tell it first;
/// 3. an error told on a content lane, then the broken connection itself.
fn session_reason(tree: SyncError, lane: Option<SyncError>, told: impl FnOnce() -> Option<SyncError>) -> SyncError {
    match (tree, lane) {
        (_, Some(lane)) if is_ours(&lane) => lane,
        (tree, _) if is_ours(&tree) => tree,
        (tree @ SyncError::Remote(_), _) => tree,
        (tree, lane) => told().or(lane.filter(|lane| !matches!(lane, SyncError::Disconnected(_)))).unwrap_or(tree),
    }
}

/// A failure on this side, as opposed to the receiver's error or a broken connection.
fn is_ours(error: &SyncError) -> bool {
    !matches!(error, SyncError::Remote(_) | SyncError::Disconnected(_) | SyncError::Wire(_))
}

/// After a lane broke: the error the receiver reported on it, if any.
fn remote_reason(replies: &mut mpsc::Receiver<Result<crate::sync::InFrame>>) -> Option<SyncError> {
    while let Some(reply) = replies.blocking_recv() {
        if let Ok(Message::Error(error)) = reply.map_err(|_| ()).and_then(|body| decode_message(&body).map_err(|_| ()))
        {
            return Some(SyncError::Remote(error));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{RemoteError, RemoteErrorKind};

    fn told(kind: RemoteErrorKind, message: &str) -> SyncError {
        SyncError::Remote(RemoteError::new(kind, message))
    }

    fn cut() -> SyncError {
        told(RemoteErrorKind::Other, "the peer disconnected in the middle of a file")
    }

    fn full() -> SyncError {
        told(RemoteErrorKind::NoSpace, "cannot write `f06`: No space left on device")
    }

    fn kind(error: &SyncError) -> Option<RemoteErrorKind> {
        match error {
            SyncError::Remote(error) => Some(error.kind),
            _ => None,
        }
    }

    /// A content lane that the end of the session cut off may tell so before the tree thread
    /// reads the first lane: the receiver's error told there is still the session's reason.
    #[test]
    fn the_receivers_error_on_the_first_lane_wins_over_a_cut_off_lanes() {
        // The tree thread saw only that a content lane failed: the first lane is read.
        let reason = session_reason(SyncError::Disconnected("(a content lane failed)"), Some(cut()), || Some(full()));
        assert_eq!(kind(&reason), Some(RemoteErrorKind::NoSpace), "{reason}");
        // The tree thread read it itself: nothing more to read.
        let reason = session_reason(full(), Some(cut()), || panic!("the first lane was read already"));
        assert_eq!(kind(&reason), Some(RemoteErrorKind::NoSpace), "{reason}");
        // Nothing told on the first lane: a content lane's error, else the broken connection.
        let reason = session_reason(SyncError::Disconnected("before answering"), Some(cut()), || None);
        assert_eq!(reason.to_string(), cut().to_string());
        let reason = session_reason(
            SyncError::Disconnected("before answering"),
            Some(SyncError::Disconnected("while we were sending")),
            || None,
        );
        assert_eq!(reason.to_string(), "the peer disconnected before answering");
    }

    /// A failure on this side ended the session: what the receiver tells after it is a
    /// consequence, and is not even read.
    #[test]
    fn a_failure_on_this_side_wins_over_what_the_receiver_tells() {
        let ours = || SyncError::Protocol("unexpected Done message on a content lane".into());
        let reason = session_reason(full(), Some(ours()), || panic!("not read"));
        assert!(matches!(reason, SyncError::Protocol(_)), "{reason}");
        let reason = session_reason(ours(), Some(cut()), || panic!("not read"));
        assert!(matches!(reason, SyncError::Protocol(_)), "{reason}");
    }
}
