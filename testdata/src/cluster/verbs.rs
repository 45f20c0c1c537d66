//! get, list, create, update, patch, delete and deletecollection, generic over the resource
//! table.

use serde_json::{Value, json};

use super::Shared;
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::server::{Query, Target};
use super::status::ApiError;
use super::store::{self, Store, name_of, namespace_of, rv_of};
use super::{defaults, strict};

/// One object.
pub fn get(shared: &Shared, target: &Target) -> Result<Value, ApiError> {
    let store = shared.read();
    store
        .get(target.resource, &target.namespace, &target.name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(target.resource, &target.name))
}

/// The label and field selectors of a list, watch or deletecollection.
pub struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
    namespace: String,
}

impl Filter {
    /// From the query; a bad selector is a 400.
    pub fn new(target: &Target, query: &Query) -> Result<Self, ApiError> {
        let text = |key: &str| query.get(key).map_or("", String::as_str);
        Ok(Filter {
            labels: LabelSelector::parse(text("labelSelector"))?,
            fields: FieldSelector::parse(text("fieldSelector"))?,
            namespace: target.namespace.clone(),
        })
    }

    /// Whether an object is selected.
    pub fn matches(&self, object: &Value) -> bool {
        (self.namespace.is_empty() || namespace_of(object) == self.namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

/// A list response: items without `kind`/`apiVersion`, as the real server sends them.
pub fn list(shared: &Shared, target: &Target, query: &Query) -> Result<Value, ApiError> {
    let filter = Filter::new(target, query)?;
    let store = shared.read();
    let namespace = (!target.namespace.is_empty()).then_some(target.namespace.as_str());
    let items: Vec<Value> = store
        .list(target.resource, namespace)
        .into_iter()
        .filter(|object| filter.matches(object))
        .map(|object| {
            let mut item = object.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    Ok(list_of(target.resource, store.version(), &items))
}

fn list_of(resource: &ResourceType, version: u64, items: &[Value]) -> Value {
    json!({
        "kind": format!("{}List", resource.kind),
        "apiVersion": resource.api_version(),
        "metadata": {"resourceVersion": version.to_string()},
        "items": items,
    })
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))
}

/// The 404 or 403 for an object in a namespace that is missing or being deleted.
fn check_namespace(store: &Store, resource: &ResourceType, namespace: &str, name: &str) -> Result<(), ApiError> {
    if !resource.namespaced {
        return Ok(());
    }
    match store.get(resources::by_kind("Namespace"), "", namespace) {
        None => Err(ApiError::namespace_not_found(namespace)),
        Some(ns) if ns["metadata"].get("deletionTimestamp").is_some() => {
            Err(ApiError::namespace_terminating(resource, name, namespace))
        }
        Some(_) => Ok(()),
    }
}

/// `generateName` plus five random characters from the real server's alphabet.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    aws_lc_rs::rand::fill(&mut bytes).expect("system random");
    let suffix: String = bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect();
    format!("{prefix}{suffix}")
}

/// Creates an object from a request body.
pub fn create(shared: &Shared, target: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let resource = target.resource;
    let given = parse_body(body)?;
    let mut object = strict::check(resource, &given)?;
    let metadata = &mut object["metadata"];
    if resource.namespaced {
        match metadata["namespace"].as_str() {
            Some(ns) if ns != target.namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request".to_owned(),
                ));
            }
            _ => metadata["namespace"] = json!(target.namespace),
        }
    } else if let Some(m) = metadata.as_object_mut() {
        m.remove("namespace");
    }
    if metadata["resourceVersion"].as_str().is_some_and(|v| !v.is_empty()) {
        return Err(ApiError {
            code: 500,
            reason: "InternalError",
            message: "resourceVersion should not be set on objects to be created".to_owned(),
            details: None,
        });
    }
    if metadata["name"].as_str().is_none_or(str::is_empty)
        && let Some(prefix) = metadata["generateName"].as_str()
    {
        metadata["name"] = json!(generate_name(prefix));
    }
    let name = name_of(&object).to_owned();
    strict::check_name(resource, &name)?;
    if resource.has_status
        && let Some(m) = object.as_object_mut()
    {
        m.remove("status");
    }
    shared.write(|store| {
        defaults::apply(resource, &mut object, store);
        check_namespace(store, resource, &target.namespace, &name)?;
        if store.get(resource, &target.namespace, &name).is_some() {
            return Err(ApiError::already_exists(resource, &name));
        }
        let metadata = &mut object["metadata"];
        metadata["uid"] = json!(store.uid());
        metadata["creationTimestamp"] = json!(store::now());
        if let Some(m) = metadata.as_object_mut() {
            for system in ["deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
                m.remove(system);
            }
        }
        if object.get("spec").is_some() {
            object["metadata"]["generation"] = json!(1);
        }
        Ok(store.put(resource, object))
    })
}

