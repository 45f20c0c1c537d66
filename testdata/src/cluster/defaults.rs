//! Defaulting on create, where mover could notice it: what the real API server (its defaulters,
//! registry strategies and default admission plugins) fills in.

use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine as _;

use serde_json::{Value, json};

use super::resources::{self, ResourceType};
use super::store::Store;

static CLUSTER_IPS: AtomicU32 = AtomicU32::new(10);
static NODE_PORTS: AtomicU32 = AtomicU32::new(30_000);

fn set_default(object: &mut Value, field: &str, value: Value) {
    if object.get(field).is_none_or(Value::is_null) {
        object[field] = value;
    }
}

/// The default storage class's name, if one is marked default.
pub fn default_class(store: &Store) -> Option<String> {
    store
        .list(resources::by_kind("StorageClass"), None)
        .into_iter()
        .find(|class| class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true")
        .map(|class| super::store::name_of(class).to_owned())
}

/// What the real server does to every written object of a kind: a Secret's `stringData` is
/// merged into `data` (base64) and not stored.
pub fn normalize(resource: &ResourceType, object: &mut Value) {
    if resource.kind == "Secret"
        && let Some(Value::Object(strings)) = object.as_object_mut().and_then(|o| o.remove("stringData"))
    {
        let b64 = base64::engine::general_purpose::STANDARD;
        for (key, value) in strings {
            object["data"][key] = json!(b64.encode(value.as_str().unwrap_or("")));
        }
    }
}

/// Fills in what the real server fills in on create. `status` has already been dropped for
/// types with a status subresource.
pub fn apply(resource: &ResourceType, object: &mut Value, store: &Store) {
    normalize(resource, object);
    match resource.kind {
        "Namespace" => {
            let name = super::store::name_of(object).to_owned();
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
        }
        "Pod" => {
            let spec = &mut object["spec"];
            set_default(spec, "restartPolicy", json!("Always"));
            set_default(spec, "terminationGracePeriodSeconds", json!(30));
            set_default(spec, "dnsPolicy", json!("ClusterFirst"));
            set_default(spec, "schedulerName", json!("default-scheduler"));
            set_default(spec, "serviceAccountName", json!("default"));
            set_default(spec, "enableServiceLinks", json!(true));
            if let Some(containers) = spec["containers"].as_array_mut() {
                for container in containers {
                    let latest =
                        container["image"].as_str().is_some_and(|i| i.ends_with(":latest") || !i.contains(':'));
                    set_default(container, "imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" }));
                    set_default(container, "terminationMessagePath", json!("/dev/termination-log"));
                    set_default(container, "terminationMessagePolicy", json!("File"));
                }
            }
            object["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        "Service" => {
            let spec = &mut object["spec"];
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            if spec.get("clusterIP").is_none_or(|ip| ip.is_null() || ip == "") {
                let n = CLUSTER_IPS.fetch_add(1, Ordering::Relaxed);
                spec["clusterIP"] = json!(format!("10.96.{}.{}", n / 250, n % 250 + 1));
            }
            spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
            let node_ports = spec["type"] == "NodePort" || spec["type"] == "LoadBalancer";
            if let Some(ports) = spec["ports"].as_array_mut() {
                for port in ports {
                    set_default(port, "protocol", json!("TCP"));
                    let number = port["port"].clone();
                    set_default(port, "targetPort", number);
                    if node_ports {
                        set_default(port, "nodePort", json!(NODE_PORTS.fetch_add(1, Ordering::Relaxed)));
                    }
                }
            }
            object["status"] = json!({"loadBalancer": {}});
        }
        "PersistentVolumeClaim" => {
            set_default(&mut object["spec"], "volumeMode", json!("Filesystem"));
            if object["spec"].get("storageClassName").is_none_or(Value::is_null)
                && let Some(class) = default_class(store)
            {
                object["spec"]["storageClassName"] = json!(class);
            }
            object["status"] = json!({"phase": "Pending"});
            object["metadata"]["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
        }
        "PersistentVolume" => {
            object["metadata"]["finalizers"] = json!(["kubernetes.io/pv-protection"]);
            set_default(&mut object["spec"], "volumeMode", json!("Filesystem"));
            set_default(&mut object["spec"], "persistentVolumeReclaimPolicy", json!("Retain"));
            object["status"] = json!({"phase": "Pending"});
        }
        "Deployment" | "StatefulSet" | "ReplicaSet" => set_default(&mut object["spec"], "replicas", json!(1)),
        "CronJob" => {
            let spec = &mut object["spec"];
            set_default(spec, "suspend", json!(false));
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            object["status"] = json!({});
        }
        "Job" => {
            let spec = &mut object["spec"];
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completions", json!(1));
            set_default(spec, "parallelism", json!(1));
            set_default(&mut spec["template"]["spec"], "terminationGracePeriodSeconds", json!(30));
            object["status"] = json!({});
        }
        _ => {}
    }
}
