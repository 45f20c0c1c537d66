//! Test data for `mover`: a generator of realistic, hostile-ish directory trees and a comparator
//! that checks two trees for full metadata fidelity.
//!
//! * [`generate`] builds a tree deterministically from a [`TreeSpec`]: nested and empty
//!   directories, files of every size class, odd permission bits, numeric owners (when running as
//!   root), nanosecond and pre-1970 / far-future mtimes, symlinks of every flavour, hardlink
//!   groups, FIFOs, `user.*` xattrs, POSIX ACLs, sparse files and hostile file names.
//! * [`compare`] walks two trees with `lstat` in byte order and lists every [`Difference`]:
//!   presence, type, mode, owner, mtime, size, content, symlink target, hardlink partition,
//!   xattrs and (for sparse files) allocation. [`assert_identical`] is the test-friendly wrapper.
//! * [`random_bytes`] and [`write_random`] produce deterministic incompressible content from a
//!   seed (BLAKE3 in XOF mode), streamed in 1 MiB pieces for big files.
//!
//! For image copy:
//!
//! * [`oci`] builds OCI image layouts (images, indexes, Docker formats, tags) with streamed,
//!   seeded gzip layers; [`oci::sample_multiarch`] is a ready two-platform sample.
//! * [`registry`] runs a real `docker-registry` (plain, TLS, basic auth) on an ephemeral loopback
//!   port and reads and seeds it with independent clients (curl, skopeo).
//! * [`fault`] puts a fault-injecting HTTP relay in front of a registry (flipped bytes, failing
//!   and reset blob downloads).
//! * [`delay`] puts a fixed delay each way between two ends of any TCP protocol (a long link).

pub mod cluster;
mod compare;
pub mod delay;
pub mod fault;
mod generate;
pub mod isolated;
pub mod oci;
pub mod podrunner;
pub mod pods;
pub mod registry;
pub mod token;

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

pub use compare::{CompareOptions, Difference, assert_identical, compare};
pub use generate::{BigFile, GenStats, TreeSpec, generate};

/// Size of the pieces big files are written and hashed in.
pub(crate) const CHUNK: usize = 1 << 20;

/// The BLAKE3 output stream that all random content of `seed` is taken from.
fn xof(seed: u64) -> blake3::OutputReader {
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof()
}

/// Returns `len` deterministic, incompressible bytes derived from `seed`.
///
/// `random_bytes(s, n)` is a prefix of `random_bytes(s, m)` for `n <= m`, and equals the content
/// that [`write_random`] writes for the same seed.
#[must_use]
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    xof(seed).fill(&mut out);
    out
}

/// Creates (or truncates) the file at `path` and fills it with `len` bytes of
/// [`random_bytes`]`(seed, len)`, streamed in 1 MiB pieces so any size is fine.
pub fn write_random(path: &Path, len: u64, seed: u64) -> io::Result<()> {
    let mut file = File::create(path)?;
    write_random_to(&mut file, len, seed)
}

/// Streams `len` bytes of the random content of `seed` into `out`.
pub(crate) fn write_random_to(out: &mut impl Write, len: u64, seed: u64) -> io::Result<()> {
    let mut reader = xof(seed);
    let mut buf = vec![0; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        reader.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
