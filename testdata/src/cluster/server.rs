//! The HTTPS front: TLS, bearer-token authentication, URL routing onto the resource table, the
//! RBAC verb of every request, injected faults and the request log. The verbs themselves are in
//! `verbs` and `watch`.

use std::collections::BTreeMap;
use std::io;
use std::net::TcpListener;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use super::audit::Request;
use super::resources::{self, ResourceType};
use super::status::ApiError;
use super::{Flavor, Shared, verbs, watch};

pub use super::http1::Body;

/// Query parameters, decoded.
pub type Query = BTreeMap<String, String>;

/// The resource a request is about.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its type.
    pub resource: &'static ResourceType,
    /// The namespace in the URL (`""` for cluster-scoped or all-namespaces requests).
    pub namespace: String,
    /// The object name in the URL (`""` for collections).
    pub name: String,
    /// `status`, `log`, `token` or `""`.
    pub subresource: String,
}

enum Route {
    Version,
    Api,
    Apis,
    Resources(&'static str, &'static str),
    Target(Target),
}

/// The server's TLS configuration (aws-lc-rs, HTTP/1.1).
pub fn tls_config(cert_pem: &str, key_pem: &str) -> io::Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(io::Error::other)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(io::Error::other)?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves until `stopped` fires (runs on its own thread with its own runtime).
pub fn serve(
    shared: &Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("sim-{}-http", shared.name))
        .enable_all()
        .build()
        .expect("a tokio runtime for the simulated API server");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let mut stopped = stopped;
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let (acceptor, shared) = (acceptor.clone(), shared.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                super::http1::serve_connection(stream, |request| handle(shared.clone(), request)).await;
            });
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
}

/// A JSON response.
pub fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Full(Bytes::from(body)))
        .expect("a valid response")
}

fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.code, &error.to_status())
}

/// Decodes `%XX` and `+` in a query component.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: Option<&str>) -> Query {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn route(flavor: Flavor, path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match parts.as_slice() {
        ["version"] => return Some(Route::Version),
        ["api"] => return Some(Route::Api),
        ["apis"] => return Some(Route::Apis),
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (group, version, rest),
        _ => return None,
    };
    if rest.is_empty() {
        let row = resources::served(flavor).find(|r| r.group == group && r.version == version)?;
        return Some(Route::Resources(row.group, row.version));
    }
    let target = |resource: &'static ResourceType, namespace: &str, tail: &[&str]| {
        let (name, subresource) = match tail {
            [] => ("", ""),
            [name] => (*name, ""),
            [name, sub] => (*name, *sub),
            _ => return None,
        };
        let allowed = match subresource {
            "" => true,
            "status" => resource.has_status,
            "log" | "portforward" => resource.kind == "Pod",
            "token" => resource.kind == "ServiceAccount",
            _ => false,
        };
        allowed.then(|| {
            Route::Target(Target {
                resource,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                subresource: subresource.to_owned(),
            })
        })
    };
    if let ["namespaces", namespace, plural, tail @ ..] = rest
        && let Some(resource) = resources::find(flavor, group, version, plural).filter(|r| r.namespaced)
    {
        return target(resource, namespace, tail);
    }
    let resource = resources::find(flavor, group, version, rest[0])?;
    if resource.namespaced && rest.len() > 1 {
        return None;
    }
    target(resource, "", &rest[1..])
}

fn rbac_verb(method: &Method, target: &Target, query: &Query) -> &'static str {
    let named = !target.name.is_empty();
    match *method {
        Method::GET if named => "get",
        Method::GET if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

fn discovery(flavor: Flavor, route: &Route) -> Value {
    match route {
        Route::Version => json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-sim", "gitCommit": "", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "", "compiler": "", "platform": "linux/amd64",
        }),
        Route::Api => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        Route::Apis => {
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": resources::groups(flavor).iter().map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        }).collect::<Vec<_>>()})
        }
        Route::Resources(group, version) => {
            let rows = resources::served(flavor).filter(|r| r.group == *group && r.version == *version);
            let mut list = Vec::new();
            for r in rows {
                let verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
                list.push(json!({"name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": verbs}));
                if r.has_status {
                    list.push(
                        json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                        "kind": r.kind, "verbs": ["get", "patch", "update"]}),
                    );
                }
            }
            let group_version = if group.is_empty() { (*version).to_owned() } else { format!("{group}/{version}") };
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list})
        }
        Route::Target(_) => Value::Null,
    }
}

