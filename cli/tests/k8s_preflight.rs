//! `mover preflight` of plans with `clusters:` between two simulated clusters, as the install's
//! coordinator service account (whose every request its ClusterRole must allow): a clean plan
//! passes every check; a hook service account that is missing, a namespace whose Pod Security
//! level forbids the strategy, a ResourceQuota without room and a storage class the target lacks
//! with no fallback each fail with their remedy; `mover plan run` refuses such a plan before it
//! creates anything; under the node strategy each cluster's agent image is shown and compared.
//! Root only; skipped otherwise, with the reason printed.

mod common;

use std::path::Path;

use common::k8s::{coordinator_audit, mover, requests_of, runtime};
use common::{bin, is_root, text};
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use mover_kube::objects::{DEFAULT_IMAGE, Install, Strategy, install_objects, rbac};
use mover_testdata::cluster::app::{self, deploy};
use mover_testdata::cluster::{ClusterPair, write_kubeconfig_entries};
use serde_json::{Value, json};

/// The plan: every claim of `shop` and `shop-db`, and a hook Job with service account
/// `account` in `shop` of the source cluster.
fn plan(account: &str, extra: &str) -> String {
    format!(
        "apiVersion: mover/v1alpha1
kind: MigrationPlan
name: shop-migration
namespaces: [shop, shop-db]
clusters:
  source: {{context: source}}
  target: {{context: target}}
{extra}hooks:
  - name: prepare
    phase: PreBackup
    image: registry.sim/tools:1
    command: [only-in-the-image, --prepare]
    serviceAccount: {account}
"
    )
}

/// One row of the preflight table.
#[derive(Debug)]
struct Row {
    check: String,
    result: String,
    detail: String,
    remedy: String,
}

/// The rows of `mover preflight --output json`.
fn rows(output: &std::process::Output) -> Vec<Row> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let values = stdout.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok());
    let field = |value: &Value, key: &str| value[key].as_str().unwrap_or_default().to_owned();
    values
        .filter(|value| value["type"] == "check")
        .map(|value| Row {
            check: field(&value, "check"),
            result: field(&value, "result"),
            detail: field(&value, "detail"),
            remedy: field(&value, "remedy"),
        })
        .collect()
}

/// The row whose check starts with `start`.
fn row<'a>(rows: &'a [Row], start: &str) -> &'a Row {
    rows.iter().find(|row| row.check.starts_with(start)).unwrap_or_else(|| panic!("no check `{start}…` in {rows:#?}"))
}

