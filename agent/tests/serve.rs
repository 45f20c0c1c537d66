//! `mover-agent serve`: configuration errors exit 64, SIGTERM exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mover-agent"))
}

#[test]
fn invalid_configuration_exits_64_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let output = agent()
        .args(["serve", "--listen", "127.0.0.1:0", "--certs"])
        .arg(tmp.path())
        .args(["--volume", "v=/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ca.crt"), "{stderr}");

    let output =
        agent().args(["serve", "--listen", "127.0.0.1:0", "--certs", "/tmp", "--volume", "novalue"]).output().unwrap();
    assert_eq!(output.status.code(), Some(64), "{}", String::from_utf8_lossy(&output.stderr));
    let output = agent().args(["serve", "--listen", "not-an-address"]).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
}

#[test]
fn sigterm_stops_the_agent_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let generated = mover_engine::certs::generate().unwrap();
    mover_engine::certs::write_dir(&tmp.path().join("certs"), &generated, false).unwrap();
    let mut child = agent()
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--certs"])
        .arg(tmp.path().join("certs"))
        .arg("--volume")
        .arg(format!("v={}", tmp.path().display()))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let value: serde_json::Value = serde_json::from_str(&first).expect("JSON log lines");
    assert_eq!(value["fields"]["message"], "serving", "{first}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "agent ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|line| line.contains("SIGTERM received")), "{rest:?}");
}

#[test]
fn hold_runs_until_sigterm_and_exits_0() {
    let mut child = agent().arg("hold").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "`hold` ended on its own");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "`hold` ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
