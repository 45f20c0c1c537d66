//! A registry endpoint: the distribution API over one `reqwest` client, whose TLS trust is
//! [`super::trust`]'s: the platform's roots, the CA bundle, and the bundle's certificates pinned.
//!
//! - here: the client, its options, sending a request of ours (authorized, retried once with a
//!   fresh token after a 401, paced), reading bodies with caps, and the errors;
//! - [`token`]: the `Authorization` header (the challenge, the token service, Basic);
//! - [`endpoints`]: the API calls (manifests, blobs, uploads, mounts, listings).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};

use super::auth::Credentials;
use super::manifest::{self, Descriptor};
use super::pace::{self, Pace};
use super::reference::{Digest, Version};
use super::{BlobStream, ImageError, RawManifest, retry};

mod endpoints;
mod token;

/// How to talk TLS to a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// HTTPS, verified against the system roots plus an optional CA bundle.
    Verify {
        /// A PEM bundle of extra trusted certificates (`mover certs fetch` writes one).
        ca_bundle: Option<PathBuf>,
        /// More trusted certificates, PEM, given in memory (a cluster's ingress CA, read from
        /// the cluster).
        ca_pem: Option<String>,
    },
    /// HTTPS without verification (`--src-tls-verify=false`): an explicit opt-out.
    NoVerify,
    /// Plain HTTP (`--src-plain-http`): only when asked.
    PlainHttp,
}

/// How to reach one registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// TLS.
    pub tls: TlsMode,
    /// Who we are.
    pub credentials: Credentials,
    /// An HTTP proxy, with its credentials; `HTTPS_PROXY`/`NO_PROXY` apply otherwise.
    pub proxy: Option<crate::tunnel::Proxy>,
    /// Cap on one manifest's size.
    pub max_manifest_bytes: usize,
    /// Deadlines for answers.
    pub pace: Pace,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            tls: TlsMode::Verify { ca_bundle: None, ca_pem: None },
            credentials: Credentials::Anonymous,
            proxy: None,
            max_manifest_bytes: manifest::MAX_MANIFEST_BYTES,
            pace: Pace::default(),
        }
    }
}

/// A connection to one registry host.
pub struct Registry {
    host: String,
    /// Where requests go: `host`, except Docker Hub's API host for `docker.io` (as oci-client
    /// resolves it, so credentials are filed under the same key).
    api_host: String,
    scheme: &'static str,
    http: reqwest::Client,
    credentials: Credentials,
    max_manifest_bytes: usize,
    pace: Pace,
    /// Set when the registry refused a mount for lack of rights (token registries grant the
    /// target repository only): later blobs skip the attempt.
    mounts_refused: std::sync::atomic::AtomicBool,
    /// `Authorization` values for our own requests, per repository and operation.
    authorizations: Mutex<HashMap<(String, bool), CachedAuthorization>>,
}

/// An `Authorization` value and when it was obtained.
type CachedAuthorization = (Option<HeaderValue>, Instant);

/// How long a bearer token obtained for our own requests is reused (registries hand out tokens
/// of at least 60 s).
const TOKEN_REUSE: Duration = Duration::from_secs(50);
/// Most entries a tag or catalog listing may have.
const MAX_LIST_ITEMS: usize = 100_000;
/// Most pages a tag or catalog listing may have: registries serve 100 or more entries a page
/// (we ask for 1000), so this reaches [`MAX_LIST_ITEMS`] with room to spare.
const MAX_LIST_PAGES: usize = 1_000;
const USER_AGENT: &str = concat!("mover/", env!("CARGO_PKG_VERSION"));

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("host", &self.host).field("scheme", &self.scheme).finish_non_exhaustive()
    }
}

