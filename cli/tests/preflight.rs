//! `mover preflight` against real `mover-agent` processes: every check can pass, and each of
//! the failures the seed's prerequisites name is caught with a remedy: an agent that is down, a
//! peer speaking another protocol version, too little space on the target (a small tmpfs), a
//! read-only target, a bad CA bundle, certificates that expire within the window or come from
//! another CA, and `ansible-playbook` missing from `PATH`. `mover plan run` refuses to start
//! when preflight fails.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Agent, Tinyproxy, Tmpfs, certs, is_root, mover_on_plan, text, write_plan};

fn preflight(plan: &Path, extra: &[&str]) -> Output {
    mover_on_plan(&["preflight"], plan, extra, &[])
}

/// The JSON rows of `mover preflight --output json`, by check name.
fn rows(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .filter(|row| row["type"] == "check")
        .collect()
}

/// The one row whose check name contains `needle`.
fn row(output: &Output, needle: &str) -> serde_json::Value {
    let rows = rows(output);
    let found: Vec<_> = rows.iter().filter(|r| r["check"].as_str().unwrap().contains(needle)).collect();
    assert_eq!(found.len(), 1, "expected one check containing `{needle}`\n{}", text(output));
    found[0].clone()
}

fn assert_row(output: &Output, needle: &str, result: &str) -> serde_json::Value {
    let row = row(output, needle);
    assert_eq!(row["result"], result, "{row:#}\n{}", text(output));
    row
}

struct Setup {
    tmp: tempfile::TempDir,
    certs: PathBuf,
    source: PathBuf,
    target: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let source = tmp.path().join("src");
    fs::create_dir(&source).unwrap();
    mover_testdata::write_random(&source.join("data"), 1 << 20, 1).unwrap();
    let target = tmp.path().join("dst");
    fs::create_dir(&target).unwrap();
    Setup { tmp, certs, source, target }
}

