//! The first lane's way back to the sender: verdicts and changes batched into few writes
//! ([`Receiver::reply`]), and a budget on what the writer may hold ([`ReplyPath`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::Receiver;
use crate::confine;
use crate::progress::{Change, ChangeAction, ChangeKind, Differs};
use crate::sync::{Result, SyncError};
use crate::wire::{Message, append_message};

/// Bytes of replies gathered before they are written.
pub(super) const REPLY_BATCH: usize = 64 * 1024;

/// Replies gathered before they are written, whatever their size: an eighth of the sender's
/// window, so it gets verdicts while it still scans instead of once it has stopped for them.
pub(super) const REPLY_COUNT: usize = crate::sync::WINDOW / 8;

/// Bytes of replies the writer may hold unwritten. The queue also has a frame count, but a
/// batch can be large (a block signature is up to 1.5 MiB), and a sender that stops reading
/// while it sends entries of big changed files would otherwise make us hold gigabytes.
pub(super) const REPLY_BUDGET: u64 = 16 << 20;

/// The first lane's way back to the sender, shared by the receiver thread (verdicts, batched)
/// and the signers (requests of big changed files, one each).
pub(super) struct ReplyPath {
    pub(super) out: mpsc::Sender<Vec<u8>>,
    /// Bytes of replies handed to the writer, and (counted by the writer) written.
    pub(super) handed: AtomicU64,
    pub(super) written: Arc<AtomicU64>,
    /// The session is over: whoever waits for room gives up.
    pub(super) stopped: AtomicBool,
}

impl ReplyPath {
    /// Hands `batch` to the writer once it holds no more than [`REPLY_BUDGET`] unwritten.
    pub(super) fn send(&self, batch: Vec<u8>) -> Result<()> {
        self.wait_for_room()?;
        self.handed.fetch_add(batch.len() as u64, Ordering::AcqRel);
        self.out.blocking_send(batch).map_err(|_| SyncError::Disconnected("while we were replying"))
    }

    /// Waits until the writer has written all but [`REPLY_BUDGET`] of the bytes handed to it.
    /// Only a peer that stops reading makes this wait, so a short sleep is as good as a wake-up.
    pub(super) fn wait_for_room(&self) -> Result<()> {
        while self.handed.load(Ordering::Acquire).saturating_sub(self.written.load(Ordering::Acquire)) > REPLY_BUDGET {
            if self.out.is_closed() || self.stopped.load(Ordering::Acquire) {
                return Err(SyncError::Disconnected("while we were replying"));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(())
    }
}

impl Receiver {
    /// Queues a reply. Replies are batched into one write (up to [`REPLY_BATCH`] bytes or
    /// [`REPLY_COUNT`] replies) and sent whenever the receiver is about to wait for input, so a
    /// re-sync of many unchanged files costs a few hundred writes instead of one tiny TLS record
    /// per file.
    pub(super) fn reply(&mut self, message: &Message) -> Result<()> {
        if self.replies.is_empty() {
            self.replies.reserve(REPLY_BATCH + crate::sync::BATCH_SLACK);
        }
        append_message(&mut self.replies, message);
        self.replies_held += 1;
        if self.replies.len() >= REPLY_BATCH || self.replies_held >= REPLY_COUNT {
            self.flush_replies()?;
        }
        Ok(())
    }

    pub(super) fn flush_replies(&mut self) -> Result<()> {
        if self.replies.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.replies);
        self.replies_held = 0;
        self.path.send(batch)
    }

    /// Tells the sender of a change to `path`, when the session asked for changes.
    pub(super) fn report(
        &mut self,
        action: ChangeAction,
        kind: ChangeKind,
        path: &[u8],
        differs: Differs,
    ) -> Result<()> {
        if !self.group.reports_changes() {
            return Ok(());
        }
        let path = confine::display_bytes(path);
        self.reply(&Message::Change(Change { action, kind, path, differs, entries: 1 }))
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
}
