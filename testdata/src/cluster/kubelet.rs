//! The kubelet part: for each scheduled pod, its volumes as host directories, then
//! [`Pods::start`](crate::pods::Pods::start), then the pod's status from what the process does.
//!
//! * volumes: a claim is bind-mounted (in the host's mount namespace) where a real kubelet mounts
//!   it, under the cluster's kubelet root `<cluster dir>/kubelet` ([`crate::podrunner::KubeletRoot`]):
//!   a CSI volume at `pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`, a `local` one at
//!   `pods/<uid>/volumes/kubernetes.io~local-volume/<pv>`; a `hostPath` volume is its path. The
//!   mounts go when the pod stops, is deleted or ends. A Secret's or `ConfigMap`'s keys are
//!   written by an atomic writer (`projection`) under `<cluster dir>/pods/<uid>/volumes/<name>/`
//!   and follow the object while the pod runs; an emptyDir, and any other kind, is a fresh
//!   directory there; a hostPath is its path. A missing Secret/ConfigMap (not `optional`) is a
//!   `FailedMount` event; a `ReadWriteOnce` claim in use by a running pod on another node is a
//!   `FailedAttachVolume` (Multi-Attach) event; the pod waits in `ContainerCreating` meanwhile,
//!   and is retried each round.
//! * a start error is the container's waiting reason and message and the pod stays Pending (not
//!   retried: a real kubelet retries with back-off, e.g. `ErrImagePull` then `ImagePullBackOff`);
//! * the first exit ends the pod: Succeeded for exit 0, Failed otherwise, whatever the
//!   restartPolicy (a real kubelet restarts containers under Always and `OnFailure`);
//! * deletion: the pod's processes are stopped (on their own thread, honouring the grace period
//!   through [`PodProcess::stop`](crate::pods::PodProcess::stop)), then the pod is removed.
//!   Pods removed at once (grace period 0) have their processes stopped after the fact.
//! * no probes, init containers, resources or image pulls; no CSI driver (a claim's storage is a
//!   directory, bind-mounted), and one kubelet root for every node of the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::PathBuf;
use std::thread::JoinHandle;

use serde_json::{Value, json};

use super::Shared;
use super::controllers::event;
use super::projection::{MountError, Projection};
use super::resources;
use super::scheduler::volume_dir;
use super::store::{self, Store, name_of, namespace_of};
use crate::podrunner::{PodDir, VolumePlugin};
use crate::pods::{PodProcess, PodStart};

/// How the kubelet mounts a persistent volume: through a volume plugin under the pod's
/// directory, or (`None`, a `hostPath` volume) at its own path.
fn plugin_of(pv: &Value) -> Result<Option<VolumePlugin>, String> {
    let spec = &pv["spec"];
    if spec.get("hostPath").is_some() {
        Ok(None)
    } else if spec.get("csi").is_some() {
        Ok(Some(VolumePlugin::Csi))
    } else if spec.get("local").is_some() {
        Ok(Some(VolumePlugin::InTree("local-volume".to_owned())))
    } else {
        Err(format!(
            "persistentvolume \"{}\" is neither csi, local nor hostPath, the only kinds the simulated kubelet mounts",
            name_of(pv)
        ))
    }
}

/// Where a pod's files live: `<cluster dir>/pods/<uid>`.
fn pod_dir_of(shared: &Shared, uid: &str) -> PathBuf {
    shared.dir.join("pods").join(uid)
}

/// Where a pod's containers' logs go.
pub fn log_dir(shared: &Shared, uid: &str) -> PathBuf {
    pod_dir_of(shared, uid).join("logs")
}

/// A started pod. Its fields drop in order: the containers are stopped before the pod's
/// directory unmounts its claims.
struct Running {
    process: Box<dyn PodProcess>,
    namespace: String,
    name: String,
    /// Where the readiness probe connects (a `tcpSocket` probe), until it succeeds once.
    probe: Option<std::net::SocketAddr>,
    /// Its Secret and `ConfigMap` volumes, rewritten when their object changes.
    projections: Vec<Projection>,
    /// Its directory under the kubelet root, with its claims mounted.
    _pod_dir: PodDir,
}

