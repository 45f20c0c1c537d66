//! The record and restore rules of quiesce, on objects as JSON: which field each workload kind
//! stops by, the annotation its original value goes in, and the merge patches that quiesce and
//! restore it. Each patch names the object's `resourceVersion`, so it applies to the object
//! read or not at all (409 Conflict: read again).
//!
//! - The original value is written in the same patch that sets the quiesced one, so no object is
//!   ever quiesced without its record.
//! - An object already recorded (a rerun of a final run that stopped after quiesce) keeps its
//!   first record: a second quiesce never records the quiesced value as the original.
//! - Restoring sets the recorded value only where the field still holds the quiesced one; a
//!   value someone set in between stays (a Deployment scaled to 3 while quiesced stays at 3).
//!   The annotations go either way.
//! - Values are recorded as they were, not as booleans compared by identity: a `CronJob` that was
//!   already suspended is recorded `true` and stays suspended (MTC compares pointers here, so it
//!   records and then resumes such a `CronJob`).

use kube::core::ApiResource;
use serde_json::{Map, Value, json};

/// The plan that quiesced an object (so that a rollback touches only its own plan's).
pub const QUIESCED_BY: &str = "mover.io/quiesced-by";
/// The node selector entry no node has, which stops a `DaemonSet`'s pods.
pub const UNMATCHABLE: (&str, &str) = ("mover.io/quiesced", "true");

/// A workload kind mover quiesces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// apps/v1 Deployment: replicas.
    Deployment,
    /// apps/v1 `StatefulSet`: replicas.
    StatefulSet,
    /// apps/v1 `ReplicaSet` (one a Deployment owns is quiesced through the Deployment): replicas.
    ReplicaSet,
    /// apps/v1 `DaemonSet`: a node selector no node matches.
    DaemonSet,
    /// batch/v1 `CronJob`: suspend.
    CronJob,
    /// batch/v1 Job: parallelism.
    Job,
    /// apps.openshift.io/v1 `DeploymentConfig` (`OpenShift` only): replicas.
    DeploymentConfig,
}

/// The field a kind is stopped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `spec.replicas` (default 1), quiesced 0.
    Replicas,
    /// `spec.template.spec.nodeSelector` (default none), quiesced with [`UNMATCHABLE`] added.
    NodeSelector,
    /// `spec.suspend` (default false), quiesced true.
    Suspend,
    /// `spec.parallelism` (default 1), quiesced 0.
    Parallelism,
}

impl Kind {
    /// Every kind, in the order quiesce goes through them (owners before what they own).
    pub const ALL: [Kind; 7] = [
        Kind::Deployment,
        Kind::DeploymentConfig,
        Kind::StatefulSet,
        Kind::ReplicaSet,
        Kind::DaemonSet,
        Kind::CronJob,
        Kind::Job,
    ];

    /// `(group, version, kind, plural)`.
    #[must_use]
    pub fn names(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::Deployment => ("apps", "v1", "Deployment", "deployments"),
            Kind::StatefulSet => ("apps", "v1", "StatefulSet", "statefulsets"),
            Kind::ReplicaSet => ("apps", "v1", "ReplicaSet", "replicasets"),
            Kind::DaemonSet => ("apps", "v1", "DaemonSet", "daemonsets"),
            Kind::CronJob => ("batch", "v1", "CronJob", "cronjobs"),
            Kind::Job => ("batch", "v1", "Job", "jobs"),
            Kind::DeploymentConfig => ("apps.openshift.io", "v1", "DeploymentConfig", "deploymentconfigs"),
        }
    }

    /// The resource, for a dynamic API.
    #[must_use]
    pub fn resource(self) -> ApiResource {
        let (group, version, kind, plural) = self.names();
        let api_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
        ApiResource {
            group: group.to_owned(),
            version: version.to_owned(),
            api_version,
            kind: kind.to_owned(),
            plural: plural.to_owned(),
        }
    }

    /// The field this kind is stopped by.
    #[must_use]
    pub fn field(self) -> Field {
        match self {
            Kind::Deployment | Kind::StatefulSet | Kind::ReplicaSet | Kind::DeploymentConfig => Field::Replicas,
            Kind::DaemonSet => Field::NodeSelector,
            Kind::CronJob => Field::Suspend,
            Kind::Job => Field::Parallelism,
        }
    }

    /// The pod spec its pods are made from.
    #[must_use]
    pub fn pod_spec(self, object: &Value) -> &Value {
        match self {
            Kind::CronJob => &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => &object["spec"]["template"]["spec"],
        }
    }
}

