//! Re-runs move only what changed: quick check, changed blocks, appends, deletions with their
//! guard, sparse files that stay sparse, and random mutations that always converge.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use mover_engine::CopyOptions;
use mover_engine::client;
use mover_engine::progress::{NoProgress, Summary};
use mover_testdata::{BigFile, TreeSpec};
use proptest::prelude::*;

mod common;

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn sync(src: &Path, dst: &Path, options: CopyOptions) -> Result<Summary, String> {
    fs::create_dir_all(dst).unwrap();
    runtime()
        .block_on(client::copy_local(src, dst, options, Arc::new(NoProgress)))
        .map_err(|e| mover_engine::sync::full_message(&e))
}

fn copy(src: &Path, dst: &Path) -> Summary {
    let summary = sync(src, dst, CopyOptions::default()).unwrap();
    assert!(summary.is_success(), "{:?}", summary.errors);
    summary
}

#[test]
fn one_percent_of_changed_bytes_costs_a_small_multiple_on_the_wire() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    let mut spec = TreeSpec::with_entries(1_000);
    spec.big_files = vec![BigFile::Database(64 << 20), BigFile::Random(32 << 20)];
    mover_testdata::generate(&src, &spec).unwrap();
    copy(&src, &dst);

    // About 1 % of the bytes: 4 KiB pages rewritten in place, an append, a new small file.
    let mut changed = 0u64;
    let database = find(&src, "database").expect("a database file");
    let file = fs::OpenOptions::new().write(true).open(&database).unwrap();
    for i in 0..160u64 {
        let page = mover_testdata::random_bytes(1000 + i, 4096);
        file.write_all_at(&page, (i * 97 % 16_000) * 4096).unwrap();
        changed += 4096;
    }
    let random = find(&src, "random").expect("a random file");
    let tail = mover_testdata::random_bytes(7, 256 << 10);
    fs::OpenOptions::new().append(true).open(&random).unwrap().write_all_at(&tail, 32 << 20).unwrap();
    changed += tail.len() as u64;
    fs::write(src.join("new-file"), mover_testdata::random_bytes(8, 64 << 10)).unwrap();
    changed += 64 << 10;

    let summary = copy(&src, &dst);
    mover_testdata::assert_identical(&src, &dst);
    assert!(
        summary.bytes_on_wire <= changed * 3,
        "{} bytes on the wire for {changed} changed bytes",
        summary.bytes_on_wire
    );
    assert!(summary.bytes_on_wire >= changed / 2, "too few bytes on the wire: {}", summary.bytes_on_wire);
}

/// `bytes` with `insert` put at `at` and `remove` bytes taken out at `cut` (after the insert).
fn edited(bytes: &[u8], at: usize, insert: &[u8], cut: usize, remove: usize) -> Vec<u8> {
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(insert);
    out.extend_from_slice(&bytes[at..]);
    out.drain(cut..cut + remove);
    out
}

