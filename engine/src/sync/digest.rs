//! The digest a file's content is verified by, end to end.
//!
//! It is blake3 over the blake3 hashes of the file's [`PIECE`]-sized pieces, followed by the
//! file's size (little-endian, 8 bytes). A piece's hash does not depend on where the piece
//! lies, so a piece of zeros always hashes to the same value: a hole is accounted for without
//! hashing a byte, however large. A sparse VM image of 100 GiB with 10 GiB of data costs
//! 10 GiB of hashing at each end, not 100. Zeros that arrive as bytes hash to the same value,
//! so the digest does not depend on which ranges either end keeps as holes.

use std::sync::OnceLock;

/// Bytes per piece: large enough that hashing a piece runs at blake3's full SIMD speed and
/// that the list of piece hashes is small (32 bytes per MiB).
pub const PIECE: u64 = 1 << 20;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The hash of a whole piece of zeros.
fn zero_piece() -> &'static blake3::Hash {
    static HASH: OnceLock<blake3::Hash> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut hasher = blake3::Hasher::new();
        for _ in 0..PIECE / ZEROS.len() as u64 {
            hasher.update(&ZEROS);
        }
        hasher.finalize()
    })
}

/// A file's digest being computed, its content fed in order.
#[derive(Clone)]
pub struct FileDigest {
    /// The hashes of the whole pieces so far.
    pieces: blake3::Hasher,
    /// The piece being fed.
    piece: blake3::Hasher,
    /// Bytes of the piece being fed.
    in_piece: u64,
    /// Bytes fed in all.
    size: u64,
}

impl Default for FileDigest {
    fn default() -> Self {
        FileDigest { pieces: blake3::Hasher::new(), piece: blake3::Hasher::new(), in_piece: 0, size: 0 }
    }
}

impl FileDigest {
    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (PIECE - self.in_piece).min(data.len() as u64) as usize;
            self.piece.update(&data[..n]);
            self.advance(n as u64);
            data = &data[n..];
        }
    }

    /// Feeds `len` zero bytes (a hole): whole pieces of them without hashing.
    pub fn zeros(&mut self, mut len: u64) {
        while len > 0 {
            if self.in_piece == 0 && len >= PIECE {
                self.pieces.update(zero_piece().as_bytes());
                self.size += PIECE;
                len -= PIECE;
                continue;
            }
            let n = (PIECE - self.in_piece).min(len).min(ZEROS.len() as u64);
            self.piece.update(&ZEROS[..n as usize]);
            self.advance(n);
            len -= n;
        }
    }

    /// The digest of what was fed.
    #[must_use]
    pub fn finalize(&self) -> [u8; 32] {
        let mut pieces = self.pieces.clone();
        if self.in_piece > 0 {
            pieces.update(self.piece.finalize().as_bytes());
        }
        pieces.update(&self.size.to_le_bytes());
        *pieces.finalize().as_bytes()
    }

    fn advance(&mut self, n: u64) {
        self.in_piece += n;
        self.size += n;
        if self.in_piece == PIECE {
            self.pieces.update(self.piece.finalize().as_bytes());
            self.piece.reset();
            self.in_piece = 0;
        }
    }
}

/// The digest of `content`.
#[cfg(any(test, fuzzing, feature = "test-util"))]
#[must_use]
pub fn digest(content: &[u8]) -> [u8; 32] {
    let mut digest = FileDigest::default();
    digest.update(content);
    digest.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Few cases, each up to 15 MiB; shrinking a failure cuts it into 1-byte updates, slow.
        #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 64, ..ProptestConfig::default() })]
        /// However the content is cut into updates, and whether its zeros come as bytes or as
        /// holes, the digest is the same; and it is the hash list it is documented to be.
        #[test]
        fn the_digest_depends_on_the_content_only(
            parts in proptest::collection::vec((any::<bool>(), 0u64..3 * PIECE, any::<u8>()), 0..6),
            cuts in proptest::collection::vec(1usize..200_000, 1..8),
        ) {
            let mut content = Vec::new();
            let mut by_holes = FileDigest::default();
            for &(hole, len, byte) in &parts {
                // Data parts are short; holes may span pieces.
                let len = if hole { len } else { len % 300_000 };
                let byte = if hole { 0 } else { byte };
                let start = content.len();
                content.resize(start + len as usize, byte);
                if hole {
                    by_holes.zeros(len);
                } else {
                    by_holes.update(&content[start..]);
                }
            }
            let mut by_cuts = FileDigest::default();
            let mut rest = &content[..];
            for &cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = cut.min(rest.len());
                by_cuts.update(&rest[..n]);
                rest = &rest[n..];
            }
            let mut list = blake3::Hasher::new();
            for piece in content.chunks(PIECE as usize) {
                list.update(blake3::hash(piece).as_bytes());
            }
            list.update(&(content.len() as u64).to_le_bytes());
            let expected = *list.finalize().as_bytes();
            prop_assert_eq!(by_holes.finalize(), expected);
            prop_assert_eq!(by_cuts.finalize(), expected);
            prop_assert_eq!(digest(&content), expected);
        }
    }

    /// Sizes at and around piece boundaries, as bytes and as holes, and a digest taken twice.
    #[test]
    fn piece_boundaries_as_bytes_and_as_holes() {
        let piece = PIECE as usize;
        for len in [0, 1, piece - 1, piece, piece + 1, 2 * piece, 2 * piece + 7] {
            let zeros = vec![0u8; len];
            let mut list = blake3::Hasher::new();
            for chunk in zeros.chunks(piece) {
                list.update(blake3::hash(chunk).as_bytes());
            }
            list.update(&(len as u64).to_le_bytes());
            let expected = *list.finalize().as_bytes();
            let mut by_holes = FileDigest::default();
            by_holes.zeros(len as u64);
            assert_eq!(by_holes.finalize(), expected, "{len} bytes of hole");
            assert_eq!(by_holes.finalize(), expected, "{len} bytes of hole, finalized again");
            assert_eq!(digest(&zeros), expected, "{len} zero bytes");
            // Half as bytes, half as a hole.
            let mut mixed = FileDigest::default();
            mixed.update(&zeros[..len / 2]);
            mixed.zeros((len - len / 2) as u64);
            assert_eq!(mixed.finalize(), expected, "{len} bytes, half of them a hole");
        }
    }

    #[test]
    fn a_byte_anywhere_changes_the_digest() {
        let zeros = vec![0u8; 3 * PIECE as usize + 5];
        let base = digest(&zeros);
        for at in [0, PIECE as usize - 1, PIECE as usize, zeros.len() - 1] {
            let mut changed = zeros.clone();
            changed[at] = 1;
            assert_ne!(digest(&changed), base, "a byte at {at}");
        }
        // The size counts: one more zero is another file.
        assert_ne!(digest(&zeros[1..]), base);
        assert_ne!(digest(&[]), digest(&[0]));
    }
}
