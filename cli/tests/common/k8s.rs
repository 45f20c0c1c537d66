//! Helpers for tests against the simulated clusters (`mover_testdata::cluster`).

use std::path::Path;
use std::process::{Command, Output};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
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
    Command::new(bin("mover"))
        .args(args)
        .args(["--kubeconfig", pair.kubeconfig.to_str().unwrap(), "--output", "json"])
        // A command line's `--agent-ready-timeout` wins over this.
        .env("MOVER_AGENT_READY_TIMEOUT", "30")
        .env_remove("MOVER_OUTPUT")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
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
    let mine = ListParams::default().labels("app.kubernetes.io/managed-by=mover");
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
