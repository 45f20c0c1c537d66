//! The transfer pod (one per claim and end: `mover-agent serve` granted exactly that claim) and
//! the Service that exposes it.
//!
//! The pod passes Pod Security `baseline`: root (to keep owners and modes), with all
//! capabilities dropped but the few a copy needs, no privilege, no host namespaces, no hostPath,
//! the runtime's default seccomp profile and no API token.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{CLAIM_LABEL, Migration, NAME_LABEL, ROLE_LABEL, claim_label_value, dns_name};
use super::{AGENT_COMMAND, AGENT_NAME, PORT_NAME};

/// Where the claim is mounted in the transfer pod.
pub const VOLUME_PATH: &str = "/mover/volume";
/// Where the migration's identity Secret is mounted (`ca.crt`, `agent.crt`, `agent.key`).
pub const IDENTITY_PATH: &str = "/etc/mover/identity";
/// The node label a pinned transfer pod must match.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// Mode of the identity files: owner read-only (0400).
pub const IDENTITY_MODE: i32 = 0o400;

/// Capabilities a source pod keeps: reading every file whatever its mode (`DAC_OVERRIDE`; the
/// narrower `DAC_READ_SEARCH` is not allowed by Pod Security baseline) and opening files with
/// `O_NOATIME`, so that a copy leaves the application's access times alone (`FOWNER`).
pub const SOURCE_CAPABILITIES: [&str; 2] = ["DAC_OVERRIDE", "FOWNER"];
/// Capabilities a target pod keeps: writing anywhere, and setting owners, groups, modes (with
/// set-id bits) and times as the source has them.
pub const TARGET_CAPABILITIES: [&str; 5] = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETGID"];

/// The end of a transfer a pod serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Serves the claim read-only.
    Source,
    /// Receives into the claim.
    Target,
}

impl End {
    /// The value of [`ROLE_LABEL`]: `source` or `target`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            End::Source => "source",
            End::Target => "target",
        }
    }

    /// The capabilities the end's pod keeps (all others are dropped).
    #[must_use]
    pub fn capabilities(self) -> &'static [&'static str] {
        match self {
            End::Source => &SOURCE_CAPABILITIES,
            End::Target => &TARGET_CAPABILITIES,
        }
    }
}

/// What a transfer pod is made of.
#[derive(Debug, Clone)]
pub struct TransferPod<'a> {
    /// The migration it belongs to.
    pub migration: &'a Migration,
    /// The claim's namespace (the pod must be in it to mount the claim).
    pub namespace: &'a str,
    /// The claim it serves.
    pub claim: &'a str,
    /// Which end.
    pub end: End,
    /// The node to run on (RWO source claims: the consumer's node), as required node affinity
    /// on `kubernetes.io/hostname`.
    pub node: Option<&'a str>,
    /// The agent image.
    pub image: &'a str,
    /// The Secret with the agent's identity, in `namespace`.
    pub identity_secret: &'a str,
    /// The port the agent listens on.
    pub port: u16,
    /// The owner for garbage collection: the migration's identity Secret in this namespace.
    pub owner: Option<OwnerReference>,
}

/// The name of the transfer pod (and its Service) of `claim` at `end`:
/// `mover-<id>-<source|target>-<claim>`, a DNS-1035 label, cut with a hash suffix when needed.
#[must_use]
pub fn transfer_pod_name(migration: &Migration, end: End, claim: &str) -> String {
    dns_name(&format!("mover-{}-{}-", migration.id, end.as_str()), claim)
}

/// The labels of a transfer pod, which its Service selects.
fn transfer_labels(spec: &TransferPod) -> BTreeMap<String, String> {
    let mut labels = spec.migration.labels();
    labels.insert(NAME_LABEL.to_owned(), AGENT_NAME.to_owned());
    labels.insert(ROLE_LABEL.to_owned(), spec.end.as_str().to_owned());
    labels.insert(CLAIM_LABEL.to_owned(), claim_label_value(spec.claim));
    labels
}

