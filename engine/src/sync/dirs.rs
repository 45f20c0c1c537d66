//! The directories of a session, kept for the last pass that sets their metadata once
//! everything inside them is in place, deepest first, in bounded memory.
//!
//! Entries are kept encoded (postcard, each after its length), and every [`SEGMENT`] bytes of
//! them go to an unnamed temporary file on the target volume itself (`O_TMPFILE` in its root:
//! writable by definition, never visible under a name, gone when the session ends, whatever way
//! it ends). The last pass reads the segments back from the last: memory holds one segment,
//! however many directories the tree has (a million cost about 200 MiB as a list of entries).
//! Where the volume cannot hold such a file (no `O_TMPFILE`, no space), the list stays in
//! memory and the session says so once.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::wire::Entry;

/// Encoded bytes of entries held in memory before they are written out.
const SEGMENT: usize = 1 << 20;

/// The directory entries of a session, in arrival order.
pub(super) struct Directories {
    /// Encoded entries not written out yet.
    current: Vec<u8>,
    /// Written segments: their place in `spill`.
    segments: Vec<(u64, usize)>,
    spill: Spill,
    segment_size: usize,
}

enum Spill {
    /// Not needed yet; the directory to create the file in.
    Unopened(Arc<OwnedFd>),
    Open(File),
    /// The file could not be created or written: everything stays in `current`.
    Failed,
}

impl Directories {
    /// Keeps directories in memory up to [`SEGMENT`] bytes, beyond in a file created in `dir`.
    pub(super) fn new(dir: Arc<OwnedFd>) -> Self {
        Self::with_segment(dir, SEGMENT)
    }

    fn with_segment(dir: Arc<OwnedFd>, segment_size: usize) -> Self {
        Directories { current: Vec::new(), segments: Vec::new(), spill: Spill::Unopened(dir), segment_size }
    }

    /// Keeps `entry`. Returns why a full segment could not be written out, the first time that
    /// happens (the list then stays in memory).
    pub(super) fn push(&mut self, entry: &Entry) -> Option<io::Error> {
        let start = self.current.len();
        self.current.extend_from_slice(&[0; 4]);
        self.current =
            postcard::to_extend(entry, std::mem::take(&mut self.current)).expect("encoding into a Vec cannot fail");
        let len = u32::try_from(self.current.len() - start - 4).expect("an entry is far below 4 GiB");
        self.current[start..start + 4].copy_from_slice(&len.to_le_bytes());
        if self.current.len() < self.segment_size || matches!(self.spill, Spill::Failed) {
            return None;
        }
        match self.write_segment() {
            Ok(()) => None,
            Err(error) => {
                self.spill = Spill::Failed;
                Some(error)
            }
        }
    }

    fn write_segment(&mut self) -> io::Result<()> {
        if let Spill::Unopened(dir) = &self.spill {
            self.spill = Spill::Open(unnamed_file(dir.as_fd())?);
        }
        let Spill::Open(file) = &mut self.spill else {
            unreachable!("opened above, and a failed spill writes nothing")
        };
        let offset = file.seek(SeekFrom::End(0))?;
        file.write_all(&self.current)?;
        self.segments.push((offset, self.current.len()));
        self.current.clear();
        Ok(())
    }

    /// Hands every entry to `apply`, the last kept first (so a directory comes after everything
    /// beneath it); stops at the first error (`read_error` makes one of a failed read back).
    pub(super) fn drain_deepest_first<E>(
        &mut self,
        read_error: impl Fn(io::Error) -> E,
        mut apply: impl FnMut(Entry) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut segment = std::mem::take(&mut self.current);
        loop {
            for body in bodies(&segment).map_err(&read_error)?.into_iter().rev() {
                apply(postcard::from_bytes(body).map_err(|e| read_error(io::Error::other(e)))?)?;
            }
            let Some((offset, len)) = self.segments.pop() else { return Ok(()) };
            let Spill::Open(spill) = &mut self.spill else { unreachable!("segments were written to it") };
            segment.resize(len, 0);
            spill.seek(SeekFrom::Start(offset)).and_then(|_| spill.read_exact(&mut segment)).map_err(&read_error)?;
        }
    }
}