#[test]
fn shifted_content_travels_as_a_delta_and_new_content_as_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    let log = mover_testdata::random_bytes(21, 40 << 20);
    fs::write(src.join("log.bin"), &log).unwrap();
    let table = mover_testdata::random_bytes(22, 6 << 20);
    fs::write(src.join("table.bin"), &table).unwrap();
    let text: String = (0..6000).fold(String::new(), |mut text, i| {
        use std::fmt::Write as _;
        let _ = writeln!(text, "line {i}: {:x}", i * 7919);
        text
    });
    fs::write(src.join("notes.txt"), &text).unwrap();
    let rewritten = mover_testdata::random_bytes(23, 16 << 20);
    fs::write(src.join("rewritten.bin"), &rewritten).unwrap();
    // Its last chunk will be shorter than the shift is from a block boundary.
    let short_tail = mover_testdata::random_bytes(25, (2 << 20) - 277);
    fs::write(src.join("short-tail.bin"), &short_tail).unwrap();
    copy(&src, &dst);

    // Bytes inserted and removed inside incompressible data shift everything after them.
    fs::write(src.join("log.bin"), edited(&log, (3 << 20) + 17, b"inserted line\n", 25 << 20, 5000)).unwrap();
    // Two 1 MiB regions swapped.
    let mut swapped = table.clone();
    swapped[1 << 20..2 << 20].copy_from_slice(&table[4 << 20..5 << 20]);
    swapped[4 << 20..5 << 20].copy_from_slice(&table[1 << 20..2 << 20]);
    fs::write(src.join("table.bin"), &swapped).unwrap();
    // A line added at the top of a text file.
    fs::write(src.join("notes.txt"), format!("a new first line\n{text}")).unwrap();
    fs::write(src.join("short-tail.bin"), edited(&short_tail, 1000, &[7; 777], 0, 0)).unwrap();
    // All new content: sent as data, once.
    fs::write(src.join("rewritten.bin"), mover_testdata::random_bytes(24, 16 << 20)).unwrap();

    let summary = copy(&src, &dst);
    mover_testdata::assert_identical(&src, &dst);
    // Without rolling deltas, the 37 MiB after the insert and both swapped regions would be
    // resent (random data does not compress): over 39 MiB besides the 16 MiB rewrite.
    let new_data = 16u64 << 20;
    assert!(
        summary.bytes_on_wire < new_data + (1 << 20),
        "{} bytes on the wire, for 16 MiB of new data and a few shifts",
        summary.bytes_on_wire
    );
    assert!(summary.bytes_on_wire >= new_data, "the rewritten file was not sent: {}", summary.bytes_on_wire);

    // In place, the basis is the file being written: no deltas, still right.
    let (src2, dst2) = (tmp.path().join("src2"), tmp.path().join("dst2"));
    fs::create_dir(&src2).unwrap();
    fs::write(src2.join("log.bin"), &log).unwrap();
    copy(&src2, &dst2);
    fs::write(src2.join("log.bin"), edited(&log, 100_000, b"xyz", 200_000, 1)).unwrap();
    let options = CopyOptions { inplace: true, ..CopyOptions::default() };
    let summary = sync(&src2, &dst2, options).unwrap();
    assert!(summary.is_success(), "{:?}", summary.errors);
    mover_testdata::assert_identical(&src2, &dst2);
}

fn find(dir: &Path, needle: &str) -> Option<std::path::PathBuf> {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_file() && entry.file_name().to_string_lossy().contains(needle) {
            return Some(entry.path());
        }
        if kind.is_dir()
            && let Some(found) = find(&entry.path(), needle)
        {
            return Some(found);
        }
    }
    None
}

#[test]
fn a_large_sparse_file_stays_sparse_after_an_incremental_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    let image = src.join("disk.img");
    let file = fs::File::create(&image).unwrap();
    file.set_len(2 << 30).unwrap();
    file.write_all_at(&mover_testdata::random_bytes(1, 1 << 20), 100 << 20).unwrap();
    copy(&src, &dst);
    file.write_all_at(&mover_testdata::random_bytes(2, 64 << 10), 1 << 30).unwrap();
    drop(file);
    let summary = copy(&src, &dst);
    assert!(summary.bytes_on_wire < 1 << 20, "{} bytes on the wire", summary.bytes_on_wire);
    let (a, b) = (fs::metadata(&image).unwrap(), fs::metadata(dst.join("disk.img")).unwrap());
    assert!(b.blocks() <= a.blocks() + 128, "target allocates {} blocks, source {}", b.blocks(), a.blocks());
    mover_testdata::assert_identical(&src, &dst);
}

