//! `mover copy k8s://… k8s://…` between two simulated clusters whose pods are real processes
//! (`mover_testdata::cluster`): real transfer agents in pods, real mutual TLS between them, real
//! bytes in the claims' volumes. Root only (pods get network and mount namespaces); skipped
//! otherwise, with the reason printed.

mod common;

use common::k8s::{assert_same, leftovers, mover, runtime};
use common::{bin, is_root, summary, text};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use mover_testdata::cluster::ClusterPair;
use mover_testdata::cluster::app::{self, deploy};

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
