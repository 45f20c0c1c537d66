//! Quiesce and unquiesce ([`KubeWorkloads`], the plan executor's [`Workloads`] for plans with
//! `clusters:`): MTC's cutover, with its record and restore rules made exact (see [`record`]).
//!
//! - Quiesce stops the workloads, in the namespaces of the plan's source claims, whose pod
//!   template mounts one of those claims: Deployments, `StatefulSets`, `ReplicaSets` that no
//!   Deployment owns, `DaemonSets`, `CronJobs`, Jobs, and `DeploymentConfigs` where the API serves
//!   `apps.openshift.io` (asked once per cluster). A workload that mounts none of them (another
//!   plan's, in the same namespace) is not touched; nor is anything mover made.
//! - It then waits until no pod that a controller runs mounts one of the claims, showing which
//!   it waits for; past the timeout it fails naming them. A pod no controller runs cannot be
//!   stopped this way: it is named, and the copy goes on with it running.
//! - Unquiesce finds what this plan quiesced (its [`record::QUIESCED_BY`] annotation) in the
//!   plan's namespaces and restores it by the rules of [`record`].

pub mod record;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use mover_plan::{Location, Observer, Plan, Sides, Workloads};
use serde_json::Value;

use crate::context::{Access, Cluster, connect};
use crate::error::KubeError;
use crate::objects::labels::MANAGED_BY;
use record::{Change, Kind};

/// How long quiesce waits for the workloads' pods to stop, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the pods are looked at while waiting.
const POLL: Duration = Duration::from_millis(500);
/// How many times a patch is tried again after a conflict (someone wrote the object between
/// mover's read and its patch).
const CONFLICT_TRIES: usize = 5;

/// Quiesces and unquiesces the workloads of plans in the source cluster.
pub struct KubeWorkloads {
    access: Access,
    contexts: Sides<Option<String>>,
    timeout: Duration,
}

impl KubeWorkloads {
    /// The workloads reached through `access`, the source side in `contexts.source`.
    #[must_use]
    pub fn new(access: Access, contexts: Sides<Option<String>>) -> Self {
        KubeWorkloads { access, contexts, timeout: DEFAULT_TIMEOUT }
    }

    /// How long quiesce waits for pods to stop.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Quiesces the workloads that mount `plan`'s source claims; returns a line for each.
    pub async fn quiesce_plan(&self, plan: &Plan, observer: &dyn Observer) -> Result<Vec<String>, KubeError> {
        let mut lines = Vec::new();
        let mut clusters: BTreeMap<Option<String>, (Cluster, Vec<Kind>)> = BTreeMap::new();
        for ((context, namespace), claims) in source_claims(plan) {
            if !clusters.contains_key(&context) {
                let cluster = connect(&self.access, context.as_deref()).await?;
                let kinds = kinds_served(&cluster).await?;
                clusters.insert(context.clone(), (cluster, kinds));
            }
            let (cluster, kinds) = &clusters[&context];
            for (kind, object) in workloads(cluster, &namespace, kinds).await? {
                let mounted = mounts(kind.pod_spec(&object), &claims);
                if mounted.is_empty() || made_by_mover(&object) || owned_by_deployment(kind, &object) {
                    continue;
                }
                let name = name_of(&object).to_owned();
                let summary =
                    patch(cluster, kind, (&namespace, &name), object, |o| Some(record::quiesce(kind, o, &plan.name)))
                        .await?;
                let (_, _, kind_name, _) = kind.names();
                lines.push(format!("{kind_name} {namespace}/{name} (mounts {}): {summary}", mounted.join(", ")));
            }
            self.wait_stopped(cluster, &namespace, &claims, observer).await?;
        }
        Ok(lines)
    }

    /// Restores what `plan` quiesced in the source cluster; returns a line for each workload.
    pub async fn unquiesce_plan(&self, plan: &Plan) -> Result<Vec<String>, KubeError> {
        let cluster = connect(&self.access, self.contexts.source.as_deref()).await?;
        let kinds = kinds_served(&cluster).await?;
        let mut namespaces: BTreeSet<String> = plan.namespaces.iter().cloned().collect();
        namespaces.extend(source_claims(plan).into_keys().map(|(_, namespace)| namespace));
        let mut lines = Vec::new();
        for namespace in namespaces {
            for (kind, object) in workloads(&cluster, &namespace, &kinds).await? {
                if record::unquiesce(kind, &object, &plan.name).is_none() {
                    continue;
                }
                let name = name_of(&object).to_owned();
                let summary =
                    patch(&cluster, kind, (&namespace, &name), object, |o| record::unquiesce(kind, o, &plan.name))
                        .await?;
                let (_, _, kind_name, _) = kind.names();
                lines.push(format!("{kind_name} {namespace}/{name}: {summary}"));
            }
        }
        Ok(lines)
    }

