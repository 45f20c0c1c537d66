//! `mover image copy` and `mover image sync` against real `docker-registry` processes on
//! loopback (plain, TLS with a test CA, htpasswd basic auth), OCI layouts made by the tests, and
//! a fault-injecting relay. The registry's API is read back with curl, independently of mover.

mod common;

use std::path::Path;
use std::process::Output;

use common::{mover, summary, text};
use mover_testdata::fault::{Fault, FaultyRelay};
use mover_testdata::oci::{self, LayoutBuilder, Sample};
use mover_testdata::registry::{Auth, Registry, RegistryOptions};

const LAYER: u64 = 300 << 10;

fn registry(dir: &Path, tls: bool, auth: Auth) -> Registry {
    Registry::start(RegistryOptions { tls, auth }, dir)
        .expect("start docker-registry (apt-get install docker-registry)")
}

fn plain(dir: &Path) -> Registry {
    registry(dir, false, Auth::None)
}

fn image(args: &[&str]) -> Output {
    let mut all = vec!["image"];
    all.extend_from_slice(args);
    mover(&all)
}

fn json_image(args: &[&str]) -> (Output, serde_json::Value) {
    let mut all = vec!["--output", "json", "image"];
    all.extend_from_slice(args);
    let output = mover(&all);
    let value = summary(&output);
    (output, value)
}

fn sample(dir: &Path) -> Sample {
    oci::sample_multiarch(&dir.join("layout"), LAYER).expect("build the sample layout")
}

fn layout_ref(sample: &Sample, tag: &str) -> String {
    format!("oci:{}:{tag}", sample.dir.display())
}

/// Every manifest and blob of the sample is in `repo`, and `tag` serves the index's exact bytes.
fn assert_all_there(registry: &Registry, repo: &str, tag: &str, sample: &Sample) {
    let (status, content_type, bytes) = registry.get_manifest(repo, tag).unwrap();
    assert_eq!(status, 200, "tag {tag} missing in {repo}");
    assert_eq!(content_type, sample.index.media_type);
    assert_eq!(oci::sha256_bytes(&bytes), sample.index.digest, "the index digest changed");
    for image in &sample.images {
        let (status, _, bytes) = registry.get_manifest(repo, &image.manifest.digest).unwrap();
        assert_eq!(status, 200);
        assert_eq!(oci::sha256_bytes(&bytes), image.manifest.digest);
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            assert!(registry.blob_exists(repo, &blob.digest).unwrap(), "blob {} missing", blob.digest);
        }
    }
}

fn tag_absent(registry: &Registry, repo: &str, tag: &str) -> bool {
    registry.get_manifest(repo, tag).unwrap().0 == 404
}

#[test]
fn multi_arch_copy_preserves_every_digest_and_a_repeat_moves_no_blob_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let reg = plain(dir.path());
    let sample = sample(dir.path());
    let target = format!("docker://{}/team/app:v1", reg.addr);
    let (output, first) = json_image(&["copy", "--dest-plain-http", &layout_ref(&sample, "multi"), &target]);
    assert!(output.status.success(), "{}", text(&output));
    assert_all_there(&reg, "team/app", "v1", &sample);
    // 3 shared + 2 own layers + 2 configs.
    assert_eq!(first["blobs_copied"], 7, "{first}");
    assert_eq!(first["manifests"], 3, "{first}");
    assert_eq!(
        first["bytes_copied"].as_u64().unwrap(),
        5 * LAYER + sample.images.iter().map(|i| i.config.size).sum::<u64>()
    );

    let (output, again) = json_image(&["copy", "--dest-plain-http", &layout_ref(&sample, "multi"), &target]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(again["blobs_copied"], 0, "{again}");
    assert_eq!(again["bytes_copied"], 0, "{again}");
    assert_eq!(again["blobs_skipped"], 7, "{again}");
    // The JSON stream carries per-blob events before the summary.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.lines().any(|l| l.contains(r#""type":"blob""#) && l.contains(r#""state":"skipped""#)), "{stdout}");
}

