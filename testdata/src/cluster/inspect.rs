//! What a cluster runs in some namespaces, one line per object, for the demo to print after each
//! step of a cutover (`mover-testdata cluster workloads DIR`):
//!
//! - the namespace, and whether mover created it (its `app.kubernetes.io/managed-by` label and
//!   `mover.io/plan` annotation);
//! - each workload of a kind mover quiesces (a `ReplicaSet` a Deployment owns is left to its
//!   Deployment), with the field quiesce changes (replicas, suspend, parallelism, node selector)
//!   and mover's `mover.io/` annotations if any;
//! - each pod that has not finished, with its phase and node;
//! - each claim, with its phase.

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::ListParams;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

/// The workload kinds, `(group, kind, plural)`, in the order they are shown.
const KINDS: [(&str, &str, &str); 6] = [
    ("apps", "Deployment", "deployments"),
    ("apps", "StatefulSet", "statefulsets"),
    ("apps", "ReplicaSet", "replicasets"),
    ("apps", "DaemonSet", "daemonsets"),
    ("batch", "CronJob", "cronjobs"),
    ("batch", "Job", "jobs"),
];

fn io_error(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// The objects of `(group, kind, plural)` in `namespace`, as JSON.
async fn list(
    client: &kube::Client,
    namespace: &str,
    (group, kind, plural): (&str, &str, &str),
) -> std::io::Result<Vec<Value>> {
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let listed = api.list(&ListParams::default()).await.map_err(io_error)?;
    listed.items.into_iter().map(|o| serde_json::to_value(o).map_err(io_error)).collect()
}

/// `key=value` of each `mover.io/` annotation of `object`, in brackets; empty without any.
fn mover_annotations(object: &Value) -> String {
    let annotations = object["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
    let shown: Vec<String> = annotations
        .iter()
        .filter(|(key, _)| key.starts_with("mover.io/"))
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
        .collect();
    if shown.is_empty() { String::new() } else { format!(" [{}]", shown.join(", ")) }
}

/// The field quiesce changes, as the API has it (with its default where it is unset).
fn stopped_by(kind: &str, object: &Value) -> String {
    let spec = &object["spec"];
    match kind {
        "DaemonSet" => format!("nodeSelector {}", spec["template"]["spec"]["nodeSelector"]),
        "CronJob" => format!("suspend {}", spec["suspend"].as_bool().unwrap_or(false)),
        "Job" => format!("parallelism {}", spec["parallelism"].as_i64().unwrap_or(1)),
        _ => format!("replicas {}", spec["replicas"].as_i64().unwrap_or(1)),
    }
}

/// `, terminating` for an object being deleted.
fn terminating(object: &Value) -> &'static str {
    if object["metadata"].get("deletionTimestamp").is_some() { ", terminating" } else { "" }
}

fn owned_by_deployment(object: &Value) -> bool {
    object["metadata"]["ownerReferences"].as_array().is_some_and(|refs| refs.iter().any(|r| r["kind"] == "Deployment"))
}

/// One line per namespace, workload, running pod and claim of `namespaces`.
pub async fn workloads(client: &kube::Client, namespaces: &[&str]) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    for &namespace in namespaces {
        let found = Api::<Namespace>::all(client.clone()).get_opt(namespace).await.map_err(io_error)?;
        let Some(object) = found.map(serde_json::to_value).transpose().map_err(io_error)? else {
            lines.push(format!("Namespace {namespace}: none"));
            continue;
        };
        let managed = object["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mover";
        let by = if managed { " (created by mover)" } else { "" };
        lines.push(format!("Namespace {namespace}{by}{}{}", terminating(&object), mover_annotations(&object)));
        for (group, kind, plural) in KINDS {
            for object in list(client, namespace, (group, kind, plural)).await? {
                if kind == "ReplicaSet" && owned_by_deployment(&object) {
                    continue;
                }
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                lines.push(format!(
                    "  {kind} {namespace}/{name}: {}{}",
                    stopped_by(kind, &object),
                    mover_annotations(&object)
                ));
            }
        }
        for pod in list(client, namespace, ("", "Pod", "pods")).await? {
            let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
            if matches!(phase, "Succeeded" | "Failed") {
                continue;
            }
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let node = pod["spec"]["nodeName"].as_str().unwrap_or("(not scheduled)");
            lines.push(format!("  Pod {namespace}/{name}: {phase} on {node}{}", terminating(&pod)));
        }
        for claim in list(client, namespace, ("", "PersistentVolumeClaim", "persistentvolumeclaims")).await? {
            let name = claim["metadata"]["name"].as_str().unwrap_or_default();
            let phase = claim["status"]["phase"].as_str().unwrap_or("Pending");
            lines.push(format!(
                "  PersistentVolumeClaim {namespace}/{name}: {phase}{}{}",
                terminating(&claim),
                mover_annotations(&claim)
            ));
        }
    }
    Ok(lines)
}