/// Replaces an object (PUT), or its status with `/status`.
pub fn update(shared: &Shared, target: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let given = parse_body(body)?;
    replace(shared, target, &given, None)
}

/// Patches an object: JSON merge patch (also for strategic merge patch) or JSON patch.
pub fn patch(shared: &Shared, target: &Target, content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let kind = content_type.split(';').next().unwrap_or("").trim();
    let patch = parse_body(body)?;
    let operations = match kind {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => None,
        "application/json-patch+json" => Some(
            serde_json::from_value::<json_patch::Patch>(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
        ),
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    // Like the real server, a patch that does not name a resourceVersion is retried when the
    // object changes between the read and the write.
    let mut attempts = 0;
    loop {
        let old = get(shared, target)?;
        let mut patched = old.clone();
        match &operations {
            None => json_patch::merge(&mut patched, &patch),
            Some(operations) => json_patch::patch(&mut patched, operations).map_err(|e| ApiError {
                code: 422,
                reason: "Invalid",
                message: e.to_string(),
                details: None,
            })?,
        }
        let pinned = rv_of(&patched) != rv_of(&old);
        match replace(shared, target, &patched, Some(&old)) {
            Err(error) if error.code == 409 && !pinned && attempts < 10 => attempts += 1,
            result => return result,
        }
    }
}

/// The common part of update and patch: strict decoding, conflict and immutability checks,
/// status subresource rules, then the write.
fn replace(shared: &Shared, target: &Target, given: &Value, patched_from: Option<&Value>) -> Result<Value, ApiError> {
    let resource = target.resource;
    let mut new = strict::check(resource, given)?;
    if name_of(&new) != target.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({})",
            name_of(&new),
            target.name
        )));
    }
    if resource.namespaced && namespace_of(&new) != target.namespace {
        if namespace_of(&new).is_empty() {
            new["metadata"]["namespace"] = json!(target.namespace);
        } else {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request".to_owned(),
            ));
        }
    }
    shared.write(|store| {
        let old = store
            .get(resource, &target.namespace, &target.name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, &target.name))?;
        let asked = rv_of(&new);
        let stale = match patched_from {
            Some(from) => asked != rv_of(from) || rv_of(from) != rv_of(&old),
            None => asked.is_some_and(|v| Some(v) != rv_of(&old)),
        };
        if stale {
            return Err(ApiError::conflict(resource, &target.name));
        }
        if resource.kind == "PersistentVolumeClaim" && target.subresource.is_empty() {
            strict::check_claim_update(resource, &target.name, &old, &new)?;
        }
        let mut result = if target.subresource == "status" {
            let mut result = old.clone();
            result["status"] = new["status"].clone();
            result
        } else {
            if resource.has_status {
                new["status"] = old["status"].clone();
            }
            if new.get("spec").is_some() && new["spec"] != old["spec"] {
                new["metadata"]["generation"] = json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
            } else {
                new["metadata"]["generation"] = old["metadata"]["generation"].clone();
            }
            new
        };
        for system in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"] {
            match old["metadata"].get(system) {
                Some(value) => result["metadata"][system] = value.clone(),
                None => {
                    if let Some(m) = result["metadata"].as_object_mut() {
                        m.remove(system);
                    }
                }
            }
        }
        defaults::normalize(resource, &mut result);
        strip_nulls(&mut result);
        let finalized = result["metadata"].get("deletionTimestamp").is_some()
            && resource.kind != "Pod"
            && resource.kind != "Namespace"
            && result["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if finalized {
            return Ok(store.remove(resource, &target.namespace, &target.name).unwrap_or(result));
        }
        Ok(store.put(resource, result))
    })
}

