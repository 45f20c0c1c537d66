//! The builders' contracts the coordinator relies on: names, labels and selectors, pinning,
//! owners, and the identity Secret's keys.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use mover_kube::objects::labels::{MAX_NAME, is_dns_label};
use mover_kube::objects::{
    CLAIM_LABEL, DEFAULT_IMAGE, End, Exposure, MIGRATION_LABEL, Migration, ROLE_LABEL, TransferPod, identity_secret,
    identity_secret_name, transfer_pod, transfer_pod_name, transfer_service,
};

fn spec<'a>(migration: &'a Migration, claim: &'a str, end: End, owner: Option<OwnerReference>) -> TransferPod<'a> {
    TransferPod {
        migration,
        namespace: "app",
        claim,
        end,
        node: (end == End::Source).then_some("node-1"),
        image: DEFAULT_IMAGE,
        identity_secret: "mover-m1-identity",
        port: 7443,
        owner,
    }
}

/// Whether `selector` selects an object with `labels`.
fn selects(
    selector: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(key, value)| labels.get(key) == Some(value))
}

#[test]
fn a_service_selects_exactly_its_pod() {
    let migration = Migration::new("m1", "plan").unwrap();
    let long = "c".repeat(250);
    let claims = ["data", "data-1", "db.data", long.as_str()];
    let pods: Vec<_> = claims
        .iter()
        .flat_map(|claim| [End::Source, End::Target].map(|end| transfer_pod(&spec(&migration, claim, end, None))))
        .collect();
    for claim in claims {
        for end in [End::Source, End::Target] {
            let service = transfer_service(&spec(&migration, claim, end, None), Exposure::NodePort);
            assert_eq!(service.spec.as_ref().unwrap().type_.as_deref(), Some("NodePort"));
            let selector = service.spec.unwrap().selector.unwrap();
            let selected: Vec<_> = pods
                .iter()
                .filter(|pod| selects(&selector, pod.metadata.labels.as_ref().unwrap()))
                .map(|pod| pod.metadata.name.clone().unwrap())
                .collect();
            assert_eq!(selected, [transfer_pod_name(&migration, end, claim)], "{claim} {end:?}");
            assert_eq!(service.metadata.name, Some(transfer_pod_name(&migration, end, claim)));
        }
    }
    for pod in &pods {
        let name = pod.metadata.name.as_deref().unwrap();
        assert!(name.len() <= MAX_NAME && is_dns_label(name), "{name}");
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MIGRATION_LABEL], "m1");
        assert!(labels[CLAIM_LABEL].len() <= MAX_NAME);
        assert!(["source", "target"].contains(&labels[ROLE_LABEL].as_str()));
    }
}

#[test]
fn source_pods_are_pinned_and_owned() {
    let migration = Migration::new("m1", "plan").unwrap();
    let owner = OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Secret".to_owned(),
        name: identity_secret_name(&migration),
        uid: "0b8f4f8e-0000-4000-8000-000000000001".to_owned(),
        ..OwnerReference::default()
    };
    let source = transfer_pod(&spec(&migration, "data", End::Source, Some(owner.clone())));
    let affinity = source.spec.as_ref().unwrap().affinity.as_ref().unwrap();
    let terms = &affinity.node_affinity.as_ref().unwrap().required_during_scheduling_ignored_during_execution;
    let requirement = &terms.as_ref().unwrap().node_selector_terms[0].match_expressions.as_ref().unwrap()[0];
    assert_eq!(
        (requirement.key.as_str(), requirement.values.as_deref()),
        ("kubernetes.io/hostname", Some(&["node-1".to_owned()][..]))
    );
    assert_eq!(source.metadata.owner_references, Some(vec![owner.clone()]));
    let service = transfer_service(&spec(&migration, "data", End::Target, Some(owner.clone())), Exposure::ClusterIp);
    assert_eq!(service.metadata.owner_references, Some(vec![owner]));
    let target = transfer_pod(&spec(&migration, "data", End::Target, None));
    assert!(target.spec.unwrap().affinity.is_none(), "an unpinned target pod is the claim's first consumer");
}

#[test]
fn the_identity_secret_holds_the_three_agent_files_only() {
    let migration = Migration::new("m1", "plan").unwrap();
    let secret = identity_secret(&migration, "app", b"ca", b"crt", b"key");
    let data = secret.data.unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, ["agent.crt", "agent.key", "ca.crt"]);
    assert_eq!(data["agent.key"].0, b"key");
    assert_eq!(secret.metadata.name.as_deref(), Some("mover-m1-identity"));
    assert_eq!(secret.metadata.labels.unwrap()[MIGRATION_LABEL], "m1");
    assert_eq!(secret.immutable, Some(true));
}
