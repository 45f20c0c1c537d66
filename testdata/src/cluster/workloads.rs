//! The controllers of the workload kinds mover quiesces, each level-triggered and small, with
//! what a real cluster does differently:
//!
//! * deployments: one `ReplicaSet` per pod template, named `<deployment>-<pod-template-hash>`,
//!   owned by the deployment, with its `replicas`; a `ReplicaSet` of an older template is scaled
//!   to 0 at once (no rolling update, no `maxSurge`/`maxUnavailable`, no revision history limit,
//!   `paused` is ignored);
//! * replica sets: `spec.replicas` pods (default 1) named `<set>-<5 characters>`; missing ones are
//!   created and the surplus deleted, the last by name first (the real controller prefers pods
//!   not yet ready, then the youngest); a finished pod is replaced;
//! * stateful sets: pods `<set>-<ordinal>` for ordinals below `spec.replicas`, all created at once
//!   (as `podManagementPolicy: Parallel`; the default `OrderedReady` waits for each), and the
//!   highest ordinal above deleted first, one at a time; a finished pod is not replaced; no
//!   `volumeClaimTemplates`, no revisions;
//! * daemon sets: one pod per node that matches the template's `nodeSelector`, pinned by the
//!   required node affinity `matchFields metadata.name` as the real controller does, recreated
//!   when deleted (a finished pod is not replaced; no rolling updates, no tolerations); a pod on
//!   a node that no longer matches is deleted;
//! * cron jobs: stored, never scheduled (no Job is ever created from one, suspended or not; a
//!   real controller creates Jobs on the schedule unless `suspend: true`).
//!
//! Jobs (with `parallelism: 0`: no pod) are in `controllers`.

use serde_json::{Value, json};

use super::Shared;
use super::controllers::{create_in, pod_from_template};
use super::resources::{self, ResourceType};
use super::store::{Store, name_of, namespace_of};
use super::verbs::delete_in;

/// Runs each workload controller once.
pub fn run(shared: &Shared) {
    deployments(shared);
    replica_sets(shared);
    stateful_sets(shared);
    daemon_sets(shared);
}

fn pod_type() -> &'static ResourceType {
    resources::by_kind("Pod")
}

/// Whether a pod has not finished and is not being deleted.
fn active(pod: &Value) -> bool {
    !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        && pod["metadata"].get("deletionTimestamp").is_none()
}

/// Whether `object` names `owner` in its `ownerReferences`.
fn owned_by(object: &Value, owner: &Value) -> bool {
    let uid = &owner["metadata"]["uid"];
    object["metadata"]["ownerReferences"].as_array().is_some_and(|refs| refs.iter().any(|r| r["uid"] == *uid))
}

/// The objects of `resource` in `owner`'s namespace that `owner` owns.
fn owned(store: &Store, resource: &ResourceType, owner: &Value) -> Vec<Value> {
    store.list(resource, Some(namespace_of(owner))).into_iter().filter(|o| owned_by(o, owner)).cloned().collect()
}

/// The objects of a kind that are not being deleted.
fn live(store: &Store, resource: &ResourceType) -> Vec<Value> {
    store
        .list(resource, None)
        .into_iter()
        .filter(|o| o["metadata"].get("deletionTimestamp").is_none())
        .cloned()
        .collect()
}

