//! A content worker: one per lane, it takes requested files from the queue and reads, hashes,
//! compresses and sends them, whole or as what the receiver's basis lacks ([`super::changed`]).
//! A file that vanishes, changes or cannot be read fails alone (`FileFailed`), not the session.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::queue::Jobs;
use super::{BATCH, Basis, Job, Shared, Waiting, remote_reason};
use crate::compress::{Compressor, Packed};
use crate::confine::{self, display_bytes};
use crate::sync::{Result, SyncError, blocks};
use crate::wire::{
    CHUNK_SIZE, Compression, DeltaChunk, FileFailure, Message, append_message, decode_message, encode_data, encode_message,
};

/// Lowest zstd level for changed blocks (when compression is on): they are few, so fewer bytes
/// matter more than the CPU, whatever the link. Level 3 is what `rsync -z` uses.
pub(super) const DELTA_MIN_LEVEL: i32 = 3;

/// How often the first lane's worker looks at the queue and at the end of the scan.
const FIRST_LANE_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Reads, hashes, compresses and sends the content of requested files on one lane.
pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) out: mpsc::Sender<Vec<u8>>,
    /// What the receiver says on this lane (only an error); `None` on the first lane, whose
    /// input the tree thread reads.
    pub(super) replies: Option<mpsc::Receiver<Result<crate::sync::InFrame>>>,
    pub(super) parent: Option<(Vec<u8>, OwnedFd)>,
    pub(super) compressor: Option<Compressor>,
    pub(super) buffer: Vec<u8>,
    /// Small frames (a small file's content and end, a failure) gathered into one write: a
    /// channel message and a wake-up of the writer per [`BATCH`] bytes instead of two per small
    /// file. Handed over whenever it fills, before a big frame, and before the worker waits
    /// for its next file.
    pub(super) batch: Vec<u8>,
    /// Content bytes of the current file sent so far.
    pub(super) file_sent: u64,
    /// How far into the current file the content has gone (holes included), as counted in
    /// `bytes_done`: a progress bar moves within a big file, not only when it ends.
    pub(super) file_passed: u64,
}

impl Worker {
    pub(super) fn new(
        shared: Arc<Shared>,
        out: mpsc::Sender<Vec<u8>>,
        replies: Option<mpsc::Receiver<Result<crate::sync::InFrame>>>,
    ) -> Worker {
        Worker {
            shared,
            out,
            replies,
            parent: None,
            compressor: None,
            buffer: vec![0; CHUNK_SIZE],
            batch: Vec::new(),
            file_sent: 0,
            file_passed: 0,
        }
    }

