//! Block signatures: how a changed file travels as only what the receiver lacks.
//!
//! The receiver summarises the file it already has (the *basis*) as an rsync signature
//! (`fast_rsync`'s format: per block of [`block_size_for`] bytes, a 4-byte rolling checksum and
//! 8 bytes of MD4) and sends it with its request. The sender then works chunk by chunk:
//!
//! 1. **Same offset.** It signs its own blocks at the same offsets and skips those whose entry
//!    matches: in-place writes (databases, VM images) and appends cost only what changed.
//! 2. **Shifted.** A long run of blocks that differ and lies within the basis may be content
//!    that moved (bytes inserted or removed before it). The sender computes an rsync delta of
//!    the run (`fast_rsync`'s rolling search) against the part of the signature within
//!    [`SHIFT_MARGIN`] of it: a bounded *window*, so memory stays bounded whatever the file size.
//!    A delta that is mostly copies is sent; a window that is mostly new data is sent raw, and
//!    after [`MAX_MISSES`] such windows in a row the file is not searched any further.
//!
//! The receiver rebuilds the file from the basis and what was sent in a temporary file and
//! checks the whole result against the sender's digest (blake3, [`super::digest`]), so a collision of block checksums can
//! cost a retry but never a wrong file.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use fast_rsync::{Signature, SignatureOptions};

use crate::wire::CHUNK_SIZE;

/// Bytes of MD4 kept per block.
pub const STRONG_LEN: u32 = 8;
/// Bytes of each block's signature entry: the rolling checksum and the truncated MD4.
pub const ENTRY_LEN: usize = 4 + STRONG_LEN as usize;
/// Bytes of a signature's header (magic, block size, MD4 length).
pub const HEADER_LEN: usize = 12;
/// The magic of `fast_rsync`'s (librsync's) MD4 signatures, the only kind accepted.
const MD4_MAGIC: [u8; 4] = 0x7273_0136u32.to_be_bytes();
/// Smallest block: a page, the unit databases and VM images write in.
pub const MIN_BLOCK: u32 = 4096;
/// Target number of blocks per file; bigger files get bigger blocks.
pub const TARGET_BLOCKS: u64 = 131_072;
/// Largest file sent as a delta: past this the signature would not fit in a frame.
pub const MAX_DELTA_FILE: u64 = (CHUNK_SIZE as u64) * (3 * 1024 * 1024 / ENTRY_LEN as u64);
/// How far (bytes) before and after a run of changed blocks the sender looks for its content
/// in the basis.
pub const SHIFT_MARGIN: u64 = 4 << 20;
/// Largest basis window a delta may refer to (a chunk, a margin either side, block rounding);
/// the receiver holds one such window to apply deltas.
pub const MAX_WINDOW: u64 = 2 * CHUNK_SIZE as u64 + 2 * SHIFT_MARGIN;
/// Shortest run of changed blocks worth a rolling search: shorter runs are in-place writes.
pub const SHIFT_MIN_RUN: usize = 16 * 1024;
/// Windows of mostly new data in a row after which a file is no longer searched for shifts.
pub const MAX_MISSES: u32 = 2;

/// The block size for a basis of `size` bytes: a power of two between [`MIN_BLOCK`] and
/// [`CHUNK_SIZE`], giving about [`TARGET_BLOCKS`] blocks or fewer.
#[must_use]
pub fn block_size_for(size: u64) -> u32 {
    let wanted = size.div_ceil(TARGET_BLOCKS).next_power_of_two();
    wanted.clamp(u64::from(MIN_BLOCK), CHUNK_SIZE as u64) as u32
}

/// The signature of `data` in blocks of `block_size`.
#[must_use]
pub fn sign(data: &[u8], block_size: u32) -> Signature {
    Signature::calculate(data, SignatureOptions { block_size, crypto_hash_size: STRONG_LEN })
}

/// The entries (no header) of a signature.
#[must_use]
pub fn entries(signature: &Signature) -> &[u8] {
    &signature.serialized()[HEADER_LEN..]
}

