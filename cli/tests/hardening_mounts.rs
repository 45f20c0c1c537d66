//! Issue 20 (hardening II), defects 3, 7 and 13: mount points and overlapping trees.
//!
//! - 7: the source scan, the deletion pass and every path resolution stay on the volume's file
//!   system: a mount inside the source is skipped and reported (copied with `--cross-mounts`),
//!   a mount inside the target is never entered or deleted;
//! - 3: an agent resolves each volume root afresh for every session and checks it is what the
//!   grant meant (the same directory and mount, or a mount point for `NAME=PATH:mount`);
//! - 13: overlapping grants are refused at start, and a copy of a tree into itself is refused.
//!
//! The mount tests need root (tmpfs) and skip with a note otherwise.

mod common;

use std::fs;
use std::path::Path;

use common::{Agent, Tmpfs, certs, is_root, mover, summary, text};

fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipped: mounting a tmpfs needs root");
    true
}

fn warnings(output: &std::process::Output) -> Vec<String> {
    let summary = summary(output);
    summary["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_owned()).collect()
}

fn copy_json(source: &Path, target: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["copy", source.to_str().unwrap(), target.to_str().unwrap(), "--output", "json"];
    args.extend_from_slice(extra);
    mover(&args)
}

// ---- defect 7: mounts inside a volume -------------------------------------------------------

#[test]
fn a_mount_inside_the_source_is_skipped_and_reported_and_copied_with_cross_mounts() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("plain")).unwrap();
    fs::write(src.join("plain/file"), b"on the volume").unwrap();
    let mount = Tmpfs::mount(&src.join("m"), "size=4m");
    fs::write(mount.0.join("inner"), b"on another file system").unwrap();
    fs::create_dir(mount.0.join("deeper")).unwrap();
    fs::write(mount.0.join("deeper/file"), b"deeper").unwrap();

    let dst = tmp.path().join("dst");
    let output = copy_json(&src, &dst, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read(dst.join("plain/file")).unwrap(), b"on the volume");
    assert!(!dst.join("m").exists(), "the mount point was entered\n{}", text(&output));
    let warned = warnings(&output);
    assert!(
        warned.iter().any(|w| w.contains("skipped `m`") && w.contains("another file system is mounted there")),
        "{warned:?}"
    );
    // The text renderer shows it too.
    let shown = mover(&["copy", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(shown.status.code(), Some(0), "{}", text(&shown));
    assert!(String::from_utf8_lossy(&shown.stderr).contains("warning: skipped `m`"), "{}", text(&shown));

    // Opting in copies it.
    let output = copy_json(&src, &dst, &["--cross-mounts"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read(dst.join("m/inner")).unwrap(), b"on another file system");
    assert_eq!(fs::read(dst.join("m/deeper/file")).unwrap(), b"deeper");
    assert!(warnings(&output).is_empty(), "{}", text(&output));

    // A later run that stays on the source's file system keeps the target's copy of `m`.
    let output = copy_json(&src, &dst, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(summary(&output)["entries_deleted"], 0, "{}", text(&output));
    assert_eq!(fs::read(dst.join("m/inner")).unwrap(), b"on another file system");
}

#[test]
fn a_mount_inside_the_target_is_neither_entered_nor_deleted_and_is_reported() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("file{i}")), b"source").unwrap();
    }
    let dst = tmp.path().join("dst");
    fs::create_dir_all(dst.join("holder")).unwrap();
    for i in 0..4 {
        fs::write(dst.join(format!("file{i}")), b"old").unwrap();
    }
    let nested = Tmpfs::mount(&dst.join("nested"), "size=4m");
    let deep = Tmpfs::mount(&dst.join("holder/deep"), "size=4m");
    for mount in [&nested, &deep] {
        fs::write(mount.0.join("precious"), b"not the volume's").unwrap();
        fs::create_dir(mount.0.join("sub")).unwrap();
        fs::write(mount.0.join("sub/also"), b"not the volume's").unwrap();
    }

    let output = copy_json(&src, &dst, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    for mount in [&nested, &deep] {
        assert_eq!(fs::read(mount.0.join("precious")).unwrap(), b"not the volume's", "{}", text(&output));
        assert_eq!(fs::read(mount.0.join("sub/also")).unwrap(), b"not the volume's");
    }
    assert!(dst.join("holder").is_dir(), "the directory holding a mount point was removed");
    assert_eq!(fs::read(dst.join("file0")).unwrap(), b"source");
    let warned = warnings(&output);
    assert!(
        warned.iter().any(|w| w.contains("kept `nested`") && w.contains("another file system is mounted there")),
        "{warned:?}"
    );
    assert!(warned.iter().any(|w| w.contains("kept `holder` (it holds `holder/deep`)")), "{warned:?}");
    assert_eq!(summary(&output)["entries_deleted"], 0, "{}", text(&output));
}

