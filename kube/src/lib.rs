//! mover's Kubernetes layer: everything that talks to a Kubernetes API server.
//!
//! It turns PersistentVolumeClaims named by `k8s://CONTEXT/NAMESPACE/PVC` or by a plan's
//! `clusters:` into agent locations the plan executor copies between, creates the target
//! claims, runs transfer pods (or grants claims to node agents), and renders the manifests and
//! RBAC rules mover needs.

pub mod agents;
pub mod checks;
pub mod claims;
pub mod context;
mod error;
pub mod forward;
pub mod hooks;
pub mod images;
pub mod manifests;
pub mod node_agents;
pub mod objects;
pub mod quantity;
pub mod quiesce;
pub mod resolver;
pub mod rollback;
pub mod run_log;
pub mod target;

pub use error::KubeError;

#[cfg(test)]
mod mock;
