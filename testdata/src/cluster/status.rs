//! `Status` bodies: every error the simulated API server answers with, in the shape a real
//! kube-apiserver sends (`kind: Status`, `status: Failure`, `message`, `reason`, `details`, `code`),
//! so `kube::Error::Api` carries the same values it would against a real cluster.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// An error answer: HTTP code, reason and message, plus the `details` a real server adds.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason`: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, ...
    pub reason: &'static str,
    /// `Status.message`, worded as the real server words it.
    pub message: String,
    /// `Status.details`, when the real server sends them.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        ApiError { code, reason, message, details: None }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The `Status` object, as JSON.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    /// `pods "x" not found` (404).
    pub fn not_found(resource: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", resource.qualified()))
            .with_details(details(resource, name))
    }

    /// `namespaces "x" not found` for a namespaced request into a missing namespace.
    pub fn namespace_not_found(name: &str) -> Self {
        Self::new(404, "NotFound", format!("namespaces \"{name}\" not found"))
            .with_details(json!({"name": name, "kind": "namespaces"}))
    }

    /// A path the server does not serve: the real server's plain 404.
    pub fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource".to_owned())
            .with_details(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]}))
    }

    /// `pods "x" already exists` (409).
    pub fn already_exists(resource: &ResourceType, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", resource.qualified()))
            .with_details(details(resource, name))
    }

    /// A `resourceVersion` that is not the stored one (409).
    pub fn conflict(resource: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your \
                 changes to the latest version and try again",
                resource.qualified()
            ),
        )
        .with_details(details(resource, name))
    }

    /// A body that cannot be decoded, or that has unknown fields (400).
    pub fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// A field with an invalid value (422): `Pod "X" is invalid: metadata.name: Invalid value: ...`.
    pub fn invalid(resource: &ResourceType, name: &str, field: &str, cause: &str, detail: &str) -> Self {
        let message = format!("{field}: {cause}{detail}");
        Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {message}", resource.kind)).with_details(json!({
            "name": name,
            "group": resource.group,
            "kind": resource.kind,
            "causes": [{
                "reason": if cause.starts_with("Forbidden") { "FieldValueForbidden" } else { "FieldValueInvalid" },
                "message": format!("{cause}{detail}"),
                "field": field,
            }],
        }))
    }

    /// RBAC said no (403): `pods is forbidden: User "x" cannot create resource "pods" in API group
    /// "" in the namespace "app"`.
    pub fn forbidden(
        user: &str,
        verb: &str,
        resource: &ResourceType,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        let what = if name.is_empty() { resource.qualified() } else { format!("{} \"{name}\"", resource.qualified()) };
        let full = if subresource.is_empty() {
            resource.plural.to_owned()
        } else {
            format!("{}/{subresource}", resource.plural)
        };
        let scope = if namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{namespace}\"")
        };
        let mut details = json!({"kind": resource.plural});
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        if !resource.group.is_empty() {
            details["group"] = json!(resource.group);
        }
        Self::new(
            403,
            "Forbidden",
            format!(
                "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{full}\" in API group \"{}\" {scope}",
                resource.group
            ),
        )
        .with_details(details)
    }

    /// A create into a namespace that is being deleted (403).
    pub fn namespace_terminating(resource: &ResourceType, name: &str, namespace: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being \
                 terminated",
                resource.qualified()
            ),
        )
        .with_details(json!({"name": name, "kind": resource.plural, "causes": [{
            "reason": "NamespaceTerminating",
            "message": format!("namespace {namespace} is being terminated"),
            "field": "metadata.namespace",
        }]}))
    }

    /// No or an unknown bearer token (401).
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".to_owned())
    }

    /// A watch from a `resourceVersion` older than the server remembers (410, reason `Expired`,
    /// as the watch cache sends it).
    pub fn expired(asked: u64, oldest: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {asked} ({oldest})"))
    }

    /// A verb the resource does not support (405).
    pub fn method_not_allowed() -> Self {
        Self::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource".to_owned())
    }

    /// A patch type the server does not take (415): server-side apply is not simulated.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
            ),
        )
    }
}

fn details(resource: &ResourceType, name: &str) -> Value {
    let mut details = json!({"name": name, "kind": resource.plural});
    if !resource.group.is_empty() {
        details["group"] = json!(resource.group);
    }
    details
}
