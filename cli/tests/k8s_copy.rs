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

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Claims the seed says cannot move, a storage class the target lacks, a 403 and a dropped watch:
/// each is refused (or survived) with what to do, and nothing of mover's is left behind.
#[test]
fn bad_claims_and_a_hostile_api_server_are_met_with_what_to_do() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let pair = ClusterPair::start(&tmp.path().join("clusters"), &bin("mover-agent"), (25, 26)).unwrap();
    runtime.block_on(deploy(&pair, 20)).unwrap();
    runtime.block_on(async {
        let source = app::client(&pair, "source").await.unwrap();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(source.clone(), "shop");
        let claim = |name: &str, class: &str, mode: &str| {
            serde_json::from_value::<PersistentVolumeClaim>(serde_json::json!({
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"accessModes": [mode], "storageClassName": class,
                         "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap()
        };
        // `standard` binds on first consumer, and nothing consumes it.
        claims.create(&kube::api::PostParams::default(), &claim("waiting", "standard", "ReadWriteOnce")).await.unwrap();
        claims.create(&kube::api::PostParams::default(), &claim("single", "fast", "ReadWriteOncePod")).await.unwrap();
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"containers": [{"name": "db", "image": "registry.sim/tools:1", "command": ["sleep", "3600"],
                                     "volumeMounts": [{"name": "v", "mountPath": "/tmp/v"}]}],
                     "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "single"}}]}}))
        .unwrap();
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(source, "shop")
            .create(&kube::api::PostParams::default(), &pod)
            .await
            .unwrap();
        app::wait_running(&app::client(&pair, "source").await.unwrap(), "shop", "db").await.unwrap();
    });

    let unbound = mover(&pair, &["copy", "k8s://source/shop/waiting", "k8s://target/shop"]);
    assert_eq!(unbound.status.code(), Some(1), "{}", text(&unbound));
    assert!(stderr_of(&unbound).contains("`shop/waiting` is Pending, not Bound"), "{}", text(&unbound));
    let single = mover(&pair, &["copy", "k8s://source/shop/single", "k8s://target/shop"]);
    assert!(stderr_of(&single).contains("ReadWriteOncePod and pod `db` uses it"), "{}", text(&single));
    let missing = mover(&pair, &["copy", "k8s://source/shop/nothing", "k8s://target/shop"]);
    assert!(stderr_of(&missing).contains("does not exist in context `source`"), "{}", text(&missing));

    // A class the target lacks, asked for by a plan: refused after the source agent started,
    // which is removed again.
    let plan = tmp.path().join("plan.yaml");
    std::fs::write(
        &plan,
        "apiVersion: mover/v1alpha1\nkind: MigrationPlan\nname: p\nclusters:\n  source: {context: source}\n  \
         target: {context: target}\nvolumes:\n  - claim: shop/media\n    storageClass: ceph\n",
    )
    .unwrap();
    let class = mover(&pair, &["plan", "run", plan.to_str().unwrap()]);
    assert_eq!(class.status.code(), Some(1), "{}", text(&class));
    let message = text(&class);
    assert!(
        message.contains("storage class `ceph`, which the target cluster does not have (it has: fast, standard)"),
        "{message}"
    );
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());

    // 403: the verb and the resource are named, with where to find the roles mover needs.
    pair.target.faults().forbid("admin", "create", "persistentvolumeclaims");
    let forbidden = mover(&pair, &["copy", "k8s://source/shop/media", "k8s://target/shop"]);
    assert_eq!(forbidden.status.code(), Some(1), "{}", text(&forbidden));
    let message = stderr_of(&forbidden);
    assert!(
        message.contains("cannot create resource \"persistentvolumeclaims\"")
            && message.contains("HTTP 403")
            && message.contains("mover k8s manifests"),
        "{message}"
    );
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());
    pair.target.faults().allow_all();

    // Watches dropped after every event: the wait for the transfer pods goes on and the copy works.
    pair.source.faults().drop_watches_after(Some(1));
    pair.target.faults().drop_watches_after(Some(1));
    let dropped = mover(&pair, &["copy", "k8s://source/shop/media", "k8s://target/shop"]);
    assert!(dropped.status.success(), "{}", text(&dropped));
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());
}

/// Ctrl-C in the middle of a copy: the transfer pods, Services and Secrets are removed before
/// mover exits with 130.
#[test]
fn an_interrupted_copy_leaves_nothing_in_the_clusters() {
    if !is_root() {
        eprintln!("skipped: the simulated clusters' pods need root (namespaces, mounts)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let pair = ClusterPair::start(&tmp.path().join("clusters"), &bin("mover-agent"), (27, 28)).unwrap();
    runtime.block_on(deploy(&pair, 100)).unwrap();
    let mut copy = std::process::Command::new(bin("mover"))
        .args(["copy", "k8s://source/shop/data", "k8s://target/shop", "--bwlimit", "20K"])
        .args(["--kubeconfig", pair.kubeconfig.to_str().unwrap(), "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until bytes flow (the first progress line), then interrupt.
    let stdout = copy.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    assert!(lines.any(|line| line.unwrap().contains("\"type\":\"progress\"")), "no progress line");
    let status = std::process::Command::new("kill").args(["-INT", &copy.id().to_string()]).status().unwrap();
    assert!(status.success());
    let status = copy.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());

    // Killed, mover cannot clean up: `mover k8s cleanup` removes what it left.
    let mut killed = std::process::Command::new(bin("mover"))
        .args(["copy", "k8s://source/shop/data", "k8s://target/shop", "--bwlimit", "20K"])
        .args(["--kubeconfig", pair.kubeconfig.to_str().unwrap(), "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = killed.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    assert!(lines.any(|line| line.unwrap().contains("\"type\":\"progress\"")), "no progress line");
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(!runtime.block_on(leftovers(&pair)).is_empty(), "a killed mover cleaned up after all?");
    let kubeconfig = pair.kubeconfig.to_str().unwrap();
    let other_plan =
        mover(&pair, &["k8s", "cleanup", "--plan-name", "another", "--context", "source", "--context", "target"]);
    assert!(other_plan.status.success(), "{}", text(&other_plan));
    assert!(!runtime.block_on(leftovers(&pair)).is_empty(), "another plan's cleanup removed this one's objects");
    let cleanup = std::process::Command::new(bin("mover"))
        .args(["k8s", "cleanup", "--plan-name", "copy", "--context", "source", "--context", "target"])
        .args(["--kubeconfig", kubeconfig])
        .output()
        .unwrap();
    assert!(cleanup.status.success(), "{}", text(&cleanup));
    assert_eq!(runtime.block_on(leftovers(&pair)), Vec::<String>::new());
}
