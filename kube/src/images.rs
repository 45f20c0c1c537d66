//! The images of a plan's namespaces, found in the source cluster ([`KubeImages`], the plan
//! executor's [`ImageFinder`] for plans with `images: {fromNamespaces: true}`), and how mover
//! reaches the cluster's internal registry (k8s-anchors §5; MTC's `exposedRegistryPath`).
//!
//! - **Found**: the images of the pod templates of every workload kind quiesce knows
//!   (Deployments, `StatefulSets`, `ReplicaSets` no Deployment owns, `DaemonSets`, `CronJobs`, Jobs
//!   no `CronJob` owns, `DeploymentConfigs` where served), of pods no controller runs (a bare pod's
//!   image is lost with its namespace otherwise), and, where `image.openshift.io` is served, of
//!   `ImageStream` tags (`status.tags[].items[0].dockerImageReference`).
//! - **Kept**: only images whose registry host is the internal one (the plan's
//!   `internalRegistry`, `OpenShift`'s by default); every other image is listed as skipped with
//!   the reason. Each kept image goes to the target registry under the plan's namespace mapping:
//!   a reference by digest is copied by digest (and keeps no tag unless an `ImageStream` tag
//!   names it), a tag keeps its tag.
//! - **Exposed**: mover reaches the registry at the plan's `sourceRegistry`, or on `OpenShift` at
//!   the host of Route `default-route` in `openshift-image-registry` (an error says how to
//!   enable it when it is missing).
//! - **Trusted**: the cluster's ingress CA (`ConfigMap` `default-ingress-cert` in
//!   `openshift-config-managed`, key `ca-bundle.crt`) where it exists, besides the plan's
//!   `caBundles.source`; verification is never skipped unless the plan says so (MTC skips it).
//! - **Authenticated**: a short-lived token of the plan's service account from the `TokenRequest`
//!   API, used as the password of Basic credentials (as `OpenShift`'s registry accepts it), kept in
//!   memory only.

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use mover_engine::image::{Credentials, ImageRef, Version};
use mover_plan::{
    Clusters, ExposedRegistry, FoundImage, FoundImages, ImageDiscovery, ImageFinder, ImageTransfer,
    OPENSHIFT_INTERNAL_REGISTRY, Plan, SkippedImage,
};
use serde_json::Value;

use crate::context::{Access, Cluster, connect};
use crate::error::KubeError;
use crate::quiesce::record::Kind;

/// The namespace of `OpenShift`'s image registry (and of its default route).
pub const REGISTRY_NAMESPACE: &str = "openshift-image-registry";
/// The registry's route, once `defaultRoute` is enabled.
pub const DEFAULT_ROUTE: &str = "default-route";
/// Where `OpenShift` publishes the ingress CA.
pub const INGRESS_CA_NAMESPACE: &str = "openshift-config-managed";
/// The `ConfigMap` holding it.
pub const INGRESS_CA_CONFIG_MAP: &str = "default-ingress-cert";
/// Its key.
pub const INGRESS_CA_KEY: &str = "ca-bundle.crt";
/// The user name sent with the token (`OpenShift`'s registry ignores it).
pub const TOKEN_USER: &str = "serviceaccount";
/// How to turn the default route on.
pub const ENABLE_ROUTE: &str = "oc patch configs.imageregistry.operator.openshift.io/cluster --type merge -p \
                                '{\"spec\":{\"defaultRoute\":true}}'";

/// Finds the images of plans' namespaces in the source cluster.
pub struct KubeImages {
    access: Access,
    context: Option<String>,
}

/// A token the `TokenRequest` API issued, with what to say about it.
#[derive(Clone)]
pub struct RegistryToken {
    /// The token.
    pub token: String,
    /// When it expires, as the API server said (RFC 3339).
    pub expires: String,
}

impl std::fmt::Debug for RegistryToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryToken").field("expires", &self.expires).finish_non_exhaustive()
    }
}

impl KubeImages {
    /// The images reached through `access`, in the source cluster of `context`.
    #[must_use]
    pub fn new(access: Access, context: Option<String>) -> Self {
        KubeImages { access, context }
    }

