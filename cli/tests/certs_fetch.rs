//! `mover certs fetch` against a real TLS server (`openssl s_server`) presenting a chain from a
//! CA nobody trusts: the bundle holds the presented chain, byte for byte, and the printed
//! fingerprints are the ones openssl computes.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{certs, mover, text};

fn openssl_fingerprint(pem: &Path) -> String {
    let output =
        Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(pem).output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().rsplit_once('=').unwrap().1.to_owned()
}

#[test]
fn fetch_writes_the_presented_chain_and_shows_what_it_is() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: openssl is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = certs(&tmp.path().join("certs"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept", &port.to_string(), "-cert"])
        .arg(dir.join("agent.crt"))
        .arg("-key")
        .arg(dir.join("agent.key"))
        .arg("-cert_chain")
        .arg(dir.join("ca.crt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_for_port(port, "openssl s_server");
    let bundle = tmp.path().join("bundle.pem");
    let output = mover(&["certs", "fetch", &format!("127.0.0.1:{port}"), "-o", bundle.to_str().unwrap()]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("certificate 1 of 2") && stdout.contains("subject:  CN=mover agent"), "{stdout}");
    assert!(stdout.contains("issuer:   CN=mover migration CA") && stdout.contains("not verified"), "{stdout}");
    assert!(stdout.contains(&openssl_fingerprint(&dir.join("agent.crt"))), "{stdout}");
    assert!(stdout.contains(&openssl_fingerprint(&dir.join("ca.crt"))), "{stdout}");
    let written = fs::read_to_string(&bundle).unwrap();
    let expected = format!(
        "{}{}",
        fs::read_to_string(dir.join("agent.crt")).unwrap(),
        fs::read_to_string(dir.join("ca.crt")).unwrap()
    );
    assert_eq!(written.replace("\r\n", "\n"), expected.replace("\r\n", "\n"));
    // The bundle is a CA bundle openssl accepts for verifying the server's certificate.
    let verify =
        Command::new("openssl").args(["verify", "-CAfile"]).arg(&bundle).arg(dir.join("agent.crt")).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));

    let again = mover(&["certs", "fetch", &format!("127.0.0.1:{port}"), "-o", bundle.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "an existing bundle must not be replaced without --force");
}

#[test]
fn fetch_from_nothing_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let output = mover(&["certs", "fetch", &format!("127.0.0.1:{port}")]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!("cannot reach `127.0.0.1:{port}`")),
        "{}",
        text(&output)
    );
    let output = mover(&["certs", "fetch", "no-port"]);
    assert_eq!(output.status.code(), Some(64), "a malformed endpoint is a usage error: {}", text(&output));
}

#[test]
fn certs_init_writes_private_keys_0600_and_refuses_to_overwrite_without_force() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let first = mover(&["certs", "init", dir.to_str().unwrap()]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    for (name, mode) in [("ca.key", 0o600), ("agent.key", 0o600), ("coordinator.key", 0o600), ("ca.crt", 0o644)] {
        let actual = fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(actual, mode, "{name}");
        assert!(String::from_utf8_lossy(&first.stdout).contains(name), "it must say what it wrote");
    }
    let ca = fs::read(dir.join("ca.crt")).unwrap();
    let again = mover(&["certs", "init", dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"), "{}", text(&again));
    assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), ca, "nothing may be replaced without --force");
    let forced = mover(&["certs", "init", dir.to_str().unwrap(), "--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced));
    assert_ne!(fs::read(dir.join("ca.crt")).unwrap(), ca);
}

#[test]
fn a_bundle_fetched_from_a_self_signed_registry_makes_image_copy_work() {
    use mover_testdata::registry::{Auth, Registry, RegistryOptions};
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions { tls: true, auth: Auth::None }, tmp.path()).unwrap();
    let sample = mover_testdata::oci::sample_multiarch(&tmp.path().join("layout"), 32 << 10).unwrap();
    let layout = format!("oci:{}:multi", sample.dir.display());
    let image = format!("docker://{}/fetched/app:v1", registry.addr);
    // Put an image there (trusting the test CA directly), then read it back as a user would.
    let ca = registry.ca_pem.as_ref().unwrap().to_str().unwrap();
    let output = mover(&["image", "copy", "--dest-ca-bundle", ca, &layout, &image]);
    assert!(output.status.success(), "{}", text(&output));

    let out = tmp.path().join("out");
    let without = mover(&["image", "copy", &image, &format!("oci:{}:v1", out.display())]);
    assert_eq!(without.status.code(), Some(1), "{}", text(&without));
    let command = format!("mover certs fetch {}", registry.addr);
    assert!(String::from_utf8_lossy(&without.stderr).contains(&command), "{}", text(&without));

    let bundle = tmp.path().join("registry-bundle.pem");
    let fetched = mover(&["certs", "fetch", &registry.addr, "-o", bundle.to_str().unwrap()]);
    assert!(fetched.status.success(), "{}", text(&fetched));
    let with = mover(&[
        "image",
        "copy",
        "--src-ca-bundle",
        bundle.to_str().unwrap(),
        &image,
        &format!("oci:{}:v1", out.display()),
    ]);
    assert!(with.status.success(), "{}", text(&with));
    let index: serde_json::Value = serde_json::from_slice(&fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], sample.index.digest);
}