impl Field {
    /// The annotation the original value is recorded in.
    #[must_use]
    pub fn annotation(self) -> &'static str {
        match self {
            Field::Replicas => "mover.io/quiesce-original-replicas",
            Field::NodeSelector => "mover.io/quiesce-original-node-selector",
            Field::Suspend => "mover.io/quiesce-original-suspend",
            Field::Parallelism => "mover.io/quiesce-original-parallelism",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Field::Replicas => "replicas",
            Field::NodeSelector => "node selector",
            Field::Suspend => "suspend",
            Field::Parallelism => "parallelism",
        }
    }

    /// The field's value, with the API's default where it is unset (`null` for no selector).
    #[must_use]
    pub fn current(self, object: &Value) -> Value {
        let spec = &object["spec"];
        let or = |value: &Value, default: Value| if value.is_null() { default } else { value.clone() };
        match self {
            Field::Replicas => or(&spec["replicas"], json!(1)),
            Field::NodeSelector => spec["template"]["spec"]["nodeSelector"].clone(),
            Field::Suspend => or(&spec["suspend"], json!(false)),
            Field::Parallelism => or(&spec["parallelism"], json!(1)),
        }
    }

    /// The quiesced value for an original one.
    #[must_use]
    pub fn quiesced(self, original: &Value) -> Value {
        match self {
            Field::Replicas | Field::Parallelism => json!(0),
            Field::Suspend => json!(true),
            Field::NodeSelector => {
                let mut selector = original.as_object().cloned().unwrap_or_default();
                selector.insert(UNMATCHABLE.0.to_owned(), json!(UNMATCHABLE.1));
                Value::Object(selector)
            }
        }
    }

    /// Whether `value` stops the workload.
    fn is_quiesced(self, value: &Value) -> bool {
        match self {
            Field::NodeSelector => value[UNMATCHABLE.0] == UNMATCHABLE.1,
            _ => *value == self.quiesced(&Value::Null),
        }
    }

    /// What goes back where a quiesced `current` is found for `original`: `original` when
    /// `current` is still exactly the quiesced value; when someone changed it since, their value
    /// (for a node selector: theirs, without the unmatchable entry), or `None` for no change.
    #[must_use]
    pub fn restored(self, original: &Value, current: &Value) -> Option<Value> {
        if *current == self.quiesced(original) {
            return Some(original.clone());
        }
        match (self, current.as_object()) {
            (Field::NodeSelector, Some(selector)) if self.is_quiesced(current) => {
                let mut theirs = selector.clone();
                theirs.remove(UNMATCHABLE.0);
                Some(Value::Object(theirs))
            }
            _ => None,
        }
    }

    /// A merge patch of `spec` that sets the field from `current` to `value` (for a selector,
    /// keys of `current` that `value` lacks are deleted, so the result is `value` exactly).
    fn spec_patch(self, current: &Value, value: &Value) -> Value {
        match self {
            Field::Replicas => json!({"replicas": value}),
            Field::Suspend => json!({"suspend": value}),
            Field::Parallelism => json!({"parallelism": value}),
            Field::NodeSelector => {
                let selector = match (current.as_object(), value.as_object()) {
                    (Some(current), Some(wanted)) => {
                        let mut patch: Map<String, Value> = current
                            .keys()
                            .filter(|k| !wanted.contains_key(*k))
                            .map(|k| (k.clone(), Value::Null))
                            .collect();
                        patch.extend(wanted.clone());
                        Value::Object(patch)
                    }
                    _ => value.clone(),
                };
                json!({"template": {"spec": {"nodeSelector": selector}}})
            }
        }
    }

    /// How a value reads in a message: `2`, `true`, `{"disk":"ssd"}`, `none`.
    #[must_use]
    pub fn shown(value: &Value) -> String {
        if value.is_null() { "none".to_owned() } else { value.to_string() }
    }
}

/// `metadata.annotations[key]` of an object.
fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][key].as_str()
}

/// A recorded original value, parsed back (a node selector's record is its JSON, byte for byte).
fn recorded(field: Field, object: &Value) -> Option<Value> {
    annotation(object, field.annotation()).and_then(|text| serde_json::from_str(text).ok())
}

/// The record of a value: its JSON text (`2`, `true`, `{"disk":"ssd"}`, `null`).
fn record(value: &Value) -> String {
    value.to_string()
}

/// What quiescing an object takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The merge patch to send; `None` when the object is quiesced and recorded already.
    pub patch: Option<Value>,
    /// What it does, for the user: `replicas 2 -> 0`.
    pub summary: String,
}

/// The patch that quiesces `object` of `kind` for plan `plan`: its original value recorded (unless
/// an earlier run recorded it) and the quiesced value set.
#[must_use]
pub fn quiesce(kind: Kind, object: &Value, plan: &str) -> Change {
    let field = kind.field();
    let current = field.current(object);
    let first = recorded(field, object).filter(|_| annotation(object, QUIESCED_BY).is_some());
    let original = first.clone().unwrap_or_else(|| current.clone());
    let quiesced = field.quiesced(&original);
    let summary = format!("{} {} -> {}", field.name(), Field::shown(&original), Field::shown(&quiesced));
    if first.is_some() && current == quiesced {
        return Change { patch: None, summary: format!("{summary} (by an earlier run)") };
    }
    let mut metadata = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
    if first.is_none() {
        metadata["annotations"] = json!({field.annotation(): record(&current), QUIESCED_BY: plan});
    }
    let patch = json!({"metadata": metadata, "spec": field.spec_patch(&current, &quiesced)});
    Change { patch: Some(patch), summary }
}

/// The patch that restores `object` of `kind` as plan `plan` recorded it, or `None` when the plan
/// did not quiesce it.
#[must_use]
pub fn unquiesce(kind: Kind, object: &Value, plan: &str) -> Option<Change> {
    if annotation(object, QUIESCED_BY) != Some(plan) {
        return None;
    }
    let field = kind.field();
    let current = field.current(object);
    let original = recorded(field, object);
    let restored = original.as_ref().and_then(|original| field.restored(original, &current));
    let annotations = json!({field.annotation(): null, QUIESCED_BY: null});
    let mut patch = json!({"metadata": {"resourceVersion": object["metadata"]["resourceVersion"],
        "annotations": annotations}});
    let summary = match (&restored, &original) {
        (Some(value), _) => {
            patch["spec"] = field.spec_patch(&current, value);
            format!("{} {} -> {}", field.name(), Field::shown(&current), Field::shown(value))
        }
        (None, Some(original)) => format!(
            "{} stays {} (changed since it was quiesced; recorded {})",
            field.name(),
            Field::shown(&current),
            Field::shown(original)
        ),
        (None, None) => format!("{} stays {} (its record is unreadable)", field.name(), Field::shown(&current)),
    };
    Some(Change { patch: Some(patch), summary })
}

#[cfg(test)]
mod tests;
