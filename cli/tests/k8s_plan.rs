//! `mover plan run` of a plan with `clusters:` between two simulated clusters: every Bound claim
//! of two namespaces moves (one in use by a running pod, one mounted by nothing, one whose target
//! claim the user made beforehand), as the install's coordinator service account, whose every
//! request its ClusterRole must allow. Root only; skipped otherwise, with the reason printed.

mod common;

use std::path::Path;

use common::k8s::{assert_app_moved, coordinator_audit, leftovers, mover, requests_of, runtime};
use common::{bin, is_root, text};
use mover_kube::objects::rbac;
use mover_testdata::cluster::app::deploy;
use mover_testdata::cluster::{ClusterPair, write_kubeconfig_entries};

const PLAN: &str = "apiVersion: mover/v1alpha1
kind: MigrationPlan
name: shop-migration
namespaces: [shop, shop-db]
clusters:
  source: {context: source}
  target: {context: target}
";

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_plan_moves_every_claim_of_its_namespaces_asking_only_what_its_role_allows() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let pair = ClusterPair::start(&tmp.path().join("clusters"), &bin("mover-agent"), (23, 24)).unwrap();
    let deployed = runtime.block_on(deploy(&pair, 200)).unwrap();
    // mover runs as the install's coordinator service account, not as an admin.
    let user = rbac::service_account_user("mover-system", rbac::COORDINATOR_SERVICE_ACCOUNT);
    let kubeconfig = tmp.path().join("coordinator.kubeconfig");
    write_kubeconfig_entries(&kubeconfig, &[pair.source.kubeconfig_entry(&user), pair.target.kubeconfig_entry(&user)])
        .unwrap();
    let as_coordinator = ClusterPair { kubeconfig, ..pair };
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    // Preflight: each claim found, and the agent image of this mover's version.
    let preflight = mover(&as_coordinator, &["preflight", plan.to_str().unwrap()]);
    assert!(preflight.status.success(), "{}", text(&preflight));
    let other = mover(
        &as_coordinator,
        &["preflight", plan.to_str().unwrap(), "--agent-image", "example.com/mover-agent:0.0.1"],
    );
    assert_eq!(other.status.code(), Some(1), "{}", text(&other));
    assert!(text(&other).contains("is not mover"), "{}", text(&other));
    let first = tmp.path().join("first.json");
    let output = mover(&as_coordinator, &["plan", "run", plan.to_str().unwrap(), "--report", first.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let names: Vec<_> = report(&first)["volumes"].as_array().unwrap().iter().map(|v| v["name"].clone()).collect();
    assert_eq!(names, ["shop/data", "shop/media", "shop-db/db"]);

    // The user's own target claim is used as it is (2Gi), never resized.
    runtime.block_on(assert_app_moved(&as_coordinator, &deployed.claims));
    assert_eq!(runtime.block_on(leftovers(&as_coordinator)), Vec::<String>::new());

    // A re-run sends nothing.
    let second = tmp.path().join("second.json");
    let again = mover(&as_coordinator, &["plan", "run", plan.to_str().unwrap(), "--report", second.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));
    for volume in report(&second)["volumes"].as_array().unwrap() {
        assert_eq!(volume["files_transferred"], 0, "{volume}");
    }

    // A transfer pod that cannot start: its reason shows while it waits (the events of the pod).
    let stuck = mover(
        &as_coordinator,
        &[
            "copy",
            "k8s://source/shop/media",
            "k8s://target/shop",
            "--agent-image",
            "registry.sim/nothing:1",
            "--agent-ready-timeout",
            "4",
        ],
    );
    assert_eq!(stuck.status.code(), Some(1), "{}", text(&stuck));
    let stderr = String::from_utf8_lossy(&stuck.stderr);
    assert!(stderr.contains("ErrImagePull") && stderr.contains("was not ready in time"), "{}", text(&stuck));
    assert_eq!(runtime.block_on(leftovers(&as_coordinator)), Vec::<String>::new());

    // The RBAC audit: every request allowed by the role `mover k8s manifests` prints; every
    // verb of it used, but for paths this test does not take (NodePort Services read the
    // node's address; a transfer pod that ends before it is ready has its log read; hooks run as
    // Jobs, which `k8s_hooks.rs` audits; the cleanup lists Jobs; the final run's record
    // ConfigMap is created, read and patched here, and deleted only by a rollback; preflight
    // reads hook service accounts and the node agents' DaemonSet, which `k8s_preflight.rs`
    // audits; quiesce patches only the application's Deployment and CronJob, and no rollback
    // runs: `k8s_quiesce.rs` and `k8s_rollback.rs` audit those).
    let requests = requests_of(&as_coordinator, &user);
    assert!(requests.len() > 20, "{} requests", requests.len());
    let unused = coordinator_audit(&as_coordinator, &user);
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
            "delete core/configmaps",
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
