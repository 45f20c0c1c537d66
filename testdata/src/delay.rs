//! [`DelayRelay`]: a TCP relay that holds every byte a fixed time in each direction, to put a
//! long link (a round trip of twice the delay) between two ends on loopback, where `tc netem` is
//! not available.
//!
//! Each accepted connection gets a connection to the upstream address and two pumps, one per
//! direction. A pump's reader stamps every chunk it reads with the time it arrived; its writer
//! sends the chunk once that time plus the delay has passed, in order. Bandwidth is not limited
//! (loopback's), so a pipelined protocol pays the delay once, while each request that waits for
//! its answer pays a full round trip: the wall time of a small job through the relay, less the
//! same job without it, divided by the round-trip time, counts the round trips on its critical
//! path.
//!
//! A half-close is relayed after the data before it, and a connection ends when both directions
//! have ended. The relay listens on `127.0.0.1` (ephemeral port, or the address given).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A running relay; stops accepting when dropped (connections already open run to their end).
pub struct DelayRelay {
    /// `127.0.0.1:PORT` the relay listens on.
    pub addr: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicU64,
}

impl DelayRelay {
    /// Relays connections to `upstream`, holding every byte `one_way` in each direction.
    pub fn start(upstream: &str, one_way: Duration) -> io::Result<DelayRelay> {
        DelayRelay::listen("127.0.0.1:0", upstream, one_way)
    }

    /// [`DelayRelay::start`] on the address `listen`.
    pub fn listen(listen: &str, upstream: &str, one_way: Duration) -> io::Result<DelayRelay> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_owned();
        let acceptor = {
            let shared = shared.clone();
            thread::spawn(move || {
                for client in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let upstream = upstream.clone();
                    thread::spawn(move || {
                        let _ = relay(client, &upstream, one_way);
                    });
                }
            })
        };
        Ok(DelayRelay { addr, shared, acceptor: Some(acceptor) })
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Runs the relay until the process ends (for `mover-testdata delay-relay`).
    pub fn wait(mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stop`.
        let _ = TcpStream::connect(&self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn relay(client: TcpStream, upstream: &str, one_way: Duration) -> io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let up = pump(client.try_clone()?, server.try_clone()?, one_way);
    let down = pump(server, client, one_way);
    let _ = up.join();
    let _ = down.join();
    Ok(())
}

/// Copies `from` to `to`, each chunk sent `delay` after it was read; at the end of `from`,
/// shuts `to` down for writing.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) -> JoinHandle<()> {
    let (chunks, queue) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        for (due, chunk) in queue {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    thread::spawn(move || {
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks.send((Instant::now() + delay, buffer[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        drop(chunks);
        let _ = writer.join();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: what comes in goes back out, until the client half-closes.
    fn echo() -> (String, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buffer = [0u8; 1024];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => stream.write_all(&buffer[..n]).expect("echo"),
                }
            }
        });
        (addr, server)
    }

    #[test]
    fn each_exchange_costs_a_round_trip_and_bytes_keep_their_order() {
        let (upstream, server) = echo();
        let relay = DelayRelay::start(&upstream, Duration::from_millis(40)).expect("relay");
        let mut stream = TcpStream::connect(&relay.addr).expect("connect");
        let start = Instant::now();
        for exchange in 0..3u8 {
            stream.write_all(&[exchange, exchange + 1]).expect("write");
            let mut answer = [0u8; 2];
            stream.read_exact(&mut answer).expect("read");
            assert_eq!(answer, [exchange, exchange + 1]);
        }
        let elapsed = start.elapsed();
        // Three request/answer exchanges: at least three round trips of 80 ms.
        assert!(elapsed >= Duration::from_millis(240), "three exchanges took {elapsed:?}");
        stream.shutdown(Shutdown::Write).expect("half-close");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).expect("the relay relays the end");
        assert!(rest.is_empty());
        server.join().expect("echo server");
        assert_eq!(relay.connections(), 1);
    }

    #[test]
    fn a_pipelined_stream_pays_the_delay_once() {
        let (upstream, server) = echo();
        let relay = DelayRelay::start(&upstream, Duration::from_millis(40)).expect("relay");
        let mut stream = TcpStream::connect(&relay.addr).expect("connect");
        let start = Instant::now();
        let sent: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        for piece in sent.chunks(10) {
            stream.write_all(piece).expect("write");
            thread::sleep(Duration::from_millis(2));
        }
        let mut answer = vec![0u8; sent.len()];
        stream.read_exact(&mut answer).expect("read");
        assert_eq!(answer, sent);
        let elapsed = start.elapsed();
        // 20 writes 2 ms apart and one round trip: far less than 20 round trips.
        assert!(elapsed < Duration::from_millis(800), "a pipelined stream took {elapsed:?}");
        drop(stream);
        server.join().expect("echo server");
    }
}