#[test]
fn a_target_entry_across_a_mount_inside_the_target_fails_with_what_is_mounted() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("nested")).unwrap();
    fs::write(src.join("nested/file"), b"source").unwrap();
    let dst = tmp.path().join("dst");
    let nested = Tmpfs::mount(&dst.join("nested"), "size=4m");
    let output = copy_json(&src, &dst, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another file system is mounted at `nested` or on the way to it"), "{}", text(&output));
    assert!(!nested.0.join("file").exists(), "wrote into the file system mounted inside the target");
}

// ---- defect 3: each session resolves its volume's root afresh --------------------------------

/// `mover copy SRC agent://…/VOLUME`.
fn copy_to_agent(source: &Path, agent: &Agent, volume: &str, certs: &Path) -> std::process::Output {
    mover(&["copy", source.to_str().unwrap(), &agent.url(volume), "--certs", certs.to_str().unwrap()])
}

fn source_with_file(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), b"migrated").unwrap();
    src
}

fn is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn a_file_system_mounted_over_a_volume_after_the_agent_started_is_refused_not_written_under() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = source_with_file(tmp.path());
    let volume = tmp.path().join("volume");
    fs::create_dir(&volume).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let agent = Agent::start(&certs, &[format!("data={}", volume.display())], tmp.path());

    // A PV attached after the agent started.
    let pv = Tmpfs::mount(&volume, "size=4m");
    let output = copy_to_agent(&src, &agent, "data", &certs);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "volume `data` at `{}` is no longer the directory the agent was given: a file system was mounted over \
             it since the agent started; restart the agent, or grant the volume as a mount point (`NAME=PATH:mount`)",
            volume.display()
        )),
        "{}",
        text(&output)
    );
    assert!(is_empty(&pv.0), "the copy wrote into the new mount");
    drop(pv);
    assert!(is_empty(&volume), "the copy wrote into the directory hidden under the mount");

    // Unmounted again, the path is the directory the agent was given: sessions work.
    let output = copy_to_agent(&src, &agent, "data", &certs);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read(volume.join("file")).unwrap(), b"migrated");
}

#[test]
fn a_mount_grant_refuses_sessions_until_a_file_system_is_mounted_and_then_uses_it() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = source_with_file(tmp.path());
    let volume = tmp.path().join("pv");
    let readable = tmp.path().join("readable");
    fs::create_dir_all(&volume).unwrap();
    let _readable = Tmpfs::mount(&readable, "size=1m");
    let certs = certs(&tmp.path().join("certs"));
    let grants = [format!("data={}:mount", volume.display()), format!("seed={}:ro,mount", readable.display())];
    let agent = Agent::start(&certs, &grants, tmp.path());

    let output = copy_to_agent(&src, &agent, "data", &certs);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let expected = format!(
        "volume `data` at `{}` is granted as a mount point, but no file system is mounted there: mount the \
         volume's file system there, or grant the directory itself (without `:mount`)",
        volume.display()
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains(&expected), "{}", text(&output));
    assert!(is_empty(&volume));
    // `ro` and `mount` together: a read-only mount point.
    let output = copy_to_agent(&src, &agent, "seed", &certs);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("read-only"), "{}", text(&output));

    let pv = Tmpfs::mount(&volume, "size=4m");
    let output = copy_to_agent(&src, &agent, "data", &certs);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read(pv.0.join("file")).unwrap(), b"migrated");
    // Remounted (another file system there now): a mount grant takes it.
    drop(pv);
    let pv = Tmpfs::mount(&volume, "size=4m");
    let output = copy_to_agent(&src, &agent, "data", &certs);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read(pv.0.join("file")).unwrap(), b"migrated");
    drop(pv);
    assert!(is_empty(&volume), "the directory under the mount point was written");
}

