//! The `OpenShift` flavour: its kinds are served, strictly decoded and discovered only there.

use std::sync::Arc;

use kube::api::{Api, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::tests::{TestPods, client_as};
use super::{Flavor, SimCluster};

fn route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("route.openshift.io", "v1", "Route"), "routes")
}

fn route(extra: &serde_json::Value) -> DynamicObject {
    let mut spec = json!({"to": {"kind": "Service", "name": "agent"}, "tls": {"termination": "passthrough"}});
    json_patch::merge(&mut spec, extra);
    serde_json::from_value(json!({
        "apiVersion": "route.openshift.io/v1", "kind": "Route",
        "metadata": {"name": "agent", "namespace": "default"}, "spec": spec,
    }))
    .unwrap()
}

#[tokio::test]
async fn openshift_kinds_are_served_strictly_and_discovered_only_by_an_openshift_cluster() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the simulated cluster's kubelet bind-mounts claims, which needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pods = Arc::new(TestPods::default());
    let openshift =
        SimCluster::start_flavored("source", &dir.path().join("openshift"), pods.clone(), Flavor::OpenShift).unwrap();
    let kubernetes = SimCluster::start("target", &dir.path().join("kubernetes"), pods).unwrap();
    let (os_client, k8s_client) =
        (client_as(&openshift, "admin", dir.path()).await, client_as(&kubernetes, "admin", dir.path()).await);

    let routes: Api<DynamicObject> = Api::namespaced_with(os_client.clone(), "default", &route_resource());
    let created = routes.create(&PostParams::default(), &route(&json!({"host": "agent.apps.example"}))).await.unwrap();
    assert_eq!(created.data["spec"]["host"], "agent.apps.example");
    assert_eq!(routes.get("agent").await.unwrap().data["spec"]["tls"]["termination"], "passthrough");

    let refused = routes.create(&PostParams::default(), &route(&json!({"tls": {"bogus": true}}))).await.unwrap_err();
    let kube::Error::Api(status) = refused else { panic!("expected a Status, got {refused:?}") };
    assert_eq!(status.code, 400);
    assert!(status.message.contains("unknown field \"spec.tls.bogus\""), "{}", status.message);

    let absent: Api<DynamicObject> = Api::namespaced_with(k8s_client.clone(), "default", &route_resource());
    let refused = absent.create(&PostParams::default(), &route(&json!({}))).await.unwrap_err();
    assert!(matches!(&refused, kube::Error::Api(status) if status.code == 404), "{refused:?}");

    let groups = |client: kube::Client| async move {
        client.list_api_groups().await.unwrap().groups.into_iter().map(|g| g.name).collect::<Vec<_>>()
    };
    let (os_groups, k8s_groups) = (groups(os_client).await, groups(k8s_client).await);
    for group in ["route.openshift.io", "image.openshift.io", "apps.openshift.io"] {
        assert!(os_groups.iter().any(|g| g == group), "{group} missing from {os_groups:?}");
        assert!(!k8s_groups.iter().any(|g| g == group), "{group} served by a Kubernetes cluster: {k8s_groups:?}");
    }
}