pub(crate) fn transfer_meta(spec: &TransferPod) -> ObjectMeta {
    ObjectMeta {
        name: Some(transfer_pod_name(spec.migration, spec.end, spec.claim)),
        namespace: Some(spec.namespace.to_owned()),
        labels: Some(transfer_labels(spec)),
        annotations: Some(spec.migration.annotations()),
        owner_references: spec.owner.clone().map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// The arguments of `mover-agent serve` granting exactly `claim` at [`VOLUME_PATH`].
fn agent_args(spec: &TransferPod) -> Vec<String> {
    let access = match spec.end {
        End::Source => "ro",
        End::Target => "rw",
    };
    [
        "serve",
        "--listen",
        &format!(":{}", spec.port),
        "--certs",
        IDENTITY_PATH,
        "--volume",
        &format!("{}={VOLUME_PATH}:{access},mount", spec.claim),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The runtime's default seccomp profile.
pub(crate) fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }
}

/// The identity Secret as a volume named `identity`, files mode 0400.
pub(crate) fn identity_volume(secret: &str) -> Volume {
    Volume {
        name: "identity".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            default_mode: Some(IDENTITY_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The `identity` volume mounted read-only at [`IDENTITY_PATH`].
pub(crate) fn identity_mount() -> VolumeMount {
    VolumeMount {
        name: "identity".to_owned(),
        mount_path: IDENTITY_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The agent's port, named, and a readiness probe that connects to it.
pub(crate) fn agent_port(port: u16) -> (ContainerPort, Probe) {
    let container_port = ContainerPort {
        name: Some(PORT_NAME.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    let probe = Probe {
        tcp_socket: Some(TCPSocketAction { port: IntOrString::String(PORT_NAME.to_owned()), host: None }),
        period_seconds: Some(2),
        ..Probe::default()
    };
    (container_port, probe)
}

/// Requests of one transfer: a little CPU, memory for the agent's 200 MiB budget; the limit
/// leaves room well above it (a copy is never killed for a burst of metadata). No CPU limit: a
/// throttled transfer only takes longer.
fn transfer_resources() -> ResourceRequirements {
    let quantity = |text: &str| Quantity(text.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity("100m")),
            ("memory".to_owned(), quantity("256Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), quantity("1Gi"))])),
        ..ResourceRequirements::default()
    }
}

/// Required node affinity on `kubernetes.io/hostname`.
fn pinned_to(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: HOSTNAME_LABEL.to_owned(),
                        operator: "In".to_owned(),
                        values: Some(vec![node.to_owned()]),
                    }]),
                    match_fields: None,
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The transfer pod of `spec`: `mover-agent serve` granted exactly the claim (read-only on the
/// source), its identity from the Secret, Pod Security baseline.
pub fn transfer_pod(spec: &TransferPod) -> Pod {
    let (port, probe) = agent_port(spec.port);
    let read_only = spec.end == End::Source;
    let container = Container {
        name: AGENT_NAME.to_owned(),
        image: Some(spec.image.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec![AGENT_COMMAND.to_owned()]),
        args: Some(agent_args(spec)),
        ports: Some(vec![port]),
        readiness_probe: Some(probe),
        resources: Some(transfer_resources()),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: Some(spec.end.capabilities().iter().map(|&c| c.to_owned()).collect()),
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "volume".to_owned(),
                mount_path: VOLUME_PATH.to_owned(),
                read_only: Some(read_only),
                ..VolumeMount::default()
            },
            identity_mount(),
        ]),
        ..Container::default()
    };
    Pod {
        metadata: transfer_meta(spec),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![
                Volume {
                    name: "volume".to_owned(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: spec.claim.to_owned(),
                        read_only: Some(read_only),
                    }),
                    ..Volume::default()
                },
                identity_volume(spec.identity_secret),
            ]),
            restart_policy: Some("Never".to_owned()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            affinity: spec.node.map(pinned_to),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(runtime_default_seccomp()),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// How a target agent is reached from outside its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// A cloud load balancer (between clusters).
    LoadBalancer,
    /// A port on every node (between clusters without load balancers).
    NodePort,
    /// A cluster address (both ends in one cluster).
    ClusterIp,
    /// An OpenShift Route with TLS passthrough to a `ClusterIP` Service, reached through the
    /// cluster's router by SNI ([`super::route`]).
    Route,
}

impl Exposure {
    /// The Service `type`.
    #[must_use]
    pub fn service_type(self) -> &'static str {
        match self {
            Exposure::LoadBalancer => "LoadBalancer",
            Exposure::NodePort => "NodePort",
            Exposure::ClusterIp | Exposure::Route => "ClusterIP",
        }
    }
}

/// The Service exposing the transfer pod of `spec` (same name and namespace), selecting exactly
/// that pod by its migration, role and claim labels.
#[must_use]
pub fn transfer_service(spec: &TransferPod, exposure: Exposure) -> Service {
    let labels = transfer_labels(spec);
    Service {
        metadata: transfer_meta(spec),
        spec: Some(ServiceSpec {
            type_: Some(exposure.service_type().to_owned()),
            selector: Some(labels),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: i32::from(spec.port),
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