fn ansible_available() -> bool {
    std::process::Command::new("ansible-playbook").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn a_sound_plan_passes_every_check() {
    assert!(
        ansible_available(),
        "`ansible-playbook` is missing: `pip install ansible-core` (scripts/test.sh installs it)"
    );
    let s = setup();
    let source_agent = Agent::start(&s.certs, &[format!("db={}:ro", s.source.display())], s.tmp.path());
    let target_agent = Agent::start(&s.certs, &[format!("db={}", s.target.display())], s.tmp.path());
    fs::create_dir(s.tmp.path().join("local")).unwrap();
    fs::write(s.tmp.path().join("hook.yml"), "- hosts: localhost\n  gather_facts: false\n  tasks: []\n").unwrap();
    let plan = write_plan(
        s.tmp.path(),
        &format!(
            "name: sound\ncerts: ./certs\ncaBundles: {{source: ./certs/ca.crt}}\nvolumes:\n  - {{name: db, source: {}, target: {}}}\n  - {{name: local, source: ./local, target: ./new-dir}}\nhooks:\n  - {{name: sh, phase: PreBackup, command: [sh, -c, 'true']}}\n  - {{name: play, phase: PostRestore, playbook: hook.yml}}\n",
            source_agent.url("db"),
            target_agent.url("db")
        ),
    );
    let output = preflight(&plan, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    for row in rows(&output) {
        assert_eq!(row["result"], "ok", "{row:#}");
    }
    for needle in [
        "coordinator certificate chains",
        "agent certificate chains",
        "migration CA valid",
        &format!("agent `{}` reachable", source_agent.addr),
        &format!("agent `{}` protocol version", target_agent.addr),
        &format!("agent `{}`'s certificate", target_agent.addr),
        "volume `db`: source",
        "volume `db`: target `",
        "volume `db`: target free space",
        "volume `local`: target `",
        "source CA bundle",
        "hook `sh`",
        "hook `play`",
        "`ansible-playbook` present",
    ] {
        row(&output, needle);
    }
    // The text table: CHECK, RESULT, REMEDY and a count.
    let output = preflight(&plan, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("CHECK ") && stdout.contains("RESULT") && stdout.contains("REMEDY"), "{stdout}");
    assert!(stdout.trim_end().ends_with(", 0 failed"), "{stdout}");
}

#[test]
fn an_agent_that_is_down_fails_preflight_and_plan_run_does_not_start() {
    let s = setup();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let plan = write_plan(
        s.tmp.path(),
        &format!(
            "name: down\ncerts: ./certs\nvolumes:\n  - {{name: v, source: ./src, target: agent://127.0.0.1:{port}/v}}\n"
        ),
    );
    let output = preflight(&plan, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let down = assert_row(&output, &format!("agent `127.0.0.1:{port}` reachable"), "fail");
    assert!(down["detail"].as_str().unwrap().contains("cannot reach"), "{down:#}");
    assert!(down["remedy"].as_str().unwrap().contains("mover-agent serve"), "{down:#}");
    assert_row(&output, "protocol version", "skipped");
    assert_row(&output, "target free space", "skipped");

    let output = mover_on_plan(&["plan", "run"], &plan, &[], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("preflight: 1 of"), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("FAIL"), "the table is missing: {}", text(&output));
}

/// A peer with the migration's agent certificate that answers every hello with protocol
/// version 99: what an agent of another mover release looks like on the wire.
fn agent_speaking_version(certs: &Path, version: u32) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let identity = mover_engine::certs::Identity::load(certs, mover_engine::certs::Role::Agent).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(mover_engine::tunnel::server_config(&identity).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
                let length = tls.read_u32().await.unwrap() as usize;
                let mut hello = vec![0; length];
                tls.read_exact(&mut hello).await.unwrap();
                assert_eq!(&hello[..4], b"MOVR");
                // The reply preamble: magic, our version, status 1 (refused) and a message.
                let mut body = b"MOVR".to_vec();
                body.extend_from_slice(&version.to_be_bytes());
                body.push(1);
                body.extend_from_slice(b"\x05\x00");
                tls.write_u32(body.len() as u32).await.unwrap();
                tls.write_all(&body).await.unwrap();
                let _ = tls.shutdown().await;
            }
        });
    });
    addr
}

