//! A rollback's target side: a claim mover created for a plan is deleted; a claim that existed
//! before (which mover used as it was) is never touched. mover tells them apart by what it put
//! on the claims it created: its `app.kubernetes.io/managed-by` label and the plan's name in the
//! `mover.io/plan` annotation.
//!
//! A namespace mover created for the plan (marked the same way) is deleted after its claims, but
//! only when nothing but what mover created for the plan is left in it: no claim, pod, Service,
//! Secret, `ConfigMap`, service account, Deployment, `StatefulSet`, `ReplicaSet`, `DaemonSet`, Job or
//! `CronJob` of anyone else (objects being deleted, and the `kube-root-ca.crt` `ConfigMap` and
//! `default` service account Kubernetes puts in every namespace, do not count). Other kinds
//! (Roles, Ingresses, custom resources) are not looked at. A namespace that existed before is
//! never deleted.

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};

use crate::context::Cluster;
use crate::error::KubeError;
use crate::objects::labels::{MANAGED_BY, PLAN_ANNOTATION};

/// What a rollback did with one target claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimRollback {
    /// mover created it for the plan: deleted.
    Deleted,
    /// It existed before mover used it (or another plan's run created it): kept.
    Kept,
    /// There is no such claim.
    Missing,
}

/// What a rollback did with one target namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceRollback {
    /// mover created it for the plan and nothing else is in it: deleted.
    Deleted,
    /// mover created it for the plan, but it holds these objects of someone else
    /// (`Kind namespace/name`, the first few, then how many more): kept.
    InUse(Vec<String>),
    /// It existed before mover used it (or another plan's run created it): kept.
    NotCreated,
    /// There is no such namespace, or it is being deleted.
    Missing,
}

/// The namespaced kinds whose objects keep a namespace mover created: `(group, kind, plural)`.
const KEEPING: [(&str, &str, &str); 12] = [
    ("", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("", "Pod", "pods"),
    ("", "Service", "services"),
    ("", "Secret", "secrets"),
    ("", "ConfigMap", "configmaps"),
    ("", "ServiceAccount", "serviceaccounts"),
    ("apps", "Deployment", "deployments"),
    ("apps", "StatefulSet", "statefulsets"),
    ("apps", "ReplicaSet", "replicasets"),
    ("apps", "DaemonSet", "daemonsets"),
    ("batch", "Job", "jobs"),
    ("batch", "CronJob", "cronjobs"),
];

/// Objects Kubernetes itself puts in every namespace: `(kind, name)`.
const BUILT_IN: [(&str, &str); 2] = [("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")];

/// How many objects keeping a namespace are named before `and N more`.
const NAMED: usize = 3;

/// Whether mover created the object of `meta` for plan `plan`.
#[must_use]
pub fn created_for(meta: &ObjectMeta, plan: &str) -> bool {
    let labelled = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).is_some_and(|v| v == MANAGED_BY.1);
    let annotated = meta.annotations.as_ref().and_then(|a| a.get(PLAN_ANNOTATION)).is_some_and(|p| p == plan);
    labelled && annotated
}

/// Deletes target claim `namespace/name` when mover created it for plan `plan`.
pub async fn remove_created_claim(
    cluster: &Cluster,
    (namespace, name): (&str, &str),
    plan: &str,
) -> Result<ClaimRollback, KubeError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), namespace);
    let doing = format!("reading PersistentVolumeClaim `{namespace}/{name}`");
    let Some(claim) = claims.get_opt(name).await.map_err(KubeError::api(&cluster.context, doing))? else {
        return Ok(ClaimRollback::Missing);
    };
    if !created_for(&claim.metadata, plan) {
        return Ok(ClaimRollback::Kept);
    }
    let doing = format!("deleting PersistentVolumeClaim `{namespace}/{name}`");
    match claims.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(ClaimRollback::Deleted),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(ClaimRollback::Missing),
        Err(error) => Err(KubeError::api(&cluster.context, doing)(error)),
    }
}

/// Whether the object of `kind` with `meta` keeps a namespace mover created for `plan`.
fn keeps(kind: &str, meta: &ObjectMeta, plan: &str) -> bool {
    let name = meta.name.as_deref().unwrap_or_default();
    meta.deletion_timestamp.is_none() && !created_for(meta, plan) && !BUILT_IN.contains(&(kind, name))
}

