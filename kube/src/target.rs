//! Target claims: made from the source claim, on the target cluster, never changed once there.
//!
//! - The storage class is mapped: a `storageClassMap` entry wins; else the class of the same
//!   name if the target has it; else a class with the same provisioner; else the target's
//!   default, with a warning. Anything else is an error that names the classes there are.
//! - Access modes are kept, or overridden.
//! - The size is the largest of the source's request, its volume's capacity and the measured use
//!   plus a margin (an agent reports use; a file system needs headroom over its contents).
//! - Binding annotations, `volumeName`, `selector` and `dataSource` are dropped: they tie a claim
//!   to the source cluster's volumes.
//! - A claim that already exists is used as it is: never resized, never deleted.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
pub use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{ListParams, PostParams};

use crate::claims::SourceClaim;
use crate::context::Cluster;
use crate::error::KubeError;
use crate::objects::labels::Migration;
use crate::quantity;

/// The annotation that marks a cluster's default class.
const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// Annotations that bind a claim to its cluster's volumes or record its history there.
const DROPPED_ANNOTATIONS: [&str; 7] = [
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
    "volume.beta.kubernetes.io/storage-class",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// How a target claim is shaped, beyond the source's.
#[derive(Debug, Clone, Default)]
pub struct TargetRules {
    /// Source class -> target class.
    pub storage_class_map: BTreeMap<String, String>,
    /// This claim's class, over any mapping.
    pub storage_class: Option<String>,
    /// This claim's access modes, over the source's.
    pub access_modes: Option<Vec<String>>,
    /// Labels the created claim gets (the migration's), beside the source's own.
    pub labels: BTreeMap<String, String>,
    /// Annotations the created claim gets (the plan's name, which a rollback looks for), beside
    /// the source's own.
    pub annotations: BTreeMap<String, String>,
}

/// The class chosen for a target claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassChoice {
    /// The class; `None` when the source had none and the target has no default either.
    pub name: Option<String>,
    /// Why a class other than the source's was chosen, when it was not asked for.
    pub warning: Option<String>,
}

/// A target claim, found or created.
#[derive(Debug, Clone)]
pub struct TargetClaim {
    /// The claim as the server has it.
    pub claim: PersistentVolumeClaim,
    /// True when mover created it in this run.
    pub created: bool,
    /// What a user should know (a class fallback, an existing claim smaller than the data).
    pub warnings: Vec<String>,
}

/// Chooses the target class for a source claim of class `source` (with `provisioner`), among
/// `classes` of the target cluster.
pub fn choose_class(
    source: Option<&str>,
    provisioner: Option<&str>,
    classes: &[StorageClass],
    rules: &TargetRules,
) -> Result<ClassChoice, KubeError> {
    let names: Vec<&str> = classes.iter().filter_map(|c| c.metadata.name.as_deref()).collect();
    let listed = || if names.is_empty() { "none".to_owned() } else { names.join(", ") };
    let asked = rules
        .storage_class
        .as_deref()
        .or_else(|| source.and_then(|s| rules.storage_class_map.get(s)).map(String::as_str));
    if let Some(asked) = asked {
        if names.contains(&asked) {
            return Ok(ClassChoice { name: Some(asked.to_owned()), warning: None });
        }
        return Err(KubeError::Config(format!(
            "the plan asks for storage class `{asked}`, which the target cluster does not have (it has: {})",
            listed()
        )));
    }
    if let Some(source) = source
        && names.contains(&source)
    {
        return Ok(ClassChoice { name: Some(source.to_owned()), warning: None });
    }
    if let Some(provisioner) = provisioner
        && let Some(same) = classes.iter().find(|c| c.provisioner == provisioner)
    {
        let name = same.metadata.name.clone();
        let warning = format!(
            "the target has no storage class `{}`; using `{}`, which has the same provisioner `{provisioner}`",
            source.unwrap_or("(none)"),
            name.as_deref().unwrap_or_default()
        );
        return Ok(ClassChoice { name, warning: Some(warning) });
    }
    let default = classes
        .iter()
        .find(|c| c.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS)).is_some_and(|v| v == "true"));
    match (default, source) {
        (Some(default), _) => {
            let name = default.metadata.name.clone();
            let warning = source.map(|source| {
                format!(
                    "the target has no storage class `{source}` and none with its provisioner; using the default class `{}` \
                     (a `storageClassMap` entry chooses another)",
                    name.as_deref().unwrap_or_default()
                )
            });
            Ok(ClassChoice { name, warning })
        }
        (None, None) => Ok(ClassChoice { name: None, warning: None }),
        (None, Some(source)) => Err(KubeError::Config(format!(
            "the target cluster has no storage class `{source}`, none with provisioner `{}` and no default class (it \
             has: {}); map the class with a `storageClassMap` entry",
            provisioner.unwrap_or("(unknown)"),
            listed()
        ))),
    }
}

/// The storage classes of `cluster`.
pub async fn storage_classes(cluster: &Cluster) -> Result<Vec<StorageClass>, KubeError> {
    let classes: Api<StorageClass> = Api::all(cluster.client.clone());
    let listed = classes.list(&ListParams::default()).await;
    Ok(listed.map_err(KubeError::api(&cluster.context, "listing storage classes"))?.items)
}