/// The encoded entries of a segment, in order (decoded one at a time, last first).
fn bodies(mut bytes: &[u8]) -> io::Result<Vec<&[u8]>> {
    let cut_short = || io::Error::other("the list of directories read back is cut short");
    let mut bodies = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(cut_short)?;
        let len = u32::from_le_bytes(*len) as usize;
        bodies.push(rest.get(..len).ok_or_else(cut_short)?);
        bytes = &rest[len..];
    }
    Ok(bodies)
}

/// A file without a name in directory `dir`, readable and writable by this process only.
fn unnamed_file(dir: BorrowedFd<'_>) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd =
        rustix::fs::openat(dir, ".", OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EntryKind, Timestamp, Xattr};

    fn dir(i: u64) -> Entry {
        Entry {
            id: i,
            path: format!("d{i:06}/with/some/depth").into_bytes(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 1000,
            gid: 1000,
            mtime: Timestamp { sec: 1_700_000_000 + i.cast_signed(), nsec: 7 },
            atime: Timestamp { sec: 1_700_000_000, nsec: 0 },
            xattrs: if i.is_multiple_of(7) {
                vec![Xattr { name: b"user.k".to_vec(), value: vec![1; 40] }]
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn entries_come_back_last_first_across_spilled_segments() {
        for (count, segment) in [(0, 256), (1, 256), (1000, 256), (1000, 1 << 20)] {
            let tmp = tempfile::tempdir().unwrap();
            let mut dirs = Directories::with_segment(volume(tmp.path()), segment);
            for i in 0..count {
                assert!(dirs.push(&dir(i)).is_none());
            }
            let spilled = matches!(dirs.spill, Spill::Open(_));
            assert_eq!(spilled, count == 1000 && segment == 256, "{count} entries, segments of {segment}");
            // Nothing under a name on the volume.
            assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
            let mut seen = Vec::new();
            dirs.drain_deepest_first(
                |error| error,
                |entry| {
                    seen.push(entry);
                    Ok(())
                },
            )
            .unwrap();
            let expected: Vec<Entry> = (0..count).rev().map(dir).collect();
            assert_eq!(seen, expected, "{count} entries, segments of {segment}");
        }
    }

    fn volume(path: &std::path::Path) -> Arc<OwnedFd> {
        Arc::new(crate::confine::open_root(path).unwrap())
    }

    #[test]
    fn a_volume_that_cannot_hold_the_file_keeps_the_list_in_memory_and_says_so_once() {
        let tmp = tempfile::tempdir().unwrap();
        // A regular file is no directory to create an unnamed file in.
        std::fs::write(tmp.path().join("file"), b"").unwrap();
        let not_a_dir = Arc::new(OwnedFd::from(std::fs::File::open(tmp.path().join("file")).unwrap()));
        let mut dirs = Directories::with_segment(not_a_dir, 256);
        let errors = (0..1000).filter_map(|i| dirs.push(&dir(i))).count();
        assert_eq!(errors, 1);
        let mut seen = Vec::new();
        dirs.drain_deepest_first(
            |error| error,
            |entry| {
                seen.push(entry.id);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (0..1000).rev().collect::<Vec<_>>());
    }

    #[test]
    fn the_first_error_stops_the_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dirs = Directories::with_segment(volume(tmp.path()), 256);
        for i in 0..100 {
            assert!(dirs.push(&dir(i)).is_none());
        }
        let mut applied = 0;
        let result = dirs.drain_deepest_first(
            |error| error,
            |entry| {
                applied += 1;
                if entry.id == 50 { Err(io::Error::other("stop")) } else { Ok(()) }
            },
        );
        assert!(result.is_err());
        assert_eq!(applied, 50);
    }
}
