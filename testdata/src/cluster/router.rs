//! The `OpenShift` router of an `OpenShift`-flavoured cluster, for `tls.termination: passthrough`
//! Routes only: what `OpenShift`'s `HAProxy` router does in its `public_ssl` frontend.
//!
//! * The route controller ([`admit`], one round of the controllers) defaults an empty
//!   `spec.host` to `<name>-<namespace>.apps.<cluster>.sim` (the API server's route allocator
//!   does that in a real cluster) and admits each Route: `status.ingress` gets the host,
//!   `routerName: default`, `routerCanonicalHostname: router-default.apps.<cluster>.sim` and an
//!   `Admitted` condition, `False` with `HostAlreadyClaimed` when an older Route holds the host.
//! * The router ([`Router::start`]) listens on one TCP address per cluster: port 443 of the pod
//!   network's gateway (`10.245.<subnet>.1`, the host end of every pod's veth), which both this
//!   machine and every simulated cluster's pods reach. It is bound with `IP_FREEBIND`, since the
//!   address exists only while a pod of the cluster runs. It reads the TLS `ClientHello` without
//!   terminating TLS, takes its SNI, finds the admitted passthrough Route whose host equals it,
//!   and splices the bytes (the `ClientHello` first) to the Route's Service's endpoint: the running
//!   pod its selector picks, at `spec.port.targetPort` (a number, or a Service port's name, whose target may name a
//!   container port).
//!
//! What the real router does differently: for a `ClientHello` with no SNI or an unknown one it
//! terminates TLS itself with its default (wildcard) certificate and answers HTTP 503
//! "Application is not available"; this one closes the connection. A client of mover's sees a
//! failed handshake either way (the default certificate is not from the migration's CA). Edge and
//! reencrypt Routes, path-based routing, weights and the HTTP frontend are not simulated.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::resources;
use super::store::{self, Store, name_of, namespace_of};
use super::{Shared, controllers};

/// The port the router listens on.
pub const ROUTER_PORT: u16 = 443;
/// The most `ClientHello` bytes read while looking for the SNI (a `ClientHello` with a post-quantum
/// key share is about 1.5 KiB; the TLS limit of one handshake message is far above this).
const HELLO_BUDGET: usize = 16 * 1024;
/// How long a client may take to send its `ClientHello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The host a Route named `name` in `namespace` gets when it asks for none.
#[must_use]
pub fn default_host(cluster: &str, name: &str, namespace: &str) -> String {
    format!("{name}-{namespace}.apps.{cluster}.sim")
}