/// Bytes of `path` in the page cache (`fincore`), or `None` where that says nothing: on tmpfs
/// every file lives in the cache, a filesystem may refuse `O_DIRECT`, and the tools may be missing.
fn cached_bytes(path: &Path) -> Option<u64> {
    let fs_type = std::process::Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output().ok()?;
    if String::from_utf8_lossy(&fs_type.stdout).trim() == "tmpfs" {
        return None;
    }
    // Next to the target directory, not in it: a file made there would change its mtime.
    let probe = path.parent()?.with_extension("probe");
    let direct = fs::File::create(&probe).ok().and_then(|file| {
        let flags = rustix::fs::fcntl_getfl(&file).ok()?;
        rustix::fs::fcntl_setfl(&file, flags | rustix::fs::OFlags::DIRECT).ok()
    });
    let _ = fs::remove_file(&probe);
    direct?;
    let output = std::process::Command::new("fincore").args(["-b", "-n", "-o", "RES"]).arg(path).output().ok()?;
    assert!(output.status.success(), "fincore {}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    Some(String::from_utf8_lossy(&output.stdout).trim().parse().unwrap())
}

#[test]
fn big_files_are_written_past_the_page_cache_and_stay_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    // Not a whole number of pages: the tail goes through the cache.
    let big = src.join("big.bin");
    fs::write(&big, mover_testdata::random_bytes(1, (24 << 20) + 1000)).unwrap();
    fs::write(src.join("small.txt"), b"small files are written as usual").unwrap();
    copy(&src, &dst);
    // Before the comparison, which reads the file into the cache.
    let Some(cached) = cached_bytes(&dst.join("big.bin")) else {
        eprintln!("skipped: the target is on tmpfs or refuses O_DIRECT, or fincore or stat is missing");
        return;
    };
    assert!(cached <= 64 << 10, "{cached} bytes of a new 24 MiB file are in the page cache");
    mover_testdata::assert_identical(&src, &dst);

    // A changed block: the rest is copied from the old version, also past the cache.
    fs::OpenOptions::new().write(true).open(&big).unwrap().write_all_at(&[9u8; 4096], 12 << 20).unwrap();
    let summary = copy(&src, &dst);
    assert!(summary.bytes_on_wire < 1 << 20, "{} bytes on the wire", summary.bytes_on_wire);
    let cached = cached_bytes(&dst.join("big.bin")).unwrap();
    assert!(cached <= 64 << 10, "{cached} bytes of a rebuilt 24 MiB file are in the page cache");
    mover_testdata::assert_identical(&src, &dst);

    // 14 bytes inserted: the rest of the file moves by less than a page, and is still written
    // in whole pages past the cache.
    let old = fs::read(&big).unwrap();
    fs::write(&big, edited(&old, (3 << 20) + 17, b"inserted line\n", 0, 0)).unwrap();
    let summary = copy(&src, &dst);
    assert!(summary.bytes_on_wire < 1 << 20, "{} bytes on the wire", summary.bytes_on_wire);
    let cached = cached_bytes(&dst.join("big.bin")).unwrap();
    assert!(cached <= 64 << 10, "{cached} bytes of a 24 MiB file with an insert are in the page cache");
    mover_testdata::assert_identical(&src, &dst);
}

/// Physical start (in filesystem blocks) of each extent of `path`, from `filefrag -s -v` (synced
/// first: delayed allocation has no blocks yet).
fn physical_extents(path: &Path) -> Vec<u64> {
    let output = std::process::Command::new("filefrag").args(["-s", "-v"]).arg(path).output().unwrap();
    assert!(output.status.success(), "filefrag {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':').map(str::trim);
            fields.next()?.parse::<u32>().ok()?;
            fields.nth(1)?.split("..").next()?.trim().parse().ok()
        })
        .collect()
}

