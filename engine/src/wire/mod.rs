//! The framed wire protocol spoken between a source and a target (and a coordinator).
//!
//! # Byte layout
//!
//! Everything travels inside a mutual-TLS stream (see [`crate::tunnel`]). The stream is a
//! sequence of frames:
//!
//! ```text
//! frame    := length:u32be body[length]          length <= MAX_FRAME (checked before allocating)
//! ```
//!
//! The first frame each way is the handshake. Its body starts with a fixed preamble that never
//! changes between protocol versions, so two different versions can always tell each other so:
//!
//! ```text
//! hello    := "MOVR" version:u32be postcard(Hello)        client -> server
//! reply    := "MOVR" version:u32be status:u8 postcard(..) server -> client
//!             status 0: postcard(Welcome)   status 1: postcard(RemoteError)
//! ```
//!
//! A side that reads a preamble with another version stops there and reports both versions
//! (the seed's rule: the same version on every cluster). After the handshake every frame body
//! is one [`Message`] encoded with postcard (<https://postcard.jamesmunns.com/wire-format>):
//! the variant index as a varint, then the fields in declaration order, integers as varints,
//! byte strings as a varint length followed by the bytes. Frame bodies are decoded only after
//! the whole body has arrived ("complete?" then "parse"), so a decoder never reads past a frame.
//!
//! Data chunks ([`DataChunk`]) carry at most [`CHUNK_SIZE`] bytes of file content, either raw or
//! as one independent zstd frame whose decompressed size must equal `raw_len`.

mod frame;
mod message;

pub use frame::{
    DataChunkRef, FrameReader, FrameWriter, Incoming, append_message, decode_incoming, decode_message, encode_data, encode_message,
};
// What only tests, fuzzing and hostile peers build frames or messages with.
#[cfg(any(test, fuzzing, feature = "test-util"))]
pub use frame::{MAX_FRAME, decode_hello, decode_reply, encode_hello};
#[cfg(any(test, fuzzing, feature = "test-util"))]
pub use message::DataChunk;
pub use message::{
    Compression, DeltaChunk, Entry, EntryKind, FileFailure, Hello, HelloReply, LANE_TOKEN_LEN, MAX_STREAMS, Message, ReceiverReport,
    RemoteError, RemoteErrorKind, Request, SyncOptions, Timestamp, VolumeStatus, Welcome, Xattr,
};

/// The protocol version this build speaks. Both ends of a session must speak the same one.
// Version 2: [`Welcome`] carries the agent's software version and its volumes' state.
// Version 3: changed files travel against an rsync signature of the basis ([`Message::NeedBlocks`]),
// shifted content as [`Message::Delta`]s.
// Version 4: a session's content may be spread over several connections
// ([`SyncOptions::streams`], [`Request::JoinLane`]).
// Version 5: [`Message::FileEnd`] carries the file's digest (`sync::digest`: blake3 over its
// 1 MiB pieces' blake3 and its size) instead of the blake3 of its bytes.
// Version 6: [`Welcome::notice`] (a stale session the agent ended to admit this one);
// [`SyncOptions::cross_mounts`]; [`SyncOptions::itemize`] and [`SyncOptions::dry_run`],
// [`Message::Change`] (the receiver's changes, forwarded as [`crate::progress::Event::Change`]),
// `Summary::dry_run`; [`SyncOptions::excludes`].
// Version 7: [`RemoteErrorKind::NoSpace`], [`RemoteErrorKind::Internal`] and
// [`RemoteErrorKind::MassDelete`], so that a full disk, a bug and the mass-delete guard keep
// their kind across the wire (the front end's remedies are keyed on kinds, never on text).
// Version 8: in a session over several streams, [`Message::EndOfEntries`] ends the tree as soon as
// the scan is over, before the receiver's verdicts are in (the files they ask for then come on
// the further lanes); the further lanes join beside the tree's first entries.
// Version 9: [`Request::GrantPodVolume`] and [`Request::RevokeVolume`] (the node strategy's
// grants at run time, by pod UID and volume name).
// Version 10: [`Request::Push`]'s `target` may be `SERVER_NAME@HOST:PORT` (a target agent behind
// a TLS-passthrough router, picked by SNI: `tunnel::split_server_name`); a version 9 agent would
// dial it as a host name.
// Version 11: the client picks the lane token ([`Request::Receive`]'s and
// [`Request::JoinSession`]'s `lanes`) and says its first entries right after its hello, without
// waiting for the welcome (which is the first frame it reads); the agent holds a lane until
// its session is admitted.
pub const PROTOCOL_VERSION: u32 = 11;

/// Largest amount of file content carried by one [`DataChunk`].
pub const CHUNK_SIZE: usize = 1 << 20;

/// Magic bytes at the start of both handshake frames.
pub const MAGIC: &[u8; 4] = b"MOVR";

/// What can go wrong while reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The underlying stream failed.
    #[error("connection failed while {context}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The peer announced a frame larger than we accept.
    #[error("peer sent a frame of {length} bytes, more than the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced length.
        length: usize,
        /// Our limit.
        limit: usize,
    },
    /// The peer closed the connection.
    #[error("peer closed the connection {context}")]
    Closed {
        /// Where in the session this happened.
        context: &'static str,
    },
    /// A frame body did not decode as the expected message.
    #[error("peer sent a malformed {what}")]
    Malformed {
        /// What we tried to decode.
        what: &'static str,
        /// The decoder's complaint.
        #[source]
        source: postcard::Error,
    },
    /// The handshake preamble was not mover's.
    #[error("peer is not speaking the mover protocol (bad handshake preamble)")]
    NotMover,
    /// The two ends speak different protocol versions.
    #[error(
        "protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs}; \
         run the same mover version on every cluster"
    )]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The peer reported an error and ended the session.
    #[error("peer reported: {0}")]
    Remote(RemoteError),
}

impl WireError {
    /// True when retrying the same operation later may succeed (the connection broke).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, WireError::Io { .. } | WireError::Closed { .. })
    }
}

/// Result alias for the wire module.
pub type Result<T, E = WireError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