/// The signature entry of `len` zero bytes (a hole) in blocks of `block_size`.
#[must_use]
pub fn zero_entry(len: usize, block_size: u32) -> Vec<u8> {
    entries(&sign(&vec![0; len], block_size)).to_vec()
}

/// Zero bytes between two data regions of a basis up to which both are signed in one go, the
/// zeros with them; a longer hole ends the signing there and its blocks get the entry of zeros.
pub const HOLE_JOIN: u64 = 64 << 10;

/// Signs `size` bytes of `file` in blocks; returns the serialized signature. Blocks that lie
/// in a hole are not read: their entry is the entry of zeros. Data regions closer than
/// [`HOLE_JOIN`] are read (up to a chunk) into one buffer, the hole between them as zeros, and
/// signed together: a basis we wrote ourselves keeps each zero page as a hole (a database's
/// free pages), and signing between every two of them would leave most blocks to scalar MD4
/// instead of eight at a time. Setting `stop` ends the work within a chunk (an `Interrupted`
/// error): a basis can take minutes to read.
pub fn sign_file(file: &std::fs::File, size: u64, block_size: u32, stop: &AtomicBool) -> io::Result<Vec<u8>> {
    let block = u64::from(block_size);
    let mut signature = sign(&[], block_size).into_serialized();
    signature.reserve((size.div_ceil(block) as usize) * ENTRY_LEN);
    let mut buffer = vec![0u8; CHUNK_SIZE];
    let hole = zero_entry(block_size as usize, block_size);
    let sparse = is_sparse(file, size);
    let mut offset = 0;
    while offset < size {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped: the session is over"));
        }
        if sparse {
            // Whole blocks before the next data, or everything when no data is left, are holes.
            let data_start = data_range(file, offset, size).0;
            let hole_end = if data_start >= size { size } else { data_start / block * block };
            if hole_end > offset {
                while offset < hole_end {
                    let len = (hole_end - offset).min(block);
                    if len == block {
                        signature.extend_from_slice(&hole);
                    } else {
                        signature.extend_from_slice(&zero_entry(len as usize, block_size));
                    }
                    offset += len;
                }
                continue;
            }
        }
        // From `offset` (block aligned; CHUNK_SIZE is a multiple of every block size): the
        // data regions up to a chunk, joined across short holes, in whole blocks.
        let limit = (offset + CHUNK_SIZE as u64).min(size);
        let mut signed_to = offset;
        let mut at = offset;
        while at < limit {
            let (data_start, data_end) = if sparse { data_range(file, at, size) } else { (at, limit) };
            if data_start >= limit || (signed_to > offset && data_start >= signed_to + HOLE_JOIN) {
                break;
            }
            let data_end = data_end.min(limit);
            let into = &mut buffer[(data_start - offset) as usize..(data_end - offset) as usize];
            let got = read_full(file, into, data_start)?;
            if got < into.len() {
                // Shorter than it was: sign what is there.
                let filled = (data_start - offset) as usize + got;
                signature.extend_from_slice(entries(&sign(&buffer[..filled], block_size)));
                return Ok(signature);
            }
            // Regions that start before the block this one ends in are read too.
            signed_to = signed_to.max(data_end.div_ceil(block).saturating_mul(block).min(limit));
            at = data_end;
        }
        // At least a block, whatever the file did meanwhile.
        if signed_to == offset {
            signed_to = (offset + block).min(size);
        }
        let len = (signed_to - offset) as usize;
        signature.extend_from_slice(entries(&sign(&buffer[..len], block_size)));
        // The buffer holds zeros again for the holes of the next chunk.
        buffer[..len].fill(0);
        offset = signed_to;
    }
    Ok(signature)
}