/// The provisioner of `source`'s volume: the claim's provisioner annotation, else its CSI driver.
#[must_use]
pub fn source_provisioner(source: &SourceClaim) -> Option<&str> {
    source
        .claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| {
            a.get("volume.kubernetes.io/storage-provisioner")
                .or_else(|| a.get("volume.beta.kubernetes.io/storage-provisioner"))
        })
        .map(String::as_str)
        .or_else(|| source.volume.spec.as_ref().and_then(|s| s.csi.as_ref()).map(|c| c.driver.as_str()))
}

/// The class the target claim of `source` gets among the target's `classes` ([`choose_class`]
/// with the source claim's class and provisioner).
pub fn class_for(
    source: &SourceClaim,
    classes: &[StorageClass],
    rules: &TargetRules,
) -> Result<ClassChoice, KubeError> {
    let source_class = source.claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref());
    choose_class(source_class, source_provisioner(source), classes, rules)
}

/// The target size in bytes: the largest of the request, the volume's capacity and `used` plus
/// a tenth (at least 64 MiB) of headroom, rounded up to a MiB.
#[must_use]
pub fn target_bytes(source: &SourceClaim, used: Option<u64>) -> u64 {
    const MIB: u64 = 1 << 20;
    let request = source
        .claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(quantity::bytes)
        .unwrap_or(0);
    let capacity = source
        .volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(quantity::bytes)
        .unwrap_or(0);
    let needed = used.map_or(0, |used| used + (used / 10).max(64 * MIB));
    request.max(capacity).max(needed).div_ceil(MIB) * MIB
}

fn mebibytes(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// The claim to create in `namespace` as `name` for `source`.
#[must_use]
pub fn target_claim(
    source: &SourceClaim,
    namespace: &str,
    name: &str,
    class: Option<String>,
    bytes: u64,
    rules: &TargetRules,
) -> PersistentVolumeClaim {
    let from = &source.claim;
    let spec = from.spec.clone().unwrap_or_default();
    let mut annotations = from.metadata.annotations.clone().unwrap_or_default();
    annotations.retain(|key, _| !DROPPED_ANNOTATIONS.contains(&key.as_str()));
    annotations.extend(rules.annotations.clone());
    let mut labels = from.metadata.labels.clone().unwrap_or_default();
    labels.extend(rules.labels.clone());
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: rules.access_modes.clone().or(spec.access_modes),
            storage_class_name: class,
            volume_mode: spec.volume_mode,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), quantity::of_bytes(bytes))])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// Creates namespace `namespace` on the target when it is missing (a migration recreates the
/// application's namespaces, as MTC does), labelled and annotated as `migration`'s (so that a
/// rollback of its plan knows it made it); never changes one. True when created.
pub async fn ensure_namespace(cluster: &Cluster, namespace: &str, migration: &Migration) -> Result<bool, KubeError> {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let doing = format!("creating namespace `{namespace}`");
    if namespaces.get_opt(namespace).await.map_err(KubeError::api(&cluster.context, &doing))?.is_some() {
        return Ok(false);
    }
    let wanted = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.to_owned()),
            labels: Some(migration.labels()),
            annotations: Some(migration.annotations()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match namespaces.create(&PostParams::default(), &wanted).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(KubeError::api(&cluster.context, doing)(error)),
    }
}

/// Finds claim `namespace/name` on `cluster`, or creates it for `source` by the rules above.
pub async fn ensure(
    cluster: &Cluster,
    source: &SourceClaim,
    (namespace, name): (&str, &str),
    used: Option<u64>,
    rules: &TargetRules,
) -> Result<TargetClaim, KubeError> {
    let context = &cluster.context;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), namespace);
    let bytes = target_bytes(source, used);
    if let Some(claim) = claims
        .get_opt(name)
        .await
        .map_err(KubeError::api(context, format!("reading PersistentVolumeClaim `{namespace}/{name}`")))?
    {
        let requested = claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(quantity::bytes);
        let mut warnings = Vec::new();
        if let (Some(requested), Some(used)) = (requested, used)
            && requested < used
        {
            warnings.push(format!(
                "the existing target claim `{namespace}/{name}` asks for {} but the source holds {}; mover does not resize \
                 claims it did not create",
                mebibytes(requested),
                mebibytes(used)
            ));
        }
        return Ok(TargetClaim { claim, created: false, warnings });
    }
    let classes = storage_classes(cluster).await?;
    let choice = class_for(source, &classes, rules)?;
    let wanted = target_claim(source, namespace, name, choice.name, bytes, rules);
    let claim = claims
        .create(&PostParams::default(), &wanted)
        .await
        .map_err(KubeError::api(context, format!("creating PersistentVolumeClaim `{namespace}/{name}`")))?;
    Ok(TargetClaim { claim, created: true, warnings: choice.warning.into_iter().collect() })
}

#[cfg(test)]
mod tests;
