//! Quiesce, unquiesce and rollback: `mover plan run --final` of a plan with `clusters:` stops
//! the source's workloads that mount the plan's claims before the final copy (and leaves them
//! stopped), and `mover plan rollback` starts them again and removes what mover created on the
//! target, as the install's coordinator service account (whose every request its ClusterRole
//! must allow). Root only; skipped otherwise, with the reason printed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::k8s::{assert_app_moved, coordinator_audit, leftovers, mover, runtime};
use common::{bin, is_root, text};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use mover_kube::objects::rbac;
use mover_testdata::cluster::app::{self, deploy};
use mover_testdata::cluster::{ClusterPair, TOOLS_REPOSITORY, write_kubeconfig_entries};
use serde_json::{Value, json};

const PLAN: &str = "apiVersion: mover/v1alpha1
kind: MigrationPlan
name: shop-cutover
namespaces: [shop, shop-db]
clusters:
  source: {context: source}
  target: {context: target}
  exclude: [shop/other]
";

/// The workloads of the plan (each mounts `shop/data` or `shop/media`), by kind and name: the
/// application's own (`app::WEB`, `app::THUMBNAILS`) and this test's.
const QUIESCED: [(&str, &str); 9] = [
    ("Deployment", "web"),
    ("CronJob", "thumbnails"),
    ("Deployment", "api"),
    ("StatefulSet", "cache"),
    ("ReplicaSet", "legacy"),
    ("DaemonSet", "agent"),
    ("CronJob", "report"),
    ("CronJob", "nightly"),
    ("Job", "batch"),
];

/// A pod template labelled `app: <name>` on `node`, mounting `claim`, running `script`.
fn template(name: &str, node: &str, claim: &str, script: &str, restart: &str) -> Value {
    json!({"metadata": {"labels": {"app": name}}, "spec": {
        "restartPolicy": restart, "terminationGracePeriodSeconds": 1,
        "nodeSelector": {"kubernetes.io/hostname": node},
        "containers": [{"name": "main", "image": format!("{TOOLS_REPOSITORY}:1"), "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "claim", "mountPath": "/tmp/claim"}]}],
        "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": claim}}]}})
}

/// More workloads of the application, all on `node` (where `shop/web`'s pod holds the claims).
fn workloads(node: &str) -> Vec<Value> {
    let meta = |name: &str| json!({"name": name, "namespace": "shop"});
    let selector = |name: &str| json!({"matchLabels": {"app": name}});
    // The writer keeps changing `shop/data` while it runs: a copy taken before it stops differs.
    let writer = "while true; do date +%s%N > /tmp/claim/live; sleep 0.1; done";
    let sleeper = "exec sleep 3600";
    let job = |claim: &str| json!({"template": template("cron", node, claim, "true", "Never")});
    vec![
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("other"),
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("api"), "spec": {"replicas": 2,
            "selector": selector("api"), "template": template("api", node, "data", writer, "Always")}}),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("cache"), "spec": {"replicas": 1,
            "serviceName": "cache", "selector": selector("cache"),
            "template": template("cache", node, "media", sleeper, "Always")}}),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta("legacy"), "spec": {"replicas": 1,
            "selector": selector("legacy"), "template": template("legacy", node, "media", sleeper, "Always")}}),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta("agent"), "spec": {
            "selector": selector("agent"), "template": template("agent", node, "media", sleeper, "Always")}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("report"), "spec": {
            "schedule": "0 3 * * *", "suspend": true, "jobTemplate": {"spec": job("data")}}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("nightly"), "spec": {
            "schedule": "0 4 * * *", "jobTemplate": {"spec": job("media")}}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta("batch"), "spec": {
            "template": template("batch", node, "media", sleeper, "Never")}}),
        // A pod no controller runs: quiesce cannot stop it, and says so.
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "solo", "namespace": "shop",
            "labels": {"app": "solo"}}, "spec": template("solo", node, "media", sleeper, "Always")["spec"]}),
        // Another plan's: it mounts a claim this plan does not migrate.
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("other"), "spec": {"replicas": 1,
            "selector": selector("other"), "template": template("other", node, "other", sleeper, "Always")}}),
    ]
}

