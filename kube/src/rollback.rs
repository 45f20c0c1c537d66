//! A rollback's target side: a claim mover created for a plan is deleted; a claim that existed
//! before (which mover used as it was) is never touched. mover tells them apart by what it put
//! on the claims it created: its `app.kubernetes.io/managed-by` label and the plan's name in the
//! `mover.io/plan` annotation.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::api::DeleteParams;

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

/// Whether mover created `claim` for plan `plan`.
#[must_use]
pub fn created_for(claim: &PersistentVolumeClaim, plan: &str) -> bool {
    let meta = &claim.metadata;
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
    if !created_for(&claim, plan) {
        return Ok(ClaimRollback::Kept);
    }
    let doing = format!("deleting PersistentVolumeClaim `{namespace}/{name}`");
    match claims.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(ClaimRollback::Deleted),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(ClaimRollback::Missing),
        Err(error) => Err(KubeError::api(&cluster.context, doing)(error)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_claims_mover_created_for_the_plan_are_its_to_delete() {
        let claim = |labels: serde_json::Value, annotations: serde_json::Value| -> PersistentVolumeClaim {
            serde_json::from_value(json!({"metadata": {"name": "c", "labels": labels, "annotations": annotations}}))
                .unwrap()
        };
        let mine = claim(json!({MANAGED_BY.0: MANAGED_BY.1}), json!({PLAN_ANNOTATION: "p"}));
        assert!(created_for(&mine, "p"));
        assert!(!created_for(&mine, "other"), "another plan's");
        assert!(!created_for(&claim(json!({}), json!({PLAN_ANNOTATION: "p"})), "p"), "not mover's");
        assert!(!created_for(&claim(json!({MANAGED_BY.0: MANAGED_BY.1}), json!({})), "p"), "no plan");
    }
}
