//! Sending only what the receiver's basis lacks: blocks whose signature differs at the same
//! offset, and content that moved (an insert or a cut shifts the rest of the file) as rsync
//! deltas against a window of the basis.

use std::io;

use super::worker::{ContentError, DELTA_MIN_LEVEL, Worker};
use crate::sync::{Result, SyncError, blocks};


/// The receiver's signature of the file it has, and how the search for shifted content goes.
pub(super) struct Basis {
    pub(super) signature: blocks::BasisSignature,
    /// The receiver accepts deltas for this file.
    pub(super) shifts: bool,
    /// Windows of mostly new data in a row.
    pub(super) misses: u32,
    /// Where the content is in the basis relative to where it is now (basis offset minus
    /// file offset), as the last delta found it: after an insert or a cut, the rest of the
    /// file is compared there first, block against block, as rsync tries the block after a
    /// match before searching.
    pub(super) shift: i64,
    /// The last delta made (reused buffer).
    pub(super) delta: Vec<u8>,
    /// The signature entry of a whole block of zeros (a hole).
    pub(super) zero_entry: Vec<u8>,
}

impl Basis {
    pub(super) fn new(signature: blocks::BasisSignature, shifts: bool) -> Self {
        let zero_entry = blocks::zero_entry(signature.block_size() as usize, signature.block_size());
        Basis { signature, shifts, misses: 0, shift: 0, delta: Vec::new(), zero_entry }
    }

    /// Bytes of the basis, rounded up to whole blocks.
    pub(super) fn len(&self) -> u64 {
        self.signature.blocks() * u64::from(self.signature.block_size())
    }
}

impl Worker {
    /// For the blocks of the hole `[start, end)` (block aligned) whose basis is not zeros: sends
    /// zeros (the receiver leaves them as a hole). Past the end of the basis the receiver's file
    /// is zeros already: nothing to send there.
    pub(super) fn send_hole_blocks(&mut self, id: u64, start: u64, end: u64, basis: &Basis) -> Result<()> {
        let block_size = basis.signature.block_size();
        let block = u64::from(block_size);
        let zeros = vec![0u8; block_size as usize];
        let mut offset = start;
        while offset < end {
            let len = (end - offset).min(block) as usize;
            let zeros_there = |entry: &[u8]| {
                if len == zeros.len() {
                    entry == basis.zero_entry
                } else {
                    entry == blocks::zero_entry(len, block_size)
                }
            };
            if basis.signature.entry(offset / block).is_some_and(|entry| !zeros_there(entry)) {
                self.send_chunk(id, offset, &zeros[..len]).map_err(|e| match e {
                    ContentError::Sync(error) => error,
                    ContentError::Read(source) => SyncError::Io { op: "cannot compress", path: String::new(), source },
                })?;
            }
            offset += len as u64;
        }
        Ok(())
    }

