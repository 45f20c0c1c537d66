//! `pods/portforward` through a real `kube::Client` (kube-rs's WebSocket port-forward): bytes
//! reach a pod's port and come back; a missing pod, a pod that does not run and a port nothing
//! listens on fail as the real server says; the upgrade is authorized as `get` and `create`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tests::{eventually, fixture, pod};

/// A port nothing on this machine listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server on every address of `port` that answers each connection's bytes upper-cased (so an
/// answer cannot be the client's own bytes looped back).
fn shouting_server(port: u16) -> String {
    format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', {port}))\ns.listen()\nwhile True:\n    c, _ = s.accept()\n    \
         while (d := c.recv(65536)):\n        c.sendall(d.upper())\n    c.close()\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_running_pods_port_and_refuses_what_the_real_server_refuses() {
    let Some(f) = fixture().await else { return };
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), "app");
    let port = free_port();
    let server = shouting_server(port);
    pods.create(&PostParams::default(), &pod("shout", &["python3", "-c", &server], &json!({}))).await.unwrap();

    // Bytes go to the pod's port and its answer comes back (retried until the server listens).
    let answer = eventually("an answer through the port-forward", || {
        let pods = pods.clone();
        async move {
            let mut forwarder = pods.portforward("shout", &[port]).await.ok()?;
            let mut stream = forwarder.take_stream(port)?;
            stream.write_all(b"hello through the api server").await.ok()?;
            let mut answer = vec![0u8; 28];
            tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut answer)).await.ok()?.ok()?;
            Some(answer)
        }
    })
    .await;
    assert_eq!(answer, b"HELLO THROUGH THE API SERVER");

    // A port nothing listens on: the error channel says so.
    let closed = free_port();
    let mut forwarder = pods.portforward("shout", &[closed]).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(10), forwarder.take_error(closed).unwrap()).await.unwrap();
    let error = error.expect("a message on the error channel");
    assert!(error.contains(&format!("error forwarding port {closed} to pod")), "{error}");

    // A missing pod is a 404, a pod that does not run a 400 naming its phase.
    match pods.portforward("absent", &[port]).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404, "{status:?}"),
        other => panic!("expected a 404, got {:?}", other.map(|_| ())),
    }
    let pending = json!({"spec": {"containers": [{"name": "main", "image": "missing"}]}});
    pods.create(&PostParams::default(), &pod("stuck", &["true"], &pending)).await.unwrap();
    match pods.portforward("stuck", &[port]).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 400, "{status:?}");
            assert!(status.message.contains("pod is not running. Current status=Pending"), "{status:?}");
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }

    // Authorized as Kubernetes 1.35 does: `get` (the upgrade is a GET) and `create`.
    let verbs: std::collections::BTreeSet<String> = f
        .cluster
        .requests()
        .into_iter()
        .filter(|r| r.subresource == "portforward" && r.name == "shout" && r.code == 101)
        .map(|r| r.verb)
        .collect();
    assert_eq!(verbs, ["create".to_owned(), "get".to_owned()].into());
}