/// A pod's volumes, set up: what its containers get, and what the kubelet keeps for it.
struct Volumes {
    paths: BTreeMap<String, PathBuf>,
    projections: Vec<Projection>,
    pod_dir: PodDir,
}

/// The address a pod's first `tcpSocket` readiness probe connects to (a named port is looked
/// up in the container's ports), if it has one.
fn readiness_address(pod: &Value, ip: std::net::Ipv4Addr) -> Option<std::net::SocketAddr> {
    let containers = pod["spec"]["containers"].as_array()?;
    containers.iter().find_map(|container| {
        let port = &container["readinessProbe"]["tcpSocket"]["port"];
        let number = match port {
            Value::Number(number) => number.as_u64(),
            Value::String(name) => container["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"].as_str() == Some(name.as_str()))
                .and_then(|p| p["containerPort"].as_u64()),
            _ => None,
        }?;
        Some(std::net::SocketAddr::from((ip, u16::try_from(number).ok()?)))
    })
}

/// Whether something accepts connections at `address` (a readiness probe's check).
fn probe_succeeds(address: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_millis(200)).is_ok()
}

/// The kubelet's memory: the pods it runs, is stopping, and has given up on.
#[derive(Default)]
pub struct Kubelet {
    running: HashMap<String, Running>,
    stopping: HashMap<String, (String, String, JoinHandle<()>)>,
    failed_to_start: BTreeSet<String>,
    reported: BTreeSet<String>,
}

/// Why a pod cannot start yet: an event (type, reason, message) to report once.
struct NotReady(&'static str, String);

/// A volume that could not be set up, as the kubelet's `FailedMount` event says it.
fn set_up_failed(volume: &str, what: &str) -> NotReady {
    NotReady("FailedMount", format!("MountVolume.SetUp failed for volume \"{volume}\" : {what}"))
}

fn uid_of(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or("").to_owned()
}

fn claims_of(pod: &Value) -> Vec<String> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str().map(str::to_owned))
        .collect()
}

impl Kubelet {
    /// One round: stop what was deleted, start what was scheduled, report exits.
    pub fn sync(&mut self, shared: &Shared) {
        let pod_type = resources::by_kind("Pod");
        let pods: Vec<Value> = shared.read().list(pod_type, None).into_iter().cloned().collect();
        let present: BTreeSet<String> = pods.iter().map(uid_of).collect();
        let gone: Vec<String> = self.running.keys().filter(|uid| !present.contains(*uid)).cloned().collect();
        for uid in gone {
            self.begin_stop(&uid);
        }
        let finished: Vec<String> = self
            .stopping
            .iter()
            .filter(|(_, (_, _, thread))| thread.is_finished())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in finished {
            if let Some((namespace, name, thread)) = self.stopping.remove(&uid) {
                let _ = thread.join();
                shared.write(|store| {
                    if store.get(pod_type, &namespace, &name).is_some_and(|p| uid_of(p) == uid) {
                        store.remove(pod_type, &namespace, &name);
                    }
                });
            }
        }
        self.refresh_projections(shared);
        for pod in pods {
            let uid = uid_of(&pod);
            if pod["metadata"].get("deletionTimestamp").is_some() {
                if self.running.contains_key(&uid) {
                    self.begin_stop(&uid);
                } else if !self.stopping.contains_key(&uid) {
                    shared.write(|store| store.remove(pod_type, namespace_of(&pod), name_of(&pod)));
                }
                continue;
            }
            if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
                || matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            {
                continue;
            }
            if let Some(running) = self.running.get_mut(&uid) {
                if let Some(address) = running.probe
                    && probe_succeeds(address)
                {
                    running.probe = None;
                    shared.write(|store| ready(store, &pod));
                }
                if let Some(code) = running.process.try_wait() {
                    if let Some(mut running) = self.running.remove(&uid) {
                        running.process.stop();
                    }
                    shared.write(|store| exited(store, &pod, code));
                }
                continue;
            }
            if !self.failed_to_start.contains(&uid) {
                self.start(shared, &pod);
            }
        }
    }

