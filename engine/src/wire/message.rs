//! The typed messages of the protocol. The field order is the wire order (postcard).

use serde::{Deserialize, Serialize};

/// The client's first words: who it wants to talk to and what for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The migration this session belongs to (the fingerprint of its CA).
    pub migration_id: String,
    /// What the client asks of the server.
    pub request: Request,
}

/// What a client may ask of an agent. Which role may ask what is enforced by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Coordinator to target agent: receive `volume` on this very connection; the coordinator
    /// itself is the source.
    Receive {
        /// Target volume name.
        volume: String,
        /// Session options.
        options: SyncOptions,
        /// The token the further lanes join with ([`Request::JoinLane`]) when
        /// [`SyncOptions::streams`] > 1: [`LANE_TOKEN_LEN`] random bytes the client picked, so
        /// that its lanes say hello beside this one instead of after its welcome. Empty for one
        /// stream.
        #[serde(with = "serde_bytes")]
        lanes: Vec<u8>,
    },
    /// Coordinator to target agent: open a session that a source agent will push into.
    OpenSession {
        /// Target volume name.
        volume: String,
        /// Session options.
        options: SyncOptions,
    },
    /// Source agent to target agent: receive into the session a coordinator opened.
    JoinSession {
        /// The token the target handed to the coordinator.
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
        /// The source agent's lane token, as [`Request::Receive`]'s `lanes`.
        #[serde(with = "serde_bytes")]
        lanes: Vec<u8>,
    },
    /// Coordinator to source agent: push `volume` to the target agent at `target`.
    Push {
        /// Source volume name.
        volume: String,
        /// `HOST:PORT` of the target agent, as the source agent reaches it; `SERVER_NAME@HOST:PORT`
        /// when it is behind an SNI router (see [`crate::tunnel::split_server_name`]).
        target: String,
        /// The token of the session opened on the target.
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
        /// The HTTP CONNECT proxy to dial the target through, if any.
        proxy: Option<crate::tunnel::Proxy>,
        /// Session options.
        options: SyncOptions,
    },
    /// Anyone: report version and volumes (used by preflight checks).
    Ping,
    /// The source side of a session with [`SyncOptions::streams`] > 1, beside its first
    /// connection: carry lane `lane` (1..streams) of that session's content. Asked with the
    /// role the first connection had; the agent holds it (up to its lane join timeout) until
    /// the first connection's request is admitted.
    JoinLane {
        /// The lane token the first connection's request carried.
        #[serde(with = "serde_bytes")]
        token: Vec<u8>,
        /// Which lane this connection is.
        lane: u32,
    },
    /// Coordinator to a node agent: serve volume `volume` of the pod whose UID is `pod_uid`, as
    /// the kubelet mounted it on this node, under the name `name`. The agent finds the
    /// directory itself, beneath its kubelet pods directory; a request never names a path.
    GrantPodVolume {
        /// The name sessions use for the volume.
        name: String,
        /// The pod's UID (`metadata.uid`).
        pod_uid: String,
        /// The volume's directory name under the pod: the PV's name for CSI and in-tree
        /// persistent volumes.
        volume: String,
        /// Only readable: the agent will not receive into it.
        read_only: bool,
    },
    /// Coordinator to a node agent: withdraw a grant made by [`Request::GrantPodVolume`].
    RevokeVolume {
        /// The volume's name.
        name: String,
    },
}

