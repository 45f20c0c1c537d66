//! Tests of the faulty relay in front of a real registry, read with curl (and a raw socket for
//! the one-exchange-per-connection check).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use super::*;
use crate::oci::{Descriptor, OCI_MANIFEST, sha256_bytes};
use crate::registry::{CurlRequest, Registry, RegistryOptions, Response, curl, registry_available};

const BLOB: usize = 4 << 20;

struct Setup {
    _dir: tempfile::TempDir,
    registry: Registry,
    blob: Descriptor,
    content: Vec<u8>,
    manifest: Vec<u8>,
}

/// A plain registry holding a 4 MiB blob and a manifest in `r/x`, or `None` without
/// docker-registry.
fn setup() -> Option<Setup> {
    if !registry_available() {
        println!("note: docker-registry is not installed: skipping");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions::default(), dir.path()).unwrap();
    let content = crate::random_bytes(3, BLOB);
    let path = dir.path().join("blob");
    fs::write(&path, &content).unwrap();
    let blob = registry.push_blob("r/x", &path).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": blob.with_media_type(crate::oci::OCI_CONFIG).to_json(), "layers": [],
    }))
    .unwrap();
    registry.put_manifest("r/x", "v1", OCI_MANIFEST, &manifest).unwrap();
    Some(Setup { _dir: dir, registry, blob, content, manifest })
}

fn get(url: &str, args: &[&str]) -> Response {
    curl(&CurlRequest { url, args: args.iter().map(|a| (*a).to_owned()).collect(), ..CurlRequest::default() }).unwrap()
}

fn head(url: &str) -> Response {
    curl(&CurlRequest { method: "HEAD", url, ..CurlRequest::default() }).unwrap()
}

fn blob_url(relay: &FaultyRelay, s: &Setup) -> String {
    format!("{}/v2/r/x/blobs/{}", relay.url_base(), s.blob.digest)
}

#[test]
fn blob_paths_are_recognised() {
    assert!(is_blob_path("/v2/a/blobs/sha256:00"));
    assert!(is_blob_path("/v2/a/b/c/blobs/sha256:00?x=1"));
    assert!(!is_blob_path("/v2/a/blobs/uploads/"));
    assert!(!is_blob_path("/v2/a/blobs/uploads"));
    assert!(!is_blob_path("/v2/a/blobs/uploads/1234?_state=x"));
    assert!(!is_blob_path("/v2/a/manifests/sha256:00"));
    assert!(!is_blob_path("/v2/blobs/sha256:00"));
    assert!(!is_blob_path("/v3/a/blobs/sha256:00"));
}

#[test]
fn clean_relay_passes_everything_one_exchange_per_connection() {
    let Some(s) = setup() else { return };
    let relay = FaultyRelay::start(&s.registry.addr, Fault::None).unwrap();
    let url = blob_url(&relay, &s);

    let r = get(&url, &[]);
    assert_eq!((r.exit, r.status), (0, 200), "{}", r.stderr);
    assert_eq!(r.body, s.content);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("docker-content-digest"), Some(s.blob.digest.as_str()));

    let head = head(&url);
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some(BLOB.to_string().as_str()));

    let range = get(&url, &["--range", "1000-1999"]);
    assert_eq!(range.status, 206);
    assert_eq!(range.body, s.content[1000..2000]);

    let manifest =
        get(&format!("{}/v2/r/x/manifests/v1", relay.url_base()), &["--header", &format!("Accept: {OCI_MANIFEST}")]);
    assert_eq!((manifest.status, &manifest.body), (200, &s.manifest));

    assert_eq!((relay.requests(), relay.blob_requests(), relay.range_requests(), relay.faults_applied()), (4, 2, 1, 0));

    // Two pipelined keep-alive requests on one connection: one answer, then the relay closes.
    let mut raw = TcpStream::connect(&relay.addr).unwrap();
    let one = format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n\r\n", relay.addr);
    raw.write_all(format!("{one}{one}").as_bytes()).unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Connection: close\r\n"), "{answer}");

    // Without pass_bodies, bodies are refused by the relay.
    let post = get(&format!("{}/v2/r/x/blobs/uploads/", relay.url_base()), &["--request", "POST"]);
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

#[test]
fn flip_byte_corrupts_the_middle_of_every_blob_body() {
    let Some(s) = setup() else { return };
    let relay = FaultyRelay::start(&s.registry.addr, Fault::FlipByte).unwrap();
    let url = blob_url(&relay, &s);
    for _ in 0..2 {
        let r = get(&url, &[]);
        assert_eq!((r.exit, r.status), (0, 200));
        assert_eq!(r.body.len(), BLOB);
        let differing: Vec<usize> = (0..BLOB).filter(|&i| r.body[i] != s.content[i]).collect();
        assert_eq!(differing, vec![BLOB / 2]);
        assert_eq!(r.body[BLOB / 2], !s.content[BLOB / 2]);
        assert_ne!(sha256_bytes(&r.body), s.blob.digest);
    }
    // A 206 is flipped in the middle of its own body.
    let r = get(&url, &["--range", "100-299"]);
    assert_eq!(r.status, 206);
    let differing: Vec<usize> = (0..200).filter(|&i| r.body[i] != s.content[100 + i]).collect();
    assert_eq!(differing, vec![100]);
    // Manifests and HEADs are untouched.
    let m =
        get(&format!("{}/v2/r/x/manifests/v1", relay.url_base()), &["--header", &format!("Accept: {OCI_MANIFEST}")]);
    assert_eq!(m.body, s.manifest);
    assert_eq!(head(&url).status, 200);
    assert_eq!((relay.blob_requests(), relay.faults_applied(), relay.range_requests()), (3, 3, 1));
}

