//! Tests of the registry harness against the real `docker-registry`, read with curl and written
//! with curl and skopeo.

use std::net::TcpStream;
use std::path::Path;

use super::*;
use crate::oci::{self, OCI_MANIFEST, sha256_bytes};

fn available() -> bool {
    let ok = registry_available();
    if !ok {
        println!("note: docker-registry is not installed: skipping");
    }
    ok
}

fn start(dir: &Path, tls: bool, auth: Auth) -> Registry {
    Registry::start(RegistryOptions { tls, auth }, dir).unwrap()
}

fn basic() -> Auth {
    Auth::Basic { user: "mover".into(), password: "s3cret:with colon".into() }
}

/// A blob and a manifest pushed with curl read back byte for byte; `HEAD` of blobs tells present
/// from absent; the process is gone after drop.
fn exercise(registry: &Registry, dir: &Path) {
    let (status, headers, body) = registry.get("/v2/").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("docker-distribution-api-version") && v == "registry/2.0")
    );

    let blob = dir.join("blob");
    fs::write(&blob, crate::random_bytes(1, 3 << 20)).unwrap();
    let pushed = registry.push_blob("team/app", &blob).unwrap();
    assert_eq!(pushed.size, 3 << 20);
    assert!(registry.blob_exists("team/app", &pushed.digest).unwrap());
    assert!(!registry.blob_exists("team/other", &pushed.digest).unwrap(), "blobs are per repository");
    assert!(!registry.blob_exists("team/app", &sha256_bytes(b"absent")).unwrap());
    let (status, headers, body) = registry.get(&format!("/v2/team/app/blobs/{}", pushed.digest)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(sha256_bytes(&body), pushed.digest);
    assert!(headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("docker-content-digest") && *v == pushed.digest));

    let config = dir.join("config");
    fs::write(&config, b"{\"architecture\":\"amd64\",\"os\":\"linux\"}").unwrap();
    let config = registry.push_blob("team/app", &config).unwrap();
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.with_media_type(oci::OCI_CONFIG).to_json(),
        "layers": [pushed.with_media_type(oci::OCI_LAYER_GZIP).to_json()],
    }))
    .unwrap();
    registry.put_manifest("team/app", "v1", OCI_MANIFEST, &manifest).unwrap();
    let (status, content_type, body) = registry.get_manifest("team/app", "v1").unwrap();
    assert_eq!((status, content_type.as_str()), (200, OCI_MANIFEST));
    assert_eq!(body, manifest);
    let (status, _, body) = registry.get_manifest("team/app", &sha256_bytes(&manifest)).unwrap();
    assert_eq!((status, body), (200, manifest));
    assert_eq!(registry.get_manifest("team/app", "v2").unwrap().0, 404);
    let (_, _, catalog) = registry.get("/v2/_catalog").unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&catalog).unwrap()["repositories"],
        serde_json::json!(["team/app"])
    );
}

fn assert_stops(registry: Registry) {
    let addr = registry.addr.clone();
    let pid = registry.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(registry);
    assert!(TcpStream::connect(&addr).is_err(), "{addr} still answers after drop");
}

#[test]
fn plain_http_registry_serves_the_api() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), false, Auth::None);
    assert!(registry.url_base().starts_with("http://127.0.0.1:"));
    assert!(registry.ca_pem.is_none() && registry.credentials().is_none());
    exercise(&registry, dir.path());
    // A second one at the same time gets its own port and storage.
    let other = start(dir.path(), false, Auth::None);
    assert_ne!(other.addr, registry.addr);
    assert_eq!(other.get("/v2/_catalog").unwrap().2, b"{\"repositories\":[]}\n");
    assert_stops(other);
    assert_stops(registry);
}

#[test]
fn tls_registry_is_trusted_only_with_its_ca() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), true, Auth::None);
    assert!(registry.url_base().starts_with("https://127.0.0.1:"));
    let ca = registry.ca_pem.clone().unwrap();
    assert!(fs::read_to_string(&ca).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(registry.cert_dir.as_deref(), ca.parent());
    exercise(&registry, dir.path());

    let url = format!("{}/v2/", registry.url_base());
    let untrusted = curl(&CurlRequest { url: &url, ..CurlRequest::default() }).unwrap();
    assert_eq!((untrusted.exit, untrusted.status), (60, 0), "{}", untrusted.stderr);
    let plain = format!("http://{}/v2/", registry.addr);
    let plain = curl(&CurlRequest { url: &plain, ..CurlRequest::default() }).unwrap();
    assert_ne!(plain.status, 200, "plain HTTP to the TLS port must not succeed");
    assert_stops(registry);
}

