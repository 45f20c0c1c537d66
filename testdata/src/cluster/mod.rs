//! A simulated Kubernetes cluster: a strict loopback HTTPS API server with small in-process
//! controllers, for testing mover's Kubernetes layer where no kube-apiserver can run.
//!
//! One call starts a cluster: [`SimCluster::start`]`(name, dir, pods)`. It serves
//! `https://127.0.0.1:<port>` with its own CA and bearer-token users (`admin` at start, more with
//! [`SimCluster::add_user`]); [`write_kubeconfig`] writes a kubeconfig with one context per cluster
//! (named after the cluster) that `kube::Config::from_custom_kubeconfig` and
//! `kube::Client::try_from` take unchanged.
//!
//! What it serves (`resources::RESOURCES`): core/v1 namespaces, nodes, pods (+status, +log),
//! services, secrets, configmaps, serviceaccounts (+token: the `TokenRequest` API, `tokens`), persistentvolumeclaims, persistentvolumes,
//! resourcequotas, events; storage.k8s.io/v1 storageclasses; apps/v1 daemonsets, deployments,
//! statefulsets, replicasets; batch/v1 jobs, cronjobs; rbac.authorization.k8s.io/v1 roles,
//! rolebindings, clusterroles, clusterrolebindings. Verbs: get, list, watch, create, update,
//! patch (merge and JSON patch; strategic merge patch is applied as a merge patch, so lists are
//! replaced, not merged by key; server-side apply is refused with 415), delete and
//! deletecollection. It behaves like the real server where mover can notice:
//!
//! * strict decoding (`fieldValidation=Strict`): unknown fields and wrong types are a 400;
//! * names checked (422), the immutable spec of a claim (422), `resourceVersion` conflicts (409);
//! * `Status` bodies with the real codes, reasons, messages and details;
//! * watches with `resourceVersion`, bookmarks, `timeoutSeconds` and 410 Expired (as an ERROR
//!   event) from a version older than the history ([`SimCluster::compact`] forgets it);
//! * every request recorded ([`SimCluster::requests`], and `<dir>/audit.jsonl`);
//! * faults ([`SimCluster::faults`]): 403 for a (user, verb, resource), watches dropped after N
//!   events, a delay on every answer.
//!
//! An `OpenShift`-flavoured cluster ([`Flavor::OpenShift`], [`SimCluster::start_flavored`]) also
//! serves route.openshift.io/v1 routes, image.openshift.io/v1 imagestreams and
//! apps.openshift.io/v1 deploymentconfigs (types in `openshift.rs`), and lists their groups in
//! discovery; a Kubernetes one answers 404 for them, as a real cluster without those APIs does.
//!
//! What it does not do: authorization (every authenticated user may do everything unless a fault
//! forbids it; RBAC objects are stored, not enforced), admission (Pod Security, quotas), API
//! discovery beyond the groups above, server-side apply, pagination (`limit` is ignored: every
//! list is one page), protobuf. The controllers are in `controllers` and `kubelet`, each saying
//! what a real cluster does differently.
//!
//! Files under `dir`: `audit.jsonl`, `volumes/<pv>/` (persistent volumes), `kubelet/` (the kubelet
//! root, [`SimCluster::kubelet_root`]: `kubelet/pods/<uid>/volumes/...` holds a running pod's
//! claims, bind-mounted as a real kubelet lays them out), `pods/<uid>/` (a pod's secret, config
//! map and emptyDir volumes and its `logs/<container>.log`). Starting a cluster needs root: the
//! kubelet root is a bind mount with shared propagation, and claims are bind mounts.

pub mod app;
mod audit;
mod controllers;
mod defaults;
mod http1;
pub mod inspect;
mod kubeconfig;
mod kubelet;
#[cfg(test)]
mod kubelet_tests;
mod openshift;
#[cfg(test)]
mod openshift_tests;
mod pair;
mod portforward;
#[cfg(test)]
mod portforward_tests;
mod projection;
mod resources;
mod router;
mod scheduler;
mod selectors;
mod server;
mod status;
mod store;
mod strict;
#[cfg(test)]
mod tests;
mod tokens;
mod verbs;
mod watch;
mod workloads;
#[cfg(test)]
mod workloads_tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde_json::{Value, json};

