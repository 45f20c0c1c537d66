//! mover-engine: everything in mover that moves bytes.
//!
//! - [`scan`]: walk a source volume in path order with full metadata, in bounded memory;
//! - [`exclude`]: rsync's exclude patterns, for the scan and the deletion pass;
//! - [`wire`]: the framed protocol (handshake with version check, typed messages, size limits);
//! - [`tunnel`] and [`certs`]: mutual TLS 1.3 with a per-migration CA and role certificates;
//! - [`sync`]: the sender and receiver state machines of a volume copy;
//! - [`agent`]: the node daemon's server side; [`client`]: the coordinator's operations;
//! - [`reserved`]: the exact forms of mover's temporary names, and which files are its leftovers;
//! - [`volume`]: grants, and the roots sessions resolve afresh and watch;
//! - [`progress`]: events and summaries (the engine never prints);
//! - [`hooks`]: run a plan's hook programs and playbooks, with a timeout over their process group.
//!
//! Invariants kept here: the source is only read; nothing is written outside the target root
//! (see [`confine`]); a file appears under its final name only with verified content; every
//! length read from the wire is bounded before allocation.

pub mod agent;
pub mod certs;
pub mod client;
pub mod compress;
pub mod confine;
pub mod exclude;
/// The checks behind the fuzz targets in `fuzz/` (present when cargo-fuzz builds, and in tests).
#[cfg(any(fuzzing, test))]
pub mod fuzz;
pub mod hooks;
pub mod image;
pub mod inspect;
pub mod meta;
mod options;
pub mod progress;
pub mod reserved;
pub mod scan;
/// The session handshake shared by [`client`] and [`agent`] (see its module docs).
pub(crate) mod session;
pub mod sync;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tunnel;
pub mod volume;
pub mod wire;

pub use options::CopyOptions;
pub use wire::{Compression, MAX_STREAMS, PROTOCOL_VERSION, SyncOptions};

/// The software version of this build (agents report it to preflight).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
