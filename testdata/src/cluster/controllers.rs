//! The in-process controllers, run every [`ROUND`] on one thread, each small and level-triggered
//! (it looks at the whole store each round):
//!
//! * namespaces: a `default` `ServiceAccount` in each; a deleted namespace's objects are deleted,
//!   then the namespace (a real cluster also runs finalizers and waits on API discovery);
//! * garbage collection: an object whose owners (`ownerReferences`) are all gone is deleted
//!   (background propagation only; no `foreground`/`orphan`, no `blockOwnerDeletion`);
//! * storage object in-use protection: a deleted claim stays (Terminating, with its
//!   `kubernetes.io/pvc-protection` finalizer) while a pod that has not finished uses it; a
//!   deleted volume stays while it is Bound;
//! * services: the `LoadBalancer` address is the IP of the one Running pod the selector matches
//!   (no kube-proxy and no cloud load balancer: a simulation shortcut so the address reaches the
//!   pod directly; no Endpoints or `EndpointSlices` are made);
//! * routes (`OpenShift` flavour): hosts defaulted and Routes admitted, in `router`;
//! * deployments, replica sets, stateful sets and daemon sets: in `workloads`;
//! * jobs: one pod at a time (`parallelism` and `completions` above 1 are not simulated), retried
//!   up to `backoffLimit`, `activeDeadlineSeconds`, Complete and Failed conditions; with
//!   `parallelism: 0` its running pods are deleted and none is started (as the real controller);
//! * the scheduler and the volume binder (`scheduler`) and the kubelet (`kubelet`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::kubelet::Kubelet;
use super::resources::{self, ResourceType};
use super::selectors::LabelSelector;
use super::store::{self, Store, name_of, namespace_of};
use super::verbs::delete_in;
use super::{Shared, defaults, scheduler};

/// The CSI driver name of the simulated provisioner.
pub const PROVISIONER: &str = "csi.sim.mover.io";

/// How often the controllers look at the store.
const ROUND: Duration = Duration::from_millis(50);

/// Runs the controllers until the cluster stops, then stops every pod.
pub fn run(shared: &Arc<Shared>) {
    let mut kubelet = Kubelet::default();
    while !shared.stopping.load(Ordering::SeqCst) {
        namespaces(shared);
        garbage_collect(shared);
        protection(shared);
        scheduler::bind_volumes(shared);
        scheduler::schedule(shared);
        kubelet.sync(shared);
        services(shared);
        if shared.flavor == super::Flavor::OpenShift {
            super::router::admit(shared);
        }
        jobs(shared);
        super::workloads::run(shared);
        std::thread::sleep(ROUND);
    }
    kubelet.stop_all();
}

/// Creates an object as the API server would (uid, creation time, defaults), for controllers.
pub fn create_in(store: &mut Store, resource: &'static ResourceType, mut object: Value) -> Value {
    object["apiVersion"] = json!(resource.api_version());
    object["kind"] = json!(resource.kind);
    object["metadata"]["uid"] = json!(store.uid());
    object["metadata"]["creationTimestamp"] = json!(store::now());
    defaults::apply(resource, &mut object, store);
    store.put(resource, object)
}

