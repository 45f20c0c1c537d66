//! The seam between the simulated API server (`cluster`) and whatever runs a pod's containers
//! (`podrunner`): the server decides *what* runs (a scheduled pod, its volumes as host
//! directories), the runner decides *how* (processes in their own namespaces).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

/// Why a pod's containers did not start. The server shows it in the pod's status as a
/// container's waiting `reason` and `message`, as a kubelet does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    /// A kubelet's reason: `ErrImagePull`, `CreateContainerError`, `RunContainerError`.
    pub reason: String,
    /// What went wrong, for a human.
    pub message: String,
}

/// What a pod needs to start.
pub struct PodStart<'a> {
    /// The pod as stored (spec with `nodeName` set, metadata with `uid`).
    pub pod: &'a Pod,
    /// Each of the pod's volumes by name: the host directory with its contents (a claim's mount
    /// under the kubelet root, or a `hostPath` volume's path; a Secret's or ConfigMap's files; an
    /// emptyDir).
    pub volumes: BTreeMap<String, PathBuf>,
    /// Where each container's output goes: `<log_dir>/<container name>.log`.
    pub log_dir: &'a Path,
}

/// Runs pods' containers.
pub trait Pods: Send + Sync + 'static {
    /// Starts every container of the pod.
    fn start(&self, start: PodStart<'_>) -> Result<Box<dyn PodProcess>, StartError>;

    /// An address of this machine that every pod (of this cluster and of others) reaches, for
    /// an `OpenShift` cluster's router; `None` when pods cannot reach the host.
    fn router_address(&self) -> Option<Ipv4Addr> {
        None
    }
}

/// A started pod.
pub trait PodProcess: Send {
    /// The pod's IP address: reachable from this machine and from every other pod.
    fn ip(&self) -> Ipv4Addr;
    /// `None` while a container runs; the first container's exit code once all have ended
    /// (a signal counts as 128 + its number).
    fn try_wait(&mut self) -> Option<i32>;
    /// Stops the containers (SIGTERM, then SIGKILL after a grace period) and releases what the
    /// pod held (namespaces, mounts, addresses).
    fn stop(&mut self);
}
