//! The scheduler and the persistent-volume binder and provisioner.
//!
//! * Binder: a pending claim naming a `volumeName` is bound to that volume; else to an Available
//!   volume of its class with the capacity and access modes; else a class of the simulated
//!   provisioner provisions one: at once for `Immediate`, when a pod using the claim is
//!   scheduled for `WaitForFirstConsumer` (the volume then gets required node affinity for that
//!   node, and the claim the `volume.kubernetes.io/selected-node` annotation). A volume is the
//!   directory `<cluster dir>/volumes/<pv name>` (or its `hostPath`/`local` path). A bound volume
//!   whose claim is gone is deleted (reclaim policy Delete, with its directory) or Released.
//!   Volumes in phase Failed are left alone. A real cluster also checks the claim's selector and
//!   volume mode, and an external provisioner talks to storage.
//! * Scheduler: a pod without `nodeName` goes to the first node (by name) that satisfies its
//!   `nodeSelector`, its required node affinity and its bound volumes' node affinity; otherwise
//!   it stays Pending with PodScheduled=False, reason Unschedulable and the real message's shape.
//!   A missing claim or an unbound claim of an Immediate class keeps it Pending too. No taints,
//!   resources, pod (anti-)affinity or spreading: a real scheduler scores nodes, this one does not.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::Shared;
use super::controllers::{PROVISIONER, create_in, event};
use super::resources;
use super::store::{self, Store, name_of, namespace_of};

/// The directory that holds a persistent volume's data.
pub fn volume_dir(shared: &Shared, pv: &Value) -> PathBuf {
    let spec = &pv["spec"];
    if let Some(path) = spec["hostPath"]["path"].as_str().or_else(|| spec["local"]["path"].as_str()) {
        return PathBuf::from(path);
    }
    shared.dir.join("volumes").join(name_of(pv))
}

/// Bytes in a quantity such as `1Gi`, `500M` or `1024` (for capacity comparisons).
fn quantity(text: &str) -> u128 {
    let units: [(&str, u128); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u128>().unwrap_or(0) * factor;
        }
    }
    text.parse().unwrap_or(0)
}

fn class_of<'s>(store: &'s Store, claim: &Value) -> Option<&'s Value> {
    let name = claim["spec"]["storageClassName"].as_str()?;
    store.get(resources::by_kind("StorageClass"), "", name)
}

fn provisions(class: &Value) -> bool {
    class["provisioner"] == PROVISIONER
}

/// Binds a claim and a volume to each other.
fn bind(store: &mut Store, mut claim: Value, mut pv: Value, by_controller: bool) {
    pv["spec"]["claimRef"] = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
        "namespace": namespace_of(&claim), "name": name_of(&claim), "uid": claim["metadata"]["uid"],
        "resourceVersion": claim["metadata"]["resourceVersion"]});
    pv["status"]["phase"] = json!("Bound");
    claim["spec"]["volumeName"] = json!(name_of(&pv));
    let annotations = &mut claim["metadata"]["annotations"];
    annotations["pv.kubernetes.io/bind-completed"] = json!("yes");
    if by_controller {
        annotations["pv.kubernetes.io/bound-by-controller"] = json!("yes");
    }
    claim["status"] =
        json!({"phase": "Bound", "capacity": pv["spec"]["capacity"], "accessModes": pv["spec"]["accessModes"]});
    store.put(resources::by_kind("PersistentVolume"), pv);
    store.put(resources::by_kind("PersistentVolumeClaim"), claim);
}

/// Provisions a volume for a claim (on `node` for `WaitForFirstConsumer`) and binds them.
fn provision(shared: &Shared, store: &mut Store, mut claim: Value, class: &Value, node: Option<&str>) {
    let name = format!("pvc-{}", claim["metadata"]["uid"].as_str().unwrap_or(""));
    let mut pv = json!({
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            "accessModes": claim["spec"]["accessModes"],
            "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
            "storageClassName": name_of(class),
            "volumeMode": claim["spec"]["volumeMode"],
            "csi": {"driver": PROVISIONER, "volumeHandle": name, "fsType": "ext4"},
        },
    });
    if let Some(node) = node {
        pv["spec"]["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}});
        claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] = json!(node);
    }
    let directory = volume_dir(shared, &pv);
    if std::fs::create_dir_all(&directory).is_err() {
        return;
    }
    let pv = create_in(store, resources::by_kind("PersistentVolume"), pv);
    bind(store, claim, pv, true);
}