#[test]
fn basic_auth_registry_wants_credentials() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), false, basic());
    assert_eq!(registry.credentials(), Some(("mover", "s3cret:with colon")));
    let url = format!("{}/v2/", registry.url_base());
    let anonymous = curl(&CurlRequest { url: &url, ..CurlRequest::default() }).unwrap();
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Basic realm=\"mover-test\""));
    let wrong = curl(&CurlRequest { url: &url, user: Some(("mover", "nope")), ..CurlRequest::default() }).unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(registry.get("/v2/").unwrap().0, 200);
    exercise(&registry, dir.path());
    assert_stops(registry);
}

#[test]
fn skopeo_seeds_a_tls_basic_auth_registry_with_exact_digests() {
    if !available() || !skopeo_available() {
        println!("note: skopeo is not installed: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sample = oci::sample_multiarch(&dir.path().join("layout"), 256 << 10).unwrap();
    let registry = start(dir.path(), true, basic());
    registry.push_layout(&sample.dir, "multi", "bench/a", "v1").unwrap();
    registry.push_layout(&sample.dir, "single", "bench/single", "latest").unwrap();
    check_pushed(&registry, &sample, "bench/a", "v1");

    let (status, content_type, body) = registry.get_manifest("bench/single", "latest").unwrap();
    assert_eq!((status, content_type.as_str()), (200, OCI_MANIFEST));
    assert_eq!(sha256_bytes(&body), sample.single().manifest.digest);
    for layer in &sample.single().layers {
        assert!(registry.blob_exists("bench/single", &layer.digest).unwrap());
    }
    assert!(!registry.blob_exists("bench/single", &sample.images[1].layers[3].digest).unwrap());
}

#[test]
fn skopeo_seeds_docker_format_images_over_plain_http() {
    if !available() || !skopeo_available() {
        println!("note: skopeo is not installed: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sample = oci::sample_multiarch_with(&dir.path().join("layout"), 100_000, true).unwrap();
    let registry = start(dir.path(), false, Auth::None);
    // (skopeo cannot read Docker manifests by tag from an OCI layout: this goes through curl.)
    registry.push_layout(&sample.dir, "multi", "docker/list", "v1").unwrap();
    check_pushed(&registry, &sample, "docker/list", "v1");
    // And skopeo reads back what curl pushed, as Docker formats.
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/docker/list:v1", registry.addr))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sha256_bytes(&out.stdout), sample.index.digest);
}

#[test]
fn curl_pushes_oci_layouts_too() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sample = oci::sample_multiarch(&dir.path().join("layout"), 70_000).unwrap();
    let registry = start(dir.path(), true, basic());
    registry.push_layout_with_curl(&sample.dir, "multi", "by/curl", "v1").unwrap();
    check_pushed(&registry, &sample, "by/curl", "v1");
    let missing = registry.push_layout_with_curl(&sample.dir, "nope", "by/curl", "v1").unwrap_err();
    assert_eq!(missing.kind(), io::ErrorKind::NotFound);
}

/// The index and every manifest are served with their own media types and exact bytes; every
/// blob is present with its digest.
fn check_pushed(registry: &Registry, sample: &oci::Sample, repo: &str, tag: &str) {
    let (status, content_type, body) = registry.get_manifest(repo, tag).unwrap();
    assert_eq!(status, 200);
    assert_eq!(content_type, sample.index.media_type);
    assert_eq!(sha256_bytes(&body), sample.index.digest);
    for image in &sample.images {
        let (status, content_type, body) = registry.get_manifest(repo, &image.manifest.digest).unwrap();
        assert_eq!((status, content_type.as_str()), (200, image.manifest.media_type.as_str()));
        assert_eq!(body, fs::read(oci::LayoutBuilder::blob_path_in(&sample.dir, &image.manifest.digest)).unwrap());
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            let (status, _, body) = registry.get(&format!("/v2/{repo}/blobs/{}", blob.digest)).unwrap();
            assert_eq!(status, 200);
            assert_eq!(sha256_bytes(&body), blob.digest);
        }
    }
}
