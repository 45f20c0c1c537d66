//! `mover plan run` end to end: real `mover-agent` processes on loopback, real hooks
//! (`/bin/sh`, and the seed's playbooks with a real `ansible-playbook`), the report checked
//! against the data.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Agent, certs, mover_on_plan, text, write_plan};
use mover_testdata::registry::{Auth, Registry, RegistryOptions};

/// The seed's hook playbooks, unchanged, as committed under `examples/hooks/`.
fn seed_playbook(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hooks").join(name).canonicalize().unwrap()
}

/// `ansible-playbook` must be there: `scripts/test.sh` installs it (`pip install ansible-core`).
fn require_ansible() {
    let found =
        std::process::Command::new("ansible-playbook").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "`ansible-playbook` is missing: `pip install ansible-core` (scripts/test.sh installs it)");
}

fn plan_run(plan: &Path, extra: &[&str]) -> Output {
    mover_on_plan(&["plan", "run"], plan, extra, &[])
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}\n{}", text(output))))
        .collect()
}

fn read_report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn two_volumes_and_an_image_run_green_and_the_report_matches_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    // The image: a 2-platform index in a plain source registry, copied to a target registry that
    // wants basic auth (credentials from an auth file named in the plan).
    let source_registry = Registry::start(RegistryOptions { tls: false, auth: Auth::None }, tmp.path()).unwrap();
    let target_registry = Registry::start(
        RegistryOptions { tls: false, auth: Auth::Basic { user: "shop".into(), password: "plan-pw".into() } },
        tmp.path(),
    )
    .unwrap();
    let sample = mover_testdata::oci::sample_multiarch(&tmp.path().join("layout"), 128 << 10).unwrap();
    let seeded = common::mover(&[
        "image",
        "copy",
        "--dest-plain-http",
        &format!("oci:{}:multi", sample.dir.display()),
        &format!("docker://{}/shop/app:v1", source_registry.addr),
    ]);
    assert!(seeded.status.success(), "{}", text(&seeded));
    {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode("shop:plan-pw");
        fs::write(
            tmp.path().join("auth.json"),
            format!(r#"{{"auths":{{"{}":{{"auth":"{encoded}"}}}}}}"#, target_registry.addr),
        )
        .unwrap();
    }
    // Volume `db`: files of known sizes, pushed agent to agent.
    let db = tmp.path().join("src-db");
    fs::create_dir_all(db.join("pg/base")).unwrap();
    let sizes = [0u64, 1, 4096, 1 << 20, 3 * (1 << 20) + 17];
    for (i, size) in sizes.iter().enumerate() {
        mover_testdata::write_random(&db.join(format!("pg/base/{i}.dat")), *size, i as u64).unwrap();
    }
    // Volume `uploads`: a generated tree with every kind of entry, sent from this machine.
    let uploads = tmp.path().join("src-uploads");
    fs::create_dir(&uploads).unwrap();
    let stats = mover_testdata::generate(&uploads, &mover_testdata::TreeSpec::small()).unwrap();
    let (db_target, uploads_target) = (tmp.path().join("dst-db"), tmp.path().join("dst-uploads"));
    fs::create_dir(&db_target).unwrap();
    fs::create_dir(&uploads_target).unwrap();
    let source_agent = Agent::start(&certs, &[format!("db={}:ro", db.display())], tmp.path());
    let target_agent = Agent::start(
        &certs,
        &[format!("db={}", db_target.display()), format!("uploads={}", uploads_target.display())],
        tmp.path(),
    );
    let plan = write_plan(
        tmp.path(),
        &format!(
            "name: two-volumes\nnamespaces: [shop]\ncerts: ./certs\nvolumes:\n  - name: db\n    source: {}\n    target: {}\n  - name: uploads\n    source: ./src-uploads\n    target: {}\nregistries:\n  source: {{plainHttp: true}}\n  target: {{plainHttp: true, authFile: ./auth.json}}\nimages:\n  - source: docker://{}/shop/app:v1\n    destination: docker://{}/shop/app:v1\n",
            source_agent.url("db"),
            target_agent.url("db"),
            target_agent.url("uploads"),
            source_registry.addr,
            target_registry.addr,
        ),
    );
    let report_path = tmp.path().join("report.json");
    let output = plan_run(&plan, &["--output", "json", "--report", report_path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    mover_testdata::assert_identical(&db, &db_target);
    mover_testdata::assert_identical(&uploads, &uploads_target);

    let report = read_report(&report_path);
    assert_eq!(report["result"], "succeeded", "{report:#}");
    assert_eq!(report["mode"], "final");
    let volume = |name: &str| report["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap().clone();
    let db_report = volume("db");
    assert_eq!(db_report["result"], "succeeded", "{db_report:#}");
    assert_eq!(db_report["files_total"], sizes.len() as u64);
    assert_eq!(db_report["files_transferred"], sizes.len() as u64);
    assert_eq!(db_report["bytes_total"], sizes.iter().sum::<u64>());
    assert_eq!(db_report["bytes_transferred"], sizes.iter().sum::<u64>());
    assert!(db_report["bytes_on_wire"].as_u64().unwrap() > 0);
    assert!(db_report["elapsed_s"].as_f64().unwrap() > 0.0);
    let uploads_report = volume("uploads");
    assert_eq!(uploads_report["result"], "succeeded", "{uploads_report:#}");
    assert_eq!(uploads_report["bytes_total"], stats.bytes, "{uploads_report:#}");
    // Holes of sparse files are not sent: what moved is the allocated content, all of it new.
    let sent = uploads_report["bytes_transferred"].as_u64().unwrap();
    assert!(sent > 1 << 20 && sent < stats.bytes, "{uploads_report:#}");
    assert!(uploads_report["files_total"].as_u64().unwrap() >= stats.files, "{uploads_report:#}");

    // The JSON stream: progress events of both volumes, each naming its volume; the report last.
    let lines = json_lines(&output);
    for name in ["db", "uploads"] {
        assert!(
            lines.iter().any(|l| l["volume"] == name && l["type"] == "progress"),
            "no progress event for `{name}`: {}",
            text(&output)
        );
        assert!(lines.iter().any(|l| l["volume"] == name && l["type"] == "volume_finished"));
    }
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "report");
    assert_eq!(last["volumes"], report["volumes"]);

    // The image: every digest on the target, and the report counts what moved.
    let image_report = &report["images"][0];
    assert_eq!(image_report["result"], "succeeded", "{report:#}");
    assert_eq!(image_report["images"], 1);
    let blobs: Vec<_> = sample
        .descriptors()
        .into_iter()
        .filter(|d| !d.media_type.contains("manifest") && !d.media_type.contains("index"))
        .collect();
    assert_eq!(image_report["blobs_copied"], blobs.len() as u64, "{image_report:#}");
    assert_eq!(image_report["bytes_copied"], blobs.iter().map(|d| d.size).sum::<u64>(), "{image_report:#}");
    let (code, _, bytes) = target_registry.get_manifest("shop/app", "v1").unwrap();
    assert_eq!(code, 200);
    assert_eq!(mover_testdata::oci::sha256_bytes(&bytes), sample.index.digest);
    assert!(lines.iter().any(|l| l["image"].is_string() && l["type"] == "blob"), "no image events: {}", text(&output));
    assert!(lines.iter().any(|l| l["type"] == "image_finished"));
    assert_eq!(last["images"], report["images"]);

    // Run again: it resumes as a no-op.
    let output = plan_run(&plan, &["--report", report_path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let again = read_report(&report_path);
    for volume in again["volumes"].as_array().unwrap() {
        assert_eq!(volume["bytes_transferred"], 0, "{volume:#}");
        assert_eq!(volume["files_transferred"], 0, "{volume:#}");
    }
    assert_eq!(again["images"][0]["bytes_copied"], 0, "{again:#}");
    assert_eq!(again["images"][0]["blobs_skipped"], blobs.len() as u64, "{again:#}");
    // Text mode prints the report table on stdout.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("plan `two-volumes` (final run): ok"), "{}", text(&output));
    assert!(stdout.lines().any(|l| l.starts_with("uploads") && l.contains(" ok ")), "{}", text(&output));
}

#[test]
fn the_seeds_fail_playbook_stops_the_plan_before_any_byte_moves() {
    require_ansible();
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let source = tmp.path().join("src");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("data"), b"must not move").unwrap();
    let target = tmp.path().join("dst");
    fs::create_dir(&target).unwrap();
    let agent = Agent::start(&certs, &[format!("data={}", target.display())], tmp.path());
    let marker = tmp.path().join("later-hook-ran");
    let plan = write_plan(
        tmp.path(),
        &format!(
            "name: failing\ncerts: ./certs\nvolumes:\n  - {{source: ./src, target: {}}}\nhooks:\n  - name: seed-fail\n    phase: PreBackup\n    playbook: {}\n  - name: later\n    phase: PreRestore\n    command: [touch, {}]\n",
            agent.url("data"),
            seed_playbook("fail.yml").display(),
            marker.display()
        ),
    );
    let report_path = tmp.path().join("report.json");
    let output = plan_run(&plan, &["--report", report_path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("hook `seed-fail` (PreBackup phase, source side) failed"), "{}", text(&output));
    assert!(stderr.contains("exited with status 2"), "{}", text(&output));
    assert!(stderr.contains("\"msg\": \"Cause a failure\""), "the hook's message is missing: {}", text(&output));
    assert!(is_empty_dir(&target), "bytes moved although the PreBackup hook failed");
    assert!(!marker.exists(), "a hook after the failed one ran");
    assert!(!agent.log_text().contains("\"receive\""), "the target agent saw a session: {}", agent.log_text());
    let report = read_report(&report_path);
    assert_eq!(report["result"], "failed");
    assert_eq!(report["hooks"][0]["result"], "failed");
    assert_eq!(report["hooks"][0]["exit_code"], 2);
    assert_eq!(report["hooks"][1]["result"], "not_run");
    assert_eq!(report["volumes"][0]["result"], "not_run");
}

#[test]
fn the_seeds_environment_playbook_prints_the_plans_namespaces_and_name() {
    require_ansible();
    let tmp = tempfile::tempdir().unwrap();
    let plan = write_plan(
        tmp.path(),
        &format!(
            "name: shop-migration\nnamespaces: [shop, shop-db, billing]\nhooks:\n  - name: env\n    phase: PreRestore\n    playbook: {}\n",
            seed_playbook("environment.yml").display()
        ),
    );
    let output = plan_run(&plan, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let messages: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("env |"))
        .map(str::trim)
        .filter(|l| l.starts_with("\"msg\""))
        .collect();
    assert_eq!(
        messages,
        ["\"msg\": \"shop\"", "\"msg\": \"shop-db\"", "\"msg\": \"billing\"", "\"msg\": \"shop-migration\""],
        "{}",
        text(&output)
    );
    // The same lines reach `--output json` as hook_output events.
    let output = plan_run(&plan, &["--output", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let lines = json_lines(&output);
    assert!(
        lines.iter().any(|l| l["type"] == "hook_output"
            && l["hook"] == "env"
            && l["line"].as_str().unwrap().contains("\"msg\": \"shop-migration\"")),
        "{}",
        text(&output)
    );
}

#[test]
fn a_hook_past_its_timeout_is_killed_and_fails_the_plan() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("src")).unwrap();
    fs::write(tmp.path().join("src/file"), b"x").unwrap();
    let plan = write_plan(
        tmp.path(),
        "name: slow\nvolumes:\n  - {source: ./src, target: ./dst}\nhooks:\n  - name: sleepy\n    phase: PreBackup\n    timeout: 1s\n    command: [sleep, \"60\"]\n",
    );
    let started = Instant::now();
    let output = plan_run(&plan, &[]);
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("hook `sleepy` (PreBackup phase, source side) failed"), "{}", text(&output));
    assert!(stderr.contains("did not finish within 1s"), "{}", text(&output));
    assert!(!tmp.path().join("dst").exists(), "the copy ran after a timed-out hook");
}

/// A hook that logs its phase, the two spellings of each plan variable, and whether the copy
/// has reached the target yet.
fn logging_hook(name: &str, phase: &str, log: &Path, extra: &str) -> String {
    format!(
        "  - name: {name}\n    phase: {phase}\n{extra}    command: [/bin/sh, -c, 'echo \"{phase} $migplan_name $migration_namespaces $MIGRATION_PLAN_NAME $MIGRATION_NAMESPACES $(cat dst/file 2>/dev/null || echo none)\" >> {}']\n",
        log.display()
    )
}

/// A plan in `dir` copying `./src` (one file, `payload`) to `./dst`, with `head` (its name and
/// namespaces) and command hooks `(name, phase, extra YAML)` that append to the log returned.
fn hooked_plan(dir: &Path, head: &str, hooks: &[(&str, &str, &str)]) -> (PathBuf, PathBuf) {
    fs::create_dir(dir.join("src")).unwrap();
    fs::write(dir.join("src/file"), b"payload").unwrap();
    let log = dir.join("order.log");
    let hooks: String = hooks.iter().map(|(name, phase, extra)| logging_hook(name, phase, &log, extra)).collect();
    let plan = write_plan(dir, &format!("{head}\nvolumes:\n  - {{source: ./src, target: ./dst}}\nhooks:\n{hooks}"));
    (plan, log)
}

/// MTC's Final itinerary (mig-controller `task.go`): `PreBackup` hooks, the transfers,
/// `PostBackup`, `PreRestore`, `PostRestore`. Each command hook gets both spellings of the plan's name and
/// namespaces.
#[test]
fn hooks_run_in_mtcs_phase_order_around_the_transfers_with_the_plan_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let (plan, log) = hooked_plan(
        tmp.path(),
        "name: ordered\nnamespaces: [a, b]",
        &[
            ("post-restore", "PostRestore", ""),
            ("post-backup", "PostBackup", ""),
            ("pre-restore", "PreRestore", ""),
            ("pre-backup", "PreBackup", ""),
        ],
    );
    let output = plan_run(&plan, &["--final"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        "PreBackup ordered a,b ordered a,b none\n\
         PostBackup ordered a,b ordered a,b payload\n\
         PreRestore ordered a,b ordered a,b payload\n\
         PostRestore ordered a,b ordered a,b payload\n"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("(final run): ok"), "{}", text(&output));
}

/// MTC runs no hooks in stage migrations: a stage run copies and runs only the hooks that ask
/// for it (`runInStageRuns: true`); the others stay `not_run` in the report. A final run runs
/// them all.
#[test]
fn a_stage_run_runs_only_the_hooks_marked_for_stage_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (plan, log) = hooked_plan(
        tmp.path(),
        "name: staged\nnamespaces: [a]",
        &[
            ("quiesce", "PreBackup", ""),
            ("warm", "PreBackup", "    runInStageRuns: true\n"),
            ("verify", "PostRestore", ""),
        ],
    );
    let report_path = tmp.path().join("report.json");
    let output = plan_run(&plan, &["--stage", "--report", report_path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read_to_string(&log).unwrap(), "PreBackup staged a staged a none\n", "{}", text(&output));
    assert_eq!(fs::read(tmp.path().join("dst/file")).unwrap(), b"payload");
    let report = read_report(&report_path);
    let results: Vec<(&str, &str)> = report["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hook| (hook["name"].as_str().unwrap(), hook["result"].as_str().unwrap()))
        .collect();
    assert_eq!(results, [("quiesce", "not_run"), ("warm", "succeeded"), ("verify", "not_run")]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("stage run: 2 hooks are not run"), "{}", text(&output));
    fs::remove_file(&log).unwrap();
    let output = plan_run(&plan, &["--final"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        // The target holds the stage run's copy already.
        "PreBackup staged a staged a payload\nPreBackup staged a staged a payload\nPostRestore staged a staged a payload\n",
        "{}",
        text(&output)
    );
}

/// A playbook reads the plan's variables as Ansible variables and from its environment, in both
/// spellings (`migplan_name`, `MIGRATION_PLAN_NAME`, ...).
#[test]
fn playbook_hooks_get_both_spellings_as_variables_and_in_the_environment() {
    let found =
        std::process::Command::new("ansible-playbook").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: `ansible-playbook` is not installed (scripts/test.sh installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // `debug` runs on the controller: no module, no remote Python.
    fs::write(
        tmp.path().join("vars.yml"),
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n  - debug:\n      msg: \"{{ migplan_name }} {{ migration_namespaces }} {{ MIGRATION_PLAN_NAME }} {{ MIGRATION_NAMESPACES }} {{ lookup('env', 'MIGRATION_PLAN_NAME') }} {{ lookup('env', 'MIGRATION_NAMESPACES') }}\"\n",
    )
    .unwrap();
    let plan = write_plan(
        tmp.path(),
        "name: spelled\nnamespaces: [shop, shop-db]\nhooks:\n  - name: vars\n    phase: PreBackup\n    playbook: vars.yml\n",
    );
    let output = plan_run(&plan, &["--final"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let messages: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("vars |"))
        .map(str::trim)
        .filter(|l| l.starts_with("\"msg\""))
        .collect();
    assert_eq!(
        messages,
        ["\"msg\": \"spelled shop,shop-db spelled shop,shop-db spelled shop,shop-db\""],
        "{}",
        text(&output)
    );
}

#[test]
fn preflight_checks_that_registries_accept_the_plans_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Registry::start(RegistryOptions { tls: false, auth: Auth::None }, tmp.path()).unwrap();
    let target = Registry::start(
        RegistryOptions { tls: false, auth: Auth::Basic { user: "ops".into(), password: "right-pw".into() } },
        tmp.path(),
    )
    .unwrap();
    let sample = mover_testdata::oci::sample_multiarch(&tmp.path().join("layout"), 4 << 10).unwrap();
    let seeded = common::mover(&[
        "image",
        "copy",
        "--dest-plain-http",
        &format!("oci:{}:single", sample.dir.display()),
        &format!("docker://{}/ns/app:v1", source.addr),
    ]);
    assert!(seeded.status.success(), "{}", text(&seeded));
    let auth = |password: &str| {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("ops:{password}"));
        fs::write(tmp.path().join("auth.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{encoded}"}}}}}}"#, target.addr))
            .unwrap();
    };
    let plan = write_plan(
        tmp.path(),
        &format!(
            "name: images\nregistries:\n  source: {{plainHttp: true}}\n  target: {{plainHttp: true, authFile: ./auth.json}}\nimages:\n  - source: docker://{}/ns/app:v1\n    destination: docker://{}/ns/app:v1\n  - sync: {{source: docker://{}/ns/missing, destination: docker://{}/ns/missing}}\n",
            source.addr, target.addr, source.addr, target.addr
        ),
    );
    auth("wrong-pw");
    let output = common::mover_on_plan(&["preflight"], &plan, &[], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = text(&output);
    assert!(all.contains(&format!("registry: can read docker://{}/ns/app:v1", source.addr)), "{all}");
    assert!(all.contains("refused access"), "{all}");
    assert!(all.contains("ns/missing") && all.contains("not found"), "{all}");
    assert!(!all.contains("wrong-pw"), "{all}");

    // Right credentials, and only the image that exists: preflight passes and the plan runs.
    auth("right-pw");
    let plan = write_plan(
        tmp.path(),
        &format!(
            "name: images\nregistries:\n  source: {{plainHttp: true}}\n  target: {{plainHttp: true, authFile: ./auth.json}}\nimages:\n  - source: docker://{}/ns/app:v1\n    destination: docker://{}/ns/app:v1\n",
            source.addr, target.addr
        ),
    );
    let output = common::mover_on_plan(&["preflight"], &plan, &[], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = plan_run(&plan, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let (status, _, bytes) = target.get_manifest("ns/app", "v1").unwrap();
    assert_eq!(status, 200);
    assert_eq!(mover_testdata::oci::sha256_bytes(&bytes), sample.single().manifest.digest);
}

#[test]
fn plan_file_errors_carry_line_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = write_plan(
        tmp.path(),
        "name: typo\nvolumes:\n  - source: ./a\n    target: ./b\n    options:\n      chekcsum: true\n",
    );
    let output = plan_run(&plan, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("plan.yaml` line 8, column 7: unknown field `chekcsum`"), "{}", text(&output));
}

#[test]
fn a_failed_volume_stops_the_plan_before_the_post_transfer_hooks() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    for dir in ["src", "ok-dst", "ro-dst"] {
        fs::create_dir(tmp.path().join(dir)).unwrap();
    }
    fs::write(tmp.path().join("src/file"), b"payload").unwrap();
    let agent = Agent::start(
        &certs,
        &[
            format!("ok={}", tmp.path().join("ok-dst").display()),
            format!("ro={}:ro", tmp.path().join("ro-dst").display()),
        ],
        tmp.path(),
    );
    let marker = tmp.path().join("post-hook-ran");
    let plan = write_plan(
        tmp.path(),
        &format!(
            "name: partial\ncerts: ./certs\nvolumes:\n  - {{name: good, source: ./src, target: {}}}\n  - {{name: bad, source: ./src, target: {}}}\nhooks:\n  - {{name: after, phase: PostBackup, command: [touch, {}]}}\n",
            agent.url("ok"),
            agent.url("ro"),
            marker.display()
        ),
    );
    let report_path = tmp.path().join("report.json");
    let output = plan_run(&plan, &["--skip-preflight", "--report", report_path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("volume `bad` failed; the post-transfer hooks did not run"), "{}", text(&output));
    assert!(stderr.contains("read-only"), "{}", text(&output));
    assert!(stderr.contains("hint: the agent was started with `--volume NAME=PATH:ro`"), "{}", text(&output));
    assert!(!marker.exists(), "a post-transfer hook ran after a failed copy");
    let report = read_report(&report_path);
    assert_eq!(report["volumes"][0]["result"], "succeeded", "{report:#}");
    assert_eq!(report["volumes"][1]["result"], "failed", "{report:#}");
    assert!(report["volumes"][1]["error"].as_str().unwrap().contains("read-only"), "{report:#}");
    assert_eq!(report["hooks"][0]["result"], "not_run");
    assert_eq!(fs::read(tmp.path().join("ok-dst/file")).unwrap(), b"payload");
}

/// The volumes whose progress events interleave in a JSON event stream.
fn interleaved(output: &Output) -> bool {
    let order: Vec<String> = json_lines(output)
        .iter()
        .filter(|l| l["type"] == "progress" || l["type"] == "totals")
        .map(|l| l["volume"].as_str().unwrap().to_owned())
        .collect();
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(order.len() > 4, "too few progress events to judge: {}", text(output));
    switches > 1
}

#[test]
fn the_volume_concurrency_limit_holds() {
    let tmp = tempfile::tempdir().unwrap();
    for volume in ["a", "b"] {
        let dir = tmp.path().join(volume);
        fs::create_dir(&dir).unwrap();
        for i in 0..24 {
            mover_testdata::write_random(&dir.join(format!("{i}")), 64 << 10, i).unwrap();
        }
    }
    let run = |limit: u32| {
        let _ = fs::remove_dir_all(tmp.path().join("out-a"));
        let _ = fs::remove_dir_all(tmp.path().join("out-b"));
        let plan = write_plan(
            tmp.path(),
            &format!(
                "name: limits\nconcurrency: {{volumes: {limit}}}\nvolumes:\n  - {{name: a, source: ./a, target: ./out-a, options: {{bwlimit: 1M, compress: off}}}}\n  - {{name: b, source: ./b, target: ./out-b, options: {{bwlimit: 1M, compress: off}}}}\n"
            ),
        );
        let output = plan_run(&plan, &["--output", "json"]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        output
    };
    assert!(!interleaved(&run(1)), "with `concurrency.volumes: 1` two volumes moved at once");
    assert!(interleaved(&run(2)), "with `concurrency.volumes: 2` the volumes did not move at once");
}

#[test]
fn on_a_terminal_each_volume_and_the_total_get_a_progress_line() {
    let tmp = tempfile::tempdir().unwrap();
    for volume in ["alpha", "beta"] {
        fs::create_dir(tmp.path().join(volume)).unwrap();
        for i in 0..16 {
            mover_testdata::write_random(&tmp.path().join(format!("{volume}/{i}")), 64 << 10, i).unwrap();
        }
    }
    let plan = write_plan(
        tmp.path(),
        "name: tty\nvolumes:\n  - {name: alpha, source: ./alpha, target: ./out-a, options: {bwlimit: 1M}}\n  - {name: beta, source: ./beta, target: ./out-b, options: {bwlimit: 1M}}\n",
    );
    // `script` runs the command on a pseudo-terminal, as a person at a terminal would.
    let command = format!("{} plan run {}", common::bin("mover").display(), plan.display());
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("COLUMNS", "160")
        .env_remove("MOVER_OUTPUT")
        .output()
        .expect("`script` (util-linux) runs");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let screen = String::from_utf8_lossy(&output.stdout).replace('\r', "\n");
    for needle in ["alpha ", "beta ", "total ", "ETA", "MiB", "plan `tty` (final run): ok"] {
        assert!(screen.contains(needle), "`{needle}` never showed on the terminal:\n{screen}");
    }
}