#[test]
fn a_protocol_version_mismatch_is_caught() {
    let s = setup();
    let addr = agent_speaking_version(&s.certs, 99);
    let plan = write_plan(
        s.tmp.path(),
        &format!(
            "name: versions\ncerts: ./certs\nvolumes:\n  - {{name: v, source: ./src, target: agent://{addr}/v}}\n"
        ),
    );
    let output = preflight(&plan, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_row(&output, &format!("agent `{addr}` reachable"), "ok");
    let version = assert_row(&output, &format!("agent `{addr}` protocol version"), "fail");
    let detail = version["detail"].as_str().unwrap();
    assert!(
        detail.contains("protocol version 99")
            && detail.contains(&format!("speaks {}", mover_engine::PROTOCOL_VERSION)),
        "{version:#}"
    );
    assert!(version["remedy"].as_str().unwrap().contains("same mover version"), "{version:#}");
}

#[test]
fn too_little_space_on_the_target_is_caught() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let s = setup();
    let small = s.tmp.path().join("small");
    let _tmpfs = Tmpfs::mount(&small, "size=8m");
    let big = s.tmp.path().join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..3 {
        mover_testdata::write_random(&big.join(format!("part-{i}")), 4 << 20, i).unwrap();
    }
    let source_agent = Agent::start(
        &s.certs,
        &[format!("big={}:ro", big.display()), format!("fits={}:ro", s.source.display())],
        s.tmp.path(),
    );
    let target_agent = Agent::start(&s.certs, &[format!("small={}", small.display())], s.tmp.path());
    let plan_for = |volume: &str| {
        write_plan(
            s.tmp.path(),
            &format!(
                "name: space\ncerts: ./certs\nvolumes:\n  - {{name: v, source: {}, target: {}}}\n",
                source_agent.url(volume),
                target_agent.url("small")
            ),
        )
    };
    // 1 MiB fits into 8 MiB.
    let output = preflight(&plan_for("fits"), &["--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_row(&output, "target free space", "ok");
    // 12 MiB does not.
    let output = preflight(&plan_for("big"), &["--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let space = assert_row(&output, "target free space", "fail");
    assert!(space["detail"].as_str().unwrap().contains("source uses 12.0 MiB"), "{space:#}");
    assert!(space["remedy"].as_str().unwrap().contains("grow the target volume by at least"), "{space:#}");
    assert_row(&output, "writable", "ok");
}

#[test]
fn a_read_only_target_is_caught() {
    let s = setup();
    let agent = Agent::start(&s.certs, &[format!("v={}:ro", s.target.display())], s.tmp.path());
    let plan = write_plan(
        s.tmp.path(),
        &format!("name: ro\ncerts: ./certs\nvolumes:\n  - {{name: v, source: ./src, target: {}}}\n", agent.url("v")),
    );
    let output = preflight(&plan, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let writable = assert_row(&output, "writable", "fail");
    assert!(writable["detail"].as_str().unwrap().contains("read-only"), "{writable:#}");
    let missing = write_plan(
        s.tmp.path(),
        &format!("name: ro\ncerts: ./certs\nvolumes:\n  - {{name: v, source: ./src, target: {}}}\n", agent.url("nope")),
    );
    let output = preflight(&missing, &["--output", "json"]);
    let writable = assert_row(&output, "writable", "fail");
    assert!(writable["detail"].as_str().unwrap().contains("serves no volume `nope`"), "{writable:#}");
}

#[test]
fn a_bad_ca_bundle_is_caught() {
    let s = setup();
    fs::write(
        s.tmp.path().join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    fs::write(s.tmp.path().join("empty.pem"), "no PEM here\n").unwrap();
    let plan = write_plan(s.tmp.path(), "name: bundles\ncaBundles: {source: garbage.pem, target: empty.pem}\n");
    let output = preflight(&plan, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let garbage = assert_row(&output, "source CA bundle", "fail");
    assert!(garbage["detail"].as_str().unwrap().contains("not valid X.509"), "{garbage:#}");
    assert!(garbage["remedy"].as_str().unwrap().contains("mover certs fetch"), "{garbage:#}");
    let empty = assert_row(&output, "target CA bundle", "fail");
    assert!(empty["detail"].as_str().unwrap().contains("holds no PEM certificate"), "{empty:#}");
    let plan = write_plan(s.tmp.path(), "name: bundles\ncaBundles: {source: certs/ca.crt}\n");
    let output = preflight(&plan, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_row(&output, "source CA bundle", "ok");
}

#[test]
fn certificates_expiring_within_the_window_or_from_another_ca_are_caught() {
    let s = setup();
    let agent = Agent::start(&s.certs, &[format!("v={}", s.target.display())], s.tmp.path());
    let plan = write_plan(
        s.tmp.path(),
        &format!("name: certs\ncerts: ./certs\nvolumes:\n  - {{name: v, source: ./src, target: {}}}\n", agent.url("v")),
    );
    // `mover certs init` makes certificates valid for 90 days.
    let output = preflight(&plan, &["--output", "json", "--cert-window-days", "100"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    for needle in
        ["coordinator certificate valid", "migration CA valid", &format!("agent `{}`'s certificate", agent.addr)]
    {
        let row = assert_row(&output, needle, "fail");
        assert!(row["detail"].as_str().unwrap().starts_with("expires in 8"), "{row:#}");
    }
    // An agent certificate of another migration in the certificate directory.
    let other = certs(&s.tmp.path().join("other"));
    fs::copy(other.join("agent.crt"), s.certs.join("agent.crt")).unwrap();
    let output = preflight(&plan, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let chain = assert_row(&output, "agent certificate chains", "fail");
    assert!(chain["detail"].as_str().unwrap().contains("not issued by this migration's CA"), "{chain:#}");
    assert_row(&output, "coordinator certificate chains", "ok");
}

#[test]
fn a_missing_ansible_playbook_is_caught() {
    let s = setup();
    let plan = write_plan(
        s.tmp.path(),
        "name: no-ansible\nvolumes:\n  - {source: ./src, target: ./out}\nhooks:\n  - {name: play, phase: PreBackup, playbook: play.yml}\n  - {name: tool, phase: PreBackup, command: [no-such-tool-here]}\n",
    );
    fs::write(s.tmp.path().join("play.yml"), "- hosts: localhost\n  gather_facts: false\n  tasks: []\n").unwrap();
    // This PATH without the directories that hold an `ansible-playbook`.
    let path = std::env::join_paths(
        std::env::split_paths(&std::env::var_os("PATH").unwrap()).filter(|dir| !dir.join("ansible-playbook").exists()),
    )
    .unwrap();
    let path = path.to_str().unwrap();
    let output = mover_on_plan(&["preflight"], &plan, &["--output", "json"], &[("PATH", path)]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let ansible = assert_row(&output, "`ansible-playbook` present", "fail");
    assert!(ansible["remedy"].as_str().unwrap().contains("pip install ansible-core"), "{ansible:#}");
    assert_row(&output, "hook `tool`", "fail");
    assert_row(&output, "playbook `", "ok");
    let output = mover_on_plan(&["plan", "run"], &plan, &[], &[("PATH", path)]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(!s.tmp.path().join("out").exists(), "the plan ran although preflight failed");
    // With --skip-preflight the hook itself fails, with a hint.
    let output = mover_on_plan(&["plan", "run"], &plan, &["--skip-preflight"], &[("PATH", path)]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot start `ansible-playbook`") && stderr.contains("pip install ansible-core"),
        "{}",
        text(&output)
    );
}

const PROXY_PASSWORD: &str = "pr3flight-s3cret";

#[test]
fn target_agents_are_checked_through_the_plans_proxy() {
    let s = setup();
    let source_agent = Agent::start(&s.certs, &[format!("v={}:ro", s.source.display())], s.tmp.path());
    let target_agent = Agent::start(&s.certs, &[format!("v={}", s.target.display())], s.tmp.path());
    let target_port: u16 = target_agent.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    fs::write(s.tmp.path().join("proxy-password"), format!("{PROXY_PASSWORD}\n")).unwrap();
    let plan_via = |proxy: &Tinyproxy| {
        write_plan(
            s.tmp.path(),
            &format!(
                "name: proxied\ncerts: ./certs\nproxy: http://alice@127.0.0.1:{}\nproxyPasswordFile: proxy-password\nvolumes:\n  - {{name: v, source: {}, target: {}}}\n",
                proxy.port,
                source_agent.url("v"),
                target_agent.url("v")
            ),
        )
    };
    let Some(proxy) = Tinyproxy::start(s.tmp.path(), PROXY_PASSWORD, target_port) else { return };
    let output = preflight(&plan_via(&proxy), &["--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_row(&output, &format!("agent `{}` reachable through proxy", target_agent.addr), "ok");
    assert_row(&output, &format!("agent `{}` reachable", source_agent.addr), "ok");
    let log = proxy.log_text();
    assert!(log.contains("CONNECT") && log.contains(&target_agent.addr), "the proxy saw no CONNECT: {log}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains(PROXY_PASSWORD),
        "the password leaked: {}",
        text(&output)
    );

    // A proxy that refuses CONNECT to the target's port.
    let Some(refusing) = Tinyproxy::start(s.tmp.path(), PROXY_PASSWORD, target_port.wrapping_add(1)) else { return };
    let output = preflight(&plan_via(&refusing), &["--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let row = assert_row(&output, "reachable through proxy", "fail");
    assert!(row["remedy"].as_str().unwrap().contains("ConnectPort"), "{row:#}");
    drop(proxy);
}
