use serde_json::json;

use super::*;
use crate::mock;

fn claim(phase: &str, modes: &[&str], volume_mode: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "app", "uid": "c1",
                     "annotations": {"volume.kubernetes.io/selected-node": "stale-node"}},
        "spec": {"accessModes": modes, "volumeName": "pv-1", "volumeMode": volume_mode,
                 "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": phase}
    })
}

fn volume(phase: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-1"},
           "spec": {"capacity": {"storage": "2Gi"}}, "status": {"phase": phase}})
}

fn pods(items: &[(&str, &str, &str)]) -> serde_json::Value {
    let items: Vec<_> = items
        .iter()
        .map(|(name, claim, node)| {
            json!({"metadata": {"name": name, "namespace": "app", "uid": format!("uid-{name}")},
                   "spec": {"nodeName": node, "containers": [{"name": "c"}],
                            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]},
                   "status": {"phase": "Running"}})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

/// The whole lookup, request by request: the claim, its volume, then the running pods of its
/// namespace (a field selector, not every pod); the node is the consumer's, not the stale
/// `selected-node` annotation's.
#[tokio::test]
async fn finds_the_node_of_the_running_consumer() {
    let (cluster, mut server) = mock::cluster("source");
    let lookup = tokio::spawn(async move { find_source(&cluster, "app", "data", Strategy::Pod).await });
    server
        .expect(
            "GET",
            "/api/v1/namespaces/app/persistentvolumeclaims/data",
            200,
            claim("Bound", &["ReadWriteOnce"], "Filesystem"),
        )
        .await;
    server.expect("GET", "/api/v1/persistentvolumes/pv-1", 200, volume("Bound")).await;
    server
        .expect(
            "GET",
            "/api/v1/namespaces/app/pods?&fieldSelector=status.phase%3DRunning",
            200,
            pods(&[("web", "data", "node-b"), ("other", "logs", "node-a")]),
        )
        .await;
    let source = lookup.await.unwrap().unwrap();
    assert_eq!(source.pin(), Some("node-b"));
    assert_eq!(source.consumers.len(), 1);
    assert_eq!(source.consumers[0].uid, "uid-web");
}

#[tokio::test]
async fn refuses_what_the_seed_lists_as_prerequisites() {
    // Not bound: no further request.
    let (cluster, mut server) = mock::cluster("source");
    let lookup = tokio::spawn(async move { find_source(&cluster, "app", "data", Strategy::Pod).await });
    server
        .expect(
            "GET",
            "/api/v1/namespaces/app/persistentvolumeclaims/data",
            200,
            claim("Pending", &["ReadWriteOnce"], "Filesystem"),
        )
        .await;
    let error = lookup.await.unwrap().unwrap_err().to_string();
    assert!(
        error.contains("`app/data` is Pending, not Bound") && error.contains("kubectl -n app describe pvc data"),
        "{error}"
    );

    // Missing claim.
    let (cluster, mut server) = mock::cluster("source");
    let lookup = tokio::spawn(async move { find_source(&cluster, "app", "data", Strategy::Pod).await });
    server
        .not_found("GET", "/api/v1/namespaces/app/persistentvolumeclaims/data", "persistentvolumeclaims \"data\"")
        .await;
    let error = lookup.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("does not exist in context `source`"), "{error}");

    for (pv_phase, modes, mode, strategy, running, expected) in [
        ("Released", &["ReadWriteOnce"][..], "Filesystem", Strategy::Pod, &[][..], "which is Released"),
        ("Failed", &["ReadWriteOnce"], "Filesystem", Strategy::Pod, &[], "which is Failed"),
        ("Bound", &["ReadWriteOnce"], "Block", Strategy::Pod, &[], "block volumes are not supported yet"),
        (
            "Bound",
            &["ReadWriteOncePod"],
            "Filesystem",
            Strategy::Pod,
            &[("db", "data", "node-a")],
            "Use the node strategy",
        ),
        ("Bound", &["ReadWriteOnce"], "Block", Strategy::Node, &[], "block volumes are not supported yet"),
    ] {
        let (cluster, mut server) = mock::cluster("source");
        let lookup = tokio::spawn(async move { find_source(&cluster, "app", "data", strategy).await });
        server
            .expect("GET", "/api/v1/namespaces/app/persistentvolumeclaims/data", 200, claim("Bound", modes, mode))
            .await;
        server.expect("GET", "/api/v1/persistentvolumes/pv-1", 200, volume(pv_phase)).await;
        server
            .expect("GET", "/api/v1/namespaces/app/pods?&fieldSelector=status.phase%3DRunning", 200, pods(running))
            .await;
        let error = lookup.await.unwrap().unwrap_err().to_string();
        assert!(error.contains(expected), "{pv_phase} {modes:?} {mode}: {error}");
    }
}

#[test]
fn shared_claims_are_not_pinned() {
    let source = SourceClaim {
        claim: serde_json::from_value(claim("Bound", &["ReadWriteMany"], "Filesystem")).unwrap(),
        volume: serde_json::from_value(volume("Bound")).unwrap(),
        consumers: vec![Consumer { pod: "a".into(), uid: "u".into(), node: "node-a".into(), volume: "v".into() }],
    };
    assert_eq!(source.pin(), None);
}
