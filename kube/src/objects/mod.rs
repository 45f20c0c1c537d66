//! The objects mover creates in a cluster, built from `k8s-openapi` types: the migration
//! namespace, RBAC, the node agent's `DaemonSet`, and per migration the identity Secret,
//! transfer pods and their Services.

pub mod daemonset;
pub mod holder;
pub mod hook_job;
pub mod identity;
pub mod labels;
pub mod namespace;
pub mod rbac;
pub mod route;
pub mod transfer;

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Serialize;

pub use daemonset::{DEFAULT_KUBELET_ROOT, NODE_IDENTITY_SECRET, NodeAgent, node_agent, node_labels};
pub use holder::{HolderPod, holder_pod, holder_pod_name};
pub use identity::{identity_secret, identity_secret_name};
pub use labels::{CLAIM_LABEL, MANAGED_BY, MIGRATION_LABEL, Migration, ROLE_LABEL};
pub use namespace::{DEFAULT_NAMESPACE, namespace};
pub use rbac::{Rbac, rbac};
pub use route::{Route, transfer_route};
pub use transfer::{
    End, Exposure, IDENTITY_PATH, TransferPod, VOLUME_PATH, transfer_pod, transfer_pod_name, transfer_service,
};

/// The agent image of this version of mover.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/mover-dev/mover-agent:", env!("CARGO_PKG_VERSION"));
/// The agent's path in the image (the image's entrypoint, see `scripts/image.sh`).
pub const AGENT_COMMAND: &str = "/usr/local/bin/mover-agent";
/// The agent's container (and `DaemonSet`) name, and its `app.kubernetes.io/name`.
pub const AGENT_NAME: &str = "mover-agent";
/// The name of the agent's port in pods and services.
pub const PORT_NAME: &str = "mover";
/// The port agents listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7443;

/// How agents reach a claim's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// A transfer pod per claim mounts it as a normal volume (Pod Security baseline).
    #[default]
    Pod,
    /// A privileged `DaemonSet` reaches claims under the kubelet's pod directory.
    Node,
}

/// One object mover creates, of any kind; serialises as that object (with `apiVersion` and
/// `kind`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant, reason = "a handful of objects, rendered once")]
pub enum Object {
    /// A namespace.
    Namespace(Namespace),
    /// A service account.
    ServiceAccount(ServiceAccount),
    /// A cluster role.
    ClusterRole(ClusterRole),
    /// A cluster role binding.
    ClusterRoleBinding(ClusterRoleBinding),
    /// A role.
    Role(Role),
    /// A role binding.
    RoleBinding(RoleBinding),
    /// A `DaemonSet`.
    DaemonSet(DaemonSet),
    /// A pod.
    Pod(Pod),
    /// A service.
    Service(Service),
    /// A secret.
    Secret(Secret),
    /// A Job (a hook's).
    Job(Job),
    /// A `ConfigMap` (a hook's playbook).
    ConfigMap(ConfigMap),
    /// An OpenShift Route (a transfer agent's, with `--expose route`).
    Route(Route),
}

/// What an install is made of: `mover k8s manifests`'s options.
#[derive(Debug, Clone)]
pub struct Install<'a> {
    /// The agents' strategy.
    pub strategy: Strategy,
    /// The migration namespace.
    pub namespace: &'a str,
    /// The agent image.
    pub image: &'a str,
    /// The kubelet's root directory on the hosts (node strategy).
    pub kubelet_root: &'a str,
    /// The coordinator may forward pods' ports (`--port-forward`).
    pub port_forward: bool,
}

impl Default for Install<'_> {
    fn default() -> Self {
        Install {
            strategy: Strategy::Pod,
            namespace: DEFAULT_NAMESPACE,
            image: DEFAULT_IMAGE,
            kubelet_root: DEFAULT_KUBELET_ROOT,
            port_forward: false,
        }
    }
}

