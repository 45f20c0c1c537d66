//! The volume sync: a sender (source) and a receiver (target) state machine, each running on a
//! dedicated blocking thread, joined to the tunnel by two small async pumps.
//!
//! ```text
//! source thread ──frames──▶ writer task ══TLS══▶ reader task ──messages──▶ target thread
//! (scan, read, hash,        (bounded queue)            (bounded queue)    (check, decompress,
//!  compress)          ◀──── reader task ◀══TLS══ writer task ◀──frames──── hash, write, rename)
//! ```
//!
//! The sender streams entries in path order and keeps at most [`WINDOW`] regular files waiting
//! for the receiver's verdict (`Need` or `Skip`); it serves `Need`s between entries. The
//! receiver answers each file entry (size+mtime quick check), writes requested content to a
//! temporary file in the same directory, checks its blake3, applies metadata and renames it into
//! place. Directory metadata is applied last. Every queue is bounded, so memory is bounded by
//! the window and the chunk size, not by the tree.

pub mod blocks;
mod deletion;
mod receiver;
mod sender;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::sync::mpsc;

use crate::progress::{SharedReporter, Summary};
use crate::wire::{FrameReader, FrameWriter, ReceiverReport, RemoteError, RemoteErrorKind, SyncOptions, WireError};

/// A session in which the peer says nothing for this long is over: it vanished. (The longest
/// honest silence is the receiver hashing a very large basis file.)
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Most regular files the sender keeps waiting for the receiver's verdict.
pub const WINDOW: usize = 1024;

/// Bytes of frames read from the peer but not yet handled, per session: the reader stops
/// reading when the handler falls this far behind, so a peer that floods (while, say, it does not
/// read what we send) costs at most this much memory, plus the one frame being read.
pub const INPUT_BUDGET: usize = 64 << 20;

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
    /// Received content did not match the sender's blake3.
    #[error("content of `{path}` does not match its blake3 checksum; the file was not replaced")]
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
}

fn remote_message(error: &RemoteError) -> String {
    format!("the peer reported an error: {}", error.message)
}

impl SyncError {
    /// The error as sent to the peer.
    #[must_use]
    pub fn to_remote(&self) -> RemoteError {
        let kind = match self {
            SyncError::Protocol(_) | SyncError::Deletion(DeletionError::Duplicate { .. }) => RemoteErrorKind::Protocol,
            SyncError::Verification { .. } => RemoteErrorKind::Verification,
            SyncError::Io { .. } | SyncError::Deletion(DeletionError::Io { .. }) => RemoteErrorKind::Io,
            SyncError::Remote(error) => error.kind,
            SyncError::Deletion(DeletionError::MassDelete { .. }) | SyncError::Wire(_) | SyncError::Disconnected(_) => {
                RemoteErrorKind::Other
            }
        };
        RemoteError::new(kind, full_message(self))
    }

