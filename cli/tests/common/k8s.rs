//! Helpers for tests against the simulated clusters (`mover_testdata::cluster`).

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use kube::Api;
use kube::api::ListParams;
use mover_testdata::cluster::ClusterPair;
use mover_testdata::cluster::app;
use mover_testdata::{CompareOptions, compare};

use super::bin;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

pub fn mover(pair: &ClusterPair, args: &[&str]) -> Output {
    mover_as(Command::new(bin("mover")), pair, args)
}

#[allow(dead_code, reason = "not every test file isolates the coordinator")]
/// [`mover`] as `command` starts it (another network namespace: `Isolated::command`).
pub fn mover_as(mut command: Command, pair: &ClusterPair, args: &[&str]) -> Output {
    command
        .args(args)
        .args(["--kubeconfig", pair.kubeconfig.to_str().unwrap(), "--output", "json"])
        // A command line's `--agent-ready-timeout` wins over this.
        .env("MOVER_AGENT_READY_TIMEOUT", "30")
        .env_remove("MOVER_OUTPUT")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// Installs the node agents in both clusters (as their administrator), each with its own
/// kubelet root.
#[allow(dead_code, reason = "not every test file uses the node strategy")]
pub async fn install_node_agents(pair: &ClusterPair) {
    use mover_kube::objects::{Install, Strategy, install_objects};
    for (context, cluster) in [("source", &pair.source), ("target", &pair.target)] {
        let client = app::client(pair, context).await.unwrap();
        let kubelet_root = cluster.kubelet_root().to_str().unwrap().to_owned();
        let objects =
            install_objects(&Install { strategy: Strategy::Node, kubelet_root: &kubelet_root, ..Install::default() });
        let objects: Vec<_> = objects.iter().map(|object| serde_json::to_value(object).unwrap()).collect();
        app::apply(&client, &objects).await.unwrap();
    }
}

/// Nothing of a migration (pods, Services, Secrets labelled with one) in either cluster; an
/// install's objects (the node agents) stay.
pub async fn leftovers(pair: &ClusterPair) -> Vec<String> {
    let mut left = Vec::new();
    let mine = ListParams::default().labels("app.kubernetes.io/managed-by=mover,mover.io/migration");
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

/// Nothing labelled as mover's hooks' (Jobs, `ConfigMaps`) in either cluster (ask as an
/// identity that may list `ConfigMaps`: the coordinator may not).
pub async fn hook_leftovers(pair: &ClusterPair) -> Vec<String> {
    let mut left = Vec::new();
    let mine = ListParams::default().labels("app.kubernetes.io/managed-by=mover,mover.io/hook");
    for context in ["source", "target"] {
        let client = app::client(pair, context).await.unwrap();
        let jobs = Api::<Job>::all(client.clone()).list(&mine).await.unwrap();
        left.extend(jobs.items.into_iter().filter_map(|j| j.metadata.name).map(|n| format!("{context}: job {n}")));
        let maps = Api::<ConfigMap>::all(client).list(&mine).await.unwrap();
        left.extend(
            maps.items.into_iter().filter_map(|m| m.metadata.name).map(|n| format!("{context}: configmap {n}")),
        );
    }
    left
}

pub fn assert_same(source: &Path, target: &Path) {
    let differences = compare(source, target, &CompareOptions::default()).unwrap();
    assert!(
        differences.is_empty(),
        "{} and {}: {} differences, first: {:?}",
        source.display(),
        target.display(),
        differences.len(),
        differences.first()
    );
}

/// What `user` asked of both clusters, from their request logs.
#[allow(dead_code, reason = "not every test file audits")]
pub fn requests_of(pair: &ClusterPair, user: &str) -> Vec<mover_kube::objects::rbac::Request> {
    let mut requests = Vec::new();
    for dir in [pair.source.dir(), pair.target.dir()] {
        let log = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
        let lines = log.lines().map(|line| serde_json::from_str::<mover_kube::objects::rbac::Request>(line).unwrap());
        requests.extend(lines.filter(|request| request.user == user));
    }
    requests
}

/// The RBAC audit of the coordinator's identity `user`: every request it made of both clusters
/// is one the role `mover k8s manifests` prints allows (the test fails naming those that are
/// not); returns each rule no request used.
#[allow(dead_code, reason = "not every test file audits")]
pub fn coordinator_audit(pair: &ClusterPair, user: &str) -> Vec<String> {
    coordinator_audit_of(pair, user, false)
}

#[allow(dead_code, reason = "not every test file audits")]
/// [`coordinator_audit`] of an install with `mover k8s manifests --port-forward` when
/// `port_forward`.
pub fn coordinator_audit_of(pair: &ClusterPair, user: &str, port_forward: bool) -> Vec<String> {
    use mover_kube::objects::{Install, Strategy, rbac};
    let requests = requests_of(pair, user);
    let install = Install { namespace: "mover-system", strategy: Strategy::Pod, port_forward, ..Install::default() };
    let grants = rbac::rbac(&install).grants_of(user);
    let denied: Vec<_> = requests.iter().filter(|request| !grants.allows(request)).collect();
    assert!(denied.is_empty(), "requests the coordinator's role does not allow: {denied:#?}");
    grants.unused(&requests)
}

/// The demo application's claims all moved to the target cluster: each target claim has the
/// size mover gave it (1Gi), or the user's (2Gi, never resized), and holds its source's tree.
#[allow(dead_code, reason = "not every test file moves the demo application")]
pub async fn assert_app_moved(pair: &ClusterPair, claims: &[(String, std::path::PathBuf)]) {
    let client = app::client(pair, "target").await.unwrap();
    for (claim, source_dir) in claims {
        let (namespace, name) = claim.split_once('/').unwrap();
        let found = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace).get(name).await.unwrap();
        let size = found.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0.clone();
        assert_eq!(size, if claim == "shop-db/db" { "2Gi" } else { "1Gi" }, "{claim}");
        let target_dir = app::volume_dir(&client, pair.target.dir(), namespace, name).await.unwrap();
        assert_same(source_dir, &target_dir);
    }
}
