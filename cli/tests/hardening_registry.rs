//! Hostile registries and layouts (issue 20, defects 6, 8 and 9): a listing that links back to
//! itself, a server or proxy that trickles its answer, and `oci:` layouts whose blobs are a FIFO
//! or a symlink. Each drives the real `mover` against a small hostile HTTP server on loopback.

mod common;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{bin, mover, text};
use mover_testdata::oci::{self, LayoutBuilder};

/// A request as the hostile server saw it.
struct Request {
    /// `GET /v2/...`.
    line: String,
}

/// What the hostile server does with one connection, after reading the request head.
type Handler = dyn Fn(&Request, &mut TcpStream, u64) + Send + Sync;

/// A tiny HTTP/1.1 server on `127.0.0.1`: one exchange per connection, answered by `handler`
/// (which also gets the number of this request, from 0).
struct Hostile {
    addr: String,
    requests: Arc<AtomicU64>,
}

impl Hostile {
    fn start(handler: Box<Handler>) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let handler: Arc<Handler> = Arc::from(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let handler = handler.clone();
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let Some(request) = read_head(&stream) else { return };
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    handler(&request, &mut stream, n);
                });
            }
        });
        Hostile { addr, requests }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

fn read_head(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header == "\r\n" {
            break;
        }
    }
    Some(Request { line: line.trim_end().to_owned() })
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// Runs `mover` with a deadline: a hang is a failure, not a stuck test run.
fn mover_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (Output, Duration) {
    let mut command = Command::new(bin("mover"));
    command.args(args).env_remove("MOVER_OUTPUT");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("mover {args:?} still running after {limit:?}\n{}", text(&output));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = start.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

// ---- 20.6: listings that never end ------------------------------------------------------------

/// A registry whose tag list is an empty page with `Link: next` pointing at `next(n)`.
fn looping_registry(next: fn(u64) -> String) -> Hostile {
    Hostile::start(Box::new(move |request, stream, n| {
        if request.line.starts_with("GET /v2/shop/web/tags/list") {
            let link = format!("<{}>; rel=\"next\"", next(n));
            respond(
                stream,
                "200 OK",
                &[("Content-Type", "application/json"), ("Link", &link)],
                br#"{"name":"shop/web","tags":[]}"#,
            );
        } else {
            respond(stream, "200 OK", &[("Content-Type", "application/json")], b"{}");
        }
    }))
}

#[test]
fn issue20_6_a_tag_page_that_links_to_itself_ends_the_sync_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let registry = looping_registry(|_| "/v2/shop/web/tags/list?n=1000".into());
    let source = format!("docker://{}/shop/web", registry.addr);
    let target = format!("oci:{}", dir.path().join("out").display());
    let (output, _) =
        mover_within(&["image", "sync", "--src-plain-http", &source, &target], &[], Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("links back to a page it already sent"), "{}", text(&output));
    assert!(registry.requests() <= 3, "{} requests", registry.requests());
}

#[test]
fn issue20_6_endless_distinct_empty_pages_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let registry = looping_registry(|n| format!("/v2/shop/web/tags/list?n=1000&last=page{n}"));
    let source = format!("docker://{}/shop/web", registry.addr);
    let target = format!("oci:{}", dir.path().join("out").display());
    let (output, _) =
        mover_within(&["image", "sync", "--src-plain-http", &source, &target], &[], Duration::from_secs(60));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("more than 1000 pages"), "{}", text(&output));
    assert!(registry.requests() <= 1_002, "{} requests", registry.requests());
}

// ---- 20.9: layouts opened beneath their root ------------------------------------------------

/// A sample layout and a target layout path, in `dir`.
fn layout_pair(dir: &Path) -> (oci::Sample, String) {
    let sample = oci::sample_multiarch(&dir.join("layout"), 64 << 10).expect("build the sample layout");
    (sample, format!("oci:{}:v1", dir.join("out").display()))
}

#[test]
fn issue20_9_a_fifo_as_a_blob_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (sample, target) = layout_pair(dir.path());
    let layer = &sample.single().layers[3];
    let path = LayoutBuilder::blob_path_in(&sample.dir, &layer.digest);
    std::fs::remove_file(&path).unwrap();
    let status = Command::new("mkfifo").arg(&path).status().expect("run mkfifo");
    assert!(status.success());
    let source = format!("oci:{}:single", sample.dir.display());
    let (output, elapsed) = mover_within(&["image", "copy", &source, &target], &[], Duration::from_secs(20));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is a FIFO, not a regular file"), "{}", text(&output));
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[test]
fn issue20_9_a_blob_that_is_a_symlink_is_refused_before_anything_is_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let (sample, target) = layout_pair(dir.path());
    let layer = &sample.single().layers[3];
    let path = LayoutBuilder::blob_path_in(&sample.dir, &layer.digest);
    // The very content the digest names, but outside the layout: following the link would
    // "work", and read a file the layout does not hold.
    let outside = dir.path().join("elsewhere");
    std::fs::rename(&path, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &path).unwrap();
    let source = format!("oci:{}:single", sample.dir.display());
    let output = mover(&["image", "copy", &source, &target]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is a symlink, not a regular file"), "{}", text(&output));
    let copied = LayoutBuilder::blob_path_in(&dir.path().join("out"), &layer.digest);
    assert!(!copied.exists(), "the linked file was copied");

    // A symlinked blob directory is refused the same way.
    std::fs::remove_file(&path).unwrap();
    std::fs::rename(&outside, &path).unwrap();
    let blobs = sample.dir.join("blobs");
    std::fs::rename(blobs.join("sha256"), dir.path().join("real-blobs")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real-blobs"), blobs.join("sha256")).unwrap();
    let output = mover(&["image", "copy", &source, &target]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is a symlink or not a directory; refusing to follow it"),
        "{}",
        text(&output)
    );
}

// ---- 20.8: a stalling proxy or registry -----------------------------------------------------

/// Short deadlines for the tests: headers within 1 s, bodies at 1 KiB/s over 1 s windows.
const PACE: (&str, &str) = ("MOVER_REGISTRY_PACE", "1000:1024:1000");

#[test]
fn issue20_8_a_proxy_that_trickles_its_headers_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    // One byte of a never-ending header a second, to every request.
    let proxy = Hostile::start(Box::new(|_, stream, _| {
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if stream.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }));
    let proxy_url = format!("http://{}", proxy.addr);
    let target = format!("oci:{}:v1", dir.path().join("out").display());
    let (output, elapsed) = mover_within(
        &["image", "copy", "--src-plain-http", "--proxy", &proxy_url, "docker://127.0.0.1:9/shop/web:v1", &target],
        &[PACE],
        Duration::from_secs(60),
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no response headers within"), "{}", text(&output));
    assert!(proxy.requests() >= 1, "the request did not go through the proxy");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}

#[test]
fn issue20_8_a_registry_that_trickles_a_body_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Hostile::start(Box::new(|request, stream, _| {
        if !request.line.contains("/manifests/") {
            respond(stream, "200 OK", &[("Content-Type", "application/json")], b"{}");
            return;
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 4000\r\nConnection: close\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        for _ in 0..4000 {
            if stream.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }));
    let source = format!("docker://{}/shop/web:v1", registry.addr);
    let target = format!("oci:{}:v1", dir.path().join("out").display());
    let (output, elapsed) =
        mover_within(&["image", "copy", "--src-plain-http", &source, &target], &[PACE], Duration::from_secs(60));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("slower than 1024 bytes/s"), "{}", text(&output));
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}
