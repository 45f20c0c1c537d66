//! The command line as rsync and MTC users type it (issue 19, items 1, 7 and 9): a mistyped
//! address is a usage error that writes nothing, a local target is created as rsync creates it,
//! `--bwlimit 5000` means KiB/s, `--progress` and `--delete` are accepted, usage errors exit 64,
//! `mover-agent --listen :PORT` listens everywhere with plain logs, and completions and a man
//! page come from `mover` itself.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, certs, mover, text};

/// Runs `mover ARGS` in `dir`, as a user at a shell there would.
fn mover_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("mover")).current_dir(dir).args(args).env_remove("MOVER_OUTPUT").output().expect("run mover")
}

/// The names directly in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// A directory with `src/one.bin` and a certificate directory `certs`.
fn workspace() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("src")).unwrap();
    fs::write(tmp.path().join("src/one.bin"), b"content").unwrap();
    certs(&tmp.path().join("certs"));
    tmp
}

fn assert_usage(output: &Output, needle: &str) {
    assert_eq!(output.status.code(), Some(64), "{}", text(output));
    assert!(String::from_utf8_lossy(&output.stderr).contains(needle), "no `{needle}` in\n{}", text(output));
}

/// Issue 19 item 1 (ux-trial #1): `agnet://…` once became `./agnet:/…/` on the local disk.
#[test]
fn mistyped_addresses_are_usage_errors_that_write_nothing() {
    let tmp = workspace();
    for address in ["agnet://127.0.0.1:17444/data", "agent:/127.0.0.1:17444/data", "127.0.0.1:17444/data"] {
        let output = mover_in(tmp.path(), &["copy", "./src", address, "--certs", "./certs"]);
        assert_usage(&output, "agent://HOST:PORT/VOLUME");
        assert_eq!(names(tmp.path()), ["certs", "src"], "`{address}` wrote something locally");
    }
    let output = mover_in(tmp.path(), &["copy", "./src", "agnet://127.0.0.1:17444/data"]);
    assert_usage(&output, "unknown scheme `agnet://`");
    // A target claim is made from a source claim: a local source cannot give it one.
    let output = mover_in(tmp.path(), &["copy", "./src", "k8s://ctx/shop/data", "--certs", "./certs"]);
    assert_usage(&output, "its source must be a claim too");
    assert_eq!(names(tmp.path()), ["certs", "src"]);
}

