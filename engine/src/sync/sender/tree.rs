//! The tree thread: scans the source, sends entries while fewer than [`WINDOW`] files wait for
//! a verdict, takes the verdicts and hands requested files to the content workers.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::queue::{Jobs, Refused};
use super::{Basis, Job, Lane, Shared, Waiting, remote_reason, session_reason};
use crate::confine::{self, display_bytes};
use crate::progress::{Event, Summary};
use crate::scan::{Scanned, Scanner};
use crate::sync::{Result, SyncError, WINDOW, blocks};
use crate::wire::{Entry, EntryKind, Message, append_message, decode_message};


/// The tree thread: scans, sends entries and takes the receiver's verdicts.
pub(super) struct Tree<'scope> {
    pub(super) shared: Arc<Shared>,
    pub(super) out: mpsc::Sender<Vec<u8>>,
    pub(super) replies: mpsc::Receiver<Result<crate::sync::InFrame>>,
    pub(super) jobs: Arc<Jobs>,
    pub(super) workers: Vec<std::thread::ScopedJoinHandle<'scope, Result<()>>>,
    pub(super) waiting: HashMap<u64, Waiting>,
    /// Encoded small messages (entries) not yet handed to the writer.
    pub(super) batch: Vec<u8>,
    pub(super) summary: Summary,
}

impl<'scope> Tree<'scope> {
    pub(super) fn new(
        shared: Arc<Shared>,
        first: Lane,
        jobs: Arc<Jobs>,
        workers: Vec<std::thread::ScopedJoinHandle<'scope, Result<()>>>,
    ) -> Self {
        Tree {
            shared,
            out: first.out,
            replies: first.replies,
            jobs,
            workers,
            waiting: HashMap::new(),
            batch: Vec::new(),
            summary: Summary::default(),
        }
    }

    /// After [`Self::stream`] failed: stops the workers (they find the queue closed or the
    /// session failed), closes our side of the first lane, and finds out why the session ended
    /// ([`session_reason`]).
    pub(super) fn stop(self, error: SyncError) -> SyncError {
        let shared = self.shared;
        shared.failed.store(true, Ordering::Release);
        let Tree { out, mut replies, jobs, workers, .. } = self;
        jobs.close();
        drop(out);
        for worker in workers {
            let _ = worker.join();
        }
        session_reason(error, shared.take_failure(), || remote_reason(&mut replies))
    }
}