fn failed(rows: &[Row]) -> Vec<&str> {
    rows.iter().filter(|row| row.result == "fail").map(|row| row.check.as_str()).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Creates `object` (with its `apiVersion`, `kind` and `metadata`).
async fn create(client: &kube::Client, object: Value) {
    app::apply(client, &[object]).await.unwrap();
}

/// Sets the Pod Security enforce label of namespace `name`.
async fn enforce(client: &kube::Client, name: &str, level: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = namespaces.get(name).await.unwrap();
    namespace.metadata.labels.get_or_insert_default().insert("pod-security.kubernetes.io/enforce".into(), level.into());
    namespaces.replace(name, &PostParams::default(), &namespace).await.unwrap();
}

#[test]
#[allow(clippy::too_many_lines, reason = "one cluster pair for every case, in order")]
fn preflight_refuses_cluster_plans_that_would_fail_and_says_how_to_fix_them() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let runtime = runtime();
    let pair = ClusterPair::start(&dir.join("clusters"), &bin("mover-agent"), (39, 40)).unwrap();
    runtime.block_on(deploy(&pair, 5)).unwrap();
    let source = runtime.block_on(app::client(&pair, "source")).unwrap();
    let target = runtime.block_on(app::client(&pair, "target")).unwrap();
    // The target namespace `shop` exists (mover would create it otherwise), and so does the
    // hook's service account.
    runtime.block_on(async {
        create(&target, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})).await;
        let account =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner", "namespace": "shop"}});
        create(&source, account).await;
    });
    let user = rbac::service_account_user("mover-system", rbac::COORDINATOR_SERVICE_ACCOUNT);
    let kubeconfig = dir.join("coordinator.kubeconfig");
    write_kubeconfig_entries(&kubeconfig, &[pair.source.kubeconfig_entry(&user), pair.target.kubeconfig_entry(&user)])
        .unwrap();
    let pair = ClusterPair { kubeconfig, ..pair };
    let preflight = |plan: &str, args: &[&str]| {
        let output = mover(&pair, &[&["preflight", plan][..], args].concat());
        (output.status.code(), rows(&output), text(&output))
    };

    // A clean plan passes every check, each shown. The hook's program is in its Job's image,
    // not on this machine: it is not looked up here.
    let clean = write(dir, "clean.yaml", &plan("runner", ""));
    let (code, checks, shown) = preflight(&clean, &[]);
    assert_eq!((code, failed(&checks)), (Some(0), vec![]), "{shown}");
    assert!(row(&checks, "target claim shop/data (context `target`)").detail.contains("class `fast`"), "{shown}");
    assert!(row(&checks, "target claim shop-db/db").detail.contains("used as it is"), "{shown}");
    let security = row(&checks, "Pod Security of namespace `shop` (context `target`)");
    assert!(
        security.detail.contains("cluster's default, `privileged`") && security.detail.contains("`baseline`"),
        "{shown}"
    );
    assert_eq!(row(&checks, "ResourceQuotas of namespace `shop` (context `target`)").detail, "none", "{shown}");
    assert_eq!(row(&checks, "hook `prepare`: service account `shop/runner`").result, "ok", "{shown}");
    assert_eq!(row(&checks, "hook `prepare`: Pod Security").result, "ok", "{shown}");
    assert!(!checks.iter().any(|row| row.check.contains("only-in-the-image")), "{shown}");

    // A hook service account that does not exist.
    let ghost = write(dir, "ghost.yaml", &plan("ghost", ""));
    let (code, checks, shown) = preflight(&ghost, &[]);
    assert_eq!((code, failed(&checks)), (Some(1), vec!["hook `prepare`: service account `shop/ghost`"]), "{shown}");
    let account = row(&checks, "hook `prepare`: service account");
    assert!(account.detail.contains("does not exist in context `source`"), "{shown}");
    assert!(account.remedy.contains("`kubectl -n shop create serviceaccount ghost`"), "{shown}");

    // A target namespace that enforces `restricted`: transfer pods (baseline) are refused there.
    runtime.block_on(enforce(&target, "shop", "restricted"));
    let (code, checks, shown) = preflight(&clean, &[]);
    assert_eq!(
        (code, failed(&checks)),
        (Some(1), vec!["Pod Security of namespace `shop` (context `target`)"]),
        "{shown}"
    );
    let security = row(&checks, "Pod Security of namespace `shop` (context `target`)");
    assert!(security.detail.contains("enforces `restricted`; transfer pods need `baseline`"), "{shown}");
    assert!(
        security
            .remedy
            .contains("kubectl label --overwrite namespace shop pod-security.kubernetes.io/enforce=baseline")
            && security.remedy.contains("--strategy node"),
        "{shown}"
    );
    // `mover plan run` refuses it before it creates anything.
    let creates = || requests_of(&pair, &user).iter().filter(|r| r.verb == "create").count();
    let before = creates();
    let run = mover(&pair, &["plan", "run", &clean]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("checks failed (table above); nothing ran"),
        "{}",
        text(&run)
    );
    assert_eq!(creates(), before, "plan run created objects: {}", text(&run));
    // The remedy works.
    runtime.block_on(enforce(&target, "shop", "baseline"));
    let (code, checks, shown) = preflight(&clean, &[]);
    assert_eq!((code, failed(&checks)), (Some(0), vec![]), "{shown}");

    // A quota without room: the two new claims of `shop` need 2Gi; 1Gi is left.
    runtime.block_on(async {
        let hard = json!({"requests.storage": "3Gi", "persistentvolumeclaims": "5"});
        let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "storage", "namespace": "shop"}, "spec": {"hard": hard}});
        create(&target, quota).await;
        // What the quota controller would report: 2Gi of 3Gi used.
        let quotas: Api<ResourceQuota> = Api::namespaced(target.clone(), "shop");
        let mut quota = quotas.get("storage").await.unwrap();
        quota.status = serde_json::from_value(json!({"hard": hard,
            "used": {"requests.storage": "2Gi", "persistentvolumeclaims": "1"}}))
        .unwrap();
        quotas.replace_status("storage", &PostParams::default(), &quota).await.unwrap();
    });
    let (code, checks, shown) = preflight(&clean, &[]);
    let quota = "ResourceQuota `shop/storage` (context `target`): requests.storage";
    assert_eq!((code, failed(&checks)), (Some(1), vec![quota]), "{shown}");
    assert!(
        row(&checks, quota).detail.contains("3Gi hard, 2Gi used; the 2 claim(s) mover creates need 2Gi"),
        "{shown}"
    );
    assert!(row(&checks, quota).remedy.contains("by at least 1Gi"), "{shown}");
    runtime.block_on(async {
        let quotas: Api<ResourceQuota> = Api::namespaced(target.clone(), "shop");
        quotas.delete("storage", &DeleteParams::default()).await.unwrap();
    });

    // Storage classes: without `fast` on the target, the class of the same provisioner is named
    // as the fallback; with no class of that provisioner and no default, nothing fits.
    let classes: Api<StorageClass> = Api::all(target.clone());
    runtime.block_on(classes.delete("fast", &DeleteParams::default())).unwrap();
    let (code, checks, shown) = preflight(&clean, &[]);
    assert_eq!((code, failed(&checks)), (Some(0), vec![]), "{shown}");
    let fallback = row(&checks, "target claim shop/data");
    assert!(
        fallback.detail.contains("created with class `standard`")
            && fallback.detail.contains("has no storage class `fast`"),
        "{shown}"
    );
    runtime.block_on(async {
        classes.delete("standard", &DeleteParams::default()).await.unwrap();
        let gold = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "gold"}, "provisioner": "example.com/gold"});
        create(&target, gold).await;
    });
    let (code, checks, shown) = preflight(&clean, &[]);
    assert_eq!(
        (code, failed(&checks)),
        (Some(1), vec!["target claim shop/data (context `target`)", "target claim shop/media (context `target`)"]),
        "{shown}"
    );
    let missing = row(&checks, "target claim shop/data");
    assert!(
        missing.detail.contains("no storage class `fast`") && missing.detail.contains("no default class"),
        "{shown}"
    );
    assert!(missing.remedy.contains("`clusters.storageClassMap: {SOURCE: TARGET}`"), "{shown}");
    let mapped = write(dir, "mapped.yaml", &plan("runner", "  storageClassMap: {fast: gold}\n"));
    let (code, checks, shown) = preflight(&mapped, &[]);
    assert_eq!((code, failed(&checks)), (Some(0), vec![]), "{shown}");
    assert!(row(&checks, "target claim shop/data").detail.contains("created with class `gold`"), "{shown}");

    // The node strategy: each cluster's node agents' image, compared with this mover's version.
    runtime.block_on(async {
        let old = DEFAULT_IMAGE.replace(env!("CARGO_PKG_VERSION"), "0.0.1");
        for (client, cluster, image) in [(&source, &pair.source, old.as_str()), (&target, &pair.target, DEFAULT_IMAGE)]
        {
            let kubelet_root = cluster.kubelet_root().to_str().unwrap().to_owned();
            let install =
                Install { strategy: Strategy::Node, kubelet_root: &kubelet_root, image, ..Install::default() };
            let objects: Vec<_> = install_objects(&install).iter().map(|o| serde_json::to_value(o).unwrap()).collect();
            app::apply(client, &objects).await.unwrap();
        }
    });
    let (code, checks, shown) = preflight(&mapped, &["--strategy", "node"]);
    assert_eq!((code, failed(&checks)), (Some(1), vec!["node agents' image (context `source`)"]), "{shown}");
    assert!(row(&checks, "node agents' image (context `source`)").detail.contains(":0.0.1 is not mover"), "{shown}");
    assert!(row(&checks, "node agents' image (context `target`)").detail.contains(DEFAULT_IMAGE), "{shown}");
    assert!(
        row(&checks, "Pod Security of node agents' namespace `mover-system` (context `target`)")
            .detail
            .contains("enforces `privileged`"),
        "{shown}"
    );

    // The RBAC audit: every request allowed by the role `mover k8s manifests` prints, and the
    // preflight rules used.
    let unused = coordinator_audit(&pair, &user);
    for rule in ["list core/resourcequotas", "get core/serviceaccounts", "get apps/daemonsets", "get core/namespaces"] {
        assert!(!unused.contains(&rule.to_owned()), "{rule} unused: {unused:?}");
    }
}
