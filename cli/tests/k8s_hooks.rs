//! Hooks as Kubernetes Jobs: `mover plan run --final` of plans with `clusters:` between two
//! simulated clusters, as the install's coordinator service account (whose every request its
//! ClusterRole must allow). A playbook hook runs as a Job (with `ansible-playbook`, the tools image
//! having no `ansible-runner`) and its output shows; a failing Job stops the plan with its last
//! 20 lines; a deadline says so; Ctrl-C deletes the Job; a rerun follows the Job a killed run
//! left. Root only; skipped otherwise, with the reason printed.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::k8s::{coordinator_audit, hook_leftovers, leftovers, requests_of, runtime};
use common::{bin, is_root, text};
use mover_kube::objects::Strategy;
use mover_kube::objects::rbac;
use mover_kube::objects::{Install, install_objects};
use mover_testdata::cluster::app::{self, deploy};
use mover_testdata::cluster::{ClusterPair, TOOLS_REPOSITORY, write_kubeconfig_entries};

/// A playbook that prints the plan's variables (extra vars and both spellings of the
/// environment) and writes nothing.
const PLAYBOOK: &str = r#"- hosts: localhost
  gather_facts: false
  tasks:
    - debug:
        msg: "plan {{ migplan_name }} in {{ migration_namespaces }}; env {{ lookup('env', 'MIGRATION_PLAN_NAME') }} {{ lookup('env', 'migration_namespaces') }}"
"#;

fn plan(name: &str, hooks: &str) -> String {
    format!(
        "apiVersion: mover/v1alpha1
kind: MigrationPlan
name: {name}
namespaces: [shop, shop-db]
clusters:
  source: {{context: source}}
  target: {{context: target}}
hooks:
{hooks}"
    )
}

fn command_hook(name: &str, script: &str, extra: &str) -> String {
    format!(
        "  - name: {name}
    phase: PreBackup
    image: {TOOLS_REPOSITORY}:1
    command: [sh, -c, '{script}']
{extra}"
    )
}

fn write(dir: &Path, file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn run(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("mover"))
        .args(args)
        .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
        .env("MOVER_AGENT_READY_TIMEOUT", "30")
        .env_remove("MOVER_OUTPUT")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// `mover plan run --final PLAN --output json`, started; returns once a hook printed `line`.
fn start_until(kubeconfig: &Path, plan: &str, line: &str) -> Child {
    let mut child = Command::new(bin("mover"))
        .args(["plan", "run", "--final", plan, "--output", "json", "--kubeconfig", kubeconfig.to_str().unwrap()])
        .env_remove("MOVER_OUTPUT")
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let wanted = format!("\"line\":\"{line}\"");
    assert!(lines.any(|l| l.unwrap().contains(&wanted)), "the hook never printed {line}");
    // Keep reading in the background, so that mover never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn jobs_created(pair: &ClusterPair, user: &str) -> usize {
    requests_of(pair, user).iter().filter(|r| r.verb == "create" && r.resource == "jobs").count()
}

/// The lines of the tail an error quotes (`    | line`) after `marker`.
fn quoted_tail<'a>(stderr: &'a str, marker: &str) -> Vec<&'a str> {
    let start = stderr.find(marker).unwrap_or_else(|| panic!("no `{marker}` in:\n{stderr}"));
    stderr[start..].lines().skip(1).map_while(|line| line.trim_start().strip_prefix("| ")).collect()
}

