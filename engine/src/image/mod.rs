//! Direct image migration: copy images between registries and OCI layouts.
//!
//! `docker://` endpoints speak the distribution API over one `reqwest` client: the token flow,
//! manifests (a size cap while reading, the `Content-Type`), blob downloads (`Retry-After` on 429
//! and `Range` resume after a broken connection, with one hash pass), uploads (one streamed
//! `PUT`), cross-repository mounts (a `202` "upload started instead" reply) and listings. Its TLS
//! trust is the `trust` module's. `oci:` endpoints are OCI image layouts on disk.
//!
//! Every manifest is pushed with the exact bytes fetched, so every digest, the index's included,
//! is preserved. A copy resolves the source tag once, fetches everything after by digest, copies
//! blobs (largest first, several at a time, each streamed with its digest and size checked on the
//! fly and its last chunk held back until both match), then pushes child manifests before the
//! index and sets the target tag last: a lying source never gets a tag on the target.

mod auth;
mod copy;
mod layout;
pub mod manifest;
mod pace;
pub mod reference;
mod registry;
mod trust;

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

pub use self::auth::{AuthFileError, AuthFiles, CredentialLookup, Credentials, lookup_credentials};
pub use self::copy::{CopyOptions, ImageSummary, Session, TagFilter, copy_image, sync_images};
pub use self::layout::Layout;
pub use self::manifest::{ManifestError, Platform};
pub use self::pace::Pace;
pub use self::reference::{Digest, ImageRef, ParseError, Repository, Version};
pub use self::registry::{Registry, RegistryOptions, TlsMode};

/// A stream of blob bytes.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, ImageError>> + Send>>;

/// A manifest as fetched: its exact bytes, media type and digest (checked against the bytes).
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// The bytes, pushed unchanged.
    pub bytes: Bytes,
    /// The media type (`Content-Type` when pushed).
    pub media_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
}

/// Why an image operation failed. Messages name the registry or layout and what failed; the
/// remedies (which flag to pass) are the front end's.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A reference could not be parsed.
    #[error(transparent)]
    Reference(#[from] ParseError),
    /// A manifest was refused.
    #[error("{what}: {problem}")]
    Manifest {
        /// Which manifest.
        what: String,
        /// Why.
        problem: ManifestError,
    },
    /// Content does not match its digest: the source is corrupt or lying.
    #[error("{what}: content does not match its digest (expected {expected}, got {actual}); nothing was tagged")]
    DigestMismatch {
        /// Which blob or manifest.
        what: String,
        /// The digest it was referenced by.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// Content is longer or shorter than its descriptor says.
    #[error("{what}: expected {expected} bytes, the source sent {actual}{more}; nothing was tagged", more = if *.actual > *.expected { " or more" } else { "" })]
    SizeMismatch {
        /// Which blob or manifest.
        what: String,
        /// The descriptor's size.
        expected: u64,
        /// What arrived (reading stops at `expected + 1`).
        actual: u64,
    },
    /// Not found.
    #[error("{what} not found")]
    NotFound {
        /// What.
        what: String,
    },
    /// The registry refused the credentials (or wants some).
    #[error("registry `{registry}` refused access{detail}")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The registry's own words, if any.
        detail: String,
    },
    /// The server's certificate is not signed by a trusted authority.
    #[error("TLS to `{registry}` failed: certificate signed by unknown authority ({detail})")]
    UnknownAuthority {
        /// The registry (`host[:port]`; [`address`] gives its `host:port`).
        registry: String,
        /// The TLS library's words.
        detail: String,
    },
    /// The registry answered the TLS handshake in plain HTTP: it serves plain HTTP only.
    /// Never retried: it will answer the same way again.
    #[error("registry `{registry}` answered in plain HTTP, not TLS: it serves plain HTTP only ({detail})")]
    PlainHttp {
        /// The registry.
        registry: String,
        /// The TLS library's words.
        detail: String,
    },
    /// Another TLS failure (wrong name, expired).
    #[error("TLS to `{registry}` failed: {detail}")]
    Tls {
        /// The registry.
        registry: String,
        /// What went wrong.
        detail: String,
    },
    /// The HTTP proxy would not open a tunnel to the registry.
    #[error("the HTTP proxy did not open a tunnel to registry `{registry}` ({detail})")]
    Proxy {
        /// The registry.
        registry: String,
        /// What the HTTP stack said.
        detail: String,
    },
    /// An HTTP error status.
    #[error("registry `{registry}` answered {status} to {what}{detail}")]
    Status {
        /// The registry.
        registry: String,
        /// The request.
        what: String,
        /// The status.
        status: u16,
        /// The body's gist.
        detail: String,
        /// `Retry-After`, for 429 and 503.
        retry_after: Option<Duration>,
    },
    /// The connection failed or broke.
    #[error("cannot talk to registry `{registry}` ({what}): {detail}")]
    Transport {
        /// The registry.
        registry: String,
        /// The request.
        what: String,
        /// The cause chain.
        detail: String,
    },
    /// An OCI layout cannot be read or written.
    #[error("OCI layout `{}`: {reason}", path.display())]
    Layout {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The auth file could not be used.
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    /// The request makes no sense (e.g. a platform that is not in the index).
    #[error("{0}")]
    Invalid(String),
}

impl ImageError {
    /// How long to wait before retrying, or `None` if retrying cannot help.
    #[must_use]
    pub fn retry_after(&self, attempt: u32) -> Option<Duration> {
        let backoff = Duration::from_millis(250 << attempt.min(5));
        match self {
            ImageError::Transport { .. } => Some(backoff),
            ImageError::Status { status, retry_after, .. } if *status == 429 || *status >= 500 => {
                Some(retry_after.map_or(backoff, |after| after.clamp(Duration::from_millis(100), MAX_RETRY_AFTER)))
            }
            _ => None,
        }
    }
}

/// A registry's `host:port`: registries named without a port listen on 443.
#[must_use]
pub fn address(registry: &str) -> String {
    let has_port =
        registry.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) && !registry.ends_with(']');
    if has_port { registry.to_owned() } else { format!("{registry}:443") }
}