/// Options agreed for one volume session: the wire form of [`crate::CopyOptions`] (see there for
/// each field), sent in the request that opens the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOptions {
    /// Copy `security.selinux` labels.
    pub selinux: bool,
    /// Recreate device nodes (root only).
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
    /// Update changed files in place instead of through a temporary copy (for files too big to
    /// duplicate). Still verified; a failed or interrupted run leaves such a file half updated
    /// until the next run repairs it.
    pub inplace: bool,
    /// Connections the session's file content is spread over (1..=[`MAX_STREAMS`]); the first
    /// also carries the tree and the verdicts.
    pub streams: u32,
    /// The sender's scan enters file systems mounted inside the source volume. Off, a mount
    /// point there is skipped and reported, as `du -x` and `rsync -x` stay on one file system;
    /// the receiver never writes or deletes across a mount point inside the target either way.
    pub cross_mounts: bool,
    /// Report every change the receiver makes ([`Message::Change`]), not only deletions.
    pub itemize: bool,
    /// Write nothing on the target: verdicts and the deletion pass (with its guard) run as
    /// usual, but every file is answered [`Message::Skip`] and each change is only reported.
    pub dry_run: bool,
    /// Exclude patterns with rsync's rules ([`crate::exclude`]): the sender leaves matching
    /// entries out, and the receiver never deletes matching entries of the target. At most
    /// [`crate::exclude::MAX_EXCLUDES`] of [`crate::exclude::MAX_EXCLUDE_LEN`] bytes each.
    pub excludes: Vec<Vec<u8>>,
}

/// Length of a lane token ([`Request::Receive`]'s `lanes`): 256 random bits.
pub const LANE_TOKEN_LEN: usize = 32;

/// Most connections one volume session may use.
pub const MAX_STREAMS: u32 = 16;

impl Default for SyncOptions {
    fn default() -> Self {
        crate::CopyOptions::default().into()
    }
}

/// How the sender compresses data chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// Never.
    Off,
    /// Always try this zstd level (1..=19).
    Level(i32),
    /// Pick the level from how the link keeps up (the `compress` module's level control).
    Auto,
}

/// The server's answer to a successful [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Welcome {
    /// A session token, when the request was [`Request::OpenSession`].
    #[serde(with = "serde_bytes")]
    pub token: Vec<u8>,
    /// The volumes the agent serves (answer to [`Request::Ping`]).
    pub volumes: Vec<String>,
    /// The agent's software version (`mover-agent --version`); answer to [`Request::Ping`].
    pub software_version: String,
    /// The state of each volume (answer to a coordinator's [`Request::Ping`], for preflight).
    pub volume_status: Vec<VolumeStatus>,
    /// Something the user should hear about the session just admitted: a stale session of the
    /// same migration that the agent ended to admit this one.
    pub notice: Option<String>,
}

/// What preflight needs to know about one volume of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VolumeStatus {
    /// The volume's name.
    pub name: String,
    /// Granted read-only (`NAME=PATH:ro`).
    pub read_only: bool,
    /// Why its root cannot be listed; `None` when it can.
    pub unreadable: Option<String>,
    /// Why a file cannot be created in its root (probed with a temporary file, removed at
    /// once); `None` when it can. Always `None` for read-only volumes, which are never written.
    pub unwritable: Option<String>,
    /// Bytes free for an unprivileged writer on its file system.
    pub free_bytes: u64,
    /// Size of its file system.
    pub size_bytes: u64,
    /// Bytes the volume's tree occupies (allocated blocks; the file system's use when the
    /// volume is a mount point of its own).
    pub used_bytes: u64,
    /// False when `used_bytes` is a lower bound (the walk stopped at its time budget or hit
    /// unreadable directories).
    pub used_complete: bool,
}

/// The server's answer to a [`Hello`], after the version preamble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloReply {
    /// Go ahead.
    Welcome(Welcome),
    /// Refused.
    Refused(RemoteError),
}

/// A timestamp with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds, below 10^9.
    pub nsec: u32,
}

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Attribute name, e.g. `user.comment`.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Raw value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// The type of a tree entry, with what only that type has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file of `size` bytes. `leader` marks the first name of an inode with several
    /// names: later names arrive as [`EntryKind::Hardlink`] with this entry's id.
    File {
        /// Size in bytes.
        size: u64,
        /// First of several hard links to this inode.
        leader: bool,
    },
    /// Another name for the regular file sent earlier as entry `leader`.
    Hardlink {
        /// Id of the leader entry.
        leader: u64,
    },
    /// A symbolic link; the target is raw bytes and is never followed.
    Symlink {
        /// Link target.
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket (recreated as an unbound socket node, as rsync `--specials` does).
    Socket,
    /// A character device.
    CharDevice {
        /// Device number.
        rdev: u64,
    },
    /// A block device.
    BlockDevice {
        /// Device number.
        rdev: u64,
    },
}