    /// Rewrites the Secret and `ConfigMap` volumes of running pods whose object changed.
    fn refresh_projections(&mut self, shared: &Shared) {
        let store = shared.read();
        for projection in self.running.values_mut().flat_map(|running| running.projections.iter_mut()) {
            // A failed write is tried again next round (a real kubelet logs it and retries).
            let _ = projection.refresh(&store);
        }
    }

    fn begin_stop(&mut self, uid: &str) {
        if let Some(mut running) = self.running.remove(uid) {
            let (namespace, name) = (running.namespace.clone(), running.name.clone());
            // The containers stop, then dropping `running` unmounts the pod's claims.
            let thread = std::thread::spawn(move || running.process.stop());
            self.stopping.insert(uid.to_owned(), (namespace, name, thread));
        }
    }

    fn start(&mut self, shared: &Shared, pod: &Value) {
        let uid = uid_of(pod);
        let volumes = match self.volumes(shared, pod) {
            Ok(volumes) => volumes,
            Err(NotReady(reason, message)) => {
                let key = format!("{uid}/{reason}/{message}");
                if self.reported.insert(key) {
                    shared.write(|store| {
                        event(store, pod, "Warning", reason, &message, "kubelet");
                        waiting(store, pod, "ContainerCreating", "");
                    });
                }
                return;
            }
        };
        let logs = log_dir(shared, &uid);
        if let Err(e) = fs::create_dir_all(&logs) {
            shared.write(|store| {
                waiting(store, pod, "CreateContainerError", &format!("creating the log directory: {e}"));
            });
            self.failed_to_start.insert(uid);
            return;
        }
        let typed: k8s_openapi::api::core::v1::Pod = match serde_json::from_value(pod.clone()) {
            Ok(typed) => typed,
            Err(e) => {
                shared.write(|store| waiting(store, pod, "CreateContainerConfigError", &e.to_string()));
                self.failed_to_start.insert(uid);
                return;
            }
        };
        let Volumes { paths, projections, pod_dir } = volumes;
        match shared.pods.start(PodStart { pod: &typed, volumes: paths, log_dir: &logs }) {
            Ok(process) => {
                let ip = process.ip();
                let probe = readiness_address(pod, ip);
                let running = Running {
                    process,
                    namespace: namespace_of(pod).to_owned(),
                    name: name_of(pod).to_owned(),
                    probe,
                    projections,
                    _pod_dir: pod_dir,
                };
                self.running.insert(uid, running);
                shared.write(|store| started(store, pod, &ip.to_string(), probe.is_none()));
            }
            Err(error) => {
                self.failed_to_start.insert(uid);
                shared.write(|store| {
                    event(store, pod, "Warning", "Failed", &format!("Error: {}", error.reason), "kubelet");
                    waiting(store, pod, &error.reason, &error.message);
                });
            }
        }
    }