/// The longest `Retry-After` honoured; longer values are clamped.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Attempts per request or blob before giving up.
pub const ATTEMPTS: u32 = 5;

/// Runs `operation` until it succeeds, fails for good, or runs out of attempts.
pub(crate) async fn retry<T, F, Fut>(what: &str, mut operation: F) -> Result<T, ImageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ImageError>>,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                attempt += 1;
                match error.retry_after(attempt) {
                    Some(wait) if attempt < ATTEMPTS => {
                        tracing::info!("{what}: {error}; retrying in {wait:?} (attempt {attempt} of {ATTEMPTS})");
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Err(error),
                }
            }
        }
    }
}

/// One end of a copy: a repository in a registry, or an OCI layout.
#[derive(Clone)]
pub enum Endpoint {
    /// A registry repository.
    Registry {
        /// The registry client.
        registry: std::sync::Arc<Registry>,
        /// The repository name.
        repository: String,
    },
    /// An OCI layout.
    Layout(std::sync::Arc<Layout>),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Registry { registry, repository } => write!(f, "docker://{}/{repository}", registry.host()),
            Endpoint::Layout(layout) => write!(f, "oci:{}", layout.dir().display()),
        }
    }
}

impl Endpoint {
    /// Fetches a manifest by tag or digest (a digest is checked against the bytes).
    pub async fn manifest(&self, version: Option<&Version>, what: &str) -> Result<RawManifest, ImageError> {
        match self {
            Endpoint::Registry { registry, repository } => registry.manifest(repository, version, what).await,
            Endpoint::Layout(layout) => layout.manifest(version).await,
        }
    }

    /// Streams a blob from `offset`.
    pub async fn blob(&self, descriptor: &manifest::Descriptor, offset: u64) -> Result<BlobStream, ImageError> {
        match self {
            Endpoint::Registry { registry, repository } => registry.blob(repository, descriptor, offset).await,
            Endpoint::Layout(layout) => layout.blob(descriptor, offset).await,
        }
    }

    /// Whether the blob is already there.
    pub async fn has_blob(&self, descriptor: &manifest::Descriptor) -> Result<bool, ImageError> {
        match self {
            Endpoint::Registry { registry, repository } => registry.has_blob(repository, &descriptor.digest).await,
            Endpoint::Layout(layout) => Ok(layout.has_blob(descriptor).await),
        }
    }

    /// Stores a blob whose bytes arrive on `stream` (already verified by the caller as they
    /// pass; the stream fails instead of ending if they do not match).
    pub async fn put_blob(&self, descriptor: &manifest::Descriptor, stream: BlobStream) -> Result<(), ImageError> {
        match self {
            Endpoint::Registry { registry, repository } => registry.put_blob(repository, descriptor, stream).await,
            Endpoint::Layout(layout) => layout.put_blob(descriptor, stream).await,
        }
    }

    /// Stores a manifest; with a tag, the tag then points at it.
    pub async fn put_manifest(&self, manifest: &RawManifest, tag: Option<&str>) -> Result<(), ImageError> {
        match self {
            Endpoint::Registry { registry, repository } => registry.put_manifest(repository, manifest, tag).await,
            Endpoint::Layout(layout) => layout.put_manifest(manifest, tag).await,
        }
    }

    /// Preflight: readable (`push` false) or writable (`push` true) with our credentials. A
    /// layout target only needs its parent directory to exist.
    pub async fn check_access(&self, push: bool) -> Result<(), ImageError> {
        match self {
            Endpoint::Registry { registry, repository } => registry.check_access(repository, push).await,
            Endpoint::Layout(layout) if push => match layout.dir().parent() {
                Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => Err(ImageError::Layout {
                    path: layout.dir().to_owned(),
                    reason: "its parent directory does not exist".into(),
                }),
                _ => Ok(()),
            },
            Endpoint::Layout(layout) => layout.tags().await.map(drop),
        }
    }

    /// Tags of the repository or layout.
    pub async fn tags(&self) -> Result<Vec<String>, ImageError> {
        match self {
            Endpoint::Registry { registry, repository } => registry.tags(repository).await,
            Endpoint::Layout(layout) => layout.tags().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_always_names_a_port() {
        for (registry, expected) in [
            ("quay.example", "quay.example:443"),
            ("reg.example:5000", "reg.example:5000"),
            ("[::1]", "[::1]:443"),
            ("[::1]:5000", "[::1]:5000"),
        ] {
            assert_eq!(address(registry), expected);
        }
    }

    #[test]
    fn only_transient_failures_are_retried_and_retry_after_is_clamped() {
        let status = |status, retry_after| ImageError::Status {
            registry: "r".into(),
            what: "w".into(),
            status,
            detail: String::new(),
            retry_after,
        };
        assert!(status(404, None).retry_after(1).is_none());
        assert!(status(503, None).retry_after(1).is_some());
        assert_eq!(status(429, Some(Duration::from_secs(999_999_999))).retry_after(1), Some(MAX_RETRY_AFTER));
        assert!(ImageError::Unauthorized { registry: "r".into(), detail: String::new() }.retry_after(1).is_none());
        assert!(ImageError::PlainHttp { registry: "r".into(), detail: String::new() }.retry_after(1).is_none());
    }
}
