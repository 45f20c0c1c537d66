//! Deadlines for registry answers, as for the volume tunnel: response headers within a deadline,
//! and bodies at a minimum rate. A socket read timeout alone restarts with every byte, so a
//! server or proxy that trickles one byte a second would hold a copy forever.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

/// How fast a registry must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Response headers arrive within this long of the request (of the end of its body, for an
    /// upload).
    pub response_headers: Duration,
    /// A body delivers at least this many bytes a second, over each [`Pace::window`].
    pub min_rate: u64,
    /// The window over which [`Pace::min_rate`] is measured (also the longest silence
    /// tolerated between two chunks).
    pub window: Duration,
}

impl Default for Pace {
    /// 15 s for headers, as the volume tunnel's handshake; bodies at 1 KiB/s over 15 s windows
    /// (far below any working link, far above a trickle).
    fn default() -> Pace {
        Pace { response_headers: Duration::from_secs(15), min_rate: 1024, window: Duration::from_secs(15) }
    }
}

/// Why pacing failed: the text for a transport error.
pub(super) fn too_slow_headers(pace: Pace) -> String {
    format!("no response headers within {:?}", pace.response_headers)
}

/// Runs `request` (a `send()`), failing with [`too_slow_headers`] when it does not complete in
/// time.
pub(super) async fn headers_within<T>(pace: Pace, request: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(pace.response_headers, request).await.map_err(|_| too_slow_headers(pace))
}

type Chunks<E> = Pin<Box<dyn Stream<Item = Result<Bytes, E>> + Send>>;

/// `inner` with the minimum rate enforced: an error `slow()` ends the stream when a window
/// passes with fewer than `min_rate × window` bytes.
pub(super) fn min_rate<E: Send + 'static>(
    pace: Pace,
    inner: Chunks<E>,
    slow: impl Fn(String) -> E + Send + Sync + 'static,
) -> Chunks<E> {
    let window_ms = u64::try_from(pace.window.as_millis()).unwrap_or(u64::MAX);
    let needed = pace.min_rate.saturating_mul(window_ms) / 1000;
    let slow = std::sync::Arc::new(slow);
    let state = (inner, Instant::now(), 0u64, false);
    Box::pin(futures_util::stream::unfold(state, move |(mut inner, mut start, mut bytes, done)| {
        let slow = slow.clone();
        async move {
            if done {
                return None;
            }
            let too_slow =
                || slow(format!("the answer came slower than {} bytes/s over {:?}", pace.min_rate, pace.window));
            loop {
                let window_end = start + pace.window;
                match tokio::time::timeout_at(window_end, inner.next()).await {
                    Err(_) if bytes >= needed => (start, bytes) = (window_end, 0),
                    Err(_) => return Some((Err(too_slow()), (inner, start, bytes, true))),
                    Ok(None) => return None,
                    Ok(Some(Err(error))) => return Some((Err(error), (inner, start, bytes, true))),
                    Ok(Some(Ok(chunk))) => {
                        bytes += chunk.len() as u64;
                        let now = Instant::now();
                        if now >= window_end {
                            if bytes < needed {
                                return Some((Err(too_slow()), (inner, start, bytes, true)));
                            }
                            (start, bytes) = (now, 0);
                        }
                        return Some((Ok(chunk), (inner, start, bytes, false)));
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trickle(every: Duration, count: usize) -> Chunks<String> {
        Box::pin(futures_util::stream::iter(0..count).then(move |_| async move {
            tokio::time::sleep(every).await;
            Ok::<_, String>(Bytes::from_static(b"x"))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_after_one_window_and_a_fast_body_passes() {
        let pace = Pace { response_headers: Duration::from_secs(1), min_rate: 100, window: Duration::from_secs(2) };
        let mut slow = min_rate(pace, trickle(Duration::from_millis(500), 1000), |e| e);
        let mut got = 0;
        let error = loop {
            match slow.next().await {
                Some(Ok(_)) => got += 1,
                Some(Err(error)) => break error,
                None => panic!("the trickle was not cut"),
            }
        };
        assert!(got <= 4, "{got} chunks before the cut");
        assert!(error.contains("slower than 100 bytes/s"), "{error}");

        let fast = Box::pin(futures_util::stream::iter((0..100).map(|_| Ok::<_, String>(Bytes::from(vec![0; 1000])))));
        let all: Vec<_> = min_rate(pace, fast, |e| e).collect().await;
        assert_eq!(all.len(), 100);
        assert!(all.iter().all(Result::is_ok));
    }
}
