//! The node strategy's holder pod: it mounts one claim and does nothing else, so that the claim
//! is mounted on a node where the node agent reaches it (`mover-agent hold` waits for SIGTERM).
//!
//! On the target it is the claim's first consumer, so a `WaitForFirstConsumer` class binds the
//! claim there; on the source it mounts an unused claim read-only. It passes Pod Security
//! `restricted`: not root, no capabilities, no privilege escalation, a read-only root file
//! system and the runtime's default seccomp profile. It never reads the claim's files.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::AGENT_COMMAND;
use super::labels::{CLAIM_LABEL, Migration, NAME_LABEL, ROLE_LABEL, claim_label_value, dns_name};
use super::transfer::{End, VOLUME_PATH, runtime_default_seccomp};

/// The `app.kubernetes.io/name` of holder pods.
pub const HOLDER_NAME: &str = "mover-holder";
/// The user a holder runs as (nobody needs to own anything: it only keeps a mount).
pub const HOLDER_USER: i64 = 65532;

/// What a holder pod is made of.
#[derive(Debug, Clone)]
pub struct HolderPod<'a> {
    /// The migration it belongs to.
    pub migration: &'a Migration,
    /// The claim's namespace.
    pub namespace: &'a str,
    /// The claim it holds.
    pub claim: &'a str,
    /// Which end: a source claim is mounted read-only.
    pub end: End,
    /// The agent image (its `hold` command).
    pub image: &'a str,
}

/// The name of the holder pod of `claim` at `end`: `mover-<id>-hold-<source|target>-<claim>`.
#[must_use]
pub fn holder_pod_name(migration: &Migration, end: End, claim: &str) -> String {
    dns_name(&format!("mover-{}-hold-{}-", migration.id, end.as_str()), claim)
}

/// The holder pod: `mover-agent hold` with the claim mounted at [`VOLUME_PATH`].
#[must_use]
pub fn holder_pod(spec: &HolderPod) -> Pod {
    let mut labels = spec.migration.labels();
    labels.insert(NAME_LABEL.to_owned(), HOLDER_NAME.to_owned());
    labels.insert(ROLE_LABEL.to_owned(), spec.end.as_str().to_owned());
    labels.insert(CLAIM_LABEL.to_owned(), claim_label_value(spec.claim));
    let read_only = spec.end == End::Source;
    let container = Container {
        name: "hold".to_owned(),
        image: Some(spec.image.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec![AGENT_COMMAND.to_owned(), "hold".to_owned()]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("10m".to_owned())),
                ("memory".to_owned(), Quantity("16Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("64Mi".to_owned()))])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(HOLDER_USER),
            run_as_group: Some(HOLDER_USER),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "claim".to_owned(),
            mount_path: VOLUME_PATH.to_owned(),
            read_only: Some(read_only),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(holder_pod_name(spec.migration, spec.end, spec.claim)),
            namespace: Some(spec.namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(spec.migration.annotations()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            restart_policy: Some("Never".to_owned()),
            termination_grace_period_seconds: Some(5),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(runtime_default_seccomp()),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(vec![Volume {
                name: "claim".to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: spec.claim.to_owned(),
                    read_only: Some(read_only),
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::{HolderPod, holder_pod, holder_pod_name};
    use crate::objects::labels::Migration;
    use crate::objects::transfer::End;

    fn spec(migration: &Migration, end: End) -> HolderPod<'_> {
        HolderPod { migration, namespace: "shop", claim: "data", end, image: "agent:1" }
    }

    #[test]
    fn a_source_holder_mounts_read_only_and_a_target_holder_writable() {
        let migration = Migration::new("abc123", "plan").unwrap();
        for (end, read_only) in [(End::Source, true), (End::Target, false)] {
            let pod = holder_pod(&spec(&migration, end));
            let pod_spec = pod.spec.unwrap();
            let volume = &pod_spec.volumes.unwrap()[0];
            assert_eq!(volume.persistent_volume_claim.as_ref().unwrap().claim_name, "data");
            assert_eq!(volume.persistent_volume_claim.as_ref().unwrap().read_only, Some(read_only));
            let container = &pod_spec.containers[0];
            assert_eq!(container.volume_mounts.as_ref().unwrap()[0].read_only, Some(read_only));
            assert_eq!(container.command.as_ref().unwrap()[1], "hold");
            assert_eq!(pod.metadata.name.unwrap(), holder_pod_name(&migration, end, "data"));
        }
    }

    #[test]
    fn a_holder_passes_pod_security_restricted() {
        let migration = Migration::new("abc123", "plan").unwrap();
        let pod = holder_pod(&spec(&migration, End::Target));
        let pod_spec = pod.spec.unwrap();
        assert_eq!(pod_spec.automount_service_account_token, Some(false));
        assert!(pod_spec.host_network.is_none() && pod_spec.host_pid.is_none());
        let context = pod_spec.containers[0].security_context.clone().unwrap();
        assert_eq!(context.allow_privilege_escalation, Some(false));
        assert_eq!(context.run_as_non_root, Some(true));
        assert_ne!(context.run_as_user, Some(0));
        assert_eq!(context.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(context.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert!(context.privileged.is_none());
    }
}
