//! Writes of big files past the page cache (`O_DIRECT`), gathered and written behind by a
//! thread of their own ([`DirectWrites`]), and the page-by-page writer every lane uses
//! ([`write_pages`]): zero pages stay holes.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use rustix::fs::OFlags;

use crate::sync::blocks;

/// Files at least this big are written past the page cache (`O_DIRECT`), where the
/// filesystem allows it: see [`DirectWrites`].
pub(super) const DIRECT_MIN: u64 = 4 << 20;

/// Offset, length and memory alignment of direct writes: 4 KiB, which covers the logical block
/// size of nearly every device (a write it does not cover is redone through the cache).
pub(super) const DIRECT_ALIGN: usize = 4096;

/// Bytes gathered into one direct write: fewer, larger writes for the device.
pub(super) const DIRECT_WRITE: usize = 2 << 20;

/// Direct writes handed to the write thread and not yet done, besides the one being gathered.
/// Two measured no faster than one (case (c) on a loop ext4: 1.46-1.73 s against 1.45-1.55 s),
/// and each costs a buffer per stream.
pub(super) const DIRECT_IN_FLIGHT: usize = 1;

/// Writes of a big file that bypass the page cache (`O_DIRECT`), through aligned copies of the
/// data, written behind by a thread of their own. A migration streams gigabytes that nobody on
/// the target node reads soon: through the cache they would evict the node's working set (the
/// applications still running there) and cost the kernel a fresh page for every 4 KiB, the
/// dearest part of receiving on the machines measured (see the benchmark notes in README.md).
/// A direct write waits for the device, so the lane gathers the next one (reads the basis,
/// hashes, decompresses) while [`DIRECT_IN_FLIGHT`] is written. Verification does not
/// need the cache either: content is hashed before it is written. Reads (the basis, a resumed
/// partial) still go through the cache.
pub(super) struct DirectWrites {
    /// Where the buffers come from and go back to when the file is done.
    pub(super) pool: Arc<BufferPool>,
    /// The write being gathered: its buffer, and the file offset and length it stands for.
    pub(super) gathering: Option<(Aligned, u64, usize)>,
    pub(super) to_writer: Option<std::sync::mpsc::SyncSender<(Aligned, u64, usize)>>,
    /// Buffers the write thread is done with.
    pub(super) free: std::sync::mpsc::Receiver<Aligned>,
    pub(super) writer: Option<std::thread::JoinHandle<io::Result<()>>>,
    /// The file started empty: what is not written is a hole, zeros, so a short hole between
    /// two writes may be written as zeros to keep gathering.
    pub(super) started_empty: bool,
}

/// Longest run of zero pages written as zeros inside a gathered direct write, rather than left
/// as a hole at the cost of ending the write there. A database copied page by page has a free
/// (zero) page every few dozen: left as holes they cut its 2 MiB writes into writes of about
/// 120 KiB, each waiting for the device (case (c) of the benchmark). Longer zero runs (a VM
/// image's unused space) stay holes.
pub(super) const DIRECT_HOLE_FILL: u64 = 64 << 10;

/// A buffer of [`DIRECT_WRITE`] bytes at an address aligned to [`DIRECT_ALIGN`].
pub(super) struct Aligned {
    pub(super) bytes: Vec<u8>,
    pub(super) start: usize,
}

impl Aligned {
    pub(super) fn new() -> Aligned {
        let bytes = vec![0; DIRECT_WRITE + DIRECT_ALIGN];
        let start = bytes.as_ptr().align_offset(DIRECT_ALIGN);
        Aligned { bytes, start }
    }

    pub(super) fn get(&self, len: usize) -> &[u8] {
        &self.bytes[self.start..self.start + len]
    }

    pub(super) fn get_mut(&mut self, from: usize, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start + from..self.start + from + len]
    }
}

/// The buffers of direct writes, kept across files: a fresh buffer costs the kernel a page
/// fault per 4 KiB, which on the machines measured is as dear as the write (see [`DirectWrites`]).
#[derive(Default)]
pub(super) struct BufferPool(Mutex<Vec<Aligned>>);

impl BufferPool {
    pub(super) fn take(&self) -> Aligned {
        self.0.lock().expect("no thread panics holding the buffer pool").pop().unwrap_or_else(Aligned::new)
    }

    pub(super) fn give(&self, buffer: Aligned) {
        self.0.lock().expect("no thread panics holding the buffer pool").push(buffer);
    }
}

impl DirectWrites {
    /// Turns `O_DIRECT` on for `file` and starts its write thread; `None` where the filesystem
    /// refuses the flag (tmpfs before Linux 6.6, some FUSE and network filesystems): the file
    /// is then written as usual.
    pub(super) fn enable(file: &std::fs::File, pool: &Arc<BufferPool>, started_empty: bool) -> Option<DirectWrites> {
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
    pub(super) fn write(&mut self, mut data: &[u8], mut offset: u64) -> io::Result<()> {
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
    pub(super) fn submit(&mut self) -> io::Result<()> {
        let Some(job) = self.gathering.take() else { return Ok(()) };
        if self.to_writer.as_ref().is_some_and(|to_writer| to_writer.send(job).is_ok()) {
            Ok(())
        } else {
            Err(self.writer_error())
        }
    }

    /// Waits until everything handed over is written; the first error of any write. The
    /// buffers go back to the pool.
    pub(super) fn finish(&mut self) -> io::Result<()> {
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
    pub(super) fn writer_error(&mut self) -> io::Error {
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
pub(super) fn write_behind(
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
pub(super) fn write_run(
    file: &std::fs::File,
    data: &[u8],
    offset: u64,
    direct: &mut Option<DirectWrites>,
) -> io::Result<()> {
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

/// Writes `data` at `offset` page by page: non-zero pages are written; all-zero pages are left
/// alone in a fresh temporary file (it starts as one hole, so they stay holes and sparse files
/// stay sparse; direct writes may still write a short run of them, see [`DIRECT_HOLE_FILL`]),
/// or, with `punch`, punched out of a reused file that may hold old data there. Returns the
/// end of the last run written, if any.
pub(super) fn write_pages(
    file: &std::fs::File,
    data: &[u8],
    offset: u64,
    punch: bool,
    direct: &mut Option<DirectWrites>,
) -> io::Result<Option<u64>> {
    const PAGE: usize = 4096;
    let mut written_end = None;
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
            written_end = Some(offset + end as u64);
        } else if punch {
            let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            if rustix::fs::fallocate(file, flags, at, (end - start) as u64).is_err() {
                // No hole punching here: zeros it is.
                write_run(file, &data[start..end], at, direct)?;
                written_end = Some(offset + end as u64);
            }
        }
        start = end;
    }
    Ok(written_end)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::wire::CHUNK_SIZE;
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