    /// What `plan`'s [`ImageDiscovery`] finds; an empty list without one.
    pub async fn find_images(&self, plan: &Plan) -> Result<FoundImages, KubeError> {
        let Some(discovery) = &plan.image_discovery else {
            return Err(KubeError::Images("the plan does not find images (`images: {fromNamespaces: true}`)".into()));
        };
        let cluster = connect(&self.access, self.context.as_deref()).await?;
        let served = Served::of(&cluster).await?;
        let internal = internal_registry(discovery, &served, &cluster)?;
        let exposed = exposed_registry(&cluster, discovery, &served).await?;
        let mut used: Vec<(String, String)> = Vec::new();
        for namespace in &plan.namespaces {
            used.extend(images_of_workloads(&cluster, namespace, &served.kinds).await?);
            used.extend(images_of_bare_pods(&cluster, namespace).await?);
            if served.image_streams {
                used.extend(images_of_image_streams(&cluster, namespace).await?);
            }
        }
        let clusters = plan.clusters.clone().unwrap_or_default();
        let places = Places { internal: &internal, exposed: &exposed, target: &discovery.target_registry };
        let (images, skipped) = sort_out(&used, &places, &clusters);
        let token = registry_token(&cluster, discovery).await?;
        let mut access = plan.registries.source.clone();
        access.credentials = Some(Credentials::Basic { user: TOKEN_USER.to_owned(), password: token.token });
        access.ca_pem = ingress_ca(&cluster).await?;
        access.token_file = None;
        access.auth_file = None;
        Ok(FoundImages { images, skipped, registry: ExposedRegistry { host: exposed, access } })
    }
}

impl ImageFinder for KubeImages {
    fn find<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, anyhow::Result<FoundImages>> {
        Box::pin(async move { self.find_images(plan).await.map_err(anyhow::Error::new) })
    }
}

/// What the cluster's API serves, of what this module reads.
struct Served {
    kinds: Vec<Kind>,
    image_streams: bool,
    routes: bool,
}

impl Served {
    async fn of(cluster: &Cluster) -> Result<Served, KubeError> {
        let groups = cluster.client.list_api_groups().await.map_err(KubeError::api(
            &cluster.context,
            "listing the API groups (for OpenShift's image and route APIs)",
        ))?;
        let has = |name: &str| groups.groups.iter().any(|g| g.name == name);
        let kinds = Kind::ALL.into_iter().filter(|kind| has("apps.openshift.io") || *kind != Kind::DeploymentConfig);
        Ok(Served {
            kinds: kinds.collect(),
            image_streams: has("image.openshift.io"),
            routes: has("route.openshift.io"),
        })
    }

    fn openshift(&self) -> bool {
        self.image_streams || self.routes
    }
}

/// The host pods name for the internal registry.
fn internal_registry(discovery: &ImageDiscovery, served: &Served, cluster: &Cluster) -> Result<String, KubeError> {
    match &discovery.internal_registry {
        Some(host) => Ok(host.clone()),
        None if served.openshift() => Ok(OPENSHIFT_INTERNAL_REGISTRY.to_owned()),
        None => Err(KubeError::Images(format!(
            "context `{}` is not OpenShift, so mover does not know its internal registry: name the registry host its \
             pods' images use with `images.internalRegistry: HOST[:PORT]` in the plan",
            cluster.context
        ))),
    }
}

