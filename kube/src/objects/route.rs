//! The `OpenShift` Route that exposes a transfer agent through the cluster's router
//! (`--expose route`): `route.openshift.io/v1`, `tls.termination: passthrough`, so the router
//! picks the agent's Service by the TLS server name (SNI) and relays the bytes untouched; mutual
//! TLS runs end to end between mover and the agent, as with a Service.
//!
//! k8s-openapi has no `OpenShift` types, so the fields mover writes and reads are declared here
//! from `OpenShift`'s API reference (openshift/api `route/v1/types.go`); unknown fields in what the
//! server returns are ignored. `spec.host` is left empty: the cluster gives the Route
//! `<name>-<namespace>.<apps domain>` and mover reads it from `status.ingress` once a router
//! admitted the Route. (Setting a host would need the `routes/custom-host` permission.)

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

use super::PORT_NAME;
use super::transfer::{TransferPod, transfer_meta};

/// The Route's API group.
pub const ROUTE_GROUP: &str = "route.openshift.io";

/// `route.openshift.io/v1` Route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// `route.openshift.io/v1` (left out of a list's items).
    #[serde(default)]
    pub api_version: String,
    /// `Route` (left out of a list's items).
    #[serde(default)]
    pub kind: String,
    /// Name, namespace, labels, owner.
    pub metadata: ObjectMeta,
    /// What it routes.
    pub spec: RouteSpec,
    /// Which routers admitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
}

/// A Route's spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// The host the router serves it under (given by the cluster when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The Service behind it.
    pub to: RouteTarget,
    /// The Service port, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<RoutePort>,
    /// How TLS is handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
}

/// `spec.to`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTarget {
    /// `Service`.
    pub kind: String,
    /// The Service's name.
    pub name: String,
}

/// `spec.port`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutePort {
    /// A Service port's name (or a number).
    pub target_port: IntOrString,
}

/// `spec.tls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    /// `passthrough`: the router relays TLS by SNI, untouched.
    pub termination: String,
}

/// `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// One entry per router.
    #[serde(default)]
    pub ingress: Vec<RouteIngress>,
}

/// One router's view of the Route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteIngress {
    /// The host it serves the Route under.
    #[serde(default)]
    pub host: Option<String>,
    /// The router's name (`default`).
    #[serde(default)]
    pub router_name: Option<String>,
    /// `Admitted`, `True` or `False` with a reason.
    #[serde(default)]
    pub conditions: Vec<RouteCondition>,
}

/// A condition of a Route's ingress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteCondition {
    /// `Admitted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why (`HostAlreadyClaimed`, …).
    #[serde(default)]
    pub reason: Option<String>,
    /// Said for a human.
    #[serde(default)]
    pub message: Option<String>,
}

impl kube::Resource for Route {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        "Route".into()
    }

    fn group((): &()) -> Cow<'_, str> {
        ROUTE_GROUP.into()
    }

    fn version((): &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural((): &()) -> Cow<'_, str> {
        "routes".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What a router said about a Route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Admitted: served under this host.
    Admitted(String),
    /// Refused, with the router's reason and message.
    Rejected(String),
    /// No router has said anything yet.
    Pending,
}

impl Route {
    /// What the routers said: admitted by one (its host), else refused by one, else pending.
    #[must_use]
    pub fn admission(&self) -> Admission {
        let ingress = self.status.iter().flat_map(|s| &s.ingress);
        let admitted = |i: &&RouteIngress| i.conditions.iter().any(|c| c.type_ == "Admitted" && c.status == "True");
        if let Some(host) = ingress.clone().find(admitted).and_then(|i| i.host.clone().or(self.spec.host.clone())) {
            return Admission::Admitted(host);
        }
        let refused = ingress.flat_map(|i| &i.conditions).find(|c| c.type_ == "Admitted" && c.status == "False");
        match refused {
            Some(c) => Admission::Rejected(format!(
                "{}: {}",
                c.reason.as_deref().unwrap_or("not admitted"),
                c.message.as_deref().unwrap_or("")
            )),
            None => Admission::Pending,
        }
    }
}

/// The passthrough Route to the Service of the transfer pod of `spec` (same name, namespace,
/// labels and owner, so cleanup removes it with the pod).
#[must_use]
pub fn transfer_route(spec: &TransferPod) -> Route {
    let metadata = transfer_meta(spec);
    let service = metadata.name.clone().unwrap_or_default();
    Route {
        api_version: format!("{ROUTE_GROUP}/v1"),
        kind: "Route".to_owned(),
        metadata,
        spec: RouteSpec {
            host: None,
            to: RouteTarget { kind: "Service".to_owned(), name: service },
            port: Some(RoutePort { target_port: IntOrString::String(PORT_NAME.to_owned()) }),
            tls: Some(RouteTls { termination: "passthrough".to_owned() }),
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(host: &str, status: &str, reason: Option<&str>) -> RouteIngress {
        RouteIngress {
            host: Some(host.to_owned()),
            router_name: Some("default".to_owned()),
            conditions: vec![RouteCondition {
                type_: "Admitted".to_owned(),
                status: status.to_owned(),
                reason: reason.map(str::to_owned),
                message: Some("route a/b already exposes h".to_owned()),
            }],
        }
    }

    #[test]
    fn admission_is_read_from_the_routers_conditions() {
        let mut route = Route::default();
        assert_eq!(route.admission(), Admission::Pending);
        route.status = Some(RouteStatus { ingress: vec![ingress("h", "False", Some("HostAlreadyClaimed"))] });
        assert_eq!(route.admission(), Admission::Rejected("HostAlreadyClaimed: route a/b already exposes h".into()));
        route.status.as_mut().unwrap().ingress.push(ingress("a-app.apps.example.com", "True", None));
        assert_eq!(route.admission(), Admission::Admitted("a-app.apps.example.com".into()));
    }
}
