//! CA bundles as MTC users make them (issue 19, item 6), against real `docker-registry`
//! processes whose certificates `openssl` made: a leaf signed by a private CA and presented
//! alone (its bundle fetched with `mover certs fetch`, as mover's own error advises), and an
//! `openssl req -x509` certificate (CA:TRUE) as its own bundle. A bundle certificate is trusted
//! for the server presenting exactly it, for its names only, and for nothing else. A plain-HTTP
//! registry reached over TLS is named at once, with the flag to pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{mover, text};
use mover_testdata::oci::{self, Sample};
use mover_testdata::registry::{Auth, Registry, RegistryOptions};

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// `openssl req -x509`: a self-signed certificate `NAME.crt`/`NAME.key` in `dir`, CA:TRUE as
/// openssl makes it, with `subject` and any `extra` arguments.
fn self_signed(dir: &Path, name: &str, subject: &str, extra: &[&str]) {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &crt,
        "-days",
        "30",
        "-subj",
        subject,
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args);
}

/// A private CA (`ca.crt`, `ca.key`) in `dir`.
fn private_ca(dir: &Path) {
    self_signed(dir, "ca", "/CN=uxtrial test CA", &[]);
}

/// A server leaf `NAME.crt`/`NAME.key` for `127.0.0.1` and `localhost`, signed by the CA in `dir`.
fn leaf(dir: &Path, name: &str) -> (String, String) {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let (key, csr, crt, ext) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "30",
            "-extfile",
            &ext,
        ],
    );
    (read(&dir.join(&crt)), read(&dir.join(&key)))
}

fn sample(dir: &Path) -> Sample {
    oci::sample_multiarch(&dir.join("layout"), 32 << 10).expect("build the sample layout")
}

fn source(sample: &Sample) -> String {
    format!("oci:{}:single", sample.dir.display())
}

/// `mover certs fetch ADDR -o FILE`, as the "unknown authority" error advises.
fn fetch_bundle(addr: &str, out: &Path) -> PathBuf {
    let fetched = mover(&["certs", "fetch", addr, "-o", out.to_str().unwrap()]);
    assert!(fetched.status.success(), "{}", text(&fetched));
    out.to_owned()
}

#[test]
fn a_private_ca_leaf_presented_alone_is_trusted_through_the_certs_fetch_bundle() {
    let dir = tempfile::tempdir().unwrap();
    private_ca(dir.path());
    let (chain, key) = leaf(dir.path(), "registry");
    let mut registry = Registry::start_with_certificate(&chain, &key, dir.path()).expect("start docker-registry");
    let sample = sample(dir.path());
    let target = format!("docker://{}/shop/web:v1", registry.addr);

    let without = mover(&["image", "copy", &source(&sample), &target]);
    assert_eq!(without.status.code(), Some(1), "{}", text(&without));
    assert!(String::from_utf8_lossy(&without.stderr).contains("unknown authority"), "{}", text(&without));

    let bundle = fetch_bundle(&registry.addr, &dir.path().join("registry.pem"));
    assert_eq!(read(&bundle).matches("BEGIN CERTIFICATE").count(), 1, "the registry presents its leaf alone");
    let with = mover(&["image", "copy", "--dest-ca-bundle", bundle.to_str().unwrap(), &source(&sample), &target]);
    assert!(with.status.success(), "{}", text(&with));
    // Read back with curl, trusting the real CA.
    registry.ca_pem = Some(dir.path().join("ca.crt"));
    let (status, _, bytes) = registry.get_manifest("shop/web", "v1").unwrap();
    assert_eq!(status, 200);
    assert_eq!(oci::sha256_bytes(&bytes), sample.single().manifest.digest);
}

#[test]
fn an_openssl_req_x509_certificate_is_its_own_bundle_for_its_own_names_only() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path(), "self", "/CN=localhost", &["-addext", "subjectAltName=DNS:localhost"]);
    let shown = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(dir.path().join("self.crt"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("CA:TRUE"), "openssl req -x509 makes a CA certificate:\n{shown}");
    let certificate = read(&dir.path().join("self.crt"));
    let registry =
        Registry::start_with_certificate(&certificate, &read(&dir.path().join("self.key")), dir.path()).unwrap();
    let port = registry.addr.rsplit_once(':').unwrap().1;
    let sample = sample(dir.path());
    let bundle = dir.path().join("self.crt");
    let bundle = bundle.to_str().unwrap();

    let by_name = format!("docker://localhost:{port}/shop/web:v1");
    let output = mover(&["image", "copy", "--dest-ca-bundle", bundle, &source(&sample), &by_name]);
    assert!(output.status.success(), "{}", text(&output));

    // The certificate names `localhost` only: the same server under another name is refused.
    let by_address = format!("docker://127.0.0.1:{port}/shop/web:v2");
    let output = mover(&["image", "copy", "--dest-ca-bundle", bundle, &source(&sample), &by_address]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("NotValidForName"), "{}", text(&output));
}

#[test]
fn a_pinned_leaf_vouches_for_no_other_certificate_of_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    private_ca(dir.path());
    let (chain_a, key_a) = leaf(dir.path(), "host-a");
    let (chain_b, key_b) = leaf(dir.path(), "host-b");
    let registry_a = Registry::start_with_certificate(&chain_a, &key_a, dir.path()).unwrap();
    let registry_b = Registry::start_with_certificate(&chain_b, &key_b, dir.path()).unwrap();
    let sample = sample(dir.path());
    let bundle = fetch_bundle(&registry_a.addr, &dir.path().join("a.pem"));
    let bundle = bundle.to_str().unwrap();

    let to_a = format!("docker://{}/shop/web:v1", registry_a.addr);
    let output = mover(&["image", "copy", "--dest-ca-bundle", bundle, &source(&sample), &to_a]);
    assert!(output.status.success(), "{}", text(&output));

    let to_b = format!("docker://{}/shop/web:v1", registry_b.addr);
    let output = mover(&["image", "copy", "--dest-ca-bundle", bundle, &source(&sample), &to_b]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown authority"), "{}", text(&output));
}

#[test]
fn a_plain_http_registry_reached_over_tls_is_named_at_once_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions { tls: false, auth: Auth::None }, dir.path()).unwrap();
    let sample = sample(dir.path());
    let target = format!("docker://{}/shop/web:v1", registry.addr);
    let start = Instant::now();
    let output = mover(&["image", "copy", &source(&sample), &target]);
    let elapsed = start.elapsed();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("plain HTTP"), "{}", text(&output));
    assert!(stderr.contains("--dest-plain-http"), "{}", text(&output));
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?} (retried?)\n{}", text(&output));
}
