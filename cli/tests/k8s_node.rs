//! The node strategy between two simulated clusters: the node agents' `DaemonSet` (from
//! `mover k8s manifests --strategy node`) runs on every node with the kubelet's pod directory,
//! and `mover plan run` grants each agent the claims mounted on its node, by pod UID and volume
//! name: the claim a running pod uses, an unused claim (through a read-only holder pod), and
//! target claims (through holder pods, their first consumers). Root only; skipped otherwise,
//! with the reason printed.

mod common;

use std::path::Path;

use common::k8s::{assert_app_moved, install_node_agents, leftovers, mover, runtime};
use common::{bin, is_root, text};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use mover_testdata::cluster::ClusterPair;
use mover_testdata::cluster::app::{self, deploy};

const PLAN: &str = "apiVersion: mover/v1alpha1
kind: MigrationPlan
name: shop-migration
namespaces: [shop, shop-db]
clusters:
  source: {context: source}
  target: {context: target}
  strategy: node
";

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The node agents' pods of context `context`.
async fn node_agent_pods(pair: &ClusterPair, context: &str) -> Vec<Pod> {
    let client = app::client(pair, context).await.unwrap();
    let pods = Api::<Pod>::namespaced(client, "mover-system");
    pods.list(&ListParams::default().labels("app.kubernetes.io/component=node-agent")).await.unwrap().items
}

#[test]
fn the_node_agents_move_every_claim_granted_by_pod_uid() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let pair = ClusterPair::start(&tmp.path().join("clusters"), &bin("mover-agent"), (29, 30)).unwrap();
    let deployed = runtime.block_on(deploy(&pair, 200)).unwrap();
    runtime.block_on(install_node_agents(&pair));
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).unwrap();

    let first = tmp.path().join("first.json");
    let output = mover(&pair, &["plan", "run", plan.to_str().unwrap(), "--report", first.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("granted to node agent"), "{}", text(&output));
    let names: Vec<_> = report(&first)["volumes"].as_array().unwrap().iter().map(|v| v["name"].clone()).collect();
    assert_eq!(names, ["shop/data", "shop/media", "shop-db/db"]);
    // The user's own target claim is used as it is (2Gi), never resized.
    runtime.block_on(assert_app_moved(&pair, &deployed.claims));
    // Holder pods and the identity Secret are gone; the node agents stay, unrestarted.
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());
    let agents = runtime.block_on(node_agent_pods(&pair, "source"));
    assert!(!agents.is_empty());
    let uids: Vec<_> = agents.iter().map(|p| p.metadata.uid.clone()).collect();

    // A second migration (other certificates) takes the same agents without a restart, and
    // sends nothing.
    let second = tmp.path().join("second.json");
    let again = mover(&pair, &["plan", "run", plan.to_str().unwrap(), "--report", second.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));
    for volume in report(&second)["volumes"].as_array().unwrap() {
        assert_eq!(volume["files_transferred"], 0, "{volume}");
    }
    let after: Vec<_> =
        runtime.block_on(node_agent_pods(&pair, "source")).iter().map(|p| p.metadata.uid.clone()).collect();
    assert_eq!(after, uids, "the node agents were restarted");
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());
}

#[test]
fn without_node_agents_the_node_strategy_says_how_to_install_them() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let pair = ClusterPair::start(&tmp.path().join("clusters"), &bin("mover-agent"), (31, 32)).unwrap();
    runtime.block_on(deploy(&pair, 20)).unwrap();
    let output = mover(
        &pair,
        &["copy", "k8s://source/shop/data", "k8s://target/shop", "--strategy", "node", "--agent-ready-timeout", "3"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the node strategy needs the node agents' DaemonSet") && stderr.contains("mover k8s manifests"),
        "{}",
        text(&output)
    );
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());
}