#[test]
fn fail_first_answers_blob_gets_without_upstream() {
    let Some(s) = setup() else { return };
    let relay = FaultyRelay::start(&s.registry.addr, Fault::FailFirst { n: 2, status: 500 }).unwrap();
    let url = blob_url(&relay, &s);
    // HEADs and manifests are not blob GETs: they pass and do not use up the failures.
    assert_eq!(head(&url).status, 200);
    for _ in 0..2 {
        let r = get(&url, &[]);
        assert_eq!(r.status, 500);
        assert_eq!(r.header("retry-after"), None);
        assert!(String::from_utf8_lossy(&r.body).contains("\"errors\""));
    }
    let r = get(&url, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, s.content);
    assert_eq!((relay.blob_requests(), relay.faults_applied()), (3, 2));

    // 429 carries Retry-After, and upstream is never contacted: here there is none.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let relay = FaultyRelay::start(&dead, Fault::FailFirst { n: 1, status: 429 }).unwrap();
    let url = format!("{}/v2/r/x/blobs/{}", relay.url_base(), s.blob.digest);
    let r = get(&url, &[]);
    assert_eq!((r.status, r.header("retry-after")), (429, Some("1")));
    assert_eq!(get(&url, &[]).status, 502, "the next one goes to the (dead) upstream");
}

#[test]
fn reset_mid_body_once_then_ranges_resume() {
    let Some(s) = setup() else { return };
    let after = 1 << 20;
    let relay = FaultyRelay::start(&s.registry.addr, Fault::ResetMidBodyOnce { after }).unwrap();
    let url = blob_url(&relay, &s);
    let cut = get(&url, &[]);
    assert_eq!(cut.status, 200);
    assert!(matches!(cut.exit, 18 | 56), "curl exit {}: {}", cut.exit, cut.stderr);
    assert_eq!(cut.body.len() as u64, after, "the bytes before the reset arrive");
    assert_eq!(cut.body, s.content[..cut.body.len()]);

    let rest = get(&url, &["--range", &format!("{}-", cut.body.len())]);
    assert_eq!((rest.exit, rest.status), (0, 206), "{}", rest.stderr);
    let mut whole = cut.body.clone();
    whole.extend_from_slice(&rest.body);
    assert_eq!(sha256_bytes(&whole), s.blob.digest);

    let again = get(&url, &[]);
    assert_eq!((again.exit, again.status, again.body.len()), (0, 200, BLOB));
    assert_eq!((relay.blob_requests(), relay.range_requests(), relay.faults_applied()), (3, 1, 1));
}

#[test]
fn pass_bodies_relays_pushes_and_locations_point_at_the_relay() {
    let Some(s) = setup() else { return };
    let relay =
        FaultyRelay::start_with(&s.registry.addr, RelayOptions { fault: Fault::FlipByte, pass_bodies: true }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let content = crate::random_bytes(4, 3 << 20);
    let path = dir.path().join("upload");
    fs::write(&path, &content).unwrap();
    let digest = sha256_bytes(&content);

    let start = |repo: &str| {
        let r = get(&format!("{}/v2/{repo}/blobs/uploads/", relay.url_base()), &["--request", "POST"]);
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let location = r.header("location").unwrap().to_owned();
        assert!(location.starts_with(&relay.url_base()), "{location}");
        location
    };
    // Monolithic PUT with a Content-Length (and curl's Expect: 100-continue for 3 MiB).
    let location = start("r/up");
    let put = curl(&CurlRequest {
        method: "PUT",
        url: &format!("{location}&digest={digest}"),
        upload: Some(&path),
        ..CurlRequest::default()
    })
    .unwrap();
    assert_eq!(put.status, 201, "{} {}", put.stderr, String::from_utf8_lossy(&put.body));
    assert!(s.registry.blob_exists("r/up", &digest).unwrap());

    // Chunked PATCH, then the closing PUT without a body.
    assert!(!s.registry.blob_exists("r/up2", &digest).unwrap());
    let location = start("r/up2");
    let appended = curl(&CurlRequest {
        method: "PATCH",
        url: &location,
        data: Some(&content),
        headers: vec!["Transfer-Encoding: chunked".into(), "Content-Type: application/octet-stream".into()],
        ..CurlRequest::default()
    })
    .unwrap();
    assert_eq!(appended.status, 202, "{} {}", appended.stderr, String::from_utf8_lossy(&appended.body));
    let location = appended.header("location").unwrap().to_owned();
    assert!(location.starts_with(&relay.url_base()), "{location}");
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = get(&format!("{location}{sep}digest={digest}"), &["--request", "PUT"]);
    assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
    assert!(s.registry.blob_exists("r/up2", &digest).unwrap());

    // Uploads are not blob GETs: nothing was flipped on the way; the registry has the bytes.
    assert_eq!(relay.faults_applied(), 0);
    let (status, _, body) = s.registry.get(&format!("/v2/r/up/blobs/{digest}")).unwrap();
    assert_eq!((status, sha256_bytes(&body)), (200, digest));
}

#[test]
fn relay_stops_on_drop() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = FaultyRelay::start(&upstream.local_addr().unwrap().to_string(), Fault::None).unwrap();
    let addr = relay.addr.clone();
    drop(relay);
    assert!(TcpStream::connect(&addr).is_err());
}