    /// Sets up the pod's volumes: each claim mounted under the pod's directory in the kubelet
    /// root (a `hostPath` volume's path as it is), Secrets and `ConfigMaps` projected, emptyDirs
    /// (and any other kind) made.
    fn volumes(&self, shared: &Shared, pod: &Value) -> Result<Volumes, NotReady> {
        let store = shared.read();
        let uid = uid_of(pod);
        let namespace = namespace_of(pod);
        let (mut paths, mut projections) = (BTreeMap::new(), Vec::new());
        // Claims are mounted once every volume is known to be ready, so that a pod waiting for
        // one does not mount and unmount the others each round.
        let mut mounts = Vec::new();
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or("").to_owned();
            let own = pod_dir_of(shared, &uid).join("volumes").join(&name);
            let failed = |what: String| set_up_failed(&name, &what);
            let path = if let Some(claim_name) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                let claim = store
                    .get(resources::by_kind("PersistentVolumeClaim"), namespace, claim_name)
                    .ok_or_else(|| failed(format!("persistentvolumeclaim \"{claim_name}\" not found")))?;
                let pv_name = claim["spec"]["volumeName"].as_str().unwrap_or("");
                let pv = store
                    .get(resources::by_kind("PersistentVolume"), "", pv_name)
                    .ok_or_else(|| failed(format!("persistentvolume \"{pv_name}\" not found")))?;
                self.check_attach(&store, pod, claim, pv)?;
                let directory = volume_dir(shared, pv);
                let _ = fs::create_dir_all(&directory);
                match plugin_of(pv).map_err(failed)? {
                    Some(plugin) => {
                        mounts.push((name, plugin, pv_name.to_owned(), directory));
                        continue;
                    }
                    None => directory,
                }
            } else if let Some(mut projection) = Projection::of(volume, namespace, own.clone()) {
                projection.set_up(&store).map_err(|MountError(what)| failed(what))?;
                projections.push(projection);
                own
            } else if let Some(path) = volume["hostPath"]["path"].as_str() {
                PathBuf::from(path)
            } else {
                fs::create_dir_all(&own).map_err(|e| failed(format!("creating {}: {e}", own.display())))?;
                own
            };
            paths.insert(name, path);
        }
        let mut pod_dir = shared
            .kubelet_root
            .pod(&uid)
            .map_err(|e| NotReady("FailedMount", format!("making the pod's directory under the kubelet root: {e}")))?;
        for (name, plugin, pv_name, directory) in mounts {
            let path = pod_dir
                .mount_volume(&plugin, &pv_name, &directory)
                .map_err(|e| set_up_failed(&name, &format!("mounting {}: {e}", directory.display())))?;
            paths.insert(name, path);
        }
        Ok(Volumes { paths, projections, pod_dir })
    }

    /// The Multi-Attach refusal: a `ReadWriteOnce` volume used by a running pod on another node.
    fn check_attach(&self, store: &Store, pod: &Value, claim: &Value, pv: &Value) -> Result<(), NotReady> {
        let modes = claim["status"]["accessModes"].as_array().cloned().unwrap_or_default();
        if modes.iter().any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany") {
            return Ok(());
        }
        let node = &pod["spec"]["nodeName"];
        let claim_name = name_of(claim).to_owned();
        let users: Vec<String> = self
            .running
            .values()
            .filter(|r| r.namespace == namespace_of(pod))
            .filter_map(|r| store.get(resources::by_kind("Pod"), &r.namespace, &r.name))
            .filter(|other| other["spec"]["nodeName"] != *node && claims_of(other).contains(&claim_name))
            .map(|other| name_of(other).to_owned())
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        Err(NotReady(
            "FailedAttachVolume",
            format!(
                "Multi-Attach error for volume \"{}\" Volume is already used by pod(s) {}",
                name_of(pv),
                users.join(", ")
            ),
        ))
    }

    /// Stops every pod (the cluster is stopping).
    pub fn stop_all(&mut self) {
        let uids: Vec<String> = self.running.keys().cloned().collect();
        for uid in uids {
            self.begin_stop(&uid);
        }
        for (_, (_, _, thread)) in self.stopping.drain() {
            let _ = thread.join();
        }
    }
}

