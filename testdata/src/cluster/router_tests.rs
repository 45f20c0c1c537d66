//! The route controller and the passthrough router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Hello, backend, client_hello_sni, serve};
use crate::cluster::tests::{TestPods, client_as};
use crate::cluster::{Flavor, SimCluster};

/// The first flight of a rustls client that sends `sni` (no SNI for an IP address).
fn client_hello(sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut bytes = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut bytes).unwrap();
    }
    bytes
}

#[test]
fn the_sni_is_read_from_a_client_hello_in_one_record_or_several() {
    let hello = client_hello("agent-a-app.apps.target.sim");
    assert_eq!(client_hello_sni(&hello), Hello::Sni("agent-a-app.apps.target.sim".into()));
    for cut in [0, 1, 4, 5, 40, hello.len() - 1] {
        assert_eq!(client_hello_sni(&hello[..cut]), Hello::Incomplete, "cut at {cut}");
    }
    // The same handshake message split over two records.
    let body = &hello[5..];
    let (first, second) = body.split_at(100);
    let mut split = Vec::new();
    for part in [first, second] {
        split.extend_from_slice(&[22, 3, 1]);
        split.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
        split.extend_from_slice(part);
    }
    assert_eq!(client_hello_sni(&split[..split.len() - 1]), Hello::Incomplete);
    assert_eq!(client_hello_sni(&split), Hello::Sni("agent-a-app.apps.target.sim".into()));
    assert_eq!(client_hello_sni(&client_hello("10.0.0.1")), Hello::NoSni);
    assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n\r\n"), Hello::NotTls);
    // A handshake record that is no ClientHello, and a truncated ClientHello body.
    assert_eq!(client_hello_sni(&[22, 3, 3, 0, 4, 2, 0, 0, 0]), Hello::NotTls);
    assert_eq!(client_hello_sni(&[22, 3, 3, 0, 6, 1, 0, 0, 2, 3, 3]), Hello::NotTls);
}

/// A backend that answers `reply` after reading as many bytes as the hello it expects.
async fn backend_server(expected: Vec<u8>, reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = vec![0; expected.len()];
        stream.read_exact(&mut got).await.unwrap();
        stream.write_all(reply).await.unwrap();
        got == expected
    });
    (addr, task)
}

#[tokio::test]
async fn the_router_splices_a_known_sni_to_its_backend_and_closes_the_others() {
    let hello = client_hello("known.apps.sim");
    let (backend, received) = backend_server(hello.clone(), b"from the agent").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve(listener, move |host| (host == "known.apps.sim").then_some(backend), async {
        let _ = stopped.await;
    }));

    let mut client = TcpStream::connect(router).await.unwrap();
    // The ClientHello in two writes: the router waits for the whole of it.
    client.write_all(&hello[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(&hello[10..]).await.unwrap();
    let mut reply = vec![0; 14];
    client.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, b"from the agent");
    assert!(received.await.unwrap(), "the backend got other bytes than the ClientHello");

    for refused in [client_hello("unknown.apps.sim"), client_hello("10.1.2.3"), b"GET / HTTP/1.1\r\n\r\n".to_vec()] {
        let mut client = TcpStream::connect(router).await.unwrap();
        client.write_all(&refused).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "not closed: {read:?} {rest:?}");
    }
    let _ = stop.send(());
    serving.await.unwrap();
}

#[tokio::test]
async fn routes_are_admitted_with_a_default_host_and_lead_to_the_selected_pod() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the simulated cluster's kubelet bind-mounts claims, which needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        SimCluster::start_flavored("target", &dir.path().join("c"), Arc::new(TestPods::default()), Flavor::OpenShift)
            .unwrap();
    assert_eq!(cluster.router_address(), None, "test pods do not reach the host: no router");
    let client = client_as(&cluster, "admin", dir.path()).await;
    let create = |resource: ApiResource, mut object: serde_json::Value| {
        let client = client.clone();
        object["apiVersion"] = json!(resource.api_version);
        object["kind"] = json!(resource.kind);
        async move {
            let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
            api.create(&PostParams::default(), &serde_json::from_value(object).unwrap()).await.unwrap()
        }
    };
    let gvk = |group: &str, kind: &str| GroupVersionKind::gvk(group, "v1", kind);
    let routes = ApiResource::from_gvk_with_plural(&gvk("route.openshift.io", "Route"), "routes");
    create(
        ApiResource::from_gvk(&gvk("", "Pod")),
        json!({"metadata": {"name": "agent", "namespace": "default", "labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "c", "image": "tools", "command": ["sleep", "30"]}]}}),
    )
    .await;
    create(
        ApiResource::from_gvk(&gvk("", "Service")),
        json!({"metadata": {"name": "agent", "namespace": "default"},
            "spec": {"selector": {"app": "agent"}, "ports": [{"name": "mover", "port": 80, "targetPort": 7443}]}}),
    )
    .await;
    let route = |name: &str, host: Option<&str>, port: serde_json::Value| {
        json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"host": host, "to": {"kind": "Service", "name": "agent"}, "port": {"targetPort": port},
                "tls": {"termination": "passthrough"}}})
    };
    create(routes.clone(), route("by-name", None, json!("mover"))).await;
    create(routes.clone(), route("by-number", Some("agent.apps.example"), json!(7443))).await;
    create(routes.clone(), route("late", Some("agent.apps.example"), json!(7443))).await;

    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &routes);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let admitted = loop {
        let found = api.get("by-name").await.unwrap();
        let pod_ip = cluster.shared.read().get(super::resources::by_kind("Pod"), "default", "agent").cloned();
        let running = pod_ip.is_some_and(|p| p["status"]["phase"] == "Running");
        if running && found.data["status"]["ingress"][0]["conditions"][0]["status"] == "True" {
            break found;
        }
        assert!(std::time::Instant::now() < deadline, "not admitted: {:?}", found.data);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let host = "by-name-default.apps.target.sim";
    assert_eq!(admitted.data["spec"]["host"], host);
    let ingress = &admitted.data["status"]["ingress"][0];
    assert_eq!(ingress["host"], host);
    assert_eq!(ingress["routerName"], "default");
    assert_eq!(ingress["routerCanonicalHostname"], "router-default.apps.target.sim");
    assert_eq!(ingress["conditions"][0]["type"], "Admitted");
    let late = api.get("late").await.unwrap();
    assert_eq!(late.data["status"]["ingress"][0]["conditions"][0]["reason"], "HostAlreadyClaimed");

    let store = cluster.shared.read();
    let pod = store.get(super::resources::by_kind("Pod"), "default", "agent").unwrap();
    let ip: std::net::IpAddr = pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
    assert_eq!(backend(&store, host), Some(SocketAddr::new(ip, 7443)));
    assert_eq!(backend(&store, "agent.apps.example"), Some(SocketAddr::new(ip, 7443)));
    assert_eq!(backend(&store, "nobody.apps.target.sim"), None);
}
