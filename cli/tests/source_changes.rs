//! A source file that vanishes or changes while it is read is reported and never stored torn.
//! Uses the engine's test hook (`test-util`) to act between the scan and the read, so the
//! scenarios run in one test: hooks are process-wide.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mover_engine::CopyOptions;
use mover_engine::client;
use mover_engine::progress::{NoProgress, Summary};
use mover_engine::testing;

fn copy(src: &Path, dst: &Path, stage: bool) -> Summary {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let options = CopyOptions { stage, ..CopyOptions::default() };
    fs::create_dir_all(dst).unwrap();
    runtime.block_on(client::copy_local(src, dst, options, Arc::new(NoProgress))).unwrap()
}

#[test]
fn vanished_and_changed_files_are_reported_and_never_stored_torn() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("keep"), b"stays").unwrap();
    fs::write(src.join("vanishing"), b"gone soon").unwrap();
    fs::write(src.join("appended"), b"first version").unwrap();
    // Big enough that reading it takes a while: a writer rewrites it meanwhile.
    fs::write(src.join("rewritten"), vec![b'a'; 48 << 20]).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook_src = src.clone();
    let hook_stop = stop.clone();
    let hook_writers = writers.clone();
    testing::set_before_read(move |path| match path {
        b"vanishing" => fs::remove_file(hook_src.join("vanishing")).unwrap(),
        b"appended" => {
            use std::io::Write;
            let mut file = fs::OpenOptions::new().append(true).open(hook_src.join("appended")).unwrap();
            file.write_all(b" and more").unwrap();
        }
        b"rewritten" => {
            let (path, stop) = (hook_src.join("rewritten"), hook_stop.clone());
            hook_writers.lock().unwrap().push(std::thread::spawn(move || {
                use std::os::unix::fs::FileExt;
                let file = fs::OpenOptions::new().write(true).open(path).unwrap();
                let mut byte = b'b';
                while !stop.load(Ordering::Relaxed) {
                    // Rewrite in place, in pieces: a torn read would mix letters.
                    for offset in (0..48u64 << 20).step_by(1 << 20) {
                        file.write_all_at(&vec![byte; 1 << 20], offset).unwrap();
                    }
                    byte = if byte == b'z' { b'b' } else { byte + 1 };
                }
            }));
        }
        _ => {}
    });

    // Final run: errors, exit status 1 in the CLI.
    let dst = tmp.path().join("final");
    let summary = copy(&src, &dst, false);
    stop.store(true, Ordering::Relaxed);
    for writer in writers.lock().unwrap().drain(..) {
        writer.join().unwrap();
    }
    assert!(!summary.is_success());
    let errors = summary.errors.join("\n");
    assert!(errors.contains("`vanishing` vanished"), "{errors}");
    assert!(errors.contains("`appended` changed while it was being read"), "{errors}");
    assert!(errors.contains("`rewritten` changed while it was being read"), "{errors}");
    assert_eq!(fs::read(dst.join("keep")).unwrap(), b"stays");
    for name in ["vanishing", "appended", "rewritten"] {
        assert!(!dst.join(name).exists(), "`{name}` was stored although it changed or vanished");
    }
    for entry in fs::read_dir(&dst).unwrap() {
        assert!(!entry.unwrap().file_name().to_string_lossy().starts_with(".mover-tmp-"));
    }

    // Stage run: the same events are warnings and the run succeeds.
    fs::write(src.join("vanishing"), b"back again").unwrap();
    testing::set_before_read({
        let src = src.clone();
        move |path| {
            if path == b"vanishing" {
                fs::remove_file(src.join("vanishing")).unwrap();
            }
        }
    });
    let dst = tmp.path().join("stage");
    let summary = copy(&src, &dst, true);
    testing::clear_before_read();
    assert!(summary.is_success(), "{:?}", summary.errors);
    assert!(summary.warnings.iter().any(|w| w.contains("`vanishing` vanished")), "{:?}", summary.warnings);
    assert!(!dst.join("vanishing").exists());
    let rewritten = fs::read(dst.join("rewritten")).unwrap();
    assert!(rewritten.iter().all(|&b| b == rewritten[0]), "a stored file mixes two versions");
}