/// Where mover reaches the internal registry: the plan's `sourceRegistry`, or the registry's
/// default route on `OpenShift`.
async fn exposed_registry(cluster: &Cluster, discovery: &ImageDiscovery, served: &Served) -> Result<String, KubeError> {
    if let Some(host) = &discovery.source_registry {
        return Ok(host.clone());
    }
    if !served.routes {
        return Err(KubeError::Images(format!(
            "context `{}` serves no Routes, so mover cannot read where the internal registry is exposed: name the \
             exposed host with `images.sourceRegistry: HOST[:PORT]` in the plan",
            cluster.context
        )));
    }
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("route.openshift.io", "v1", "Route"), "routes");
    let routes: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), REGISTRY_NAMESPACE, &resource);
    let doing = format!("reading Route `{REGISTRY_NAMESPACE}/{DEFAULT_ROUTE}` (the internal registry's exposed host)");
    let route = routes.get_opt(DEFAULT_ROUTE).await.map_err(KubeError::api(&cluster.context, doing))?;
    let host = route.as_ref().and_then(|route| route.data["spec"]["host"].as_str()).filter(|host| !host.is_empty());
    match (route.is_some(), host) {
        (_, Some(host)) => Ok(host.to_owned()),
        (true, None) => Err(KubeError::Images(format!(
            "Route `{REGISTRY_NAMESPACE}/{DEFAULT_ROUTE}` of context `{}` has no host yet: wait for the router to \
             admit it, or name the exposed host with `images.sourceRegistry: HOST[:PORT]`",
            cluster.context
        ))),
        (false, None) => Err(KubeError::Images(format!(
            "the internal registry of context `{}` is not exposed: Route `{REGISTRY_NAMESPACE}/{DEFAULT_ROUTE}` does \
             not exist. Enable it with `{ENABLE_ROUTE}`, or name the exposed host with \
             `images.sourceRegistry: HOST[:PORT]`",
            cluster.context
        ))),
    }
}

/// The cluster's ingress CA, where it publishes one.
async fn ingress_ca(cluster: &Cluster) -> Result<Option<String>, KubeError> {
    let maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), INGRESS_CA_NAMESPACE);
    let doing = format!("reading ConfigMap `{INGRESS_CA_NAMESPACE}/{INGRESS_CA_CONFIG_MAP}` (the ingress CA)");
    let map = match maps.get_opt(INGRESS_CA_CONFIG_MAP).await {
        Ok(map) => map,
        // No such namespace is no such map.
        Err(kube::Error::Api(status)) if status.code == 404 => None,
        Err(error) => return Err(KubeError::api(&cluster.context, doing)(error)),
    };
    Ok(map
        .and_then(|map| map.data)
        .and_then(|mut data| data.remove(INGRESS_CA_KEY))
        .filter(|pem| !pem.trim().is_empty()))
}

/// A token of the plan's service account from the `TokenRequest` API; refused when it comes
/// back already expired.
pub async fn registry_token(cluster: &Cluster, discovery: &ImageDiscovery) -> Result<RegistryToken, KubeError> {
    let (namespace, name) = &discovery.service_account;
    let seconds = i64::try_from(discovery.token_lifetime.as_secs()).unwrap_or(i64::MAX);
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(seconds), ..TokenRequestSpec::default() },
        ..TokenRequest::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), namespace);
    let doing = format!(
        "asking the TokenRequest API for a {seconds}s token of service account `{namespace}/{name}` (to pull from the \
         internal registry)"
    );
    let issued = match accounts.create_token_request(name, &PostParams::default(), &request).await {
        Ok(issued) => issued,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(KubeError::Images(format!(
                "service account `{namespace}/{name}` (the plan's `images.serviceAccount`) does not exist in context \
                 `{}`: create it (`kubectl create serviceaccount {name} -n {namespace}`) and let it pull the plan's \
                 namespaces' images (on OpenShift: `oc policy add-role-to-user system:image-puller \
                 system:serviceaccount:{namespace}:{name} -n NAMESPACE`)",
                cluster.context
            )));
        }
        Err(error) => return Err(KubeError::api(&cluster.context, doing)(error)),
    };
    let Some(status) = issued.status.filter(|status| !status.token.is_empty()) else {
        return Err(KubeError::Images(format!(
            "the TokenRequest for service account `{namespace}/{name}` in context `{}` came back without a token",
            cluster.context
        )));
    };
    let expires = status.expiration_timestamp.0;
    if expires <= k8s_openapi::jiff::Timestamp::now() {
        return Err(KubeError::Images(format!(
            "the TokenRequest for service account `{namespace}/{name}` in context `{}` ({seconds}s asked for) gave a \
             token that expired at {expires}, before mover could use it: check that this machine's clock agrees \
             with the API server's, then run again",
            cluster.context
        )));
    }
    Ok(RegistryToken { token: status.token, expires: expires.to_string() })
}

