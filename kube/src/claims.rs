//! A source claim's bytes, found: PVC → PV → the running pod that mounts it → its node.
//!
//! The node comes from the running consumer pod, never from the
//! `volume.kubernetes.io/selected-node` annotation, which is set once at provisioning and goes
//! stale (k8s-anchors §1b). The seed's prerequisites are checked here and refused with what to do:
//! a claim that is not Bound, a PV that is Failed or Released, a block-mode volume, and a
//! `ReadWriteOncePod` claim in use under the pod strategy.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::ListParams;

use crate::context::Cluster;
use crate::error::KubeError;
pub use crate::objects::Strategy;

/// A pod that mounts the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// The pod's name.
    pub pod: String,
    /// Its UID (the kubelet's directory name).
    pub uid: String,
    /// Its node.
    pub node: String,
    /// The name of the claim's volume in the pod.
    pub volume: String,
}

/// A source claim, checked.
#[derive(Debug, Clone)]
pub struct SourceClaim {
    /// The claim.
    pub claim: PersistentVolumeClaim,
    /// Its bound volume.
    pub volume: PersistentVolume,
    /// Running pods that mount it.
    pub consumers: Vec<Consumer>,
}

/// Why a claim cannot be copied as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// No such claim.
    #[error(
        "PersistentVolumeClaim `{claim}` does not exist in context `{context}` (`kubectl -n {namespace} get pvc` lists what there is)"
    )]
    NotFound {
        /// `namespace/name`.
        claim: String,
        /// Its namespace.
        namespace: String,
        /// The context.
        context: String,
    },
    /// Not Bound.
    #[error(
        "PersistentVolumeClaim `{claim}` is {phase}, not Bound: mover copies bound claims only (a prerequisite, as in MTC). \
         `kubectl -n {namespace} describe pvc {name}` shows why it is not bound; bind it, or leave it out of the migration"
    )]
    NotBound {
        /// `namespace/name`.
        claim: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its phase.
        phase: String,
    },
    /// The claim names a PV that is not there, or is not usable.
    #[error(
        "PersistentVolumeClaim `{claim}` is bound to PersistentVolume `{volume}`, which is {state}: mover copies claims \
         whose volume is Bound (a prerequisite, as in MTC). `kubectl describe pv {volume}` shows what happened to it"
    )]
    Volume {
        /// `namespace/name`.
        claim: String,
        /// The PV's name.
        volume: String,
        /// "missing", "Failed", "Released".
        state: String,
    },
    /// Block mode.
    #[error(
        "PersistentVolumeClaim `{claim}` is a block-mode volume (`volumeMode: Block`): mover copies file systems, and \
         block volumes are not supported yet; leave it out of the migration"
    )]
    Block {
        /// `namespace/name`.
        claim: String,
    },
    /// RWOP in use under the pod strategy.
    #[error(
        "PersistentVolumeClaim `{claim}` is ReadWriteOncePod and pod `{pod}` uses it, so a transfer pod cannot mount it. \
         Use the node strategy (its agent reaches the mounted volume without a second mount), or stop `{pod}` first"
    )]
    InUseOncePod {
        /// `namespace/name`.
        claim: String,
        /// The consumer.
        pod: String,
    },
}

/// Access mode of a claim.
fn has_mode(claim: &PersistentVolumeClaim, mode: &str) -> bool {
    claim.spec.as_ref().and_then(|s| s.access_modes.as_ref()).is_some_and(|m| m.iter().any(|x| x == mode))
}

impl SourceClaim {
    /// `namespace/name`.
    #[must_use]
    pub fn display_name(&self) -> String {
        display_name(&self.claim)
    }

    /// The node a transfer pod must run on: the consumer's, for claims one node mounts at a time
    /// (anything but `ReadWriteMany` and `ReadOnlyMany`).
    #[must_use]
    pub fn pin(&self) -> Option<&str> {
        let shared = has_mode(&self.claim, "ReadWriteMany") || has_mode(&self.claim, "ReadOnlyMany");
        if shared { None } else { self.consumers.first().map(|c| c.node.as_str()) }
    }