pub use audit::{Faults, Request};
pub use kubeconfig::{KubeconfigEntry, write_kubeconfig, write_kubeconfig_entries};
pub use pair::{AGENT_REPOSITORY, ClusterPair, TOOLS_REPOSITORY};
pub use router::{ROUTER_PORT, default_host as default_route_host};
pub use tokens::{IssuedToken, ServiceAccountTokens};

use crate::podrunner::KubeletRoot;
use crate::pods::Pods;
use resources::ResourceType;
use store::Store;

/// The nodes every cluster starts with.
pub const NODES: [&str; 2] = ["node-a", "node-b"];

/// Which API a cluster serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// Kubernetes: the resources above.
    #[default]
    Kubernetes,
    /// `OpenShift`: also `route.openshift.io` Routes, `image.openshift.io` `ImageStreams` and
    /// `apps.openshift.io` `DeploymentConfigs` (stored and served; Routes admitted, and a router
    /// for passthrough Routes where pods reach the host (`router`); no image import and no
    /// `DeploymentConfig` controller run).
    OpenShift,
}

/// The state the server and the controllers share.
pub(crate) struct Shared {
    name: String,
    flavor: Flavor,
    dir: PathBuf,
    store: Mutex<Store>,
    changed: tokio::sync::watch::Sender<u64>,
    users: Mutex<BTreeMap<String, String>>,
    audit: audit::Audit,
    faults: Faults,
    /// The service-account tokens issued through the `TokenRequest` API.
    tokens: ServiceAccountTokens,
    pods: Arc<dyn Pods>,
    /// `<dir>/kubelet`: where the kubelet mounts pods' claims.
    kubelet_root: KubeletRoot,
    stopping: AtomicBool,
}

impl Shared {
    /// Runs `f` on the store, then wakes the watches.
    fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.store.lock().expect("store");
        let out = f(&mut store);
        let version = store.version();
        drop(store);
        self.changed.send_replace(version);
        out
    }

    fn read(&self) -> MutexGuard<'_, Store> {
        self.store.lock().expect("store")
    }

    fn user_of(&self, token: &str) -> Option<String> {
        self.users.lock().expect("users").get(token).cloned()
    }
}

/// A running simulated cluster. Dropping it stops it (as [`SimCluster::stop`]).
pub struct SimCluster {
    shared: Arc<Shared>,
    url: String,
    ca_pem: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    router: Option<std::net::SocketAddr>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes).expect("system random");
    bytes.iter().fold(String::new(), |mut text, b| {
        let _ = write!(text, "{b:02x}");
        text
    })
}

impl SimCluster {
    /// Starts a cluster named `name` keeping its files in `dir` (created if missing): the API
    /// server on an ephemeral loopback port, nodes `node-a` and `node-b`, storage classes
    /// `standard` (default, `WaitForFirstConsumer`) and `fast` (`Immediate`), namespaces
    /// `default` and `kube-system`, and the controllers. `pods` runs the pods' containers.
    pub fn start(name: &str, dir: &Path, pods: Arc<dyn Pods>) -> io::Result<SimCluster> {
        SimCluster::start_flavored(name, dir, pods, Flavor::Kubernetes)
    }