#[test]
fn single_image_and_platform_selection() {
    let dir = tempfile::tempdir().unwrap();
    let reg = plain(dir.path());
    let sample = sample(dir.path());
    let output = image(&[
        "copy",
        "--dest-plain-http",
        &layout_ref(&sample, "single"),
        &format!("docker://{}/one/app", reg.addr),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    // No target tag given: the source's (`single`) is used.
    let (status, _, bytes) = reg.get_manifest("one/app", "single").unwrap();
    assert_eq!(status, 200);
    assert_eq!(oci::sha256_bytes(&bytes), sample.single().manifest.digest);

    let arm = &sample.images[1];
    let output = image(&[
        "copy",
        "--dest-plain-http",
        "--platform",
        "linux/arm64",
        &layout_ref(&sample, "multi"),
        &format!("docker://{}/one/arm:v1", reg.addr),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let (_, _, bytes) = reg.get_manifest("one/arm", "v1").unwrap();
    assert_eq!(oci::sha256_bytes(&bytes), arm.manifest.digest, "the tag must point at the arm64 manifest");
    assert!(!reg.blob_exists("one/arm", &sample.images[0].layers[3].digest).unwrap(), "amd64's own layer was copied");

    let output = image(&[
        "copy",
        "--dest-plain-http",
        "--platform",
        "linux/s390x",
        &layout_ref(&sample, "multi"),
        &format!("docker://{}/one/none:v1", reg.addr),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("linux/s390x") && stderr.contains("linux/amd64"), "{stderr}");
}

#[test]
fn copies_within_one_registry_mount_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let reg = plain(dir.path());
    let sample = sample(dir.path());
    let output = image(&[
        "copy",
        "--dest-plain-http",
        &layout_ref(&sample, "multi"),
        &format!("docker://{}/a/app:v1", reg.addr),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let (output, value) = json_image(&[
        "copy",
        "--src-plain-http",
        "--dest-plain-http",
        &format!("docker://{}/a/app:v1", reg.addr),
        &format!("docker://{}/b/app:v1", reg.addr),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(value["blobs_mounted"], 7, "{value}");
    assert_eq!(value["bytes_copied"], 0, "{value}");
    assert_all_there(&reg, "b/app", "v1", &sample);
}

#[test]
fn oci_to_registry_to_oci_round_trip_is_byte_identical() {
    for docker in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let reg = plain(dir.path());
        let sample = oci::sample_multiarch_with(&dir.path().join("layout"), LAYER, docker).unwrap();
        let middle = format!("docker://{}/rt/app:v1", reg.addr);
        let output = image(&["copy", "--dest-plain-http", &layout_ref(&sample, "multi"), &middle]);
        assert!(output.status.success(), "{}", text(&output));
        assert_all_there(&reg, "rt/app", "v1", &sample);
        let out = dir.path().join("out");
        let output = image(&["copy", "--src-plain-http", &middle, &format!("oci:{}:back", out.display())]);
        assert!(output.status.success(), "{}", text(&output));
        for descriptor in sample.descriptors() {
            let original = std::fs::read(LayoutBuilder::blob_path_in(&sample.dir, &descriptor.digest)).unwrap();
            let copied = std::fs::read(LayoutBuilder::blob_path_in(&out, &descriptor.digest))
                .unwrap_or_else(|e| panic!("{} missing from the copy: {e}", descriptor.digest));
            assert!(original == copied, "{} differs after the round trip", descriptor.digest);
        }
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], sample.index.digest);
        assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], "back");
        // An independent reader agrees. (skopeo finds only OCI-typed entries in a layout's
        // index.json; Docker-typed ones are kept byte-identical by mover, which it cannot read.)
        if !docker && mover_testdata::registry::skopeo_available() {
            let raw = std::process::Command::new("skopeo")
                .args(["inspect", "--raw", &format!("oci:{}:back", out.display())])
                .output()
                .unwrap();
            assert!(raw.status.success(), "{}", text(&raw));
            assert_eq!(oci::sha256_bytes(&raw.stdout), sample.index.digest);
        }
    }
}

#[test]
fn a_tampered_layout_is_rejected_and_nothing_is_tagged() {
    let dir = tempfile::tempdir().unwrap();
    let reg = plain(dir.path());
    let sample = sample(dir.path());
    let victim = LayoutBuilder::blob_path_in(&sample.dir, &sample.shared_layers[1].digest);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1000] ^= 0x55;
    std::fs::write(&victim, &bytes).unwrap();
    let output = image(&[
        "copy",
        "--dest-plain-http",
        &layout_ref(&sample, "multi"),
        &format!("docker://{}/t/app:v1", reg.addr),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not match its digest") && stderr.contains(&sample.shared_layers[1].digest),
        "{stderr}"
    );
    assert!(tag_absent(&reg, "t/app", "v1"));
    assert!(!reg.blob_exists("t/app", &sample.shared_layers[1].digest).unwrap(), "the tampered blob was stored");

    // A blob longer than its descriptor is refused too (reading stops one byte past the size).
    let sample = oci::sample_multiarch(&dir.path().join("layout2"), LAYER).unwrap();
    let victim = LayoutBuilder::blob_path_in(&sample.dir, &sample.shared_layers[0].digest);
    let mut file = std::fs::OpenOptions::new().append(true).open(&victim).unwrap();
    std::io::Write::write_all(&mut file, b"more").unwrap();
    let output = image(&[
        "copy",
        "--dest-plain-http",
        &layout_ref(&sample, "multi"),
        &format!("docker://{}/t/long:v1", reg.addr),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected"), "{}", text(&output));
    assert!(tag_absent(&reg, "t/long", "v1"));
}

#[test]
fn a_lying_registry_is_rejected_and_transient_faults_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let source = plain(&dir.path().join("src"));
    let target = plain(&dir.path().join("dst"));
    let sample = sample(dir.path());
    source.push_layout(&sample.dir, "multi", "s/app", "v1").unwrap();

    let liar = FaultyRelay::start(&source.addr, Fault::FlipByte).unwrap();
    let output = image(&[
        "copy",
        "--src-plain-http",
        "--dest-plain-http",
        &format!("docker://{}/s/app:v1", liar.addr),
        &format!("docker://{}/t/app:v1", target.addr),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not match its digest"), "{}", text(&output));
    assert!(tag_absent(&target, "t/app", "v1"));

    for (fault, repo) in [
        (Fault::FailFirst { n: 2, status: 500 }, "t/five"),
        (Fault::FailFirst { n: 2, status: 429 }, "t/many"),
        (Fault::ResetMidBodyOnce { after: 100_000 }, "t/reset"),
    ] {
        let relay = FaultyRelay::start(&source.addr, fault.clone()).unwrap();
        let output = image(&[
            "copy",
            "--src-plain-http",
            "--dest-plain-http",
            &format!("docker://{}/s/app:v1", relay.addr),
            &format!("docker://{}/{repo}:v1", target.addr),
        ]);
        assert!(output.status.success(), "{fault:?}: {}", text(&output));
        assert!(relay.faults_applied() >= 1, "{fault:?} was never injected");
        assert_all_there(&target, repo, "v1", &sample);
        if matches!(fault, Fault::ResetMidBodyOnce { .. }) {
            assert!(relay.range_requests() >= 1, "the broken download was not resumed with Range");
        }
    }
}

#[test]
fn tls_needs_the_ca_and_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), true, Auth::None);
    let sample = sample(dir.path());
    let target = format!("docker://{}/tls/app:v1", reg.addr);
    let output = image(&["copy", &layout_ref(&sample, "multi"), &target]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown authority"), "{stderr}");
    assert!(stderr.contains(&format!("mover certs fetch {}", reg.addr)), "{stderr}");
    assert!(stderr.contains("--dest-ca-bundle"), "{stderr}");
    assert!(stderr.contains("issued by"), "the presented certificate is not described: {stderr}");
    assert!(tag_absent(&reg, "tls/app", "v1"));

    let ca = reg.ca_pem.as_ref().unwrap().to_str().unwrap();
    let output = image(&["copy", "--dest-ca-bundle", ca, &layout_ref(&sample, "multi"), &target]);
    assert!(output.status.success(), "{}", text(&output));
    assert_all_there(&reg, "tls/app", "v1", &sample);

    // Reading from it needs the CA too; the explicit opt-out works.
    let out = dir.path().join("out");
    let output = image(&["copy", &target, &format!("oci:{}:x", out.display())]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--src-ca-bundle"), "{}", text(&output));
    let output = image(&["copy", "--src-tls-verify=false", &target, &format!("oci:{}:x", out.display())]);
    assert!(output.status.success(), "{}", text(&output));

    // A bundle that is not PEM is refused before anything moves.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let output = image(&["copy", "--dest-ca-bundle", junk.to_str().unwrap(), &layout_ref(&sample, "multi"), &target]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("junk.pem"), "{}", text(&output));
}

#[test]
fn basic_auth_credentials_from_flags_and_auth_files() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), true, Auth::Basic { user: "mover".into(), password: "s3cret-pw".into() });
    let ca = reg.ca_pem.as_ref().unwrap().to_str().unwrap().to_owned();
    let sample = sample(dir.path());
    let target = format!("docker://{}/auth/app:v1", reg.addr);

    let output = image(&["copy", "--dest-ca-bundle", &ca, &layout_ref(&sample, "multi"), &target]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("refused access"), "{}", text(&output));

    let output = image(&[
        "copy",
        "--dest-ca-bundle",
        &ca,
        "--dest-creds",
        "mover:wrong-pw",
        &layout_ref(&sample, "multi"),
        &target,
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = text(&output);
    assert!(all.contains("refused access") && all.contains("--dest-creds"), "{all}");
    assert!(!all.contains("wrong-pw"), "the password leaked into the output: {all}");
    assert!(tag_absent(&reg, "auth/app", "v1"));

    let output = image(&[
        "copy",
        "--dest-ca-bundle",
        &ca,
        "--dest-creds",
        "mover:s3cret-pw",
        &layout_ref(&sample, "multi"),
        &target,
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert_all_there(&reg, "auth/app", "v1", &sample);

    // A docker config.json with the same credentials, for the source side this time.
    use base64::Engine;
    let authfile = dir.path().join("auth.json");
    let encoded = base64::engine::general_purpose::STANDARD.encode("mover:s3cret-pw");
    std::fs::write(&authfile, format!(r#"{{"auths":{{"{}":{{"auth":"{encoded}"}}}}}}"#, reg.addr)).unwrap();
    let out = dir.path().join("out");
    let output = image(&[
        "copy",
        "--src-ca-bundle",
        &ca,
        "--authfile",
        authfile.to_str().unwrap(),
        &target,
        &format!("oci:{}:v1", out.display()),
    ]);
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn oversize_manifests_are_rejected_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let reg = plain(dir.path());
    let mut layout = LayoutBuilder::new(&dir.path().join("big")).unwrap();
    let layer = layout.random_blob(1000, 1, oci::OCI_LAYER_GZIP).unwrap();
    let config = layout.bytes_blob(b"{}", "application/vnd.oci.image.config.v1+json").unwrap();
    let padding = "x".repeat(5 << 20);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json()],
        "annotations": {"padding": padding},
    });
    let manifest = layout.bytes_blob(&serde_json::to_vec(&manifest).unwrap(), oci::OCI_MANIFEST).unwrap();
    layout.tag("big", &manifest).unwrap();
    let output = image(&[
        "copy",
        "--dest-plain-http",
        &format!("oci:{}:big", dir.path().join("big").display()),
        &format!("docker://{}/big/app:v1", reg.addr),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("larger than the 4194304-byte limit"),
        "{}",
        text(&output)
    );
    assert!(tag_absent(&reg, "big/app", "v1"));

    // The cap applies to registry reads too.
    let sample = sample(dir.path());
    let output = image(&[
        "copy",
        "--dest-plain-http",
        &layout_ref(&sample, "multi"),
        &format!("docker://{}/s/app:v1", reg.addr),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let output = image(&[
        "copy",
        "--src-plain-http",
        "--max-manifest-size",
        "100",
        &format!("docker://{}/s/app:v1", reg.addr),
        &format!("oci:{}:v1", dir.path().join("out").display()),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("100-byte limit"), "{}", text(&output));

    // Raising the cap lets the 5 MiB manifest through, byte-identical.
    let out = dir.path().join("big-out");
    let output = image(&[
        "copy",
        "--max-manifest-size",
        "8M",
        &format!("oci:{}:big", dir.path().join("big").display()),
        &format!("oci:{}:big", out.display()),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(LayoutBuilder::blob_path_in(&out, &manifest.digest).exists());
}

#[test]
fn sync_copies_matching_tags_and_whole_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let source = plain(&dir.path().join("src"));
    let target = plain(&dir.path().join("dst"));
    let sample = sample(dir.path());
    for (repo, tag) in [("ns/app", "v1"), ("ns/app", "v2"), ("ns/app", "dev"), ("ns/db", "v1"), ("other/x", "v1")] {
        let output = image(&[
            "copy",
            "--dest-plain-http",
            &layout_ref(&sample, "multi"),
            &format!("docker://{}/{repo}:{tag}", source.addr),
        ]);
        assert!(output.status.success(), "{}", text(&output));
    }
    let (output, value) = json_image(&[
        "sync",
        "--src-plain-http",
        "--dest-plain-http",
        "--tags",
        "^v",
        &format!("docker://{}/ns/app", source.addr),
        &format!("docker://{}/copy/app", target.addr),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(value["images"], 2, "{value}");
    // Blobs shared by the two tags are streamed once.
    assert_eq!(value["blobs_copied"], 7, "{value}");
    assert_all_there(&target, "copy/app", "v1", &sample);
    assert_all_there(&target, "copy/app", "v2", &sample);
    assert!(tag_absent(&target, "copy/app", "dev"));

    let (output, value) = json_image(&[
        "sync",
        "--prefix",
        "--src-plain-http",
        "--dest-plain-http",
        &format!("docker://{}/ns", source.addr),
        &format!("docker://{}/moved", target.addr),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(value["images"], 4, "{value}");
    // The first repository's blobs are streamed once (this run does not know the earlier
    // sync's), the second repository's are mounted from that copy, not re-streamed.
    assert_eq!(value["blobs_copied"], 7, "{value}");
    assert_eq!(value["blobs_mounted"], 7, "{value}");
    for (repo, tag) in [("moved/app", "v1"), ("moved/app", "dev"), ("moved/db", "v1")] {
        assert_all_there(&target, repo, tag, &sample);
    }
    assert!(tag_absent(&target, "moved/x", "v1"));
}

#[test]
fn dry_run_writes_nothing_and_bad_references_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let reg = plain(dir.path());
    let sample = sample(dir.path());
    let output = image(&[
        "copy",
        "--dry-run",
        "--dest-plain-http",
        &layout_ref(&sample, "multi"),
        &format!("docker://{}/d/app:v1", reg.addr),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&sample.shared_layers[0].digest) && stdout.contains("copy"), "{stdout}");
    assert!(tag_absent(&reg, "d/app", "v1"));
    assert!(!reg.blob_exists("d/app", &sample.shared_layers[0].digest).unwrap());
    // A dry run into a layout creates nothing either.
    let planned = dir.path().join("planned");
    let output = image(&["copy", "--dry-run", &layout_ref(&sample, "multi"), &format!("oci:{}:v1", planned.display())]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(!planned.exists(), "a dry run created the target layout");
    // A non-empty directory that is not a layout is not written into.
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("index.json"), b"not mine").unwrap();
    let output = image(&["copy", &layout_ref(&sample, "multi"), &format!("oci:{}:v1", busy.display())]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not empty"), "{}", text(&output));
    assert_eq!(std::fs::read(busy.join("index.json")).unwrap(), b"not mine");

    for (args, expected) in [
        (vec!["copy", "registry/x:y", "oci:/tmp/x"], "unknown transport"),
        (vec!["copy", "docker://host:5000/UPPER", "oci:/tmp/x"], "bad repository name"),
        (vec!["copy", "docker://h:1/a@sha256:abc", "oci:/tmp/x"], "64 lowercase hex"),
        (vec!["copy", "oci:/nonexistent/layout:v1", "oci:/tmp/x"], "not an OCI image layout"),
        (vec!["copy", "--platform", "linux", "oci:/a", "oci:/b"], "OS/ARCH"),
    ] {
        let output = image(&args);
        assert_ne!(output.status.code(), Some(0), "{args:?}: {}", text(&output));
        assert!(String::from_utf8_lossy(&output.stderr).contains(expected), "{args:?}: {}", text(&output));
    }
}

#[test]
fn bearer_token_flow_through_a_token_server() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry(dir.path(), false, Auth::Token { user: "robot".into(), password: "t0ken-pw".into() });
    let tokens = reg.token_server().unwrap();
    let sample = sample(dir.path());
    let target = format!("docker://{}/tok/app:v1", reg.addr);

    // Anonymous: the registry's challenge leads to the token server, which refuses.
    let output = image(&["copy", "--dest-plain-http", &layout_ref(&sample, "multi"), &target]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("refused access"), "{}", text(&output));

    let output =
        image(&["copy", "--dest-plain-http", "--dest-creds", "robot:t0ken-pw", &layout_ref(&sample, "multi"), &target]);
    assert!(output.status.success(), "{}", text(&output));
    let pushes: Vec<_> = tokens.requests().into_iter().filter(|r| r.authenticated).collect();
    assert!(
        pushes.iter().any(|r| r.scopes.iter().any(|s| s == "repository:tok/app:pull,push")),
        "no push token was asked for: {pushes:?}"
    );

    // Reading back goes through mover's own requests (manifests, blobs), with pull tokens.
    let out = dir.path().join("out");
    let output = image(&[
        "copy",
        "--src-plain-http",
        "--src-creds",
        "robot:t0ken-pw",
        &target,
        &format!("oci:{}:v1", out.display()),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], sample.index.digest);
    for descriptor in sample.descriptors() {
        assert!(LayoutBuilder::blob_path_in(&out, &descriptor.digest).exists(), "{} missing", descriptor.digest);
    }

    let output =
        image(&["copy", "--dest-plain-http", "--dest-creds", "robot:wrong", &layout_ref(&sample, "multi"), &target]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = text(&output);
    assert!(all.contains("refused access") && !all.contains("robot:wrong"), "{all}");
}

/// A one-request-per-connection HTTP server on loopback: `respond(method, path, headers)` gives
/// (status line, headers, body); every request's head is recorded.
fn tiny_server(
    respond: impl Fn(&str, &str) -> (String, Vec<(String, String)>, Vec<u8>) + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&heads);
    let respond = std::sync::Arc::new(respond);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (seen, respond) = (std::sync::Arc::clone(&seen), std::sync::Arc::clone(&respond));
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or("").to_owned(), words.next().unwrap_or("").to_owned());
                seen.lock().unwrap().push(head);
                let (status, headers, body) = respond(&method, &path);
                let mut out = stream;
                let mut text = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
                for (name, value) in headers {
                    text.push_str(&name);
                    text.push_str(": ");
                    text.push_str(&value);
                    text.push_str("\r\n");
                }
                text.push_str("\r\n");
                let _ = out.write_all(text.as_bytes());
                if method != "HEAD" {
                    let _ = out.write_all(&body);
                }
            });
        }
    });
    (addr, heads)
}

#[test]
fn credentials_are_not_sent_to_the_host_a_blob_redirects_to() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample(dir.path());
    let image = &sample.images[0];
    let manifest = std::fs::read(LayoutBuilder::blob_path_in(&sample.dir, &image.manifest.digest)).unwrap();
    let blob_dir = sample.dir.clone();
    // The "storage" host blobs are redirected to (another port: another origin).
    let (storage, storage_heads) = tiny_server(move |_, path| {
        let digest = path.trim_start_matches("/files/");
        match std::fs::read(LayoutBuilder::blob_path_in(&blob_dir, digest)) {
            Ok(bytes) => ("200 OK".into(), vec![], bytes),
            Err(_) => ("404 Not Found".into(), vec![], vec![]),
        }
    });
    let manifest_type = image.manifest.media_type.clone();
    let (registry, registry_heads) = tiny_server(move |_, path| {
        if path == "/v2/" {
            ("200 OK".into(), vec![], b"{}".to_vec())
        } else if path.starts_with("/v2/r/app/manifests/") {
            ("200 OK".into(), vec![("Content-Type".into(), manifest_type.clone())], manifest.clone())
        } else if let Some(digest) = path.strip_prefix("/v2/r/app/blobs/") {
            (
                "307 Temporary Redirect".into(),
                vec![("Location".into(), format!("http://{storage}/files/{digest}"))],
                vec![],
            )
        } else {
            ("404 Not Found".into(), vec![], vec![])
        }
    });
    let out = dir.path().join("out");
    let output = mover(&[
        "image",
        "copy",
        "--src-plain-http",
        "--src-creds",
        "alice:redirect-s3cret",
        &format!("docker://{registry}/r/app:v1"),
        &format!("oci:{}:v1", out.display()),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        assert!(LayoutBuilder::blob_path_in(&out, &blob.digest).exists(), "{} missing", blob.digest);
    }
    let registry_heads = registry_heads.lock().unwrap().join("\n").to_lowercase();
    assert!(
        registry_heads.contains("authorization: basic"),
        "the registry itself got no credentials: {registry_heads}"
    );
    let storage_heads = storage_heads.lock().unwrap();
    assert!(storage_heads.len() >= 5, "blobs were not fetched from the redirect target: {storage_heads:?}");
    for head in storage_heads.iter() {
        assert!(!head.to_lowercase().contains("authorization"), "credentials followed the redirect: {head}");
    }
}

/// A registry that lies in a different way for each repository: `self` (an index whose child
/// digest serves the index itself), `huge` (a 100 MiB manifest), `long` (a blob larger than its
/// descriptor), `slow` (429 with `Retry-After: 999999999` once, then the truth).
#[test]
fn a_lying_registry_is_refused_or_clamped_and_nothing_is_tagged() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample(dir.path());
    let amd64 = sample.images[0].clone();
    let layout = sample.dir.clone();
    let manifest = std::fs::read(LayoutBuilder::blob_path_in(&layout, &amd64.manifest.digest)).unwrap();
    let index = std::fs::read(LayoutBuilder::blob_path_in(&layout, &sample.index.digest)).unwrap();
    let throttled = std::sync::atomic::AtomicBool::new(false);
    let manifest_type = amd64.manifest.media_type.clone();
    let index_type = sample.index.media_type.clone();
    let first_child = sample.images[0].manifest.digest.clone();
    let (registry, _) = tiny_server(move |_, path| {
        let ok = |content_type: &str, body: Vec<u8>| {
            ("200 OK".to_owned(), vec![("Content-Type".to_owned(), content_type.to_owned())], body)
        };
        let blob = |digest: &str| std::fs::read(LayoutBuilder::blob_path_in(&layout, digest)).unwrap_or_default();
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["", "v2", ""] => ok("application/json", b"{}".to_vec()),
            // The index, and for its child digest the index again (a cycle only a liar can make).
            ["", "v2", "self", "manifests", reference] if *reference == "v1" || *reference == first_child => {
                ok(&index_type, index.clone())
            }
            ["", "v2", "huge", "manifests", _] => ok(&manifest_type, vec![b' '; 100 << 20]),
            ["", "v2", "long" | "slow", "manifests", _] => ok(&manifest_type, manifest.clone()),
            ["", "v2", "long", "blobs", digest] => {
                let mut bytes = blob(digest);
                bytes.extend_from_slice(b"trailing bytes the descriptor does not cover");
                ok("application/octet-stream", bytes)
            }
            ["", "v2", "slow", "blobs", digest] => {
                if throttled.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    ok("application/octet-stream", blob(digest))
                } else {
                    (
                        "429 Too Many Requests".to_owned(),
                        vec![("Retry-After".to_owned(), "999999999".to_owned())],
                        vec![],
                    )
                }
            }
            _ => ("404 Not Found".to_owned(), vec![], vec![]),
        }
    });
    let copy = |repo: &str| {
        let out = dir.path().join(format!("out-{repo}"));
        let started = std::time::Instant::now();
        let output = image(&[
            "copy",
            "--src-plain-http",
            &format!("docker://{registry}/{repo}:v1"),
            &format!("oci:{}:v1", out.display()),
        ]);
        (output, out, started.elapsed())
    };
    let untagged = |out: &Path| {
        let index: serde_json::Value = std::fs::read(out.join("index.json"))
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
            .unwrap_or(serde_json::json!({"manifests": []}));
        index["manifests"].as_array().unwrap().is_empty()
    };
    for (repo, expected) in
        [("self", "does not match its digest"), ("huge", "larger than the 4194304-byte limit"), ("long", "expected")]
    {
        let (output, out, _) = copy(repo);
        assert_eq!(output.status.code(), Some(1), "{repo}: {}", text(&output));
        assert!(String::from_utf8_lossy(&output.stderr).contains(expected), "{repo}: {}", text(&output));
        assert!(untagged(&out), "{repo}: something was tagged");
    }
    // `Retry-After: 999999999` is clamped (to 30 s), not obeyed.
    let (output, out, took) = copy("slow");
    assert!(output.status.success(), "{}", text(&output));
    assert!(took < std::time::Duration::from_secs(90), "Retry-After was not clamped: {took:?}");
    assert!(!untagged(&out));
}

/// A registry whose mount answers `202` with a `Location` on another host: our credentials must
/// not go there.
#[test]
fn a_mount_answered_with_a_foreign_location_does_not_leak_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample(dir.path());
    let amd64 = sample.images[0].clone();
    let manifest = std::fs::read(LayoutBuilder::blob_path_in(&sample.dir, &amd64.manifest.digest)).unwrap();
    let (elsewhere, elsewhere_heads) = tiny_server(|_, _| ("200 OK".to_owned(), vec![], vec![]));
    let manifest_type = amd64.manifest.media_type.clone();
    let (registry, heads) = tiny_server(move |method, path| {
        let no = ("404 Not Found".to_owned(), vec![], vec![]);
        match (method, path) {
            (_, "/v2/") => ("200 OK".to_owned(), vec![], b"{}".to_vec()),
            ("GET", p) if p.starts_with("/v2/a/manifests/") => {
                ("200 OK".to_owned(), vec![("Content-Type".to_owned(), manifest_type.clone())], manifest.clone())
            }
            ("POST", p) if p.starts_with("/v2/b/blobs/uploads/?mount=") => (
                "202 Accepted".to_owned(),
                vec![("Location".to_owned(), format!("http://{elsewhere}/v2/b/blobs/uploads/stolen"))],
                vec![],
            ),
            // Plain uploads are refused: this test is about the mount only.
            ("POST", _) => {
                ("403 Forbidden".to_owned(), vec![], br#"{"errors":[{"code":"DENIED","message":"no"}]}"#.to_vec())
            }
            _ => no,
        }
    });
    let output = image(&[
        "copy",
        "--src-plain-http",
        "--dest-plain-http",
        "--src-creds",
        "alice:mount-s3cret",
        "--dest-creds",
        "alice:mount-s3cret",
        &format!("docker://{registry}/a:v1"),
        &format!("docker://{registry}/b:v1"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let heads = heads.lock().unwrap().join("\n");
    assert!(heads.contains("mount="), "no mount was attempted: {heads}");
    assert!(elsewhere_heads.lock().unwrap().is_empty(), "a request went to the foreign Location");
}

/// Tags come in pages linked by `Link: <...>; rel="next"`; every page is followed.
#[test]
fn sync_follows_every_page_of_tags() {
    let dir = tempfile::tempdir().unwrap();
    let sample = sample(dir.path());
    let single = sample.single().clone();
    let layout = sample.dir.clone();
    let manifest = std::fs::read(LayoutBuilder::blob_path_in(&layout, &single.manifest.digest)).unwrap();
    let manifest_type = single.manifest.media_type.clone();
    let tags: Vec<String> = (0..250).map(|i| format!("t{i:03}")).collect();
    let (registry, _) = tiny_server(move |_, path| {
        let ok = |content_type: &str, body: Vec<u8>| {
            ("200 OK".to_owned(), vec![("Content-Type".to_owned(), content_type.to_owned())], body)
        };
        if path == "/v2/" {
            return ok("application/json", b"{}".to_vec());
        }
        if let Some(query) = path.strip_prefix("/v2/p/app/tags/list") {
            // Pages of 100 whatever `n` says, as some registries do.
            let start = query.split("last=").nth(1).and_then(|l| tags.iter().position(|t| t == l)).map_or(0, |i| i + 1);
            let page = &tags[start..(start + 100).min(tags.len())];
            let body = serde_json::to_vec(&serde_json::json!({"name": "p/app", "tags": page})).unwrap();
            let mut response = ok("application/json", body);
            if start + 100 < tags.len() {
                let last = page.last().unwrap();
                response.1.push(("Link".to_owned(), format!("</v2/p/app/tags/list?n=100&last={last}>; rel=\"next\"")));
            }
            return response;
        }
        if path.starts_with("/v2/p/app/manifests/") {
            return ok(&manifest_type, manifest.clone());
        }
        if let Some(digest) = path.strip_prefix("/v2/p/app/blobs/") {
            return ok(
                "application/octet-stream",
                std::fs::read(LayoutBuilder::blob_path_in(&layout, digest)).unwrap_or_default(),
            );
        }
        ("404 Not Found".to_owned(), vec![], vec![])
    });
    let out = dir.path().join("out");
    let (output, value) = json_image(&[
        "sync",
        "--src-plain-http",
        &format!("docker://{registry}/p/app"),
        &format!("oci:{}", out.display()),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(value["images"], 250, "{value}");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 250);
}