fn resource(kind: &str) -> ApiResource {
    let (group, plural) = match kind {
        "Deployment" => ("apps", "deployments"),
        "StatefulSet" => ("apps", "statefulsets"),
        "ReplicaSet" => ("apps", "replicasets"),
        "DaemonSet" => ("apps", "daemonsets"),
        "CronJob" => ("batch", "cronjobs"),
        "Job" => ("batch", "jobs"),
        other => panic!("{other}"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
}

/// Workload `shop/<name>` of `kind`, as JSON.
async fn get(client: &kube::Client, kind: &str, name: &str) -> Value {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "shop", &resource(kind));
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

/// The field quiesce changes, as the API has it (`null` when unset).
fn field(kind: &str, object: &Value) -> Value {
    let spec = &object["spec"];
    match kind {
        "DaemonSet" => spec["template"]["spec"]["nodeSelector"].clone(),
        "CronJob" => spec["suspend"].clone(),
        "Job" => spec["parallelism"].clone(),
        _ => spec["replicas"].clone(),
    }
}

fn mover_annotations(object: &Value) -> Vec<String> {
    let annotations = object["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
    annotations.keys().filter(|k| k.starts_with("mover.io/")).cloned().collect()
}

/// The running (or starting) pods labelled `app=<app>` in `shop`.
async fn active_pods(client: &kube::Client, app: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let listed = pods.list(&ListParams::default().labels(&format!("app={app}"))).await.unwrap().items;
    listed
        .into_iter()
        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// Waits (30 s at most) until `probe` holds.
async fn until(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn running_count(client: &kube::Client, app: &str) -> usize {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let listed = pods.list(&ListParams::default().labels(&format!("app={app}"))).await.unwrap().items;
    listed.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count()
}

/// The source cluster's request log of `user`, in order.
fn source_requests(pair: &ClusterPair, user: &str) -> Vec<rbac::Request> {
    let log = std::fs::read_to_string(pair.source.dir().join("audit.jsonl")).unwrap();
    log.lines()
        .map(|line| serde_json::from_str::<rbac::Request>(line).unwrap())
        .filter(|request| request.user == user)
        .collect()
}

fn report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
#[allow(clippy::too_many_lines, reason = "one cluster pair for the cutover and its rollback, in order")]
fn a_final_run_quiesces_the_source_and_a_rollback_restores_it_as_recorded() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let pair = ClusterPair::start(&tmp.path().join("clusters"), &bin("mover-agent"), (35, 36)).unwrap();
    let deployed = runtime.block_on(deploy(&pair, 50)).unwrap();
    let admin = runtime.block_on(app::client(&pair, "source")).unwrap();
    let target = runtime.block_on(app::client(&pair, "target")).unwrap();
    let web = runtime.block_on(active_pods(&admin, app::WEB.1));
    let web = runtime.block_on(Api::<Pod>::namespaced(admin.clone(), "shop").get(&web[0])).unwrap();
    let node = web.spec.unwrap().node_name.unwrap();
    runtime.block_on(app::apply(&admin, &workloads(&node))).unwrap();
    runtime.block_on(async {
        let running = [("api", 2), ("cache", 1), ("legacy", 1), ("agent", 1), ("batch", 1), ("other", 1), ("solo", 1)];
        for (app, count) in running {
            until(&format!("{count} running pods of {app}"), async || running_count(&admin, app).await == count).await;
        }
    });
    let original: Vec<Value> =
        runtime.block_on(async { futures_util::future::join_all(QUIESCED.map(|(k, n)| get(&admin, k, n))).await });
    let selector_text = serde_json::to_string(&field("DaemonSet", &original[3])).unwrap();

    let user = rbac::service_account_user("mover-system", rbac::COORDINATOR_SERVICE_ACCOUNT);
    let kubeconfig = tmp.path().join("coordinator.kubeconfig");
    write_kubeconfig_entries(&kubeconfig, &[pair.source.kubeconfig_entry(&user), pair.target.kubeconfig_entry(&user)])
        .unwrap();
    let as_coordinator = ClusterPair { kubeconfig, ..pair };
    let pair = &as_coordinator;
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    let plan = plan.to_str().unwrap();

    // The final run: every workload of the plan's claims stopped, with its original recorded.
    let first = tmp.path().join("first.json");
    let output = mover(pair, &["plan", "run", "--final", plan, "--report", first.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let quiesced = report(&first)["quiesced"].clone();
    let lines: Vec<&str> = quiesced.as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(lines.len(), QUIESCED.len(), "{lines:#?}");
    for expected in [
        "Deployment shop/web (mounts data): replicas 1 -> 0",
        "CronJob shop/thumbnails (mounts media): suspend false -> true",
        "Deployment shop/api (mounts data): replicas 2 -> 0",
        "StatefulSet shop/cache (mounts media): replicas 1 -> 0",
        "ReplicaSet shop/legacy (mounts media): replicas 1 -> 0",
        "CronJob shop/report (mounts data): suspend true -> true",
        "CronJob shop/nightly (mounts media): suspend false -> true",
        "Job shop/batch (mounts media): parallelism 1 -> 0",
    ] {
        assert!(lines.contains(&expected), "no `{expected}` in {lines:#?}");
    }
    assert!(text(&output).contains("pod shop/solo (mounts media) has no controller"), "{}", text(&output));
    assert!(text(&output).contains("the source stays quiesced: 9 workload(s)"), "{}", text(&output));
    // The source stays quiesced, each original value recorded.
    runtime.block_on(async {
        let api = get(&admin, "Deployment", "api").await;
        assert_eq!(
            (field("Deployment", &api), &api["metadata"]["annotations"]["mover.io/quiesce-original-replicas"]),
            (json!(0), &json!("2"))
        );
        let agent = get(&admin, "DaemonSet", "agent").await;
        assert_eq!(field("DaemonSet", &agent)["mover.io/quiesced"], "true");
        assert_eq!(agent["metadata"]["annotations"]["mover.io/quiesce-original-node-selector"], selector_text.as_str());
        assert_eq!(field("CronJob", &get(&admin, "CronJob", "nightly").await), true);
        assert_eq!(field("Job", &get(&admin, "Job", "batch").await), 0);
        for app in ["web", "api", "cache", "legacy", "agent", "batch"] {
            assert_eq!(active_pods(&admin, app).await, Vec::<String>::new(), "{app}");
        }
        assert_eq!(running_count(&admin, "solo").await, 1, "a pod no controller runs is not stopped");
        let other = get(&admin, "Deployment", "other").await;
        assert_eq!((field("Deployment", &other), mover_annotations(&other)), (json!(1), Vec::new()));
        assert_eq!(running_count(&admin, "other").await, 1);
    });
    // Quiesced before the final copy: the last patch of a workload comes before the first
    // transfer pod (the run's record, a ConfigMap, is patched as each step ends).
    let requests = source_requests(pair, &user);
    let last_patch = requests.iter().rposition(|r| r.verb == "patch" && r.resource != "configmaps").expect("no patch");
    let first_pod = requests.iter().position(|r| r.verb == "create" && r.resource == "pods").expect("no pod");
    assert!(last_patch < first_pod, "a workload was patched after the copies started");
    assert!(!requests.iter().any(|r| r.verb == "patch" && r.name.as_deref() == Some("other")), "another plan's");
    // A Deployment's ReplicaSet is left to its Deployment.
    let patched_sets = requests.iter().filter(|r| r.verb == "patch" && r.resource == "replicasets");
    assert_eq!(patched_sets.filter_map(|r| r.name.as_deref()).collect::<Vec<_>>(), ["legacy"]);
    // The claims are identical after (the writer stopped before the copy), and nothing is left.
    runtime.block_on(assert_app_moved(pair, &deployed.claims));
    assert_eq!(runtime.block_on(leftovers(pair)), Vec::<String>::new());

    // A rerun does not quiesce twice: the first records stay.
    let second = tmp.path().join("second.json");
    let output = mover(pair, &["plan", "run", "--final", plan, "--report", second.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        report(&second)["quiesced"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l.as_str().unwrap().ends_with("(by an earlier run)")),
        "{}",
        report(&second)
    );
    let api = runtime.block_on(get(&admin, "Deployment", "api"));
    assert_eq!(api["metadata"]["annotations"]["mover.io/quiesce-original-replicas"], "2");

    // The user scales `api` to 3 while quiesced; the rollback keeps their 3.
    let deployments: Api<DynamicObject> = Api::namespaced_with(admin.clone(), "shop", &resource("Deployment"));
    let scale = Patch::Merge(json!({"spec": {"replicas": 3}}));
    runtime.block_on(deployments.patch("api", &PatchParams::default(), &scale)).unwrap();
    let output = mover(pair, &["plan", "rollback", plan]);
    assert!(output.status.success(), "{}", text(&output));
    let rolled: Value = serde_json::from_slice(output.stdout.trim_ascii()).unwrap();
    assert_eq!(rolled["restored"].as_array().unwrap().len(), QUIESCED.len(), "{rolled}");
    assert!(
        rolled["restored"]
            .as_array()
            .unwrap()
            .contains(&json!("Deployment shop/api: replicas stays 3 (changed since it was quiesced; recorded 2)")),
        "{rolled}"
    );
    runtime.block_on(async {
        for ((kind, name), before) in QUIESCED.iter().zip(&original) {
            let now = get(&admin, kind, name).await;
            let expected = if *name == "api" { json!(3) } else { field(kind, before) };
            assert_eq!(field(kind, &now), expected, "{kind} {name}");
            assert_eq!(mover_annotations(&now), Vec::<String>::new(), "{kind} {name}");
        }
        // Byte for byte: the selector's JSON text is the original's.
        let agent = get(&admin, "DaemonSet", "agent").await;
        assert_eq!(serde_json::to_string(&field("DaemonSet", &agent)).unwrap(), selector_text);
        assert_eq!(field("CronJob", &get(&admin, "CronJob", "report").await), true, "already suspended: stays");
        for (app, count) in [("web", 1), ("api", 3), ("cache", 1), ("legacy", 1), ("agent", 1), ("batch", 1)] {
            until(&format!("{count} running pods of {app}"), async || running_count(&admin, app).await == count).await;
        }
        // The target claims mover created are gone; the one the user made stays.
        let claims = |namespace: &str| Api::<PersistentVolumeClaim>::namespaced(target.clone(), namespace);
        for name in ["data", "media"] {
            until(&format!("target claim shop/{name} deleted"), async || {
                claims("shop").get_opt(name).await.unwrap().is_none_or(|c| c.metadata.deletion_timestamp.is_some())
            })
            .await;
        }
        assert!(claims("shop-db").get_opt("db").await.unwrap().is_some(), "the user's own claim was deleted");
    });
    assert!(
        rolled["removed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("deleted claim shop/data")),
        "{rolled}"
    );
    assert_eq!(runtime.block_on(leftovers(pair)), Vec::<String>::new());

    // A pod that something else runs (here an operator's, owned by its ConfigMap) does not stop:
    // past the timeout the final run fails naming it, before any copy.
    let operator =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "operator", "namespace": "shop"}});
    runtime.block_on(app::apply(&admin, &[operator])).unwrap();
    let uid = runtime
        .block_on(Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(admin.clone(), "shop").get("operator"))
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let mut stubborn = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stubborn", "namespace": "shop",
        "labels": {"app": "stubborn"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "operator", "uid": uid, "controller": true}]}});
    stubborn["spec"] = template("stubborn", &node, "data", "exec sleep 3600", "Always")["spec"].clone();
    runtime.block_on(app::apply(&admin, &[stubborn])).unwrap();
    runtime.block_on(until("stubborn running", async || running_count(&admin, "stubborn").await == 1));
    let output = mover(pair, &["plan", "run", "--final", plan, "--quiesce-timeout", "2"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("quiescing the source's workloads failed; no volume was copied")
            && stderr.contains("quiesce: 1 pod(s) still run in context `source` 2s after their workloads were stopped: shop/stubborn (mounts data)"),
        "{}",
        text(&output)
    );
    let rollback = mover(pair, &["plan", "rollback", plan]);
    assert!(rollback.status.success(), "{}", text(&rollback));

    // The RBAC audit: every request allowed by the role `mover k8s manifests` prints; every
    // rule used but for paths this test does not take (hooks, which `k8s_hooks.rs` audits;
    // NodePort Services; DeploymentConfigs, which need OpenShift; a transfer pod's log).
    let unused = coordinator_audit(pair, &user);
    assert_eq!(
        unused,
        [
            "get core/nodes",
            // `--expose route` (OpenShift), audited in `k8s_routes.rs`.
            "get route.openshift.io/routes",
            "list route.openshift.io/routes",
            "create route.openshift.io/routes",
            "delete route.openshift.io/routes",
            "get core/pods/log",
            "get batch/jobs",
            "create batch/jobs",
            "delete batch/jobs",
            "get core/serviceaccounts",
            "get apps/daemonsets",
            "list apps.openshift.io/deploymentconfigs",
            "patch apps.openshift.io/deploymentconfigs",
            "list image.openshift.io/imagestreams",
            "create core/serviceaccounts/token"
        ]
    );
}