/// Every object an install needs, in the order `kubectl apply` wants them: the namespace, the
/// service accounts, roles and bindings, and for the node strategy the `DaemonSet`.
pub fn install_objects(install: &Install) -> Vec<Object> {
    let Rbac { service_accounts, cluster_roles, cluster_role_bindings, roles, role_bindings } = rbac(install);
    let mut objects = vec![Object::Namespace(namespace(install.namespace, install.strategy))];
    objects.extend(service_accounts.into_iter().map(Object::ServiceAccount));
    objects.extend(cluster_roles.into_iter().map(Object::ClusterRole));
    objects.extend(cluster_role_bindings.into_iter().map(Object::ClusterRoleBinding));
    objects.extend(roles.into_iter().map(Object::Role));
    objects.extend(role_bindings.into_iter().map(Object::RoleBinding));
    if install.strategy == Strategy::Node {
        objects.push(Object::DaemonSet(node_agent(&NodeAgent {
            namespace: install.namespace,
            image: install.image,
            kubelet_root: install.kubelet_root,
            port: DEFAULT_PORT,
        })));
    }
    objects
}

/// Examples of what each migration creates (not installable: the coordinator makes them per
/// claim and hook), for migration `example` in namespace `app`: the identity Secret (with
/// placeholder bytes), a source and a target transfer pod with the target's Service and Route (for the
/// node strategy instead: the node agents' identity Secret and a holder pod), and a playbook
/// hook's Job with its `ConfigMap`.
#[must_use]
pub fn template_objects(install: &Install) -> Vec<Object> {
    let migration = Migration { id: "example".to_owned(), plan: "example".to_owned() };
    let secret_name = identity_secret_name(&migration);
    let secret = identity_secret(&migration, "app", b"<ca.crt>", b"<agent.crt>", b"<agent.key>");
    let pod = |end, node| TransferPod {
        migration: &migration,
        namespace: "app",
        claim: "data",
        end,
        node,
        image: install.image,
        identity_secret: &secret_name,
        port: DEFAULT_PORT,
        owner: None,
    };
    let (source, target) = (pod(End::Source, Some("node-1")), pod(End::Target, None));
    let env = [
        ("migplan_name".to_owned(), "example".to_owned()),
        ("migration_namespaces".to_owned(), "app".to_owned()),
        ("MIGRATION_PLAN_NAME".to_owned(), "example".to_owned()),
        ("MIGRATION_NAMESPACES".to_owned(), "app".to_owned()),
    ];
    let hook = hook_job::HookJobSpec {
        migration: &migration,
        hook: "quiesce",
        phase: "PreBackup",
        namespace: "app",
        image: "quay.io/konveyor/hook-runner:latest",
        service_account: None,
        program: hook_job::HookProgram::Playbook,
        env: &env,
        deadline: Duration::from_secs(1800),
    };
    let hook_name = format!("{}x7k2p", hook_job::hook_job_prefix(hook.phase, hook.hook));
    let hook_objects = [
        Object::Job(hook_job::hook_job(&hook, &hook_name)),
        Object::ConfigMap(hook_job::playbook_config_map(
            &hook,
            &hook_name,
            "00000000-0000-4000-8000-000000000000",
            "- hosts: localhost\n  tasks: []\n",
        )),
    ];
    let mut objects = if install.strategy == Strategy::Node {
        // The node agents' Secret, and the holder pod of an unused source claim.
        let mut secret = secret;
        secret.metadata.name = Some(NODE_IDENTITY_SECRET.to_owned());
        secret.metadata.namespace = Some(install.namespace.to_owned());
        let holder = HolderPod {
            migration: &migration,
            namespace: "app",
            claim: "data",
            end: End::Source,
            image: install.image,
        };
        vec![Object::Secret(secret), Object::Pod(holder_pod(&holder))]
    } else {
        vec![
            Object::Secret(secret),
            Object::Pod(transfer_pod(&source)),
            Object::Pod(transfer_pod(&target)),
            Object::Service(transfer_service(&target, Exposure::LoadBalancer)),
            // With `--expose route` the Service is a `ClusterIP` one and this Route exposes it.
            Object::Route(transfer_route(&target)),
        ]
    };
    objects.extend(hook_objects);
    objects
}
