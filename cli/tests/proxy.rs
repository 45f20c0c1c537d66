//! The volume tunnel through one HTTP CONNECT proxy: a real `tinyproxy` with Basic auth and a
//! CONNECT port allow-list, and a hand-made TLS-intercepting relay. Errors name the failing hop;
//! the proxy password never shows up in any output or log.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{Agent, Tinyproxy, certs, mover, text};

const PASSWORD: &str = "pr0xy-s3cret-7f1d";

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

struct Setup {
    tmp: tempfile::TempDir,
    src: PathBuf,
    target: PathBuf,
    certs: PathBuf,
    agent: Agent,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/file"), b"through the proxy\n".repeat(1000)).unwrap();
    mover_testdata::write_random(&src.join("random"), 3 << 20, 9).unwrap();
    let target = tmp.path().join("target");
    fs::create_dir(&target).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let agent = Agent::start(&certs, &[format!("data={}", target.display())], tmp.path());
    Setup { tmp, src, target, certs, agent }
}

fn assert_no_password(output: &std::process::Output, logs: &[String]) {
    let all = format!(
        "{}{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        logs.join("")
    );
    assert!(!all.contains(PASSWORD) && !all.contains("wrong-password"), "the proxy password leaked:\n{all}");
}

#[test]
fn copy_through_the_proxy_succeeds_and_the_proxy_sees_the_connect() {
    let setup = setup();
    let Some(proxy) = Tinyproxy::start(setup.tmp.path(), PASSWORD, port_of(&setup.agent.addr)) else { return };
    let output = mover(&[
        "copy",
        setup.src.to_str().unwrap(),
        &setup.agent.url("data"),
        "--certs",
        setup.certs.to_str().unwrap(),
        "--proxy",
        &proxy.url(PASSWORD),
        "-v",
        "--log-level",
        "debug",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    mover_testdata::assert_identical(&setup.src, &setup.target);
    let log = proxy.log_text();
    assert!(log.contains("CONNECT") && log.contains(&setup.agent.addr), "{log}");
    assert_no_password(&output, &[setup.agent.log_text()]);
}

#[test]
fn agent_to_agent_push_goes_through_the_proxy_with_the_password_from_a_file() {
    let setup = setup();
    let Some(proxy) = Tinyproxy::start(setup.tmp.path(), PASSWORD, port_of(&setup.agent.addr)) else { return };
    let source_agent = Agent::start(&setup.certs, &[format!("src={}:ro", setup.src.display())], setup.tmp.path());
    let password_file = setup.tmp.path().join("proxy-password");
    fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let output = mover(&[
        "copy",
        &source_agent.url("src"),
        &setup.agent.url("data"),
        "--certs",
        setup.certs.to_str().unwrap(),
        "--proxy",
        &format!("http://alice@127.0.0.1:{}", proxy.port),
        "--proxy-password-file",
        password_file.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    mover_testdata::assert_identical(&setup.src, &setup.target);
    assert!(proxy.log_text().contains("CONNECT"), "the source agent did not dial through the proxy");
    assert_no_password(&output, &[setup.agent.log_text(), source_agent.log_text()]);
}

fn copy_via(setup: &Setup, proxy_url: &str) -> std::process::Output {
    mover(&[
        "copy",
        setup.src.to_str().unwrap(),
        &setup.agent.url("data"),
        "--certs",
        setup.certs.to_str().unwrap(),
        "--proxy",
        proxy_url,
    ])
}

#[test]
fn wrong_or_missing_password_names_the_proxy_and_its_answer() {
    let setup = setup();
    let Some(proxy) = Tinyproxy::start(setup.tmp.path(), PASSWORD, port_of(&setup.agent.addr)) else { return };
    // tinyproxy answers a wrong password with 401 and missing credentials with 407.
    let output = copy_via(&setup, &proxy.url("wrong-password"));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("the proxy `http://alice:***@127.0.0.1:{}` answered 401", proxy.port))
            && stderr.contains("proxy authentication failed"),
        "{}",
        text(&output)
    );
    assert_no_password(&output, &[setup.agent.log_text()]);
    let output = copy_via(&setup, &format!("http://127.0.0.1:{}", proxy.port));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("answered 407") && stderr.contains("proxy authentication failed"), "{}", text(&output));
}

#[test]
fn a_proxy_that_refuses_the_port_says_so() {
    let setup = setup();
    // Allows CONNECT only to another port than the agent's.
    let Some(proxy) = Tinyproxy::start(setup.tmp.path(), PASSWORD, port_of(&setup.agent.addr).wrapping_add(1)) else {
        return;
    };
    let output = copy_via(&setup, &proxy.url(PASSWORD));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("refused CONNECT to `{}`", setup.agent.addr)), "{}", text(&output));
}

