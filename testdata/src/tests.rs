//! Tests of the generator and of the comparator: identical generations compare identical, and
//! each kind of difference is detected (and only that one).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};
use tempfile::TempDir;

use crate::compare::read_xattrs;
use crate::generate::FIXTURE_ENTRIES_FOR_TESTS;
use crate::{
    BigFile, CompareOptions, Difference, GenStats, TreeSpec, assert_identical, compare, generate, random_bytes,
    write_random,
};

fn generated(spec: &TreeSpec) -> (TempDir, GenStats) {
    let dir = tempfile::tempdir().unwrap();
    let stats = generate(dir.path(), spec).unwrap();
    (dir, stats)
}

/// Two generations of [`TreeSpec::small`].
fn pair() -> (TempDir, TempDir) {
    (generated(&TreeSpec::small()).0, generated(&TreeSpec::small()).0)
}

fn strict() -> CompareOptions {
    CompareOptions { ownership: true, allocation: true, root_metadata: true }
}

fn diffs(a: &TempDir, b: &TempDir) -> Vec<Difference> {
    compare(a.path(), b.path(), &strict()).unwrap()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn mtime(path: &Path) -> (i64, i64) {
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.mtime(), meta.mtime_nsec())
}

fn set_mtime(path: &Path, (secs, nanos): (i64, i64)) {
    let time = Timespec { tv_sec: secs, tv_nsec: nanos };
    let times = Timestamps { last_access: time, last_modification: time };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// Runs `change`, then restores the mtimes of `path` (if it still exists) and of its parent,
/// so that only the intended difference remains.
fn keeping_times(path: &Path, change: impl FnOnce()) {
    let parent = path.parent().unwrap();
    let saved: Vec<_> =
        [path, parent].iter().filter(|p| p.symlink_metadata().is_ok()).map(|p| (p.to_path_buf(), mtime(p))).collect();
    change();
    for (p, time) in saved {
        if p.symlink_metadata().is_ok() {
            set_mtime(&p, time);
        }
    }
}

/// Asserts that there is a difference, and that every difference is at one of `paths` and
/// starts with `what`.
#[track_caller]
fn assert_only(diffs: &[Difference], paths: &[&str], what: &str) {
    assert!(!diffs.is_empty(), "no difference found, expected `{what}` at {paths:?}");
    for diff in diffs {
        assert!(
            paths.contains(&diff.path.as_str()) && diff.what.starts_with(what),
            "unexpected difference `{diff}`; expected only `{what}` at {paths:?}; all: {diffs:#?}"
        );
    }
}

/// Every entry below `root` (not the root itself), in walk order.
fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    fn visit(dir: &Path, out: &mut Vec<(PathBuf, fs::Metadata)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            out.push((path.clone(), meta.clone()));
            if meta.is_dir() {
                visit(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    visit(root, &mut out);
    out
}

// ----- identical trees -----

#[test]
fn same_seed_compares_identical() {
    let (a, b) = pair();
    let found = diffs(&a, &b);
    assert!(found.is_empty(), "{found:#?}");
    assert_identical(a.path(), b.path());
}

#[test]
fn same_seed_without_exotics_compares_identical() {
    let spec = TreeSpec { exotic: false, ..TreeSpec::with_entries(500) };
    let (a, _) = generated(&spec);
    let (b, _) = generated(&spec);
    assert_identical(a.path(), b.path());
    assert!(diffs(&a, &b).is_empty());
}

#[test]
fn different_seeds_differ() {
    let (a, _) = generated(&TreeSpec::small());
    let (b, _) = generated(&TreeSpec { seed: 1, ..TreeSpec::small() });
    assert!(!diffs(&a, &b).is_empty());
}

#[test]
#[should_panic(expected = "differ (1 differences)")]
fn assert_identical_panics_with_the_differences() {
    let (a, b) = pair();
    fs::write(b.path().join("extra"), b"x").unwrap();
    set_mtime(b.path(), mtime(a.path()));
    assert_identical(a.path(), b.path());
}

// ----- each kind of difference is detected -----

#[test]
fn detects_one_changed_byte() {
    let (a, b) = pair();
    let path = b.path().join("special/private");
    keeping_times(&path, || {
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let mut byte = [0];
        File::open(&path).unwrap().read_exact_at(&mut byte, 1234).unwrap();
        file.write_all_at(&[byte[0] ^ 1], 1234).unwrap();
    });
    assert_only(&diffs(&a, &b), &["special/private"], "content blake3");
}

#[test]
fn detects_changed_size() {
    let (a, b) = pair();
    let path = b.path().join("special/private");
    keeping_times(&path, || OpenOptions::new().write(true).open(&path).unwrap().set_len(2999).unwrap());
    assert_only(&diffs(&a, &b), &["special/private"], "size 3000 vs 2999");
}

#[test]
fn detects_one_mtime_nanosecond_on_every_type() {
    let (a, b) = pair();
    for (rel, shown) in [
        ("special/private", "special/private"),
        ("special/empty-dir", "special/empty-dir"),
        ("special/links/dangling", "special/links/dangling"),
        ("special/fifo", "special/fifo"),
        ("special/sparse", "special/sparse"),
        ("", "."),
    ] {
        let path = if rel.is_empty() { b.path().to_path_buf() } else { b.path().join(rel) };
        let (secs, nanos) = mtime(&path);
        set_mtime(&path, (secs, if nanos < 999_999_999 { nanos + 1 } else { nanos - 1 }));
        assert_only(&diffs(&a, &b), &[shown], "mtime");
        set_mtime(&path, (secs, nanos));
        assert!(diffs(&a, &b).is_empty());
    }
}

#[test]
fn root_metadata_can_be_ignored() {
    let (a, b) = pair();
    let (secs, nanos) = mtime(b.path());
    set_mtime(b.path(), (secs + 1, nanos));
    fs::set_permissions(b.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let found = diffs(&a, &b);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_only(&found, &["."], "m");
    let opts = CompareOptions { root_metadata: false, ..strict() };
    assert!(compare(a.path(), b.path(), &opts).unwrap().is_empty());
}

#[test]
fn detects_a_mode_bit() {
    let (a, b) = pair();
    fs::set_permissions(b.path().join("special/private"), fs::Permissions::from_mode(0o610)).unwrap();
    assert_only(&diffs(&a, &b), &["special/private"], "mode 0600 vs 0610");
    // `setuid` has a second name, `hardlinks/setuid-too`: both show the change.
    fs::set_permissions(b.path().join("special/setuid"), fs::Permissions::from_mode(0o755)).unwrap();
    let found: Vec<_> = diffs(&a, &b).into_iter().filter(|d| d.path != "special/private").collect();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_only(&found, &["special/hardlinks/setuid-too", "special/setuid"], "mode 4755 vs 0755");
}

#[test]
fn detects_owner() {
    if !is_root() {
        return;
    }
    let (a, b) = pair();
    let path = b.path().join("special/links/dangling");
    let gid = fs::symlink_metadata(&path).unwrap().gid();
    lchown(&path, Some(4242), None).unwrap();
    assert_only(&diffs(&a, &b), &["special/links/dangling"], "uid 1000 vs 4242");
    lchown(&path, None, Some(gid + 1)).unwrap();
    assert_eq!(diffs(&a, &b).len(), 2);
    let opts = CompareOptions { ownership: false, ..strict() };
    assert!(compare(a.path(), b.path(), &opts).unwrap().is_empty());
}

#[test]
fn detects_a_symlink_target() {
    let (a, b) = pair();
    let path = b.path().join("special/links/dangling");
    let meta = fs::symlink_metadata(&path).unwrap();
    keeping_times(&path, || {
        fs::remove_file(&path).unwrap();
        symlink("no/such/targex", &path).unwrap();
        lchown(&path, Some(meta.uid()), Some(meta.gid())).unwrap();
        set_mtime(&path, (meta.mtime(), meta.mtime_nsec()));
    });
    assert_only(&diffs(&a, &b), &["special/links/dangling"], "symlink target \"no/such/target\" vs \"no/such/targex\"");
}

#[test]
fn detects_a_type_change() {
    let (a, b) = pair();
    let path = b.path().join("special/empty");
    let meta = fs::symlink_metadata(&path).unwrap();
    keeping_times(&path, || {
        fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(meta.mode() & 0o7777), 0).unwrap();
        lchown(&path, Some(meta.uid()), Some(meta.gid())).unwrap();
        set_mtime(&path, (meta.mtime(), meta.mtime_nsec()));
    });
    assert_only(&diffs(&a, &b), &["special/empty"], "type regular file vs fifo");
}

#[test]
fn detects_a_hardlink_broken_into_a_copy() {
    let (a, b) = pair();
    let path = b.path().join("special/names/pair-b");
    let meta = fs::symlink_metadata(&path).unwrap();
    let content = fs::read(&path).unwrap();
    let xattrs = read_xattrs(&path).unwrap();
    keeping_times(&path, || {
        fs::remove_file(&path).unwrap();
        fs::write(&path, &content).unwrap();
        lchown(&path, Some(meta.uid()), Some(meta.gid())).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode())).unwrap();
        for (name, value) in &xattrs {
            rustix::fs::lsetxattr(&path, &name[..], value, XattrFlags::empty()).unwrap();
        }
        set_mtime(&path, (meta.mtime(), meta.mtime_nsec()));
    });
    assert_only(&diffs(&a, &b), &["special/hardlinks/pair-a", "special/names/pair-b"], "hardlinks");
}

#[test]
fn detects_files_wrongly_hardlinked() {
    let (a, b) = pair();
    let (x, y) = (b.path().join("special/hardlinks/empty-1"), b.path().join("special/empty"));
    // Make y an exact copy of x's metadata, then a link to it.
    keeping_times(&y, || {
        fs::remove_file(&y).unwrap();
        fs::hard_link(&x, &y).unwrap();
    });
    let found = diffs(&a, &b);
    assert!(found.iter().any(|d| d.path == "special/empty" && d.what.starts_with("hardlinks")), "{found:#?}");
    assert!(found.iter().any(|d| d.path == "special/hardlinks/empty-1" && d.what.starts_with("hardlinks")));
}

#[test]
fn detects_a_dropped_xattr() {
    let (a, b) = pair();
    if read_xattrs(&a.path().join("special/xattrs-file")).unwrap().is_empty() {
        eprintln!("xattrs not supported here: skipped");
        return;
    }
    rustix::fs::lremovexattr(b.path().join("special/xattrs-file"), "user.empty").unwrap();
    assert_only(&diffs(&a, &b), &["special/xattrs-file"], "xattr user.empty missing in b");
    rustix::fs::lsetxattr(b.path().join("special/xattrs-file"), "user.empty", b"x", XattrFlags::empty()).unwrap();
    assert_only(&diffs(&a, &b), &["special/xattrs-file"], "xattr user.empty value (empty) vs 78");
}

#[test]
fn detects_a_dropped_default_acl() {
    let (a, b) = pair();
    let dir = a.path().join("special/acl-dir");
    if !read_xattrs(&dir).unwrap().iter().any(|(name, _)| name == b"system.posix_acl_default") {
        eprintln!("ACLs not supported here: skipped");
        return;
    }
    rustix::fs::lremovexattr(b.path().join("special/acl-dir"), "system.posix_acl_default").unwrap();
    assert_only(&diffs(&a, &b), &["special/acl-dir"], "xattr system.posix_acl_default missing in b");
}

#[test]
fn detects_a_filled_in_sparse_file() {
    let (a, b) = pair();
    let path = b.path().join("special/sparse/all-hole");
    let zeros = vec![0; 1 << 20];
    keeping_times(&path, || {
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        for _ in 0..10 {
            file.write_all(&zeros).unwrap();
        }
        file.sync_all().unwrap();
    });
    assert_only(&diffs(&a, &b), &["special/sparse/all-hole"], "allocated 0 vs 10485760 bytes");
    let opts = CompareOptions { allocation: false, ..strict() };
    assert!(compare(a.path(), b.path(), &opts).unwrap().is_empty());
}

#[test]
fn detects_an_extra_file() {
    let (a, b) = pair();
    let path = b.path().join("special/extra");
    keeping_times(&path, || fs::write(&path, b"").unwrap());
    assert_only(&diffs(&a, &b), &["special/extra"], "missing in a (regular file only in b)");
}

#[test]
fn detects_a_missing_empty_dir() {
    let (a, b) = pair();
    let path = b.path().join("special/empty-dir");
    keeping_times(&path, || fs::remove_dir(&path).unwrap());
    assert_only(&diffs(&a, &b), &["special/empty-dir"], "missing in b (directory only in a)");
}

#[test]
fn display_escapes_control_characters() {
    let diff = Difference { path: "new\nline".into(), what: "mode 0644 vs 0600".into() };
    assert_eq!(diff.to_string(), "new\\nline: mode 0644 vs 0600");
}

// ----- the generator -----

#[test]
fn random_content_is_deterministic_and_streamed_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let len = (1 << 20) * 2 + 12_345;
    write_random(&dir.path().join("r"), len as u64, 7).unwrap();
    let expected = random_bytes(7, len);
    assert_eq!(fs::read(dir.path().join("r")).unwrap(), expected);
    assert_eq!(random_bytes(7, 100), expected[..100]);
    assert_ne!(random_bytes(8, 100), expected[..100]);
}