#[test]
fn a_volume_root_swapped_during_a_session_ends_the_session() {
    if skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Incompressible, and sent at 2 MiB/s: a session of about 4 s.
    let mut content = vec![0u8; 8 << 20];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for byte in &mut content {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state.to_le_bytes()[0];
    }
    fs::write(src.join("big"), &content).unwrap();
    let volume = tmp.path().join("volume");
    fs::create_dir(&volume).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let agent = Agent::start(&certs, &[format!("data={}", volume.display())], tmp.path());
    let copy = std::process::Command::new(common::bin("mover"))
        .args(["copy", src.to_str().unwrap(), &agent.url("data"), "--certs", certs.to_str().unwrap()])
        .args(["--bwlimit", "2M", "--compress", "off"])
        .env_remove("MOVER_OUTPUT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pv = Tmpfs::mount(&volume, "size=16m");
    let output = copy.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "volume `data` at `{}` changed during the session: a file system was mounted over it; the session \
             was ended",
            volume.display()
        )),
        "{}",
        text(&output)
    );
    assert!(is_empty(&pv.0), "the new mount was written");
    drop(pv);
    assert!(!volume.join("big").exists(), "the file was installed under the mount");
}

// ---- defect 13: overlapping grants, copies into themselves ------------------------------------

#[test]
fn overlapping_grants_are_refused_at_start_whatever_their_spelling() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    std::os::unix::fs::symlink(data.join("sub"), tmp.path().join("link")).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let spellings = [
        (format!("v={}", data.display()), format!("inner={}", data.join("sub").display()), "`inner` lies inside `v`"),
        (
            format!("inner={}", tmp.path().join("link").display()),
            format!("v={}", data.display()),
            "`inner` lies inside `v`",
        ),
        (format!("v={}", data.display()), format!("again={}/sub/..", data.display()), "they are the same directory"),
    ];
    for (first, second, how) in spellings {
        let output = std::process::Command::new(common::bin("mover-agent"))
            .args(["serve", "--listen", "127.0.0.1:0", "--certs", certs.to_str().unwrap()])
            .args(["--volume", &first, "--volume", &second])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(64), "{first} {second}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("overlap") && stderr.contains(how), "{first} {second}: {}", text(&output));
    }
}

#[test]
fn a_local_copy_into_itself_is_refused_before_anything_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    fs::create_dir_all(a.join("sub")).unwrap();
    fs::write(a.join("keep"), b"source").unwrap();
    fs::write(a.join("sub/keep"), b"source").unwrap();
    std::os::unix::fs::symlink(&a, tmp.path().join("alias")).unwrap();
    let cases = [
        (a.clone(), a.join("new"), "the target lies inside the source"),
        (a.clone(), a.join("sub"), "the target lies inside the source"),
        (a.join("sub"), a.clone(), "the source lies inside the target"),
        (a.clone(), tmp.path().join("alias"), "they are the same directory"),
    ];
    for (source, target, how) in cases {
        let output = mover(&["copy", source.to_str().unwrap(), target.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("refusing to copy") && stderr.contains(how), "{}", text(&output));
    }
    assert!(!a.join("new").exists(), "the target was made inside the source");
    assert_eq!(fs::read(a.join("keep")).unwrap(), b"source");
    assert_eq!(fs::read(a.join("sub/keep")).unwrap(), b"source");
    // A target beside the source is fine.
    let output = mover(&["copy", a.to_str().unwrap(), tmp.path().join("b").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

#[test]
fn an_agent_push_of_a_volume_into_itself_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("keep"), b"source").unwrap();
    let other = tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let agent = Agent::start(&certs, &[format!("v={}", data.display()), format!("w={}", other.display())], tmp.path());
    let output = mover(&["copy", &agent.url("v"), &agent.url("v"), "--certs", certs.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refusing to copy volume `v` into volume `v` of the same agent"), "{}", text(&output));
    assert_eq!(fs::read(data.join("keep")).unwrap(), b"source");
    // Between two volumes of one agent that do not overlap, a push works.
    let output = mover(&["copy", &agent.url("v"), &agent.url("w"), "--certs", certs.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read(other.join("keep")).unwrap(), b"source");
}
