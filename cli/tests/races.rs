//! Symlink races: while syncs run again and again, a background thread flips a directory inside
//! the target (and, separately, inside the source) between a real directory and a symlink to a
//! canary outside the root. The canary is never written, chmod-ed, deleted, or copied.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mover_engine::CopyOptions;
use mover_engine::client;
use mover_engine::progress::NoProgress;

const CANARY: &[u8] = b"canary: must never be touched or copied";

struct Canary {
    dir: PathBuf,
    mtime: i64,
}

impl Canary {
    fn plant(dir: &Path) -> Canary {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("flip"), CANARY).unwrap();
        fs::write(dir.join("inner"), CANARY).unwrap();
        fs::set_permissions(dir.join("inner"), fs::Permissions::from_mode(0o640)).unwrap();
        Canary { dir: dir.to_owned(), mtime: fs::metadata(dir.join("inner")).unwrap().mtime() }
    }

    fn check(&self) {
        let names: Vec<_> = fs::read_dir(&self.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "entries appeared in or vanished from the canary: {names:?}");
        for name in ["flip", "inner"] {
            assert_eq!(fs::read(self.dir.join(name)).unwrap(), CANARY, "canary `{name}` was written");
        }
        let meta = fs::metadata(self.dir.join("inner")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640, "canary was chmod-ed");
        assert_eq!(meta.mtime(), self.mtime, "canary times were changed");
    }
}

/// Flips `path` between a directory holding a file named like the canary's and a symlink to
/// the canary directory, until stopped.
fn flipper(path: PathBuf, canary: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut flips = 0;
        while !stop.load(Ordering::Relaxed) {
            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            let _ = std::os::unix::fs::symlink(&canary, &path);
            std::thread::sleep(Duration::from_micros(300));
            let _ = fs::remove_file(&path);
            if fs::create_dir(&path).is_ok() {
                let _ = fs::write(path.join("flip"), b"real directory");
            }
            std::thread::sleep(Duration::from_micros(300));
            flips += 1;
        }
        flips
    })
}

fn run_for(duration: Duration, src: &Path, dst: &Path) -> usize {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < duration {
        // Errors are expected (a directory vanished mid-run, a symlink in the way): what matters
        // is that nothing outside the root is touched.
        let _ = runtime.block_on(client::copy_local(
            src,
            dst,
            CopyOptions { stage: true, allow_mass_delete: true, ..CopyOptions::default() },
            Arc::new(NoProgress),
        ));
        runs += 1;
    }
    runs
}

fn source_tree(src: &Path) {
    for d in ["a", "b", "flip", "z"] {
        fs::create_dir_all(src.join(d)).unwrap();
        for f in 0..20 {
            fs::write(src.join(d).join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
        fs::write(src.join(d).join("flip"), format!("source {d}")).unwrap();
        fs::write(src.join(d).join("inner"), format!("source {d}")).unwrap();
    }
}

fn never_copied(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            never_copied(&entry.path());
        } else if meta.is_file() {
            assert_ne!(
                fs::read(entry.path()).unwrap(),
                CANARY,
                "canary content was copied to {}",
                entry.path().display()
            );
        }
    }
}

/// Syncs `src` into `dst` for 8 s while `flip` (inside one of them) is flipped to a symlink to
/// the canary; checks the canary and returns the destination for further checks.
fn race(flip_in_source: bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    source_tree(&src);
    fs::create_dir(&dst).unwrap();
    let canary = Canary::plant(&tmp.path().join("canary"));
    let stop = Arc::new(AtomicBool::new(false));
    let flipped = if flip_in_source { src.join("flip") } else { dst.join("flip") };
    let thread = flipper(flipped, canary.dir.clone(), stop.clone());
    let runs = run_for(Duration::from_secs(30), &src, &dst);
    stop.store(true, Ordering::Relaxed);
    let flips = thread.join().unwrap();
    canary.check();
    assert!(runs >= 5 && flips >= 100, "too little happened: {runs} runs, {flips} flips");
    (tmp, dst)
}

#[test]
fn flipping_a_target_directory_to_a_symlink_never_touches_the_canary() {
    race(false);
}

#[test]
fn flipping_a_source_directory_to_a_symlink_never_copies_the_canary() {
    let (_tmp, dst) = race(true);
    never_copied(&dst);
}
