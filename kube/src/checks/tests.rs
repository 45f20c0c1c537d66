use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, HostPathVolumeSource, Namespace, PodSpec, ResourceQuota, ResourceQuotaSpec,
    ResourceQuotaStatus, SecurityContext, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod_security::{Source, enforced};
use super::*;

fn labelled(labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some("shop".to_owned()),
            labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

#[test]
fn a_namespace_enforces_its_label_and_the_cluster_default_without_one() {
    let restricted = enforced(Some(&labelled(&[(ENFORCE_LABEL, "restricted")])));
    assert_eq!((restricted.level, restricted.source.clone()), (Level::Restricted, Source::Label));
    assert!(restricted.admits(Level::Restricted) && !restricted.admits(Level::Baseline));
    // Only `enforce` refuses pods; `warn` and `audit` do not.
    let warned = enforced(Some(&labelled(&[("pod-security.kubernetes.io/warn", "restricted")])));
    assert_eq!((warned.level, warned.source), (Level::Privileged, Source::Unlabelled));
    assert_eq!(enforced(None).source, Source::Missing);
    assert!(enforced(None).admits(Level::Privileged));
    let invalid = enforced(Some(&labelled(&[(ENFORCE_LABEL, "strict")])));
    assert_eq!((invalid.level, invalid.source.clone()), (Level::Restricted, Source::Invalid("strict".to_owned())));
    assert!(invalid.to_string().contains("not a level"), "{invalid}");
}

#[test]
fn mover_pods_need_the_levels_their_modules_promise() {
    let image = "agent:1";
    assert_eq!(claim_pods_level(Strategy::Pod, image), Level::Baseline);
    assert_eq!(claim_pods_level(Strategy::Node, image), Level::Restricted);
    assert_eq!(node_agents_level(image), Level::Privileged);
    assert_eq!(hook_job_level(true, image, Some("runner")), Level::Baseline);
    assert_eq!(hook_job_level(false, image, None), Level::Baseline);
}

fn container(context: SecurityContext) -> Container {
    Container { name: "c".to_owned(), security_context: Some(context), ..Container::default() }
}

#[test]
fn a_pod_needs_the_most_careful_level_it_passes() {
    let restricted = SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
        seccomp_profile: Some(crate::objects::transfer::runtime_default_seccomp()),
        ..SecurityContext::default()
    };
    let pod = |context: SecurityContext| PodSpec { containers: vec![container(context)], ..PodSpec::default() };
    assert_eq!(needed_level(&pod(restricted.clone())), Level::Restricted);
    // Root is baseline.
    assert_eq!(needed_level(&pod(SecurityContext { run_as_user: Some(0), ..restricted.clone() })), Level::Baseline);
    // A baseline capability is baseline; another one is privileged.
    let adding = |capability: &str| SecurityContext {
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: Some(vec![capability.to_owned()]) }),
        ..restricted.clone()
    };
    assert_eq!(needed_level(&pod(adding("CHOWN"))), Level::Baseline);
    assert_eq!(needed_level(&pod(adding("SYS_ADMIN"))), Level::Privileged);
    assert_eq!(needed_level(&pod(SecurityContext { privileged: Some(true), ..restricted.clone() })), Level::Privileged);
    let host_path = PodSpec {
        volumes: Some(vec![Volume {
            name: "host".to_owned(),
            host_path: Some(HostPathVolumeSource { path: "/".to_owned(), type_: None }),
            ..Volume::default()
        }]),
        ..pod(restricted.clone())
    };
    assert_eq!(needed_level(&host_path), Level::Privileged);
    assert_eq!(needed_level(&PodSpec { host_network: Some(true), ..pod(restricted) }), Level::Privileged);
}

fn quota(hard: &[(&str, &str)], used: &[(&str, &str)]) -> ResourceQuota {
    let map = |items: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
        items.iter().map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned()))).collect()
    };
    ResourceQuota {
        metadata: ObjectMeta { name: Some("storage".to_owned()), ..ObjectMeta::default() },
        spec: Some(ResourceQuotaSpec { hard: Some(map(hard)), ..ResourceQuotaSpec::default() }),
        status: (!used.is_empty()).then(|| ResourceQuotaStatus { used: Some(map(used)), hard: None }),
    }
}

#[test]
fn quotas_need_room_for_every_claim_mover_creates() {
    const GI: u64 = 1 << 30;
    let claims = [
        NewClaim { class: Some("fast".to_owned()), bytes: GI },
        NewClaim { class: Some("standard".to_owned()), bytes: 2 * GI },
    ];
    // Room enough: 5Gi hard, 2Gi used, 3Gi needed; two claims of five left; cpu is not ours.
    let roomy = quota(
        &[("requests.storage", "5Gi"), ("persistentvolumeclaims", "10"), ("requests.cpu", "1")],
        &[("requests.storage", "2Gi"), ("persistentvolumeclaims", "8")],
    );
    assert_eq!(quota_shortfalls(&[roomy], &claims), []);
    // Too little: 3Gi needed, 4Gi hard with 2Gi used; one claim left for two.
    let tight = quota(
        &[("requests.storage", "4Gi"), ("persistentvolumeclaims", "9")],
        &[("requests.storage", "2Gi"), ("persistentvolumeclaims", "8")],
    );
    let shortfalls = quota_shortfalls(&[tight], &claims);
    assert_eq!(
        shortfalls.iter().map(|s| (s.resource.as_str(), s.needed.as_str(), s.missing.as_str())).collect::<Vec<_>>(),
        [("persistentvolumeclaims", "2", "1"), ("requests.storage", "3Gi", "1Gi")]
    );
    assert_eq!((shortfalls[1].hard.as_str(), shortfalls[1].used.as_str()), ("4Gi", "2Gi"));
    // A class's quota counts only that class's claims; no status yet means nothing used.
    let by_class = quota(
        &[
            ("fast.storageclass.storage.k8s.io/requests.storage", "1Gi"),
            ("standard.storageclass.storage.k8s.io/requests.storage", "1Gi"),
            ("standard.storageclass.storage.k8s.io/persistentvolumeclaims", "1"),
        ],
        &[],
    );
    let shortfalls = quota_shortfalls(&[by_class], &claims);
    assert_eq!(
        shortfalls.iter().map(|s| (s.resource.as_str(), s.used.as_str(), s.missing.as_str())).collect::<Vec<_>>(),
        [("standard.storageclass.storage.k8s.io/requests.storage", "0", "1Gi")]
    );
    assert_eq!(quota_shortfalls(&[quota(&[("requests.storage", "1Gi")], &[])], &[]), []);
}
