use serde_json::json;

use super::*;
use crate::mock;

fn class(name: &str, provisioner: &str, default: bool) -> StorageClass {
    let mut value = json!({"metadata": {"name": name}, "provisioner": provisioner});
    if default {
        value["metadata"]["annotations"] = json!({DEFAULT_CLASS: "true"});
    }
    serde_json::from_value(value).unwrap()
}

fn source(class: &str, request: &str, capacity: &str) -> SourceClaim {
    SourceClaim {
        claim: serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "app", "labels": {"app": "web"},
                         "annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                         "volume.kubernetes.io/selected-node": "n1",
                                         "volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com",
                                         "team": "payments"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class, "volumeName": "pv-1",
                     "volumeMode": "Filesystem", "dataSource": {"kind": "VolumeSnapshot", "name": "s"},
                     "resources": {"requests": {"storage": request}}},
            "status": {"phase": "Bound"}
        }))
        .unwrap(),
        volume: serde_json::from_value(
            json!({"metadata": {"name": "pv-1"}, "spec": {"capacity": {"storage": capacity}}}),
        )
        .unwrap(),
        consumers: Vec::new(),
    }
}

#[test]
fn classes_are_mapped_in_order_of_intent() {
    let target =
        [class("standard", "csi.example", true), class("gp3", "ebs.csi.aws.com", false), class("fast", "x", false)];
    let rules = TargetRules::default();
    let same = choose_class(Some("fast"), Some("ebs.csi.aws.com"), &target, &rules).unwrap();
    assert_eq!(same, ClassChoice { name: Some("fast".into()), warning: None });
    let by_provisioner = choose_class(Some("gp2"), Some("ebs.csi.aws.com"), &target, &rules).unwrap();
    assert_eq!(by_provisioner.name.as_deref(), Some("gp3"));
    assert!(by_provisioner.warning.unwrap().contains("same provisioner"));
    let default = choose_class(Some("gp2"), Some("other"), &target, &rules).unwrap();
    assert_eq!(default.name.as_deref(), Some("standard"));
    assert!(default.warning.unwrap().contains("default class `standard`"));
    let mapped = TargetRules { storage_class_map: [("gp2".into(), "fast".into())].into(), ..TargetRules::default() };
    assert_eq!(
        choose_class(Some("gp2"), Some("ebs.csi.aws.com"), &target, &mapped).unwrap().name.as_deref(),
        Some("fast")
    );
}

#[test]
fn a_missing_class_is_an_error_that_lists_the_classes() {
    let target = [class("gp3", "ebs.csi.aws.com", false)];
    let error = choose_class(Some("ceph"), Some("rbd.csi.ceph.com"), &target, &TargetRules::default()).unwrap_err();
    let error = error.to_string();
    assert!(
        error.contains("no storage class `ceph`")
            && error.contains("(it has: gp3)")
            && error.contains("storageClassMap"),
        "{error}"
    );
    let mapped = TargetRules { storage_class_map: [("ceph".into(), "nope".into())].into(), ..TargetRules::default() };
    let error = choose_class(Some("ceph"), None, &target, &mapped).unwrap_err().to_string();
    assert!(error.contains("storage class `nope`, which the target cluster does not have (it has: gp3)"), "{error}");
}

#[test]
fn size_is_the_largest_of_request_capacity_and_use_with_headroom() {
    let gib = 1u64 << 30;
    assert_eq!(target_bytes(&source("x", "1Gi", "2Gi"), None), 2 * gib);
    assert_eq!(target_bytes(&source("x", "3Gi", "2Gi"), Some(gib)), 3 * gib);
    // 2.5 GiB used: + a tenth = 2.75 GiB.
    assert_eq!(target_bytes(&source("x", "1Gi", "1Gi"), Some(5 * gib / 2)), 11 * gib / 4);
    // Small volumes get at least 64 MiB of headroom.
    assert_eq!(target_bytes(&source("x", "1Mi", "1Mi"), Some(1 << 20)), 65 << 20);
}

#[test]
fn a_target_claim_drops_what_ties_it_to_the_source_cluster() {
    let rules = TargetRules {
        access_modes: Some(vec!["ReadWriteMany".into()]),
        labels: [("mover.io/migration".into(), "m1".into())].into(),
        ..TargetRules::default()
    };
    let claim = target_claim(&source("gp2", "1Gi", "1Gi"), "app-new", "data2", Some("gp3".into()), 2 << 30, &rules);
    let value = serde_json::to_value(&claim).unwrap();
    assert_eq!(
        value,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data2", "namespace": "app-new",
                         "labels": {"app": "web", "mover.io/migration": "m1"},
                         "annotations": {"team": "payments"}},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "gp3", "volumeMode": "Filesystem",
                     "resources": {"requests": {"storage": "2Gi"}}}
        })
    );
}

/// An existing claim is used as it is: one GET, no create, no update.
#[tokio::test]
async fn an_existing_claim_is_never_changed() {
    let (cluster, mut server) = mock::cluster("target");
    let found = tokio::spawn(async move {
        ensure(&cluster, &source("gp2", "1Gi", "1Gi"), ("app", "data"), Some(3 << 30), &TargetRules::default()).await
    });
    let existing = json!({"metadata": {"name": "data", "namespace": "app"},
                          "spec": {"resources": {"requests": {"storage": "1Gi"}}}});
    server.expect("GET", "/api/v1/namespaces/app/persistentvolumeclaims/data", 200, existing).await;
    let found = found.await.unwrap().unwrap();
    assert!(!found.created);
    assert!(found.warnings[0].contains("does not resize"), "{:?}", found.warnings);
}

/// A missing claim: GET (404), the classes, then one create with the mapped class.
#[tokio::test]
async fn a_missing_claim_is_created_with_the_mapped_class() {
    let (cluster, mut server) = mock::cluster("target");
    let created = tokio::spawn(async move {
        ensure(&cluster, &source("gp2", "1Gi", "1Gi"), ("app", "data"), None, &TargetRules::default()).await
    });
    server
        .not_found("GET", "/api/v1/namespaces/app/persistentvolumeclaims/data", "persistentvolumeclaims \"data\"")
        .await;
    let classes = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClassList", "metadata": {},
                         "items": [{"metadata": {"name": "gp3"}, "provisioner": "ebs.csi.aws.com"}]});
    server.expect("GET", "/apis/storage.k8s.io/v1/storageclasses", 200, classes).await;
    let echo = json!({"metadata": {"name": "data", "namespace": "app"}});
    let sent = server.expect("POST", "/api/v1/namespaces/app/persistentvolumeclaims", 201, echo).await;
    assert_eq!(sent["spec"]["storageClassName"], "gp3");
    assert_eq!(sent["spec"]["resources"]["requests"]["storage"], "1Gi");
    let created = created.await.unwrap().unwrap();
    assert!(created.created);
    assert!(created.warnings[0].contains("same provisioner"));
}
