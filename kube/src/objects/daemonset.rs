//! The node strategy's agent: a `DaemonSet` `mover-agent` that reaches claims under the kubelet's
//! pod directory (`<kubelet-root>/pods/<pod-uid>/volumes/...`).
//!
//! It is privileged (hostPath, and `SELinux` hosts deny a confined container the kubelet's
//! directories): its namespace needs the `privileged` Pod Security level, and `OpenShift` a
//! privileged SCC for its service account.
//!
//! The kubelet's pod directory is mounted read-only with `HostToContainer` propagation, so that
//! volumes mounted after the agent started appear inside it. Read-only applies to that bind
//! mount alone: the volumes mounted beneath it keep their own (writable) mounts, which is where
//! a target agent writes.
//!
//! The agent serves no volume of its own: the coordinator grants it one claim at a time, at run
//! time, by pod UID and volume name (`--kubelet-pods`), and withdraws it at the end. Its identity
//! is the Secret [`NODE_IDENTITY_SECRET`], which each migration writes and removes: the agent
//! re-reads it (`--certs-poll`), so one `DaemonSet` serves one migration after another without a
//! restart, and the Secret is optional, so the agent waits for it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, HostPathVolumeSource, ObjectFieldSelector, PodSpec, PodTemplateSpec,
    ResourceRequirements, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::labels::{MANAGED_BY, NAME_LABEL};
use super::transfer::{IDENTITY_PATH, agent_port, identity_mount, identity_volume, runtime_default_seccomp};
use super::{AGENT_COMMAND, AGENT_NAME};

/// Where kubelets keep their state unless configured otherwise.
pub const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";
/// Where the node agent sees the kubelet's pod directory, whatever the host's root.
pub const PODS_PATH: &str = "/var/lib/kubelet/pods";
/// The Secret the node agent takes its identity from.
pub const NODE_IDENTITY_SECRET: &str = "mover-agent-identity";
/// The node agent's service account (see [`super::rbac()`]).
pub const NODE_SERVICE_ACCOUNT: &str = "mover-agent";

/// What the node agent's `DaemonSet` is made of.
#[derive(Debug, Clone)]
pub struct NodeAgent<'a> {
    /// The migration namespace.
    pub namespace: &'a str,
    /// The agent image.
    pub image: &'a str,
    /// The kubelet's root directory on the hosts (`/var/lib/kubelet`, or e.g.
    /// `/var/vcap/data/kubelet` on TKGI).
    pub kubelet_root: &'a str,
    /// The port the agent listens on.
    pub port: u16,
}

/// The labels of the node agent's pods, which the `DaemonSet` selects.
#[must_use]
pub fn node_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), AGENT_NAME.to_owned()),
        ("app.kubernetes.io/component".to_owned(), "node-agent".to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ])
}

/// The node agent's `DaemonSet`: privileged, the kubelet pod directory read-only with
/// `HostToContainer` propagation, `NODE_NAME` from the downward API, its identity from
/// [`NODE_IDENTITY_SECRET`]; it tolerates every taint, since a claim may be mounted on any node.
pub fn node_agent(spec: &NodeAgent) -> DaemonSet {
    let (port, probe) = agent_port(spec.port);
    let pods_on_host = format!("{}/pods", spec.kubelet_root.trim_end_matches('/'));
    let container = Container {
        name: AGENT_NAME.to_owned(),
        image: Some(spec.image.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec![AGENT_COMMAND.to_owned()]),
        args: Some(
            [
                "serve",
                "--listen",
                &format!(":{}", spec.port),
                "--certs",
                IDENTITY_PATH,
                "--kubelet-pods",
                PODS_PATH,
                "--certs-poll",
                "5s",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        env: Some(vec![EnvVar {
            name: "NODE_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "spec.nodeName".to_owned(), api_version: None }),
                ..EnvVarSource::default()
            }),
            value: None,
        }]),
        ports: Some(vec![port]),
        readiness_probe: Some(probe),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("100m".to_owned())),
                ("memory".to_owned(), Quantity("256Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("1Gi".to_owned()))])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "kubelet-pods".to_owned(),
                mount_path: PODS_PATH.to_owned(),
                read_only: Some(true),
                mount_propagation: Some("HostToContainer".to_owned()),
                ..VolumeMount::default()
            },
            identity_mount(),
        ]),
        ..Container::default()
    };
    let labels = node_labels();
    DaemonSet {
        metadata: ObjectMeta {
            name: Some(AGENT_NAME.to_owned()),
            namespace: Some(spec.namespace.to_owned()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(labels.clone()), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(NODE_SERVICE_ACCOUNT.to_owned()),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "kubelet-pods".to_owned(),
                            host_path: Some(HostPathVolumeSource {
                                path: pods_on_host,
                                type_: Some("Directory".to_owned()),
                            }),
                            ..Volume::default()
                        },
                        optional(identity_volume(NODE_IDENTITY_SECRET)),
                    ]),
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".to_owned()),
                        ..Toleration::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        status: None,
    }
}

/// The identity volume, optional: the agent starts before any migration wrote its Secret, and
/// the kubelet empties the volume when the Secret is removed.
fn optional(mut volume: Volume) -> Volume {
    if let Some(secret) = volume.secret.as_mut() {
        secret.optional = Some(true);
    }
    volume
}
