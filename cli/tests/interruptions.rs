//! Interrupted runs: either agent killed with SIGKILL at random points, or the connection cut
//! in the middle of a file. A rerun converges to an identical tree, nothing is ever torn under
//! a final name, and partial data is reused.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Agent, certs, mover, summary, text};
use mover_testdata::{BigFile, TreeSpec};

/// A tree with many small files and a few big ones, generated once for this binary.
fn source() -> &'static Path {
    static SOURCE: OnceLock<tempfile::TempDir> = OnceLock::new();
    SOURCE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let mut spec = TreeSpec::with_entries(3_000);
            spec.big_files = vec![
                BigFile::Random(24 << 20),
                BigFile::Text(16 << 20),
                BigFile::Database(16 << 20),
                BigFile::Sparse { size: 256 << 20, data_every: 8 << 20, data_len: 256 << 10 },
            ];
            mover_testdata::generate(dir.path(), &spec).unwrap();
            dir
        })
        .path()
}

/// Every regular file under a final name in `target` has exactly the source's content.
fn assert_nothing_torn(target: &Path) {
    fn walk(source: &Path, target: &Path, rel: &Path) {
        for entry in fs::read_dir(target.join(rel)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(".mover-tmp-") {
                continue;
            }
            let rel = rel.join(&name);
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                walk(source, target, &rel);
            } else if kind.is_file() {
                let (a, b) = (fs::read(source.join(&rel)).unwrap(), fs::read(target.join(&rel)).unwrap());
                assert!(a == b, "`{}` is torn: it differs from the source under its final name", rel.display());
            }
        }
    }
    walk(source(), target, Path::new(""));
}

/// Differences from the source; retried while the agent is still removing the temporary files
/// of the session that was just interrupted (they may vanish in the middle of the walk).
fn differences(target: &Path) -> Vec<mover_testdata::Difference> {
    let mut attempts = 0;
    loop {
        match mover_testdata::compare(source(), target, &mover_testdata::CompareOptions::default()) {
            Ok(differences) => return differences,
            Err(error) if attempts < 50 => {
                attempts += 1;
                eprintln!("tree changed while compared ({error}); again");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => panic!("cannot compare: {error}"),
        }
    }
}

/// Whether the kill left the copy unfinished. A copy that finished before the kill is undone
/// (the target emptied) so the next iteration has a whole copy to interrupt again.
fn was_interrupted(target: &Path) -> bool {
    if !differences(target).is_empty() {
        return true;
    }
    for entry in fs::read_dir(target).unwrap() {
        let path = entry.unwrap().path();
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            fs::remove_dir_all(&path).unwrap();
        } else {
            fs::remove_file(&path).unwrap();
        }
    }
    false
}

/// A deterministic sequence of kill delays (milliseconds).
fn delays(count: usize, seed: u64) -> Vec<u64> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            40 + state % 900
        })
        .collect()
}