#[test]
#[allow(clippy::too_many_lines, reason = "one cluster pair for every case, in order")]
fn hooks_run_as_jobs_in_the_plans_clusters() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    if Command::new("sh").args(["-c", "command -v ansible-playbook"]).output().is_ok_and(|o| !o.status.success()) {
        eprintln!("skipped: ansible-playbook is not installed (scripts/test.sh installs ansible-core)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let runtime = runtime();
    let pair = ClusterPair::start(&dir.join("clusters"), &bin("mover-agent"), (33, 34)).unwrap();
    runtime.block_on(deploy(&pair, 20)).unwrap();
    let user = rbac::service_account_user("mover-system", rbac::COORDINATOR_SERVICE_ACCOUNT);
    let coordinator = dir.join("coordinator.kubeconfig");
    write_kubeconfig_entries(&coordinator, &[pair.source.kubeconfig_entry(&user), pair.target.kubeconfig_entry(&user)])
        .unwrap();
    let nothing_left = || {
        let mut left = runtime.block_on(leftovers(&pair));
        left.extend(runtime.block_on(hook_leftovers(&pair)));
        left
    };

    // A playbook hook: a Job in the source cluster's `shop`, its output in mover's.
    write(dir, "show.yml", PLAYBOOK);
    let shown = write(
        dir,
        "show.yaml",
        &plan(
            "hooks-migration",
            &format!(
                "  - name: show-plan\n    phase: PreBackup\n    playbook: show.yml\n    image: {TOOLS_REPOSITORY}:1\n"
            ),
        ),
    );
    let report = dir.join("report.json");
    let output = run(&coordinator, &["plan", "run", "--final", &shown, "--report", report.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("show-plan | ")
            && text(&output).contains("plan hooks-migration in shop,shop-db; env hooks-migration shop,shop-db"),
        "{}",
        text(&output)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let hook = &report["hooks"][0];
    assert_eq!(
        (hook["name"].as_str(), hook["result"].as_str(), hook["exit_code"].as_i64()),
        (Some("show-plan"), Some("succeeded"), Some(0)),
        "{report}"
    );
    // The Job, its pod and its ConfigMap are gone, and so is everything else of the run.
    assert_eq!(nothing_left(), Vec::<String>::new());

    // The seed's playbooks run unchanged as Jobs: environment.yml in the target cluster
    // (PostRestore) prints the plan's namespaces and name; fail.yml stops the plan at its phase
    // with its log lines.
    let seed = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hooks").join(name);
        write(dir, name, &std::fs::read_to_string(path).unwrap());
    };
    seed("environment.yml");
    seed("fail.yml");
    let seed_hook = |name: &str, phase: &str, playbook: &str| {
        format!("  - name: {name}\n    phase: {phase}\n    playbook: {playbook}\n    image: {TOOLS_REPOSITORY}:1\n")
    };
    let seeded =
        write(dir, "seed.yaml", &plan("hooks-migration", &seed_hook("environment", "PostRestore", "environment.yml")));
    let output = run(&coordinator, &["plan", "run", "--final", &seeded]);
    assert!(output.status.success(), "{}", text(&output));
    for shown in
        ["hook `environment` (PostRestore, target side) started", r#""msg": "shop-db""#, r#""msg": "hooks-migration""#]
    {
        assert!(text(&output).contains(shown), "no `{shown}` in {}", text(&output));
    }
    let failing =
        write(dir, "seed-fail.yaml", &plan("hooks-migration", &seed_hook("seed-fail", "PreBackup", "fail.yml")));
    let output = run(&coordinator, &["plan", "run", "--final", &failing]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("hook `seed-fail` (PreBackup phase, source side) failed"), "{}", text(&output));
    assert!(
        quoted_tail(&stderr, "lines of output:").iter().any(|line| line.contains("Cause a failure")),
        "{}",
        text(&output)
    );
    let cleanup = run(&coordinator, &["k8s", "cleanup", "--plan", &failing]);
    assert!(cleanup.status.success(), "{}", text(&cleanup));
    assert_eq!(nothing_left(), Vec::<String>::new());

    // A final run that fails at PostBackup is resumed by the next run of the plan: PreBackup's
    // hook does not run again, the copies do, the fixed hook runs, and the report says so.
    let resumed = |gate: &str| {
        let hooks = format!(
            "{}{}",
            command_hook("first", "echo first-ran", ""),
            command_hook("gate", gate, "").replace("phase: PreBackup", "phase: PostBackup")
        );
        write(dir, "resume.yaml", &plan("resume-migration", &hooks))
    };
    // The record is kept in the install's namespace of the source cluster.
    runtime.block_on(async {
        let client = app::client(&pair, "source").await.unwrap();
        let objects = install_objects(&Install { strategy: Strategy::Pod, ..Install::default() });
        let objects: Vec<_> = objects.iter().map(|object| serde_json::to_value(object).unwrap()).collect();
        app::apply(&client, &objects).await.unwrap();
    });
    let failing = resumed("echo gate-closed; exit 1");
    let output = run(&coordinator, &["plan", "run", "--final", &failing]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("first | first-ran"), "{}", text(&output));
    assert!(text(&output).contains("hook `gate` (PostBackup phase, source side) failed"), "{}", text(&output));
    // The failed Job is kept for `kubectl logs`; the rerun must not follow it.
    let cleanup = run(&coordinator, &["k8s", "cleanup", "--plan", &failing]);
    assert!(cleanup.status.success(), "{}", text(&cleanup));
    let created = jobs_created(&pair, &user);
    let fixed = resumed("echo gate-open");
    let resumed_report = dir.join("resumed.json");
    let output = run(&coordinator, &["plan", "run", "--final", &fixed, "--report", resumed_report.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("resuming the final run started")
            && text(&output).contains("PreBackup, Quiesce done then, not run again"),
        "{}",
        text(&output)
    );
    assert!(!text(&output).contains("first-ran"), "the PreBackup hook ran again: {}", text(&output));
    assert!(text(&output).contains("gate | gate-open"), "{}", text(&output));
    assert_eq!(jobs_created(&pair, &user), created + 1, "only the PostBackup hook's Job");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&resumed_report).unwrap()).unwrap();
    let steps: Vec<(&str, &str)> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| (step["step"].as_str().unwrap(), step["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("PreBackup", "done-before"),
            ("Quiesce", "done-before"),
            ("Transfers", "succeeded"),
            ("PostBackup", "succeeded")
        ]
    );
    // A finished final run is not resumed: the next one starts from the beginning.
    let output = run(&coordinator, &["plan", "run", "--final", &fixed]);
    assert!(output.status.success() && text(&output).contains("first | first-ran"), "{}", text(&output));
    assert_eq!(nothing_left(), Vec::<String>::new());

    // A failing command: six tries, then the hook, its phase, its Job and the last 20 lines.
    let script = "for i in $(seq 1 25); do echo line-$i; done; exit 3";
    let failing = write(dir, "fail.yaml", &plan("hooks-migration", &command_hook("fail", script, "")));
    let output = run(&coordinator, &["plan", "run", "--final", &failing]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("hook `fail` (PreBackup phase, source side) failed"), "{}", text(&output));
    assert!(
        stderr.contains("Job `shop/mover-hook-prebackup-fail-")
            && stderr.contains(
                "(context `source`) failed (BackoffLimitExceeded) after 6 tries, its last pod exited with status 3"
            ),
        "{}",
        text(&output)
    );
    let expected: Vec<String> = (6..=25).map(|i| format!("line-{i}")).collect();
    assert_eq!(quoted_tail(&stderr, "its last 20 lines of output:"), expected, "{}", text(&output));
    // Every try's lines were shown as they came.
    assert_eq!(text(&output).matches("fail | line-25").count(), 6, "{}", text(&output));

    // A deadline: the Job's activeDeadlineSeconds is the hook's timeout.
    let sleeper = write(
        dir,
        "deadline.yaml",
        &plan("hooks-migration", &command_hook("slow", "echo sleeping; sleep 60", "    timeout: 2s\n")),
    );
    let output = run(&coordinator, &["plan", "run", "--final", &sleeper]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("hook `slow` (PreBackup phase, source side) failed")
            && stderr.contains("ran past its deadline of 2s")
            && stderr.contains("DeadlineExceeded"),
        "{}",
        text(&output)
    );
    assert_eq!(quoted_tail(&stderr, "its last 1 lines of output:"), ["sleeping"], "{}", text(&output));

    // The failed Jobs are kept for `kubectl logs`; `mover k8s cleanup` removes them.
    assert!(!runtime.block_on(hook_leftovers(&pair)).is_empty(), "the failed hook Jobs are gone");
    let cleanup = run(&coordinator, &["k8s", "cleanup", "--plan", &failing]);
    assert!(cleanup.status.success(), "{}", text(&cleanup));
    assert_eq!(nothing_left(), Vec::<String>::new());

    // Ctrl-C during a sleeping hook: its Job and pod are deleted before mover exits.
    let interrupted =
        write(dir, "sleep.yaml", &plan("hooks-migration", &command_hook("nap", "echo napping; sleep 60", "")));
    let mut child = start_until(&coordinator, &interrupted, "napping");
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert_eq!(nothing_left(), Vec::<String>::new());

    // A rerun after a killed run follows the Job the killed run left, and starts no second one.
    let rerun = write(
        dir,
        "rerun.yaml",
        &plan("hooks-migration", &command_hook("once", "echo started; sleep 4; echo finished", "")),
    );
    let created = jobs_created(&pair, &user);
    let mut killed = start_until(&coordinator, &rerun, "started");
    killed.kill().unwrap();
    killed.wait().unwrap();
    let output = run(&coordinator, &["plan", "run", "--final", &rerun]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("of an earlier run of this plan is still running: following it"),
        "{}",
        text(&output)
    );
    assert!(text(&output).contains("once | finished"), "{}", text(&output));
    assert_eq!(jobs_created(&pair, &user), created + 1, "a second Job was started");
    assert_eq!(nothing_left(), Vec::<String>::new());

    // The RBAC audit: every request allowed by the role `mover k8s manifests` prints, and every
    // hook rule used (NodePort Services, which read a node's address, are not in this test; the
    // application's Deployment and CronJob are quiesced, other kinds are not: `k8s_quiesce.rs`
    // audits those rules, and a rollback's).
    let unused = coordinator_audit(&pair, &user);
    // (Preflight's reads of hook service accounts and of the node agents' DaemonSet are audited
    // in `k8s_preflight.rs`, quiesce and rollback in `k8s_quiesce.rs`.)
    assert_eq!(
        unused,
        [
            "get core/nodes",
            // `--expose route` (OpenShift), audited in `k8s_routes.rs`.
            "get route.openshift.io/routes",
            "list route.openshift.io/routes",
            "create route.openshift.io/routes",
            "delete route.openshift.io/routes",
            "get core/serviceaccounts",
            "get apps/daemonsets",
            "patch apps/statefulsets",
            "patch apps/replicasets",
            "patch apps/daemonsets",
            "patch batch/jobs",
            "list apps.openshift.io/deploymentconfigs",
            "patch apps.openshift.io/deploymentconfigs",
            "delete core/persistentvolumeclaims",
            "delete core/namespaces",
            "list core/configmaps",
            "list core/serviceaccounts",
            "list image.openshift.io/imagestreams",
            "create core/serviceaccounts/token"
        ]
    );
}