/// Whether an Available volume fits a claim.
fn fits(pv: &Value, claim: &Value) -> bool {
    let class = |o: &Value, path: &str| o["spec"][path].as_str().unwrap_or("").to_owned();
    let modes = |o: &Value| -> Vec<String> {
        o["spec"]["accessModes"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let claimed = &pv["spec"]["claimRef"];
    let claimed_ok = claimed.is_null()
        || (claimed["name"] == claim["metadata"]["name"] && claimed["namespace"] == claim["metadata"]["namespace"]);
    pv["status"]["phase"] == "Available"
        && claimed_ok
        && class(pv, "storageClassName") == class(claim, "storageClassName")
        && quantity(pv["spec"]["capacity"]["storage"].as_str().unwrap_or("0"))
            >= quantity(claim["spec"]["resources"]["requests"]["storage"].as_str().unwrap_or("0"))
        && modes(claim).iter().all(|m| modes(pv).contains(m))
}

/// One round of the binder.
pub fn bind_volumes(shared: &Shared) {
    shared.write(|store| {
        let pv_type = resources::by_kind("PersistentVolume");
        let claim_type = resources::by_kind("PersistentVolumeClaim");
        let volumes: Vec<Value> = store.list(pv_type, None).into_iter().cloned().collect();
        for mut pv in volumes {
            let phase = pv["status"]["phase"].as_str().unwrap_or("").to_owned();
            if phase == "Failed" {
                continue;
            }
            let claim_ref = pv["spec"]["claimRef"].clone();
            if claim_ref.is_null() {
                if phase == "Pending" || phase.is_empty() {
                    pv["status"]["phase"] = json!("Available");
                    store.put(pv_type, pv);
                }
                continue;
            }
            let claim = store.get(
                claim_type,
                claim_ref["namespace"].as_str().unwrap_or(""),
                claim_ref["name"].as_str().unwrap_or(""),
            );
            let same = claim.is_some_and(|c| claim_ref["uid"].is_null() || c["metadata"]["uid"] == claim_ref["uid"]);
            if same || phase != "Bound" {
                if !same && (phase == "Pending" || phase.is_empty()) {
                    pv["status"]["phase"] = json!("Available");
                    store.put(pv_type, pv);
                }
                continue;
            }
            if pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete" {
                let directory = volume_dir(shared, &pv);
                let _ = std::fs::remove_dir_all(directory);
                store.remove(pv_type, "", name_of(&pv));
            } else {
                pv["status"]["phase"] = json!("Released");
                store.put(pv_type, pv);
            }
        }
        let pending: Vec<Value> = store
            .list(claim_type, None)
            .into_iter()
            .filter(|c| c["status"]["phase"] == "Pending" && c["metadata"].get("deletionTimestamp").is_none())
            .cloned()
            .collect();
        for claim in pending {
            if let Some(wanted) = claim["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
                if let Some(pv) = store.get(pv_type, "", wanted).filter(|pv| fits(pv, &claim)).cloned() {
                    bind(store, claim, pv, false);
                }
                continue;
            }
            let available = store.list(pv_type, None).into_iter().find(|pv| fits(pv, &claim)).cloned();
            if let Some(pv) = available {
                bind(store, claim, pv, true);
                continue;
            }
            if let Some(class) = class_of(store, &claim).cloned()
                && provisions(&class)
                && class["volumeBindingMode"] != "WaitForFirstConsumer"
            {
                provision(shared, store, claim, &class, None);
            }
        }
    });
}

/// Whether a node's labels satisfy a `nodeSelectorTerms` list (any term; all expressions).
fn satisfies(terms: &Value, node: &Value) -> bool {
    let Some(terms) = terms.as_array() else { return true };
    terms.iter().any(|term| {
        let expressions =
            term["matchExpressions"].as_array().into_iter().flatten().map(|e| (e, &node["metadata"]["labels"]));
        let fields = term["matchFields"].as_array().into_iter().flatten().map(|e| (e, &Value::Null));
        expressions.chain(fields).all(|(expression, labels)| {
            let key = expression["key"].as_str().unwrap_or("");
            let value = if labels.is_null() { node["metadata"]["name"].as_str() } else { labels[key].as_str() };
            let values: Vec<&str> =
                expression["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            match expression["operator"].as_str() {
                Some("In") => value.is_some_and(|v| values.contains(&v)),
                Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
                Some("Exists") => value.is_some(),
                Some("DoesNotExist") => value.is_none(),
                _ => false,
            }
        })
    })
}

enum Placement {
    Node(String, Vec<Value>),
    Unschedulable(String),
}

fn unschedulable(nodes: usize, reason: &str) -> Placement {
    Placement::Unschedulable(format!(
        "0/{nodes} nodes are available: {reason}. preemption: 0/{nodes} nodes are available: {nodes} Preemption is \
         not helpful for scheduling."
    ))
}

fn place(store: &Store, pod: &Value) -> Placement {
    let nodes: Vec<&Value> = store.list(resources::by_kind("Node"), None);
    let namespace = namespace_of(pod);
    let mut volume_terms = Vec::new();
    let mut waiting = Vec::new();
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(claim_name) = volume["persistentVolumeClaim"]["claimName"].as_str() else { continue };
        let Some(claim) = store.get(resources::by_kind("PersistentVolumeClaim"), namespace, claim_name) else {
            return unschedulable(nodes.len(), &format!("persistentvolumeclaim \"{claim_name}\" not found"));
        };
        if claim["metadata"].get("deletionTimestamp").is_some() {
            return unschedulable(nodes.len(), &format!("persistentvolumeclaim \"{claim_name}\" is being deleted"));
        }
        if claim["status"]["phase"] == "Bound" {
            let volume_name = claim["spec"]["volumeName"].as_str().unwrap_or("");
            if let Some(pv) = store.get(resources::by_kind("PersistentVolume"), "", volume_name) {
                volume_terms.push(pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"].clone());
            }
            continue;
        }
        match class_of(store, claim) {
            Some(class) if class["volumeBindingMode"] == "WaitForFirstConsumer" && provisions(class) => {
                waiting.push(claim.clone());
            }
            _ => return unschedulable(nodes.len(), "pod has unbound immediate PersistentVolumeClaims"),
        }
    }
    let selector = pod["spec"]["nodeSelector"].as_object().cloned().unwrap_or_default();
    let required =
        &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let (mut mismatched, mut conflicting) = (0, 0);
    for node in &nodes {
        let labels = &node["metadata"]["labels"];
        if !selector.iter().all(|(k, v)| labels[k] == *v) || !satisfies(required, node) {
            mismatched += 1;
        } else if !volume_terms.iter().all(|terms| satisfies(terms, node)) {
            conflicting += 1;
        } else {
            return Placement::Node(name_of(node).to_owned(), waiting);
        }
    }
    let mut reasons = Vec::new();
    if mismatched > 0 {
        reasons.push(format!("{mismatched} node(s) didn't match Pod's node affinity/selector"));
    }
    if conflicting > 0 {
        reasons.push(format!("{conflicting} node(s) had volume node affinity conflict"));
    }
    reasons.sort();
    unschedulable(nodes.len(), &reasons.join(", "))
}

fn set_condition(pod: &mut Value, condition: Value) {
    let conditions = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let mut kept: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != condition["type"]).collect();
    kept.push(condition);
    pod["status"]["conditions"] = json!(kept);
}