/// The magic of librsync deltas, the format `fast_rsync` makes and applies.
const DELTA_MAGIC: [u8; 4] = 0x7273_0236u32.to_be_bytes();
/// Delta commands: the end; a literal of 1 to 64 bytes (the command is the length); a literal
/// whose length follows in 1, 2, 4 or 8 bytes; a copy whose window offset and length follow,
/// each in 1, 2, 4 or 8 bytes (`OP_COPY + 4 * offset class + length class`).
const OP_END: u8 = 0;
const OP_LITERAL_N: u8 = 0x41;
const OP_COPY: u8 = 0x45;
const OP_COPY_LAST: u8 = 0x54;

/// A delta written in librsync's format, command by command, for content whose place in the
/// basis is known: no search needed. Lengths and offsets always take eight bytes.
pub struct DeltaWriter<'a>(&'a mut Vec<u8>);

impl<'a> DeltaWriter<'a> {
    /// Starts a delta in `out` (emptied first).
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.clear();
        out.extend_from_slice(&DELTA_MAGIC);
        DeltaWriter(out)
    }

    /// Makes `len` bytes by copying from `from` in the window.
    pub fn copy(&mut self, from: u64, len: u64) {
        debug_assert!(len > 0, "a copy of nothing is not a delta command");
        self.0.push(OP_COPY + 4 * 3 + 3);
        self.0.extend_from_slice(&from.to_be_bytes());
        self.0.extend_from_slice(&len.to_be_bytes());
    }

    /// Makes `bytes` as they are.
    pub fn literal(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.0.push(OP_LITERAL_N + 3);
            self.0.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            self.0.extend_from_slice(bytes);
        }
    }

    /// Ends the delta.
    pub fn finish(self) {
        self.0.push(OP_END);
    }
}

/// The last copy in a delta made by `fast_rsync::diff`: where its bytes land in the content
/// made, and where they come from in the window. The difference tells where the content
/// after it is likely to be found too. `None` when the delta copies nothing (or is not one).
#[must_use]
pub fn last_copy(delta: &[u8]) -> Option<(u64, u64)> {
    let number = |at: usize, width: usize| -> Option<u64> {
        let bytes = delta.get(at..at.checked_add(width)?)?;
        Some(bytes.iter().fold(0, |value, &byte| value << 8 | u64::from(byte)))
    };
    if delta.get(..4)? != DELTA_MAGIC {
        return None;
    }
    let (mut at, mut made, mut last) = (4usize, 0u64, None);
    loop {
        let op = *delta.get(at)?;
        at += 1;
        match op {
            OP_END => return last,
            1..=0x40 => {
                at = at.checked_add(usize::from(op))?;
                made = made.checked_add(u64::from(op))?;
            }
            OP_LITERAL_N..0x45 => {
                let width = 1 << (op - OP_LITERAL_N);
                let len = number(at, width)?;
                at = at.checked_add(width)?.checked_add(usize::try_from(len).ok()?)?;
                made = made.checked_add(len)?;
            }
            OP_COPY..=OP_COPY_LAST => {
                let (offset_width, len_width) = (1 << ((op - OP_COPY) / 4), 1 << ((op - OP_COPY) % 4));
                let from = number(at, offset_width)?;
                let len = number(at + offset_width, len_width)?;
                at += offset_width + len_width;
                last = Some((made, from));
                made = made.checked_add(len)?;
            }
            _ => return None,
        }
    }
}

/// A receiver's signature of its basis, checked.
#[derive(Debug)]
pub struct BasisSignature {
    serialized: Vec<u8>,
    block_size: u32,
}

impl BasisSignature {
    /// Checks a peer's signature: MD4 with [`STRONG_LEN`] bytes, a power-of-two block size
    /// between [`MIN_BLOCK`] and [`CHUNK_SIZE`], whole entries.
    pub fn parse(serialized: Vec<u8>) -> Result<Self, String> {
        if serialized.len() < HEADER_LEN || serialized[..4] != MD4_MAGIC {
            return Err("block signature is not an MD4 rsync signature".into());
        }
        let word = |at: usize| u32::from_be_bytes(serialized[at..at + 4].try_into().expect("4 bytes"));
        let (block_size, strong) = (word(4), word(8));
        if !block_size.is_power_of_two() || block_size < MIN_BLOCK || block_size as usize > CHUNK_SIZE {
            return Err(format!("block size {block_size} is not a power of two between {MIN_BLOCK} and {CHUNK_SIZE}"));
        }
        if strong != STRONG_LEN {
            return Err(format!("block signature keeps {strong} bytes of MD4, not {STRONG_LEN}"));
        }
        if !(serialized.len() - HEADER_LEN).is_multiple_of(ENTRY_LEN) {
            return Err("block signature is not a whole number of entries".into());
        }
        Ok(BasisSignature { serialized, block_size })
    }