#[test]
fn a_proxy_that_is_down_says_so() {
    let setup = setup();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let output = copy_via(&setup, &format!("http://alice:{PASSWORD}@127.0.0.1:{port}"));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot reach the proxy `http://alice:***@127.0.0.1:{port}`")),
        "{}",
        text(&output)
    );
    assert_no_password(&output, &[]);
}

/// A "proxy" that accepts CONNECT and then terminates TLS itself with a certificate of another
/// CA, as TLS-inspecting corporate proxies do.
fn intercepting_relay(other_certs: &Path) -> u16 {
    let identity = mover_engine::certs::Identity::load(other_certs, mover_engine::certs::Role::Agent).unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(identity.chain, identity.key).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.unwrap();
                let _ = acceptor.accept(tcp).await;
            }
        });
    });
    port
}

#[test]
fn an_intercepting_proxy_fails_the_mutual_tls_and_is_named() {
    let setup = setup();
    let other = common::certs(&setup.tmp.path().join("other-ca"));
    let port = intercepting_relay(&other);
    let output = copy_via(&setup, &format!("http://alice:{PASSWORD}@127.0.0.1:{port}"));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("may be intercepting TLS"), "{}", text(&output));
    assert_eq!(fs::read_dir(&setup.target).unwrap().count(), 0);
    assert_no_password(&output, &[]);
}

#[test]
fn image_copy_goes_through_the_proxy_and_a_wrong_password_is_named() {
    use mover_testdata::registry::{Auth, Registry, RegistryOptions};
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start(RegistryOptions { tls: true, auth: Auth::None }, tmp.path()).unwrap();
    let Some(proxy) = Tinyproxy::start(tmp.path(), PASSWORD, port_of(&registry.addr)) else { return };
    let sample = mover_testdata::oci::sample_multiarch(&tmp.path().join("layout"), 64 << 10).unwrap();
    let ca = registry.ca_pem.as_ref().unwrap().to_str().unwrap().to_owned();
    let source = format!("oci:{}:multi", sample.dir.display());
    let target = format!("docker://{}/via/proxy:v1", registry.addr);

    let output = mover(&["image", "copy", "--dest-ca-bundle", &ca, "--proxy", &proxy.url(PASSWORD), &source, &target]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(proxy.log_text().contains(&format!("CONNECT {}", registry.addr)), "{}", proxy.log_text());
    let (status, _, bytes) = registry.get_manifest("via/proxy", "v1").unwrap();
    assert_eq!(status, 200);
    assert_eq!(mover_testdata::oci::sha256_bytes(&bytes), sample.index.digest);

    // HTTPS_PROXY is honoured the same way when no --proxy is given.
    let before = proxy.log_text().matches("CONNECT").count();
    let output = Command::new(common::bin("mover"))
        .args(["image", "copy", "--dest-ca-bundle", &ca, &source, &format!("docker://{}/via/env:v1", registry.addr)])
        .env("HTTPS_PROXY", proxy.url(PASSWORD))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(proxy.log_text().matches("CONNECT").count() > before, "HTTPS_PROXY was not used");

    let output = mover(&[
        "image",
        "copy",
        "--dest-ca-bundle",
        &ca,
        "--proxy",
        &proxy.url("wrong-password"),
        &source,
        &format!("docker://{}/via/wrong:v1", registry.addr),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("proxy authentication failed") && stderr.contains("127.0.0.1"), "{stderr}");
    assert_no_password(&output, &[]);
    assert!(!stderr.contains("wrong-password"), "{stderr}");
}
