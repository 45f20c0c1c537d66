//! What a person sees at a terminal: the real `mover` in a real pseudo-terminal (tmux), read
//! back from the screen.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux session running one command in a 120x30 pane; killed on drop.
struct Screen {
    name: String,
}

impl Screen {
    fn start(command: &str) -> Option<Screen> {
        if Command::new("tmux").arg("-V").output().is_err() {
            eprintln!("skipped: tmux is not installed (scripts/test.sh installs it)");
            return None;
        }
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("mover-test-{}-{next}", std::process::id());
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-x", "120", "-y", "30", "-s", &name])
            .arg(format!("{command}; echo EXIT=$?; sleep 60"))
            .status()
            .unwrap();
        assert!(status.success());
        Some(Screen { name })
    }

    fn text(&self) -> String {
        let output = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.name]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.text();
            if text.contains(what) {
                return text;
            }
            assert!(Instant::now() < deadline, "`{what}` never showed; the screen:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.name]).status();
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[test]
fn the_bar_moves_within_one_big_file_and_the_copy_ends_with_a_summary_line() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    mover_testdata::write_random(&src.join("disk.img"), 24 << 20, 7).unwrap();
    let dst = tmp.path().join("dst");
    let command = format!(
        "{} copy {} {} --bwlimit 4M --streams 1",
        shell_quote(&common::bin("mover")),
        shell_quote(&src),
        shell_quote(&dst)
    );
    let Some(screen) = Screen::start(&command) else { return };
    // Half way through the only file (about 3 s at 4 MiB/s), the bar shows bytes moving and
    // the rate of the link, not 0 B.
    std::thread::sleep(Duration::from_millis(2500));
    let during = screen.text();
    let bar = during.lines().find(|line| line.contains("/24.00 MiB")).unwrap_or_else(|| panic!("no bar:\n{during}"));
    assert!(!bar.trim_start_matches(|c: char| !c.is_ascii_digit()).starts_with("0 B"), "the bar stands still: {bar}");
    assert!(bar.contains("MiB/s sent") || bar.contains("KiB/s sent"), "no send rate: {bar}");
    // One file count everywhere: the bar's total is the summary's.
    assert!(bar.contains(" of 1 files"), "the bar does not name the total of files: {bar}");
    let after = screen.wait_for("EXIT=", Duration::from_secs(30));
    assert!(after.contains("EXIT=0"), "{after}");
    let summary =
        after.lines().find(|line| line.starts_with("done: ")).unwrap_or_else(|| panic!("no summary:\n{after}"));
    assert!(summary.contains("1 of 1 files copied (24.00 MiB of 24.00 MiB), 0 deleted"), "{summary}");
}

#[test]
fn warnings_are_warning_lines_not_log_lines_and_v_lists_each_change() {
    if !common::is_root() {
        eprintln!("skipped: making a device node needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("notes.txt"), b"hello").unwrap();
    let status = Command::new("mknod").arg(src.join("null")).args(["c", "1", "3"]).status().unwrap();
    assert!(status.success());
    let dst = tmp.path().join("dst");
    let command = format!("{} copy {} {} -v", shell_quote(&common::bin("mover")), shell_quote(&src), shell_quote(&dst));
    let Some(screen) = Screen::start(&command) else { return };
    let after = screen.wait_for("EXIT=", Duration::from_secs(30));
    assert!(after.contains("EXIT=0"), "{after}");
    assert!(after.lines().any(|line| line.starts_with("warning: ") && line.contains("null")), "{after}");
    assert!(!after.contains(" WARN ") && !after.contains("mover_engine::"), "internal log lines shown:\n{after}");
    assert!(after.lines().any(|line| line == ">f+++++++++ notes.txt"), "-v lists no changes:\n{after}");
}