#[test]
fn on_xfs_a_changed_file_starts_as_a_clone_of_its_old_version() {
    if !common::LoopXfs::available() {
        eprintln!("skipped: needs root, loop devices and mkfs.xfs (xfsprogs) to mount an XFS image");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let xfs = common::LoopXfs::mount(&tmp.path().join("xfs"), 1 << 30);
    let dst = xfs.0.join("volume");
    fs::create_dir(&src).unwrap();
    let big = src.join("big.bin");
    fs::write(&big, mover_testdata::random_bytes(1, 64 << 20)).unwrap();
    let sparse = fs::File::create(src.join("sparse.img")).unwrap();
    sparse.set_len(512 << 20).unwrap();
    sparse.write_all_at(&mover_testdata::random_bytes(2, 4 << 20), 100 << 20).unwrap();
    let shifted = mover_testdata::random_bytes(3, 8 << 20);
    fs::write(src.join("shifted.bin"), &shifted).unwrap();
    fs::write(src.join("shrinks.bin"), mover_testdata::random_bytes(4, 6 << 20)).unwrap();
    copy(&src, &dst);
    let before = physical_extents(&dst.join("big.bin"));

    // 4 KiB rewritten in the middle, a page written in a hole, 4 KiB inserted (the rest shifts),
    // and a file cut short.
    fs::OpenOptions::new().write(true).open(&big).unwrap().write_all_at(&[7u8; 4096], 32 << 20).unwrap();
    sparse.write_all_at(&mover_testdata::random_bytes(5, 4096), 300 << 20).unwrap();
    drop(sparse);
    let mut inserted = shifted[..(3 << 20)].to_vec();
    inserted.extend_from_slice(&mover_testdata::random_bytes(6, 4096));
    inserted.extend_from_slice(&shifted[(3 << 20)..]);
    fs::write(src.join("shifted.bin"), &inserted).unwrap();
    fs::OpenOptions::new().write(true).open(src.join("shrinks.bin")).unwrap().set_len(5 << 20).unwrap();
    let summary = copy(&src, &dst);
    mover_testdata::assert_identical(&src, &dst);
    assert!(summary.bytes_on_wire < 2 << 20, "{} bytes on the wire", summary.bytes_on_wire);

    // The unchanged start of the big file still lives in the blocks it had: the new version was
    // cloned from the old one, not written anew (a copy gets new blocks while the old file
    // still holds its own).
    let after = physical_extents(&dst.join("big.bin"));
    assert_eq!(after.first(), before.first(), "extents before {before:?}, after {after:?}");
    assert!(after.len() > 1, "the rewritten block sits in its own extent: {after:?}");
    let (a, b) = (fs::metadata(src.join("sparse.img")).unwrap(), fs::metadata(dst.join("sparse.img")).unwrap());
    assert!(b.blocks() <= a.blocks() + 128, "target allocates {} blocks, source {}", b.blocks(), a.blocks());
}

/// The receiver keeps the directories for its last pass (their times and modes, set once
/// everything inside them is in place) in segments of 1 MiB on disk: 25,000 directories need
/// two of them, and every one comes back, deepest first.
#[test]
fn many_directories_get_their_times_and_modes_through_a_spilled_list() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let mut dirs = Vec::new();
    for i in 0..50 {
        for j in 0..500 {
            dirs.push(src.join(format!("level-one-{i:02}/level-two-{j:03}")));
        }
    }
    for (n, dir) in dirs.iter().enumerate() {
        fs::create_dir_all(dir).unwrap();
        let time = std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000 + n as u64, 1_000 * n as u32);
        fs::File::open(dir).unwrap().set_modified(time).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode([0o755, 0o700, 0o750][n % 3])).unwrap();
    }
    for i in 0..50 {
        let dir = src.join(format!("level-one-{i:02}"));
        fs::File::open(&dir)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000 + i))
            .unwrap();
    }
    copy(&src, &dst);
    mover_testdata::assert_identical(&src, &dst);
    // Times changed on the target are set back by the next run.
    let changed = dst.join("level-one-07/level-two-123");
    fs::File::open(&changed).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
    copy(&src, &dst);
    mover_testdata::assert_identical(&src, &dst);
}