async fn handle(shared: Arc<Shared>, request: http::Request<Bytes>) -> Response<Body> {
    let delay = shared.faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let user = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| shared.user_of(token.trim()));
    let query = parse_query(request.uri().query());
    let route = route(shared.flavor, request.uri().path());
    let mut record = Request {
        user: user.clone().unwrap_or_else(|| "system:anonymous".to_owned()),
        verb: request.method().as_str().to_lowercase(),
        api_group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
        code: 0,
    };
    if let Some(Route::Target(target)) = &route {
        record.verb = rbac_verb(request.method(), target, &query).to_owned();
        record.api_group = target.resource.group.to_owned();
        record.resource = target.resource.plural.to_owned();
        record.subresource.clone_from(&target.subresource);
        record.namespace.clone_from(&target.namespace);
        record.name.clone_from(&target.name);
    }
    // Kubernetes 1.35 and later (`AuthorizePodWebsocketUpgradeCreatePermission`): the WebSocket
    // upgrade of `pods/portforward`, a GET, needs `create` as well as `get`.
    let also_create = record.subresource == "portforward" && record.verb == "get";
    let response = match (user, route) {
        (None, _) => error_response(&ApiError::unauthorized()),
        (Some(_), None) => error_response(&ApiError::no_route()),
        (Some(_), Some(Route::Target(target))) => {
            let full = if target.subresource.is_empty() {
                target.resource.plural.to_owned()
            } else {
                format!("{}/{}", target.resource.plural, target.subresource)
            };
            let denied = [record.verb.as_str(), "create"]
                .into_iter()
                .take(if also_create { 2 } else { 1 })
                .find(|verb| shared.faults.is_forbidden(&record.user, verb, &full));
            if let Some(verb) = denied {
                error_response(&ApiError::forbidden(
                    &record.user,
                    verb,
                    target.resource,
                    &target.subresource,
                    &target.namespace,
                    &target.name,
                ))
            } else {
                let verb = record.verb.clone();
                match serve_target(&shared, &verb, target, query, request).await {
                    Ok(response) => response,
                    Err(error) => error_response(&error),
                }
            }
        }
        (Some(_), Some(route)) => json_response(200, &discovery(shared.flavor, &route)),
    };
    record.code = response.status().as_u16();
    if also_create {
        shared.audit.record(Request { verb: "create".to_owned(), ..record.clone() });
    }
    shared.audit.record(record);
    response
}

async fn serve_target(
    shared: &Arc<Shared>,
    verb: &str,
    target: Target,
    query: Query,
    request: http::Request<Bytes>,
) -> Result<Response<Body>, ApiError> {
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if target.subresource == "portforward" {
        return super::portforward::serve(shared, &target, &query, &request);
    }
    let body = request.into_body();
    if target.subresource == "log" {
        return if verb == "get" {
            watch::log(shared.clone(), &target, &query).await
        } else {
            Err(ApiError::method_not_allowed())
        };
    }
    if target.subresource == "token" {
        return match verb {
            "create" => Ok(json_response(201, &super::tokens::create(shared, &target, &body)?)),
            _ => Err(ApiError::method_not_allowed()),
        };
    }
    let ok = |value: Value| Ok(json_response(200, &value));
    match verb {
        "get" => ok(verbs::get(shared, &target)?),
        "list" => ok(verbs::list(shared, &target, &query)?),
        "watch" => watch::watch(shared.clone(), &target, &query),
        "create" if target.name.is_empty() && target.subresource.is_empty() => {
            Ok(json_response(201, &verbs::create(shared, &target, &body)?))
        }
        "update" => ok(verbs::update(shared, &target, &body)?),
        "patch" => ok(verbs::patch(shared, &target, &content_type, &body)?),
        "delete" if target.subresource.is_empty() => ok(verbs::delete(shared, &target, &query, &body)?),
        "deletecollection" => ok(verbs::delete_collection(shared, &target, &query, &body)?),
        _ => Err(ApiError::method_not_allowed()),
    }
}
