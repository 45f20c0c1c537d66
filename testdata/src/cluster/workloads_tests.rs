//! The workload controllers (`workloads`, and Jobs' `parallelism: 0`) through a real client.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::tests::{eventually, fixture, from};

/// A workload body: `spec` merged over a template running `sleep` labelled `app: <name>`.
fn workload<K: serde::de::DeserializeOwned>(name: &str, spec: &Value) -> K {
    let mut body = json!({"metadata": {"name": name}, "spec": {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox:1", "command": ["sleep", "1000"]}]}}}});
    json_patch::merge(&mut body["spec"], spec);
    from(body)
}

/// The names of the running, not deleted pods labelled `app=<app>`, once there are `count`.
async fn running(pods: &Api<Pod>, app: &str, count: usize) -> BTreeSet<String> {
    eventually(&format!("{count} running pods of {app}"), || async {
        let listed = pods.list(&ListParams::default().labels(&format!("app={app}"))).await.ok()?.items;
        let names: BTreeSet<String> = listed
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.metadata.name)
            .collect();
        (names.len() == count).then_some(names)
    })
    .await
}

async fn none_left(pods: &Api<Pod>, app: &str) {
    eventually(&format!("no pod of {app}"), || async {
        let listed = pods.list(&ListParams::default().labels(&format!("app={app}"))).await.ok()?.items;
        listed.is_empty().then_some(())
    })
    .await;
}

fn scale(replicas: i32) -> Patch<Value> {
    Patch::Merge(json!({"spec": {"replicas": replicas}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_and_replica_sets_keep_their_replicas_and_scale_to_zero() {
    let Some(f) = fixture().await else { return };
    let (pp, patch) = (PostParams::default(), PatchParams::default());
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), "app");
    deployments.create(&pp, &workload("web", &json!({"replicas": 2}))).await.unwrap();
    let names = running(&pods, "web", 2).await;
    let sets: Api<ReplicaSet> = Api::namespaced(f.client.clone(), "app");
    let owned = sets.list(&ListParams::default().labels("app=web")).await.unwrap().items;
    assert_eq!(owned.len(), 1);
    let set = &owned[0];
    let hash = &set.metadata.labels.as_ref().unwrap()["pod-template-hash"];
    assert_eq!(set.metadata.name.as_deref(), Some(format!("web-{hash}").as_str()));
    assert_eq!(set.metadata.owner_references.as_ref().unwrap()[0].kind, "Deployment");
    assert!(names.iter().all(|n| n.starts_with(&format!("web-{hash}-"))), "{names:?}");
    let ready = eventually("the deployment's status", || async {
        deployments.get("web").await.ok()?.status.filter(|s| s.ready_replicas == Some(2))
    })
    .await;
    assert_eq!(ready.replicas, Some(2));

    deployments.patch("web", &patch, &scale(0)).await.unwrap();
    none_left(&pods, "web").await;
    deployments.patch("web", &patch, &scale(1)).await.unwrap();
    running(&pods, "web", 1).await;

    // A replica set of its own: the surplus is deleted, a deleted pod replaced.
    sets.create(&pp, &workload("solo", &json!({"replicas": 3}))).await.unwrap();
    running(&pods, "solo", 3).await;
    sets.patch("solo", &patch, &scale(1)).await.unwrap();
    let left = running(&pods, "solo", 1).await;
    pods.delete(left.first().unwrap(), &kube::api::DeleteParams::default()).await.unwrap();
    let again = running(&pods, "solo", 1).await;
    assert_ne!(again, left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_sets_name_pods_by_ordinal_and_drop_the_highest_first() {
    let Some(f) = fixture().await else { return };
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let sets: Api<StatefulSet> = Api::namespaced(f.client.clone(), "app");
    sets.create(&PostParams::default(), &workload("db", &json!({"replicas": 3, "serviceName": "db"}))).await.unwrap();
    let names = running(&pods, "db", 3).await;
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["db-0", "db-1", "db-2"]);
    sets.patch("db", &PatchParams::default(), &scale(1)).await.unwrap();
    assert_eq!(running(&pods, "db", 1).await.into_iter().collect::<Vec<_>>(), ["db-0"]);
    let status = eventually("the stateful set's status", || async {
        sets.get("db").await.ok()?.status.filter(|s| s.replicas == 1)
    })
    .await;
    assert_eq!(status.ready_replicas, Some(1));
    sets.patch("db", &PatchParams::default(), &scale(0)).await.unwrap();
    none_left(&pods, "db").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmatchable_node_selector_a_job_of_parallelism_zero_and_a_cron_job_leave_no_pod() {
    let Some(f) = fixture().await else { return };
    let (pp, patch) = (PostParams::default(), PatchParams::default());
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let sets: Api<DaemonSet> = Api::namespaced(f.client.clone(), "app");
    sets.create(&pp, &workload("agent", &json!({}))).await.unwrap();
    running(&pods, "agent", 2).await;
    let unmatchable = json!({"spec": {"template": {"spec": {"nodeSelector": {"example.com/nowhere": "true"}}}}});
    sets.patch("agent", &patch, &Patch::Merge(unmatchable)).await.unwrap();
    none_left(&pods, "agent").await;
    let status = eventually("the daemon set's status", || async {
        sets.get("agent").await.ok()?.status.filter(|s| s.desired_number_scheduled == 0)
    })
    .await;
    assert_eq!(status.number_ready, 0);

    let jobs: Api<Job> = Api::namespaced(f.client.clone(), "app");
    let job: Job = from(json!({"metadata": {"name": "batch"}, "spec": {"template": {
        "metadata": {"labels": {"app": "batch"}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox:1", "command": ["sleep", "1000"]}]}}}}));
    jobs.create(&pp, &job).await.unwrap();
    running(&pods, "batch", 1).await;
    jobs.patch("batch", &patch, &Patch::Merge(json!({"spec": {"parallelism": 0}}))).await.unwrap();
    none_left(&pods, "batch").await;
    assert_eq!(jobs.get("batch").await.unwrap().status.unwrap().active, Some(0));

    // A cron job is stored and never scheduled, even every minute.
    let cron_jobs: Api<CronJob> = Api::namespaced(f.client.clone(), "app");
    let cron: CronJob = from(json!({"metadata": {"name": "nightly"}, "spec": {"schedule": "* * * * *",
        "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1", "command": ["true"]}]}}}}}}));
    cron_jobs.create(&pp, &cron).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(jobs.list(&ListParams::default()).await.unwrap().items.len(), 1, "only the test's own Job");
}