    /// Sends the runs of blocks in `chunk` (at `offset`, block aligned) that the basis lacks
    /// at the same offset.
    pub(super) fn send_changed_blocks(
        &mut self,
        id: u64,
        offset: u64,
        chunk: &[u8],
        basis: &mut Basis,
    ) -> std::result::Result<(), ContentError> {
        if basis.shift != 0 && self.send_if_shifted(id, offset, chunk, basis)? {
            return Ok(());
        }
        let block_size = basis.signature.block_size();
        let ours = blocks::sign(chunk, block_size);
        let ours = blocks::entries(&ours);
        let block = block_size as usize;
        let first = offset / u64::from(block_size);
        let mut run: Option<usize> = None;
        let mut changed = false;
        for (i, entry) in ours.chunks(blocks::ENTRY_LEN).enumerate() {
            let same = basis.signature.entry(first + i as u64) == Some(entry);
            match (same, run) {
                (false, None) => {
                    run = Some(i * block);
                    changed = true;
                }
                (true, Some(start)) => {
                    self.send_run(id, offset + start as u64, &chunk[start..i * block], basis)?;
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            self.send_run(id, offset + start as u64, &chunk[start..], basis)?;
        }
        if !changed {
            // The content is back in its place.
            basis.shift = 0;
        }
        Ok(())
    }

    /// Sends `chunk` (at `offset`) as one delta when its content is at `basis.shift` from
    /// where it is in the basis, save for differences shorter than [`blocks::SHIFT_MIN_RUN`]:
    /// the blocks found there as copies, the rest (short changes, the part blocks at either end)
    /// as literals. One message for the whole chunk keeps the receiver's writes aligned.
    /// `false` (nothing sent) when the content is not there.
    pub(super) fn send_if_shifted(
        &mut self,
        id: u64,
        offset: u64,
        chunk: &[u8],
        basis: &mut Basis,
    ) -> std::result::Result<bool, ContentError> {
        let block_size = basis.signature.block_size();
        let (block, block64) = (block_size as usize, u64::from(block_size));
        let shift = basis.shift;
        // The first byte of the chunk whose place in the basis starts a block.
        let first = (((block64 - offset.wrapping_add_signed(shift) % block64) % block64) as usize).min(chunk.len());
        let whole = (chunk.len() - first) / block;
        let ours = blocks::sign(&chunk[first..first + whole * block], block_size);
        let ours = blocks::entries(&ours);
        // The last block of the basis may be short: copies end before it.
        let copyable = basis.signature.blocks().saturating_sub(1);
        let found: Vec<bool> = (0..whole)
            .map(|i| {
                (offset + (first + i * block) as u64).checked_add_signed(shift).is_some_and(|there| {
                    let index = there / block64;
                    index < copyable
                        && basis.signature.entry(index) == Some(&ours[i * blocks::ENTRY_LEN..][..blocks::ENTRY_LEN])
                })
            })
            .collect();
        let longest_miss = found.split(|&found| found).map(<[bool]>::len).max().unwrap_or(0);
        let (Some(first_found), Some(last_found)) = (found.iter().position(|&f| f), found.iter().rposition(|&f| f))
        else {
            return Ok(false);
        };
        if longest_miss * block >= blocks::SHIFT_MIN_RUN {
            return Ok(false);
        }
        let place = |i: usize| (offset + (first + i * block) as u64).saturating_add_signed(shift);
        let window_start = place(first_found);
        let window_len = place(last_found + 1) - window_start;
        let mut writer = blocks::DeltaWriter::new(&mut basis.delta);
        let (mut made, mut i) = (0, first_found);
        while i <= last_found {
            let copies = found[i..].iter().take_while(|&&f| f).count();
            let start = first + i * block;
            writer.literal(&chunk[made..start]);
            writer.copy(place(i) - window_start, (copies * block) as u64);
            made = start + copies * block;
            i += copies;
            i += found[i..].iter().take_while(|&&f| !f).count();
        }
        writer.literal(&chunk[made..]);
        writer.finish();
        let delta = std::mem::take(&mut basis.delta);
        let sent = self.send_delta(id, offset, chunk.len(), window_start, window_len, &delta);
        basis.delta = delta;
        sent?;
        basis.misses = 0;
        Ok(true)
    }

    /// Sends a run of blocks the basis lacks at their offset: as a delta against the basis
    /// window around it when most of it is found there (shifted content), else as data.
    pub(super) fn send_run(
        &mut self,
        id: u64,
        offset: u64,
        run: &[u8],
        basis: &mut Basis,
    ) -> std::result::Result<(), ContentError> {
        // Where the run's content was, if it moved as the content before it did.
        let there = offset.saturating_add_signed(basis.shift);
        if basis.shifts
            && basis.misses < blocks::MAX_MISSES
            && run.len() >= blocks::SHIFT_MIN_RUN
            && there < basis.len()
        {
            let block = u64::from(basis.signature.block_size());
            let window_start = there.saturating_sub(blocks::SHIFT_MARGIN) / block * block;
            let window_end = (there + run.len() as u64 + blocks::SHIFT_MARGIN).min(basis.len());
            let window = basis.signature.window(window_start / block, (window_end - window_start).div_ceil(block));
            basis.delta.clear();
            fast_rsync::diff(&window.index(), run, &mut basis.delta)
                .map_err(|e| ContentError::Read(io::Error::other(format!("cannot compute a delta: {e}"))))?;
            // Mostly copies: worth it. Mostly literal data: the window is new data, sent raw.
            if basis.delta.len() < run.len() / 2 {
                basis.misses = 0;
                if let Some((made, from)) = blocks::last_copy(&basis.delta) {
                    basis.shift = (window_start + from).wrapping_sub(offset + made).cast_signed();
                }
                let delta = std::mem::take(&mut basis.delta);
                let sent = self.send_delta(id, offset, run.len(), window_start, window_end - window_start, &delta);
                basis.delta = delta;
                return sent;
            }
            basis.misses += 1;
        }
        // Changed blocks are few: saving their bytes is worth the CPU on any link.
        self.send_chunk_at_least(id, offset, run, DELTA_MIN_LEVEL)
    }
}
