//! Issue 20, defects 1, 2 and 4: hard links and mover's reserved names, with the real `mover`
//! (and `mover-agent`) binaries.
//!
//! - An `--inplace` update never writes an inode that has other names: not a link the source
//!   broke (the target must converge), not a file outside the volume hard-linked into it.
//! - Metadata is never set through such a link either: the entry is replaced instead.
//! - Only files mover can prove it made are cleaned as temporaries; other names that start with
//!   `.mover-tmp-` are user data, copied and kept; a source name of mover's exact temporary
//!   forms is reported, and fails a final run.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Agent, certs, mover, summary, text};

fn copy(src: &Path, dst: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["copy", src.to_str().unwrap(), dst.to_str().unwrap(), "--output", "json"];
    args.extend_from_slice(extra);
    mover(&args)
}

fn copy_ok(src: &Path, dst: &Path, extra: &[&str]) -> serde_json::Value {
    let output = copy(src, dst, extra);
    assert!(output.status.success(), "{}", text(&output));
    summary(&output)
}

/// Replaces `path` by a copy of itself with the same content and times: a hard link broken.
fn break_link(path: &Path) {
    let meta = fs::metadata(path).unwrap();
    let content = fs::read(path).unwrap();
    fs::remove_file(path).unwrap();
    fs::write(path, content).unwrap();
    fs::set_permissions(path, meta.permissions()).unwrap();
    fs::File::options().write(true).open(path).unwrap().set_modified(meta.modified().unwrap()).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut value = vec![0u8; 256];
    let len = rustix::fs::lgetxattr(path, name, &mut value).ok()?;
    value.truncate(len);
    Some(value)
}

/// Defect 1 (a): the source breaks a hard link and rewrites one name; `--inplace` must not
/// write the shared inode (the other name would change), and the target must converge.
#[test]
fn inplace_does_not_write_through_a_link_the_source_broke_and_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"shared content, version one").unwrap();
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    copy_ok(&src, &dst, &[]);
    assert_eq!(fs::metadata(dst.join("a")).unwrap().ino(), fs::metadata(dst.join("b")).unwrap().ino());

    fs::remove_file(src.join("b")).unwrap();
    fs::write(src.join("b"), b"b alone, rewritten with new content").unwrap();
    let first = copy_ok(&src, &dst, &["--inplace"]);
    assert_eq!(fs::read(dst.join("a")).unwrap(), b"shared content, version one", "`a` changed through `b`");
    assert_eq!(fs::read(dst.join("b")).unwrap(), b"b alone, rewritten with new content");
    assert_ne!(fs::metadata(dst.join("a")).unwrap().ino(), fs::metadata(dst.join("b")).unwrap().ino());
    assert_eq!(first["files_transferred"], 1, "{first}");

    // Converged: nothing left to do, and nothing flips back.
    let second = copy_ok(&src, &dst, &["--inplace"]);
    assert_eq!(second["files_transferred"], 0, "not converged: {second}");
    assert_eq!(fs::read(dst.join("a")).unwrap(), b"shared content, version one");
    assert_eq!(fs::read(dst.join("b")).unwrap(), b"b alone, rewritten with new content");
}

/// Defect 1 (b): a file outside the target volume, hard-linked into it (same file system), is
/// never written or truncated by `--inplace`.
#[test]
fn inplace_never_writes_a_file_outside_the_volume_linked_into_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, outside) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("outside"));
    for dir in [&src, &dst, &outside] {
        fs::create_dir_all(dir).unwrap();
    }
    let secret = b"a file of the node, outside the volume: must stay as it is, every byte of it".repeat(100);
    fs::write(outside.join("secret"), &secret).unwrap();
    fs::hard_link(outside.join("secret"), dst.join("file")).unwrap();
    // Shorter, and sharing a prefix with the outside file: an in-place update would truncate it.
    let content = b"a file of the node, outside the volume: replaced".to_vec();
    fs::write(src.join("file"), &content).unwrap();

    copy_ok(&src, &dst, &["--inplace"]);
    assert_eq!(fs::read(outside.join("secret")).unwrap(), secret, "the outside file was written");
    assert_eq!(fs::read(dst.join("file")).unwrap(), content);
    assert_eq!(fs::metadata(outside.join("secret")).unwrap().nlink(), 1, "the target's name still links it");
}