fn container_names(pod: &Value) -> Vec<(String, String)> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["name"].as_str().unwrap_or("").to_owned(), c["image"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn condition(kind: &str, ready: bool, reason: &str) -> Value {
    let mut condition = json!({"type": kind, "status": if ready { "True" } else { "False" },
        "lastTransitionTime": store::now()});
    if !reason.is_empty() {
        condition["reason"] = json!(reason);
    }
    condition
}

/// Writes a pod's status built from its current one (keeping `PodScheduled`).
fn set_status(store: &mut Store, pod: &Value, update: impl FnOnce(&mut Value)) {
    let pod_type = resources::by_kind("Pod");
    let Some(mut current) = store.get(pod_type, namespace_of(pod), name_of(pod)).cloned() else { return };
    if uid_of(&current) != uid_of(pod) {
        return;
    }
    update(&mut current["status"]);
    store.put_if_changed(pod_type, current);
}

fn scheduled_conditions(status: &Value, ready: bool, reason: &str) -> Vec<Value> {
    let scheduled = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled").cloned())
        .unwrap_or_else(|| condition("PodScheduled", true, ""));
    vec![
        condition("PodReadyToStartContainers", ready || reason != "ContainersNotReady", ""),
        condition("Initialized", true, ""),
        condition("Ready", ready, reason),
        condition("ContainersReady", ready, reason),
        scheduled,
    ]
}

fn waiting(store: &mut Store, pod: &Value, reason: &str, message: &str) {
    let containers = container_names(pod);
    set_status(store, pod, |status| {
        let mut state = json!({"reason": reason});
        if !message.is_empty() {
            state["message"] = json!(message);
        }
        status["phase"] = json!("Pending");
        status["hostIP"] = json!("127.0.0.1");
        status["conditions"] = json!(scheduled_conditions(status, false, "ContainersNotReady"));
        status["containerStatuses"] =
            json!(containers.iter().map(|(name, image)| json!({
            "name": name, "image": image, "imageID": "", "ready": false, "started": false, "restartCount": 0,
            "state": {"waiting": state},
        })).collect::<Vec<_>>());
    });
}

/// A pod's readiness probe succeeded: it is Ready.
fn ready(store: &mut Store, pod: &Value) {
    set_status(store, pod, |status| {
        status["conditions"] = json!(scheduled_conditions(status, true, ""));
        if let Some(containers) = status["containerStatuses"].as_array_mut() {
            for container in containers {
                container["ready"] = json!(true);
            }
        }
    });
}

/// A pod's containers started; it is Ready at once unless it has a readiness probe (then when
/// the probe first succeeds).
fn started(store: &mut Store, pod: &Value, ip: &str, ready: bool) {
    let containers = container_names(pod);
    let uid = uid_of(pod);
    let now = store::now();
    set_status(store, pod, |status| {
        status["phase"] = json!("Running");
        status["hostIP"] = json!("127.0.0.1");
        status["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
        status["startTime"] = json!(now);
        status["conditions"] =
            json!(scheduled_conditions(status, ready, if ready { "" } else { "ContainersNotReady" }));
        status["containerStatuses"] = json!(
            containers
                .iter()
                .map(|(name, image)| json!({
                    "name": name, "image": image, "imageID": "", "containerID": format!("sim://{uid}/{name}"),
                    "ready": ready, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}},
                }))
                .collect::<Vec<_>>()
        );
    });
}

fn exited(store: &mut Store, pod: &Value, code: i32) {
    let now = store::now();
    let succeeded = code == 0;
    set_status(store, pod, |status| {
        let reason = if succeeded { "PodCompleted" } else { "PodFailed" };
        status["phase"] = json!(if succeeded { "Succeeded" } else { "Failed" });
        status["conditions"] = json!(scheduled_conditions(status, false, reason));
        if let Some(containers) = status["containerStatuses"].as_array_mut() {
            for container in containers {
                let started_at = container["state"]["running"]["startedAt"].clone();
                container["ready"] = json!(false);
                container["started"] = json!(false);
                container["state"] = json!({"terminated": {
                    "exitCode": code, "reason": if succeeded { "Completed" } else { "Error" },
                    "startedAt": started_at, "finishedAt": now, "containerID": container["containerID"],
                }});
            }
        }
    });
}
