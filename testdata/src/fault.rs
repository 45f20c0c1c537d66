//! [`FaultyRelay`]: a plain-HTTP/1.1 relay in front of a plain-HTTP registry that injects faults
//! into blob downloads, for testing how a registry client retries, resumes and verifies.
//!
//! The relay listens on `127.0.0.1` (ephemeral port) and serves one exchange per TCP connection:
//! it reads a request, forwards it upstream with `Connection: close` (hop-by-hop headers
//! dropped; `Host` kept as the client sent it, so the registry's `Location` headers point back at
//! the relay), and relays the response with `Connection: close`, then closes. Only `GET` and
//! `HEAD` are relayed unless [`RelayOptions::pass_bodies`] is set, in which case request bodies
//! are forwarded too (by `Content-Length` or chunked; `Expect: 100-continue` is answered by the
//! relay itself).
//!
//! Faults apply only to `GET /v2/<name>/blobs/<digest>` (see [`Fault`]); manifests, `HEAD`s,
//! uploads and everything else pass untouched.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request or response head the relay accepts.
const MAX_HEAD: usize = 64 << 10;
/// Read and write timeout of every relayed socket.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the relay waits after writing the bytes it lets through before resetting a connection,
/// so that they leave the socket buffer (a reset discards unsent data).
const DRAIN_BEFORE_RESET: Duration = Duration::from_millis(200);

/// What goes wrong with blob downloads (`GET /v2/<name>/blobs/<digest>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: a plain relay.
    #[default]
    None,
    /// Every `200`/`206` blob response with a `Content-Length` has the byte at offset
    /// `length / 2` of its body inverted (`!b`), every time.
    FlipByte,
    /// The first `n` blob `GET`s are answered by the relay with `status` (a small JSON error
    /// body; `Retry-After: 1` with 429 and 503), without contacting upstream.
    FailFirst {
        /// How many blob `GET`s fail.
        n: u64,
        /// The status they get, e.g. 500 or 429.
        status: u16,
    },
    /// The first `200`/`206` blob response whose body is longer than `after` bytes is cut: the
    /// relay sends the headers and `after` bytes of the body, waits 200 ms for them to drain,
    /// and resets the connection (`SO_LINGER` 0: the client sees a reset, not a clean end).
    /// Later responses, including `206`s to Range requests that resume, pass untouched.
    ResetMidBodyOnce {
        /// Body bytes sent before the reset.
        after: u64,
    },
}

/// How to run a [`FaultyRelay`].
#[derive(Clone, Debug, Default)]
pub struct RelayOptions {
    /// The fault to inject.
    pub fault: Fault,
    /// Relay requests with bodies (`POST`, `PUT`, `PATCH`, `DELETE`, ...) too; without it they are
    /// answered `405 Method Not Allowed` by the relay.
    pub pass_bodies: bool,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    requests: AtomicU64,
    blob_requests: AtomicU64,
    range_requests: AtomicU64,
    faults: AtomicU64,
    /// Blob GETs still to fail ([`Fault::FailFirst`]).
    fail_left: AtomicU64,
    /// Whether the reset of [`Fault::ResetMidBodyOnce`] is still to come.
    reset_armed: AtomicBool,
}

/// A fault-injecting HTTP relay in front of a registry. See the [module documentation](self).
/// Stops accepting on drop (connections in flight finish on their own threads).
#[derive(Debug)]
pub struct FaultyRelay {
    /// `127.0.0.1:PORT` the relay listens on.
    pub addr: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultyRelay {
    /// Starts a relay to `upstream` (`HOST:PORT` of a plain-HTTP registry) injecting `fault`;
    /// only `GET` and `HEAD` are relayed.
    pub fn start(upstream: &str, fault: Fault) -> io::Result<FaultyRelay> {
        Self::start_with(upstream, RelayOptions { fault, pass_bodies: false })
    }

    /// Starts a relay to `upstream` with `options`.
    pub fn start_with(upstream: &str, options: RelayOptions) -> io::Result<FaultyRelay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared::default());
        if let Fault::FailFirst { n, .. } = options.fault {
            shared.fail_left.store(n, Ordering::SeqCst);
        }
        shared.reset_armed.store(matches!(options.fault, Fault::ResetMidBodyOnce { .. }), Ordering::SeqCst);
        let upstream = upstream.to_owned();
        let state = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new().name("faulty-relay".into()).spawn(move || {
            for client in listener.incoming() {
                if state.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (upstream, options, state) = (upstream.clone(), options.clone(), Arc::clone(&state));
                let _ = std::thread::Builder::new().name("faulty-relay-conn".into()).spawn(move || {
                    let _ = relay(client, &upstream, &options, &state);
                });
            }
        })?;
        Ok(FaultyRelay { addr, shared, acceptor: Some(acceptor) })
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn url_base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received (each on its own connection), of any kind.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Blob downloads received: `GET /v2/<name>/blobs/<digest>`, including those a fault answered.
    #[must_use]
    pub fn blob_requests(&self) -> u64 {
        self.shared.blob_requests.load(Ordering::SeqCst)
    }