/// Defect 2 (a): size and mtime match, metadata differs, and the target's name is a hard link to
/// a root-owned 0600 file outside the volume: its owner, mode and xattrs stay; the target's
/// entry is replaced. Through a real agent, as the attack.
#[test]
fn metadata_is_not_set_through_a_link_to_a_file_outside_the_volume() {
    if !common::is_root() {
        eprintln!("skipped: needs root (ownership)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, outside) = (tmp.path().join("src"), tmp.path().join("dst"), tmp.path().join("outside"));
    for dir in [&src, &dst, &outside] {
        fs::create_dir_all(dir).unwrap();
    }
    let victim = outside.join("shadow");
    fs::write(&victim, b"root:secret-hash:19000:0:99999:7:::\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&victim, Some(0), Some(0)).unwrap();
    if rustix::fs::setxattr(&victim, "user.origin", b"node", rustix::fs::XattrFlags::empty()).is_err() {
        eprintln!("skipped: {} has no user xattrs", tmp.path().display());
        return;
    }
    fs::hard_link(&victim, dst.join("victim")).unwrap();

    // The source's `victim`: same size and mtime, other content, mode, owner and xattrs.
    let planted = b"root:evil-hash-x:19000:0:99999:7:::\n";
    assert_eq!(planted.len(), fs::metadata(&victim).unwrap().len() as usize);
    fs::write(src.join("victim"), planted).unwrap();
    fs::File::options()
        .write(true)
        .open(src.join("victim"))
        .unwrap()
        .set_modified(fs::metadata(&victim).unwrap().modified().unwrap())
        .unwrap();
    fs::set_permissions(src.join("victim"), fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(src.join("victim"), Some(65534), Some(65534)).unwrap();
    rustix::fs::setxattr(src.join("victim"), "user.evil", b"yes", rustix::fs::XattrFlags::empty()).unwrap();

    let certs = certs(&tmp.path().join("certs"));
    let agent = Agent::start(&certs, &[format!("vol={}", dst.display())], tmp.path());
    let output = mover(&[
        "copy",
        src.to_str().unwrap(),
        &agent.url("vol"),
        "--certs",
        certs.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(output.status.success(), "{}", text(&output));

    let outside_meta = fs::metadata(&victim).unwrap();
    assert_eq!(mode(&victim), 0o600, "the outside file's mode changed");
    assert_eq!((outside_meta.uid(), outside_meta.gid()), (0, 0), "the outside file's owner changed");
    assert_eq!(xattr(&victim, "user.evil"), None, "an xattr was set on the outside file");
    assert_eq!(xattr(&victim, "user.origin").as_deref(), Some(&b"node"[..]));
    assert_eq!(fs::read(&victim).unwrap(), b"root:secret-hash:19000:0:99999:7:::\n");
    assert_eq!(outside_meta.nlink(), 1);
    // The target's entry is the source's, content verified.
    let target = dst.join("victim");
    let target_meta = fs::metadata(&target).unwrap();
    assert_eq!((mode(&target), target_meta.uid(), target_meta.gid()), (0o777, 65534, 65534));
    assert_eq!(xattr(&target, "user.evil").as_deref(), Some(&b"yes"[..]));
    assert_eq!(fs::read(&target).unwrap(), planted);
}

/// Defect 2 (b): the source breaks a hard link and gives one name mode 0666; the target's other
/// name must not become world-writable, on this run or the next.
#[test]
fn a_mode_given_to_one_name_of_a_broken_link_stays_off_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"one inode, two names").unwrap();
    fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    copy_ok(&src, &dst, &[]);
    assert_eq!(fs::metadata(dst.join("a")).unwrap().ino(), fs::metadata(dst.join("b")).unwrap().ino());

    break_link(&src.join("b"));
    fs::set_permissions(src.join("b"), fs::Permissions::from_mode(0o666)).unwrap();
    for run in 0..2 {
        for extra in [&[][..], &["--inplace"]] {
            copy_ok(&src, &dst, extra);
            assert_eq!(mode(&dst.join("a")), 0o644, "run {run} {extra:?}: `a` took `b`'s mode");
            assert_eq!(mode(&dst.join("b")), 0o666, "run {run} {extra:?}");
            assert_eq!(fs::read(dst.join("b")).unwrap(), b"one inode, two names");
        }
    }
    let last = copy_ok(&src, &dst, &[]);
    assert_eq!(last["files_transferred"], 0, "not converged: {last}");
}

/// Defect 2: a link group the source kept gets its new metadata, and stays one group.
#[test]
fn a_kept_link_group_gets_new_metadata_and_stays_linked() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("a"), b"linked").unwrap();
    fs::hard_link(src.join("a"), src.join("d/b")).unwrap();
    copy_ok(&src, &dst, &[]);
    fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o640)).unwrap();
    copy_ok(&src, &dst, &[]);
    assert_eq!((mode(&dst.join("a")), mode(&dst.join("d/b"))), (0o640, 0o640));
    assert_eq!(fs::metadata(dst.join("a")).unwrap().ino(), fs::metadata(dst.join("d/b")).unwrap().ino());
    assert_eq!(copy_ok(&src, &dst, &[])["files_transferred"], 0);
}

