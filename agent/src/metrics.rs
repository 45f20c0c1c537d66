//! `/healthz` and Prometheus `/metrics` on `--metrics-listen ADDR`, apart from the mTLS port.
//!
//! Metrics (the `OpenMetrics` text format, which Prometheus scrapes), each labelled by `volume` and
//! `direction` (`sent` by a source agent's pushes, `received` by a target):
//! `mover_transferred_bytes_total` (content bytes), `mover_wire_bytes_total` (tunnel bytes,
//! after compression), `mover_transferred_files_total`, `mover_errors_total` (failed sessions
//! and per-file errors), `mover_sessions_total`, and the gauge `mover_active_sessions`.
//! Counters move when a session ends.
//!
//! The HTTP side is a minimal HTTP/1.1 responder for two `GET`s: one request per connection,
//! head at most 8 KiB, read within 5 seconds, `Connection: close`. It serves no other path.

use std::sync::Arc;
use std::time::Duration;

use mover_engine::agent::{Direction, SessionObserver, SessionStats};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

const MAX_HEAD: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    volume: String,
    direction: String,
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    bytes: Family<Labels, Counter>,
    wire: Family<Labels, Counter>,
    files: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    sessions: Family<Labels, Counter>,
    active: Family<Labels, Gauge>,
}

fn labels(volume: &str, direction: Direction) -> Labels {
    Labels { volume: volume.to_owned(), direction: direction.as_str().to_owned() }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            bytes: Family::default(),
            wire: Family::default(),
            files: Family::default(),
            errors: Family::default(),
            sessions: Family::default(),
            active: Family::default(),
            registry: Registry::default(),
        };
        registry.register("mover_transferred_bytes", "Content bytes sent or written", metrics.bytes.clone());
        registry.register(
            "mover_wire_bytes",
            "Bytes on the tunnel (frames after compression, before TLS)",
            metrics.wire.clone(),
        );
        registry.register("mover_transferred_files", "Files whose content was sent or written", metrics.files.clone());
        registry.register("mover_errors", "Failed sessions and per-file errors", metrics.errors.clone());
        registry.register("mover_sessions", "Transfer sessions that ended", metrics.sessions.clone());
        registry.register("mover_active_sessions", "Transfer sessions running now", metrics.active.clone());
        Metrics { registry, ..metrics }
    }

    /// The `OpenMetrics` text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

impl SessionObserver for Metrics {
    fn session_started(&self, volume: &str, direction: Direction) {
        self.active.get_or_create(&labels(volume, direction)).inc();
    }

    fn session_finished(&self, volume: &str, direction: Direction, stats: &SessionStats) {
        let labels = labels(volume, direction);
        self.active.get_or_create(&labels).dec();
        self.sessions.get_or_create(&labels).inc();
        self.bytes.get_or_create(&labels).inc_by(stats.bytes);
        self.wire.get_or_create(&labels).inc_by(stats.bytes_on_wire);
        self.files.get_or_create(&labels).inc_by(stats.files);
        self.errors.get_or_create(&labels).inc_by(stats.errors);
    }
}

/// Serves `/healthz` and `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = respond(stream, &metrics).await {
                debug!(%peer, %error, "metrics request failed");
            }
        });
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

async fn respond(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::other("request head not received in time"))??;
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let mut parts = std::str::from_utf8(line).unwrap_or_default().split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned()),
        ("GET", "/metrics") => {
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
        }
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "only /healthz and /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_move_the_counters() {
        let metrics = Metrics::new();
        metrics.session_started("data", Direction::Received);
        assert!(metrics.encode().contains("mover_active_sessions{volume=\"data\",direction=\"received\"} 1"));
        let stats = SessionStats { bytes: 1000, bytes_on_wire: 600, files: 3, errors: 0 };
        metrics.session_finished("data", Direction::Received, &stats);
        let text = metrics.encode();
        for line in [
            "mover_active_sessions{volume=\"data\",direction=\"received\"} 0",
            "mover_transferred_bytes_total{volume=\"data\",direction=\"received\"} 1000",
            "mover_wire_bytes_total{volume=\"data\",direction=\"received\"} 600",
            "mover_transferred_files_total{volume=\"data\",direction=\"received\"} 3",
            "mover_sessions_total{volume=\"data\",direction=\"received\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