    /// Requests of any kind that carried a `Range` header.
    #[must_use]
    pub fn range_requests(&self) -> u64 {
        self.shared.range_requests.load(Ordering::SeqCst)
    }

    /// How many times the fault was applied (bytes flipped, requests failed, connections reset).
    #[must_use]
    pub fn faults_applied(&self) -> u64 {
        self.shared.faults.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor.
        let _ = TcpStream::connect(&self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A parsed request or response head.
struct Head {
    /// Request line or status line.
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<u64> {
        self.get("content-length").and_then(|v| v.trim().parse().ok())
    }

    fn chunked(&self) -> bool {
        self.get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// The head with hop-by-hop headers (and `Expect`) replaced by `Connection: close`.
    fn serialize(&self) -> Vec<u8> {
        const HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "upgrade", "te", "expect"];
        let mut out = format!("{}\r\n", self.first);
        for (name, value) in &self.headers {
            if !HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                let _ = write!(out, "{name}: {value}\r\n");
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// Reads a head (up to the empty line). `Ok(None)` when the peer closed before sending anything.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = reader.take((MAX_HEAD - total + 1) as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a head"));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(io::Error::other("head too long"));
        }
        let line = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // tolerate a stray empty line before a request
            }
            break;
        }
        lines.push(line);
    }
    let first = lines.remove(0);
    let headers = lines
        .into_iter()
        .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect();
    Ok(Some(Head { first, headers }))
}

/// Whether `target` is `/v2/<name>/blobs/<digest>` (not an upload).
fn is_blob_path(target: &str) -> bool {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let Some(rest) = path.strip_prefix("/v2/") else { return false };
    match rest.rsplit_once("/blobs/") {
        Some((name, digest)) => !name.is_empty() && !digest.is_empty() && !digest.contains('/') && digest != "uploads",
        None => false,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Fault",
    }
}

/// Answers with `status` and a small registry-style JSON error body.
fn respond(client: &mut TcpStream, status: u16, extra: &[(&str, &str)], message: &str) -> io::Result<()> {
    let body = format!(
        "{{\"errors\":[{{\"code\":\"UNKNOWN\",\"message\":{}}}]}}\n",
        serde_json::to_string(message).unwrap_or_default()
    );
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    client.write_all(head.as_bytes())?;
    client.write_all(body.as_bytes())?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Write);
    Ok(())
}

/// Copies exactly `len` bytes.
fn copy_exact(from: &mut impl Read, to: &mut impl Write, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut from.take(len), to)?;
    if copied < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "request body cut short"));
    }
    Ok(())
}

/// Copies a chunked body, framing included, up to and including its trailer.
fn copy_chunked(from: &mut impl BufRead, to: &mut impl Write) -> io::Result<()> {
    loop {
        let mut line = Vec::new();
        from.read_until(b'\n', &mut line)?;
        to.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        let size = text.trim().split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| io::Error::other(format!("bad chunk size `{size}`")))?;
        if size == 0 {
            // Trailer lines up to the empty one.
            loop {
                let mut line = Vec::new();
                if from.read_until(b'\n', &mut line)? == 0 {
                    return Ok(());
                }
                to.write_all(&line)?;
                if line == b"\r\n" || line == b"\n" {
                    return Ok(());
                }
            }
        }
        copy_exact(from, to, size + 2)?; // data and its CRLF
    }
}

