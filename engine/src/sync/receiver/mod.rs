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
//!
//! One concern per file:
//! - [`group`]: what the lanes share ([`Group`]), how metadata is compared and applied;
//! - [`entries`]: checking the tree's entries and making directories, links and special files;
//! - [`verdict`]: the quick check of a regular file, answered `Skip` or a request;
//! - [`basis`]: what a changed file is rebuilt from, chosen, opened and read;
//! - [`signers`]: signing the bases of big changed files on threads of their own;
//! - [`replies`]: the batched, bounded way back to the sender;
//! - [`lane`]: a lane's file content, written, verified and renamed into place;
//! - [`direct`]: writes past the page cache, and the page writer that keeps holes;
//! - [`finish`]: the end of the tree (deletions, directory metadata).

mod basis;
mod direct;
mod entries;
mod finish;
mod group;
mod lane;
mod replies;
mod signers;
#[cfg(test)]
mod tests;
mod verdict;

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc;

use group::DirCache;
pub(super) use group::Group;
use lane::Lane;
use replies::ReplyPath;
use signers::Signers;

use super::deletion::Deletions;
use super::{Result, SyncError, WINDOW};
use crate::confine::RelPath;
use crate::wire::{Incoming, Message, ReceiverReport, decode_incoming, encode_message};

/// Most files the receiver has requested and not yet seen arrive before its tree waits for
/// deliveries (`Receiver::await_room_for_request`).
const MAX_PENDING: usize = WINDOW * 2;

/// The first lane: the tree, the verdicts and the end of the session, plus its share of content.
pub(super) struct Receiver {
    group: Arc<Group>,
    path: Arc<ReplyPath>,
    input: mpsc::Receiver<Result<crate::sync::InFrame>>,
    dirs_cache: DirCache,
    dirs: crate::sync::dirs::Directories,
    seen_root: bool,
    deletions: Deletions,
    /// In a dry run, the directory being walked that is not on the target (it would be
    /// created): everything beneath it is new, and nothing there is looked at.
    absent: Option<Vec<u8>>,
    /// The directory this session made that the entries being checked lie beneath: nothing
    /// was there before (it is made private, 0700, until the last pass gives it its mode), so
    /// the names of new files there are not looked up first.
    made: Option<Vec<u8>>,
    /// The entry being checked lies beneath `made`.
    beneath_made: bool,
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
    input: mpsc::Receiver<Result<crate::sync::InFrame>>,
    written: Arc<AtomicU64>,
) -> Result<ReceiverReport> {
    let deletions = Deletions::new(group.options.delete, &group.session)
        .with_dry_run(group.options.dry_run)
        .with_excludes(group.excludes.clone());
    let dirs = crate::sync::dirs::Directories::new(group.root.clone());
    let path = Arc::new(ReplyPath { out, handed: AtomicU64::new(0), written, stopped: AtomicBool::new(false) });
    let mut receiver = Receiver {
        lane: Lane::new(group.clone()),
        signers: Signers::new(group.clone(), path.clone()),
        group,
        path,
        input,
        deletions,
        absent: None,
        made: None,
        beneath_made: false,
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
    mut input: mpsc::Receiver<Result<crate::sync::InFrame>>,
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

/// Wraps an I/O error about `path` with what failed.
fn io_at(path: &RelPath) -> impl Fn(&'static str, io::Error) -> SyncError + Copy + '_ {
    move |op, source| SyncError::Io { op, path: path.display(), source }
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

    /// The next frame body from the sender; pending replies go out first if we would wait.
    fn next_input(&mut self) -> Result<crate::sync::InFrame> {
        if let Ok(body) = self.input.try_recv() {
            body
        } else {
            self.flush_replies()?;
            self.input.blocking_recv().ok_or(SyncError::Disconnected("in the middle of the session"))?
        }
    }
}