    /// Waits until no pod a controller runs in `namespace` mounts one of `claims`.
    async fn wait_stopped(
        &self,
        cluster: &Cluster,
        namespace: &str,
        claims: &BTreeSet<String>,
        observer: &dyn Observer,
    ) -> Result<(), KubeError> {
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
        let deadline = Instant::now() + self.timeout;
        let (mut shown, mut named) = (String::new(), BTreeSet::new());
        loop {
            let doing = format!("listing the pods of namespace `{namespace}` to see them stop");
            let listed = pods.list(&ListParams::default()).await.map_err(KubeError::api(&cluster.context, &doing))?;
            let mut running = Vec::new();
            for pod in listed.items {
                let value = serde_json::to_value(&pod).unwrap_or_default();
                let mounted = mounts(&value["spec"], claims);
                let finished = matches!(value["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
                if mounted.is_empty() || finished || made_by_mover(&value) {
                    continue;
                }
                let described = format!("{namespace}/{} (mounts {})", name_of(&value), mounted.join(", "));
                if has_controller(&value) {
                    running.push(described);
                } else if named.insert(described.clone()) {
                    observer.notice(&format!(
                        "quiesce: pod {described} has no controller to scale down, so mover cannot stop it; \
                         the final copy reads its claim while it runs (delete the pod for a consistent copy)"
                    ));
                }
            }
            if running.is_empty() {
                return Ok(());
            }
            let text = format!("quiesce: waiting for {} pod(s) to stop: {}", running.len(), running.join(", "));
            if text != shown {
                observer.notice(&text);
                shown = text;
            }
            if Instant::now() >= deadline {
                return Err(KubeError::Timeout(format!(
                    "quiesce: {} pod(s) still run in context `{}` {}s after their workloads were stopped: {}; something \
                     else starts them (an operator, a controller mover does not know): stop it, then run again",
                    running.len(),
                    cluster.context,
                    self.timeout.as_secs(),
                    running.join(", ")
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Workloads for KubeWorkloads {
    fn quiesce<'a>(&'a self, plan: &'a Plan, observer: &'a dyn Observer) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move { self.quiesce_plan(plan, observer).await.map_err(anyhow::Error::new) })
    }

    fn unquiesce<'a>(
        &'a self,
        plan: &'a Plan,
        _observer: &'a dyn Observer,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move { self.unquiesce_plan(plan).await.map_err(anyhow::Error::new) })
    }
}

/// The plan's source claims, by (context, namespace).
fn source_claims(plan: &Plan) -> BTreeMap<(Option<String>, String), BTreeSet<String>> {
    let mut claims: BTreeMap<_, BTreeSet<String>> = BTreeMap::new();
    for volume in &plan.volumes {
        if let Location::Kube(claim) = &volume.source
            && let Some(name) = &claim.name
        {
            claims.entry((claim.context.clone(), claim.namespace.clone())).or_default().insert(name.clone());
        }
    }
    claims
}

/// The claims of `claims` that a pod spec mounts, in order.
fn mounts(pod_spec: &Value, claims: &BTreeSet<String>) -> Vec<String> {
    let volumes = pod_spec["volumes"].as_array().into_iter().flatten();
    let names = volumes.filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str());
    let mounted: BTreeSet<String> = names.filter(|n| claims.contains(*n)).map(str::to_owned).collect();
    mounted.into_iter().collect()
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn made_by_mover(object: &Value) -> bool {
    object["metadata"]["labels"][MANAGED_BY.0] == MANAGED_BY.1
}

fn owner_kinds(object: &Value) -> impl Iterator<Item = &Value> {
    object["metadata"]["ownerReferences"].as_array().into_iter().flatten()
}

/// A `ReplicaSet` a Deployment owns is stopped through its Deployment (whose controller would
/// scale it back).
fn owned_by_deployment(kind: Kind, object: &Value) -> bool {
    kind == Kind::ReplicaSet && owner_kinds(object).any(|owner| owner["kind"] == "Deployment")
}

/// A `ReplicaSet` a Deployment owns, or a Job a `CronJob` owns: its pod template is its owner's.
pub(crate) fn templated_by_owner(kind: Kind, object: &Value) -> bool {
    owned_by_deployment(kind, object)
        || (kind == Kind::Job && owner_kinds(object).any(|owner| owner["kind"] == "CronJob"))
}

fn has_controller(pod: &Value) -> bool {
    owner_kinds(pod).any(|owner| owner["controller"] == true)
}

/// The kinds this cluster serves: `DeploymentConfigs` only where `apps.openshift.io` is.
pub(crate) async fn kinds_served(cluster: &Cluster) -> Result<Vec<Kind>, KubeError> {
    let groups = cluster
        .client
        .list_api_groups()
        .await
        .map_err(KubeError::api(&cluster.context, "listing the API groups (for DeploymentConfigs)"))?;
    let openshift = groups.groups.iter().any(|g| g.name == "apps.openshift.io");
    Ok(Kind::ALL.into_iter().filter(|kind| openshift || *kind != Kind::DeploymentConfig).collect())
}

fn api(cluster: &Cluster, namespace: &str, kind: Kind) -> Api<DynamicObject> {
    Api::namespaced_with(cluster.client.clone(), namespace, &kind.resource())
}

/// Every workload of `kinds` in `namespace`, as JSON.
pub(crate) async fn workloads(
    cluster: &Cluster,
    namespace: &str,
    kinds: &[Kind],
) -> Result<Vec<(Kind, Value)>, KubeError> {
    let mut found = Vec::new();
    for &kind in kinds {
        let (_, _, _, plural) = kind.names();
        let doing = format!("listing the {plural} of namespace `{namespace}`");
        let listed = api(cluster, namespace, kind)
            .list(&ListParams::default())
            .await
            .map_err(KubeError::api(&cluster.context, doing))?;
        found.extend(listed.items.iter().map(|object| (kind, serde_json::to_value(object).unwrap_or_default())));
    }
    Ok(found)
}

/// Sends the merge patch `change` makes of `object`; on a conflict (the object changed since it
/// was read) reads it again and asks `change` again. Returns the change's summary.
async fn patch(
    cluster: &Cluster,
    kind: Kind,
    (namespace, name): (&str, &str),
    mut object: Value,
    change: impl Fn(&Value) -> Option<Change>,
) -> Result<String, KubeError> {
    let api = api(cluster, namespace, kind);
    let (_, _, kind_name, _) = kind.names();
    let doing = format!("patching {kind_name} `{namespace}/{name}`");
    for _ in 0..CONFLICT_TRIES {
        let Some(Change { patch, summary }) = change(&object) else {
            return Ok("changed by someone else meanwhile; left as it is".to_owned());
        };
        let Some(patch) = patch else { return Ok(summary) };
        match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(summary),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Read again by listing (the rules grant list and patch only).
                let one = ListParams::default().fields(&format!("metadata.name={name}"));
                let read = api.list(&one).await.map_err(KubeError::api(&cluster.context, &doing))?;
                let Some(read) = read.items.first() else {
                    return Ok("deleted meanwhile".to_owned());
                };
                object = serde_json::to_value(read).unwrap_or_default();
            }
            Err(error) => return Err(KubeError::api(&cluster.context, doing)(error)),
        }
    }
    Err(KubeError::Timeout(format!(
        "{doing} (context `{}`): it kept changing between mover's read and its patch ({CONFLICT_TRIES} tries)",
        cluster.context
    )))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_plans_claims_count_and_mover_and_deployments_replica_sets_are_left_alone() {
        let claims: BTreeSet<String> = ["data".to_owned(), "media".to_owned()].into();
        let spec = json!({"volumes": [{"name": "a", "persistentVolumeClaim": {"claimName": "other"}},
            {"name": "b", "persistentVolumeClaim": {"claimName": "media"}}, {"name": "c", "emptyDir": {}}]});
        assert_eq!(mounts(&spec, &claims), ["media"]);
        assert!(mounts(&json!({}), &claims).is_empty());
        let owned = json!({"metadata": {"ownerReferences": [{"kind": "Deployment", "controller": true}]}});
        assert!(owned_by_deployment(Kind::ReplicaSet, &owned));
        assert!(!owned_by_deployment(Kind::ReplicaSet, &json!({"metadata": {}})));
        assert!(has_controller(&owned) && !has_controller(&json!({"metadata": {}})));
        assert!(made_by_mover(&json!({"metadata": {"labels": {MANAGED_BY.0: MANAGED_BY.1}}})));
        let cron = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}});
        assert_eq!(mounts(Kind::CronJob.pod_spec(&cron), &claims), ["media"]);
    }
}
