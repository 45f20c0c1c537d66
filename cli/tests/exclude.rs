//! `--exclude`, `--exclude-from` and a plan's `exclude:` with rsync's rules, through the real
//! binaries: what the patterns match is not sent, and is never deleted from the target
//! (ux-trial finding #13: rsync users exclude `lost+found` and caches).

mod common;

use std::fs;
use std::path::Path;

use common::{Agent, certs, mover, text, write_plan};

/// Makes `paths` under `root`: a path ending in `/` is a directory, any other a file holding
/// its own name.
fn make(root: &Path, paths: &[&str]) {
    for path in paths {
        if let Some(dir) = path.strip_suffix('/') {
            fs::create_dir_all(root.join(dir)).unwrap();
        } else {
            fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
            fs::write(root.join(path), path.as_bytes()).unwrap();
        }
    }
}

/// Every path under `root`, sorted, directories with a trailing `/`.
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
            if path.symlink_metadata().unwrap().is_dir() {
                out.push(format!("{relative}/"));
                walk(root, &path, out);
            } else {
                out.push(relative);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The source of every test: a root `cache` and a nested one, logs at two depths, a `tmp`
/// directory and a file named `tmp`, gzipped logs at two depths, a key.
const SOURCE: &[&str] = &[
    "cache/a",
    "app/cache/b",
    "x.log",
    "app/deep/y.log",
    "tmp/t",
    "app/tmp",
    "logs/2024/01/a.gz",
    "logs/b.gz",
    "logs/keep.txt",
    "app/secret.key",
    "app/main.rs",
];

/// The target before the copy: excluded paths the source lacks, and other extra paths.
const TARGET_BEFORE: &[&str] =
    &["cache/old", "app/z.log", "tmp/keep", "stale.txt", "app/gone/g", "oldstuff/w.log", "oldstuff/w.txt"];

/// What the target holds after a copy with `/cache`, `*.log`, `tmp/`, `logs/**/*.gz` and (from
/// a file) `secret.key` excluded.
const TARGET_AFTER: &[&str] = &[
    "app/",
    "app/cache/",
    "app/cache/b",
    "app/deep/",
    "app/main.rs",
    "app/tmp",
    "app/z.log",
    "cache/",
    "cache/old",
    "logs/",
    "logs/2024/",
    "logs/2024/01/",
    "logs/b.gz",
    "logs/keep.txt",
    "oldstuff/",
    "oldstuff/w.log",
    "tmp/",
    "tmp/keep",
];

const PATTERNS: &[&str] =
    &["--exclude", "/cache", "--exclude", "*.log", "--exclude", "tmp/", "--exclude", "logs/**/*.gz"];

fn exclude_file(dir: &Path) -> String {
    let file = dir.join("excludes.txt");
    fs::write(&file, "# keys never leave the source\n; nor do these\n\nsecret.key\n").unwrap();
    file.to_str().unwrap().to_owned()
}

#[test]
fn a_local_copy_leaves_out_and_keeps_what_rsyncs_patterns_match() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, target) = (tmp.path().join("src"), tmp.path().join("dst"));
    make(&source, SOURCE);
    make(&target, TARGET_BEFORE);
    let excludes = exclude_file(tmp.path());
    let mut args = vec!["copy", source.to_str().unwrap(), target.to_str().unwrap(), "--exclude-from", &excludes];
    args.extend_from_slice(PATTERNS);
    let output = mover(&args);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    // Not sent: the root `cache`, logs at every depth, the `tmp` directory (not the file named
    // `tmp`), the gzipped logs below `logs/*/` (not `logs/b.gz`), the key. Kept on the target:
    // what the patterns match (`cache/old`, `app/z.log`, `tmp/keep`, and `oldstuff/w.log`
    // inside a directory the source lacks); deleted: the rest the source lacks.
    assert_eq!(listing(&target), TARGET_AFTER, "{}", text(&output));
}