#[test]
fn a_local_directory_whose_name_holds_a_colon_is_written_with_dot_slash() {
    let tmp = workspace();
    let output = mover_in(tmp.path(), &["copy", "./src", "a:b"]);
    assert_usage(&output, "write `./a:b`");
    let output = mover_in(tmp.path(), &["copy", "./src", "./a:b"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read(tmp.path().join("a:b/one.bin")).unwrap(), b"content");
    let help = String::from_utf8_lossy(&mover(&["copy", "--help"]).stdout).into_owned();
    assert!(help.contains("a colon before the first `/` marks an address") && help.contains("`./a:b`"), "{help}");
}

#[test]
fn certs_for_two_local_directories_is_a_usage_error() {
    let tmp = workspace();
    let output = mover_in(tmp.path(), &["copy", "./src", "./dst", "--certs", "./certs"]);
    assert_usage(&output, "`--certs` is for copies that involve an agent");
    assert!(!tmp.path().join("dst").exists());
    // Set in the environment for a whole session, it stays out of the way of a local copy.
    let output = Command::new(bin("mover"))
        .current_dir(tmp.path())
        .args(["copy", "./src", "./dst"])
        .env("MOVER_CERTS", "./certs")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

/// ux-trial #1 and #28: the parents were created as `mkdir -p` does, and a failed copy left its
/// empty target behind.
#[test]
fn a_local_target_is_created_as_rsync_creates_it_and_removed_when_nothing_was_written() {
    let tmp = workspace();
    let output = mover_in(tmp.path(), &["copy", "./src", "./p/q"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`--mkpath`"), "{}", text(&output));
    assert!(!tmp.path().join("p").exists(), "a parent was created");
    let output = mover_in(tmp.path(), &["copy", "./src", "./p/q/r", "--mkpath"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read(tmp.path().join("p/q/r/one.bin")).unwrap(), b"content");

    for (source, target) in [("./nonexistent", "./x"), ("./src/one.bin", "./x1")] {
        let output = mover_in(tmp.path(), &["copy", source, target]);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        assert!(!tmp.path().join(target).exists(), "`mover copy {source} {target}` left `{target}` behind");
    }
    let output = mover_in(tmp.path(), &["copy", "./src", "./src/one.bin"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("`./src/one.bin` is not a directory"),
        "{}",
        text(&output)
    );
}

/// ux-trial #23: these exited 1, not the documented 64.
#[test]
fn usage_errors_exit_64() {
    let tmp = workspace();
    let output = mover_in(tmp.path(), &["copy", "./src", "agent://127.0.0.1:1/data"]);
    assert_usage(&output, "needs `--certs DIR`");
    let output = mover(&["image", "copy", "127.0.0.1:15001/shop/web:v1", "docker://127.0.0.1:1/shop/web:v1"]);
    assert_usage(&output, "unknown transport");
    let output = mover(&["image", "sync", "docker://127.0.0.1:1/shop/web", "docker://127.0.0.1:1/x", "--tags", "^v1("]);
    assert_usage(&output, "`--tags` is not a valid regular expression");
    let output = mover(&["certs", "fetch", "no-port"]);
    assert_usage(&output, "expected `HOST:PORT`");
}

/// ux-trial #12: `--bwlimit 5000` was 5000 bytes/s, where rsync and MTC mean 5000 KiB/s. At the
/// old reading this copy of 1 MiB takes 256 s; at the new one, a fraction of a second.
#[test]
fn a_bwlimit_without_a_unit_is_kib_per_second() {
    let tmp = workspace();
    let random: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    fs::write(tmp.path().join("src/big.bin"), random).unwrap();
    let mut child = Command::new(bin("mover"))
        .current_dir(tmp.path())
        .args(["copy", "./src", "./dst", "--bwlimit", "4096", "--compress", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`--bwlimit 4096` took over 30 s for 1 MiB: read as bytes per second, not KiB/s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert_eq!(fs::metadata(tmp.path().join("dst/big.bin")).unwrap().len(), 1 << 20);
}

/// ux-trial #13: clap suggested the opposite flags.
#[test]
fn progress_and_delete_are_accepted_as_rsync_spells_them() {
    let tmp = workspace();
    fs::create_dir(tmp.path().join("dst")).unwrap();
    fs::write(tmp.path().join("dst/one.bin"), b"old").unwrap();
    fs::write(tmp.path().join("dst/extra"), b"not in the source").unwrap();
    let output = mover_in(tmp.path(), &["copy", "./src", "./dst", "--delete", "--progress"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(names(&tmp.path().join("dst")), ["one.bin"]);
    let output = mover_in(tmp.path(), &["copy", "./src", "./dst", "--delete", "--no-delete"]);
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
}

/// ux-trial #27 and #29: `--listen :7443` was refused, and logs to a file carried colour codes.
#[test]
fn the_agent_listens_on_every_interface_with_colon_port_and_logs_plain_text() {
    let tmp = workspace();
    let volume = tmp.path().join("volume");
    fs::create_dir(&volume).unwrap();
    let mut agent = Command::new(bin("mover-agent"))
        .args(["serve", "--listen", ":0", "--log-format", "text", "--certs"])
        .arg(tmp.path().join("certs"))
        .arg("--volume")
        .arg(format!("data={}", volume.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stderr.take().unwrap()).lines();
    let serving = lines.next().expect("a startup line").unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(!serving.contains('\u{1b}'), "colour codes in a log that is not a terminal: {serving:?}");
    assert!(serving.contains(&format!("volumes=data={}", volume.display())), "{serving}");
    let listen = serving.split_whitespace().find_map(|field| field.strip_prefix("listen=")).expect(&serving);
    assert!(listen.starts_with("[::]:") || listen.starts_with("0.0.0.0:"), "{serving}");

    // Reachable on loopback, through the unspecified address.
    let port = listen.rsplit_once(':').unwrap().1;
    let mut agent = Command::new(bin("mover-agent"))
        .args(["serve", "--listen", &format!(":{port}"), "--certs"])
        .arg(tmp.path().join("certs"))
        .arg("--volume")
        .arg(format!("data={}", volume.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_for_port(port.parse().unwrap(), "mover-agent");
    let output =
        mover_in(tmp.path(), &["copy", "./src", &format!("agent://127.0.0.1:{port}/data"), "--certs", "certs"]);
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read(volume.join("one.bin")).unwrap(), b"content");
}

/// ux-trial #21 and #22.
#[test]
fn completions_man_page_and_a_heading_for_global_options() {
    for (shell, marker) in [("bash", "complete -F _mover"), ("zsh", "#compdef mover"), ("fish", "complete -c mover")] {
        let output = mover(&["completions", shell]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(marker) && script.contains("bwlimit"), "{shell}: {script}");
    }
    let output = mover(&["man"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH mover 1"), "{page}");
    let tmp = tempfile::tempdir().unwrap();
    let output = mover(&["man", "--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(tmp.path().join("mover.1").is_file() && tmp.path().join("mover-copy.1").is_file());

    let help = String::from_utf8_lossy(&mover(&["copy", "--help"]).stdout).into_owned();
    let (own, global) = help.split_once("Global options:").expect(&help);
    assert!(global.contains("--output") && global.contains("--no-progress") && global.contains("--verbose"), "{help}");
    assert!(!own.contains("--output") && !own.contains("--no-progress"), "global options interleaved:\n{help}");
}
