//! A small HTTP/1.1 server connection over any byte stream (here TLS): keep-alive, requests
//! with a `Content-Length` body, responses whole or chunked, and connection upgrades (a `101`
//! response hands the connection over, as a WebSocket upgrade needs). A streamed response that
//! yields an error ends the connection mid-body, as a dropped connection does. (Hand-written on `httparse`
//! rather than hyper's server, whose feature would rebuild every crate that uses hyper.)

use std::fmt::Write as _;
use std::io;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// The largest request head and body taken.
const MAX_HEAD: usize = 64 << 10;
const MAX_BODY: usize = 16 << 20;

/// A response body: whole, or streamed from a channel (an `Err` drops the connection).
pub enum Body {
    /// All of it.
    Full(Bytes),
    /// Pieces as they come; the end of the channel ends the body.
    Stream(mpsc::Receiver<Result<Bytes, io::Error>>),
    /// None: after the response head (`101 Switching Protocols`) the connection goes to the
    /// receiver of this channel.
    Upgrade(oneshot::Sender<Upgraded>),
}

/// A connection's byte stream, whatever carries it.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A connection handed over by an upgrade: the stream, and what the client had already sent
/// after the request.
pub struct Upgraded {
    /// The connection.
    pub stream: Box<dyn Duplex>,
    /// Bytes read past the request head.
    pub read_ahead: Vec<u8>,
}

fn bad(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

/// Reads one request; `None` at a clean end of the connection.
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
) -> io::Result<Option<Request<Bytes>>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head) = parsed.parse(buffer).map_err(|e| bad(&e.to_string()))? {
            let mut builder = Request::builder().method(parsed.method.unwrap_or("GET")).uri(parsed.path.unwrap_or("/"));
            let mut length = 0;
            for header in parsed.headers.iter() {
                if header.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(header.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(|| bad("bad content-length"))?;
                }
                if header.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad("chunked request bodies are not supported"));
                }
                builder = builder.header(header.name, header.value);
            }
            if length > MAX_BODY {
                return Err(bad("request body too large"));
            }
            let _ = buffer.split_to(head);
            while buffer.len() < length {
                if stream.read_buf(buffer).await? == 0 {
                    return Err(bad("connection closed inside a request body"));
                }
            }
            let body = buffer.split_to(length).freeze();
            return builder.body(body).map(Some).map_err(|e| bad(&e.to_string()));
        }
        if buffer.len() > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        if stream.read_buf(buffer).await? == 0 {
            return if buffer.is_empty() { Ok(None) } else { Err(bad("connection closed inside a request head")) };
        }
    }
}

fn head(response: &Response<Body>, framing: &str) -> Vec<u8> {
    let status = response.status();
    let mut text = format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or(""));
    for (name, value) in response.headers() {
        let _ = write!(text, "{name}: {}\r\n", value.to_str().unwrap_or(""));
    }
    text.push_str(framing);
    text.push_str("\r\n");
    text.into_bytes()
}

/// Serves requests on `stream` with `handle` until the client goes or an error.
pub async fn serve_connection<S, F, Fut>(stream: S, handle: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Bytes>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buffer = BytesMut::with_capacity(8192);
    while let Ok(Some(request)) = read_request(&mut reader, &mut buffer).await {
        let close = request
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let response = handle(request).await;
        let (parts, body) = response.into_parts();
        let response = Response::from_parts(parts, ());
        let response = response.map(|()| Body::Full(Bytes::new()));
        let written = match body {
            Body::Full(bytes) => {
                let mut out = head(&response, &format!("content-length: {}\r\n", bytes.len()));
                out.extend_from_slice(&bytes);
                writer.write_all(&out).await.is_ok() && writer.flush().await.is_ok()
            }
            Body::Upgrade(to) => {
                if writer.write_all(&head(&response, "")).await.is_ok() && writer.flush().await.is_ok() {
                    let read_ahead = buffer.to_vec();
                    let _ = to.send(Upgraded { stream: Box::new(reader.unsplit(writer)), read_ahead });
                }
                return;
            }
            Body::Stream(mut pieces) => {
                if writer.write_all(&head(&response, "transfer-encoding: chunked\r\n")).await.is_err()
                    || writer.flush().await.is_err()
                {
                    return;
                }
                let mut probe = [0u8; 1];
                loop {
                    let piece = tokio::select! {
                        piece = pieces.recv() => piece,
                        // A client that goes away (or sends more) ends the stream.
                        _ = reader.read(&mut probe) => return,
                    };
                    match piece {
                        Some(Ok(bytes)) if bytes.is_empty() => {}
                        Some(Ok(bytes)) => {
                            let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
                            chunk.extend_from_slice(&bytes);
                            chunk.extend_from_slice(b"\r\n");
                            if writer.write_all(&chunk).await.is_err() || writer.flush().await.is_err() {
                                return;
                            }
                        }
                        Some(Err(_)) => return,
                        None => break writer.write_all(b"0\r\n\r\n").await.is_ok() && writer.flush().await.is_ok(),
                    }
                }
            }
        };
        if !written || close {
            return;
        }
    }
}
