//! Deletions are visible and can be previewed (issue 19, item 3; ux-trial findings #4 and #5):
//! `mover copy -n` writes nothing and lists what a copy would do, `-i` lists each change,
//! JSON names every deletion, `lost+found` at a volume root is furniture, and the mass-delete
//! refusal names what it would delete. All through the real `mover` and `mover-agent`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;

use common::{Agent, certs, mover, mover_on_plan, summary, text, write_plan};

/// Every path under `root` with its type, size, mode and mtime (nanoseconds), and the root's
/// own: anything a copy writes shows.
fn listing(root: &Path) -> BTreeMap<String, (u32, u64, i64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let name = path.strip_prefix(root).unwrap().display().to_string();
        out.insert(name, (meta.mode(), meta.size(), meta.mtime(), meta.mtime_nsec()));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}\n{}", text(output))))
        .collect()
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A source, and a target holding an older copy: one changed file, one unchanged, files of
/// the user's own (one inside a directory the source lacks), and a directory the target lacks.
fn source_and_changed_target(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (src, dst) = (root.join("src"), root.join("dst"));
    write(&src.join("same.txt"), "same");
    write(&src.join("changed.txt"), "new content, longer");
    write(&src.join("newdir/inner/deep.txt"), "deep");
    write(&src.join("keep/kept.txt"), "kept");
    write(&src.join("keep/kept2.txt"), "kept too");
    std::os::unix::fs::symlink("same.txt", src.join("link")).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let first = mover(&["copy", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(first.status.success(), "{}", text(&first));
    write(&dst.join("changed.txt"), "old");
    for i in 0..3 {
        write(&dst.join(format!("mine{i}.txt")), "the user's own");
    }
    write(&dst.join("olddir/a.txt"), "old");
    std::fs::remove_dir_all(dst.join("newdir")).unwrap();
    (src, dst)
}

/// `-n` writes nothing (no file, directory, temporary file or time changes) and lists the
/// creates, updates and deletes a copy would make; the copy after it does exactly that.
#[test]
fn a_dry_run_writes_nothing_and_lists_what_a_copy_would_do() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = source_and_changed_target(tmp.path());
    let before = listing(&dst);
    let output = mover(&["copy", "-n", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(listing(&dst), before, "a dry run changed the target\n{}", text(&output));
    let lines = stdout_lines(&output);
    // Changes in path order as they are decided, then the deletions (made at the end).
    let expected = [
        ">f.st...... changed.txt",
        "cd+++++++++ newdir/",
        "cd+++++++++ newdir/inner/",
        ">f+++++++++ newdir/inner/deep.txt",
        "*deleting   mine0.txt",
        "*deleting   mine1.txt",
        "*deleting   mine2.txt",
        "*deleting   olddir/",
    ];
    assert_eq!(lines, expected, "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("dry run, nothing was written: would copy 2 of 5 files")
            && stderr.contains("5 would be deleted"),
        "{}",
        text(&output)
    );

    // JSON says it is a dry run, and counts what would go.
    let output = mover(&["copy", "--dry-run", "--output", "json", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(listing(&dst), before, "a JSON dry run changed the target");
    let summary = summary(&output);
    assert_eq!(summary["dry_run"], true, "{summary}");
    assert_eq!(summary["entries_deleted"], 5, "{summary}");
    assert_eq!(summary["files_transferred"], 2, "{summary}");

    // The real copy does what the dry run said.
    let output = mover(&["copy", "-i", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(stdout_lines(&output), expected, "{}", text(&output));
    mover_testdata::assert_identical(&src, &dst);
}

/// `-i` on a real copy: each kind of change with its letters, and nothing for what is up to
/// date; metadata-only changes as `.f`.
#[test]
fn itemize_lists_each_change_of_a_real_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write(&src.join("a.txt"), "a");
    write(&src.join("d/b.txt"), "b");
    std::os::unix::fs::symlink("a.txt", src.join("l")).unwrap();
    std::fs::create_dir(&dst).unwrap();
    let output = mover(&["copy", "-i", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        stdout_lines(&output),
        [">f+++++++++ a.txt", "cd+++++++++ d/", ">f+++++++++ d/b.txt", "cL+++++++++ l"],
        "{}",
        text(&output)
    );
    // Nothing changed: nothing listed. Then a permission change alone.
    let output = mover(&["copy", "-i", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(stdout_lines(&output).is_empty(), "{}", text(&output));
    std::fs::set_permissions(src.join("a.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let output = mover(&["copy", "-i", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(stdout_lines(&output), [".f...p..... a.txt"], "{}", text(&output));
}

/// `--output json` names every deleted path, without `-i`, in a copy to an agent and in an
/// agent-to-agent push (forwarded by the source agent); the summary counts them.
#[test]
fn json_names_each_deletion_through_agents() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write(&src.join("keep.txt"), "keep");
    for (i, name) in ["x.txt", "y.txt"].iter().enumerate() {
        write(&src.join(name), &i.to_string());
    }
    std::fs::create_dir(&dst).unwrap();
    let source_agent = Agent::start(&certs, &[format!("data={}", src.display())], tmp.path());
    let target_agent = Agent::start(&certs, &[format!("data={}", dst.display())], tmp.path());
    let certs_arg = certs.to_str().unwrap();
    let output = mover(&["copy", src.to_str().unwrap(), &target_agent.url("data"), "--certs", certs_arg]);
    assert!(output.status.success(), "{}", text(&output));
    let deleted = |output: &Output| -> Vec<String> {
        let mut paths: Vec<String> = json_lines(output)
            .into_iter()
            .filter(|line| line["type"] == "change" && line["action"] == "delete")
            .map(|line| line["path"].as_str().unwrap().to_owned())
            .collect();
        paths.sort();
        paths
    };

    write(&dst.join("mine.txt"), "the user's own");
    let output =
        mover(&["copy", src.to_str().unwrap(), &target_agent.url("data"), "--certs", certs_arg, "--output", "json"]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(deleted(&output), ["mine.txt"], "{}", text(&output));
    assert_eq!(summary(&output)["entries_deleted"], 1);
    assert!(!dst.join("mine.txt").exists());

    write(&dst.join("sub/mine2.txt"), "the user's own");
    let output = mover(&[
        "copy",
        &source_agent.url("data"),
        &target_agent.url("data"),
        "--certs",
        certs_arg,
        "--output",
        "json",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(deleted(&output), ["sub"], "{}", text(&output));
    assert_eq!(summary(&output)["entries_deleted"], 2, "a directory counts with what it held");
    assert_eq!(summary(&output)["dry_run"], false);
    assert!(!dst.join("sub").exists());

    // -i through the push lists the changes too.
    write(&src.join("z.txt"), "new");
    let output = mover(&["copy", "-i", &source_agent.url("data"), &target_agent.url("data"), "--certs", certs_arg]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(stdout_lines(&output), [">f+++++++++ z.txt"], "{}", text(&output));
}

/// A fresh ext4 volume holds only `lost+found/`: the first copy from a source without one is
/// accepted (not a mass deletion) and keeps it; a source's own `lost+found` is not sent.
#[test]
fn a_fresh_target_with_only_lost_and_found_accepts_the_first_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write(&src.join("a.txt"), "a");
    write(&src.join("lost+found/recovered"), "fsck's");
    write(&src.join("sub/lost+found/data.txt"), "only the root's is furniture");
    write(&dst.join("lost+found/#1234"), "the target's own");
    let output = mover(&["copy", src.to_str().unwrap(), dst.to_str().unwrap(), "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(summary(&output)["entries_deleted"], 0, "{}", text(&output));
    assert_eq!(std::fs::read_to_string(dst.join("lost+found/#1234")).unwrap(), "the target's own");
    assert!(!dst.join("lost+found/recovered").exists(), "the source's lost+found was sent");
    assert_eq!(std::fs::read_to_string(dst.join("sub/lost+found/data.txt")).unwrap(), "only the root's is furniture");
    // The next copy leaves it alone too, with or without a dry run.
    let output = mover(&["copy", "-n", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert!(stdout_lines(&output).is_empty(), "{}", text(&output));
}

/// The refusal names a sample of what it would delete, and how many more; a dry run that
/// would be refused says so too (and writes nothing).
#[test]
fn the_mass_delete_refusal_lists_a_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write(&src.join("only.txt"), "1");
    for i in 0..14 {
        write(&dst.join(format!("user{i:02}.txt")), "the user's own");
    }
    for dry_run in [true, false] {
        let mut args = vec!["copy", src.to_str().unwrap(), dst.to_str().unwrap()];
        if dry_run {
            args.push("-n");
        }
        let before = listing(&dst);
        let output = mover(&args);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("refusing to delete 14 of the target's 14 entries"), "{}", text(&output));
        assert!(stderr.contains("`user00.txt`, `user01.txt`"), "{}", text(&output));
        assert!(stderr.contains("`user09.txt` and 4 more"), "{}", text(&output));
        // The remedy comes from the CLI's hint table, by the refusal's kind (it crossed the wire).
        assert!(stderr.contains("hint: nothing was deleted; pass `--allow-mass-delete`"), "{}", text(&output));
        if dry_run {
            assert_eq!(listing(&dst), before, "a refused dry run wrote");
        }
    }
}

/// `plan run --dry-run` runs no hook, copies nothing, writes nothing, and lists each volume's
/// changes; its report says it was a dry run.
#[test]
fn plan_run_dry_run_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    write(&src.join("a.txt"), "a");
    write(&dst.join("mine.txt"), "the user's own");
    write(&dst.join("b.txt"), "b");
    write(&src.join("b.txt"), "b");
    let hook_ran = tmp.path().join("hook-ran");
    let plan = write_plan(
        tmp.path(),
        &format!(
            "name: preview\nvolumes:\n  - {{name: data, source: ./src, target: ./dst}}\nhooks:\n  - name: quiesce\n    phase: PreBackup\n    command: [touch, {}]\n",
            hook_ran.display()
        ),
    );
    let before = listing(&dst);
    let report = tmp.path().join("report.json");
    let output = mover_on_plan(
        &["plan", "run"],
        &plan,
        &["--dry-run", "--skip-preflight", "--report", report.to_str().unwrap()],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(listing(&dst), before, "a plan dry run changed the target\n{}", text(&output));
    assert!(!hook_ran.exists(), "a dry run ran a hook");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("volume `data`: >f+++++++++ a.txt"), "{}", text(&output));
    assert!(stderr.contains("volume `data`: *deleting   mine.txt"), "{}", text(&output));
    assert!(stderr.contains("1 hooks and 0 image transfers are not run"), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["dry_run"], true, "{report:#}");
    assert_eq!(report["volumes"][0]["entries_deleted"], 1, "{report:#}");
    assert_eq!(report["hooks"][0]["result"], "not_run", "{report:#}");
}