/// `spec.replicas`, 1 when unset (the API server's default).
fn replicas(object: &Value) -> usize {
    object["spec"]["replicas"].as_u64().map_or(1, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn running(pods: &[Value]) -> usize {
    pods.iter().filter(|p| p["status"]["phase"] == "Running").count()
}

/// Ten hex digits of FNV-1a over the template: stable for one template, distinct for another.
fn template_hash(template: &Value) -> String {
    let text = template.to_string();
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{:010x}", hash >> 24)
}

fn owner_reference(owner: &Value) -> Value {
    json!([{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": name_of(owner),
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}])
}

fn deployments(shared: &Shared) {
    shared.write(|store| {
        let deployment_type = resources::by_kind("Deployment");
        let set_type = resources::by_kind("ReplicaSet");
        for mut deployment in live(store, deployment_type) {
            let hash = template_hash(&deployment["spec"]["template"]);
            let name = format!("{}-{hash}", name_of(&deployment));
            let wanted = replicas(&deployment);
            let sets = owned(store, set_type, &deployment);
            if !sets.iter().any(|s| name_of(s) == name) {
                let mut template = deployment["spec"]["template"].clone();
                template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = deployment["spec"]["selector"].clone();
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let set = json!({
                    "metadata": {"name": name, "namespace": namespace_of(&deployment),
                        "labels": template["metadata"]["labels"], "ownerReferences": owner_reference(&deployment)},
                    "spec": {"replicas": wanted, "selector": selector, "template": template},
                });
                create_in(store, set_type, set);
            }
            let (mut total, mut ready) = (0, 0);
            for mut set in sets {
                let scale = if name_of(&set) == name { wanted } else { 0 };
                total += set["status"]["replicas"].as_u64().unwrap_or(0);
                ready += set["status"]["readyReplicas"].as_u64().unwrap_or(0);
                if replicas(&set) != scale {
                    set["spec"]["replicas"] = json!(scale);
                    store.put(set_type, set);
                }
            }
            deployment["status"] = json!({"replicas": total, "readyReplicas": ready, "availableReplicas": ready,
                "updatedReplicas": total, "observedGeneration": deployment["metadata"]["generation"]});
            store.put_if_changed(deployment_type, deployment);
        }
    });
}

fn replica_sets(shared: &Shared) {
    shared.write(|store| {
        let set_type = resources::by_kind("ReplicaSet");
        for mut set in live(store, set_type) {
            let mut pods: Vec<Value> = owned(store, pod_type(), &set).into_iter().filter(active).collect();
            pods.sort_by(|a, b| name_of(a).cmp(name_of(b)));
            let wanted = replicas(&set);
            for surplus in pods.iter().skip(wanted).rev() {
                delete_in(store, pod_type(), namespace_of(&set), name_of(surplus), None);
            }
            for _ in pods.len()..wanted {
                create_in(store, pod_type(), pod_from_template(&set, &[]));
            }
            pods.truncate(wanted);
            let ready = running(&pods);
            set["status"] = json!({"replicas": pods.len(), "fullyLabeledReplicas": pods.len(), "readyReplicas": ready,
                "availableReplicas": ready, "observedGeneration": set["metadata"]["generation"]});
            store.put_if_changed(set_type, set);
        }
    });
}

fn stateful_sets(shared: &Shared) {
    shared.write(|store| {
        let set_type = resources::by_kind("StatefulSet");
        for mut set in live(store, set_type) {
            let pods = owned(store, pod_type(), &set);
            let wanted = replicas(&set);
            let ordinal = |pod: &Value| {
                name_of(pod).strip_prefix(&format!("{}-", name_of(&set))).and_then(|n| n.parse::<usize>().ok())
            };
            for index in 0..wanted {
                if !pods.iter().any(|p| ordinal(p) == Some(index)) {
                    let mut pod = pod_from_template(&set, &[]);
                    let name = format!("{}-{index}", name_of(&set));
                    pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(name);
                    pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"] = json!(index.to_string());
                    pod["metadata"]["name"] = json!(name);
                    create_in(store, pod_type(), pod);
                }
            }
            // The highest ordinal goes first, and the next only once it is gone.
            let terminating = pods.iter().any(|p| p["metadata"].get("deletionTimestamp").is_some());
            let highest = pods.iter().filter(|p| ordinal(p).is_some_and(|i| i >= wanted)).max_by_key(|p| ordinal(p));
            if let (false, Some(pod)) = (terminating, highest) {
                delete_in(store, pod_type(), namespace_of(&set), name_of(pod), None);
            }
            let kept: Vec<Value> = pods.into_iter().filter(|p| ordinal(p).is_some_and(|i| i < wanted)).collect();
            let ready = running(&kept);
            set["status"] = json!({"replicas": kept.len(), "readyReplicas": ready, "availableReplicas": ready,
                "currentReplicas": kept.len(), "updatedReplicas": kept.len(),
                "observedGeneration": set["metadata"]["generation"]});
            store.put_if_changed(set_type, set);
        }
    });
}

/// The node a daemon set's pod is pinned to.
fn pinned_node(pod: &Value) -> &str {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        ["matchFields"][0]["values"][0]
        .as_str()
        .unwrap_or("")
}

fn daemon_sets(shared: &Shared) {
    shared.write(|store| {
        let set_type = resources::by_kind("DaemonSet");
        let nodes: Vec<Value> = store.list(resources::by_kind("Node"), None).into_iter().cloned().collect();
        for mut set in live(store, set_type) {
            let owned = owned(store, pod_type(), &set);
            let selector = set["spec"]["template"]["spec"]["nodeSelector"].as_object().cloned().unwrap_or_default();
            let wanted: Vec<&str> = nodes
                .iter()
                .filter(|n| selector.iter().all(|(k, v)| n["metadata"]["labels"][k] == *v))
                .map(name_of)
                .collect();
            let mut ready = 0;
            for node_name in &wanted {
                if let Some(pod) = owned.iter().find(|p| pinned_node(p) == *node_name) {
                    ready += usize::from(pod["status"]["phase"] == "Running");
                } else {
                    let mut pod = pod_from_template(&set, &[("controller-revision-hash", "1")]);
                    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] =
                        json!({"nodeSelectorTerms": [{"matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": [node_name]}]}]});
                    create_in(store, pod_type(), pod);
                }
            }
            let misscheduled: Vec<&Value> = owned.iter().filter(|p| !wanted.contains(&pinned_node(p))).collect();
            for pod in &misscheduled {
                delete_in(store, pod_type(), namespace_of(&set), name_of(pod), None);
            }
            let scheduled = (owned.len() - misscheduled.len()).min(wanted.len());
            set["status"] = json!({"desiredNumberScheduled": wanted.len(), "currentNumberScheduled": scheduled,
                "numberMisscheduled": misscheduled.len(), "numberReady": ready, "numberAvailable": ready,
                "updatedNumberScheduled": scheduled, "observedGeneration": set["metadata"]["generation"]});
            store.put_if_changed(set_type, set);
        }
    });
}