    /// Checks the seed's prerequisites for `strategy`.
    pub fn check(&self, strategy: Strategy) -> Result<(), ClaimError> {
        let claim = self.display_name();
        if self.claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
            return Err(ClaimError::Block { claim });
        }
        let phase = self.volume.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if matches!(phase.as_str(), "Failed" | "Released" | "Pending") {
            let volume = self.volume.metadata.name.clone().unwrap_or_default();
            return Err(ClaimError::Volume { claim, volume, state: phase });
        }
        // The node strategy reaches a claim where it is mounted (by a holder pod when unused).
        if strategy == Strategy::Pod
            && has_mode(&self.claim, "ReadWriteOncePod")
            && let Some(consumer) = self.consumers.first()
        {
            return Err(ClaimError::InUseOncePod { claim, pod: consumer.pod.clone() });
        }
        Ok(())
    }
}

/// `namespace/name` of an object.
pub(crate) fn display_name(claim: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        claim.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Reads claim `namespace/name` of `cluster`, its volume and its consumers, and checks them for
/// `strategy`.
pub async fn find_source(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    strategy: Strategy,
) -> Result<SourceClaim, KubeError> {
    let context = &cluster.context;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), namespace);
    let claim = claims
        .get_opt(name)
        .await
        .map_err(KubeError::api(context, format!("reading PersistentVolumeClaim `{namespace}/{name}`")))?
        .ok_or_else(|| ClaimError::NotFound {
            claim: format!("{namespace}/{name}"),
            namespace: namespace.to_owned(),
            context: context.clone(),
        })?;
    let source = with_volume(cluster, claim).await?;
    let source = SourceClaim { consumers: consumers(cluster, &source.claim).await?, ..source };
    source.check(strategy)?;
    Ok(source)
}

/// The claims of `namespace`, by name: those Bound, and the others with their phase.
pub async fn claims_in(cluster: &Cluster, namespace: &str) -> Result<(Vec<String>, Vec<(String, String)>), KubeError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), namespace);
    let list = claims.list(&ListParams::default()).await.map_err(KubeError::api(
        &cluster.context,
        format!("listing the PersistentVolumeClaims of namespace `{namespace}`"),
    ))?;
    let (mut bound, mut other) = (Vec::new(), Vec::new());
    for claim in list.items {
        let name = claim.metadata.name.clone().unwrap_or_default();
        match claim.status.and_then(|s| s.phase).unwrap_or_else(|| "Pending".to_owned()) {
            phase if phase == "Bound" => bound.push(name),
            phase => other.push((name, phase)),
        }
    }
    bound.sort();
    Ok((bound, other))
}

/// The claim's bound volume, or why it has none.
async fn with_volume(cluster: &Cluster, claim: PersistentVolumeClaim) -> Result<SourceClaim, KubeError> {
    let display = display_name(&claim);
    let phase = claim.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".to_owned());
    let bound_to = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|_| phase == "Bound");
    let Some(volume_name) = bound_to else {
        return Err(ClaimError::NotBound {
            claim: display,
            namespace: claim.metadata.namespace.clone().unwrap_or_default(),
            name: claim.metadata.name.clone().unwrap_or_default(),
            phase,
        }
        .into());
    };
    let volumes: Api<PersistentVolume> = Api::all(cluster.client.clone());
    let volume = volumes
        .get_opt(&volume_name)
        .await
        .map_err(KubeError::api(&cluster.context, format!("reading PersistentVolume `{volume_name}`")))?
        .ok_or_else(|| ClaimError::Volume { claim: display, volume: volume_name, state: "missing".to_owned() })?;
    Ok(SourceClaim { claim, volume, consumers: Vec::new() })
}

/// Running pods of the claim's namespace that mount it, with their nodes.
pub(crate) async fn consumers(cluster: &Cluster, claim: &PersistentVolumeClaim) -> Result<Vec<Consumer>, KubeError> {
    let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let running = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
        .map_err(KubeError::api(&cluster.context, format!("listing the running pods of namespace `{namespace}`")))?;
    Ok(running.items.iter().filter_map(|pod| consumer_of(pod, name)).collect())
}

/// The pod as a consumer of claim `name`, if it mounts it and has a node.
pub(crate) fn consumer_of(pod: &Pod, name: &str) -> Option<Consumer> {
    let spec = pod.spec.as_ref()?;
    let volume = spec
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.persistent_volume_claim.as_ref().is_some_and(|source| source.claim_name == name))?;
    Some(Consumer {
        pod: pod.metadata.name.clone()?,
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: spec.node_name.clone()?,
        volume: volume.name.clone(),
    })
}

#[cfg(test)]
mod tests;
