//! Fixed-offset block hashes: how a changed file travels as only its changed blocks.
//!
//! The receiver hashes the file it already has (the *basis*) in blocks of [`block_size_for`]
//! bytes and sends the hashes (blake3, truncated to [`HASH_LEN`] bytes) with its request. The
//! sender hashes its own blocks at the same offsets and sends only those that differ, plus
//! everything past the end of the basis: in-place writes (databases, VM images) and appends
//! cost only what changed. The receiver rebuilds the file from the basis and the sent blocks in
//! a temporary file and checks the whole result against the sender's blake3, so a collision of
//! truncated block hashes can cost a retry but never a wrong file.
//!
//! Content that *shifted* (inserted bytes) is sent from the first shifted block on; rolling
//! (rsync-style) deltas for that case are not built yet.

use std::io;
use std::os::unix::fs::FileExt;

use crate::wire::CHUNK_SIZE;

/// Bytes of each block hash.
pub const HASH_LEN: usize = 16;
/// Smallest block: a page, the unit databases and VM images write in.
pub const MIN_BLOCK: u32 = 4096;
/// Target number of blocks per file; bigger files get bigger blocks.
pub const TARGET_BLOCKS: u64 = 131_072;
/// Largest file sent as a block delta: past this the hash list would not fit in a frame.
pub const MAX_DELTA_FILE: u64 = (CHUNK_SIZE as u64) * (3 * 1024 * 1024 / HASH_LEN as u64);

/// The block size for a basis of `size` bytes: a power of two between [`MIN_BLOCK`] and
/// [`CHUNK_SIZE`], giving about [`TARGET_BLOCKS`] blocks or fewer.
#[must_use]
pub fn block_size_for(size: u64) -> u32 {
    let wanted = size.div_ceil(TARGET_BLOCKS).next_power_of_two();
    wanted.clamp(u64::from(MIN_BLOCK), CHUNK_SIZE as u64) as u32
}

/// The truncated blake3 of one block.
#[must_use]
pub fn block_hash(block: &[u8]) -> [u8; HASH_LEN] {
    let mut hash = [0u8; HASH_LEN];
    hash.copy_from_slice(&blake3::hash(block).as_bytes()[..HASH_LEN]);
    hash
}

/// Hashes `size` bytes of `file` in blocks; returns the concatenated hashes. Blocks that lie
/// in a hole are not read: their hash is the hash of zeros.
pub fn hash_file(file: &std::fs::File, size: u64, block_size: u32) -> io::Result<Vec<u8>> {
    let block = u64::from(block_size);
    let mut hashes = Vec::with_capacity((size.div_ceil(block) as usize) * HASH_LEN);
    let mut buffer = vec![0u8; CHUNK_SIZE];
    let zero_block = block_hash(&buffer[..block_size as usize]);
    let sparse = is_sparse(file, size);
    let mut offset = 0;
    while offset < size {
        let (data_start, data_end) = if sparse { data_range(file, offset, size) } else { (offset, size) };
        // Whole blocks before the data are holes.
        let data_start = data_start / block * block;
        while offset < data_start {
            let len = (data_start - offset).min(block);
            if len == block {
                hashes.extend_from_slice(&zero_block);
            } else {
                hashes.extend_from_slice(&block_hash(&vec![0; len as usize]));
            }
            offset += len;
        }
        let data_end = data_end.div_ceil(block).saturating_mul(block).min(size);
        while offset < data_end {
            let want = (data_end - offset).min(CHUNK_SIZE as u64) as usize;
            let got = read_full(file, &mut buffer[..want], offset)?;
            for chunk in buffer[..got].chunks(block_size as usize) {
                hashes.extend_from_slice(&block_hash(chunk));
            }
            if got < want {
                return Ok(hashes);
            }
            offset += want as u64;
        }
    }
    Ok(hashes)
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

/// Checks a peer's block request; returns the number of blocks.
pub fn check_request(block_size: u32, hashes: &[u8]) -> Result<u64, String> {
    if !block_size.is_power_of_two() || block_size < MIN_BLOCK || block_size as usize > CHUNK_SIZE {
        return Err(format!("block size {block_size} is not a power of two between {MIN_BLOCK} and {CHUNK_SIZE}"));
    }
    if !hashes.len().is_multiple_of(HASH_LEN) {
        return Err("block hash list is not a whole number of hashes".into());
    }
    Ok((hashes.len() / HASH_LEN) as u64)
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

    #[test]
    fn requests_are_checked() {
        assert!(check_request(4096, &[0; 32]).is_ok());
        assert!(check_request(0, &[]).is_err());
        assert!(check_request(4095, &[]).is_err());
        assert!(check_request(1 << 30, &[]).is_err());
        assert!(check_request(4096, &[0; 17]).is_err());
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
