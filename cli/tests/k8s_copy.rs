//! `mover copy k8s://… k8s://…` between two simulated clusters whose pods are real processes
//! (`mover_testdata::cluster`): real transfer agents in pods, real mutual TLS between them, real
//! bytes in the claims' volumes. Root only (pods get network and mount namespaces); skipped
//! otherwise, with the reason printed.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{bin, is_root, summary, text};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::Api;
use kube::api::ListParams;
use mover_testdata::cluster::ClusterPair;
use mover_testdata::cluster::app::{self, deploy};
use mover_testdata::{CompareOptions, compare};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn mover(pair: &ClusterPair, args: &[&str]) -> Output {
    Command::new(bin("mover"))
        .args(args)
        .args(["--kubeconfig", pair.kubeconfig.to_str().unwrap(), "--output", "json", "--agent-ready-timeout", "30"])
        .env_remove("MOVER_OUTPUT")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// Nothing labelled as mover's (pods, Services, Secrets) in either cluster.
async fn leftovers(pair: &ClusterPair) -> Vec<String> {
    let mut left = Vec::new();
    let mine = ListParams::default().labels("app.kubernetes.io/managed-by=mover");
    for context in ["source", "target"] {
        let client = app::client(pair, context).await.unwrap();
        let names = |items: Vec<Option<String>>, kind: &str| {
            items.into_iter().flatten().map(|n| format!("{context}: {kind} {n}")).collect::<Vec<_>>()
        };
        let pods = Api::<Pod>::all(client.clone()).list(&mine).await.unwrap();
        left.extend(names(pods.items.into_iter().map(|p| p.metadata.name).collect(), "pod"));
        let services = Api::<Service>::all(client.clone()).list(&mine).await.unwrap();
        left.extend(names(services.items.into_iter().map(|p| p.metadata.name).collect(), "service"));
        let secrets = Api::<Secret>::all(client.clone()).list(&mine).await.unwrap();
        left.extend(names(secrets.items.into_iter().map(|p| p.metadata.name).collect(), "secret"));
    }
    left
}

fn assert_same(source: &Path, target: &Path) {
    let differences = compare(source, target, &CompareOptions::default()).unwrap();
    assert!(differences.is_empty(), "{} differences, first: {:?}", differences.len(), differences.first());
}

/// The RWO claim in use by a running pod: its transfer pod runs on that pod's node, the target
/// claim is made in a namespace the target cluster did not have, the bytes arrive, nothing of
/// mover's is left in either cluster, and a second run sends nothing.
#[test]
fn a_claim_in_use_moves_to_a_new_namespace_of_the_target_cluster() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let pair = ClusterPair::start(&tmp.path().join("clusters"), &bin("mover-agent"), (21, 22)).unwrap();
    let deployed = runtime.block_on(deploy(&pair, 300)).unwrap();
    let output = mover(&pair, &["copy", "k8s://source/shop/data", "k8s://target/shop"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(summary(&output)["files_transferred"].as_u64().unwrap() >= 300, "{}", text(&output));
    let target = runtime.block_on(async {
        let client = app::client(&pair, "target").await.unwrap();
        let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "shop").get("data").await.unwrap();
        let spec = claim.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"].0, "1Gi");
        app::volume_dir(&client, pair.target.dir(), "shop", "data").await.unwrap()
    });
    assert_same(&deployed.claims[0].1, &target);
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());

    let again = mover(&pair, &["copy", "k8s://source/shop/data", "k8s://target/shop"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(summary(&again)["files_transferred"], 0, "{}", text(&again));
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());
}
