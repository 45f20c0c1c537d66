//! The `OpenShift` API types an `OpenShift`-flavoured simulated cluster serves
//! ([`super::Flavor::OpenShift`]): `route.openshift.io/v1` Routes, `image.openshift.io/v1`
//! `ImageStreams` and `apps.openshift.io/v1` `DeploymentConfigs`. k8s-openapi has no types for
//! them, so their fields are written here from `OpenShift`'s API reference (openshift/api), as far
//! as mover can meet them; strict decoding refuses any other field, as for every other kind.
//! Parts mover never reads or writes (a `DeploymentConfig`'s strategy and triggers, an image
//! stream tag's import policy) are kept as free JSON and so are not checked field by field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `route.openshift.io/v1` Route.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: RouteSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<RouteStatus>,
}

/// A Route's spec.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subdomain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default)]
    to: RouteTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alternate_backends: Option<Vec<RouteTarget>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<RoutePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls: Option<TlsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wildcard_policy: Option<String>,
}

/// `spec.to`: the Service behind a Route.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTarget {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<i32>,
}

/// `spec.port`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutePort {
    target_port: IntOrString,
}

/// `spec.tls`: `termination` is `edge`, `passthrough` or `reencrypt`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    #[serde(default)]
    termination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    insecure_edge_termination_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destination_ca_certificate: Option<String>,
}

/// A Route's status: the routers that admitted it.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ingress: Option<Vec<RouteIngress>>,
}

/// One router's view of a Route.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteIngress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    router_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    router_canonical_hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wildcard_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conditions: Option<Vec<Condition>>,
}

/// A status condition of the `OpenShift` types.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_update_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<i64>,
}

/// `image.openshift.io/v1` `ImageStream`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: ImageStreamSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<ImageStreamStatus>,
}

/// An image stream's spec: the tags a user asked for.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStreamSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lookup_policy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    docker_image_repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<TagReference>>,
}

/// `spec.tags[]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagReference {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<ObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    import_policy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference_policy: Option<Value>,
}

/// `from` of a tag: a `DockerImage`, an `ImageStreamTag` or an `ImageStreamImage`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    kind: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
}

/// An image stream's status: where its images are, tag by tag.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStreamStatus {
    #[serde(default)]
    docker_image_repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_docker_image_repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tags: Option<Vec<NamedTagEventList>>,
}

/// `status.tags[]`: a tag's history, newest first.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedTagEventList {
    tag: String,
    #[serde(default)]
    items: Vec<TagEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conditions: Option<Vec<Condition>>,
}

/// One image a tag pointed at.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TagEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<Time>,
    docker_image_reference: String,
    image: String,
    #[serde(default)]
    generation: i64,
}

/// `apps.openshift.io/v1` `DeploymentConfig`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: DeploymentConfigSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<DeploymentConfigStatus>,
}

/// A `DeploymentConfig`'s spec.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfigSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    template: Option<PodTemplateSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    paused: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    test: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_ready_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision_history_limit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    triggers: Option<Value>,
}

/// A `DeploymentConfig`'s status.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfigStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latest_version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    available_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unavailable_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ready_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conditions: Option<Vec<Condition>>,
}