/// One entry of the source tree, with its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Sender-chosen id, increasing; replies and data refer to it.
    pub id: u64,
    /// Path relative to the volume root, raw bytes, `/`-separated.
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    /// Type.
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (no type bits).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Access time.
    pub atime: Timestamp,
    /// Extended attributes to recreate.
    pub xattrs: Vec<Xattr>,
}

/// A piece of a file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataChunk {
    /// The file's entry id.
    pub id: u64,
    /// Offset of this chunk in the file.
    pub offset: u64,
    /// Length of the content once decompressed; at most [`super::CHUNK_SIZE`].
    pub raw_len: u32,
    /// Whether `bytes` is one zstd frame (else raw content).
    pub compressed: bool,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// Why the sender could not deliver a file it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileFailure {
    /// It no longer exists.
    Vanished,
    /// It changed while it was being read.
    Changed,
    /// It could not be read (permissions, I/O error).
    Unreadable,
}

/// What the receiver tells the sender at the end of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReceiverReport {
    /// Files written (new or replaced); in a dry run, those that would be.
    pub files_written: u64,
    /// Content bytes written; in a dry run, the sizes of the files that would be written.
    pub bytes_written: u64,
    /// Entries deleted because the source lacks them (a deleted directory counts with its
    /// contents); in a dry run, those that would be.
    pub entries_deleted: u64,
    /// Metadata the receiver could not preserve, once per kind (e.g. ownership when not root).
    pub not_preserved: Vec<String>,
    /// Entries the receiver skipped by policy, with the reason.
    pub warnings: Vec<String>,
}

/// The kind of an error reported by the peer, so the other side can classify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteErrorKind {
    /// The request named a volume the agent does not serve.
    UnknownVolume,
    /// The request would write to a read-only volume.
    ReadOnly,
    /// The certificate's role may not make this request.
    Forbidden,
    /// Another session is receiving into this volume.
    Busy,
    /// A session token that is unknown or expired.
    BadToken,
    /// The peer broke the protocol (bad path, bad order, bad sizes, bad hash).
    Protocol,
    /// Content did not match its digest.
    Verification,
    /// A file system operation failed on the peer.
    Io,
    /// The peer is shutting down.
    ShuttingDown,
    /// Anything else.
    Other,
    /// The peer's file system is full, or its quota used up.
    NoSpace,
    /// A bug on the peer (one of its threads panicked): never retried.
    Internal,
    /// The peer refused to delete more than half of the target (the mass-delete guard).
    MassDelete,
}

/// An error as carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    /// Classification.
    pub kind: RemoteErrorKind,
    /// Human-readable message, naming the file or volume concerned.
    pub message: String,
}

impl RemoteError {
    /// Builds a remote error.
    pub fn new(kind: RemoteErrorKind, message: impl Into<String>) -> Self {
        RemoteError { kind, message: message.into() }
    }
}

impl RemoteErrorKind {
    /// True when a later attempt may succeed: the volume was busy, the peer was shutting down,
    /// a file operation failed, or the disk was full (once space is freed). `Internal` never is,
    /// and `Other` is not: its cause is unknown here.
    #[must_use]
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            RemoteErrorKind::Busy | RemoteErrorKind::ShuttingDown | RemoteErrorKind::Io | RemoteErrorKind::NoSpace
        )
    }
}

