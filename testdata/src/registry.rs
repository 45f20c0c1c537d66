//! A real container registry for tests: CNCF distribution 2.8 (`docker-registry serve CONFIG`) on an
//! ephemeral loopback port, with optional TLS (a CA and a server certificate made here) and
//! optional basic authentication (an htpasswd file with a bcrypt entry), killed on drop.
//!
//! Everything that reads or writes the registry from here goes through independent clients:
//! `curl` for the HTTP API ([`Registry::get`], [`Registry::get_manifest`], [`Registry::blob_exists`],
//! [`Registry::push_blob`], [`Registry::put_manifest`]) and `skopeo` to seed whole images
//! ([`Registry::push_layout`]), so a test of mover's image copy never checks mover with itself.
//!
//! Basic authentication does not need TLS: distribution 2.8 accepts an `htpasswd` section on a
//! plain-HTTP listener (it answers `401` with `WWW-Authenticate: Basic realm=...` without
//! credentials and `200` with them), so both combinations can be tested.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::oci::{Descriptor, LayoutBuilder, MANIFEST_TYPES, OCI_INDEX, OCI_MANIFEST, REF_NAME, sha256_file};

/// How long [`Registry::start`] waits for `GET /v2/` to answer.
pub const START_DEADLINE: Duration = Duration::from_secs(20);

/// How clients authenticate to the registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// Anonymous access.
    #[default]
    None,
    /// HTTP basic authentication against an htpasswd file with this one user.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// The bearer-token challenge flow: a [`TokenServer`](crate::token::TokenServer) that
    /// accepts this user issues the tokens (see [`Registry::token_server`]).
    Token {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

/// How to run the registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a server certificate (SAN `IP:127.0.0.1`, `DNS:localhost`) signed by a CA
    /// made for this registry; plain HTTP otherwise.
    pub tls: bool,
    /// Authentication.
    pub auth: Auth,
}

/// Response headers, in order: (name as sent, value).
pub type Headers = Vec<(String, String)>;

/// A response read by `curl`.
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// HTTP status; 0 when no response arrived.
    pub status: u16,
    /// Headers of the final response (after any `100 Continue`), in order.
    pub headers: Headers,
    /// The body (empty when it was written to [`CurlRequest::output`]).
    pub body: Vec<u8>,
    /// curl's exit code (0 on success; e.g. 18 for a body cut short, 56 for a reset connection,
    /// 60 for an untrusted certificate).
    pub exit: i32,
    /// curl's error output.
    pub stderr: String,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One `curl` invocation. `curl` never uses a proxy here (`--noproxy '*'`) and never follows
/// redirects.
#[derive(Clone, Debug, Default)]
pub struct CurlRequest<'a> {
    /// `GET` when empty; `HEAD` is sent with `--head`.
    pub method: &'a str,
    /// Full URL.
    pub url: &'a str,
    /// Extra request headers, `Name: value`.
    pub headers: Vec<String>,
    /// Request body, streamed from this file (`--upload-file`, with a `Content-Length`).
    pub upload: Option<&'a Path>,
    /// Request body from memory (`--data-binary @-`).
    pub data: Option<&'a [u8]>,
    /// CA bundle to trust (`--cacert`).
    pub cacert: Option<&'a Path>,
    /// Basic credentials (`--user`).
    pub user: Option<(&'a str, &'a str)>,
    /// Write the body to this file instead of [`Response::body`].
    pub output: Option<&'a Path>,
    /// More arguments, e.g. `--range 100-`.
    pub args: Vec<String>,
}

