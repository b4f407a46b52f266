//! A BE that drains its sockets slowly: reads of a connection are held to a byte rate, so
//! the sender's socket buffer fills and its writes wait on TCP flow control, as they do
//! against a real BE that is busy or far away. A benchmark condition, not a StarRocks
//! fact: StarRocks reads a Stream Load body as fast as its pipe to the tablet writers
//! drains.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The most one read takes; with the rate, how bursty the drain is (a BE reads its socket
/// in buffers of this order).
const MAX_READ: usize = 64 << 10;

/// `inner`, whose reads deliver at most `rate` bytes per second on average.
pub(crate) struct Throttled<S> {
    inner: S,
    rate: u64,
    started: Instant,
    read: u64,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S> Throttled<S> {
    pub(crate) fn new(inner: S, bytes_per_sec: u64) -> Self {
        Self {
            inner,
            rate: bytes_per_sec.max(1),
            started: Instant::now(),
            read: 0,
            wait: None,
        }
    }

    /// When `read` bytes are due at the rate.
    fn due(&self, read: u64) -> Instant {
        let secs = read as f64 / self.rate as f64;
        self.started + Duration::from_secs_f64(secs)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let want = buf.remaining().min(MAX_READ);
        let due = this.due(this.read + want as u64);
        if due > Instant::now() {
            let wait = this
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            wait.as_mut().reset(due);
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        if let Poll::Ready(Ok(())) = polled {
            buf.advance(n);
            this.read += n as u64;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn reads_are_held_to_the_rate() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        tx.write_all(&vec![7u8; 512 << 10]).await.unwrap();
        let mut slow = Throttled::new(rx, 256 << 10);
        let started = Instant::now();
        let mut got = vec![0u8; 512 << 10];
        slow.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
        // 512 KiB at 256 KiB/s: two seconds of (paused, auto-advanced) time.
        let took = started.elapsed();
        assert!(
            (Duration::from_millis(1900)..Duration::from_millis(2100)).contains(&took),
            "{took:?}"
        );
    }
}