/// One round of the route controller: hosts defaulted, Routes admitted.
pub(super) fn admit(shared: &Shared) {
    shared.write(|store| {
        let route_type = resources::by_kind("Route");
        let mut routes: Vec<Value> = store.list(route_type, None).into_iter().cloned().collect();
        // Oldest first: an older Route keeps a host a newer one also asks for.
        routes.sort_by_key(|r| (r["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_owned(), store::rv_of(r)));
        let mut claimed: Vec<(String, String)> = Vec::new();
        for mut route in routes {
            if route["metadata"].get("deletionTimestamp").is_some() {
                continue;
            }
            let (name, namespace) = (name_of(&route).to_owned(), namespace_of(&route).to_owned());
            let host = if let Some(host) = route["spec"]["host"].as_str().filter(|h| !h.is_empty()) {
                host.to_owned()
            } else {
                let host = default_host(&shared.name, &name, &namespace);
                route["spec"]["host"] = json!(host);
                host
            };
            let holder = claimed.iter().find(|(h, _)| *h == host).map(|(_, who)| who.clone());
            let condition = match holder {
                None => json!({"type": "Admitted", "status": "True"}),
                Some(holder) => json!({"type": "Admitted", "status": "False", "reason": "HostAlreadyClaimed",
                    "message": format!("route {holder} already exposes {host} and is older")}),
            };
            if condition["status"] == "True" {
                claimed.push((host.clone(), format!("{namespace}/{name}")));
            }
            let old = route["status"]["ingress"][0]["conditions"][0].clone();
            let mut condition = condition;
            let unchanged = old["type"] == condition["type"] && old["status"] == condition["status"];
            condition["lastTransitionTime"] =
                if unchanged { old["lastTransitionTime"].clone() } else { json!(store::now()) };
            route["status"] = json!({"ingress": [{
                "host": host,
                "routerName": "default",
                "routerCanonicalHostname": format!("router-default.apps.{}.sim", shared.name),
                "wildcardPolicy": "None",
                "conditions": [condition],
            }]});
            store.put_if_changed(route_type, route);
        }
    });
}

/// Where the admitted passthrough Route for `host` sends its connections: its Service's running
/// pod, at the Route's target port.
pub(super) fn backend(store: &Store, host: &str) -> Option<SocketAddr> {
    let route = store.list(resources::by_kind("Route"), None).into_iter().find(|r| {
        r["spec"]["host"] == host
            && r["spec"]["tls"]["termination"] == "passthrough"
            && r["status"]["ingress"][0]["conditions"][0]["status"] == "True"
    })?;
    if route["spec"]["to"]["kind"] != "Service" {
        return None;
    }
    let namespace = namespace_of(route);
    let service = store.get(resources::by_kind("Service"), namespace, route["spec"]["to"]["name"].as_str()?)?;
    let ports = service["spec"]["ports"].as_array()?;
    let port = match &route["spec"]["port"]["targetPort"] {
        Value::Number(number) => return at(store, service, |_| number.as_u64()),
        Value::String(name) => ports.iter().find(|p| p["name"] == name.as_str())?,
        _ => ports.first()?,
    };
    let target = if port["targetPort"].is_null() { &port["port"] } else { &port["targetPort"] };
    at(store, service, |pod| match target {
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == name.as_str())?["containerPort"]
            .as_u64(),
        number => number.as_u64(),
    })
}

/// The one running pod `service` selects, at the port `port` gives for it.
fn at(store: &Store, service: &Value, port: impl Fn(&Value) -> Option<u64>) -> Option<SocketAddr> {
    let pods = controllers::selected_pods(store, service);
    let [pod] = pods.as_slice() else { return None };
    let ip = pod["status"]["podIP"].as_str()?.parse().ok()?;
    Some(SocketAddr::new(ip, u16::try_from(port(pod)?).ok()?))
}

/// A running router: its thread stops when the cluster does.
pub(super) struct Router {
    pub(super) addr: SocketAddr,
    pub(super) thread: JoinHandle<()>,
}

impl Router {
    /// Listens on `ip`:[`ROUTER_PORT`] and routes by the cluster's Routes until it stops.
    pub(super) fn start(shared: &Arc<Shared>, ip: Ipv4Addr) -> std::io::Result<Router> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let addr = SocketAddr::from((ip, ROUTER_PORT));
        let listener = runtime.block_on(async { bind_freely(addr) })?;
        let shared = shared.clone();
        let thread = std::thread::Builder::new().name(format!("sim-{}-router", shared.name)).spawn(move || {
            let stopping = {
                let shared = shared.clone();
                async move {
                    while !shared.stopping.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            let lookup = move |host: &str| backend(&shared.read(), host);
            runtime.block_on(serve(listener, lookup, stopping));
        })?;
        Ok(Router { addr, thread })
    }
}

/// A listener on `addr`, which need not exist yet (`IP_FREEBIND`: the gateway address appears
/// with the cluster's first pod).
fn bind_freely(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    rustix::net::sockopt::set_ip_freebind(&socket, true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr).map_err(|e| {
        std::io::Error::new(e.kind(), format!("the simulated OpenShift router cannot listen on {addr}: {e}"))
    })?;
    socket.listen(128)
}

/// Accepts connections until `stopped`, sending each to what `lookup` says serves its SNI.
pub(super) async fn serve(
    listener: TcpListener,
    lookup: impl Fn(&str) -> Option<SocketAddr> + Send + Sync + 'static,
    stopped: impl std::future::Future<Output = ()>,
) {
    let lookup = Arc::new(lookup);
    tokio::pin!(stopped);
    loop {
        let client = tokio::select! {
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        let lookup = lookup.clone();
        tokio::spawn(async move {
            let _ = splice(client, |host| lookup(host)).await;
        });
    }
}

/// Reads `client`'s `ClientHello`, then joins it to the backend of its SNI; closes it when there
/// is none.
async fn splice(mut client: TcpStream, lookup: impl Fn(&str) -> Option<SocketAddr>) -> std::io::Result<()> {
    let mut hello = Vec::new();
    let sni = tokio::time::timeout(HELLO_TIMEOUT, async {
        loop {
            match client_hello_sni(&hello) {
                Hello::Incomplete if hello.len() < HELLO_BUDGET => {}
                Hello::Sni(name) => return Some(name),
                Hello::Incomplete | Hello::NoSni | Hello::NotTls => return None,
            }
            let mut buffer = [0u8; 4096];
            let read = client.read(&mut buffer).await.ok()?;
            if read == 0 {
                return None;
            }
            hello.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .ok()
    .flatten();
    let Some(backend) = sni.as_deref().and_then(lookup) else {
        return client.shutdown().await;
    };
    let mut server = TcpStream::connect(backend).await?;
    server.write_all(&hello).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await.map(drop)
}

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// A `ClientHello` naming this server.
    Sni(String),
    /// A `ClientHello` without a host name.
    NoSni,
    /// Not a TLS `ClientHello`.
    NotTls,
}

/// The SNI host name of the TLS `ClientHello` at the start of `bytes` (RFC 8446 §4.1.2, RFC 6066
/// §3): the handshake message is gathered from as many records as it spans.
pub(super) fn client_hello_sni(bytes: &[u8]) -> Hello {
    // Records: type 22 (handshake), version, length; their fragments joined.
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        if message.len() >= 4 {
            let length = usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]);
            if message[0] != 1 {
                return Hello::NotTls;
            }
            if message.len() >= 4 + length {
                return parse_client_hello(&message[4..4 + length]).unwrap_or(Hello::NotTls);
            }
        }
        if rest.len() < 5 {
            return if rest.first().is_some_and(|&t| t != 22) { Hello::NotTls } else { Hello::Incomplete };
        }
        if rest[0] != 22 {
            return Hello::NotTls;
        }
        let length = usize::from(rest[3]) << 8 | usize::from(rest[4]);
        if rest.len() < 5 + length {
            return Hello::Incomplete;
        }
        message.extend_from_slice(&rest[5..5 + length]);
        rest = &rest[5 + length..];
    }
}

/// The SNI of a `ClientHello`'s body; `None` when it is malformed.
fn parse_client_hello(body: &[u8]) -> Option<Hello> {
    let mut reader = Reader(body);
    reader.take(2 + 32)?; // legacy_version, random
    let session = usize::from(reader.u8()?);
    reader.take(session)?;
    let suites = reader.u16()?;
    reader.take(suites)?;
    let compression = usize::from(reader.u8()?);
    reader.take(compression)?;
    if reader.0.is_empty() {
        return Some(Hello::NoSni);
    }
    let extensions = reader.u16()?;
    let mut extensions = Reader(reader.take(extensions)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let length = extensions.u16()?;
        let data = extensions.take(length)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let length = list.u16()?;
        let mut names = Reader(list.take(length)?);
        while !names.0.is_empty() {
            let kind = names.u8()?;
            let length = names.u16()?;
            let name = names.take(length)?;
            if kind == 0 {
                return Some(Hello::Sni(String::from_utf8(name.to_vec()).ok()?));
            }
        }
    }
    Some(Hello::NoSni)
}

/// Big-endian fields off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| usize::from(b[0]) << 8 | usize::from(b[1]))
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
