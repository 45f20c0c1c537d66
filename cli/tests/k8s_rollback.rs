//! `mover plan rollback` removes the target namespaces mover created for the plan, after their
//! claims, as the install's coordinator service account (whose every request its ClusterRole must
//! allow): one the run created is deleted; one that existed before is kept; one the run created
//! but where the user has since made something is kept, and the output names what. Root only;
//! skipped otherwise, with the reason printed.

mod common;

use common::k8s::{coordinator_audit, mover, runtime};
use common::{bin, is_root, text};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::Api;
use mover_kube::objects::rbac;
use mover_testdata::cluster::app::{self, deploy};
use mover_testdata::cluster::{ClusterPair, inspect, write_kubeconfig_entries};
use serde_json::{Value, json};

const PLAN: &str = "apiVersion: mover/v1alpha1
kind: MigrationPlan
name: shop-rollback
namespaces: [shop, shop-db, shop-cache]
clusters:
  source: {context: source}
  target: {context: target}
";

/// Whether namespace `name` exists in `client`'s cluster and is not being deleted.
async fn namespace_lives(client: &kube::Client, name: &str) -> bool {
    let found = Api::<Namespace>::all(client.clone()).get_opt(name).await.unwrap();
    found.is_some_and(|namespace| namespace.metadata.deletion_timestamp.is_none())
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().unwrap().iter().map(|line| line.as_str().unwrap()).collect()
}

#[test]
fn a_rollback_deletes_the_target_namespaces_the_run_created_and_nothing_else() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let pair = ClusterPair::start(&tmp.path().join("clusters"), &bin("mover-agent"), (43, 44)).unwrap();
    runtime.block_on(deploy(&pair, 10)).unwrap();
    let admin = runtime.block_on(app::client(&pair, "source")).unwrap();
    let target = runtime.block_on(app::client(&pair, "target")).unwrap();
    // A third namespace with a claim of its own, which the run creates on the target too.
    runtime.block_on(async {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop-cache"}}),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "cache", "namespace": "shop-cache"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                    "resources": {"requests": {"storage": "1Gi"}}}}),
        ];
        app::apply(&admin, &objects).await.unwrap();
        let dir = app::volume_dir(&admin, pair.source.dir(), "shop-cache", "cache").await.unwrap();
        std::fs::write(dir.join("entry"), "cached").unwrap();
    });

    let user = rbac::service_account_user("mover-system", rbac::COORDINATOR_SERVICE_ACCOUNT);
    let kubeconfig = tmp.path().join("coordinator.kubeconfig");
    write_kubeconfig_entries(&kubeconfig, &[pair.source.kubeconfig_entry(&user), pair.target.kubeconfig_entry(&user)])
        .unwrap();
    let as_coordinator = ClusterPair { kubeconfig, ..pair };
    let pair = &as_coordinator;
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    let plan = plan.to_str().unwrap();

    let output = mover(pair, &["plan", "run", "--stage", plan]);
    assert!(output.status.success(), "{}", text(&output));
    runtime.block_on(async {
        for namespace in ["shop", "shop-db", "shop-cache"] {
            assert!(namespace_lives(&target, namespace).await, "no target namespace {namespace}");
        }
        // What the demo prints: the namespace mover created, marked; the application untouched.
        let shown = inspect::workloads(&target, &["shop", "shop-db"]).await.unwrap();
        for line in [
            "Namespace shop (created by mover) [mover.io/plan=shop-rollback]",
            "  PersistentVolumeClaim shop/data: Bound [mover.io/plan=shop-rollback]",
            "Namespace shop-db",
            "  PersistentVolumeClaim shop-db/db: Bound",
        ] {
            assert!(shown.contains(&line.to_owned()), "no `{line}` in {shown:#?}");
        }
        let shown = inspect::workloads(&admin, &["shop"]).await.unwrap();
        for line in ["  Deployment shop/web: replicas 1", "  CronJob shop/thumbnails: suspend false"] {
            assert!(shown.contains(&line.to_owned()), "no `{line}` in {shown:#?}");
        }
    });
    // After the run, the user puts something of theirs in one of the namespaces mover created.
    let settings =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "shop-cache"}});
    runtime.block_on(app::apply(&target, &[settings])).unwrap();

    let output = mover(pair, &["plan", "rollback", plan]);
    assert!(output.status.success(), "{}", text(&output));
    let rolled: Value = serde_json::from_slice(output.stdout.trim_ascii()).unwrap();
    let removed = strings(&rolled["removed"]);
    assert!(removed.contains(&"deleted namespace shop in context `target` (mover created it)"), "{rolled}");
    assert!(!removed.iter().any(|line| line.contains("namespace shop-db") || line.contains("namespace shop-cache")));
    let kept = strings(&rolled["kept"]);
    for expected in [
        "kept namespace shop-db in context `target`: it existed before mover used it",
        "kept namespace shop-cache in context `target`: mover created it, but it holds what mover did not create: \
         ConfigMap shop-cache/settings",
    ] {
        assert!(kept.contains(&expected), "no `{expected}` in {rolled}");
    }
    // The claims went first: the kept namespace no longer holds the claim mover made there.
    let removed_claim = removed.iter().position(|l| l.starts_with("deleted claim shop/data"));
    let removed_namespace = removed.iter().position(|l| l.starts_with("deleted namespace shop "));
    assert!(removed_claim < removed_namespace, "{rolled}");
    runtime.block_on(async {
        assert!(!namespace_lives(&target, "shop").await, "the namespace mover created is still there");
        let shown = inspect::workloads(&target, &["shop"]).await.unwrap();
        assert!(
            shown == ["Namespace shop: none"]
                || shown[0] == "Namespace shop (created by mover), terminating [mover.io/plan=shop-rollback]",
            "{shown:#?}"
        );
        assert!(namespace_lives(&target, "shop-db").await, "the namespace that existed before was deleted");
        assert!(namespace_lives(&target, "shop-cache").await, "the namespace the user put something in was deleted");
        let db = Api::<PersistentVolumeClaim>::namespaced(target.clone(), "shop-db").get_opt("db").await.unwrap();
        assert!(db.is_some(), "the user's own claim was deleted");
        let cache = Api::<PersistentVolumeClaim>::namespaced(target.clone(), "shop-cache").get_opt("cache").await;
        assert!(cache.unwrap().is_none_or(|c| c.metadata.deletion_timestamp.is_some()), "claim cache stays");
        // The source is untouched.
        for namespace in ["shop", "shop-db", "shop-cache"] {
            assert!(namespace_lives(&admin, namespace).await, "source namespace {namespace}");
        }
    });

    // A second rollback has nothing left to delete, and says why it keeps the others.
    let output = mover(pair, &["plan", "rollback", plan]);
    assert!(output.status.success(), "{}", text(&output));
    let again: Value = serde_json::from_slice(output.stdout.trim_ascii()).unwrap();
    assert_eq!(again["removed"], json!([]), "{again}");
    assert_eq!(again["kept"], rolled["kept"], "{again}");

    // The RBAC audit: every request allowed, the rollback's namespace rules used.
    let unused = coordinator_audit(pair, &user);
    for used in ["delete core/namespaces", "list core/configmaps", "list core/serviceaccounts"] {
        assert!(!unused.contains(&used.to_owned()), "`{used}` unused: {unused:#?}");
    }
}
