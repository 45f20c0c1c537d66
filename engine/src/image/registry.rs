//! A registry endpoint: the distribution API over one `reqwest` client, whose TLS trust is
//! [`super::trust`]'s: the platform's roots, the CA bundle, and the bundle's certificates pinned.

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

/// How to talk TLS to a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// HTTPS, verified against the system roots plus an optional CA bundle.
    Verify {
        /// A PEM bundle of extra trusted certificates (`mover certs fetch` writes one).
        ca_bundle: Option<PathBuf>,
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
    /// `http://[user:pass@]host:port` of an HTTP proxy; `HTTPS_PROXY`/`NO_PROXY` apply otherwise.
    pub proxy: Option<String>,
    /// Cap on one manifest's size.
    pub max_manifest_bytes: usize,
    /// Deadlines for answers.
    pub pace: Pace,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            tls: TlsMode::Verify { ca_bundle: None },
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
            TlsMode::Verify { ca_bundle } => {
                let bundle = match ca_bundle {
                    Some(path) => read_bundle(path)?,
                    None => Vec::new(),
                };
                http = http.tls_backend_preconfigured(tls_config(bundle).map_err(|e| invalid("CA bundle for", &e))?);
            }
        }
        if let Some(proxy) = &options.proxy {
            http = http.proxy(reqwest::Proxy::all(proxy.as_str()).map_err(|e| invalid("proxy for", &e))?);
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

    /// The `Authorization` header for our own requests: a bearer token from the registry's
    /// challenge flow (run by oci-client), the user's token, or Basic credentials.
    async fn authorization(&self, repository: &str, push: bool) -> Result<Option<HeaderValue>, ImageError> {
        let key = (repository.to_owned(), push);
        if let Some((value, when)) = self.authorizations.lock().expect("lock").get(&key)
            && when.elapsed() < TOKEN_REUSE
        {
            return Ok(value.clone());
        }
        let value = match &self.credentials {
            Credentials::Token(token) => Some(format!("Bearer {token}")),
            // Not retried here: the request this authorizes is retried as a whole.
            credentials => match self.challenge().await? {
                Challenge::Bearer { realm, service } => {
                    Some(format!("Bearer {}", self.token(&realm, service.as_deref(), repository, push).await?))
                }
                Challenge::Basic | Challenge::None => match credentials {
                    Credentials::Basic { user, password } => {
                        use base64::Engine;
                        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                        Some(format!("Basic {pair}"))
                    }
                    _ => None,
                },
            },
        };
        let value = value
            .map(|text| {
                let mut value = HeaderValue::from_str(&text).map_err(|_| {
                    ImageError::Invalid(format!("credentials for `{}` contain characters HTTP cannot carry", self.host))
                })?;
                value.set_sensitive(true);
                Ok::<_, ImageError>(value)
            })
            .transpose()?;
        self.authorizations.lock().expect("lock").insert(key, (value.clone(), Instant::now()));
        Ok(value)
    }

    fn forget_authorization(&self, repository: &str, push: bool) {
        self.authorizations.lock().expect("lock").remove(&(repository.to_owned(), push));
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

    /// What `GET /v2/` asks of clients: which authentication, and where to get a token.
    async fn challenge(&self) -> Result<Challenge, ImageError> {
        let url = format!("{}://{}/v2/", self.scheme, self.api_host);
        let what = "GET /v2/ (authentication challenge)";
        let response = self.timed_send(what, self.http.get(&url)).await?;
        let header = response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        Ok(Challenge::parse(header))
    }

    /// A bearer token from the registry's token service, for pulling (and pushing) `repository`,
    /// obtained with our Basic credentials when we have some.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        repository: &str,
        push: bool,
    ) -> Result<String, ImageError> {
        #[derive(serde::Deserialize)]
        struct TokenReply {
            token: Option<String>,
            access_token: Option<String>,
        }
        let scope = format!("repository:{repository}:{}", if push { "pull,push" } else { "pull" });
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let what = "get a token (authentication)";
        let mut request = self.http.get(realm).query(&query);
        if let Credentials::Basic { user, password } = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = self.timed_send(what, request).await?;
        if response.status() != StatusCode::OK {
            let body = self.read_capped(response, 4096, what).await.unwrap_or_default();
            let detail = gist(&body);
            return Err(ImageError::Unauthorized {
                registry: self.host.clone(),
                detail: if detail.is_empty() { String::new() } else { format!(" ({detail})") },
            });
        }
        let body = self.read_capped(response, 1 << 20, what).await?;
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| {
            ImageError::Invalid(format!(
                "the token service of `{}` answered something that is not a token: {e}",
                self.host
            ))
        })?;
        reply.token.or(reply.access_token).ok_or_else(|| {
            ImageError::Invalid(format!("the token service of `{}` answered without a token", self.host))
        })
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

    /// GETs a JSON list page by page, following `Link: <...>; rel="next"` on this registry's
    /// own origin; each page is read with a cap, and the whole list is capped too: in entries,
    /// in pages (empty pages would otherwise cost nothing), and a page asked for twice ends the
    /// listing (a `next` link that leads back would loop forever).
    async fn paged_list(
        &self,
        repository: &str,
        first: String,
        field: &str,
        what: &str,
    ) -> Result<Vec<String>, ImageError> {
        const PAGE_CAP: usize = 8 << 20;
        let mut next = Some(first);
        let mut items = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(url) = next.take() {
            if seen.len() >= MAX_LIST_PAGES {
                return Err(ImageError::Invalid(format!(
                    "{what}: `{}` sent more than {MAX_LIST_PAGES} pages; the listing was abandoned",
                    self.host
                )));
            }
            if !seen.insert(url.clone()) {
                return Err(ImageError::Invalid(format!(
                    "{what}: `{}` links back to a page it already sent (`{url}`); the listing was abandoned",
                    self.host
                )));
            }
            let response = retry(what, || async {
                let response = self.send(repository, false, what, |http| http.get(&url)).await?;
                match response.status() {
                    StatusCode::OK => Ok(response),
                    StatusCode::NOT_FOUND => {
                        Err(ImageError::NotFound { what: format!("repository `{}/{repository}`", self.host) })
                    }
                    _ => Err(self.fail(what, response).await),
                }
            })
            .await?;
            next = response
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|link| {
                    link.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(u, _)| u.to_owned())
                })
                .and_then(|link| self.own_url(&link));
            let body = self.read_capped(response, PAGE_CAP + 1, what).await?;
            if body.len() > PAGE_CAP {
                return Err(ImageError::Invalid(format!(
                    "{what}: a page of more than {PAGE_CAP} bytes from `{}`",
                    self.host
                )));
            }
            let page: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                ImageError::Invalid(format!("{what}: `{}` answered something that is not JSON: {e}", self.host))
            })?;
            let page_items = page.get(field).and_then(|v| v.as_array()).map(Vec::as_slice).unwrap_or_default();
            items.extend(page_items.iter().filter_map(|v| v.as_str()).map(str::to_owned));
            if items.len() > MAX_LIST_ITEMS {
                return Err(ImageError::Invalid(format!(
                    "{what}: more than {MAX_LIST_ITEMS} entries from `{}`",
                    self.host
                )));
            }
        }
        Ok(items)
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

    /// GET a manifest with a size cap; a digest reference is checked against the bytes.
    pub async fn manifest(
        &self,
        repository: &str,
        version: Option<&Version>,
        what: &str,
    ) -> Result<RawManifest, ImageError> {
        let reference = match version {
            Some(Version::Tag(tag)) => tag.clone(),
            Some(Version::Digest(digest)) => digest.to_string(),
            None => "latest".to_owned(),
        };
        let url = self.url(repository, &format!("manifests/{reference}"));
        let request_what = format!("GET manifest {repository}:{reference}");
        retry(&request_what, || async {
            let response = self
                .send(repository, false, &request_what, |http| {
                    http.get(&url).header(ACCEPT, manifest::ACCEPTED.join(", "))
                })
                .await?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => {
                    return Err(ImageError::NotFound {
                        what: format!("manifest `{reference}` in `{}/{repository}`", self.host),
                    });
                }
                _ => return Err(self.fail(&request_what, response).await),
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_default();
            if response.content_length().is_some_and(|n| n > self.max_manifest_bytes as u64) {
                return Err(ImageError::Manifest {
                    what: what.to_owned(),
                    problem: manifest::ManifestError::TooLarge { limit: self.max_manifest_bytes },
                });
            }
            let bytes = self.read_capped(response, self.max_manifest_bytes + 1, &request_what).await?;
            if bytes.len() > self.max_manifest_bytes {
                return Err(ImageError::Manifest {
                    what: what.to_owned(),
                    problem: manifest::ManifestError::TooLarge { limit: self.max_manifest_bytes },
                });
            }
            let media_type = content_type.split(';').next().unwrap_or_default().trim().to_owned();
            finish_manifest(what, Bytes::from(bytes), &media_type, version)
        })
        .await
    }

    /// Streams a blob from `offset` (a `Range` request past 0).
    pub async fn blob(&self, repository: &str, descriptor: &Descriptor, offset: u64) -> Result<BlobStream, ImageError> {
        let url = self.url(repository, &format!("blobs/{}", descriptor.digest));
        let what = format!("GET blob {}", descriptor.digest.short());
        let response = self
            .send(repository, false, &what, |http| {
                let request = http.get(&url);
                if offset > 0 { request.header(RANGE, format!("bytes={offset}-")) } else { request }
            })
            .await?;
        let skip = match response.status() {
            StatusCode::OK => offset,
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                // The range must start where we asked, or the bytes would land in the wrong place.
                let start = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(ImageError::Transport {
                        registry: self.host.clone(),
                        what,
                        detail: format!("asked for bytes from {offset}, got a range starting at {start:?}"),
                    });
                }
                0
            }
            StatusCode::NOT_FOUND => {
                return Err(ImageError::NotFound {
                    what: format!("blob {} in `{}/{repository}`", descriptor.digest, self.host),
                });
            }
            _ => return Err(self.fail(&what, response).await),
        };
        let mut skip = skip;
        let stream = self
            .body(&what, response)
            // A server that ignored `Range` sends from 0: drop what we already have.
            .map_ok(move |mut chunk: Bytes| {
                if skip > 0 {
                    let drop = skip.min(chunk.len() as u64) as usize;
                    skip -= drop as u64;
                    chunk = chunk.split_off(drop);
                }
                chunk
            })
            .try_filter(|chunk| std::future::ready(!chunk.is_empty()));
        Ok(Box::pin(stream))
    }

    /// HEAD a blob.
    pub async fn has_blob(&self, repository: &str, digest: &Digest) -> Result<bool, ImageError> {
        let url = self.url(repository, &format!("blobs/{digest}"));
        let what = format!("HEAD blob {}", digest.short());
        retry(&what, || async {
            let response = self.send(repository, false, &what, |http| http.head(&url)).await?;
            match response.status() {
                StatusCode::OK => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(self.fail(&what, response).await),
            }
        })
        .await
    }

    /// Cross-repository mount. `Ok(false)` when the registry declined (including a `202`
    /// "upload started instead", whose session is cancelled): the caller then copies.
    pub async fn mount(&self, repository: &str, from: &str, digest: &Digest) -> Result<bool, ImageError> {
        use std::sync::atomic::Ordering;
        if self.mounts_refused.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let url = format!("{}://{}/v2/{repository}/blobs/uploads/", self.scheme, self.api_host);
        let what = format!("mount {} from {from}", digest.short());
        let digest_text = digest.to_string();
        let response = self
            .send_once(repository, true, &what, |http| {
                http.post(&url).query(&[("mount", digest_text.as_str()), ("from", from)]).header(CONTENT_LENGTH, "0")
            })
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // The registry opened an upload instead (it cannot mount, e.g. no read access to
                // `from`). Cancel it; the caller streams the blob.
                self.cancel_upload(repository, &response).await;
                Ok(false)
            }
            status => {
                if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                    self.mounts_refused.store(true, Ordering::Relaxed);
                }
                tracing::debug!(%status, "mount of {digest} declined by {}", self.host);
                Ok(false)
            }
        }
    }

    /// Uploads a blob: an upload session (`POST`), then one streamed `PUT` with the digest
    /// (chunked `PATCH`es would cost a request per network read).
    pub async fn put_blob(
        &self,
        repository: &str,
        descriptor: &Descriptor,
        stream: BlobStream,
    ) -> Result<(), ImageError> {
        let url = format!("{}://{}/v2/{repository}/blobs/uploads/", self.scheme, self.api_host);
        let what = format!("upload blob {}", descriptor.digest.short());
        let response = retry(&what, || async {
            let response =
                self.send(repository, true, &what, |http| http.post(&url).header(CONTENT_LENGTH, "0")).await?;
            if response.status() == StatusCode::ACCEPTED { Ok(response) } else { Err(self.fail(&what, response).await) }
        })
        .await?;
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let Some(location) = self.own_url(location) else {
            return Err(ImageError::Transport {
                registry: self.host.clone(),
                what,
                detail: "the registry named no upload location on its own origin".into(),
            });
        };
        let mut location = reqwest::Url::parse(&location).map_err(|e| ImageError::Transport {
            registry: self.host.clone(),
            what: what.clone(),
            detail: e.to_string(),
        })?;
        location.query_pairs_mut().append_pair("digest", &descriptor.digest.to_string());
        let mut request = self
            .http
            .put(location)
            .header(CONTENT_LENGTH, descriptor.size)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        if let Some(value) = self.authorization(repository, true).await? {
            request = request.header(AUTHORIZATION, value);
        }
        let response = request.send().await.map_err(|e| self.transport(&what, &e))?;
        match response.status() {
            StatusCode::CREATED => Ok(()),
            _ => Err(self.fail(&what, response).await),
        }
    }

    /// PUT a manifest by digest, or by tag.
    pub async fn put_manifest(
        &self,
        repository: &str,
        manifest: &RawManifest,
        tag: Option<&str>,
    ) -> Result<(), ImageError> {
        let reference = match tag {
            Some(tag) => tag.to_owned(),
            None => manifest.digest.to_string(),
        };
        let content_type = HeaderValue::from_str(&manifest.media_type)
            .map_err(|_| ImageError::Invalid(format!("media type `{}` cannot be sent", manifest.media_type)))?;
        let url = self.url(repository, &format!("manifests/{reference}"));
        let what = format!("PUT manifest {repository}:{reference}");
        retry(&what, || async {
            let response = self
                .send(repository, true, &what, |http| {
                    http.put(&url).header(CONTENT_TYPE, content_type.clone()).body(manifest.bytes.clone())
                })
                .await?;
            match response.status() {
                StatusCode::CREATED | StatusCode::OK => Ok(()),
                _ => Err(self.fail(&what, response).await),
            }
        })
        .await
    }

    /// Preflight: the registry answers and accepts our credentials for reading `repository`
    /// (which must exist), or for pushing into it (an upload is started and cancelled at once).
    pub async fn check_access(&self, repository: &str, push: bool) -> Result<(), ImageError> {
        if push {
            let url = format!("{}://{}/v2/{repository}/blobs/uploads/", self.scheme, self.api_host);
            let what = format!("start an upload to {repository}");
            let response = retry(&what, || async {
                self.send(repository, true, &what, |http| http.post(&url).header(CONTENT_LENGTH, "0")).await
            })
            .await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(self.fail(&what, response).await);
            }
            self.cancel_upload(repository, &response).await;
            return Ok(());
        }
        let url = self.url(repository, "tags/list?n=1");
        let what = format!("list tags of {repository}");
        let response =
            retry(&what, || async { self.send(repository, false, &what, |http| http.get(&url)).await }).await?;
        match response.status() {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => {
                Err(ImageError::NotFound { what: format!("repository `{}/{repository}`", self.host) })
            }
            _ => Err(self.fail(&what, response).await),
        }
    }

    /// All tags of a repository (every page).
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, ImageError> {
        let first = self.url(repository, "tags/list?n=1000");
        let mut tags: Vec<String> = self
            .paged_list(repository, first, "tags", &format!("list tags of {repository}"))
            .await?
            .into_iter()
            .filter(|t| super::reference::valid_tag(t))
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Repositories of the registry whose names start with `prefix/` (the catalog API, every
    /// page). On token-authenticated registries the catalog needs a `registry:catalog:*` token,
    /// which is not requested: use `sync` per repository there.
    pub async fn repositories(&self, prefix: &str) -> Result<Vec<String>, ImageError> {
        let first = format!("{}://{}/v2/_catalog?n=1000", self.scheme, self.api_host);
        let wanted = format!("{prefix}/");
        let mut found: Vec<String> = self
            .paged_list(prefix, first, "repositories", "list repositories (catalog)")
            .await?
            .into_iter()
            .filter(|r| r.starts_with(&wanted) && super::reference::valid_repository(r))
            .collect();
        found.sort();
        found.dedup();
        Ok(found)
    }
}

/// The authentication a registry asks for in `WWW-Authenticate`.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    /// None: anonymous access works.
    None,
    /// HTTP Basic.
    Basic,
    /// The token flow: a token from `realm` for `service`.
    Bearer { realm: String, service: Option<String> },
}

impl Challenge {
    /// Parses `Bearer realm="…",service="…",scope="…"` (quoted values may hold commas) or
    /// `Basic realm="…"`.
    fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::None;
        }
        let mut realm = None;
        let mut service = None;
        let mut rest = params.trim();
        while let Some((key, after)) = rest.split_once('=') {
            let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
            let after = after.trim_start();
            let (value, next) = match after.strip_prefix('"') {
                Some(quoted) => match quoted.split_once('"') {
                    Some((value, next)) => (value, next),
                    None => (quoted, ""),
                },
                None => after.split_once(',').unwrap_or((after, "")),
            };
            match key.as_str() {
                "realm" => realm = Some(value.to_owned()),
                "service" => service = Some(value.to_owned()),
                _ => {}
            }
            rest = next.trim_start().trim_start_matches(',');
        }
        match realm {
            Some(realm) => Challenge::Bearer { realm, service },
            None => Challenge::None,
        }
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
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |reason: String| ImageError::Invalid(format!("CA bundle `{}`: {reason}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|cert| cert.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM bundle ({e})")))?;
    if certs.is_empty() {
        return Err(bad("no certificates in it (expected PEM `BEGIN CERTIFICATE` blocks)".into()));
    }
    Ok(certs)
}
