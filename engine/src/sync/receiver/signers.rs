//! Signing the bases of big changed files on threads of their own ([`Signers`]), and the
//! choice between that and signing in line ([`Receiver::request_blocks`]).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::group::Group;
use super::replies::ReplyPath;
use super::{Receiver, is_interruption};
use crate::confine::RelPath;
use crate::sync::{Result, SyncError, blocks};
use crate::wire::{CHUNK_SIZE, Message, encode_message};

/// Changed files whose basis is at least this big are signed on a signer thread: the tree
/// goes on meanwhile, and several big files are signed at once. Smaller ones are signed in
/// line (under a millisecond), their requests batched with the other verdicts.
pub(super) const SIGN_ASIDE_MIN: u64 = CHUNK_SIZE as u64;

/// The basis of file `id`, to be signed and requested.
pub(super) struct SignJob {
    pub(super) id: u64,
    pub(super) path: String,
    pub(super) file: std::fs::File,
    pub(super) size: u64,
    pub(super) shifts: bool,
}

/// Threads that sign the bases of big changed files and send their requests. Reading and
/// hashing a basis of gigabytes takes seconds, which on the first lane's thread would hold up
/// every entry behind it, and the sender's work on the file, and would use one core. The
/// sender takes verdicts in any order; the end of the tree waits for these files like any other
/// requested file.
pub(super) struct Signers {
    pub(super) group: Arc<Group>,
    pub(super) path: Arc<ReplyPath>,
    /// Started with the first job: most re-syncs have none.
    pub(super) jobs: Option<std::sync::mpsc::SyncSender<SignJob>>,
    pub(super) threads: Vec<std::thread::JoinHandle<()>>,
}

impl Signers {
    pub(super) fn new(group: Arc<Group>, path: Arc<ReplyPath>) -> Signers {
        Signers { group, path, jobs: None, threads: Vec::new() }
    }

    /// Queues a basis unless every signer is busy and the queue is full: then hands it back.
    pub(super) fn try_sign(&mut self, job: SignJob) -> Result<Option<SignJob>> {
        match self.jobs()?.try_send(job) {
            Ok(()) => Ok(None),
            Err(std::sync::mpsc::TrySendError::Full(job)) => Ok(Some(job)),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                Err(SyncError::Disconnected("(the signers stopped)"))
            }
        }
    }

    /// Queues a basis; waits while every signer is busy and the queue is full.
    pub(super) fn sign(&mut self, job: SignJob) -> Result<()> {
        self.jobs()?.send(job).map_err(|_| SyncError::Disconnected("(the signers stopped)"))
    }

    /// The queue to the signers, started with the first job.
    pub(super) fn jobs(&mut self) -> Result<&std::sync::mpsc::SyncSender<SignJob>> {
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
    pub(super) fn finish(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A signer: signs bases from `queue` and sends their requests until the queue closes. A
/// failure is the session's; once the session is over (failed, or the connection gone), jobs
/// in hand stop within a chunk and queued ones are dropped.
pub(super) fn sign_requests(queue: &Mutex<std::sync::mpsc::Receiver<SignJob>>, group: &Group, path: &ReplyPath) {
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
pub(super) struct SignerPanic<'a> {
    pub(super) group: &'a Group,
    pub(super) path: &'a ReplyPath,
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

impl Receiver {
    /// Requests file `id` as the blocks its basis `file` (of `size` bytes) lacks: signed in line
    /// when small, on a signer thread when big.
    pub(super) fn request_blocks(
        &mut self,
        id: u64,
        path: &RelPath,
        file: std::fs::File,
        size: u64,
        shifts: bool,
    ) -> Result<()> {
        if size >= SIGN_ASIDE_MIN {
            let job = SignJob { id, path: path.display(), file, size, shifts };
            if let Some(job) = self.signers.try_sign(job)? {
                // Every signer is busy: the verdicts gathered so far go out first,
                // so the sender's other lanes have work meanwhile.
                self.flush_replies()?;
                self.signers.sign(job)?;
            }
        } else {
            let block_size = blocks::block_size_for(size);
            let signature = blocks::sign_file(&file, size, block_size, &AtomicBool::new(false))
                .map_err(|source| SyncError::Io { op: "cannot read", path: path.display(), source })?;
            self.reply(&Message::NeedBlocks { id, signature, shifts })?;
        }
        Ok(())
    }
}
