//! What a volume copy does, as the front ends ask for it.
//!
//! [`CopyOptions`] is the engine's options API; the session options on the wire
//! (`wire::SyncOptions`) are made from it, so the protocol can change without every front end
//! changing with it.

use crate::wire::{Compression, SyncOptions};

/// The options of one volume copy. `Default` is what `mover copy` does without flags: verify,
/// delete what the source lacks (guarded against mass deletion), one stream, `auto` compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// Copy `security.selinux` labels.
    pub selinux: bool,
    /// Recreate device nodes (the target must run as root).
    pub devices: bool,
    /// `fsync` each file before it is renamed into place.
    pub fsync: bool,
    /// How data chunks are compressed.
    pub compression: Compression,
    /// Stage run: files that vanish or change while read are warnings, not errors.
    pub stage: bool,
    /// Delete entries on the target that the source lacks.
    pub delete: bool,
    /// Allow deleting more than half of the target's entries.
    pub allow_mass_delete: bool,
    /// Compare file contents, not just size and mtime, to find what changed.
    pub checksum: bool,
    /// Most bytes per second the sender writes to the tunnel (after compression); 0 = no limit.
    pub bwlimit: u64,
    /// Update changed files in place instead of through a temporary copy (still verified; an
    /// interrupted run leaves such a file half updated until the next run repairs it).
    pub inplace: bool,
    /// Connections the file content is spread over (1 to [`MAX_STREAMS`](crate::MAX_STREAMS)).
    pub streams: u32,
    /// Enter file systems mounted inside the source volume (off: skip and report them).
    pub cross_mounts: bool,
    /// Report every change the receiver makes, not only deletions.
    pub itemize: bool,
    /// Change nothing on the target; report what would change.
    pub dry_run: bool,
    /// Exclude patterns with rsync's rules ([`Excludes`](crate::exclude::Excludes)): left out of the
    /// copy, and never deleted on the target.
    pub excludes: Vec<Vec<u8>>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            selinux: false,
            devices: false,
            fsync: false,
            compression: Compression::Auto,
            stage: false,
            delete: true,
            allow_mass_delete: false,
            checksum: false,
            bwlimit: 0,
            inplace: false,
            streams: 1,
            cross_mounts: false,
            itemize: false,
            dry_run: false,
            excludes: Vec::new(),
        }
    }
}

impl From<CopyOptions> for SyncOptions {
    fn from(options: CopyOptions) -> Self {
        let CopyOptions {
            selinux,
            devices,
            fsync,
            compression,
            stage,
            delete,
            allow_mass_delete,
            checksum,
            bwlimit,
            inplace,
            streams,
            cross_mounts,
            itemize,
            dry_run,
            excludes,
        } = options;
        SyncOptions {
            selinux,
            devices,
            fsync,
            compression,
            stage,
            delete,
            allow_mass_delete,
            checksum,
            bwlimit,
            inplace,
            streams,
            cross_mounts,
            itemize,
            dry_run,
            excludes,
        }
    }
}