    /// The block size.
    #[must_use]
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Number of blocks.
    #[must_use]
    pub fn blocks(&self) -> u64 {
        ((self.serialized.len() - HEADER_LEN) / ENTRY_LEN) as u64
    }

    /// The entry of block `index`, if the basis has that block.
    #[must_use]
    pub fn entry(&self, index: u64) -> Option<&[u8]> {
        let start = HEADER_LEN + usize::try_from(index).ok()?.checked_mul(ENTRY_LEN)?;
        self.serialized.get(start..start.checked_add(ENTRY_LEN)?)
    }

    /// The signature of blocks `first..first + count` (clamped to the basis), as if the basis
    /// started at block `first`: a delta against it copies from offsets relative to there.
    #[must_use]
    pub fn window(&self, first: u64, count: u64) -> Signature {
        let end = first.saturating_add(count).min(self.blocks());
        let first = first.min(end);
        let mut window = Vec::with_capacity(HEADER_LEN + ((end - first) as usize) * ENTRY_LEN);
        window.extend_from_slice(&self.serialized[..HEADER_LEN]);
        window.extend_from_slice(
            &self.serialized[HEADER_LEN + first as usize * ENTRY_LEN..HEADER_LEN + end as usize * ENTRY_LEN],
        );
        Signature::deserialize(window).expect("a slice of a checked signature is a signature")
    }
}

/// Whether `file` has fewer blocks allocated than its size needs: then holes are worth finding.
#[must_use]
pub fn is_sparse(file: &std::fs::File, size: u64) -> bool {
    rustix::fs::fstat(file).is_ok_and(|stat| u64::try_from(stat.st_blocks).unwrap_or(0) * 512 < size)
}

/// The next data region at or after `offset`, as `[start, end)`; `start >= size` when only a
/// hole remains. Without hole support the rest is one data region.
#[must_use]
pub fn data_range(file: &std::fs::File, offset: u64, size: u64) -> (u64, u64) {
    let start = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(offset)) {
        Ok(start) => start,
        // ENXIO: no data after offset.
        Err(rustix::io::Errno::NXIO) => return (size, size),
        Err(_) => return (offset, size),
    };
    let end = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(start)).unwrap_or(size);
    (start.min(size), end.min(size))
}

/// Reads until `buffer` is full or the file ends; returns the bytes read.
pub fn read_full(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(done)
}