#[test]
fn an_agent_to_agent_push_honours_the_excludes() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let (source, target) = (tmp.path().join("src"), tmp.path().join("dst"));
    make(&source, SOURCE);
    make(&target, TARGET_BEFORE);
    let source_agent = Agent::start(&certs, &[format!("data={}:ro", source.display())], tmp.path());
    let target_agent = Agent::start(&certs, &[format!("data={}", target.display())], tmp.path());
    let excludes = exclude_file(tmp.path());
    let (from, to) = (source_agent.url("data"), target_agent.url("data"));
    let mut args = vec!["copy", &from, &to, "--certs", certs.to_str().unwrap(), "--exclude-from", &excludes];
    args.extend_from_slice(PATTERNS);
    let output = mover(&args);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(listing(&target), TARGET_AFTER, "{}", text(&output));
}

#[test]
fn a_plan_volumes_exclude_list_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let (source, target) = (tmp.path().join("src"), tmp.path().join("dst"));
    make(&source, SOURCE);
    make(&target, TARGET_BEFORE);
    let plan = write_plan(
        tmp.path(),
        "name: excludes\nvolumes:\n  - source: ./src\n    target: ./dst\n    options:\n      exclude: [/cache, \"*.log\", tmp/, \"logs/**/*.gz\", \"- secret.key\"]\n",
    );
    let output = common::mover_on_plan(&["plan", "run", "--skip-preflight"], &plan, &[], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(listing(&target), TARGET_AFTER, "{}", text(&output));
}

#[test]
fn an_invalid_pattern_is_a_usage_error_before_anything_is_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("src");
    make(&source, &["f"]);
    let target = tmp.path().join("dst");
    let missing = tmp.path().join("no-such-file");
    for (flag, value, says) in [
        ("--exclude", "data[", "`[` is not closed"),
        ("--exclude", "+ keep", "include rule"),
        ("--exclude", "", "empty"),
        ("--exclude-from", missing.to_str().unwrap(), "cannot read"),
    ] {
        let output = mover(&["copy", source.to_str().unwrap(), target.to_str().unwrap(), flag, value]);
        assert_eq!(output.status.code(), Some(64), "{flag} {value:?}: {}", text(&output));
        assert!(String::from_utf8_lossy(&output.stderr).contains(says), "{flag} {value:?}: {}", text(&output));
        assert!(!target.exists(), "{flag} {value:?}: the target was created");
    }
    // The same in a file, with its line.
    let file = tmp.path().join("excludes.txt");
    fs::write(&file, "# fine\n*.tmp\n[[:nope:]]\n").unwrap();
    let output =
        mover(&["copy", source.to_str().unwrap(), target.to_str().unwrap(), "--exclude-from", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("line 3: invalid exclude pattern `[[:nope:]]`"),
        "{}",
        text(&output)
    );
}

/// A coordinator's patterns are bounded and checked by the agent before a session starts: a
/// peer cannot make it compile a flood of patterns, and a bad one is named.
#[test]
fn an_agent_refuses_too_many_or_invalid_patterns_before_the_session() {
    use mover_engine::certs::{Identity, Role};
    use mover_engine::client::{self, CopyError, SessionError};
    use mover_engine::wire::{RemoteErrorKind, Request, SyncOptions};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let target = tmp.path().join("dst");
    make(&target, &["kept"]);
    let agent = Agent::start(&certs, &[format!("vol={}", target.display())], tmp.path());
    let identity = Identity::load(&certs, Role::Coordinator).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    for (excludes, says) in [
        (vec![b"x".to_vec(); 1001], "1001 exclude patterns: at most 1000"),
        (vec![vec![b'x'; 4097]], "an exclude pattern of 4097 bytes"),
        (vec![b"a[".to_vec()], "`[` is not closed"),
    ] {
        let request = Request::Receive {
            volume: "vol".into(),
            options: SyncOptions { excludes, ..SyncOptions::default() },
            lanes: vec![1; 32],
        };
        let error = runtime.block_on(client::open(&identity, &agent.addr, request, None)).err();
        match error {
            Some(CopyError::Session(SessionError::Refused { error, .. })) => {
                assert_eq!(error.kind, RemoteErrorKind::Protocol);
                assert!(error.message.contains(says), "{}", error.message);
            }
            Some(other) => panic!("unexpected error: {other}"),
            None => panic!("the agent accepted the session"),
        }
    }
    assert_eq!(listing(&target), ["kept"]);
}
