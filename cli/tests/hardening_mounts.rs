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

use common::{Tmpfs, is_root, mover, summary, text};

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
