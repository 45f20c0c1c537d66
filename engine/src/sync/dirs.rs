//! The directories of a session, kept for the last pass that sets their metadata once
//! everything inside them is in place, deepest first, in bounded memory.
//!
//! Entries are kept encoded (postcard, each after its length), and every [`SEGMENT`] bytes of
//! them go to an unnamed temporary file (`O_TMPFILE` in the agent's temporary directory, gone
//! when the session ends, whatever way it ends). The last pass reads the segments back from the
//! last: memory holds one segment, however many directories the tree has (a million cost about
//! 200 MiB as a list of entries).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::wire::Entry;

/// Encoded bytes of entries held in memory before they are written out.
const SEGMENT: usize = 1 << 20;

/// The directory entries of a session, in arrival order.
pub(super) struct Directories {
    /// Encoded entries not written out yet.
    current: Vec<u8>,
    /// Written segments: their place in `spill`.
    segments: Vec<(u64, usize)>,
    spill: Option<File>,
    segment_size: usize,
}

impl Directories {
    pub(super) fn new() -> Self {
        Self::with_segment(SEGMENT)
    }

    fn with_segment(segment_size: usize) -> Self {
        Directories { current: Vec::new(), segments: Vec::new(), spill: None, segment_size }
    }

    /// Keeps `entry`.
    pub(super) fn push(&mut self, entry: &Entry) -> io::Result<()> {
        let start = self.current.len();
        self.current.extend_from_slice(&[0; 4]);
        self.current = postcard::to_extend(entry, std::mem::take(&mut self.current)).map_err(io::Error::other)?;
        let len = u32::try_from(self.current.len() - start - 4).map_err(io::Error::other)?;
        self.current[start..start + 4].copy_from_slice(&len.to_le_bytes());
        if self.current.len() >= self.segment_size {
            let spill = match &mut self.spill {
                Some(spill) => spill,
                spill @ None => spill.insert(tempfile::tempfile()?),
            };
            let offset = spill.seek(SeekFrom::End(0))?;
            spill.write_all(&self.current)?;
            self.segments.push((offset, self.current.len()));
            self.current.clear();
        }
        Ok(())
    }

    /// Hands every entry to `apply`, the last kept first (so a directory comes after everything
    /// beneath it); stops at the first error (`read_error` makes one of a failed read back).
    pub(super) fn drain_deepest_first<E>(
        mut self,
        read_error: impl Fn(io::Error) -> E,
        mut apply: impl FnMut(Entry) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut segment = std::mem::take(&mut self.current);
        loop {
            for body in bodies(&segment).map_err(&read_error)?.into_iter().rev() {
                apply(postcard::from_bytes(body).map_err(|e| read_error(io::Error::other(e)))?)?;
            }
            let Some((offset, len)) = self.segments.pop() else { return Ok(()) };
            let spill = self.spill.as_mut().expect("segments were written to it");
            segment.resize(len, 0);
            spill.seek(SeekFrom::Start(offset)).and_then(|_| spill.read_exact(&mut segment)).map_err(&read_error)?;
        }
    }
}

/// The encoded entries of a segment, in order (decoded one at a time, last first).
fn bodies(mut bytes: &[u8]) -> io::Result<Vec<&[u8]>> {
    let mut bodies = Vec::new();
    while let Some((len, rest)) = bytes.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        bodies.push(rest.get(..len).ok_or_else(|| io::Error::other("a directory list cut short"))?);
        bytes = &rest[len..];
    }
    Ok(bodies)
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
            let mut dirs = Directories::with_segment(segment);
            for i in 0..count {
                dirs.push(&dir(i)).unwrap();
            }
            assert_eq!(dirs.spill.is_some(), count == 1000 && segment == 256, "{count} entries, segments of {segment}");
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

    #[test]
    fn the_first_error_stops_the_pass() {
        let mut dirs = Directories::with_segment(256);
        for i in 0..100 {
            dirs.push(&dir(i)).unwrap();
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