impl Tree<'_> {
    /// Queues a small message; small messages are written in batches (see [`Self::flush`]).
    pub(super) fn send(&mut self, message: &Message) -> Result<()> {
        super::add_to_batch(&self.out, &mut self.batch, |batch| append_message(batch, message))
    }

    /// Hands the queued small messages to the writer: before waiting for the receiver, and
    /// whenever [`BATCH`](super::BATCH) bytes have gathered.
    pub(super) fn flush(&mut self) -> Result<()> {
        super::flush_batch(&self.out, &mut self.batch)
    }

    /// Whether the session failed on a content lane (its error is left for [`Self::stop`]).
    pub(super) fn check_workers(&self) -> Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(SyncError::Disconnected("(a content lane failed)"));
        }
        Ok(())
    }

    /// Sends the tree and takes the verdicts until every file is answered, then ends the tree
    /// and waits for the receiver's report. With further lanes the tree ends as soon as the
    /// scan is over ([`Self::end_tree_early`]).
    pub(super) fn stream(&mut self) -> Result<()> {
        let mut scanner = Scanner::new(&self.shared.root, crate::sync::scan_options(&self.shared.options))
            .map_err(|source| SyncError::Io { op: "cannot scan the source volume", path: ".".into(), source })?;
        let root_entry = self.root_entry(scanner.withheld_mut())?;
        self.send(&Message::Entry(root_entry))?;
        self.scan(&mut scanner)?;
        let ended = self.shared.options.streams > 1;
        if ended {
            self.end_tree_early()?;
        }
        self.answer_all()?;
        self.end_tree(!ended)?;
        self.await_report(&mut scanner)
    }

    /// Sends entries while fewer than [`WINDOW`] files wait for a verdict, and takes verdicts,
    /// until the scan is over.
    pub(super) fn scan(&mut self, scanner: &mut Scanner) -> Result<()> {
        loop {
            self.take_verdicts()?;
            if self.waiting.len() < WINDOW {
                if !self.scanned(scanner.next())? {
                    return Ok(());
                }
                continue;
            }
            self.await_verdict()?;
        }
    }

    /// Takes verdicts until every file is answered, one by one: once the tree has ended, the
    /// receiver's report may follow its last verdict at once, and is left for
    /// [`Self::await_report`].
    pub(super) fn answer_all(&mut self) -> Result<()> {
        while !self.waiting.is_empty() {
            self.check_workers()?;
            self.shared.watch.check_now_and_then()?;
            match self.replies.try_recv() {
                Ok(reply) => self.handle_reply(decode_message(&reply?)?)?,
                Err(_) => self.await_verdict()?,
            }
        }
        Ok(())
    }

    /// Takes the verdicts that have arrived, after checking on the workers and the root.
    fn take_verdicts(&mut self) -> Result<()> {
        self.check_workers()?;
        self.shared.watch.check_now_and_then()?;
        while let Ok(reply) = self.replies.try_recv() {
            self.handle_reply(decode_message(&reply?)?)?;
        }
        Ok(())
    }

    /// Sends what is queued and waits for the receiver's next reply.
    fn await_verdict(&mut self) -> Result<()> {
        self.flush()?;
        let reply = self.replies.blocking_recv().ok_or(SyncError::Disconnected("before answering"))?;
        self.handle_reply(decode_message(&reply?)?)
    }

    /// Sends what the scan found, or the totals once it is over (`None`); whether it goes on.
    pub(super) fn scanned(&mut self, item: Option<Scanned>) -> Result<bool> {
        match item {
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
                if !self.shared.reporter.wants_early_totals() {
                    self.shared
                        .reporter
                        .on_event(&Event::Totals { files: self.summary.files_total, bytes: self.summary.bytes_total });
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The scan is over, in a session with further lanes: the first lane's content worker
    /// finishes its file and stops, and the end of the tree follows on the first lane before
    /// the verdicts are in. The receiver then waits for the files it asks for on the further
    /// lanes, and one with nothing to ask for reports at once: a round trip fewer.
    pub(super) fn end_tree_early(&mut self) -> Result<()> {
        self.shared.scan_over.store(true, Ordering::Release);
        // The first worker was started first (`super::run`).
        let first = self.workers.remove(0);
        first.join().map_err(|_| SyncError::Internal("a content worker"))??;
        self.end_entries()
    }

    /// Every file is answered: lets the workers finish what they were given (content on the
    /// first lane then precedes the end of the tree), and ends the tree unless it has ended.
    pub(super) fn end_tree(&mut self, send_end: bool) -> Result<()> {
        self.jobs.close();
        for worker in self.workers.drain(..) {
            worker.join().map_err(|_| SyncError::Internal("a content worker"))??;
        }
        if send_end {
            self.end_entries()
        } else {
            // What was sent came from the volume, not from a directory hidden under a mount since.
            self.check_workers()?;
            self.shared.watch.check().map_err(SyncError::from)
        }
    }

    /// Sends the end of the tree, once what was read is known to come from the volume.
    fn end_entries(&mut self) -> Result<()> {
        self.check_workers()?;
        // What was read came from the volume, not from a directory hidden under a mount since.
        self.shared.watch.check()?;
        self.send(&Message::EndOfEntries)?;
        self.flush()
    }

    /// Waits for the receiver's report, taking what else it says meanwhile.
    pub(super) fn await_report(&mut self, scanner: &mut Scanner) -> Result<()> {
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
    pub(super) fn root_entry(&self, withheld: &mut crate::meta::Withheld) -> Result<Entry> {
        let io = |source| SyncError::Io { op: "cannot read the source volume root", path: ".".into(), source };
        let root = &self.shared.root;
        let stat = rustix::fs::fstat(root.as_fd()).map_err(|e| io(e.into()))?;
        let dir = confine::open_dir(root.as_fd(), b"").map_err(io)?;
        let xattrs =
            crate::meta::read_xattrs_and(dir.as_fd(), b".", crate::sync::xattr_policy(&self.shared.options), |attr| {
                withheld.note(attr, b"");
            })
            .map_err(io)?;
        Ok(crate::scan::entry_of((u64::MAX, Vec::new(), EntryKind::Dir), &stat, xattrs))
    }

    pub(super) fn send_entry(&mut self, entry: Entry) -> Result<()> {
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

    pub(super) fn handle_reply(&mut self, reply: Message) -> Result<()> {
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
    pub(super) fn dispatch(&mut self, job: Job) -> Result<()> {
        // Entries queued so far go first, so the receiver sees them before content of later ones.
        self.flush()?;
        self.jobs.push(job).map_err(|refused| match refused {
            Refused::Closed => SyncError::Protocol("a verdict after the end of the tree".into()),
            // The workers' error is left for [`Self::stop`].
            Refused::NoWorkers => SyncError::Disconnected("(every content lane is gone)"),
        })
    }

    pub(super) fn take_waiting(&mut self, id: u64) -> Result<Waiting> {
        self.waiting
            .remove(&id)
            .ok_or_else(|| SyncError::Protocol(format!("verdict for entry {id}, which is not waiting for one")))
    }
}
