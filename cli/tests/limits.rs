//! Limits that keep an agent serving: a flood of half-open connections does not stop a
//! legitimate copy, and a second receiver for a volume is refused with "target busy".

mod common;

use std::fs;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, certs, mover, text};

#[test]
fn two_thousand_half_open_connections_do_not_stop_a_legitimate_copy() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"legitimate").unwrap();
    let target = tmp.path().join("target");
    fs::create_dir(&target).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let agent = Agent::start(&certs, &[format!("data={}", target.display())], tmp.path());
    // Connections that never say anything: no TLS ClientHello, no hello.
    let flood: Vec<TcpStream> = (0..2000).map(|_| TcpStream::connect(&agent.addr).unwrap()).collect();
    let started = Instant::now();
    let output = mover(&["copy", src.to_str().unwrap(), &agent.url("data"), "--certs", certs.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(started.elapsed() < Duration::from_secs(30), "the copy waited {:?}", started.elapsed());
    assert_eq!(fs::read(target.join("f")).unwrap(), b"legitimate");
    drop(flood);
}

#[test]
fn a_second_receiver_for_one_volume_is_refused_as_target_busy() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    mover_testdata::write_random(&src.join("slow"), 8 << 20, 5).unwrap();
    let target = tmp.path().join("target");
    fs::create_dir(&target).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let agent = Agent::start(&certs, &[format!("data={}", target.display())], tmp.path());
    // A slow first copy (1 MiB/s) holds the volume for several seconds.
    let mut first = Command::new(common::bin("mover"))
        .args([
            "copy",
            src.to_str().unwrap(),
            &agent.url("data"),
            "--certs",
            certs.to_str().unwrap(),
            "--bwlimit",
            "1M",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log_text().contains("\"request\":\"receive\"") {
        assert!(Instant::now() < deadline, "the first copy never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = mover(&["copy", src.to_str().unwrap(), &agent.url("data"), "--certs", certs.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(String::from_utf8_lossy(&second.stderr).contains("target busy"), "{}", text(&second));
    assert!(first.wait().unwrap().success(), "the first copy must not be disturbed");
    mover_testdata::assert_identical(&src, &target);
}