/// One round of the scheduler.
pub fn schedule(shared: &Shared) {
    shared.write(|store| {
        let pod_type = resources::by_kind("Pod");
        let pending: Vec<Value> = store
            .list(pod_type, None)
            .into_iter()
            .filter(|p| {
                p["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
                    && p["metadata"].get("deletionTimestamp").is_none()
                    && p["status"]["phase"] == "Pending"
            })
            .cloned()
            .collect();
        for mut pod in pending {
            match place(store, &pod) {
                Placement::Node(node, waiting) => {
                    for claim in waiting {
                        if let Some(class) = class_of(store, &claim).cloned() {
                            provision(shared, store, claim, &class, Some(&node));
                        }
                    }
                    pod["spec"]["nodeName"] = json!(node);
                    set_condition(
                        &mut pod,
                        json!({"type": "PodScheduled", "status": "True",
                        "lastTransitionTime": store::now()}),
                    );
                    let pod = store.put(pod_type, pod);
                    let message = format!("Successfully assigned {}/{} to {node}", namespace_of(&pod), name_of(&pod));
                    event(store, &pod, "Normal", "Scheduled", &message, "default-scheduler");
                }
                Placement::Unschedulable(message) => {
                    let known = pod["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter().any(|c| c["type"] == "PodScheduled" && c["message"] == message.as_str())
                    });
                    if known {
                        continue;
                    }
                    set_condition(
                        &mut pod,
                        json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": message, "lastTransitionTime": store::now()}),
                    );
                    let pod = store.put(pod_type, pod);
                    event(store, &pod, "Warning", "FailedScheduling", &message, "default-scheduler");
                }
            }
        }
    });
}