/// Records an Event about `object` (as a kubelet or the scheduler would).
pub fn event(store: &mut Store, object: &Value, kind: &str, reason: &str, message: &str, component: &str) {
    let name = format!("{}.{:x}", name_of(object), store.version() + 1);
    let now = store::now();
    let namespace = namespace_of(object).to_owned();
    let event = json!({
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {
            "apiVersion": object["apiVersion"], "kind": object["kind"], "name": name_of(object),
            "namespace": namespace, "uid": object["metadata"]["uid"],
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    create_in(store, resources::by_kind("Event"), event);
}

fn namespaces(shared: &Shared) {
    shared.write(|store| {
        let namespace_type = resources::by_kind("Namespace");
        let account = resources::by_kind("ServiceAccount");
        let namespaces: Vec<Value> = store.list(namespace_type, None).into_iter().cloned().collect();
        for namespace in namespaces {
            let name = name_of(&namespace).to_owned();
            if namespace["metadata"].get("deletionTimestamp").is_none() {
                if store.get(account, &name, "default").is_none() {
                    create_in(store, account, json!({"metadata": {"name": "default", "namespace": name}}));
                }
                continue;
            }
            let inside = store.in_namespace(&name);
            if inside.is_empty() {
                store.remove(namespace_type, "", &name);
            }
            for (resource, object) in inside {
                delete_in(store, resource, &name, name_of(&object), None);
            }
        }
    });
}

/// Removes `finalizer` from a deleted object, and the object once no finalizer is left.
fn finalize(store: &mut Store, resource: &'static ResourceType, mut object: Value, finalizer: &str) {
    let Some(finalizers) = object["metadata"]["finalizers"].as_array_mut() else { return };
    finalizers.retain(|f| f != finalizer);
    if finalizers.is_empty() {
        store.remove(resource, namespace_of(&object), name_of(&object));
    } else {
        store.put(resource, object);
    }
}

fn protection(shared: &Shared) {
    shared.write(|store| {
        let deleting = |store: &Store, resource, finalizer: &str| -> Vec<Value> {
            store
                .list(resource, None)
                .into_iter()
                .filter(|o| {
                    o["metadata"].get("deletionTimestamp").is_some()
                        && o["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|f| f == finalizer))
                })
                .cloned()
                .collect()
        };
        let claims = resources::by_kind("PersistentVolumeClaim");
        let pods = resources::by_kind("Pod");
        for claim in deleting(store, claims, "kubernetes.io/pvc-protection") {
            let in_use = store.list(pods, Some(namespace_of(&claim))).into_iter().any(|pod| {
                !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                    && pod["spec"]["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| v["persistentVolumeClaim"]["claimName"].as_str() == Some(name_of(&claim)))
            });
            if !in_use {
                finalize(store, claims, claim, "kubernetes.io/pvc-protection");
            }
        }
        let volumes = resources::by_kind("PersistentVolume");
        for volume in deleting(store, volumes, "kubernetes.io/pv-protection") {
            if volume["status"]["phase"] != "Bound" {
                finalize(store, volumes, volume, "kubernetes.io/pv-protection");
            }
        }
    });
}

fn garbage_collect(shared: &Shared) {
    shared.write(|store| {
        let all = store.all();
        let uids: BTreeSet<&str> = all.iter().filter_map(|(_, o)| o["metadata"]["uid"].as_str()).collect();
        let orphans: Vec<(&'static ResourceType, String, String)> = all
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"].as_array().is_some_and(|owners| {
                    !owners.is_empty() && owners.iter().all(|r| !r["uid"].as_str().is_some_and(|u| uids.contains(u)))
                })
            })
            .map(|(r, o)| (*r, namespace_of(o).to_owned(), name_of(o).to_owned()))
            .collect();
        for (resource, namespace, name) in orphans {
            delete_in(store, resource, &namespace, &name, None);
        }
    });
}

fn services(shared: &Shared) {
    shared.write(|store| {
        let service_type = resources::by_kind("Service");
        let balancers: Vec<Value> = store
            .list(service_type, None)
            .into_iter()
            .filter(|s| s["spec"]["type"] == "LoadBalancer")
            .cloned()
            .collect();
        for mut service in balancers {
            let ips: Vec<&str> =
                selected_pods(store, &service).into_iter().filter_map(|p| p["status"]["podIP"].as_str()).collect();
            let ingress = match ips.as_slice() {
                [ip] => json!({"ingress": [{"ip": ip, "ipMode": "VIP"}]}),
                _ => json!({}),
            };
            service["status"]["loadBalancer"] = ingress;
            store.put_if_changed(service_type, service);
        }
    });
}

/// The Running pods a Service's selector picks (none for a Service without one): its endpoints,
/// as far as the simulation has them.
pub(super) fn selected_pods<'a>(store: &'a Store, service: &Value) -> Vec<&'a Value> {
    let selector = service["spec"]["selector"].as_object().cloned().unwrap_or_default();
    let text: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
    let Ok(selector) = LabelSelector::parse(&text.join(",")) else { return Vec::new() };
    store
        .list(resources::by_kind("Pod"), Some(namespace_of(service)))
        .into_iter()
        .filter(|p| !text.is_empty() && selector.matches(p) && p["status"]["phase"] == "Running")
        .collect()
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    let now = store::now();
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": now})
}