#[test]
fn stats_match_the_tree() {
    let (dir, stats) = generated(&TreeSpec::small());
    eprintln!("small(): {stats:?}");
    let entries = walk(dir.path());
    assert_eq!(stats.entries, entries.len() as u64);
    let mut inodes = std::collections::HashSet::new();
    let mut bytes = 0;
    for (_, meta) in &entries {
        if meta.is_file() && inodes.insert(meta.ino()) {
            bytes += meta.size();
        }
    }
    assert_eq!(stats.files, inodes.len() as u64);
    assert_eq!(stats.bytes, bytes);
    assert!((150..=260).contains(&stats.entries), "small() made {} entries", stats.entries);
}

#[test]
fn fixture_count_is_up_to_date() {
    let spec = TreeSpec { files: 0, dirs: 0, big_files: Vec::new(), ..TreeSpec::small() };
    let (_, stats) = generated(&spec);
    assert_eq!(stats.entries, FIXTURE_ENTRIES_FOR_TESTS as u64);
}

#[test]
fn small_tree_has_every_exotic_kind() {
    let (dir, _) = generated(&TreeSpec::small());
    let root = dir.path();
    let entries = walk(root);
    let count = |f: &dyn Fn(&Path, &fs::Metadata) -> bool| entries.iter().filter(|(p, m)| f(p, m)).count();
    let name = |p: &Path| p.file_name().unwrap().as_bytes().to_vec();
    let mode = |m: &fs::Metadata| m.mode() & 0o7777;
    let xattr_names = |p: &Path| read_xattrs(p).unwrap().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    let checks: Vec<(&str, usize)> = vec![
        ("empty files", count(&|_, m| m.is_file() && m.size() == 0)),
        ("empty dirs", count(&|p, m| m.is_dir() && fs::read_dir(p).unwrap().next().is_none())),
        ("depth 6", count(&|p, _| p.strip_prefix(root).unwrap().components().count() >= 6)),
        ("symlinks", count(&|_, m| m.is_symlink())),
        ("dangling symlinks", count(&|p, m| m.is_symlink() && fs::metadata(p).is_err())),
        ("symlinks to dirs", count(&|p, m| m.is_symlink() && fs::metadata(p).is_ok_and(|t| t.is_dir()))),
        ("absolute symlinks", count(&|p, m| m.is_symlink() && fs::read_link(p).unwrap().is_absolute())),
        ("non-UTF-8 symlink targets", count(&|p, m| m.is_symlink() && fs::read_link(p).unwrap().to_str().is_none())),
        ("hardlinks", count(&|_, m| m.is_file() && m.nlink() > 1)),
        ("triple hardlinks", count(&|_, m| m.is_file() && m.nlink() == 3)),
        ("fifos", count(&|_, m| m.file_type().is_fifo())),
        ("sparse files", count(&|_, m| m.is_file() && m.blocks() * 512 < m.size())),
        ("setuid files", count(&|_, m| m.is_file() && m.mode() & 0o4000 != 0)),
        ("setgid files", count(&|_, m| m.is_file() && m.mode() & 0o2000 != 0)),
        ("setgid dirs", count(&|_, m| m.is_dir() && mode(m) == 0o2755)),
        ("sticky dirs", count(&|_, m| m.is_dir() && mode(m) == 0o1777)),
        ("read-only dirs", count(&|p, m| m.is_dir() && mode(m) == 0o500 && fs::read_dir(p).unwrap().count() > 0)),
        ("0600 files", count(&|_, m| m.is_file() && mode(m) == 0o600)),
        ("0444 files", count(&|_, m| m.is_file() && mode(m) == 0o444)),
        ("mtime 2001", count(&|_, m| (978_307_200..1_009_843_200).contains(&m.mtime()))),
        ("mtime 2100", count(&|_, m| m.mtime() >= 4_102_444_800)),
        ("mtime before 1970", count(&|_, m| m.mtime() < 0)),
        ("dir mtime ns", count(&|_, m| m.is_dir() && m.mtime_nsec() != 0)),
        ("symlink mtime ns", count(&|_, m| m.is_symlink() && m.mtime_nsec() != 0)),
        ("non-UTF-8 names", count(&|p, _| std::str::from_utf8(&name(p)).is_err())),
        ("newline names", count(&|p, _| name(p).contains(&b'\n'))),
        ("space names", count(&|p, _| name(p).contains(&b' '))),
        ("dash names", count(&|p, _| name(p).starts_with(b"-"))),
        ("255-byte names", count(&|p, _| name(p).len() == 255)),
        ("unicode names", count(&|p, _| std::str::from_utf8(&name(p)).is_ok_and(|n| !n.is_ascii()))),
    ];
    let mut missing: Vec<_> = checks.iter().filter(|(_, n)| *n == 0).map(|(what, _)| *what).collect();
    if root.join("special/xattrs-file").exists() && !xattr_names(&root.join("special/xattrs-file")).is_empty() {
        let user_files = count(&|p, m| m.is_file() && xattr_names(p).iter().any(|n| n.starts_with(b"user.")));
        let user_dirs = count(&|p, m| m.is_dir() && xattr_names(p).iter().any(|n| n.starts_with(b"user.")));
        let acl = count(&|p, _| xattr_names(p).contains(&b"system.posix_acl_access".to_vec()));
        let default_acl = count(&|p, _| xattr_names(p).contains(&b"system.posix_acl_default".to_vec()));
        for (what, n) in [("user xattr files", user_files), ("user xattr dirs", user_dirs), ("ACLs", acl)] {
            if n == 0 {
                missing.push(what);
            }
        }
        if default_acl == 0 {
            missing.push("default ACLs");
        }
    }
    if is_root() {
        for uid in [1000, 1001, 65534, 123_456] {
            if count(&|_, m| m.uid() == uid) == 0 {
                missing.push("some uid");
            }
        }
        if count(&|_, m| m.is_file() && mode(m) == 0) == 0 {
            missing.push("0000 files");
        }
    }
    assert!(missing.is_empty(), "missing kinds: {missing:?}\n{checks:?}");
}