    /// Sends files from the queue until it closes; the first error stops the session.
    pub(super) fn run(mut self, jobs: &Jobs) -> Result<()> {
        let result = self.work(jobs);
        jobs.worker_stopped();
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

    pub(super) fn work(&mut self, jobs: &Jobs) -> Result<()> {
        loop {
            let Some(mut job) = self.next_job(jobs)? else { return Ok(()) };
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

    /// The next requested file, or `None` when there is none left for this worker. What the
    /// batch holds goes to the writer before the worker waits: the receiver may be waiting
    /// for exactly those files before it answers the entries that make the next jobs.
    fn next_job(&mut self, jobs: &Jobs) -> Result<Option<Job>> {
        if let Some(job) = self.ready_job(jobs) {
            return Ok(Some(job));
        }
        self.flush_batch()?;
        Ok(self.wait_for_job(jobs))
    }

    /// A file that is in the queue now, if this worker may take it.
    fn ready_job(&self, jobs: &Jobs) -> Option<Job> {
        if self.first_lane_of_several() {
            if self.shared.scan_over.load(Ordering::Acquire) {
                return None;
            }
            return jobs.take_if_others_busy();
        }
        jobs.try_take()
    }

    /// The first lane's worker in a session with further lanes.
    fn first_lane_of_several(&self) -> bool {
        self.replies.is_none() && self.shared.options.streams > 1
    }

    /// Waits for the next requested file, or `None` when the queue closes. The first lane's
    /// worker of a session with further lanes also stops when the scan is over
    /// ([`Shared::scan_over`]): the tree then ends on the first lane, and the further lanes
    /// carry the rest. It takes a file only when no other worker waits for one: the first
    /// lane, which carries the tree, gets content last.
    fn wait_for_job(&self, jobs: &Jobs) -> Option<Job> {
        if !self.first_lane_of_several() {
            return jobs.take();
        }
        loop {
            if self.shared.scan_over.load(Ordering::Acquire) || jobs.closed_and_empty() {
                return None;
            }
            if let Some(job) = jobs.take_if_others_busy() {
                return Some(job);
            }
            std::thread::sleep(FIRST_LANE_POLL);
        }
    }

    /// Whether the session goes on (nothing more is queued once it failed).
    fn check_session(&self) -> Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(SyncError::Disconnected("(the session failed)"));
        }
        Ok(())
    }

    /// Queues a small message (a file's end or failure) behind the content sent so far,
    /// encoded into the batch itself.
    pub(super) fn send(&mut self, message: &Message) -> Result<()> {
        self.check_session()?;
        super::add_to_batch(&self.out, &mut self.batch, |batch| append_message(batch, message))
    }

    /// Sends one encoded frame (unless the session has failed): gathered into the batch when
    /// it is small, else after what the batch holds.
    pub(super) fn send_frame(&mut self, frame: Vec<u8>) -> Result<()> {
        self.check_session()?;
        if frame.len() >= BATCH {
            self.flush_batch()?;
            return super::hand_over(&self.out, frame);
        }
        super::add_to_batch(&self.out, &mut self.batch, |batch| batch.extend_from_slice(&frame))
    }

    /// Hands what the batch holds to the writer.
    pub(super) fn flush_batch(&mut self) -> Result<()> {
        super::flush_batch(&self.out, &mut self.batch)
    }

    pub(super) fn open_source(&mut self, path: &[u8]) -> io::Result<std::fs::File> {
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        if self.parent.as_ref().is_none_or(|(cached, _)| cached.as_slice() != parent) {
            self.parent = None;
            let dir =
                confine::open_dir_in(self.shared.root.as_fd(), parent, crate::sync::mounts(&self.shared.options))?;
            self.parent = Some((parent.to_vec(), dir));
        }
        let dir = &self.parent.as_ref().expect("just set").1;
        confine::open_file_read(dir.as_fd(), name)
    }

    pub(super) fn send_file(&mut self, id: u64, waiting: &Waiting, basis: Option<&mut Basis>) -> Result<()> {
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
    // One loop over the file's data ranges: the hash, the offset hashed to and the basis it
    // threads through each range would make every part a function of many arguments.
    pub(super) fn stream_content(
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
        let mut hasher = crate::sync::digest::FileDigest::default();
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

impl Worker {
    /// The zstd level for the next chunk of `bytes`.
    pub(super) fn level(&mut self, bytes: usize) -> i32 {
        match self.shared.options.compression {
            Compression::Off => 0,
            Compression::Level(level) => crate::compress::capped_level(level),
            Compression::Auto => self
                .shared
                .level_control
                .lock()
                .expect("no thread panics holding the level control")
                .observe(
                    bytes,
                    self.shared.on_wire.load(Ordering::Relaxed),
                    self.shared.held_back_ns.load(Ordering::Relaxed),
                ),
        }
    }

    pub(super) fn send_chunk(&mut self, id: u64, offset: u64, raw: &[u8]) -> std::result::Result<(), ContentError> {
        self.send_chunk_at_least(id, offset, raw, 0)
    }

    /// Sends one chunk, compressed at no less than `min_level` when compression is on.
    pub(super) fn send_chunk_at_least(
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
    pub(super) fn pack_at_least<'a>(
        &'a mut self,
        raw: &'a [u8],
        min_level: i32,
    ) -> std::result::Result<Packed<'a>, ContentError> {
        let mut level = self.level(raw.len());
        if self.shared.options.compression != Compression::Off {
            level = level.max(min_level);
        }
        let compressor = self.compressor.as_mut().expect("set before streaming");
        compressor.set_level(level).map_err(ContentError::Read)?;
        compressor.pack(raw).map_err(ContentError::Read)
    }

    pub(super) fn send_delta(
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

    pub(super) fn count_sent(&mut self, bytes: u64) {
        self.file_sent += bytes;
        self.shared.bytes_transferred.fetch_add(bytes, Ordering::Relaxed);
    }
}

pub(super) enum ContentError {
    Read(io::Error),
    Sync(SyncError),
}

pub(super) fn failure_message(path: &str, reason: FileFailure, error: Option<&io::Error>) -> String {
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

pub(super) fn same_version(stat: &rustix::fs::Stat, waiting: &Waiting) -> bool {
    u64::try_from(stat.st_size).ok() == Some(waiting.size) && crate::meta::same_mtime(stat, waiting.mtime)
}
