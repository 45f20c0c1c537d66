//! What a cluster plan's preflight reads from the clusters, before anything is created, and the
//! rules that judge it: the Pod Security level each namespace enforces against the level of the
//! pods mover would run there (computed from the objects mover builds), a namespace's
//! `ResourceQuotas` against the claims mover would create there, whether a hook's service account
//! exists, and the node agents' image.

pub mod pod_security;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, PodSpec, ResourceQuota, ServiceAccount};
use kube::Api;
use kube::api::ListParams;

use crate::context::Cluster;
use crate::error::KubeError;
use crate::objects::hook_job::{HookJobSpec, HookProgram, hook_job};
use crate::objects::transfer::{End, TransferPod, transfer_pod};
use crate::objects::{AGENT_NAME, DEFAULT_PORT, HolderPod, Migration, NodeAgent, Strategy, holder_pod, node_agent};
use crate::quantity;
pub use pod_security::{ENFORCE_LABEL, Enforced, Level, needed_level};

/// Namespace `name` of `cluster`, if it exists.
pub async fn namespace(cluster: &Cluster, name: &str) -> Result<Option<Namespace>, KubeError> {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    namespaces.get_opt(name).await.map_err(KubeError::api(&cluster.context, format!("reading namespace `{name}`")))
}

/// Claim `namespace/name` of `cluster`, if it exists.
pub async fn claim(cluster: &Cluster, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>, KubeError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), namespace);
    let doing = format!("reading PersistentVolumeClaim `{namespace}/{name}`");
    claims.get_opt(name).await.map_err(KubeError::api(&cluster.context, doing))
}

/// The `ResourceQuotas` of `namespace`.
pub async fn quotas(cluster: &Cluster, namespace: &str) -> Result<Vec<ResourceQuota>, KubeError> {
    let quotas: Api<ResourceQuota> = Api::namespaced(cluster.client.clone(), namespace);
    let doing = format!("listing the ResourceQuotas of namespace `{namespace}`");
    Ok(quotas.list(&ListParams::default()).await.map_err(KubeError::api(&cluster.context, doing))?.items)
}

/// Whether service account `namespace/name` exists.
pub async fn service_account_exists(cluster: &Cluster, namespace: &str, name: &str) -> Result<bool, KubeError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), namespace);
    let doing = format!("reading ServiceAccount `{namespace}/{name}`");
    Ok(accounts.get_opt(name).await.map_err(KubeError::api(&cluster.context, doing))?.is_some())
}

/// The image of the node agents' `DaemonSet` in `namespace`; `None` when it is not installed.
pub async fn node_agent_image(cluster: &Cluster, namespace: &str) -> Result<Option<String>, KubeError> {
    let daemon_sets: Api<DaemonSet> = Api::namespaced(cluster.client.clone(), namespace);
    let doing = format!("reading DaemonSet `{namespace}/{AGENT_NAME}`");
    let found = daemon_sets.get_opt(AGENT_NAME).await.map_err(KubeError::api(&cluster.context, doing))?;
    Ok(found.map(|daemon_set| {
        let spec = daemon_set.spec.and_then(|spec| spec.template.spec).unwrap_or_default();
        let agent = spec.containers.iter().find(|c| c.name == AGENT_NAME).or(spec.containers.first());
        agent.and_then(|container| container.image.clone()).unwrap_or_default()
    }))
}

/// Stand-ins for the names of objects that are not made yet: levels do not depend on them.
fn sample_migration() -> Migration {
    Migration::new("preflight", "preflight").expect("a label value")
}

fn pod_spec_of(pod: k8s_openapi::api::core::v1::Pod) -> PodSpec {
    pod.spec.unwrap_or_default()
}

/// The level the pods of `strategy` need in a claim's namespace: transfer pods (both ends) for
/// the pod strategy, holder pods for the node strategy.
#[must_use]
pub fn claim_pods_level(strategy: Strategy, image: &str) -> Level {
    let migration = sample_migration();
    let levels = [End::Source, End::Target].map(|end| {
        let spec = match strategy {
            Strategy::Pod => pod_spec_of(transfer_pod(&TransferPod {
                migration: &migration,
                namespace: "claims",
                claim: "claim",
                end,
                node: None,
                image,
                identity_secret: "identity",
                port: DEFAULT_PORT,
                owner: None,
            })),
            Strategy::Node => pod_spec_of(holder_pod(&HolderPod {
                migration: &migration,
                namespace: "claims",
                claim: "claim",
                end,
                image,
            })),
        };
        needed_level(&spec)
    });
    levels.into_iter().max().unwrap_or(Level::Privileged)
}