#[test]
fn plain_trees_have_only_plain_kinds() {
    let spec = TreeSpec { exotic: false, ..TreeSpec::with_entries(1000) };
    let (dir, stats) = generated(&spec);
    assert!(stats.entries >= 900, "{stats:?}");
    let mut links = 0;
    for (path, meta) in walk(dir.path()) {
        let t = meta.file_type();
        assert!(t.is_dir() || t.is_file() || t.is_symlink(), "{}", path.display());
        assert!(path.file_name().unwrap().to_str().is_some_and(str::is_ascii), "{}", path.display());
        assert_eq!(meta.mode() & 0o7000, 0, "{}", path.display());
        if !t.is_symlink() {
            assert!(read_xattrs(&path).unwrap().is_empty(), "{}", path.display());
        }
        if meta.is_file() && meta.nlink() > 1 {
            links += 1;
        }
    }
    assert!(links > 0);
}

#[test]
fn big_files_have_the_requested_sizes_and_shapes() {
    let spec = TreeSpec {
        files: 0,
        dirs: 0,
        big_files: vec![
            BigFile::Random(3 << 20),
            BigFile::Text((1 << 20) + 7),
            BigFile::Sparse { size: 32 << 20, data_every: 8 << 20, data_len: 4096 },
            BigFile::Database((2 << 20) + 100),
        ],
        exotic: false,
        ..TreeSpec::small()
    };
    let (dir, stats) = generated(&spec);
    let big = dir.path().join("big");
    let size = |name: &str| fs::metadata(big.join(name)).unwrap().len();
    assert_eq!(size("random-0.bin"), 3 << 20);
    assert_eq!(size("text-1.log"), (1 << 20) + 7);
    assert_eq!(size("sparse-2.img"), 32 << 20);
    assert_eq!(size("database-3.db"), (2 << 20) + 100);
    assert_eq!(stats.bytes, (3 << 20) + (1 << 20) + 7 + (32 << 20) + (2 << 20) + 100);
    assert!(fs::metadata(big.join("sparse-2.img")).unwrap().blocks() * 512 < 1 << 20);
    let text = fs::read(big.join("text-1.log")).unwrap();
    assert!(text.iter().all(|&b| b.is_ascii_lowercase() || b == b' ' || b == b'\n'));
    let db = fs::read(big.join("database-3.db")).unwrap();
    assert!(db[15 * 8192..16 * 8192].iter().all(|&b| b == 0), "every 16th page is empty");
    assert!(db[..8192].windows(13).any(|w| w == b"status=active"));
}