impl Registry {
    /// Prepares a client for `host` (`name[:port]`). Reads the CA bundle now, so a bad bundle is
    /// reported before anything moves.
    pub fn new(host: &str, options: &RegistryOptions) -> Result<Registry, ImageError> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| ImageError::Invalid(format!("{what} `{host}`: {e}"));
        let mut http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120));
        match &options.tls {
            TlsMode::PlainHttp => {}
            TlsMode::NoVerify => http = http.tls_danger_accept_invalid_certs(true),
            TlsMode::Verify { ca_bundle, ca_pem } => {
                let mut bundle = match ca_bundle {
                    Some(path) => read_bundle(path)?,
                    None => Vec::new(),
                };
                if let Some(pem) = ca_pem {
                    bundle.extend(parse_bundle(pem.as_bytes()).map_err(|e| invalid("trusted certificates for", &e))?);
                }
                http = http.tls_backend_preconfigured(tls_config(bundle).map_err(|e| invalid("CA bundle for", &e))?);
            }
        }
        if let Some(proxy) = &options.proxy {
            let host = if proxy.host.contains(':') { format!("[{}]", proxy.host) } else { proxy.host.clone() };
            let mut via =
                reqwest::Proxy::all(format!("http://{host}:{}", proxy.port)).map_err(|e| invalid("proxy for", &e))?;
            // Credentials as a header, not in a URL: any byte of a password works.
            if let Some(user) = &proxy.user {
                via = via.basic_auth(user, proxy.password.as_deref().unwrap_or_default());
            }
            http = http.proxy(via);
        }
        let http = http.build().map_err(|e| invalid("registry", &e))?;
        // Docker Hub's API answers on its own host name, as the docker CLI and oci-client resolve it.
        let api_host = if host == "docker.io" { "index.docker.io".to_owned() } else { host.to_owned() };
        Ok(Registry {
            host: host.to_owned(),
            api_host,
            scheme: if options.tls == TlsMode::PlainHttp { "http" } else { "https" },
            http,
            credentials: options.credentials.clone(),
            max_manifest_bytes: options.max_manifest_bytes,
            pace: options.pace,
            authorizations: Mutex::new(HashMap::new()),
            mounts_refused: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `name[:port]`.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    fn url(&self, repository: &str, tail: &str) -> String {
        format!("{}://{}/v2/{repository}/{tail}", self.scheme, self.api_host)
    }

    /// Classifies a transport error (TLS trust problems are not retried and get a remedy).
    fn transport(&self, what: &str, error: &(dyn std::error::Error + 'static)) -> ImageError {
        let mut chain = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !chain.contains(&text) {
                chain.push_str(": ");
                chain.push_str(&text);
            }
            source = cause.source();
        }
        let lower = chain.to_lowercase();
        if lower.contains("invalidcontenttype") {
            // rustls read an HTTP answer where a TLS record should be.
            ImageError::PlainHttp { registry: self.host.clone(), detail: chain }
        } else if lower.contains("unknownissuer")
            || lower.contains("unknown issuer")
            || lower.contains("unknown authority")
        {
            ImageError::UnknownAuthority { registry: self.host.clone(), detail: chain }
        } else if lower.contains("tunnel error") {
            ImageError::Proxy { registry: self.host.clone(), detail: chain }
        } else if lower.contains("invalid peer certificate") || lower.contains("certificate") && lower.contains("tls") {
            ImageError::Tls { registry: self.host.clone(), detail: chain }
        } else {
            ImageError::Transport { registry: self.host.clone(), what: what.to_owned(), detail: chain }
        }
    }

    fn status_error(&self, what: &str, status: u16, body: &[u8], retry_after: Option<Duration>) -> ImageError {
        if status == 401 || status == 403 {
            let detail = gist(body);
            let detail = if detail.is_empty() { String::new() } else { format!(" ({detail})") };
            return ImageError::Unauthorized { registry: self.host.clone(), detail };
        }
        let detail = gist(body);
        ImageError::Status {
            registry: self.host.clone(),
            what: what.to_owned(),
            status,
            detail: if detail.is_empty() { String::new() } else { format!(": {detail}") },
            retry_after,
        }
    }

    /// Sends one request of ours with authorization, once more with a fresh token after a 401.
    async fn send(
        &self,
        repository: &str,
        push: bool,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ImageError> {
        for fresh in [false, true] {
            if fresh {
                self.forget_authorization(repository, push);
            }
            let mut request = build(&self.http);
            if let Some(value) = self.authorization(repository, push).await? {
                request = request.header(AUTHORIZATION, value);
            }
            let response = self.timed_send(what, request).await?;
            if response.status() != StatusCode::UNAUTHORIZED || fresh {
                return Ok(response);
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    /// `location` as an absolute URL when it is on this registry's own origin (a path, or an
    /// URL with our scheme, host and port, a default port written or not); `None` otherwise:
    /// our credentials go nowhere else.
    fn own_url(&self, location: &str) -> Option<String> {
        let origin = reqwest::Url::parse(&format!("{}://{}/", self.scheme, self.api_host)).ok()?;
        let url = origin.join(location).ok()?;
        (url.origin() == origin.origin()).then(|| url.to_string())
    }

    /// Cancels the upload a `202` reply opened (best effort, on our own origin only).
    async fn cancel_upload(&self, repository: &str, response: &reqwest::Response) {
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).and_then(|l| self.own_url(l));
        if let Some(location) = location {
            let _ = self.send_once(repository, true, "cancel upload", |http| http.delete(&location)).await;
        }
    }

    /// Sends one request of ours with authorization, without refreshing a refused token.
    async fn send_once(
        &self,
        repository: &str,
        push: bool,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ImageError> {
        let mut request = build(&self.http);
        if let Some(value) = self.authorization(repository, push).await? {
            request = request.header(AUTHORIZATION, value);
        }
        self.timed_send(what, request).await
    }

    /// Sends a request whose response headers must arrive within the pace's deadline.
    async fn timed_send(&self, what: &str, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ImageError> {
        match pace::headers_within(self.pace, request.send()).await {
            Ok(response) => response.map_err(|e| self.transport(what, &e)),
            Err(detail) => Err(ImageError::Transport { registry: self.host.clone(), what: what.to_owned(), detail }),
        }
    }

    /// A response body at the pace's minimum rate.
    fn body(&self, what: &str, response: reqwest::Response) -> BlobStream {
        let (host, what) = (self.host.clone(), what.to_owned());
        let slow = {
            let (host, what) = (host.clone(), what.clone());
            move |detail| ImageError::Transport { registry: host.clone(), what: what.clone(), detail }
        };
        let chunks = response.bytes_stream().map_err(move |e| ImageError::Transport {
            registry: host.clone(),
            what: what.clone(),
            detail: chain(&e),
        });
        pace::min_rate(self.pace, Box::pin(chunks), slow)
    }

    /// Reads a response body at the minimum rate, stopping after `cap` bytes.
    async fn read_capped(&self, response: reqwest::Response, cap: usize, what: &str) -> Result<Vec<u8>, ImageError> {
        let mut body = Vec::new();
        let mut stream = self.body(what, response);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let room = cap.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= cap {
                break;
            }
        }
        Ok(body)
    }

    async fn fail(&self, what: &str, response: reqwest::Response) -> ImageError {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = self.read_capped(response, 4096, what).await.unwrap_or_default();
        self.status_error(what, status, &body, retry_after)
    }
}

/// The TLS client configuration for a registry: see [`super::trust`].
fn tls_config(bundle: Vec<Vec<u8>>) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = crate::tunnel::provider();
    let bundle = bundle.into_iter().map(rustls::pki_types::CertificateDer::from).collect();
    let verifier = super::trust::BundleVerifier::new(bundle, provider.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An error and its causes, in one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut detail = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}

/// The first line or so of an error body, for messages.
fn gist(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks a fetched manifest against the digest it was asked for and parses its type.
pub(super) fn finish_manifest(
    what: &str,
    bytes: Bytes,
    content_type: &str,
    version: Option<&Version>,
) -> Result<RawManifest, ImageError> {
    let algorithm = match version {
        Some(Version::Digest(expected)) => expected.algorithm(),
        _ => super::reference::Algorithm::Sha256,
    };
    let digest = Digest::of(algorithm, &bytes);
    if let Some(Version::Digest(expected)) = version
        && *expected != digest
    {
        return Err(ImageError::DigestMismatch { what: what.to_owned(), expected: expected.clone(), actual: digest });
    }
    // The size was capped while reading, with the configured limit.
    let parsed = manifest::parse_with_limit(&bytes, Some(content_type), usize::MAX)
        .map_err(|problem| ImageError::Manifest { what: what.to_owned(), problem })?;
    Ok(RawManifest { bytes, media_type: parsed.media_type, digest })
}

/// Reads a PEM bundle into DER certificates; an unreadable or empty bundle is an error.
pub(crate) fn read_bundle(path: &std::path::Path) -> Result<Vec<Vec<u8>>, ImageError> {
    let bad = |reason: String| ImageError::Invalid(format!("CA bundle `{}`: {reason}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    parse_bundle(&pem).map_err(bad)
}

/// The certificates of a PEM bundle; at least one.
fn parse_bundle(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .map(|cert| cert.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM bundle ({e})"))?;
    if certs.is_empty() {
        return Err("no certificates in it (expected PEM `BEGIN CERTIFICATE` blocks)".into());
    }
    Ok(certs)
}