fn seconds_since(time: &Value) -> i64 {
    let now = store::now_seconds();
    let started =
        time.as_str().and_then(|t| t.parse::<Timestamp>().ok()).map_or(now, k8s_openapi::jiff::Timestamp::as_second);
    now - started
}

fn jobs(shared: &Shared) {
    shared.write(|store| {
        let job_type = resources::by_kind("Job");
        let pod_type = resources::by_kind("Pod");
        let jobs: Vec<Value> = store.list(job_type, None).into_iter().cloned().collect();
        for mut job in jobs {
            let finished = job["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Complete" || c["type"] == "Failed"));
            if finished || job["metadata"].get("deletionTimestamp").is_some() {
                continue;
            }
            let namespace = namespace_of(&job).to_owned();
            let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_owned();
            let pods: Vec<Value> = store
                .list(pod_type, Some(&namespace))
                .into_iter()
                .filter(|p| p["metadata"]["labels"]["controller-uid"] == uid.as_str())
                .cloned()
                .collect();
            let count = |phase: &str| pods.iter().filter(|p| p["status"]["phase"] == phase).count();
            let (succeeded, failed) = (count("Succeeded"), count("Failed"));
            let active: Vec<&Value> = pods
                .iter()
                .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
                .collect();
            if job["spec"]["parallelism"] == 0 {
                for pod in &active {
                    delete_in(store, pod_type, &namespace, name_of(pod), None);
                }
                job["status"]["active"] = json!(0);
                store.put_if_changed(job_type, job);
                continue;
            }
            let status = &mut job["status"];
            if status.get("startTime").is_none() {
                status["startTime"] = json!(store::now());
            }
            let deadline = job["spec"]["activeDeadlineSeconds"].as_i64();
            let backoff = job["spec"]["backoffLimit"].as_i64().unwrap_or(6);
            let failure = if i64::try_from(failed).unwrap_or(i64::MAX) > backoff {
                Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
            } else if deadline.is_some_and(|d| seconds_since(&job["status"]["startTime"]) >= d) {
                Some(("DeadlineExceeded", "Job was active longer than specified deadline"))
            } else {
                None
            };
            let status = &mut job["status"];
            status["succeeded"] = json!(succeeded);
            status["failed"] = json!(failed);
            status["active"] = json!(active.len());
            if let Some((reason, message)) = failure {
                status["conditions"] =
                    json!([condition("FailureTarget", reason, message), condition("Failed", reason, message)]);
                status["active"] = json!(0);
                for pod in &active {
                    delete_in(store, pod_type, &namespace, name_of(pod), None);
                }
            } else if succeeded >= 1 {
                status["conditions"] = json!([
                    condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                    condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
                ]);
                status["completionTime"] = json!(store::now());
            } else if active.is_empty() {
                let labels = [
                    ("job-name", name_of(&job)),
                    ("controller-uid", &uid),
                    ("batch.kubernetes.io/job-name", name_of(&job)),
                    ("batch.kubernetes.io/controller-uid", &uid),
                ];
                let pod = pod_from_template(&job, &labels);
                create_in(store, pod_type, pod);
                job["status"]["active"] = json!(1);
            }
            store.put_if_changed(job_type, job);
        }
    });
}

/// A pod from a controller's template: named `<owner>-<5 characters>`, with the owner's
/// reference and `labels` added.
pub(super) fn pod_from_template(owner: &Value, labels: &[(&str, &str)]) -> Value {
    let name = format!("{}-{}", name_of(owner), &super::verbs::generate_name("")[..5]);
    let mut pod = owner["spec"]["template"].clone();
    for (key, value) in labels {
        pod["metadata"]["labels"][*key] = json!(value);
    }
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["namespace"] = json!(namespace_of(owner));
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
        "name": name_of(owner), "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]);
    pod
}
