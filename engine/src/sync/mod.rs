//! The volume sync: a sender (source) and a receiver (target), each running on dedicated
//! blocking threads, joined to the tunnels by small async pumps.
//!
//! ```text
//! source: tree thread ─entries─┐                                   ┌─▶ target: first lane thread
//!  (scan, verdicts)            ├─▶ lane 0 ══TLS══ lane 0 ─────────┤    (entries, verdicts,
//!         │ jobs               │                                   │     deletions, dir metadata,
//!         ▼                    │                                   │     + lane 0's content)
//!  content worker 0 ───────────┘                                   │
//!  content worker k ──────────────▶ lane k ══TLS══ lane k ─────────┴─▶ lane k thread (content)
//!  (read, hash, compress)                                              (decompress, hash, write,
//!                                                                        verify, rename)
//! ```
//!
//! The sender's tree thread streams entries in path order and keeps at most [`WINDOW`] regular
//! files waiting for the receiver's verdict (`Need`, `NeedBlocks` or `Skip`). A requested file
//! is a job for the content workers, one per connection (*lane*; `SyncOptions::streams`, 1 by
//! default): each sends a file's chunks and its digest ([`digest`]: blake3 of its pieces' blake3) on its own lane, one file at a time. The
//! receiver answers each file entry (size+mtime quick check) on the first lane; any lane's
//! thread writes the content it gets to a temporary file in the file's directory, checks its
//! digest, applies metadata and renames it into place. When the tree ends, the receiver waits
//! until every requested file has arrived, then deletes what the source lacks and applies
//! directory metadata. Every queue is bounded (the job queue holds one file per lane), so
//! memory is bounded by the window, the lanes and the chunk size, not by the tree.

pub mod blocks;
mod deletion;
pub mod digest;
mod dirs;
mod links;
mod receiver;
mod sender;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::sync::mpsc;

use crate::progress::{SharedReporter, Summary};
use crate::volume::VolumeRoot;
use crate::wire::{FrameReader, FrameWriter, ReceiverReport, RemoteError, RemoteErrorKind, SyncOptions, WireError};

/// A session in which the peer says nothing for this long is over: it vanished. (The longest
/// honest silence is the receiver hashing a very large basis file.)
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Most regular files the sender keeps waiting for the receiver's verdict. With nothing to
/// send, a re-sync moves at most this many files a round trip: 1,024 made a 20,000-file
/// no-change re-sync over a 50 ms round trip wait for 20 of them (1.20 s against 0.29 s). A
/// waiting file costs its path and two numbers at the sender, and the receiver's bound on
/// requested files is twice this.
pub const WINDOW: usize = 8192;

/// Room reserved past a batch's size (the sender's small messages, the receiver's replies) for
/// the message that crosses it, so that a batch of small messages is one allocation.
const BATCH_SLACK: usize = 4096;

/// Bytes of frames read from the peer but not yet handled, per session (shared out among its
/// lanes): a lane's reader stops reading when its handler falls this far behind, so a peer
/// that floods (while, say, it does not read what we send) costs at most this much memory,
/// plus the one frame being read on each lane.
pub const INPUT_BUDGET: usize = 64 << 20;

/// Frames the sender's threads may queue for the writers, per session (shared out among its
/// lanes, at least 4 each): with chunks of up to 1 MiB, what a slow link can make the source hold.
const OUTPUT_FRAMES: usize = 32;

/// A connection with nothing to carry for this long sends an empty frame, so the peer's
/// [`IDLE_TIMEOUT`] only fires on a peer that is really gone (a lane idle while others work,
/// a first lane silent while a content lane carries a very large file).
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(60);

/// A frame body from the peer. It holds its share of [`INPUT_BUDGET`] until dropped.
pub(crate) struct InFrame {
    body: Vec<u8>,
    _budget: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for InFrame {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.body
    }
}

pub use deletion::DeletionError;

/// The extended attributes a session with `options` copies.
fn xattr_policy(options: &SyncOptions) -> crate::meta::XattrPolicy {
    crate::meta::XattrPolicy { selinux: options.selinux }
}

/// Whether a session with `options` enters file systems mounted inside the source volume.
fn mounts(options: &SyncOptions) -> crate::confine::Mounts {
    if options.cross_mounts { crate::confine::Mounts::Cross } else { crate::confine::Mounts::Stay }
}