/// A name of the exact form `.mover-tmp-part-<24 hex digits>`.
const GENERATED: &str = ".mover-tmp-part-0123456789abcdef01234567";

/// Defect 4: a user's file and directory named `.mover-tmp-notes` are copied, kept with
/// `--no-delete` and counted when deleted; a real leftover of mover is still cleaned; a file
/// under a generated name that mover cannot prove it made is left alone.
#[test]
fn user_names_with_the_temporary_prefix_are_copied_kept_and_counted() {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(src.join("a")).unwrap();
    fs::create_dir_all(src.join("b/.mover-tmp-notes")).unwrap();
    fs::create_dir_all(src.join("c")).unwrap();
    fs::write(src.join("a/.mover-tmp-notes"), b"my notes").unwrap();
    fs::write(src.join("b/.mover-tmp-notes/inner"), b"inside a directory").unwrap();
    // On the target only: a user's file and directory with the prefix, a leftover of an
    // interrupted copy (0600, ours, one link), and a generated name on a file mover did not make.
    fs::create_dir_all(dst.join("c/.mover-tmp-dir")).unwrap();
    fs::write(dst.join("c/.mover-tmp-dir/kept"), b"user data").unwrap();
    fs::write(dst.join("c/.mover-tmp-notes"), b"target-only notes").unwrap();
    let make = |name: &str, mode: u32| {
        fs::File::options().write(true).create_new(true).mode(mode).open(dst.join("c").join(name)).unwrap();
    };
    make(GENERATED, 0o600);
    make(".mover-tmp-0123456789abcdef-7", 0o644);

    let first = copy_ok(&src, &dst, &["--no-delete"]);
    assert_eq!(fs::read(dst.join("a/.mover-tmp-notes")).unwrap(), b"my notes", "{first}");
    assert_eq!(fs::read(dst.join("b/.mover-tmp-notes/inner")).unwrap(), b"inside a directory");
    assert_eq!(fs::read(dst.join("c/.mover-tmp-notes")).unwrap(), b"target-only notes", "lost with --no-delete");
    assert_eq!(fs::read(dst.join("c/.mover-tmp-dir/kept")).unwrap(), b"user data", "lost with --no-delete");
    assert!(!dst.join("c").join(GENERATED).exists(), "a leftover of mover was not cleaned");
    assert!(dst.join("c/.mover-tmp-0123456789abcdef-7").exists(), "a file mover did not make was removed");
    assert_eq!(first["entries_deleted"], 0, "{first}");
    assert_eq!(first["files_total"], 2, "{first}");

    // Deleting: the user's entries go and are counted (a directory counts with what it holds).
    let second = copy_ok(&src, &dst, &[]);
    assert!(!dst.join("c/.mover-tmp-notes").exists() && !dst.join("c/.mover-tmp-dir").exists());
    assert_eq!(second["entries_deleted"], 3, "{second}");
    assert!(dst.join("a/.mover-tmp-notes").exists() && dst.join("b/.mover-tmp-notes/inner").exists());
    assert!(dst.join("c/.mover-tmp-0123456789abcdef-7").exists());
    assert_eq!(copy_ok(&src, &dst, &[])["files_transferred"], 0);
}

/// Defect 4: a source name of mover's exact temporary forms cannot travel: a stage run warns
/// about it, a final run fails on it, naming it.
#[test]
fn a_source_name_of_the_generated_form_is_reported_and_fails_a_final_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/file"), b"data").unwrap();
    fs::write(src.join("d").join(GENERATED), b"looks like ours").unwrap();
    let shown = format!("d/{GENERATED}");

    let stage = mover(&["copy", src.to_str().unwrap(), dst.to_str().unwrap(), "--stage"]);
    assert!(stage.status.success(), "{}", text(&stage));
    let stderr = String::from_utf8_lossy(&stage.stderr);
    assert!(stderr.contains("warning") && stderr.contains(&shown), "no warning naming it: {}", text(&stage));
    assert_eq!(fs::read(dst.join("d/file")).unwrap(), b"data");

    let last = mover(&["copy", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(last.status.code(), Some(1), "{}", text(&last));
    let stderr = String::from_utf8_lossy(&last.stderr);
    assert!(stderr.contains(&shown) && stderr.contains("temporary files"), "{}", text(&last));
    assert!(!dst.join("d").join(GENERATED).exists());
}