#[test]
fn deletions_no_delete_and_the_mass_delete_guard() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(src.join("keep")).unwrap();
    for i in 0..10 {
        fs::write(src.join(format!("keep/{i}")), format!("{i}")).unwrap();
    }
    copy(&src, &dst);
    fs::create_dir_all(dst.join("extra/deep")).unwrap();
    fs::write(dst.join("extra/deep/x"), b"x").unwrap();
    fs::write(dst.join("keep/extra"), b"x").unwrap();

    let summary = sync(&src, &dst, CopyOptions { delete: false, ..CopyOptions::default() }).unwrap();
    assert_eq!(summary.entries_deleted, 0);
    assert!(dst.join("extra/deep/x").exists() && dst.join("keep/extra").exists());

    let summary = copy(&src, &dst);
    assert_eq!(summary.entries_deleted, 4, "extra, extra/deep, extra/deep/x, keep/extra");
    mover_testdata::assert_identical(&src, &dst);

    // An empty source would wipe the target: refused, nothing deleted.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let error = sync(&empty, &dst, CopyOptions::default()).unwrap_err();
    assert!(error.contains("refusing to delete 11 of the target's 11 entries"), "{error}");
    assert_eq!(fs::read_dir(dst.join("keep")).unwrap().count(), 10);
    let summary = sync(&empty, &dst, CopyOptions { allow_mass_delete: true, ..CopyOptions::default() }).unwrap();
    assert_eq!(summary.entries_deleted, 11);
    assert_eq!(fs::read_dir(&dst).unwrap().count(), 0);
}

#[test]
fn checksum_finds_a_change_that_kept_size_and_mtime() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), vec![b'a'; 100_000]).unwrap();
    copy(&src, &dst);
    let target = dst.join("f");
    let mtime = fs::metadata(&target).unwrap().modified().unwrap();
    fs::OpenOptions::new().write(true).open(&target).unwrap().write_all_at(b"b", 5000).unwrap();
    fs::File::options().write(true).open(&target).unwrap().set_modified(mtime).unwrap();
    let summary = copy(&src, &dst);
    assert_eq!(summary.bytes_transferred, 0, "quick check should not look inside");
    assert_ne!(fs::read(&target).unwrap(), fs::read(src.join("f")).unwrap());
    let summary = sync(&src, &dst, CopyOptions { checksum: true, ..CopyOptions::default() }).unwrap();
    assert!(summary.bytes_transferred > 0 && summary.bytes_transferred <= 8192, "{summary:?}");
    assert_eq!(fs::read(&target).unwrap(), fs::read(src.join("f")).unwrap());
}