/// What the scan of the source needs of a session's `options`.
fn scan_options(options: &SyncOptions) -> crate::scan::ScanOptions<'_> {
    crate::scan::ScanOptions { excludes: &options.excludes, mounts: mounts(options), xattrs: xattr_policy(options) }
}
/// How a session is cancelled from outside: the sender and the receiver end with
/// [`SyncError::Cancelled`] once their threads have stopped.
pub use tokio_util::sync::CancellationToken;

/// Errors of a volume sync session.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The tunnel failed or the peer spoke nonsense at the frame level.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer broke the protocol; the session was ended.
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    /// A file operation failed.
    #[error("{op} `{path}`")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// Path relative to the volume root.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Received content did not match the sender's digest.
    #[error("content of `{path}` does not match its blake3 digest; the file was not replaced")]
    Verification {
        /// Path relative to the volume root.
        path: String,
    },
    /// The peer reported an error.
    #[error("{}", remote_message(.0))]
    Remote(RemoteError),
    /// Deleting what the source lacks failed or was refused.
    #[error(transparent)]
    Deletion(#[from] DeletionError),
    /// The peer went away mid-session.
    #[error("the peer disconnected {0}")]
    Disconnected(&'static str),
    /// The session was cancelled on this side (its coordinator went away, or a newer session of
    /// the same migration took the volume over). Partial files stay for the next run; nothing
    /// was deleted unless the deletion pass had already finished.
    #[error("the session was cancelled")]
    Cancelled,
    /// A bug: one of the session's threads panicked. Never retried: a rerun would panic again.
    #[error("internal error: {0} panicked")]
    Internal(&'static str),
    /// The volume root is no longer what its path resolves to.
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    /// The agent did not welcome the session whose hello its first connection said: it
    /// refused ([`WireError::Remote`]) or answered nonsense. [`crate::session::SessionError::of_greeting`]
    /// tells it as the handshake would have.
    #[error("the agent did not welcome the session: {0}")]
    Greeting(WireError),
}

/// A full file system or a used-up quota: the peer hears [`RemoteErrorKind::NoSpace`].
fn is_no_space(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

fn remote_message(error: &RemoteError) -> String {
    format!("the peer reported an error: {}", error.message)
}

impl SyncError {
    /// The error as sent to the peer.
    #[must_use]
    pub fn to_remote(&self) -> RemoteError {
        let kind = match self {
            SyncError::Remote(error) | SyncError::Greeting(WireError::Remote(error)) => error.kind,
            SyncError::Protocol(_) | SyncError::Deletion(DeletionError::Duplicate { .. }) | SyncError::Greeting(_) => {
                RemoteErrorKind::Protocol
            }
            SyncError::Verification { .. } => RemoteErrorKind::Verification,
            SyncError::Io { source, .. } | SyncError::Deletion(DeletionError::Io { source, .. }) => {
                if is_no_space(source) { RemoteErrorKind::NoSpace } else { RemoteErrorKind::Io }
            }
            SyncError::Internal(_) => RemoteErrorKind::Internal,
            SyncError::Deletion(DeletionError::MassDelete { .. }) => RemoteErrorKind::MassDelete,
            SyncError::Deletion(DeletionError::Replaced { .. })
            | SyncError::Wire(_)
            | SyncError::Volume(_)
            | SyncError::Disconnected(_)
            | SyncError::Cancelled => RemoteErrorKind::Other,
        };
        RemoteError::new(kind, full_message(self))
    }

    /// True when rerunning the session may get further (connection trouble, full disk); never
    /// for [`SyncError::Internal`].
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Greeting(WireError::Remote(error)) => error.kind.is_retryable(),
            SyncError::Wire(error) | SyncError::Greeting(error) => error.is_retryable(),
            SyncError::Disconnected(_) | SyncError::Io { .. } => true,
            _ => false,
        }
    }
}

/// An error and its causes on one line.
#[must_use]
pub fn full_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Result alias for the sync module.
pub type Result<T, E = SyncError> = std::result::Result<T, E>;

/// A further connection of a session that is still joining (its hello said, its welcome
/// awaited): [`send_volume`] starts the tree on the first connection meanwhile.
pub type Joining<S> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S>> + Send>>;

/// Places of a thread's input queue the reader takes at a time once the queue is full. Taking
/// them one by one woke the reader (a futex, often a context switch) for every frame the
/// thread took: two per small file. It waits for this many places to free up instead.
const INPUT_PLACES: usize = 64;

/// Reads frame bodies and hands them to a blocking thread, which decodes them (data chunks are
/// used in place), holding at most `budget` bytes of them; skips keepalives (empty frames);
/// ends at end of stream or on error.
async fn pump_in<R: AsyncRead + Unpin>(reader: R, to_thread: mpsc::Sender<Result<InFrame>>, budget: usize) {
    let mut frames = FrameReader::new(BufReader::with_capacity(256 * 1024, reader));
    let limit = budget;
    let budget = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut places = None;
    loop {
        let item = match tokio::time::timeout(IDLE_TIMEOUT, frames.read_frame()).await {
            Ok(Ok(Some(body))) if body.is_empty() => continue,
            Ok(Ok(Some(body))) => {
                let share = u32::try_from(body.len().clamp(1, limit)).expect("the budget fits u32");
                let Ok(permit) = Arc::clone(&budget).acquire_many_owned(share).await else { return };
                Ok(InFrame { body, _budget: permit })
            }
            Ok(Ok(None)) => return,
            Ok(Err(error)) => Err(SyncError::Wire(error)),
            // A peer that vanished without closing (node lost, link partitioned).
            Err(_) => Err(SyncError::Disconnected("(nothing heard from it for 10 minutes)")),
        };
        let stop = item.is_err();
        let place = if let Some(place) = places.as_mut().and_then(Iterator::next) {
            place
        } else {
            let wanted = INPUT_PLACES.min(to_thread.max_capacity());
            let Ok(mut reserved) = to_thread.reserve_many(wanted).await else { return };
            let place = reserved.next().expect("at least one place reserved");
            places = Some(reserved);
            place
        };
        place.send(item);
        if stop {
            return;
        }
    }
}

/// Reads the welcome of a connection whose hello went out unanswered ([`First::Greeted`]): its
/// notice goes to `reporter`; anything but a welcome is [`SyncError::Greeting`].
async fn read_welcome<R: AsyncRead + Unpin>(reader: &mut R, reporter: &SharedReporter) -> Result<()> {
    let Ok(welcome) = tokio::time::timeout(IDLE_TIMEOUT, FrameReader::new(reader).read_welcome()).await else {
        let silence = std::io::Error::new(std::io::ErrorKind::TimedOut, "nothing heard for 10 minutes");
        return Err(SyncError::Greeting(WireError::Io { context: "waiting for the welcome", source: silence }));
    };
    if let Some(message) = welcome.map_err(SyncError::Greeting)?.notice {
        reporter.on_event(&crate::progress::Event::Warning { message });
    }
    Ok(())
}

/// How a session's lanes share a bandwidth limit.
#[derive(Clone)]
struct Pace {
    /// Bytes per second; 0 = no limit.
    bwlimit: u64,
    started: tokio::time::Instant,
    /// Bytes of every lane's frames, counted before they are written.
    scheduled: Arc<AtomicU64>,
    /// Nanoseconds the lanes' writers were held back: by a connection that took no more bytes
    /// (the link, or the peer behind it, is the limit) or by the bandwidth limit. The sender's
    /// compression level control reads it ([`crate::compress::LevelControl`]).
    held_back_ns: Arc<AtomicU64>,
}

impl Pace {
    fn new(bwlimit: u64) -> Pace {
        Pace {
            bwlimit,
            started: tokio::time::Instant::now(),
            scheduled: Arc::new(AtomicU64::new(0)),
            held_back_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    fn held_back(&self, since: tokio::time::Instant) {
        let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.held_back_ns.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// A connection's writer that counts the time the connection keeps it waiting (from a write
/// it did not take until the next one it takes) in [`Pace::held_back_ns`].
struct Watched<W> {
    inner: W,
    pace: Pace,
    blocked_since: Option<tokio::time::Instant>,
}

impl<W> Watched<W> {
    fn note<T>(&mut self, poll: std::task::Poll<T>) -> std::task::Poll<T> {
        match (&poll, self.blocked_since) {
            (std::task::Poll::Pending, None) => self.blocked_since = Some(tokio::time::Instant::now()),
            (std::task::Poll::Ready(_), Some(since)) => {
                self.blocked_since = None;
                self.pace.held_back(since);
            }
            _ => {}
        }
        poll
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Watched<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(poll)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.note(poll)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Writes frames from a blocking thread to the stream, flushing whenever the queue runs dry,
/// and an empty frame after [`KEEPALIVE`] of silence. With a bandwidth limit a frame leaves
/// when the average over the session's lanes allows it; `on_wire` counts what was written,
/// [`Pace::held_back_ns`] how long the connection or the limit held the writer back.
async fn pump_out<W: AsyncWrite + Unpin>(
    writer: W,
    mut from_thread: mpsc::Receiver<Vec<u8>>,
    on_wire: Arc<AtomicU64>,
    pace: Pace,
) -> Result<()> {
    let writer = Watched { inner: writer, pace: pace.clone(), blocked_since: None };
    let mut frames = FrameWriter::new(BufWriter::with_capacity(256 * 1024, writer));
    loop {
        let frame = match tokio::time::timeout(KEEPALIVE, from_thread.recv()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                frames.write_frame(&0u32.to_be_bytes()).await?;
                frames.flush().await?;
                continue;
            }
        };
        if pace.bwlimit > 0 {
            // Reserved before the write, so lanes writing at once do not all see the old total.
            let sent = pace.scheduled.fetch_add(frame.len() as u64, Ordering::Relaxed);
            let due = pace.started + std::time::Duration::from_secs_f64(sent as f64 / pace.bwlimit as f64);
            if due > tokio::time::Instant::now() {
                frames.flush().await?;
                let since = tokio::time::Instant::now();
                tokio::time::sleep_until(due).await;
                pace.held_back(since);
            }
        }
        frames.write_frame(&frame).await?;
        on_wire.fetch_add(frame.len() as u64, Ordering::Relaxed);
        if from_thread.is_empty() {
            frames.flush().await?;
        }
    }
    frames.flush().await?;
    frames.shutdown().await?;
    Ok(())
}

/// Why a further connection of a session could not join (the first such error), and the
/// token that stops the session then.
#[derive(Default)]
struct JoinFailure {
    error: std::sync::Mutex<Option<SyncError>>,
    stop: CancellationToken,
}

impl JoinFailure {
    fn record(&self, error: SyncError) {
        self.error.lock().expect("no task panics holding the join failure").get_or_insert(error);
        self.stop.cancel();
    }

    /// The session's result: a join's failure instead of the cancellation it caused. A hello
    /// that was not welcomed explains any failure: nothing else happened before the welcome
    /// (the thread may see its queues closed, or its writes refused, before the cancellation).
    fn explain<T>(&self, result: Result<T>) -> Result<T> {
        match (result, self.error.lock().expect("no task panics holding the join failure").take()) {
            (Err(_), Some(error @ SyncError::Greeting(_))) | (Err(SyncError::Cancelled), Some(error)) => Err(error),
            (result, _) => result,
        }
    }
}

/// The async ends of one connection: a reader task and a writer task.
struct Pumps {
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<Result<()>>,
}

impl Pumps {
    /// Starts the pumps of `stream`; returns them and the thread's ends of their queues.
    fn start<S>(
        stream: S,
        queues: (usize, usize, usize),
        on_wire: Arc<AtomicU64>,
        pace: Pace,
    ) -> (Pumps, mpsc::Sender<Vec<u8>>, mpsc::Receiver<Result<InFrame>>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let failed = Arc::new(JoinFailure::default());
        Pumps::start_joining(Box::pin(std::future::ready(Ok(stream))), queues, (on_wire, pace), (&failed, None))
    }

    /// [`Pumps::start`] on a connection still joining: the thread may queue frames at once,
    /// and they leave once it has joined. A join that fails is recorded in `failed`, which
    /// stops the session. With `greeted`, the connection's hello was said and its welcome is
    /// the first frame read: its notice goes to that reporter, and a refusal is recorded as a
    /// failed join.
    fn start_joining<S>(
        joining: Joining<S>,
        (input_frames, input_budget, output_frames): (usize, usize, usize),
        (on_wire, pace): (Arc<AtomicU64>, Pace),
        (failed, greeted): (&Arc<JoinFailure>, Option<SharedReporter>),
    ) -> (Pumps, mpsc::Sender<Vec<u8>>, mpsc::Receiver<Result<InFrame>>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (in_tx, in_rx) = mpsc::channel(input_frames);
        let (out_tx, out_rx) = mpsc::channel(output_frames);
        let (read_half, reader) = tokio::sync::oneshot::channel();
        let failed = failed.clone();
        let refused = failed.clone();
        let pumps = Pumps {
            reader: tokio::spawn(async move {
                let Ok(mut reader) = reader.await else { return };
                if let Some(reporter) = greeted
                    && let Err(error) = read_welcome(&mut reader, &reporter).await
                {
                    return refused.record(error);
                }
                pump_in(reader, in_tx, input_budget).await;
            }),
            writer: tokio::spawn(async move {
                let stream = match joining.await {
                    Ok(stream) => stream,
                    Err(error) => {
                        failed.record(error);
                        return Err(SyncError::Disconnected("(a further stream could not join)"));
                    }
                };
                let (reader, writer) = tokio::io::split(stream);
                let _ = read_half.send(reader);
                pump_out(writer, out_rx, on_wire, pace).await
            }),
        };
        (pumps, out_tx, in_rx)
    }

    /// Waits for the writer to flush what the thread sent, then stops reading.
    async fn finish(mut self) -> Result<()> {
        let written = (&mut self.writer).await.map_err(|error| joined_error(&error, "the frame writer"))?;
        self.reader.abort();
        written
    }

    /// Stops both pumps now: the connection closes, and the thread's queues with it.
    fn stop(&self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// Pumps never outlive their session: a session dropped half way (cancelled) closes its
/// connections instead of leaving them to carry on unattended.
impl Drop for Pumps {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a task that did not return means: a panic is a bug ([`SyncError::Internal`]); a task
/// aborted from outside (the runtime shutting down) left the session unfinished.
fn joined_error(error: &tokio::task::JoinError, which: &'static str) -> SyncError {
    if error.is_panic() { SyncError::Internal(which) } else { SyncError::Disconnected("(the session was aborted)") }
}

/// Waits for a session's thread; on `cancel`, stops the pumps first (so the thread's queues
/// close and it returns within one chunk) and still waits for it, so that nothing the session
/// does outlives the call.
async fn join_or_cancel<T>(
    thread: tokio::task::JoinHandle<Result<T>>,
    pumps: &[&Pumps],
    cancel: &CancellationToken,
    which: &'static str,
) -> Result<T> {
    tokio::pin!(thread);
    tokio::select! {
        joined = &mut thread => joined.map_err(|error| joined_error(&error, which))?,
        () = cancel.cancelled() => {
            for pumps in pumps {
                pumps.stop();
            }
            let _ = thread.await;
            Err(SyncError::Cancelled)
        }
    }
}

/// A sending session's first connection.
pub enum First<S> {
    /// A pipe that needs no hello (tests).
    #[cfg(test)]
    Ready(S),
    /// Its hello said, its welcome not read: the tree starts at once, and the welcome is the
    /// first frame read. Its notice goes to the reporter; a refusal ends the session with
    /// [`SyncError::Greeting`].
    Greeted(S),
}

/// Runs the sender over established tunnels: streams the tree under `root` to the receiver at
/// the other end and returns the summary once the receiver acknowledged. `lanes` are the
/// session's further connections (`options.streams - 1` of them), joined or joining (the tree
/// starts meanwhile; a lane that fails to join ends the session with its reason). A root whose
/// watch sees it change ends the session.
pub async fn send_volume<S>(
    first: First<S>,
    lanes: Vec<Joining<S>>,
    root: VolumeRoot,
    options: SyncOptions,
    reporter: SharedReporter,
    cancel: &CancellationToken,
) -> Result<Summary>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (root, watch) = (root.fd().clone(), root.watch().clone());
    // Early totals (for a progress bar's ETA) come from a quick metadata-only walk beside the
    // transfer; otherwise the sender reports them when its scan ends.
    let totals = reporter.wants_early_totals().then(|| {
        let (root, reporter, options) = (root.clone(), reporter.clone(), options.clone());
        tokio::task::spawn_blocking(move || {
            if let Ok((files, bytes)) = crate::scan::totals(&root, scan_options(&options)) {
                reporter.on_event(&crate::progress::Event::Totals { files, bytes });
            }
        })
    });
    let on_wire = Arc::new(AtomicU64::new(0));
    let pace = Pace::new(options.bwlimit);
    let budget = INPUT_BUDGET / (lanes.len() + 1);
    // Frames (up to a chunk each) queued for the writers: 32 for the session, at least 4 a lane.
    let queued = (OUTPUT_FRAMES / (lanes.len() + 1)).max(4);
    let join_failure = Arc::new(JoinFailure { error: std::sync::Mutex::default(), stop: cancel.child_token() });
    let (stream, greeted) = match first {
        #[cfg(test)]
        First::Ready(stream) => (stream, None),
        First::Greeted(stream) => (stream, Some(reporter.clone())),
    };
    let (first_pumps, out, replies) = Pumps::start_joining(
        Box::pin(std::future::ready(Ok(stream))),
        (WINDOW * 2 + 16, budget, queued),
        (on_wire.clone(), pace.clone()),
        (&join_failure, greeted),
    );
    let mut pumps = vec![first_pumps];
    let mut others = Vec::new();
    for lane in lanes {
        let (lane_pumps, out, replies) =
            Pumps::start_joining(lane, (4, budget, queued), (on_wire.clone(), pace.clone()), (&join_failure, None));
        pumps.push(lane_pumps);
        others.push(sender::Lane { out, replies });
    }
    let shared = sender::Shared::new((root, watch), options, reporter, (on_wire.clone(), pace.held_back_ns.clone()));
    // Progress also while the threads wait on a full queue (a slow link drains what they read
    // ahead): the bytes on the wire keep moving.
    let ticker = tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut every = tokio::time::interval(sender::PROGRESS_EVERY);
            loop {
                every.tick().await;
                shared.progress(false);
            }
        }
    });
    let thread = tokio::task::spawn_blocking(move || sender::run(&shared, sender::Lane { out, replies }, others));
    let all: Vec<&Pumps> = pumps.iter().collect();
    let result = join_or_cancel(thread, &all, &join_failure.stop, "the sender thread").await;
    let result = join_failure.explain(result);
    ticker.abort();
    let mut written = Ok(());
    for lane in pumps {
        let finished = lane.finish().await;
        written = written.and(finished);
    }
    if let Some(totals) = totals {
        let _ = totals.await;
    }
    let mut summary = result?;
    written?;
    summary.bytes_on_wire = on_wire.load(Ordering::Relaxed);
    Ok(summary)
}

/// Runs the receiver over established, handshaken tunnels: recreates the sender's tree under
/// `root`. `lanes` are the session's further connections, already joined. On failure the
/// peer is told why before the tunnels close. A root whose watch sees it change ends the
/// session.
pub async fn receive_volume<S>(
    stream: S,
    lanes: Vec<S>,
    root: VolumeRoot,
    options: SyncOptions,
    reporter: SharedReporter,
    cancel: &CancellationToken,
) -> Result<ReceiverReport>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let group = receiver::Group::new((root.fd().clone(), root.watch().clone()), options, reporter, lanes.len() + 1)?;
    let budget = INPUT_BUDGET / (lanes.len() + 1);
    // The first lane's queue holds about as many frames as the sender may have files waiting
    // for a verdict (bytes stay bounded by the budget). With a short one the reader fills it
    // with small entry frames and then waits for a free slot, so the thread woke it once per
    // entry it took: 8,400 context switches in a no-change re-sync of 20k entries, 660 with this.
    let written = Arc::new(AtomicU64::new(0));
    let (first, out, input) =
        Pumps::start(stream, (WINDOW * 2 + 16, budget, WINDOW * 2 + 16), written.clone(), Pace::new(0));
    let mut others = Vec::new();
    for (number, lane) in (1..).zip(lanes) {
        let (pumps, out, input) = Pumps::start(lane, (64, budget, 4), Arc::new(AtomicU64::new(0)), Pace::new(0));
        let group = group.clone();
        let thread = tokio::task::spawn_blocking(move || receiver::run_lane(&group, number, &out, input));
        others.push((pumps, thread));
    }
    let thread = tokio::task::spawn_blocking(move || receiver::run(group, out, input, written));
    let all: Vec<&Pumps> = std::iter::once(&first).chain(others.iter().map(|(pumps, _)| pumps)).collect();
    let result = join_or_cancel(thread, &all, cancel, "the receiver thread").await;
    // The thread has sent its last frame (Done or Error) and dropped its queue: let the writer
    // flush it before reporting, so the peer learns why the session ended.
    let written = first.finish().await;
    // Every requested file has settled: the other lanes have nothing left to do. Stopping
    // their readers ends their threads.
    for (mut pumps, thread) in others {
        pumps.reader.abort();
        let _ = thread.await;
        let _ = (&mut pumps.writer).await;
    }
    let report = result?;
    written?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Message, decode_message, encode_message};

    /// A session thread that panics is a bug: [`SyncError::Internal`], never retried (it used to
    /// be `Disconnected`, which is).
    #[tokio::test]
    async fn a_panicking_session_thread_is_internal_and_not_retryable() {
        let thread = tokio::task::spawn_blocking(|| -> Result<()> { panic!("a bug") });
        let error = join_or_cancel(thread, &[], &CancellationToken::new(), "the test thread").await.unwrap_err();
        assert!(matches!(error, SyncError::Internal("the test thread")), "{error}");
        assert!(!error.is_retryable());
        assert_eq!(error.to_string(), "internal error: the test thread panicked");
        assert!(SyncError::Disconnected("(test)").is_retryable());
    }

    /// A lane that carries nothing for twice the idle timeout stays alive (keepalives), and
    /// what comes after arrives first in line: the empty frames never reach the thread.
    #[tokio::test(start_paused = true)]
    async fn an_idle_lane_stays_alive_and_keepalives_never_reach_the_thread() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (to_pump, from_thread) = mpsc::channel(4);
        let writer = tokio::spawn(pump_out(ours, from_thread, Arc::new(AtomicU64::new(0)), Pace::new(0)));
        let (to_thread, mut input) = mpsc::channel(4);
        let reader = tokio::spawn(pump_in(theirs, to_thread, 1 << 20));
        tokio::time::sleep(IDLE_TIMEOUT * 2).await;
        to_pump.send(encode_message(&Message::EndOfEntries)).await.unwrap();
        let first = input.recv().await.expect("the reader is still running").expect("no idle timeout");
        assert_eq!(decode_message(&first).unwrap(), Message::EndOfEntries);
        drop(to_pump);
        writer.await.unwrap().unwrap();
        assert!(input.recv().await.is_none(), "a clean end after the last frame");
        reader.await.unwrap();
    }

    /// Without keepalives the same silence ends the session (the test above can fail).
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_given_up_after_the_idle_timeout() {
        let (_ours, theirs) = tokio::io::duplex(1 << 16);
        let (to_thread, mut input) = mpsc::channel(4);
        let reader = tokio::spawn(pump_in(theirs, to_thread, 1 << 20));
        let item = input.recv().await.expect("an error, not a clean end");
        assert!(matches!(item, Err(SyncError::Disconnected(_))));
        reader.await.unwrap();
    }

    /// The time a connection that takes no more bytes keeps the writer waiting is counted (the
    /// compression level control reads it as a link that limits the copy); a connection that
    /// takes everything at once counts nothing.
    #[tokio::test(start_paused = true)]
    async fn the_time_a_full_connection_holds_the_writer_back_is_counted() {
        for peer_reads in [false, true] {
            let (ours, mut theirs) = tokio::io::duplex(1024);
            let (to_pump, from_thread) = mpsc::channel(4);
            let pace = Pace::new(0);
            let held = pace.held_back_ns.clone();
            let writer = tokio::spawn(pump_out(ours, from_thread, Arc::new(AtomicU64::new(0)), pace));
            let reader = tokio::spawn(async move {
                if !peer_reads {
                    // The link carries nothing for a second.
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                let mut all = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut theirs, &mut all).await.unwrap();
                all.len()
            });
            to_pump.send(vec![7u8; 64 * 1024]).await.unwrap();
            drop(to_pump);
            writer.await.unwrap().unwrap();
            assert_eq!(reader.await.unwrap(), 64 * 1024);
            let held = held.load(Ordering::Relaxed);
            if peer_reads {
                assert!(held < 10_000_000, "held back {held} ns by a peer that reads at once");
            } else {
                assert!(held >= 1_000_000_000, "held back only {held} ns by a peer that read nothing for 1 s");
            }
        }
    }
}