/// The level the node agents' pods need in their namespace.
#[must_use]
pub fn node_agents_level(image: &str) -> Level {
    let daemon_set = node_agent(&NodeAgent {
        namespace: "agents",
        image,
        kubelet_root: crate::objects::DEFAULT_KUBELET_ROOT,
        port: DEFAULT_PORT,
    });
    needed_level(&daemon_set.spec.and_then(|spec| spec.template.spec).unwrap_or_default())
}

/// The level a hook Job's pod needs in its execution namespace (`playbook`: a playbook hook,
/// whose playbook is a mounted `ConfigMap`; else a command).
#[must_use]
pub fn hook_job_level(playbook: bool, image: &str, service_account: Option<&str>) -> Level {
    let migration = sample_migration();
    let program = if playbook { HookProgram::Playbook } else { HookProgram::Command(&[]) };
    let spec = HookJobSpec {
        migration: &migration,
        hook: "hook",
        phase: "PreBackup",
        namespace: "hooks",
        image,
        service_account,
        program,
        env: &[],
        deadline: Duration::from_secs(1),
    };
    let job = hook_job(&spec, "hook");
    needed_level(&job.spec.and_then(|spec| spec.template.spec).unwrap_or_default())
}

/// A claim mover would create in a namespace: its class and requested bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClaim {
    /// Its storage class (`None`: none, the target having no default class either).
    pub class: Option<String>,
    /// Its request.
    pub bytes: u64,
}

/// A quota without room for the claims mover would create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The `ResourceQuota`'s name.
    pub quota: String,
    /// The resource (`requests.storage`, `persistentvolumeclaims`, or a class's).
    pub resource: String,
    /// Its `hard` limit, as written.
    pub hard: String,
    /// What is used, as written (`0` when the quota's status says nothing yet).
    pub used: String,
    /// What the new claims need of it, as a quantity.
    pub needed: String,
    /// How much more `hard` must be, as a quantity.
    pub missing: String,
}

/// The suffix of a class's quota resources: `<class>.storageclass.storage.k8s.io/<resource>`.
const CLASS_QUOTA: &str = ".storageclass.storage.k8s.io/";

/// What `claims` take of quota resource `resource`: bytes (storage) or a count (claims);
/// `None` for a resource claims do not count against.
fn taken(resource: &str, claims: &[NewClaim]) -> Option<(u64, bool)> {
    let (class, what) = match resource.split_once(CLASS_QUOTA) {
        Some((class, what)) => (Some(class), what),
        None => (None, resource),
    };
    let counted = claims.iter().filter(|claim| class.is_none_or(|class| claim.class.as_deref() == Some(class)));
    match what {
        "requests.storage" => Some((counted.map(|claim| claim.bytes).sum(), true)),
        "persistentvolumeclaims" => Some((counted.count() as u64, false)),
        _ => None,
    }
}

/// The quotas of `quotas` that lack room (hard − used) for `claims`.
#[must_use]
pub fn quota_shortfalls(quotas: &[ResourceQuota], claims: &[NewClaim]) -> Vec<Shortfall> {
    let mut shortfalls = Vec::new();
    for quota in quotas {
        let empty = BTreeMap::new();
        let hard = quota.spec.as_ref().and_then(|spec| spec.hard.as_ref()).unwrap_or(&empty);
        let used = quota.status.as_ref().and_then(|status| status.used.as_ref()).unwrap_or(&empty);
        for (resource, limit) in hard {
            let Some((needed, storage)) = taken(resource, claims) else { continue };
            let Some(limit_value) = quantity::bytes(limit) else { continue };
            let used_value = used.get(resource).and_then(quantity::bytes).unwrap_or(0);
            let room = limit_value.saturating_sub(used_value);
            if needed > room {
                let shown = |value: u64| if storage { quantity::of_bytes(value).0 } else { value.to_string() };
                shortfalls.push(Shortfall {
                    quota: quota.metadata.name.clone().unwrap_or_default(),
                    resource: resource.clone(),
                    hard: limit.0.clone(),
                    used: used.get(resource).map_or_else(|| "0".to_owned(), |q| q.0.clone()),
                    needed: shown(needed),
                    missing: shown(needed - room),
                });
            }
        }
    }
    shortfalls
}

#[cfg(test)]
mod tests;