/// Mutations applied to a tree, driven by a seed.
fn mutate(root: &Path, seed: u64, count: usize) {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut paths = Vec::new();
    collect(root, root, &mut paths);
    for _ in 0..count {
        if paths.is_empty() {
            break;
        }
        let path = root.join(&paths[(next() % paths.len() as u64) as usize]);
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        match next() % 8 {
            // Edit in place.
            0 if meta.is_file() && meta.len() > 0 => {
                let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
                file.write_all_at(&mover_testdata::random_bytes(next(), 100), next() % meta.len()).unwrap();
            }
            // Truncate.
            1 if meta.is_file() => {
                fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(meta.len() / 2).unwrap();
            }
            // Append.
            2 if meta.is_file() => {
                let file = fs::OpenOptions::new().append(true).open(&path).unwrap();
                file.write_all_at(&mover_testdata::random_bytes(next(), 5000), meta.len()).unwrap();
            }
            // Insert (shifts the rest).
            3 if meta.is_file() => {
                let mut data = fs::read(&path).unwrap();
                let at = (next() % (data.len() as u64 + 1)) as usize;
                data.splice(at..at, mover_testdata::random_bytes(next(), 777));
                fs::write(&path, data).unwrap();
            }
            // Rename.
            4 => {
                let _ = fs::rename(&path, path.with_file_name(format!("renamed-{}", next() % 1000)));
            }
            // File -> directory.
            5 if !meta.is_dir() => {
                fs::remove_file(&path).unwrap();
                fs::create_dir(&path).unwrap();
                fs::write(path.join("inside"), b"now a directory").unwrap();
            }
            // Directory or file -> symlink.
            6 => {
                if meta.is_dir() {
                    fs::remove_dir_all(&path).unwrap();
                } else {
                    fs::remove_file(&path).unwrap();
                }
                std::os::unix::fs::symlink("../somewhere", &path).unwrap();
            }
            // Symlink or file -> file with new content, new mode.
            _ if !meta.is_dir() => {
                fs::remove_file(&path).unwrap();
                fs::write(&path, mover_testdata::random_bytes(next(), (next() % 20_000) as usize)).unwrap();
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600 | (next() as u32 & 0o077))).unwrap();
            }
            _ => {}
        }
        paths.clear();
        collect(root, root, &mut paths);
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        // Leave read-only corners of the generated tree alone: mutating them needs chmod dances.
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() && meta.mode() & 0o200 == 0 {
            continue;
        }
        out.push(path.strip_prefix(root).unwrap().to_owned());
        if meta.is_dir() {
            collect(root, &path, out);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn random_mutations_always_converge(
        seed in any::<u64>(),
        rounds in 1usize..3,
        count in 1usize..40,
        streams in 1u32..5,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        fs::create_dir(&src).unwrap();
        let mut spec = TreeSpec::small();
        spec.seed = seed;
        mover_testdata::generate(&src, &spec).unwrap();
        copy(&src, &dst);
        for round in 0..rounds {
            mutate(&src, seed.wrapping_add(round as u64), count);
            let options = CopyOptions { allow_mass_delete: true, streams, ..CopyOptions::default() };
            let summary = sync(&src, &dst, options).unwrap();
            prop_assert!(summary.is_success(), "{:?}", summary.errors);
            let differences = mover_testdata::compare(&src, &dst, &mover_testdata::CompareOptions::default()).unwrap();
            prop_assert!(differences.is_empty(), "{}", differences.iter().take(10).map(ToString::to_string).collect::<Vec<_>>().join("\n"));
        }
    }
}

#[test]
fn bwlimit_holds_the_rate_within_15_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    // Incompressible, so bytes on the wire are the content.
    mover_testdata::write_random(&src.join("f"), 12 << 20, 3).unwrap();
    let limit = 4u64 << 20;
    let summary = sync(&src, &dst, CopyOptions { bwlimit: limit, ..CopyOptions::default() }).unwrap();
    let rate = summary.bytes_on_wire as f64 / summary.elapsed_s;
    let ratio = rate / limit as f64;
    assert!((0.85..=1.15).contains(&ratio), "observed {rate:.0} B/s for a limit of {limit} B/s ({ratio:.2})");
    mover_testdata::assert_identical(&src, &dst);
}

#[test]
fn an_unreadable_source_entry_keeps_the_target_copy_and_hard_links_stay_right() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(src.join("z")).unwrap();
    fs::write(src.join("a"), b"file a").unwrap();
    fs::hard_link(src.join("a"), src.join("z/a2")).unwrap();
    fs::write(src.join("b"), b"file b").unwrap();
    fs::hard_link(src.join("b"), src.join("z/b2")).unwrap();
    copy(&src, &dst);
    // More extended attributes than mover accepts: `a` can no longer be read as an entry.
    for i in 0..(mover_engine::meta::MAX_XATTRS + 5) {
        let name = format!("user.attr{i}");
        rustix::fs::setxattr(src.join("a"), name.as_str(), b"v", rustix::fs::XattrFlags::empty()).unwrap();
    }
    fs::write(src.join("b"), b"file b, changed").unwrap();
    let summary = sync(&src, &dst, CopyOptions::default()).unwrap();
    assert!(summary.errors.iter().any(|e| e.contains("`a`")), "{:?}", summary.errors);
    assert_eq!(summary.entries_deleted, 0, "the target's copy of an unreadable entry must stay");
    assert_eq!(fs::read(dst.join("a")).unwrap(), b"file a");
    // The failed leader must not shift the ids of later hard links.
    assert_eq!(fs::read(dst.join("b")).unwrap(), b"file b, changed");
    assert_eq!(fs::read(dst.join("z/b2")).unwrap(), b"file b, changed");
    assert_eq!(fs::metadata(dst.join("b")).unwrap().ino(), fs::metadata(dst.join("z/b2")).unwrap().ino());
}