/// Serves one connection: one request, one response.
fn relay(client: TcpStream, upstream: &str, options: &RelayOptions, shared: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut client_out = client.try_clone()?;
    let mut client_in = BufReader::new(client);
    let Some(request) = read_head(&mut client_in)? else { return Ok(()) };
    if shared.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let mut parts = request.first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
    if request.get("range").is_some() {
        shared.range_requests.fetch_add(1, Ordering::SeqCst);
    }
    let blob_get = method == "GET" && is_blob_path(&target);
    if blob_get {
        shared.blob_requests.fetch_add(1, Ordering::SeqCst);
    }
    if method != "GET" && method != "HEAD" && !options.pass_bodies {
        return respond(&mut client_out, 405, &[("Allow", "GET, HEAD")], "the relay forwards only GET and HEAD");
    }
    if let (true, Fault::FailFirst { status, .. }) = (blob_get, &options.fault) {
        let failing = shared.fail_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if failing {
            shared.faults.fetch_add(1, Ordering::SeqCst);
            let extra: &[(&str, &str)] = if matches!(status, 429 | 503) { &[("Retry-After", "1")] } else { &[] };
            return respond(&mut client_out, *status, extra, "fault injected by the relay");
        }
    }

    let upstream = match TcpStream::connect(upstream) {
        Ok(stream) => stream,
        Err(e) => return respond(&mut client_out, 502, &[], &format!("relay: upstream {upstream}: {e}")),
    };
    upstream.set_read_timeout(Some(IO_TIMEOUT))?;
    upstream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut upstream_out = io::BufWriter::new(upstream.try_clone()?);
    upstream_out.write_all(&request.serialize())?;
    if options.pass_bodies {
        let expects = request.get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects {
            client_out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if request.chunked() {
            copy_chunked(&mut client_in, &mut upstream_out)?;
        } else if let Some(len) = request.content_length() {
            copy_exact(&mut client_in, &mut upstream_out, len)?;
        }
    }
    upstream_out.flush()?;

    let mut upstream_in = BufReader::new(upstream);
    let mut response = loop {
        let Some(head) = read_head(&mut upstream_in)? else {
            return respond(&mut client_out, 502, &[], "relay: upstream closed without a response");
        };
        // Interim responses (we sent no Expect, but be safe) are not relayed.
        if !head.first.split_whitespace().nth(1).is_some_and(|s| s.starts_with('1')) {
            break head;
        }
    };
    let status: u16 = response.first.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = response.content_length();
    // Bodies of HEAD responses are never sent, whatever Content-Length says.
    let body_length = if method == "HEAD" { Some(0) } else { length };
    let faultable = blob_get && matches!(status, 200 | 206);
    let mut flip_at = None;
    let mut cut_after = None;
    match (&options.fault, faultable, body_length) {
        (Fault::FlipByte, true, Some(len)) if len > 0 => {
            flip_at = Some(len / 2);
            shared.faults.fetch_add(1, Ordering::SeqCst);
        }
        (Fault::ResetMidBodyOnce { after }, true, Some(len))
            if len > *after && shared.reset_armed.swap(false, Ordering::SeqCst) =>
        {
            cut_after = Some(*after);
            shared.faults.fetch_add(1, Ordering::SeqCst);
        }
        _ => {}
    }
    response.first = response.first.trim().to_owned();
    client_out.write_all(&response.serialize())?;
    if method == "HEAD" {
        client_out.flush()?;
        let _ = client_out.shutdown(Shutdown::Write);
        return Ok(());
    }

    let mut buf = vec![0u8; 64 << 10];
    let mut offset = 0u64;
    let limit = cut_after.or(length);
    loop {
        let want = match limit {
            Some(limit) => buf.len().min(usize::try_from(limit - offset).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        if want == 0 {
            break;
        }
        let n = upstream_in.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        if let Some(at) = flip_at
            && at >= offset
            && at < offset + n as u64
        {
            let i = (at - offset) as usize;
            buf[i] = !buf[i];
        }
        client_out.write_all(&buf[..n])?;
        offset += n as u64;
    }
    client_out.flush()?;
    if cut_after.is_some() {
        std::thread::sleep(DRAIN_BEFORE_RESET);
        rustix::net::sockopt::set_socket_linger(&client_out, Some(Duration::ZERO))?;
        drop(client_out);
        drop(client_in);
        return Ok(());
    }
    let _ = client_out.shutdown(Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests;