/// `(reference, used by)` for every container image of the workloads in `namespace`.
async fn images_of_workloads(
    cluster: &Cluster,
    namespace: &str,
    kinds: &[Kind],
) -> Result<Vec<(String, String)>, KubeError> {
    let mut used = Vec::new();
    for (kind, object) in crate::quiesce::workloads(cluster, namespace, kinds).await? {
        if crate::quiesce::templated_by_owner(kind, &object) {
            continue;
        }
        let (_, _, kind_name, _) = kind.names();
        let owner = format!("{kind_name} {namespace}/{}", object["metadata"]["name"].as_str().unwrap_or_default());
        used.extend(container_images(kind.pod_spec(&object)).map(|image| (image, owner.clone())));
    }
    Ok(used)
}

/// `(reference, used by)` for every container image of the pods no controller runs.
async fn images_of_bare_pods(cluster: &Cluster, namespace: &str) -> Result<Vec<(String, String)>, KubeError> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let doing = format!("listing the pods of namespace `{namespace}` (for their images)");
    let listed = pods.list(&ListParams::default()).await.map_err(KubeError::api(&cluster.context, doing))?;
    let mut used = Vec::new();
    for pod in listed.items {
        let value = serde_json::to_value(&pod).unwrap_or_default();
        let owners = value["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
        if owners.iter().any(|owner| owner["controller"] == true) {
            continue;
        }
        let owner = format!("Pod {namespace}/{}", value["metadata"]["name"].as_str().unwrap_or_default());
        used.extend(container_images(&value["spec"]).map(|image| (image, owner.clone())));
    }
    Ok(used)
}

/// `(reference, used by)` for the latest image of every `ImageStream` tag in `namespace`.
async fn images_of_image_streams(cluster: &Cluster, namespace: &str) -> Result<Vec<(String, String)>, KubeError> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("image.openshift.io", "v1", "ImageStream"),
        "imagestreams",
    );
    let streams: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), namespace, &resource);
    let doing = format!("listing the ImageStreams of namespace `{namespace}`");
    let listed = streams.list(&ListParams::default()).await.map_err(KubeError::api(&cluster.context, doing))?;
    let mut used = Vec::new();
    for stream in listed.items {
        let name = stream.metadata.name.clone().unwrap_or_default();
        for tag in stream.data["status"]["tags"].as_array().into_iter().flatten() {
            let (Some(tag_name), Some(reference)) =
                (tag["tag"].as_str(), tag["items"][0]["dockerImageReference"].as_str())
            else {
                continue;
            };
            used.push((reference.to_owned(), format!("ImageStream {namespace}/{name}:{tag_name}")));
        }
    }
    Ok(used)
}

/// The images of a pod spec's containers and init containers.
fn container_images(pod_spec: &Value) -> impl Iterator<Item = String> + '_ {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |list| pod_spec[list].as_array().into_iter().flatten())
        .filter_map(|container| container["image"].as_str().map(str::to_owned))
}

/// The registries a found image is judged and copied by.
struct Places<'a> {
    internal: &'a str,
    exposed: &'a str,
    target: &'a str,
}

/// The copies of the images of `used` held in the internal registry (each once, with all its
/// users), and the others with why they are left out.
fn sort_out(
    used: &[(String, String)],
    places: &Places<'_>,
    clusters: &Clusters,
) -> (Vec<FoundImage>, Vec<SkippedImage>) {
    let mut images: Vec<FoundImage> = Vec::new();
    let mut skipped: Vec<SkippedImage> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (reference, user) in used {
        // An `ImageStream` tag's copy keeps its tag.
        let stream_tag =
            user.strip_prefix("ImageStream ").and_then(|tagged| tagged.rsplit_once(':')).map(|(_, tag)| tag);
        match plan_copy(reference, places, clusters, stream_tag) {
            Ok(transfer) => {
                let key = format!("{transfer:?}");
                if let Some(&at) = index.get(&key) {
                    push_once(&mut images[at].used_by, user);
                } else {
                    index.insert(key, images.len());
                    images.push(FoundImage { reference: reference.clone(), used_by: vec![user.clone()], transfer });
                }
            }
            Err(reason) => match skipped.iter_mut().find(|s| &s.reference == reference) {
                Some(entry) => push_once(&mut entry.used_by, user),
                None => {
                    skipped.push(SkippedImage { reference: reference.clone(), used_by: vec![user.clone()], reason });
                }
            },
        }
    }
    (images, skipped)
}

