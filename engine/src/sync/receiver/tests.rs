//! Whole sessions over in-memory connections, for what only several lanes together show.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use super::MAX_PENDING;
use crate::progress::NoProgress;
use crate::sync::{CancellationToken, First, Joining, receive_volume, send_volume};
use crate::volume::VolumeRoot;
use crate::wire::SyncOptions;

/// A connection whose reads wait until a moment: what is written to it meanwhile stays in its
/// buffer, as on a link that holds megabytes or at a receiver slow to take them.
struct Late {
    inner: DuplexStream,
    until: Pin<Box<tokio::time::Sleep>>,
}

impl Late {
    fn new(inner: DuplexStream, delay: Duration) -> Late {
        Late { inner, until: Box::pin(tokio::time::sleep(delay)) }
    }
}

impl AsyncRead for Late {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.until.as_mut().poll(cx));
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Late {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn root(path: &std::path::Path) -> VolumeRoot {
    VolumeRoot::unwatched(crate::confine::open_root(path).unwrap())
}

/// Many small files over two lanes, the second of which delivers nothing for a while (its
/// content piles up in the link): the first lane's tree outruns it by more than
/// [`MAX_PENDING`] requested files. The receiver's tree waits for the second lane instead of
/// failing the session ("more than 2048 files requested and not delivered", which a copy of
/// 100,000 small files met on a loaded machine), and every file arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_that_falls_behind_holds_the_tree_back_instead_of_failing_the_session() {
    let files = MAX_PENDING * 3;
    let source = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    for index in 0..files {
        let dir = source.path().join(format!("d{:02}", index % 40));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{index}")), format!("file {index}\n")).unwrap();
    }
    let options = SyncOptions { streams: 2, ..SyncOptions::default() };
    let (first_out, first_in) = tokio::io::duplex(1 << 20);
    // Room for every file's frames: the sender's second worker never waits on this lane.
    let (lane_out, lane_in) = tokio::io::duplex(64 << 20);
    let now = |stream| Late::new(stream, Duration::ZERO);
    let lane: Joining<Late> = Box::pin(std::future::ready(Ok(now(lane_out))));
    let cancel = CancellationToken::new();
    let sending = send_volume(First::Ready(now(first_out)), vec![lane], root(source.path()), options.clone(), Arc::new(NoProgress), &cancel);
    let receiving = receive_volume(
        now(first_in),
        vec![Late::new(lane_in, Duration::from_secs(3))],
        root(target.path()),
        options,
        Arc::new(NoProgress),
        &cancel,
    );
    let (sent, received) = tokio::join!(sending, receiving);
    let report = received.unwrap();
    sent.unwrap();
    assert_eq!(report.files_written, files as u64);
    for index in [0, files / 2, files - 1] {
        let path = target.path().join(format!("d{:02}/f{index}", index % 40));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("file {index}\n"));
    }
}