/// True when every byte is zero (such runs are left as holes on the target).
#[must_use]
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    words.by_ref().all(|word| u128::from_ne_bytes(word.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_grow_with_the_file() {
        assert_eq!(block_size_for(0), MIN_BLOCK);
        assert_eq!(block_size_for(100 << 20), MIN_BLOCK);
        assert_eq!(block_size_for(1 << 30), 8 * 1024);
        assert_eq!(block_size_for(1 << 40), CHUNK_SIZE as u32);
    }

    fn header(block_size: u32, strong: u32) -> Vec<u8> {
        let mut header = MD4_MAGIC.to_vec();
        header.extend_from_slice(&block_size.to_be_bytes());
        header.extend_from_slice(&strong.to_be_bytes());
        header
    }

    #[test]
    fn peer_signatures_are_checked() {
        assert!(BasisSignature::parse(sign(&[7; 10_000], 4096).into_serialized()).is_ok());
        let mut two_entries = header(4096, 8);
        two_entries.extend_from_slice(&[0; 2 * ENTRY_LEN]);
        assert_eq!(BasisSignature::parse(two_entries).unwrap().blocks(), 2);
        assert!(BasisSignature::parse(header(0, 8)).is_err());
        assert!(BasisSignature::parse(header(4095, 8)).is_err());
        assert!(BasisSignature::parse(header(1 << 30, 8)).is_err());
        assert!(BasisSignature::parse(header(4096, 16)).is_err());
        let mut ragged = header(4096, 8);
        ragged.extend_from_slice(&[0; 13]);
        assert!(BasisSignature::parse(ragged).is_err());
        let mut blake2 = header(4096, 8);
        blake2[3] = 0x37;
        assert!(BasisSignature::parse(blake2).is_err());
        assert!(BasisSignature::parse(vec![1, 2, 3]).is_err());
    }

    #[test]
    fn a_file_signature_is_the_signature_of_its_bytes_holes_included() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
        let size = 3 * CHUNK_SIZE as u64 + 5000;
        file.set_len(size).unwrap();
        file.write_all_at(&vec![9; 70_000], CHUNK_SIZE as u64 + 4096 * 3 + 17).unwrap();
        file.write_all_at(&[4; 100], size - 100).unwrap();
        // Data across a chunk boundary, and pages with one-page holes between them (what a
        // database copied page by page looks like).
        file.write_all_at(&[5; 10_000], CHUNK_SIZE as u64 - 5000).unwrap();
        for page in (0..200u64).filter(|page| page % 4 != 3) {
            file.write_all_at(&[page as u8 | 1; 4096], 2 * CHUNK_SIZE as u64 + page * 4096).unwrap();
        }
        assert!(is_sparse(&file, size), "the test file should be sparse");
        let bytes = std::fs::read(&path).unwrap();
        for block_size in [4096, 8192, 65_536] {
            let signed = sign_file(&file, size, block_size, &AtomicBool::new(false)).unwrap();
            assert_eq!(signed, sign(&bytes, block_size).serialized());
            let stopped = sign_file(&file, size, block_size, &AtomicBool::new(true));
            assert!(size == 0 || stopped.is_err_and(|e| e.kind() == io::ErrorKind::Interrupted));
        }
        // A file that ends in a hole longer than a block, in a part block.
        let longer = size + 3 * 65_536 + 1000;
        file.set_len(longer).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for block_size in [4096, 65_536] {
            let signed = sign_file(&file, longer, block_size, &AtomicBool::new(false)).unwrap();
            assert_eq!(signed, sign(&bytes, block_size).serialized());
        }
    }

    #[test]
    fn a_window_copies_from_offsets_relative_to_its_start() {
        let basis: Vec<u8> = (0..64 * 4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let signature = BasisSignature::parse(sign(&basis, 4096).into_serialized()).unwrap();
        let window = signature.window(16, 8);
        let base = &basis[16 * 4096..24 * 4096];
        // Content from the middle of the window, shifted by an insert.
        let mut new = b"inserted".to_vec();
        new.extend_from_slice(&basis[18 * 4096..22 * 4096]);
        let mut delta = Vec::new();
        fast_rsync::diff(&window.index(), &new, &mut delta).unwrap();
        assert!(delta.len() < 200, "a delta of {} bytes for a shifted window", delta.len());
        let mut out = Vec::new();
        fast_rsync::apply_limited(base, &delta, &mut out, new.len()).unwrap();
        assert_eq!(out, new);
        // A window past the end is empty, not a panic.
        assert_eq!(entries(&signature.window(1000, 5)).len(), 0);
        assert_eq!(signature.entry(u64::MAX), None);
    }

    /// `len` pseudo-random bytes from `seed`.
    /// Bytes without repeated blocks: splitmix64 of each offset. (A multiply-and-shift once made
    /// a basis whose blocks repeated 18,694 bytes on, so a delta matched the wrong copy.)
    fn scrambled(seed: u64, len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| {
                let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    }

    proptest::proptest! {
        /// Whatever the edit and wherever the window, applying the delta to the window's bytes
        /// gives the new content back.
        #[test]
        fn a_delta_against_any_window_rebuilds_the_content(
            seed in proptest::prelude::any::<u64>(),
            blocks in 1u64..24,
            first in 0u64..24,
            count in 0u64..24,
            at in 0usize..100_000,
            insert in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            cut in 0usize..100_000,
            remove in 0usize..5000,
        ) {
            let basis = scrambled(seed, blocks * 4096);
            let signature = BasisSignature::parse(sign(&basis, 4096).into_serialized()).unwrap();
            let start = (first * 4096).min(basis.len() as u64) as usize;
            let end = (start as u64 + count * 4096).min(basis.len() as u64) as usize;
            let mut new = basis[start..end].to_vec();
            let at = at.min(new.len());
            new.splice(at..at, insert);
            let cut = cut.min(new.len());
            new.drain(cut..(cut + remove).min(new.len()));
            let window = signature.window(first, count);
            let mut delta = Vec::new();
            fast_rsync::diff(&window.index(), &new, &mut delta).unwrap();
            let mut out = Vec::new();
            fast_rsync::apply_limited(&basis[start..end], &delta, &mut out, new.len()).unwrap();
            proptest::prop_assert_eq!(out, new);
        }
    }

    proptest::proptest! {
        /// The last copy `fast_rsync` finds tells where the shifted content is; a delta written
        /// command by command makes what it says.
        #[test]
        fn the_last_copy_of_a_delta_locates_the_shifted_content(
            seed in proptest::prelude::any::<u64>(),
            blocks in 2u64..24,
            at in 0usize..100_000,
            insert in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..300),
            len in 1u64..100_000,
        ) {
            let basis = scrambled(seed, blocks * 4096);
            let signature = BasisSignature::parse(sign(&basis, 4096).into_serialized()).unwrap();
            let at = at.min(basis.len());
            let mut new = basis.clone();
            new.splice(at..at, insert);
            let mut delta = Vec::new();
            fast_rsync::diff(&signature.window(0, blocks).index(), &new, &mut delta).unwrap();
            // At least one whole block lies before or after the insert.
            let (made, from) = last_copy(&delta).expect("a delta with copies");
            let (made, from) = (made as usize, from as usize);
            proptest::prop_assert_eq!(&new[made..made + 4096], &basis[from..from + 4096]);
            let expected_shift = if made >= at + new.len() - basis.len() { new.len() - basis.len() } else { 0 };
            proptest::prop_assert_eq!(made - from, expected_shift);

            // Literal, copy, literal: what a chunk found at a known shift is sent as.
            let len = len.clamp(1, basis.len() as u64 - 4096);
            let mut writer = DeltaWriter::new(&mut delta);
            writer.literal(b"head");
            writer.copy(4096, len);
            writer.literal(b"");
            writer.literal(b"tail");
            writer.finish();
            proptest::prop_assert_eq!(last_copy(&delta), Some((4, 4096)));
            let mut out = Vec::new();
            fast_rsync::apply_limited(&basis, &delta, &mut out, len as usize + 8).unwrap();
            let expected = [b"head", &basis[4096..4096 + len as usize], b"tail"].concat();
            proptest::prop_assert_eq!(out, expected);
        }
    }

    #[test]
    fn a_delta_without_copies_or_not_a_delta_has_no_last_copy() {
        let mut delta = Vec::new();
        fast_rsync::diff(&sign(&[1; 8192], 4096).index(), &[2; 5000], &mut delta).unwrap();
        assert_eq!(last_copy(&delta), None);
        assert_eq!(last_copy(b"rs"), None);
        assert_eq!(last_copy(&[0x72, 0x73, 0x02, 0x36, OP_COPY + 3, 0, 1]), None);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 100]));
        let mut data = vec![0u8; 100];
        data[99] = 1;
        assert!(!is_zero(&data));
        data[99] = 0;
        data[3] = 1;
        assert!(!is_zero(&data));
        assert!(is_zero(&[]));
    }
}