/// `Kind namespace/name` of each object in `namespace` that keeps it (see [`keeps`]).
async fn keeping(cluster: &Cluster, namespace: &str, plan: &str) -> Result<Vec<String>, KubeError> {
    let mut found = Vec::new();
    for (group, kind, plural) in KEEPING {
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural);
        let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), namespace, &resource);
        let doing = format!("listing the {plural} of namespace `{namespace}`");
        let listed = api.list(&ListParams::default()).await.map_err(KubeError::api(&cluster.context, doing))?;
        found.extend(
            listed
                .items
                .iter()
                .filter(|object| keeps(kind, &object.metadata, plan))
                .map(|object| format!("{kind} {namespace}/{}", object.metadata.name.as_deref().unwrap_or_default())),
        );
    }
    Ok(found)
}

/// The objects of [`NamespaceRollback::InUse`]: the first [`NAMED`], then how many more.
fn named(mut objects: Vec<String>) -> Vec<String> {
    if objects.len() > NAMED {
        let more = objects.len() - NAMED;
        objects.truncate(NAMED);
        objects.push(format!("{more} more"));
    }
    objects
}

/// Deletes target namespace `namespace` when mover created it for plan `plan` and nothing but
/// what mover created for the plan is left in it (call it after the plan's claims are deleted).
pub async fn remove_created_namespace(
    cluster: &Cluster,
    namespace: &str,
    plan: &str,
) -> Result<NamespaceRollback, KubeError> {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let doing = format!("reading namespace `{namespace}`");
    let Some(found) = namespaces.get_opt(namespace).await.map_err(KubeError::api(&cluster.context, doing))? else {
        return Ok(NamespaceRollback::Missing);
    };
    if found.metadata.deletion_timestamp.is_some() {
        return Ok(NamespaceRollback::Missing);
    }
    if !created_for(&found.metadata, plan) {
        return Ok(NamespaceRollback::NotCreated);
    }
    let left = keeping(cluster, namespace, plan).await?;
    if !left.is_empty() {
        return Ok(NamespaceRollback::InUse(named(left)));
    }
    let doing = format!("deleting namespace `{namespace}`");
    match namespaces.delete(namespace, &DeleteParams::default()).await {
        Ok(_) => Ok(NamespaceRollback::Deleted),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(NamespaceRollback::Missing),
        Err(error) => Err(KubeError::api(&cluster.context, doing)(error)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_claims_mover_created_for_the_plan_are_its_to_delete() {
        let claim = |labels: serde_json::Value, annotations: serde_json::Value| -> ObjectMeta {
            serde_json::from_value(json!({"name": "c", "labels": labels, "annotations": annotations})).unwrap()
        };
        let mine = claim(json!({MANAGED_BY.0: MANAGED_BY.1}), json!({PLAN_ANNOTATION: "p"}));
        assert!(created_for(&mine, "p"));
        assert!(!created_for(&mine, "other"), "another plan's");
        assert!(!created_for(&claim(json!({}), json!({PLAN_ANNOTATION: "p"})), "p"), "not mover's");
        assert!(!created_for(&claim(json!({MANAGED_BY.0: MANAGED_BY.1}), json!({})), "p"), "no plan");
    }

    #[test]
    fn a_namespace_is_kept_by_objects_of_others_only() {
        let meta = |value: serde_json::Value| -> ObjectMeta { serde_json::from_value(value).unwrap() };
        let mine = meta(
            json!({"name": "data", "labels": {MANAGED_BY.0: MANAGED_BY.1}, "annotations": {PLAN_ANNOTATION: "p"}}),
        );
        assert!(!keeps("PersistentVolumeClaim", &mine, "p"));
        assert!(keeps("PersistentVolumeClaim", &mine, "other"), "another plan's claim");
        assert!(keeps("Deployment", &meta(json!({"name": "web"})), "p"));
        assert!(!keeps("Pod", &meta(json!({"name": "web", "deletionTimestamp": "2026-01-01T00:00:00Z"})), "p"));
        assert!(!keeps("ConfigMap", &meta(json!({"name": "kube-root-ca.crt"})), "p"));
        assert!(keeps("Secret", &meta(json!({"name": "kube-root-ca.crt"})), "p"), "built in only as a ConfigMap");
        assert!(!keeps("ServiceAccount", &meta(json!({"name": "default"})), "p"));
    }

    #[test]
    fn a_kept_namespace_names_a_few_objects_and_counts_the_rest() {
        let objects: Vec<String> = (1..=5).map(|i| format!("Pod ns/p{i}")).collect();
        assert_eq!(named(objects[..2].to_vec()), ["Pod ns/p1", "Pod ns/p2"]);
        assert_eq!(named(objects), ["Pod ns/p1", "Pod ns/p2", "Pod ns/p3", "2 more"]);
    }
}
