//! The table of resources the simulated server serves: one row per (group, version, resource,
//! kind, scope), each with the k8s-openapi type its bodies are decoded into (or the `OpenShift`
//! type of `openshift.rs`, served only by an `OpenShift`-flavoured cluster). Every verb is generic
//! over this table; nothing is written per kind except defaulting (`store::default_object`) and the
//! controllers.

use k8s_openapi::api::{apps, batch, core, rbac, storage};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Flavor;
use super::openshift;

/// One resource type.
#[derive(Debug)]
pub struct ResourceType {
    /// API group; `""` for core.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// The plural lower-case resource name in URLs and RBAC rules.
    pub plural: &'static str,
    /// The object kind.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether the type has a `status` subresource (writes to the main resource keep the stored
    /// status, writes to `/status` keep everything else).
    pub has_status: bool,
    /// Decodes a body into the k8s-openapi type and encodes it back (what survives is what the
    /// type knows).
    pub roundtrip: fn(&Value) -> Result<Value, serde_json::Error>,
    /// Served only by `OpenShift`-flavoured clusters.
    pub openshift: bool,
}

impl ResourceType {
    /// `apiVersion` of its objects: `v1`, `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The name errors use: `pods`, `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}.{}", self.plural, self.group) }
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(body: &Value) -> Result<Value, serde_json::Error> {
    let typed: T = serde_json::from_value(body.clone())?;
    serde_json::to_value(typed)
}

macro_rules! row {
    ($group:literal, $version:literal, $plural:literal, $kind:literal, $namespaced:literal, $status:literal, $ty:ty) => {
        ResourceType {
            group: $group,
            version: $version,
            plural: $plural,
            kind: $kind,
            namespaced: $namespaced,
            has_status: $status,
            roundtrip: roundtrip::<$ty>,
            openshift: false,
        }
    };
    (openshift $group:literal, $version:literal, $plural:literal, $kind:literal, $status:literal, $ty:ty) => {
        ResourceType { openshift: true, ..row!($group, $version, $plural, $kind, true, $status, $ty) }
    };
}

/// Every resource served.
pub static RESOURCES: &[ResourceType] = &[
    row!("", "v1", "namespaces", "Namespace", false, true, core::v1::Namespace),
    row!("", "v1", "nodes", "Node", false, true, core::v1::Node),
    row!("", "v1", "pods", "Pod", true, true, core::v1::Pod),
    row!("", "v1", "services", "Service", true, true, core::v1::Service),
    row!("", "v1", "secrets", "Secret", true, false, core::v1::Secret),
    row!("", "v1", "configmaps", "ConfigMap", true, false, core::v1::ConfigMap),
    row!("", "v1", "serviceaccounts", "ServiceAccount", true, false, core::v1::ServiceAccount),
    row!("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, true, core::v1::PersistentVolumeClaim),
    row!("", "v1", "persistentvolumes", "PersistentVolume", false, true, core::v1::PersistentVolume),
    row!("", "v1", "resourcequotas", "ResourceQuota", true, true, core::v1::ResourceQuota),
    row!("", "v1", "events", "Event", true, false, core::v1::Event),
    row!("storage.k8s.io", "v1", "storageclasses", "StorageClass", false, false, storage::v1::StorageClass),
    row!("apps", "v1", "daemonsets", "DaemonSet", true, true, apps::v1::DaemonSet),
    row!("apps", "v1", "deployments", "Deployment", true, true, apps::v1::Deployment),
    row!("apps", "v1", "statefulsets", "StatefulSet", true, true, apps::v1::StatefulSet),
    row!("apps", "v1", "replicasets", "ReplicaSet", true, true, apps::v1::ReplicaSet),
    row!("batch", "v1", "jobs", "Job", true, true, batch::v1::Job),
    row!("batch", "v1", "cronjobs", "CronJob", true, true, batch::v1::CronJob),
    row!("rbac.authorization.k8s.io", "v1", "roles", "Role", true, false, rbac::v1::Role),
    row!("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, false, rbac::v1::RoleBinding),
    row!("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, false, rbac::v1::ClusterRole),
    row!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
        rbac::v1::ClusterRoleBinding
    ),
    row!(openshift "route.openshift.io", "v1", "routes", "Route", true, openshift::Route),
    row!(openshift "image.openshift.io", "v1", "imagestreams", "ImageStream", true, openshift::ImageStream),
    row!(openshift "apps.openshift.io", "v1", "deploymentconfigs", "DeploymentConfig", true, openshift::DeploymentConfig),
];

/// The rows a cluster of `flavor` serves.
pub fn served(flavor: Flavor) -> impl Iterator<Item = &'static ResourceType> {
    RESOURCES.iter().filter(move |r| !r.openshift || flavor == Flavor::OpenShift)
}

/// The row for `group`/`version`/`plural`, if a cluster of `flavor` serves it.
pub fn find(flavor: Flavor, group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    served(flavor).find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The row for a kind (kinds are unique across the table).
pub fn by_kind(kind: &str) -> &'static ResourceType {
    RESOURCES.iter().find(|r| r.kind == kind).unwrap_or_else(|| panic!("{kind} is not in the resource table"))
}

/// The groups a cluster of `flavor` serves, with their versions, for discovery.
pub fn groups(flavor: Flavor) -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for r in served(flavor).filter(|r| !r.group.is_empty()) {
        if !groups.contains(&(r.group, r.version)) {
            groups.push((r.group, r.version));
        }
    }
    groups
}
