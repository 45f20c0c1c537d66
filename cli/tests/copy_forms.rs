//! The three forms of `mover copy`, each on a generated tree of more than 20,000 entries with
//! every kind of entry, checked by the tree comparator (type, mode, owner, mtime ns, size,
//! content, symlink target, hard-link groups, xattrs, allocation of sparse files).

mod common;

use std::fs;
use std::sync::OnceLock;

use common::{Agent, certs, mover, summary, text};

/// One generated source tree shared by the tests of this binary.
fn source() -> &'static std::path::Path {
    static SOURCE: OnceLock<tempfile::TempDir> = OnceLock::new();
    SOURCE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let stats = mover_testdata::generate(dir.path(), &mover_testdata::TreeSpec::with_entries(20_000)).unwrap();
            assert!(stats.entries >= 20_000, "generator made only {} entries", stats.entries);
            dir
        })
        .path()
}

fn check(output: &std::process::Output, target: &std::path::Path) {
    assert_eq!(output.status.code(), Some(0), "{}", text(output));
    let summary = summary(output);
    assert_eq!(summary["errors"].as_array().unwrap().len(), 0, "{summary}");
    assert!(summary["files_total"].as_u64().unwrap() > 10_000, "{summary}");
    // Every name counts in files_total; hard links beyond the first name carry no content.
    let (total, sent) = (summary["files_total"].as_u64().unwrap(), summary["files_transferred"].as_u64().unwrap());
    assert!(sent <= total && sent * 10 >= total * 9, "{summary}");
    assert!(summary["bytes_on_wire"].as_u64().unwrap() > 0, "{summary}");
    mover_testdata::assert_identical(source(), target);
}

#[test]
fn local_to_local_through_the_in_process_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("copy");
    let output = mover(&["copy", source().to_str().unwrap(), target.to_str().unwrap(), "--output", "json"]);
    check(&output, &target);
    // A second run finds everything up to date: no content moves.
    let output = mover(&["copy", source().to_str().unwrap(), target.to_str().unwrap(), "--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let again = summary(&output);
    assert_eq!(again["files_transferred"], 0, "{again}");
    assert_eq!(again["bytes_transferred"], 0, "{again}");
    mover_testdata::assert_identical(source(), &target);
}

#[test]
fn local_to_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("volume");
    fs::create_dir(&target).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let agent = Agent::start(&certs, &[format!("data={}", target.display())], tmp.path());
    let output = mover(&[
        "copy",
        source().to_str().unwrap(),
        &agent.url("data"),
        "--certs",
        certs.to_str().unwrap(),
        "--output",
        "json",
    ]);
    check(&output, &target);
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn agent_to_agent_push_with_progress_back_to_the_coordinator() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("volume");
    fs::create_dir(&target).unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let source_agent = Agent::start(&certs, &[format!("data={}:ro", source().display())], tmp.path());
    let target_agent = Agent::start(&certs, &[format!("data={}", target.display())], tmp.path());
    let output = mover(&[
        "copy",
        &source_agent.url("data"),
        &target_agent.url("data"),
        "--certs",
        certs.to_str().unwrap(),
        "--output",
        "json",
    ]);
    check(&output, &target);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.lines().any(|line| line.contains("\"type\":\"totals\"")),
        "no progress reached the coordinator: {stdout}"
    );
    assert!(target_agent.log_text().contains("join-session"), "the target was not fed by the source agent");
}

/// `mover copy agent://… ./DIR`: the source agent pushes into an in-process agent of the
/// migration that serves the local directory (made with `--mkpath`); a rerun moves nothing.
#[test]
fn agent_to_local_directory_through_an_in_process_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("restore/copy");
    let certs = certs(&tmp.path().join("certs"));
    let source_agent = Agent::start(&certs, &[format!("data={}:ro", source().display())], tmp.path());
    let copy = || {
        mover(&[
            "copy",
            &source_agent.url("data"),
            target.to_str().unwrap(),
            "--certs",
            certs.to_str().unwrap(),
            "--mkpath",
            "--output",
            "json",
        ])
    };
    check(&copy(), &target);
    let output = copy();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let again = summary(&output);
    assert_eq!(again["files_transferred"], 0, "{again}");
    mover_testdata::assert_identical(source(), &target);
    assert_eq!(source_agent.terminate().code(), Some(0));
}