#[test]
fn inplace_updates_changed_files_in_their_own_inode_and_verifies_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir(&src).unwrap();
    mover_testdata::write_random(&src.join("disk.img"), 48 << 20, 11).unwrap();
    fs::write(src.join("small"), b"v1").unwrap();
    copy(&src, &dst);
    let inode_before = fs::metadata(dst.join("disk.img")).unwrap().ino();

    // Rewrite blocks in place, grow the file, and shrink another.
    let file = fs::OpenOptions::new().write(true).open(src.join("disk.img")).unwrap();
    for i in 0..40u64 {
        file.write_all_at(&mover_testdata::random_bytes(500 + i, 4096), i * 1_200_000).unwrap();
    }
    file.write_all_at(&[0u8; 3 * 4096], 20 << 20).unwrap();
    file.write_all_at(&mover_testdata::random_bytes(9, 100_000), 48 << 20).unwrap();
    drop(file);
    fs::write(src.join("small"), b"version two").unwrap();
    let options = CopyOptions { inplace: true, ..CopyOptions::default() };
    let summary = sync(&src, &dst, options.clone()).unwrap();
    assert!(summary.is_success(), "{:?}", summary.errors);
    mover_testdata::assert_identical(&src, &dst);
    assert_eq!(fs::metadata(dst.join("disk.img")).unwrap().ino(), inode_before, "the file was replaced, not updated");
    assert!(summary.bytes_on_wire < 4 << 20, "{} bytes on the wire", summary.bytes_on_wire);
    let leftovers: Vec<_> = fs::read_dir(&dst)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".mover-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Shrinking in place works too, and a second run has nothing to do.
    let file = fs::OpenOptions::new().write(true).open(src.join("disk.img")).unwrap();
    file.set_len(10 << 20).unwrap();
    drop(file);
    let summary = sync(&src, &dst, options.clone()).unwrap();
    assert!(summary.is_success(), "{:?}", summary.errors);
    mover_testdata::assert_identical(&src, &dst);
    assert_eq!(fs::metadata(dst.join("disk.img")).unwrap().ino(), inode_before);
    let summary = sync(&src, &dst, options).unwrap();
    assert_eq!(summary.files_transferred, 0);
}

#[test]
fn a_hard_link_broken_on_the_target_is_made_again_and_an_intact_one_is_left() {
    use std::os::unix::fs::MetadataExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    fs::create_dir_all(src.join("d")).unwrap();
    fs::create_dir_all(src.join("e")).unwrap();
    fs::write(src.join("a"), b"shared content").unwrap();
    fs::hard_link(src.join("a"), src.join("d/b")).unwrap();
    fs::hard_link(src.join("a"), src.join("e/c")).unwrap();
    copy(&src, &dst);
    let meta = |p: &str| fs::symlink_metadata(dst.join(p)).unwrap();
    assert!(meta("a").ino() == meta("d/b").ino() && meta("a").ino() == meta("e/c").ino());

    // `d/b` becomes a separate file with the same content and times: only its inode differs.
    let mtime = meta("d/b").modified().unwrap();
    fs::remove_file(dst.join("d/b")).unwrap();
    fs::write(dst.join("d/b"), b"shared content").unwrap();
    fs::File::options().write(true).open(dst.join("d/b")).unwrap().set_modified(mtime).unwrap();
    assert_ne!(meta("d/b").ino(), meta("a").ino());
    // A link made again would change its directory (a rename into it), and so its ctime.
    let intact = (meta("e").ctime(), meta("e").ctime_nsec());

    copy(&src, &dst);
    assert_eq!(meta("d/b").ino(), meta("a").ino(), "the broken link is made again");
    assert_eq!((meta("e").ctime(), meta("e").ctime_nsec()), intact, "the intact link is left as it was");
    mover_testdata::assert_identical(&src, &dst);
}
