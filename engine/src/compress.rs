//! Chunk compression: each chunk is one independent zstd frame, kept only when it shrinks the
//! chunk by at least [`MIN_SAVING_PERCENT`]; otherwise the chunk travels raw.
//!
//! Incompressible data (media, archives, encrypted volumes) is common in volumes. After
//! [`GIVE_UP_AFTER`] incompressible chunks in a row a [`Compressor`] stops trying and only
//! re-probes every [`REPROBE_EVERY`] chunks, so such files cost almost no CPU.

use std::io;

/// A chunk is sent compressed only if that saves at least this share of its size.
pub const MIN_SAVING_PERCENT: usize = 10;
/// Incompressible chunks in a row before the compressor stops trying.
pub const GIVE_UP_AFTER: u32 = 4;
/// While given up, try again every this many chunks.
pub const REPROBE_EVERY: u32 = 16;

/// A chunk ready for the wire.
#[derive(Debug)]
pub struct Packed {
    /// Whether `bytes` is a zstd frame.
    pub compressed: bool,
    /// The bytes to send.
    pub bytes: Vec<u8>,
}

/// Compresses chunks of one stream of data (one file), adapting to what it sees.
pub struct Compressor {
    inner: Option<zstd::bulk::Compressor<'static>>,
    misses: u32,
    skipped: u32,
}

impl Compressor {
    /// A compressor at zstd `level`; level 0 disables compression.
    pub fn new(level: i32) -> io::Result<Self> {
        let inner = if level == 0 { None } else { Some(zstd::bulk::Compressor::new(level)?) };
        Ok(Compressor { inner, misses: 0, skipped: 0 })
    }

    /// Starts a new file: forget what the previous file's data looked like.
    pub fn reset(&mut self) {
        self.misses = 0;
        self.skipped = 0;
    }

    /// Packs one chunk.
    pub fn pack(&mut self, raw: &[u8]) -> io::Result<Packed> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(Packed { compressed: false, bytes: raw.to_vec() });
        };
        if self.misses >= GIVE_UP_AFTER {
            self.skipped += 1;
            if self.skipped < REPROBE_EVERY {
                return Ok(Packed { compressed: false, bytes: raw.to_vec() });
            }
            self.skipped = 0;
        }
        let compressed = inner.compress(raw)?;
        if compressed.len() * 100 <= raw.len() * (100 - MIN_SAVING_PERCENT) {
            self.misses = 0;
            Ok(Packed { compressed: true, bytes: compressed })
        } else {
            self.misses += 1;
            Ok(Packed { compressed: false, bytes: raw.to_vec() })
        }
    }
}

/// Decompresses chunks, refusing any that expand past their declared size.
pub struct Decompressor {
    inner: zstd::bulk::Decompressor<'static>,
}

impl Decompressor {
    /// A decompressor whose window is limited to what one chunk can need.
    pub fn new() -> io::Result<Self> {
        let mut inner = zstd::bulk::Decompressor::new()?;
        // A chunk is at most 1 MiB, so no honest frame needs a window over 2^20; this caps what
        // a hostile frame can make us allocate.
        inner.window_log_max(20)?;
        Ok(Decompressor { inner })
    }

    /// Unpacks `bytes` into `out`, which must end up exactly `raw_len` bytes long.
    pub fn unpack(&mut self, compressed: bool, bytes: &[u8], raw_len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        if !compressed {
            if bytes.len() != raw_len {
                return Err(io::Error::other("raw chunk length differs from its declared length"));
            }
            out.extend_from_slice(bytes);
            return Ok(());
        }
        out.reserve(raw_len);
        let n = self
            .inner
            .decompress_to_buffer(bytes, out)
            .map_err(|error| io::Error::other(format!("bad zstd chunk: {error}")))?;
        if n != raw_len {
            return Err(io::Error::other("compressed chunk expands to another length than declared"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..70_000), repeat in 1usize..20) {
            let raw: Vec<u8> = data.iter().copied().cycle().take(data.len() * repeat).collect();
            let mut compressor = Compressor::new(1).unwrap();
            let packed = compressor.pack(&raw).unwrap();
            let mut out = Vec::new();
            Decompressor::new().unwrap().unpack(packed.compressed, &packed.bytes, raw.len(), &mut out).unwrap();
            prop_assert_eq!(out, raw);
        }
    }

    #[test]
    fn incompressible_goes_raw_and_text_compresses() {
        let mut compressor = Compressor::new(1).unwrap();
        let random: Vec<u8> = (0..65_536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let text = b"the quick brown fox jumps over the lazy dog\n".repeat(1000);
        assert!(compressor.pack(&text).unwrap().compressed);
        let random_packed = blake3::Hasher::new().update(&random).finalize_xof();
        let mut noise = vec![0u8; 65_536];
        let mut reader = random_packed;
        reader.fill(&mut noise);
        assert!(!compressor.pack(&noise).unwrap().compressed);
    }

    #[test]
    fn refuses_expansion_past_declared_size() {
        let text = vec![b'a'; 100_000];
        let frame = zstd::bulk::compress(&text, 1).unwrap();
        let mut out = Vec::new();
        let error = Decompressor::new().unwrap().unpack(true, &frame, 1000, &mut out).unwrap_err();
        assert!(error.to_string().contains("zstd") || error.to_string().contains("length"), "{error}");
        assert!(out.capacity() < 100_000);
    }
}