fn strip_nulls(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(strip_nulls);
    } else if let Value::Array(items) = value {
        items.iter_mut().for_each(strip_nulls);
    }
}

/// `gracePeriodSeconds` from the query or a `DeleteOptions` body.
fn grace_period(query: &Query, body: &[u8]) -> Result<Option<i64>, ApiError> {
    if let Some(grace) = query.get("gracePeriodSeconds") {
        return grace
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {grace}")));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let options = parse_body(body)?;
    Ok(options.get("gracePeriodSeconds").and_then(Value::as_i64))
}

/// Deletes one object as the real server does: a running pod, a namespace or an object with
/// finalizers gets a `deletionTimestamp` (and goes away once its controller is done); anything
/// else goes at once. Returns the object as last seen.
pub fn delete_in(
    store: &mut Store,
    resource: &'static ResourceType,
    namespace: &str,
    name: &str,
    grace: Option<i64>,
) -> Option<Value> {
    let mut object = store.get(resource, namespace, name)?.clone();
    let deleting = object["metadata"].get("deletionTimestamp").is_some();
    let phase = object["status"]["phase"].as_str().unwrap_or("");
    let graceful = match resource.kind {
        "Pod" => {
            grace != Some(0)
                && object["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty())
                && !matches!(phase, "Succeeded" | "Failed")
        }
        "Namespace" => true,
        _ => object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()),
    };
    if !graceful {
        return store.remove(resource, namespace, name);
    }
    if deleting {
        return Some(object);
    }
    let seconds = grace.or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30);
    object["metadata"]["deletionTimestamp"] = json!(store::now());
    if resource.kind == "Pod" {
        object["metadata"]["deletionGracePeriodSeconds"] = json!(seconds);
    }
    if resource.kind == "Namespace" {
        object["status"]["phase"] = json!("Terminating");
    }
    Some(store.put(resource, object))
}

/// DELETE of one object.
pub fn delete(shared: &Shared, target: &Target, query: &Query, body: &[u8]) -> Result<Value, ApiError> {
    let grace = grace_period(query, body)?;
    shared
        .write(|store| delete_in(store, target.resource, &target.namespace, &target.name, grace))
        .ok_or_else(|| ApiError::not_found(target.resource, &target.name))
}

/// DELETE of a collection (with its selectors): the list of what was deleted.
pub fn delete_collection(shared: &Shared, target: &Target, query: &Query, body: &[u8]) -> Result<Value, ApiError> {
    let grace = grace_period(query, body)?;
    let filter = Filter::new(target, query)?;
    let resource = target.resource;
    shared.write(|store| {
        let namespace = (!target.namespace.is_empty()).then_some(target.namespace.as_str());
        let chosen: Vec<(String, String)> = store
            .list(resource, namespace)
            .into_iter()
            .filter(|o| filter.matches(o))
            .map(|o| (namespace_of(o).to_owned(), name_of(o).to_owned()))
            .collect();
        let items: Vec<Value> =
            chosen.iter().filter_map(|(ns, name)| delete_in(store, resource, ns, name, grace)).collect();
        Ok(list_of(resource, store.version(), &items))
    })
}