#[test]
fn generate_refuses_a_non_empty_root() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("x"), b"").unwrap();
    assert!(generate(dir.path(), &TreeSpec::small()).is_err());
}

/// Generates `with_entries(n)`, checking the count against `n` and the tree.
fn check_with_entries(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let stats = generate(dir.path(), &TreeSpec::with_entries(n as usize)).unwrap();
    let elapsed = start.elapsed();
    eprintln!("with_entries({n}): {stats:?} in {elapsed:?}");
    assert!(stats.entries >= n, "{stats:?}");
    assert!(stats.entries <= n + n / 50, "{stats:?}");
    assert_eq!(walk(dir.path()).len() as u64, stats.entries);
}

#[test]
fn with_entries_2000_is_big_enough() {
    check_with_entries(2_000);
}

/// Takes about 0.5 s on tmpfs, but up to 10 s on slow disks (file creation bound).
#[test]
#[ignore = "slow on slow disks: 20,000 file creations"]
fn with_entries_20000_is_big_enough() {
    check_with_entries(20_000);
}

/// Compares two 20,000-entry trees; slow in debug builds.
#[test]
#[ignore = "slow: two 20,000-entry trees"]
fn with_entries_20000_compares_identical() {
    let spec = TreeSpec::with_entries(20_000);
    let (a, _) = generated(&spec);
    let (b, _) = generated(&spec);
    let start = Instant::now();
    let found = diffs(&a, &b);
    eprintln!("compare of 20,000 entries: {:?}", start.elapsed());
    assert!(found.is_empty(), "{:#?}", &found[..found.len().min(20)]);
}

#[test]
fn a_seed_that_once_made_an_empty_symlink_target_generates() {
    // Seed 16503021659583238233 linked a root-level symlink to the root directory with an
    // empty target (ENOENT); proptest found it in `incremental.rs`.
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = TreeSpec::small();
    spec.seed = 16_503_021_659_583_238_233;
    generate(tmp.path(), &spec).unwrap();
}
