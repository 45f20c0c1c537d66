//! `--output json` ends with a summary object however the command ends, and `plan run
//! --report FILE` is written however the plan ends (issue 19, item 5).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, mover, mover_on_plan, text, write_plan};

/// The last stdout line, which must be a JSON object of `kind`, with a non-empty `errors`.
fn last_object_with_errors(output: &Output, kind: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| panic!("nothing on stdout\n{}", text(output)));
    let value: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}\n{}", text(output)));
    assert_eq!(value["type"], kind, "{}", text(output));
    let errors = value["errors"].as_array().unwrap_or_else(|| panic!("no `errors`\n{}", text(output)));
    assert!(!errors.is_empty() && errors.iter().all(|e| !e.as_str().unwrap().is_empty()), "{}", text(output));
    value
}

#[test]
fn a_failed_copy_ends_with_a_summary_carrying_the_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let dst = tmp.path().join("dst");
    let output = mover(&["copy", missing.to_str().unwrap(), dst.to_str().unwrap(), "--output", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let summary = last_object_with_errors(&output, "summary");
    assert!(summary["errors"][0].as_str().unwrap().contains("missing"), "{summary:#}");
    assert_eq!(summary["files_total"], 0, "{summary:#}");

    // An agent that is not there: the session never starts.
    let certs = common::certs(&tmp.path().join("certs"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::create_dir(tmp.path().join("src")).unwrap();
    let output = mover(&[
        "copy",
        tmp.path().join("src").to_str().unwrap(),
        &format!("agent://127.0.0.1:{port}/data"),
        "--certs",
        certs.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let summary = last_object_with_errors(&output, "summary");
    assert!(summary["errors"][0].as_str().unwrap().contains(&port.to_string()), "{summary:#}");
}

#[test]
fn preflight_of_a_plan_that_does_not_load_ends_with_its_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = write_plan(tmp.path(), "name: typo\nvolumes:\n  - source: ./a\n    target: ./b\n    bwlimt: 1M\n");
    let output = mover_on_plan(&["preflight"], &plan, &["--output", "json"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let summary = last_object_with_errors(&output, "preflight");
    assert!(summary["errors"][0].as_str().unwrap().contains("bwlimt"), "{summary:#}");
}

#[test]
fn preflight_failures_are_named_in_its_summary() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("src")).unwrap();
    let plan = write_plan(
        tmp.path(),
        "name: nohook\nvolumes:\n  - {source: ./src, target: ./dst}\nhooks:\n  - name: gone\n    phase: PreBackup\n    command: [/nonexistent/hook]\n",
    );
    let output = mover_on_plan(&["preflight"], &plan, &["--output", "json"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let summary = last_object_with_errors(&output, "preflight");
    assert_eq!(summary["failed"], 1, "{summary:#}");
}

fn report_of(path: &Path, output: &Output) -> serde_json::Value {
    let text_of = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("no report ({e})\n{}", text(output)));
    serde_json::from_str(&text_of).unwrap()
}

/// The report file and the last JSON line agree, and say the plan failed with `needle`.
fn assert_failed_report(dir: &Path, plan: &Path, needle: &str) {
    let report = dir.join("report.json");
    let output =
        mover_on_plan(&["plan", "run"], plan, &["--report", report.to_str().unwrap(), "--output", "json"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let written = report_of(&report, &output);
    assert_eq!(written["result"], "failed", "{written:#}");
    assert_eq!(written["cancelled"], false, "{written:#}");
    assert!(written["error"].as_str().unwrap().contains(needle), "{written:#}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "report", "{}", text(&output));
    assert_eq!(last["error"], written["error"], "{}", text(&output));
    // Without `--output json` too.
    std::fs::remove_file(&report).unwrap();
    let output = mover_on_plan(&["plan", "run"], plan, &["--report", report.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(report_of(&report, &output)["result"], "failed");
}

#[test]
fn the_report_is_written_when_the_plan_does_not_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = write_plan(tmp.path(), "name: typo\nvolumes:\n  - source: ./a\n    target: ./b\n    bwlimt: 1M\n");
    assert_failed_report(tmp.path(), &plan, "bwlimt");
}

#[test]
fn the_report_is_written_when_preflight_fails() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("src")).unwrap();
    let plan = write_plan(
        tmp.path(),
        "name: nohook\nvolumes:\n  - {source: ./src, target: ./dst}\nhooks:\n  - name: gone\n    phase: PreBackup\n    command: [/nonexistent/hook]\n",
    );
    assert_failed_report(tmp.path(), &plan, "preflight");
}

#[test]
fn the_report_is_written_when_a_hook_fails() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("src")).unwrap();
    let plan = write_plan(
        tmp.path(),
        "name: badhook\nvolumes:\n  - {source: ./src, target: ./dst}\nhooks:\n  - name: nope\n    phase: PreBackup\n    command: [/bin/false]\n",
    );
    assert_failed_report(tmp.path(), &plan, "hook `nope`");
}

#[test]
fn ctrl_c_writes_a_cancelled_report_and_exits_130() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("src")).unwrap();
    let marker = tmp.path().join("started");
    write_plan(
        tmp.path(),
        &format!(
            "name: slow\nvolumes:\n  - {{source: ./src, target: ./dst}}\nhooks:\n  - name: sleepy\n    phase: PreBackup\n    command: [/bin/sh, -c, 'touch {}; sleep 60']\n",
            marker.display()
        ),
    );
    let report = tmp.path().join("report.json");
    let child = Command::new(bin("mover"))
        .current_dir(tmp.path())
        .args(["plan", "run", "plan.yaml", "--report", report.to_str().unwrap(), "--output", "json"])
        .env_remove("MOVER_OUTPUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the hook did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let interrupted = Instant::now();
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(interrupted.elapsed() < Duration::from_secs(10), "took {:?} to stop", interrupted.elapsed());
    assert_eq!(output.status.code(), Some(130), "{}", text(&output));
    let written = report_of(&report, &output);
    assert_eq!(written["result"], "cancelled", "{written:#}");
    assert_eq!(written["cancelled"], true, "{written:#}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!((last["type"].as_str(), last["cancelled"].as_bool()), (Some("report"), Some(true)), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cancelled"), "{}", text(&output));
    assert!(!tmp.path().join("dst").exists(), "the copy ran after the interruption");
}
