//! What `mover` writes for a terminal: peer text never carries control characters (issue 20,
//! defect 5), and a closed or full stdout/stderr never makes it panic (issue 20, defect 14).

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{bin, text};

/// A title change, a bell, a screen clear and an 8-bit CSI: what a hostile name or body holds.
const HOSTILE: &str = "\x1b]0;pwned\x07\x1b[2J\u{9b}31mevil";

fn assert_no_raw_controls(output: &std::process::Output) {
    for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text_of = String::from_utf8_lossy(bytes);
        assert!(!bytes.contains(&0x1b), "raw ESC on {stream}:\n{}", text(output));
        assert!(!bytes.contains(&0x07), "raw BEL on {stream}:\n{}", text(output));
        assert!(!text_of.contains('\u{9b}'), "raw CSI (U+009B) on {stream}:\n{}", text(output));
    }
}

/// Nests directories below `dir` until their path is `depth` bytes long (past `PATH_MAX`, so
/// through directory handles), and returns a handle on the deepest.
fn deep_dir(dir: &Path, depth: usize) -> std::os::fd::OwnedFd {
    use rustix::fs::{Mode, OFlags};
    let mut fd = rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    let mut length = 0;
    while length < depth {
        let name = "d".repeat(200);
        rustix::fs::mkdirat(fd.as_fd(), name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(fd.as_fd(), name.as_str(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        length += name.len() + 1;
    }
    fd
}

/// A source name with escapes that cannot be copied (its path is past mover's 4096-byte limit):
/// the final `error:` line names it, escaped.
#[test]
fn a_hostile_file_name_in_the_final_error_is_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let deepest = deep_dir(&src, 4000);
    let name = format!("{HOSTILE}{}", "x".repeat(120));
    let file = rustix::fs::openat(
        deepest.as_fd(),
        name.as_str(),
        rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .unwrap();
    drop(file);
    let dst = tmp.path().join("dst");
    let output = common::mover(&["copy", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\\x1b]0;pwned\\x07\\x1b[2J\\u{9b}31mevil"), "the name is not shown escaped:\n{stderr}");
    assert_no_raw_controls(&output);
    // JSON keeps the name (escaped by JSON itself, DEL and C1 included).
    let output = common::mover(&["copy", src.to_str().unwrap(), dst.to_str().unwrap(), "--output", "json"]);
    assert_no_raw_controls(&output);
    let summary = common::summary(&output);
    assert!(summary["errors"][0].as_str().unwrap().contains(HOSTILE), "{}", text(&output));
}

/// A registry on loopback that answers `/v2/` and then every request with `status` and `body`.
fn hostile_registry(status: &'static str, body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_owned();
            let (status, body) = if line.starts_with("GET /v2/ ") { ("200 OK", "{}") } else { (status, body) };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A registry's error body with escapes (an OSC 52 clipboard write, a title, a screen clear,
/// a fake `ok` drawn over the error) is shown escaped.
#[test]
fn a_hostile_registry_error_body_is_escaped() {
    const BODY: &str = "\x1b]52;c;cm0gLXJmIH4=\x07\x1b]0;pwned\x07\x1b[2J\r\x1b[1A\x1b[2Kcopied ok \u{9b}32m";
    let port = hostile_registry("400 Bad Request", BODY);
    let tmp = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:v1", tmp.path().join("out").display());
    let source = format!("docker://127.0.0.1:{port}/ns/app:v1");
    let output = common::mover(&["image", "copy", "--src-plain-http", &source, &layout]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\\x1b]52;c;cm0gLXJmIH4=\\x07"), "the body is not shown escaped:\n{stderr}");
    assert_no_raw_controls(&output);
    let output = common::mover(&["image", "copy", "--src-plain-http", &source, &layout, "--output", "json"]);
    assert_no_raw_controls(&output);
    let summary = common::summary(&output);
    assert!(summary["errors"][0].as_str().unwrap().contains("]52;c;"), "{}", text(&output));
}

/// How a run with a closed or full stream ended.
struct Ended {
    code: Option<i32>,
    stderr: String,
}

/// Runs `program args` with stdout and/or stderr a pipe whose reader is closed at once, or
/// `/dev/full`; the other stream (if not broken) is captured.
fn run_broken(program: &str, args: &[&str], stdout_broken: bool, stderr: &str) -> Ended {
    let broken_pipe = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        Stdio::from(writer)
    };
    let mut command = Command::new(bin(program));
    command.args(args).env_remove("MOVER_OUTPUT").stdin(Stdio::null());
    command.stdout(if stdout_broken { broken_pipe() } else { Stdio::null() });
    let captured = match stderr {
        "closed" => {
            command.stderr(broken_pipe());
            false
        }
        "full" => {
            command.stderr(Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap()));
            false
        }
        _ => {
            command.stderr(Stdio::piped());
            true
        }
    };
    let output = command.output().unwrap();
    Ended {
        code: output.status.code(),
        stderr: if captured { String::from_utf8_lossy(&output.stderr).into_owned() } else { String::new() },
    }
}

/// `mover … 2>&1 | head -1` and `2>/dev/full`: never a panic (exit 101), always a documented
/// code.
#[test]
fn a_closed_or_full_stdout_or_stderr_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("f{i}")), b"data").unwrap();
    }
    // A device node: a warning on stderr in every run.
    let status = Command::new("mknod").arg(src.join("null")).args(["c", "1", "3"]).status();
    let has_device = status.is_ok_and(|s| s.success());
    let dst = tmp.path().join("dst");
    let (src, dst) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let missing = tmp.path().join("missing");
    let cases: Vec<(&str, Vec<&str>, Option<i32>)> = vec![
        ("mover", vec!["--help"], Some(0)),
        ("mover", vec!["copy", src, dst, "--output", "json"], Some(0)),
        ("mover", vec!["copy", src, dst, "-v"], Some(0)),
        ("mover", vec!["copy", missing.to_str().unwrap(), dst], Some(1)),
        ("mover", vec!["copy", "--no-such-flag"], Some(64)),
        ("mover", vec!["plan", "run", missing.to_str().unwrap(), "--output", "json"], Some(1)),
        ("mover-agent", vec!["--help"], Some(0)),
        (
            "mover-agent",
            vec!["serve", "--listen", "127.0.0.1:0", "--certs", "/nonexistent", "--volume", "v=/x"],
            Some(64),
        ),
    ];
    for (program, args, expected) in &cases {
        for (stdout_broken, stderr) in
            [(true, "closed"), (true, "full"), (false, "closed"), (false, "full"), (true, "captured")]
        {
            let ended = run_broken(program, args, stdout_broken, stderr);
            let what = format!("`{program} {}` (stdout broken: {stdout_broken}, stderr {stderr})", args.join(" "));
            assert_ne!(ended.code, Some(101), "{what} panicked");
            assert!(!ended.stderr.contains("panicked"), "{what} panicked:\n{}", ended.stderr);
            assert_eq!(ended.code, *expected, "{what}:\n{}", ended.stderr);
        }
    }
    assert!(has_device || !common::is_root(), "mknod failed as root");
}