/// Starts `mover copy FROM TO --certs CERTS --streams N` in the background, to be interrupted.
fn spawn_copy(from: &str, to: &str, certs: &Path, streams: u32) -> std::process::Child {
    std::process::Command::new(common::bin("mover"))
        .args(["copy", from, to, "--certs", certs.to_str().unwrap(), "--streams", &streams.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn kill_9(agent: &mut Agent) {
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
}

#[test]
fn sigkill_of_the_target_agent_at_random_points_then_rerun_converges() {
    target_agent_kills(20, 0x5eed, 1);
}

#[test]
fn sigkill_of_the_target_agent_receiving_three_streams_then_rerun_converges() {
    target_agent_kills(10, 0x3eed, 3);
}

#[test]
#[ignore = "long: 100 kills of the target agent"]
fn sigkill_of_the_target_agent_100_times() {
    target_agent_kills(100, 0xdead, 1);
}

fn target_agent_kills(iterations: usize, seed: u64, streams: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("volume");
    fs::create_dir(&target).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let volume = format!("data={}", target.display());
    let mut interrupted = 0;
    for (iteration, delay) in delays(iterations, seed).into_iter().enumerate() {
        let mut agent = Agent::start(&certs, std::slice::from_ref(&volume), tmp.path());
        let mut copy = spawn_copy(source().to_str().unwrap(), &agent.url("data"), &certs, streams);
        std::thread::sleep(Duration::from_millis(delay));
        kill_9(&mut agent);
        let _ = copy.wait();
        assert_nothing_torn(&target);
        interrupted += usize::from(was_interrupted(&target));
        eprintln!("iteration {iteration}: killed after {delay} ms");
    }
    assert!(
        interrupted * 4 >= iterations,
        "only {interrupted} of {iterations} kills hit a copy in progress: the test proves little"
    );
    let agent = Agent::start(&certs, &[volume], tmp.path());
    let output = mover(&[
        "copy",
        source().to_str().unwrap(),
        &agent.url("data"),
        "--certs",
        certs.to_str().unwrap(),
        "--streams",
        &streams.to_string(),
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    mover_testdata::assert_identical(source(), &target);
    assert!(!has_temporaries(&target), "partial files left after a complete run");
}

#[test]
fn sigkill_of_the_source_agent_at_random_points_then_rerun_converges() {
    source_agent_kills(20, 0xfeed, 1);
}

#[test]
fn sigkill_of_the_source_agent_pushing_three_streams_then_rerun_converges() {
    source_agent_kills(10, 0x3eef, 3);
}

#[test]
#[ignore = "long: 100 kills of the source agent"]
fn sigkill_of_the_source_agent_100_times() {
    source_agent_kills(100, 0xbeef, 1);
}

fn source_agent_kills(iterations: usize, seed: u64, streams: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("volume");
    fs::create_dir(&target).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let target_agent = Agent::start(&certs, &[format!("data={}", target.display())], tmp.path());
    let source_volume = format!("data={}:ro", source().display());
    let mut interrupted = 0;
    for delay in delays(iterations, seed) {
        let mut source_agent = Agent::start(&certs, std::slice::from_ref(&source_volume), tmp.path());
        let mut copy = spawn_copy(&source_agent.url("data"), &target_agent.url("data"), &certs, streams);
        std::thread::sleep(Duration::from_millis(delay));
        kill_9(&mut source_agent);
        let status = copy.wait().unwrap();
        assert_nothing_torn(&target);
        interrupted += usize::from(was_interrupted(&target));
        if status.success() {
            // The copy finished before the kill (the target was emptied for the next one).
            continue;
        }
        // The target notices the lost peer and releases the volume for the next run.
        wait_until_free(&target_agent, &certs);
    }
    assert!(
        interrupted * 4 >= iterations,
        "only {interrupted} of {iterations} kills hit a copy in progress: the test proves little"
    );
    let source_agent = Agent::start(&certs, &[source_volume], tmp.path());
    let copy = || {
        mover(&[
            "copy",
            &source_agent.url("data"),
            &target_agent.url("data"),
            "--certs",
            certs.to_str().unwrap(),
            "--streams",
            &streams.to_string(),
            "--output",
            "json",
        ])
    };
    // The target may still be winding down the last killed session for a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut output = copy();
    while output.status.code() != Some(0) && text(&output).contains("target busy") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        output = copy();
    }
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    mover_testdata::assert_identical(source(), &target);
}

/// Retries a no-op ping until the agent answers (it may be finishing the aborted session).
fn wait_until_free(agent: &Agent, certs: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let identity = mover_engine::certs::Identity::load(certs, mover_engine::certs::Role::Coordinator).unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    while runtime.block_on(mover_engine::client::ping(&identity, &agent.addr)).is_err() {
        assert!(Instant::now() < deadline, "agent unresponsive after its peer was killed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn has_temporaries(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().any(|entry| {
        let entry = entry.unwrap();
        entry.file_name().to_string_lossy().starts_with(".mover-tmp-")
            || (entry.file_type().unwrap().is_dir() && has_temporaries(&entry.path()))
    })
}

/// A TCP relay that forwards every connection to `upstream` and cuts them all (both
/// directions, and any later connection) once `limit` bytes in total went from the clients to
/// the server: a link that goes down under a session of several streams.
fn cutting_relay(upstream: String, limit: u64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let forwarded = Arc::new(AtomicU64::new(0));
    let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            if forwarded.load(Ordering::SeqCst) >= limit {
                continue;
            }
            let server = TcpStream::connect(&upstream).unwrap();
            open.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
            let (mut client_read, mut server_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut server_read, mut client_write) = (server, client);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 16 * 1024];
                while let Ok(n) = server_read.read(&mut buffer) {
                    if n == 0 || client_write.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            });
            let (forwarded, open) = (forwarded.clone(), open.clone());
            std::thread::spawn(move || {
                let mut buffer = [0u8; 16 * 1024];
                while let Ok(n) = client_read.read(&mut buffer) {
                    if n == 0 {
                        return;
                    }
                    let before = forwarded.fetch_add(n as u64, Ordering::SeqCst);
                    let n = n.min(limit.saturating_sub(before) as usize);
                    if n > 0 && server_write.write_all(&buffer[..n]).is_err() {
                        return;
                    }
                    if before + n as u64 >= limit {
                        break;
                    }
                }
                for stream in open.lock().unwrap().iter() {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
            });
        }
    });
    addr
}

#[test]
fn a_cut_connection_mid_file_resumes_and_the_rerun_moves_far_fewer_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    mover_testdata::write_random(&src.join("big.bin"), 64 << 20, 42).unwrap();
    let target = tmp.path().join("volume");
    fs::create_dir(&target).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let agent = Agent::start(&certs, &[format!("data={}", target.display())], tmp.path());
    // Cut after ~40 MiB of the 64 MiB file went through.
    let relay = cutting_relay(agent.addr.clone(), 40 << 20);
    let output =
        mover(&["copy", src.to_str().unwrap(), &format!("agent://{relay}/data"), "--certs", certs.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(!target.join("big.bin").exists(), "a partial file appeared under its final name");
    assert!(has_temporaries(&target), "the partial data was not kept for the next run");
    let output = mover(&[
        "copy",
        src.to_str().unwrap(),
        &agent.url("data"),
        "--certs",
        certs.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let wire = summary(&output)["bytes_on_wire"].as_u64().unwrap();
    assert!(wire < 30 << 20, "the rerun sent {wire} bytes of a 64 MiB file of which ~40 MiB had arrived");
    mover_testdata::assert_identical(&src, &target);
    assert!(!has_temporaries(&target));
}