fn push_once(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|known| known == item) {
        list.push(item.to_owned());
    }
}

/// The copy of `reference` from the exposed registry to the target registry, or why there is none.
fn plan_copy(
    reference: &str,
    places: &Places<'_>,
    clusters: &Clusters,
    stream_tag: Option<&str>,
) -> Result<ImageTransfer, String> {
    let parsed = format!("docker://{reference}")
        .parse::<ImageRef>()
        .map_err(|e| format!("not an image reference mover can read ({e})"))?;
    let ImageRef::Registry { repository, version } = parsed else {
        return Err("not a registry image".to_owned());
    };
    if !repository.registry.eq_ignore_ascii_case(places.internal) {
        return Err(format!(
            "held in registry `{}`, not in the source cluster's internal registry `{}`: the target cluster pulls it \
             from there as the source does",
            repository.registry, places.internal
        ));
    }
    let name = &repository.name;
    let target_name = match name.split_once('/') {
        Some((namespace, rest)) => format!("{}/{rest}", clusters.target_namespace(namespace)),
        None => name.clone(),
    };
    let source_version = version.as_ref().map_or_else(|| ":latest".to_owned(), ToString::to_string);
    let target_version = match (&version, stream_tag) {
        (_, Some(tag)) => format!(":{tag}"),
        (Some(Version::Tag(tag)), None) => format!(":{tag}"),
        (Some(Version::Digest(_)), None) => String::new(),
        (None, None) => ":latest".to_owned(),
    };
    Ok(ImageTransfer::Copy {
        source: format!("docker://{}/{name}{source_version}", places.exposed),
        destination: format!("docker://{}/{target_name}{target_version}", places.target),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places() -> Places<'static> {
        Places { internal: OPENSHIFT_INTERNAL_REGISTRY, exposed: "route.example", target: "target.example:5000" }
    }

    #[test]
    fn internal_images_map_to_the_target_namespace_and_others_are_skipped_with_the_reason() {
        let clusters =
            Clusters { namespace_mapping: [("shop".to_owned(), "store".to_owned())].into(), ..Clusters::default() };
        let digest = "sha256:".to_owned() + &"a".repeat(64);
        let used = vec![
            (format!("{OPENSHIFT_INTERNAL_REGISTRY}/shop/web@{digest}"), "Deployment shop/web".to_owned()),
            (format!("{OPENSHIFT_INTERNAL_REGISTRY}/shop/web@{digest}"), "Pod shop/debug".to_owned()),
            (format!("{OPENSHIFT_INTERNAL_REGISTRY}/shop/web@{digest}"), "ImageStream shop/web:v1".to_owned()),
            (format!("{OPENSHIFT_INTERNAL_REGISTRY}/shop/api:2"), "Deployment shop/api".to_owned()),
            ("docker.io/library/nginx:1.27".to_owned(), "Deployment shop/proxy".to_owned()),
            ("nginx".to_owned(), "Pod shop/bare".to_owned()),
        ];
        let (images, skipped) = sort_out(&used, &places(), &clusters);
        let copies: Vec<(&str, &str, &[String])> =
            images.iter().map(|i| (i.transfer.ends().0, i.transfer.ends().1, &i.used_by[..])).collect();
        assert_eq!(
            copies,
            [
                (
                    &*format!("docker://route.example/shop/web@{digest}"),
                    "docker://target.example:5000/store/web",
                    &["Deployment shop/web".to_owned(), "Pod shop/debug".to_owned()][..]
                ),
                (
                    &*format!("docker://route.example/shop/web@{digest}"),
                    "docker://target.example:5000/store/web:v1",
                    &["ImageStream shop/web:v1".to_owned()][..]
                ),
                (
                    "docker://route.example/shop/api:2",
                    "docker://target.example:5000/store/api:2",
                    &["Deployment shop/api".to_owned()][..]
                ),
            ]
        );
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].reason.contains("held in registry `docker.io`"), "{:?}", skipped[0]);
        assert_eq!(skipped[1].reference, "nginx");
    }
}
