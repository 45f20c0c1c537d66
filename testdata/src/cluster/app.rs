//! A small application in the simulated source cluster, for the Kubernetes demo and tests:
//! namespaces `shop` and `shop-db` with three claims full of generated trees.
//!
//! - `shop/data` (ReadWriteOnce) is mounted by the Deployment `shop/web` (one replica, running);
//! - `shop/media` (ReadWriteOnce) is mounted by the `CronJob` `shop/thumbnails` (not suspended; the
//!   simulated clusters never schedule one), so no pod mounts it;
//! - `shop-db/db` (ReadWriteOnce) already has its target claim in the target cluster, made by the
//!   user beforehand (mover must use it as it is).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::ClusterPair;
use super::pair::TOOLS_REPOSITORY;
use crate::TreeSpec;

/// What [`deploy`] made.
pub struct App {
    /// Each claim (`namespace/name`) with its source volume's directory.
    pub claims: Vec<(String, PathBuf)>,
}

/// The claims of the application, `(namespace, name, mounted by a running pod)`: the pod of
/// [`WEB`].
pub const CLAIMS: [(&str, &str, bool); 3] =
    [("shop", "data", true), ("shop", "media", false), ("shop-db", "db", false)];

/// The Deployment that mounts `shop/data`, and the label `app=<name>` of its pods.
pub const WEB: (&str, &str) = ("shop", "web");
/// The `CronJob` that mounts `shop/media`.
pub const THUMBNAILS: (&str, &str) = ("shop", "thumbnails");

fn io_error(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// A client of context `context` of the pair's kubeconfig.
pub async fn client(pair: &ClusterPair, context: &str) -> std::io::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&pair.kubeconfig).map_err(io_error)?;
    let options = kube::config::KubeConfigOptions { context: Some(context.to_owned()), ..Default::default() };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(io_error)?;
    kube::Client::try_from(config).map_err(io_error)
}

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> std::io::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).map_err(io_error)?;
    api.create(&PostParams::default(), &object).await.map_err(io_error)
}

/// Creates `objects` in order, each a whole object with `apiVersion`, `kind` and `metadata` (e.g.
/// `mover_kube::objects::install_objects` as JSON, what `mover k8s manifests` prints): what
/// `kubectl apply -f -` does for objects that do not exist yet.
pub async fn apply(client: &kube::Client, objects: &[serde_json::Value]) -> std::io::Result<()> {
    for value in objects {
        let object: DynamicObject = serde_json::from_value(value.clone()).map_err(io_error)?;
        let resource = resource(&object)?;
        let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.create(&PostParams::default(), &object).await.map_err(io_error)?;
    }
    Ok(())
}

/// The API resource of `object`, from its `apiVersion` and `kind`.
fn resource(object: &DynamicObject) -> std::io::Result<ApiResource> {
    let types = object.types.clone().ok_or_else(|| io_error(format!("no apiVersion and kind in {object:?}")))?;
    Ok(ApiResource::from_gvk(&GroupVersionKind::try_from(&types).map_err(io_error)?))
}

/// A pod template labelled `app: <app>` running `sleep`, mounting `claim` at `/tmp/<claim>`.
fn template(app: &str, claim: &str, restart: &str) -> serde_json::Value {
    json!({"metadata": {"labels": {"app": app}},
           "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": app, "image": format!("{TOOLS_REPOSITORY}:1"),
                                    "command": ["sleep", "3600"],
                                    "volumeMounts": [{"name": claim, "mountPath": format!("/tmp/{claim}")}]}],
                    "volumes": [{"name": claim, "persistentVolumeClaim": {"claimName": claim}}]}})
}

/// [`WEB`], one replica, mounting `claim`.
fn web(claim: &str) -> serde_json::Value {
    let (namespace, name) = WEB;
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app": "shop"}},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                    "template": template(name, claim, "Always")}})
}

/// [`THUMBNAILS`], every night, mounting `shop/media`.
fn thumbnails() -> serde_json::Value {
    let (namespace, name) = THUMBNAILS;
    json!({"apiVersion": "batch/v1", "kind": "CronJob",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app": "shop"}},
           "spec": {"schedule": "0 2 * * *",
                    "jobTemplate": {"spec": {"template": template(name, "media", "Never")}}}})
}

fn claim(namespace: &str, name: &str, size: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app": "shop"}},
           "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                    "resources": {"requests": {"storage": size}}}})
}

/// The directory of the persistent volume bound to claim `namespace/name`, once it is bound.
pub async fn volume_dir(
    client: &kube::Client,
    cluster_dir: &Path,
    namespace: &str,
    name: &str,
) -> std::io::Result<PathBuf> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = claims.get(name).await.map_err(io_error)?;
        if let Some(volume) = found.spec.and_then(|s| s.volume_name) {
            return Ok(cluster_dir.join("volumes").join(volume));
        }
        if Instant::now() > deadline {
            return Err(io_error(format!("claim {namespace}/{name} was not bound in 20 s")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deploys the application into the pair's source cluster (and the existing target claim into
/// its target cluster), each claim filled with a generated tree of about `files` files.
pub async fn deploy(pair: &ClusterPair, files: usize) -> std::io::Result<App> {
    let source = client(pair, "source").await?;
    let target = client(pair, "target").await?;
    for namespace in ["shop", "shop-db"] {
        let value = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        create(&Api::<Namespace>::all(source.clone()), value.clone()).await?;
        if namespace == "shop-db" {
            create(&Api::<Namespace>::all(target.clone()), value).await?;
        }
    }
    let mut claims = Vec::new();
    for (index, (namespace, name, mounted)) in CLAIMS.into_iter().enumerate() {
        create(&Api::<PersistentVolumeClaim>::namespaced(source.clone(), namespace), claim(namespace, name, "1Gi"))
            .await?;
        let dir = volume_dir(&source, pair.source.dir(), namespace, name).await?;
        let spec = TreeSpec {
            files,
            dirs: files / 10 + 1,
            max_file_size: 1 << 20,
            big_files: Vec::new(),
            seed: 7 + index as u64,
            exotic: false,
        };
        crate::generate(&dir, &spec)?;
        if mounted {
            let deployment: DynamicObject = serde_json::from_value(web(name)).map_err(io_error)?;
            let deployments = Api::<DynamicObject>::namespaced_with(source.clone(), WEB.0, &resource(&deployment)?);
            deployments.create(&PostParams::default(), &deployment).await.map_err(io_error)?;
            wait_labelled_running(&source, WEB.0, &format!("app={}", WEB.1)).await?;
        }
        claims.push((format!("{namespace}/{name}"), dir));
    }
    apply(&source, &[thumbnails()]).await?;
    // The user made this target claim before the migration, a size of their choosing.
    create(&Api::<PersistentVolumeClaim>::namespaced(target.clone(), "shop-db"), claim("shop-db", "db", "2Gi")).await?;
    Ok(App { claims })
}

/// Waits until a pod labelled `selector` in `namespace` runs.
pub async fn wait_labelled_running(client: &kube::Client, namespace: &str, selector: &str) -> std::io::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = pods.list(&ListParams::default().labels(selector)).await.map_err(io_error)?;
        if listed.items.iter().any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io_error(format!("no pod labelled {selector} runs in {namespace} after 20 s")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until pod `namespace/name` runs.
pub async fn wait_running(client: &kube::Client, namespace: &str, name: &str) -> std::io::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pod = pods.get(name).await.map_err(io_error)?;
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io_error(format!("pod {namespace}/{name} is not running after 20 s: {:?}", pod.status)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