    /// True when rerunning the session may get further (connection trouble, full disk).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Wire(error) => error.is_retryable(),
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

/// Reads frame bodies and hands them to a blocking thread, which decodes them (data chunks are
/// used in place); ends at end of stream or on error.
async fn pump_in<R: AsyncRead + Unpin>(reader: R, to_thread: mpsc::Sender<Result<InFrame>>) {
    let mut frames = FrameReader::new(BufReader::with_capacity(256 * 1024, reader));
    let budget = Arc::new(tokio::sync::Semaphore::new(INPUT_BUDGET));
    loop {
        let item = match tokio::time::timeout(IDLE_TIMEOUT, frames.read_frame()).await {
            Ok(Ok(Some(body))) => {
                let share = u32::try_from(body.len().clamp(1, INPUT_BUDGET)).expect("the budget fits u32");
                let Ok(permit) = Arc::clone(&budget).acquire_many_owned(share).await else { return };
                Ok(InFrame { body, _budget: permit })
            }
            Ok(Ok(None)) => return,
            Ok(Err(error)) => Err(SyncError::Wire(error)),
            // A peer that vanished without closing (node lost, link partitioned).
            Err(_) => Err(SyncError::Disconnected("(nothing heard from it for 10 minutes)")),
        };
        let stop = item.is_err();
        if to_thread.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// Writes frames from a blocking thread to the stream, flushing whenever the queue runs dry,
/// and at most `bwlimit` bytes per second on average when it is not 0.
async fn pump_out<W: AsyncWrite + Unpin>(
    writer: W,
    mut from_thread: mpsc::Receiver<Vec<u8>>,
    on_wire: Arc<AtomicU64>,
    bwlimit: u64,
) -> Result<()> {
    let mut frames = FrameWriter::new(BufWriter::with_capacity(256 * 1024, writer));
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    while let Some(frame) = from_thread.recv().await {
        if bwlimit > 0 {
            // Pace on what was sent so far: the next frame leaves when the average allows it.
            let due = started + std::time::Duration::from_secs_f64(sent as f64 / bwlimit as f64);
            if due > tokio::time::Instant::now() {
                frames.flush().await?;
                tokio::time::sleep_until(due).await;
            }
        }
        frames.write_frame(&frame).await?;
        sent += frame.len() as u64;
        on_wire.fetch_add(frame.len() as u64, Ordering::Relaxed);
        if from_thread.is_empty() {
            frames.flush().await?;
        }
    }
    frames.flush().await?;
    frames.shutdown().await?;
    Ok(())
}

/// Runs the sender over an established, handshaken tunnel: streams the tree under `root` to
/// the receiver at the other end and returns the summary once the receiver acknowledged.
pub async fn send_volume<S>(
    stream: S,
    root: Arc<OwnedFd>,
    options: SyncOptions,
    reporter: SharedReporter,
) -> Result<Summary>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    // Early totals (for a progress bar's ETA) come from a quick metadata-only walk beside the
    // transfer; otherwise the sender reports them when its scan ends.
    let totals = reporter.wants_early_totals().then(|| {
        let (root, reporter) = (root.clone(), reporter.clone());
        tokio::task::spawn_blocking(move || {
            if let Ok((files, bytes)) = crate::scan::totals(&root) {
                reporter.on_event(&crate::progress::Event::Totals { files, bytes });
            }
        })
    });
    let (reader, writer) = tokio::io::split(stream);
    let (in_tx, in_rx) = mpsc::channel(WINDOW * 2 + 16);
    let (out_tx, out_rx) = mpsc::channel(32);
    let on_wire = Arc::new(AtomicU64::new(0));
    let pump_in = tokio::spawn(pump_in(reader, in_tx));
    let pump_out = tokio::spawn(pump_out(writer, out_rx, on_wire.clone(), options.bwlimit));
    let thread = {
        let on_wire = on_wire.clone();
        tokio::task::spawn_blocking(move || sender::Sender::new(root, options, reporter, on_wire, out_tx, in_rx).run())
    };
    let result = thread.await.map_err(|_| SyncError::Disconnected("(sender thread panicked)"))?;
    let written = pump_out.await.map_err(|_| SyncError::Disconnected("(writer panicked)"))?;
    pump_in.abort();
    if let Some(totals) = totals {
        let _ = totals.await;
    }
    let mut summary = result?;
    written?;
    summary.bytes_on_wire = on_wire.load(Ordering::Relaxed);
    Ok(summary)
}

/// Runs the receiver over an established, handshaken tunnel: recreates the sender's tree
/// under `root`. On failure the peer is told why before the tunnel closes.
pub async fn receive_volume<S>(
    stream: S,
    root: Arc<OwnedFd>,
    options: SyncOptions,
    reporter: SharedReporter,
) -> Result<ReceiverReport>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::channel(WINDOW * 2 + 16);
    let pump_in = tokio::spawn(pump_in(reader, in_tx));
    let pump_out = tokio::spawn(pump_out(writer, out_rx, Arc::new(AtomicU64::new(0)), 0));
    let thread = tokio::task::spawn_blocking(move || receiver::run(root, options, reporter, out_tx, in_rx));
    let result = thread.await.map_err(|_| SyncError::Disconnected("(receiver thread panicked)"))?;
    // The thread has sent its last frame (Done or Error) and dropped its queue: let the writer
    // flush it before reporting, so the peer learns why the session ended.
    let written = pump_out.await.map_err(|_| SyncError::Disconnected("(writer panicked)"))?;
    pump_in.abort();
    let report = result?;
    written?;
    Ok(report)
}
