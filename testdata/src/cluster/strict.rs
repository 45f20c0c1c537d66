//! Strict decoding, as `fieldValidation=Strict` does it: a body is decoded into its k8s-openapi
//! type and encoded back; every key of the body that does not survive is an unknown field, named
//! by its path (`spec.containers[0].bogus`). A value of the wrong type fails the decoding.
//! Names are checked as the real server checks them (RFC 1123 subdomain or label).

use serde_json::Value;

use super::resources::ResourceType;
use super::status::ApiError;

/// Decodes `body` as `resource`'s type: the typed round trip of it, or the 400 the real server
/// sends for a wrong type or an unknown field.
pub fn check(resource: &ResourceType, body: &Value) -> Result<Value, ApiError> {
    let expected = resource.api_version();
    for (field, want) in [("kind", resource.kind), ("apiVersion", expected.as_str())] {
        match body.get(field).and_then(Value::as_str) {
            Some(got) if got == want => {}
            Some(got) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({}) does not match the expected API version ({expected}) or kind \
                     ({got}) does not match {want}",
                    body.get("apiVersion").and_then(Value::as_str).unwrap_or("")
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!("Object '{field}' is missing in the request body")));
            }
        }
    }
    let typed = (resource.roundtrip)(body).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
            kind = resource.kind,
            version = resource.version
        ))
    })?;
    let mut unknown = Vec::new();
    unknown_fields(body, &typed, "", &mut unknown);
    if unknown.is_empty() {
        Ok(typed)
    } else {
        let list: Vec<String> = unknown.iter().map(|path| format!("unknown field \"{path}\"")).collect();
        Err(ApiError::bad_request(format!("strict decoding error: {}", list.join(", "))))
    }
}

/// Collects the paths of keys in `input` that are absent from `decoded`. `null` counts as absent
/// (as it does for the real server).
fn unknown_fields(input: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
    match (input, decoded) {
        (Value::Object(given), Value::Object(kept)) => {
            for (key, value) in given {
                if value.is_null() {
                    continue;
                }
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                match kept.get(key) {
                    Some(kept_value) => unknown_fields(value, kept_value, &child, out),
                    None => out.push(child),
                }
            }
        }
        (Value::Array(given), Value::Array(kept)) => {
            for (i, (value, kept_value)) in given.iter().zip(kept).enumerate() {
                unknown_fields(value, kept_value, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

const SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
     '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for \
     validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
     and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for \
     validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// Checks an object's name: RFC 1123 labels for namespaces and services (at most 63
/// characters), any path segment for RBAC objects, RFC 1123 subdomains (at most 253) otherwise.
pub fn check_name(resource: &ResourceType, name: &str) -> Result<(), ApiError> {
    let invalid = |detail: &str| {
        Err(ApiError::invalid(resource, name, "metadata.name", &format!("Invalid value: \"{name}\": "), detail))
    };
    if name.is_empty() {
        return Err(ApiError::invalid(
            resource,
            name,
            "metadata.name",
            "Required value: ",
            "name or generateName is required",
        ));
    }
    if resource.group == "rbac.authorization.k8s.io" {
        if name == "." || name == ".." || name.contains('/') || name.contains('%') {
            return invalid("may not contain '/' or '%' or be '.' or '..'");
        }
        return Ok(());
    }
    let label_only = matches!(resource.plural, "namespaces" | "services");
    if label_only {
        if name.len() > 63 {
            return invalid("must be no more than 63 characters");
        }
        if !is_label(name) {
            return invalid(LABEL_MESSAGE);
        }
        return Ok(());
    }
    if name.len() > 253 {
        return invalid("must be no more than 253 characters");
    }
    if !name.split('.').all(is_label) {
        return invalid(SUBDOMAIN_MESSAGE);
    }
    Ok(())
}

fn is_label(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// `PersistentVolumeClaims`: everything in `spec` but `resources.requests` (and a first
/// `volumeName`) is immutable after creation. The 422 the real server sends otherwise.
pub fn check_claim_update(resource: &ResourceType, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let mut old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
    let mut new_spec = new.get("spec").cloned().unwrap_or(Value::Null);
    for spec in [&mut old_spec, &mut new_spec] {
        if let Some(resources) = spec.get_mut("resources").and_then(Value::as_object_mut) {
            resources.remove("requests");
        }
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("volumeAttributesClassName");
        }
    }
    if old_spec.get("volumeName").is_none_or(Value::is_null)
        && let (Some(o), Some(v)) = (old_spec.as_object_mut(), new_spec.get("volumeName"))
    {
        o.insert("volumeName".to_owned(), v.clone());
    }
    if old_spec == new_spec {
        return Ok(());
    }
    Err(ApiError::invalid(
        resource,
        name,
        "spec",
        "Forbidden: ",
        "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
    ))
}
