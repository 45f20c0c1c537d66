//! Cancel means cancel: Ctrl-C of the CLI ends the session at every agent, a rerun right after
//! is accepted, a stale session is ended by the next one, and a volume has one writer across
//! processes.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Agent, certs, mover, text};

/// Bytes of every file under `dir`, temporary files included.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { bytes_under(&entry.path()) } else { meta.len() };
    }
    total
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// A source of 48 MiB in 3 files, a target holding a file the source lacks, and the certificates.
struct Setup {
    tmp: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        for (index, name) in ["a", "b", "c"].iter().enumerate() {
            mover_testdata::write_random(&src.join(name), 16 << 20, index as u64 + 1).unwrap();
        }
        fs::create_dir(tmp.path().join("dst")).unwrap();
        fs::write(tmp.path().join("dst/mine"), b"the user's own file").unwrap();
        certs(&tmp.path().join("certs"));
        Setup { tmp }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.tmp.path().join(name)
    }

    fn certs(&self) -> String {
        self.path("certs").to_str().unwrap().to_owned()
    }

    fn spawn_copy(&self, source: &str, target: &str, extra: &[&str]) -> Child {
        Command::new(common::bin("mover"))
            .args(["copy", source, target, "--certs", &self.certs()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[test]
fn ctrl_c_of_an_agent_to_agent_copy_stops_both_agents_and_a_rerun_right_after_is_accepted() {
    let setup = Setup::new();
    let source = Agent::start(
        setup.path("certs").as_path(),
        &[format!("data={}:ro", setup.path("src").display())],
        setup.tmp.path(),
    );
    let target = Agent::start(
        setup.path("certs").as_path(),
        &[format!("data={}", setup.path("dst").display())],
        setup.tmp.path(),
    );
    let dst = setup.path("dst");
    let before = bytes_under(&dst);
    let mut copy = setup.spawn_copy(&source.url("data"), &target.url("data"), &["--bwlimit", "2M", "--output", "json"]);
    wait_until("content to arrive", Duration::from_secs(20), || bytes_under(&dst) > before + (1 << 20));
    signal(&copy, "INT");
    let exited = Instant::now();
    let status = copy.wait().unwrap();
    let mut stderr = String::new();
    copy.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let mut stdout = String::new();
    copy.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    assert!(stderr.contains("cancelled; run the same command again to resume"), "{stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "summary");
    assert_eq!(last["cancelled"], true);
    // Within 2 s both agents have stopped: the target grows no more.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(exited.elapsed()));
    let settled = bytes_under(&dst);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(bytes_under(&dst), settled, "the target kept being written after the CLI was cancelled");
    assert!(settled < 48 << 20, "the copy had finished before the cancel: the test proves nothing");
    assert!(source.log_text().contains("push cancelled: the coordinator went away"), "{}", source.log_text());
    // No deletion was applied.
    assert_eq!(fs::read(dst.join("mine")).unwrap(), b"the user's own file");
    // A rerun right away is accepted and finishes the copy.
    let rerun =
        mover(&["copy", &source.url("data"), &target.url("data"), "--certs", &setup.certs(), "--allow-mass-delete"]);
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun));
    mover_testdata::assert_identical(&setup.path("src"), &dst);
}

#[test]
fn ctrl_c_of_a_copy_to_an_agent_exits_130_and_keeps_the_partial_for_the_rerun() {
    let setup = Setup::new();
    let target = Agent::start(
        setup.path("certs").as_path(),
        &[format!("data={}", setup.path("dst").display())],
        setup.tmp.path(),
    );
    let dst = setup.path("dst");
    let src = setup.path("src");
    let mut copy = setup.spawn_copy(src.to_str().unwrap(), &target.url("data"), &["--bwlimit", "4M"]);
    wait_until("content to arrive", Duration::from_secs(20), || bytes_under(&dst) > (2 << 20));
    signal(&copy, "TERM");
    let status = copy.wait().unwrap();
    let mut stderr = String::new();
    copy.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    assert!(stderr.contains("cancelled; run the same command again to resume"), "{stderr}");
    assert_eq!(fs::read(dst.join("mine")).unwrap(), b"the user's own file", "nothing is deleted on cancel");
    let rerun =
        mover(&["copy", src.to_str().unwrap(), &target.url("data"), "--certs", &setup.certs(), "--allow-mass-delete"]);
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun));
    mover_testdata::assert_identical(&src, &dst);
}

#[test]
fn a_second_agent_on_the_same_volume_is_refused_while_the_first_still_writes() {
    let setup = Setup::new();
    let dst = setup.path("dst");
    let first = Agent::start(setup.path("certs").as_path(), &[format!("data={}", dst.display())], setup.tmp.path());
    let mut slow = setup.spawn_copy(setup.path("src").to_str().unwrap(), &first.url("data"), &["--bwlimit", "2M"]);
    wait_until("content to arrive", Duration::from_secs(20), || bytes_under(&dst) > (1 << 20));
    // A second agent given the same directory (an agent started while the first drains after
    // SIGTERM, or a mistake) must not let a second writer in.
    let second = Agent::start(setup.path("certs").as_path(), &[format!("data={}", dst.display())], setup.tmp.path());
    let other = setup.path("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("x"), b"x").unwrap();
    let refused = mover(&["copy", other.to_str().unwrap(), &second.url("data"), "--certs", &setup.certs()]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("is being written by another process"), "{}", text(&refused));
    assert!(!dst.join("x").exists());
    slow.kill().unwrap();
    slow.wait().unwrap();
}

/// A TCP relay that can be frozen: it then forwards nothing but keeps every connection open, as
/// a link that died without a FIN does.
struct Relay {
    addr: String,
    frozen: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let frozen = Arc::new(AtomicBool::new(false));
        let (to, flag) = (to.to_owned(), frozen.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&to) else { return };
                for (mut from, mut into) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 16 << 10];
                        loop {
                            while flag.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            match from.read(&mut buffer) {
                                Ok(0) | Err(_) => {
                                    // Frozen: keep the other side open, as a dead link does.
                                    if !flag.load(Ordering::Relaxed) {
                                        let _ = into.shutdown(std::net::Shutdown::Write);
                                    }
                                    return;
                                }
                                Ok(read) => {
                                    if into.write_all(&buffer[..read]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        });
        Relay { addr, frozen }
    }
}

#[test]
fn a_stale_session_is_ended_by_the_next_one_which_says_so() {
    let setup = Setup::new();
    let dst = setup.path("dst");
    let target = Agent::start(setup.path("certs").as_path(), &[format!("data={}", dst.display())], setup.tmp.path());
    let relay = Relay::start(&target.addr);
    let src = setup.path("src");
    let mut copy =
        setup.spawn_copy(src.to_str().unwrap(), &format!("agent://{}/data", relay.addr), &["--bwlimit", "2M"]);
    wait_until("content to arrive", Duration::from_secs(20), || bytes_under(&dst) > (1 << 20));
    // The link dies without a word, and the source with it.
    relay.frozen.store(true, Ordering::Relaxed);
    copy.kill().unwrap();
    copy.wait().unwrap();
    let rerun =
        mover(&["copy", src.to_str().unwrap(), &target.url("data"), "--certs", &setup.certs(), "--allow-mass-delete"]);
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun));
    assert!(text(&rerun).contains("ended a stale session into volume `data`"), "{}", text(&rerun));
    mover_testdata::assert_identical(&src, &dst);
}
