//! The coordinator's way to agents on a pod network it cannot reach: a listener on this machine's
//! loopback whose every connection the API server carries to the agent pod's port
//! (`pods/portforward`), as `kubectl port-forward` does.
//!
//! Only the coordinator's own connections take this way: the agents still dial each other at
//! their exposed addresses, so a claim's bytes never pass through it (a copy whose other end is
//! a directory on this machine is the exception: there the coordinator is an end). Anyone on this
//! machine may connect to the listener, and gets what anyone gets at the agent's port: a
//! mutual-TLS handshake that needs the migration's certificates.

use std::net::{Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::context::Cluster;
use crate::error::KubeError;

/// A port-forward to one pod's port, open until dropped.
#[derive(Debug)]
pub struct PortForward {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl PortForward {
    /// Forwards a loopback port of this machine to `port` of pod `namespace/pod`. One forward is
    /// opened and closed first, so that a refusal (no permission, a pod that does not run) is
    /// this error, not a dropped connection later.
    pub async fn start(cluster: &Cluster, (namespace, pod): (&str, &str), port: u16) -> Result<Self, KubeError> {
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
        let doing = format!("forwarding port {port} of pod `{namespace}/{pod}` through the API server");
        let first = pods.portforward(pod, &[port]).await.map_err(KubeError::api(&cluster.context, &doing))?;
        first.abort();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(|error| {
            KubeError::Config(format!("{doing}: cannot listen on this machine's loopback: {error}"))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|error| KubeError::Config(format!("{doing}: the loopback listener has no address: {error}")))?;
        let (pod, context) = (pod.to_owned(), cluster.context.clone());
        let task = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                tokio::spawn(carry(connection, pods.clone(), (pod.clone(), port), context.clone()));
            }
        });
        Ok(PortForward { addr, task })
    }

    /// `127.0.0.1:PORT`, where this machine reaches the pod's port.
    #[must_use]
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Carries one connection to the pod and back until either end closes it.
async fn carry(mut connection: TcpStream, pods: Api<Pod>, (pod, port): (String, u16), context: String) {
    let mut forwarder = match pods.portforward(&pod, &[port]).await {
        Ok(forwarder) => forwarder,
        Err(error) => {
            tracing::warn!(%context, %pod, port, %error, "a port-forward to the agent failed");
            return;
        }
    };
    if let Some(mut upstream) = forwarder.take_stream(port) {
        let _ = tokio::io::copy_bidirectional(&mut connection, &mut upstream).await;
    }
    let _ = forwarder.join().await;
}
