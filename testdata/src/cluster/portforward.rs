//! `pods/NAME/portforward` over WebSocket, as the API server serves it to kube-rs and to kubectl
//! since 1.31: a `GET` upgraded with subprotocol `v4.channel.k8s.io`, `?ports=P[,P...]`. Each port
//! has a data channel (`2i`) and an error channel (`2i + 1`); the server opens each with a frame
//! holding the port number (little-endian), then every binary message is a channel byte and
//! payload. There is no half-close in v4: either end's close ends every port.
//!
//! As the real server: the pod must exist (404) and be `Running` (400, with its phase); a port the
//! pod does not accept on gets a message on its error channel. Unlike it: the simulated server
//! dials the pod's IP itself (the real path goes through the kubelet into the pod's network
//! namespace and dials `localhost`), so the pods' agents must listen on their pod IP, as mover's
//! do (`0.0.0.0`). Either way a client that reaches the API server reaches the pod's ports
//! without reaching the pod network.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Response, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::Shared;
use super::http1::{Body, Upgraded};
use super::resources;
use super::server::{Query, Target};
use super::status::ApiError;

/// The one subprotocol served.
const PROTOCOL: &str = "v4.channel.k8s.io";

/// Answers a port-forward request: `101 Switching Protocols`, after which a task relays each
/// port to the pod.
pub fn serve(
    shared: &Shared,
    target: &Target,
    query: &Query,
    request: &http::Request<Bytes>,
) -> Result<Response<Body>, ApiError> {
    let headers = request.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    if request.method() != http::Method::GET || !has(header::UPGRADE, "websocket") {
        return Err(ApiError::bad_request(
            "Upgrade request required: this server forwards ports over WebSocket only (not SPDY)".to_owned(),
        ));
    }
    if !has(header::SEC_WEBSOCKET_PROTOCOL, PROTOCOL) {
        return Err(ApiError::bad_request(format!("the WebSocket subprotocol must include {PROTOCOL}")));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::bad_request("no Sec-WebSocket-Key".to_owned()))?;
    let ports = ports(query)?;
    let addresses = pod_addresses(shared, target, &ports)?;
    let (to, upgraded) = oneshot::channel();
    tokio::spawn(async move {
        if let Ok(upgraded) = upgraded.await {
            relay(upgraded, &ports, &addresses).await;
        }
    });
    let accept = derive_accept_key(key.as_bytes());
    let mut response = Response::new(Body::Upgrade(to));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let response_headers = response.headers_mut();
    response_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    response_headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    response_headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOL));
    response_headers
        .insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a header value"));
    Ok(response)
}

/// The `ports` parameter: one or more numbers, comma-separated (kube-rs sends one list).
fn ports(query: &Query) -> Result<Vec<u16>, ApiError> {
    let missing = || ApiError::bad_request("at least one port must be given in `ports`".to_owned());
    let list = query.get("ports").filter(|list| !list.is_empty()).ok_or_else(missing)?;
    list.split(',')
        .map(|port| {
            port.trim()
                .parse::<u16>()
                .ok()
                .filter(|&port| port > 0)
                .ok_or_else(|| ApiError::bad_request(format!("invalid port `{port}`: ports must be 1-65535")))
        })
        .collect()
}

/// Where each port of the pod is: its IP, once it runs.
fn pod_addresses(shared: &Shared, target: &Target, ports: &[u16]) -> Result<Vec<SocketAddr>, ApiError> {
    let store = shared.read();
    let resource = resources::by_kind("Pod");
    let pod = store
        .get(resource, &target.namespace, &target.name)
        .ok_or_else(|| ApiError::not_found(resource, &target.name))?;
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    let ip = pod["status"]["podIP"].as_str().and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    match ip {
        Some(ip) if phase == "Running" => Ok(ports.iter().map(|&port| SocketAddr::new(ip, port)).collect()),
        _ => Err(ApiError::bad_request(format!(
            "unable to forward port because pod is not running. Current status={phase}"
        ))),
    }
}

/// Relays each port between the WebSocket and a connection to the pod until either end closes.
async fn relay(upgraded: Upgraded, ports: &[u16], addresses: &[SocketAddr]) {
    let Upgraded { stream, read_ahead } = upgraded;
    let websocket = WebSocketStream::from_partially_read(stream, read_ahead, Role::Server, None).await;
    let (mut sink, mut incoming) = websocket.split();
    let (from_pods, mut outgoing) = mpsc::channel::<(u8, Option<Vec<u8>>)>(16);
    let mut writers: Vec<Option<OwnedWriteHalf>> = Vec::new();
    for (index, (&port, &address)) in ports.iter().zip(addresses).enumerate() {
        let data = u8::try_from(2 * index).unwrap_or(u8::MAX - 1);
        for channel in [data, data + 1] {
            let mut opening = vec![channel];
            opening.extend_from_slice(&port.to_le_bytes());
            if sink.send(Message::binary(opening)).await.is_err() {
                return;
            }
        }
        match TcpStream::connect(address).await {
            Ok(connection) => {
                let (mut reader, writer) = connection.into_split();
                writers.push(Some(writer));
                let from_pods = from_pods.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 32 << 10];
                    loop {
                        match reader.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if from_pods.send((data, Some(buffer[..n].to_vec()))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = from_pods.send((data, None)).await;
                });
            }
            Err(error) => {
                writers.push(None);
                let mut message = vec![data + 1];
                message
                    .extend_from_slice(format!("error forwarding port {port} to pod at {address}: {error}").as_bytes());
                let _ = sink.send(Message::binary(message)).await;
            }
        }
    }
    drop(from_pods);
    let mut open = writers.iter().filter(|w| w.is_some()).count();
    while open > 0 {
        tokio::select! {
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(payload))) if payload.len() > 1 && payload[0] % 2 == 0 => {
                    let writer = writers.get_mut(usize::from(payload[0] / 2)).and_then(Option::as_mut);
                    if let Some(writer) = writer
                        && writer.write_all(&payload[1..]).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            piece = outgoing.recv() => match piece {
                Some((channel, Some(bytes))) => {
                    let mut message = Vec::with_capacity(bytes.len() + 1);
                    message.push(channel);
                    message.extend_from_slice(&bytes);
                    if sink.send(Message::binary(message)).await.is_err() {
                        break;
                    }
                }
                Some((_, None)) => open -= 1,
                None => break,
            },
        }
    }
    for writer in writers.iter_mut().flatten() {
        let _ = writer.shutdown().await;
    }
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}