    /// As [`SimCluster::start`], serving the API of `flavor`.
    pub fn start_flavored(name: &str, dir: &Path, pods: Arc<dyn Pods>, flavor: Flavor) -> io::Result<SimCluster> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let (ca_pem, cert_pem, key_pem) = crate::registry::make_certificates()?;
        let tls = server::tls_config(&cert_pem, &key_pem)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("https://{}", listener.local_addr()?);
        let kubelet_root = KubeletRoot::new(&dir.join("kubelet")).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "making the simulated kubelet's root {}/kubelet (it bind-mounts claims there, which needs root): {e}",
                    dir.display()
                ),
            )
        })?;
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            flavor,
            audit: audit::Audit::open(&dir.join("audit.jsonl"))?,
            dir,
            store: Mutex::new(Store::default()),
            changed,
            users: Mutex::new(BTreeMap::new()),
            faults: Faults::default(),
            tokens: ServiceAccountTokens::default(),
            pods,
            kubelet_root,
            stopping: AtomicBool::new(false),
        });
        shared.users.lock().expect("users").insert(random_token(), "admin".to_owned());
        seed(&shared);
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let serving = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("sim-{name}-api"))
                .spawn(move || server::serve(&shared, listener, tls, stopped))?
        };
        let controlling = {
            let shared = shared.clone();
            std::thread::Builder::new().name(format!("sim-{name}-ctl")).spawn(move || controllers::run(&shared))?
        };
        let mut threads = vec![serving, controlling];
        let mut router = None;
        if let (Flavor::OpenShift, Some(ip)) = (flavor, shared.pods.router_address()) {
            let started = router::Router::start(&shared, ip)?;
            router = Some(started.addr);
            threads.push(started.thread);
        }
        Ok(SimCluster { shared, url, ca_pem, shutdown: Some(shutdown), threads, router })
    }

    /// The cluster's name (its kubeconfig context).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// `https://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA that signed the server's certificate, PEM.
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The directory the cluster keeps its files in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The kubelet root, `<dir>/kubelet` (a real node's `/var/lib/kubelet`): the pods' claims are
    /// mounted under its `pods/` while they run. What a node agent's `DaemonSet` is rendered with.
    #[must_use]
    pub fn kubelet_root(&self) -> &Path {
        self.shared.kubelet_root.root()
    }

    /// Where the `OpenShift` router listens (`<pod gateway>:443`), which this machine and every
    /// pod reach: what `routerAddress` names. `None` for a Kubernetes cluster, or where pods do
    /// not reach the host.
    #[must_use]
    pub fn router_address(&self) -> Option<std::net::SocketAddr> {
        self.router
    }

    /// Adds a user (or gives the existing one's token); returns its bearer token.
    #[must_use]
    pub fn add_user(&self, user: &str) -> String {
        if let Some(token) = self.token(user) {
            return token;
        }
        let token = random_token();
        self.shared.users.lock().expect("users").insert(token.clone(), user.to_owned());
        token
    }

    /// A user's bearer token.
    #[must_use]
    pub fn token(&self, user: &str) -> Option<String> {
        self.shared.users.lock().expect("users").iter().find(|(_, u)| *u == user).map(|(t, _)| t.clone())
    }

    /// The kubeconfig context, cluster and user entries for `user` on this cluster.
    #[must_use]
    pub fn kubeconfig_entry(&self, user: &str) -> KubeconfigEntry {
        KubeconfigEntry {
            context: self.name().to_owned(),
            server: self.url.clone(),
            ca_pem: self.ca_pem.clone(),
            user: format!("{}-{user}", self.name()),
            token: self.add_user(user),
        }
    }

    /// Every request so far, in order.
    #[must_use]
    pub fn requests(&self) -> Vec<Request> {
        self.shared.audit.requests()
    }

    /// The faults to inject.
    #[must_use]
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The service-account tokens this cluster issued (`POST .../serviceaccounts/NAME/token`).
    #[must_use]
    pub fn service_account_tokens(&self) -> ServiceAccountTokens {
        self.shared.tokens.clone()
    }

    /// Forgets the watch history: a watch from any version before now gets 410 Expired.
    pub fn compact(&self) {
        self.shared.write(Store::compact);
    }

    /// Stops the server and the controllers, and every pod's containers.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Creates what a fresh cluster has: namespaces, nodes, storage classes.
fn seed(shared: &Shared) {
    let put = |resource: &'static ResourceType, object: Value| {
        shared.write(|store| controllers::create_in(store, resource, object));
    };
    for namespace in ["default", "kube-system"] {
        put(resources::by_kind("Namespace"), json!({"metadata": {"name": namespace}}));
    }
    for node in NODES {
        put(
            resources::by_kind("Node"),
            json!({
                "metadata": {"name": node, "labels": {
                    "kubernetes.io/hostname": node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                }},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "kubelet is posting ready status", "lastHeartbeatTime": store::now(),
                        "lastTransitionTime": store::now()}],
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node}],
                    "nodeInfo": {"kubeletVersion": "v1.33.0-sim", "architecture": "amd64", "operatingSystem": "linux",
                        "bootID": "", "containerRuntimeVersion": "sim://1", "kernelVersion": "", "kubeProxyVersion": "",
                        "machineID": "", "osImage": "mover simulated node", "systemUUID": ""},
                },
            }),
        );
    }
    for (class, mode, default) in [("standard", "WaitForFirstConsumer", true), ("fast", "Immediate", false)] {
        put(
            resources::by_kind("StorageClass"),
            json!({
                "metadata": {"name": class, "annotations": {
                    "storageclass.kubernetes.io/is-default-class": default.to_string(),
                }},
                "provisioner": controllers::PROVISIONER,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": mode,
                "allowVolumeExpansion": true,
            }),
        );
    }
}
