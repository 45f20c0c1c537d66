//! Progress events and the end-of-run summary. The engine only emits; front ends render.
//!
//! Events are a serde enum so a source agent can forward them to the coordinator unchanged
//! (the protocol's `Message::Progress`) and `mover --output json` can print them as JSON lines.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Something worth telling the user while a volume moves.
///
/// Externally tagged (`{"progress": {...}}` in JSON), because postcard cannot decode internally
/// tagged enums; front ends that want a `type` field flatten it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The totals of the source tree are known (a quick metadata pre-scan finished).
    Totals {
        /// Regular files in the source.
        files: u64,
        /// Bytes of regular-file content in the source.
        bytes: u64,
    },
    /// Periodic counters (throttled by the emitter).
    Progress {
        /// Regular files dealt with so far (sent or found up to date).
        files_done: u64,
        /// Content bytes dealt with so far, including how far the files being sent have got
        /// (holes included), so that it moves within a big file.
        bytes_done: u64,
        /// Content bytes actually sent.
        bytes_transferred: u64,
        /// Bytes written to the tunnel, after compression.
        bytes_on_wire: u64,
    },
    /// A non-fatal problem (a file skipped, metadata not preserved).
    Warning {
        /// What happened, naming the path.
        message: String,
    },
    /// An image copy knows what it will move.
    ImagePlanned {
        /// The source image.
        image: String,
        /// The digest its target tag will point at.
        digest: String,
        /// Manifests and indexes in it.
        manifests: u64,
        /// Distinct blobs in it.
        blobs: u64,
        /// Their total size.
        bytes: u64,
    },
    /// A blob's progress (throttled while copying) or its outcome.
    Blob {
        /// The image it belongs to.
        image: String,
        /// Its digest.
        digest: String,
        /// Its size.
        size: u64,
        /// Bytes moved so far.
        done: u64,
        /// Where it stands.
        state: BlobState,
    },
    /// An entry of the target was created, updated or deleted (in a dry run: would be). A
    /// deletion is always reported; the other changes when the session asked for them
    /// ([`crate::CopyOptions::itemize`] or a dry run).
    Change(Change),
    /// An image was copied and tagged.
    ImageCopied {
        /// The source image.
        image: String,
        /// The digest now on the target.
        digest: String,
    },
}

/// One change to the target, as the receiver makes it (or, in a dry run, would make it).
/// Front ends render it (`mover copy -i` as rsync's itemize letters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What happens to the entry.
    pub action: ChangeAction,
    /// What the entry is (for a deletion: what is on the target).
    pub kind: ChangeKind,
    /// Path relative to the volume root.
    pub path: String,
    /// What differs in an update (empty for a creation or a deletion).
    pub differs: Differs,
    /// Entries a deletion removes: 1, plus everything beneath a directory.
    pub entries: u64,
}

/// What happens to an entry of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    /// It is new.
    Create,
    /// Its content changes (and possibly its metadata).
    Update,
    /// Only its metadata changes.
    Metadata,
    /// It goes: the source lacks it.
    Delete,
}

/// The type of a changed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Another name of a regular file (a hard link).
    Hardlink,
    /// A character or block device.
    Device,
    /// A FIFO or a socket.
    Special,
}

/// What differs between an entry on the target and the source's version of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Differs {
    /// Size (of a file), or target (of a symlink).
    pub size: bool,
    /// Modification time.
    pub time: bool,
    /// Permission bits.
    pub perms: bool,
    /// Owner.
    pub owner: bool,
    /// Group.
    pub group: bool,
    /// Extended attributes (when they were compared).
    pub xattrs: bool,
}

/// Where a blob of an image copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobState {
    /// Bytes are flowing.
    Copying,
    /// Streamed and verified.
    Copied,
    /// Already on the target.
    Skipped,
    /// Mounted from another repository of the target registry.
    Mounted,
}

/// Receives events. Implementations must be cheap: they are called from transfer threads.
pub trait Reporter: Send + Sync {
    /// Called for every event.
    fn on_event(&self, event: &Event);

    /// Whether totals are wanted before the transfer gets going (a progress bar's ETA): they
    /// then come from a separate metadata walk. Otherwise they arrive when the scan ends.
    fn wants_early_totals(&self) -> bool {
        false
    }
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Reporter for NoProgress {
    fn on_event(&self, _event: &Event) {}
}

/// A reporter that writes events to the `tracing` log.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogProgress;

impl Reporter for LogProgress {
    fn on_event(&self, event: &Event) {
        match event {
            Event::Warning { message } => tracing::warn!("{message}"),
            other => tracing::debug!(?other, "progress"),
        }
    }
}

/// A shared reporter handle.
pub type SharedReporter = Arc<dyn Reporter>;

/// What a volume copy did, reported at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Summary {
    /// Regular files in the source (hard links counted once per name).
    pub files_total: u64,
    /// Files whose content was sent.
    pub files_transferred: u64,
    /// Bytes of regular-file content in the source.
    pub bytes_total: u64,
    /// Content bytes sent (before compression).
    pub bytes_transferred: u64,
    /// Bytes written to the tunnel (frames, after compression, before TLS).
    pub bytes_on_wire: u64,
    /// Entries of every type in the source.
    pub entries_total: u64,
    /// Entries deleted on the target because the source lacks them.
    pub entries_deleted: u64,
    /// Wall time in seconds.
    pub elapsed_s: f64,
    /// Errors: each names a path and what went wrong. Non-empty means the copy failed.
    pub errors: Vec<String>,
    /// Warnings (stage runs: files that vanished or changed; policy skips).
    pub warnings: Vec<String>,
    /// Metadata that could not be preserved, e.g. ownership when the receiver is not root.
    pub not_preserved: Vec<String>,
    /// A dry run: nothing was written; `files_transferred`, `bytes_transferred` (the files'
    /// sizes) and `entries_deleted` say what a copy would do.
    pub dry_run: bool,
}

impl Summary {
    /// True when the copy completed without errors.
    #[must_use]
    pub fn is_success(&self) -> bool {
        self.errors.is_empty()
    }
}