/// Every message after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Sender to receiver: the next tree entry. Entries come depth first (a directory before
    /// what is in it), and the names within one directory sorted bytewise, each once: the
    /// receiver finds what to delete by walking its own sorted listing alongside, and ends the
    /// session on a name out of order.
    Entry(Entry),
    /// Sender to receiver: no more entries. Over one stream, all requested content was sent
    /// before this; over several, it comes once the scan is over, the verdicts still on their
    /// way, and the content they ask for follows on the further lanes (none on the first).
    EndOfEntries,
    /// Receiver to sender: send the content of this file.
    Need {
        /// Entry id.
        id: u64,
    },
    /// Receiver to sender: send only what this file's basis lacks (see
    /// [`crate::sync::blocks`]): the blocks whose signature differs, and everything past them.
    NeedBlocks {
        /// Entry id.
        id: u64,
        /// The rsync signature (`fast_rsync`'s serialized MD4 format) of the receiver's basis.
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
        /// Whether the sender may send [`Message::Delta`]s (content copied from elsewhere in the
        /// basis). Not when the basis is the file being written (a resumed partial, `--inplace`).
        shifts: bool,
    },
    /// Receiver to sender: this file is up to date, no content needed.
    Skip {
        /// Entry id.
        id: u64,
    },
    /// Sender to receiver: file content.
    Data(DataChunk),
    /// Sender to receiver: the file is complete; check it against this digest.
    FileEnd {
        /// Entry id.
        id: u64,
        /// The content's digest (`crate::sync::digest`: blake3 over its 1 MiB pieces' blake3 and size).
        blake3: [u8; 32],
    },
    /// Sender to receiver: the file could not be delivered.
    FileFailed {
        /// Entry id.
        id: u64,
        /// Why.
        reason: FileFailure,
    },
    /// Receiver to sender: the session is complete.
    Done(ReceiverReport),
    /// Source agent to coordinator: a progress event, forwarded unchanged.
    Progress(crate::progress::Event),
    /// Source agent to coordinator: the final summary of a push.
    Summary(crate::progress::Summary),
    /// Either way: a fatal error; the session ends.
    Error(RemoteError),
    /// Sender to receiver: this path exists on the source but could not be read; keep whatever
    /// the target has there (never delete it as missing).
    Keep {
        /// Path relative to the volume root.
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    /// Sender to receiver: file content as an rsync delta against a window of the basis.
    Delta(DeltaChunk),
    /// Receiver to sender: a change made on the target (in a dry run: one it would make).
    /// Deletions always; the other changes with [`SyncOptions::itemize`] or a dry run.
    Change(crate::progress::Change),
}

/// `len` bytes of a file at `offset`, as an rsync delta (`fast_rsync`'s format) whose copies
/// refer to the receiver's basis from `window_start` on (at most `window_len` bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaChunk {
    /// Entry id.
    pub id: u64,
    /// Where the content goes in the file.
    pub offset: u64,
    /// Bytes of content the delta makes.
    pub len: u32,
    /// Where the window starts in the basis.
    pub window_start: u64,
    /// Bytes of the window.
    pub window_len: u32,
    /// Bytes of the delta before compression.
    pub delta_len: u32,
    /// Whether `bytes` is zstd-compressed.
    pub compressed: bool,
    /// The delta.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl Message {
    /// A short name for error messages.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Message::Entry(_) => "Entry",
            Message::EndOfEntries => "EndOfEntries",
            Message::Need { .. } => "Need",
            Message::NeedBlocks { .. } => "NeedBlocks",
            Message::Delta(_) => "Delta",
            Message::Skip { .. } => "Skip",
            Message::Data(_) => "Data",
            Message::FileEnd { .. } => "FileEnd",
            Message::FileFailed { .. } => "FileFailed",
            Message::Done(_) => "Done",
            Message::Progress(_) => "Progress",
            Message::Summary(_) => "Summary",
            Message::Error(_) => "Error",
            Message::Keep { .. } => "Keep",
            Message::Change(_) => "Change",
        }
    }
}
