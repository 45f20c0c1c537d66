//! mover-engine: everything in mover that moves bytes. Front ends (the `mover` CLI, the
//! `mover-agent` daemon, the plan library) use this API:
//!
//! - [`client`]: the coordinator's operations (a local copy, a copy to an agent, a push between
//!   agents, a pull into a local directory, ping), taking [`CopyOptions`] and reporting
//!   [`progress`] events; their errors ([`client::CopyError`]) carry kinds
//!   ([`RemoteErrorKind`], [`client::CopyError::is_retryable`]) for the front end's remedies;
//! - [`agent`]: the node daemon's server side, with grants given and revoked while it serves;
//! - [`certs`] and [`tunnel`]: the per-migration CA, role certificates ([`certs::Identity`],
//!   also from PEM bytes), mutual TLS 1.3 and the HTTP CONNECT proxy;
//! - [`image`]: registry to registry (and OCI layouts) image copies;
//! - [`exclude`]: rsync's exclude patterns; [`hooks`]: hook programs and playbooks with a
//!   timeout over their process group; [`inspect`]: preflight's view of a volume.
//!
//! The engine never prints (it emits [`progress::Event`]s), never reads environment variables,
//! and its messages name no front end's flags. Its internals (the protocol, the sender and
//! receiver, confined file access, the scan) are crate-private; the `test-util` feature opens
//! them to tests and benches.
//!
//! Invariants kept here: the source is only read; nothing is written outside the target root;
//! a file appears under its final name only with verified content; every length read from the
//! wire is bounded before allocation.

// The API the front ends use: what a node daemon serves, what a coordinator asks, and the
// types both see.
pub mod agent;
pub mod certs;
pub mod client;
pub mod exclude;
pub mod hooks;
pub mod image;
pub mod inspect;
pub mod progress;
pub mod tunnel;

/// Internal modules: crate-private, and public only with the `test-util` feature, for the
/// hostile-peer tests (raw frames), the benches of the building blocks and the test hooks.
macro_rules! internal {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[cfg(feature = "test-util")]
        pub mod $name;
        $(#[$doc])*
        #[cfg(not(feature = "test-util"))]
        pub(crate) mod $name;
    )*};
}

internal! {
    /// zstd chunk compression and the `auto` level.
    compress;
    /// Confined file access beneath a volume root.
    confine;
    /// Which metadata and xattrs are copied.
    meta;
    /// The exact forms of mover's temporary names.
    reserved;
    /// Walking a source volume in path order.
    scan;
    /// The sender and receiver of a volume copy.
    sync;
    /// Volume grants and the roots sessions resolve.
    volume;
    /// The framed protocol.
    wire;
}

/// The checks behind the fuzz targets in `fuzz/` (present when cargo-fuzz builds, and in tests).
#[cfg(any(fuzzing, test))]
pub mod fuzz;
mod options;
/// The session handshake shared by [`client`] and [`agent`].
mod session;
#[cfg(feature = "test-util")]
pub mod testing;

pub use options::CopyOptions;
pub use sync::{CancellationToken, DeletionError, SyncError, full_message};
pub use wire::{Compression, MAX_STREAMS, PROTOCOL_VERSION, RemoteError, RemoteErrorKind, VolumeStatus, WireError};

/// How a raw file name (bytes) is shown: UTF-8 as is, other bytes escaped.
pub use confine::display_bytes;

/// The software version of this build (agents report it to preflight).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