static CURL_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs `curl` for `request`. Fails only when curl cannot be run or its output cannot be read;
/// transfer errors are reported in [`Response::exit`] and [`Response::stderr`] with whatever
/// arrived before them.
pub fn curl(request: &CurlRequest<'_>) -> io::Result<Response> {
    let n = CURL_COUNTER.fetch_add(1, Ordering::Relaxed);
    let scratch = std::env::temp_dir().join(format!("mover-testdata-curl-{}-{n}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let result = run_curl(request, &scratch);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn run_curl(request: &CurlRequest<'_>, scratch: &Path) -> io::Result<Response> {
    let header_file = scratch.join("headers");
    let body_file = scratch.join("body");
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--noproxy", "*", "--write-out", "%{http_code}"]);
    cmd.arg("--dump-header").arg(&header_file);
    cmd.arg("--output").arg(request.output.unwrap_or(&body_file));
    match request.method {
        "" | "GET" => {}
        "HEAD" => {
            cmd.arg("--head");
        }
        other => {
            cmd.args(["--request", other]);
        }
    }
    for header in &request.headers {
        cmd.arg("--header").arg(header);
    }
    if let Some(path) = request.upload {
        cmd.arg("--upload-file").arg(path);
    }
    if request.data.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    if let Some(ca) = request.cacert {
        cmd.arg("--cacert").arg(ca);
    }
    if let Some((user, password)) = request.user {
        cmd.arg("--user").arg(format!("{user}:{password}"));
    }
    cmd.args(&request.args);
    cmd.arg("--").arg(request.url);
    cmd.stdin(if request.data.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("running curl: {e}")))?;
    if let (Some(data), Some(mut stdin)) = (request.data, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let out = child.wait_with_output()?;
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let headers = parse_headers(&fs::read(&header_file).unwrap_or_default());
    // (With --head, curl writes the headers where the body would go.)
    let no_body = request.output.is_some() || request.method == "HEAD";
    let body = if no_body { Vec::new() } else { fs::read(&body_file).unwrap_or_default() };
    Ok(Response {
        status,
        headers,
        body,
        exit: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The headers of the last response in a `--dump-header` file.
fn parse_headers(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(raw);
    let mut headers = Vec::new();
    for line in text.lines() {
        if line.starts_with("HTTP/") {
            headers.clear();
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    headers
}

/// Whether `skopeo` can be run.
#[must_use]
pub fn skopeo_available() -> bool {
    Command::new("skopeo").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Whether `docker-registry` can be run.
#[must_use]
pub fn registry_available() -> bool {
    Command::new("docker-registry").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// A running `docker-registry` on `127.0.0.1`. Killed (and reaped) on drop; its directory (config,
/// storage, certificates, log) is left for the caller's temporary directory to remove.
#[derive(Debug)]
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The CA certificate (PEM) that signed the server certificate, with TLS.
    pub ca_pem: Option<PathBuf>,
    /// A directory holding only [`ca_pem`](Self::ca_pem) as `ca.crt`, in the layout skopeo's
    /// `--src-cert-dir`/`--dest-cert-dir` (and containers' `certs.d`) expect, with TLS.
    pub cert_dir: Option<PathBuf>,
    /// The registry's own directory: `config.yml`, `storage/`, `registry.log`, certificates.
    pub dir: PathBuf,
    auth: Auth,
    child: Child,
    token_server: Option<crate::token::TokenServer>,
    /// The readiness probe skips certificate verification (a certificate given by the test).
    probe_insecure: bool,
}

static REGISTRY_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Registry {
    /// Starts a registry under a new directory in `workdir` and waits (up to [`START_DEADLINE`])
    /// until `GET /v2/` answers `200` or `401`. The port is ephemeral: a free one is found by
    /// binding `127.0.0.1:0` and releasing it; if the registry then cannot bind it (someone took
    /// it in between), another is tried. Fails with the registry's log when it exits or does not
    /// answer in time.
    pub fn start(opts: RegistryOptions, workdir: &Path) -> io::Result<Registry> {
        Registry::start_inner(opts, None, workdir)
    }

    /// Starts a registry (as [`Registry::start`]) serving HTTPS with the given certificate
    /// chain and key (PEM), exactly as given: e.g. a leaf alone, or a self-signed certificate.
    /// [`ca_pem`](Self::ca_pem) is then the chain file; the readiness probe does not verify it.
    pub fn start_with_certificate(chain_pem: &str, key_pem: &str, workdir: &Path) -> io::Result<Registry> {
        let options = RegistryOptions { tls: true, auth: Auth::None };
        Registry::start_inner(options, Some((chain_pem.to_owned(), key_pem.to_owned())), workdir)
    }

    fn start_inner(opts: RegistryOptions, given: Option<(String, String)>, workdir: &Path) -> io::Result<Registry> {
        let RegistryOptions { tls: with_tls, auth: auth_options } = opts;
        let probe_insecure = given.is_some();
        let n = REGISTRY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = workdir.join(format!("registry-{}-{n}", std::process::id()));
        fs::create_dir_all(dir.join("storage"))?;
        let dir = dir.canonicalize()?;
        let mut tls = String::new();
        let (mut ca_pem, mut cert_dir) = (None, None);
        if with_tls {
            let (ca, chain, key) = if let Some((chain, key)) = given {
                (chain.clone(), chain, key)
            } else {
                let (ca, cert, key) = make_certificates()?;
                // The full chain, as real registries present it (so `mover certs fetch` gets the CA).
                let chain = format!("{cert}{ca}");
                (ca, chain, key)
            };
            let certs = dir.join("certs");
            fs::create_dir_all(&certs)?;
            fs::write(certs.join("ca.crt"), &ca)?;
            fs::write(dir.join("server.crt"), chain)?;
            fs::write(dir.join("server.key"), key)?;
            ca_pem = Some(certs.join("ca.crt"));
            cert_dir = Some(certs);
            let _ = write!(
                tls,
                "\n  tls:\n    certificate: {}\n    key: {}",
                quote(&dir.join("server.crt")),
                quote(&dir.join("server.key"))
            );
        }
        let mut auth = String::new();
        if let Auth::Basic { user, password } = &auth_options {
            let htpasswd = dir.join("htpasswd");
            fs::write(&htpasswd, format!("{user}:{}\n", bcrypt(password)?))?;
            let _ = write!(auth, "auth:\n  htpasswd:\n    realm: mover-test\n    path: {}\n", quote(&htpasswd));
        }
        let mut token_server = None;
        if let Auth::Token { user, password } = &auth_options {
            let server = crate::token::TokenServer::start(&dir, user, password)?;
            let _ = write!(
                auth,
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                server.realm(),
                crate::token::SERVICE,
                crate::token::ISSUER,
                quote(&server.cert_pem)
            );
            token_server = Some(server);
        }
        let mut last_error = None;
        for _ in 0..8 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: mover-testdata-{port}{tls}\n\
                 {auth}",
                quote(&dir.join("storage")),
            );
            fs::write(dir.join("config.yml"), config)?;
            let log = File::create(dir.join("registry.log"))?;
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(dir.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("running docker-registry: {e}")))?;
            let mut registry = Registry {
                addr: format!("127.0.0.1:{port}"),
                ca_pem: ca_pem.clone(),
                cert_dir: cert_dir.clone(),
                dir: dir.clone(),
                auth: auth_options.clone(),
                child,
                token_server: None,
                probe_insecure,
            };
            match registry.wait_ready() {
                Ok(()) => {
                    registry.token_server = token_server;
                    return Ok(registry);
                }
                Err(e) => {
                    let in_use = registry.log().contains("address already in use");
                    drop(registry);
                    if !in_use {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        let url = format!("{}/v2/", self.url_base());
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "docker-registry exited ({status}) before answering; its log:\n{}",
                    self.log()
                )));
            }
            let response = curl(&CurlRequest {
                url: &url,
                cacert: self.ca_pem.as_deref(),
                args: if self.probe_insecure {
                    vec!["--max-time".into(), "2".into(), "--insecure".into()]
                } else {
                    vec!["--max-time".into(), "2".into()]
                },
                ..CurlRequest::default()
            })?;
            if matches!(response.status, 200 | 401) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "docker-registry did not answer GET {url} within {} s (last: {} {}); its log:\n{}",
                        START_DEADLINE.as_secs(),
                        response.status,
                        response.stderr.trim(),
                        self.log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the registry wrote to stdout and stderr so far (warnings and errors).
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// The registry's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the registry keeps its data (the filesystem driver's root directory).
    #[must_use]
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// The token server, with [`Auth::Token`].
    #[must_use]
    pub fn token_server(&self) -> Option<&crate::token::TokenServer> {
        self.token_server.as_ref()
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    #[must_use]
    pub fn url_base(&self) -> String {
        format!("{}://{}", if self.ca_pem.is_some() { "https" } else { "http" }, self.addr)
    }

    /// The basic-auth credentials, if any.
    #[must_use]
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match &self.auth {
            Auth::None | Auth::Token { .. } => None,
            Auth::Basic { user, password } => Some((user, password)),
        }
    }

    /// A [`CurlRequest`] for `path` (e.g. `/v2/`) or a full URL, with the CA and the credentials.
    #[must_use]
    pub fn request<'a>(&'a self, method: &'a str, url: &'a str) -> CurlRequest<'a> {
        CurlRequest { method, url, cacert: self.ca_pem.as_deref(), user: self.credentials(), ..CurlRequest::default() }
    }

    fn absolute(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.url_base())
        }
    }

    /// Sends `request` and fails unless curl succeeded.
    fn send(request: &CurlRequest<'_>) -> io::Result<Response> {
        let response = curl(request)?;
        if response.exit != 0 {
            return Err(io::Error::other(format!(
                "curl {} {} failed ({}): {}",
                if request.method.is_empty() { "GET" } else { request.method },
                request.url,
                response.exit,
                response.stderr.trim()
            )));
        }
        Ok(response)
    }

    /// `GET path` (e.g. `/v2/_catalog`) with the CA and credentials applied: status, headers and
    /// body. Fails when curl fails (connection, TLS).
    pub fn get(&self, path: &str) -> io::Result<(u16, Headers, Vec<u8>)> {
        let url = self.absolute(path);
        let r = Self::send(&self.request("GET", &url))?;
        Ok((r.status, r.headers, r.body))
    }

    /// `HEAD path` with the CA and credentials applied.
    pub fn head(&self, path: &str) -> io::Result<Response> {
        let url = self.absolute(path);
        Self::send(&self.request("HEAD", &url))
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting all four manifest media types: status,
    /// `Content-Type` and body (the exact bytes the registry stores).
    pub fn get_manifest(&self, repo: &str, reference: &str) -> io::Result<(u16, String, Vec<u8>)> {
        let url = self.absolute(&format!("/v2/{repo}/manifests/{reference}"));
        let mut request = self.request("GET", &url);
        request.headers.push(format!("Accept: {}", MANIFEST_TYPES.join(", ")));
        let r = Self::send(&request)?;
        let content_type = r.header("content-type").unwrap_or_default().to_owned();
        Ok((r.status, content_type, r.body))
    }

    /// Whether `HEAD /v2/<repo>/blobs/<digest>` finds the blob (200: true; 404: false; any other
    /// status is an error).
    pub fn blob_exists(&self, repo: &str, digest: &str) -> io::Result<bool> {
        let r = self.head(&format!("/v2/{repo}/blobs/{digest}"))?;
        match r.status {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(io::Error::other(format!("HEAD blob {repo}@{digest}: status {status}"))),
        }
    }

    /// Uploads the file at `path` as a blob of `repo` (monolithic: `POST` a session, `PUT` the
    /// bytes with the digest); returns its descriptor (media type `application/octet-stream`).
    pub fn push_blob(&self, repo: &str, path: &Path) -> io::Result<Descriptor> {
        let digest = sha256_file(path)?;
        let size = fs::metadata(path)?.len();
        let url = self.absolute(&format!("/v2/{repo}/blobs/uploads/"));
        let started = Self::send(&self.request("POST", &url))?;
        let location = match (started.status, started.header("location")) {
            (202, Some(location)) => self.absolute(location),
            (status, _) => return Err(io::Error::other(format!("POST {url}: status {status}"))),
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{separator}digest={digest}");
        let mut put = self.request("PUT", &put_url);
        put.upload = Some(path);
        put.headers.push("Content-Type: application/octet-stream".into());
        let done = Self::send(&put)?;
        if done.status != 201 {
            return Err(io::Error::other(format!(
                "PUT {put_url}: status {}: {}",
                done.status,
                String::from_utf8_lossy(&done.body)
            )));
        }
        Ok(Descriptor { media_type: "application/octet-stream".into(), digest, size })
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `bytes` as `media_type`; fails unless the
    /// registry answers 201.
    pub fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> io::Result<()> {
        let url = self.absolute(&format!("/v2/{repo}/manifests/{reference}"));
        let mut put = self.request("PUT", &url);
        put.data = Some(bytes);
        put.headers.push(format!("Content-Type: {media_type}"));
        let done = Self::send(&put)?;
        if done.status != 201 {
            return Err(io::Error::other(format!(
                "PUT {url}: status {}: {}",
                done.status,
                String::from_utf8_lossy(&done.body)
            )));
        }
        Ok(())
    }

    /// skopeo's options for using this registry as `side` (`src` or `dest`):
    /// `--SIDE-tls-verify=false` for plain HTTP or `--SIDE-cert-dir DIR` with TLS, and
    /// `--SIDE-creds USER:PASSWORD` with basic authentication.
    #[must_use]
    pub fn skopeo_args(&self, side: &str) -> Vec<String> {
        let mut args = Vec::new();
        match &self.cert_dir {
            Some(dir) => {
                args.push(format!("--{side}-cert-dir"));
                args.push(dir.display().to_string());
            }
            None => args.push(format!("--{side}-tls-verify=false")),
        }
        if let Some((user, password)) = self.credentials() {
            args.push(format!("--{side}-creds"));
            args.push(format!("{user}:{password}"));
        }
        args
    }

    /// Copies the image or index tagged `tag` in the OCI layout at `layout_dir` to
    /// `<repo>:<dest_tag>` in this registry with `skopeo copy --all --preserve-digests` (so the
    /// registry ends up with exactly the layout's manifests and blobs, or the copy fails). Plain
    /// HTTP is reached with `--dest-tls-verify=false`; with TLS skopeo verifies the server against
    /// [`cert_dir`](Self::cert_dir).
    ///
    /// skopeo finds only OCI manifests and indexes by tag in an OCI layout (a Docker manifest or
    /// manifest list tagged in `index.json` is "no descriptor found"): those are pushed with
    /// [`push_layout_with_curl`](Self::push_layout_with_curl) instead.
    pub fn push_layout(&self, layout_dir: &Path, tag: &str, repo: &str, dest_tag: &str) -> io::Result<()> {
        let root = tagged(layout_dir, tag)?;
        if root.media_type != OCI_MANIFEST && root.media_type != OCI_INDEX {
            return self.push_layout_with_curl(layout_dir, tag, repo, dest_tag);
        }
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--all", "--preserve-digests", "--quiet"])
            .args(self.skopeo_args("dest"))
            .arg(format!("oci:{}:{tag}", layout_dir.display()))
            .arg(format!("docker://{}/{repo}:{dest_tag}", self.addr))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("running skopeo: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "skopeo copy oci:{}:{tag} to {}/{repo}:{dest_tag} failed: {}",
                layout_dir.display(),
                self.addr,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

impl Registry {
    /// Copies the image or index tagged `tag` in the OCI layout at `layout_dir` to
    /// `<repo>:<dest_tag>` with curl alone: every blob not yet in `repo` is uploaded
    /// ([`push_blob`](Self::push_blob)), each image manifest is put by digest, then the tagged
    /// manifest or index under `dest_tag`. Works for any manifest media type.
    pub fn push_layout_with_curl(&self, layout_dir: &Path, tag: &str, repo: &str, dest_tag: &str) -> io::Result<()> {
        let root = tagged(layout_dir, tag)?;
        self.push_manifest_tree(layout_dir, &root, repo, dest_tag)
    }

    fn push_manifest_tree(&self, layout_dir: &Path, desc: &Descriptor, repo: &str, reference: &str) -> io::Result<()> {
        let bytes = fs::read(LayoutBuilder::blob_path_in(layout_dir, &desc.digest))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
        if let Some(children) = value["manifests"].as_array() {
            for child in children {
                let child = descriptor_of(child)?;
                self.push_manifest_tree(layout_dir, &child, repo, &child.digest)?;
            }
        } else {
            let layers = value["layers"].as_array().cloned().unwrap_or_default();
            for blob in std::iter::once(&value["config"]).chain(&layers) {
                let blob = descriptor_of(blob)?;
                if !self.blob_exists(repo, &blob.digest)? {
                    self.push_blob(repo, &LayoutBuilder::blob_path_in(layout_dir, &blob.digest))?;
                }
            }
        }
        self.put_manifest(repo, reference, &desc.media_type, &bytes)
    }
}

/// The descriptor tagged `tag` in the `index.json` of the layout at `layout_dir`.
fn tagged(layout_dir: &Path, tag: &str) -> io::Result<Descriptor> {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout_dir.join("index.json"))?).map_err(io::Error::other)?;
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let entry = entries.iter().find(|m| m["annotations"][REF_NAME] == tag).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("no tag `{tag}` in {}", layout_dir.display()))
    })?;
    descriptor_of(entry)
}

fn descriptor_of(value: &serde_json::Value) -> io::Result<Descriptor> {
    match (value["mediaType"].as_str(), value["digest"].as_str(), value["size"].as_u64()) {
        (Some(media_type), Some(digest), Some(size)) => {
            Ok(Descriptor { media_type: media_type.to_owned(), digest: digest.to_owned(), size })
        }
        _ => Err(io::Error::other(format!("not a descriptor: {value}"))),
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A YAML (and JSON) double-quoted string of `path`.
fn quote(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_default()
}

/// A bcrypt hash of `password` (cost 4, the lowest, so that the registry checks each request
/// quickly), made by Python's `crypt` module (Python 3.12 or older).
fn bcrypt(password: &str) -> io::Result<String> {
    let out = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))",
            password,
        ])
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running python3 for a bcrypt hash: {e}")))?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !hash.starts_with("$2") {
        return Err(io::Error::other(format!(
            "python3 could not make a bcrypt hash (its crypt module is gone from 3.13): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(hash)
}

/// A CA certificate and a server certificate (SAN `IP:127.0.0.1`, `DNS:localhost`) with its key,
/// all PEM.
pub(crate) fn make_certificates() -> io::Result<(String, String, String)> {
    let fail = |e: rcgen::Error| io::Error::other(format!("making certificates: {e}"));
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let ca_key = KeyPair::generate().map_err(fail)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "mover-testdata registry CA");
    ca.distinguished_name = name;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = (now - day).into();
    ca.not_after = (now + day * 30).into();
    let ca_pem = ca.self_signed(&ca_key).map_err(fail)?.pem();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(fail)?;
    let mut leaf = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "127.0.0.1");
    leaf.distinguished_name = name;
    leaf.subject_alt_names =
        vec![SanType::IpAddress([127, 0, 0, 1].into()), SanType::DnsName("localhost".try_into().map_err(fail)?)];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = (now - day).into();
    leaf.not_after = (now + day * 30).into();
    let cert = leaf.signed_by(&key, &issuer).map_err(fail)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests;
