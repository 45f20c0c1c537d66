//! A stream wrapper that counts the bytes read through it (a target's bytes on the wire).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The read count of a [`Counted`] stream, readable while the stream is in use elsewhere.
#[derive(Debug, Clone, Default)]
pub struct ReadCount(Arc<AtomicU64>);

impl ReadCount {
    /// Bytes read so far.
    #[must_use]
    pub fn read(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `S`, counting the bytes read from it.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    count: ReadCount,
}

impl<S> Counted<S> {
    /// Wraps `inner`; the count starts at zero.
    pub fn new(inner: S) -> (Counted<S>, ReadCount) {
        let count = ReadCount::default();
        (Counted { inner, count: count.clone() }, count)
    }

    /// Wraps `inner`, adding what is read from it to `count` (the lanes of one session).
    pub fn sharing(inner: S, count: &ReadCount) -> Counted<S> {
        Counted { inner, count: count.clone() }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.count.0.fetch_add(read as u64, Ordering::Relaxed);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn counts_what_is_read() {
        let (mut a, b) = tokio::io::duplex(256);
        let (mut counted, count) = Counted::new(b);
        a.write_all(&[1; 100]).await.unwrap();
        drop(a);
        let mut all = Vec::new();
        counted.read_to_end(&mut all).await.unwrap();
        assert_eq!((all.len(), count.read()), (100, 100));
    }
}
