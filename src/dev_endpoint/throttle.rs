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

/// How far behind its schedule the reader may be and still catch up: enough to absorb the
/// timer's millisecond rounding (a 64 KiB read at 120 MiB/s is due every 0.52 ms), too
/// little for an idle connection to save up a burst.
const SLACK: Duration = Duration::from_millis(5);

/// `inner`, whose reads deliver at most `rate` bytes per second: after a read of n bytes
/// the next is due n / rate later. Time spent idle earns at most [`SLACK`], so a
/// kept-alive connection is as slow for its next body as for its first.
pub(crate) struct Throttled<S> {
    inner: S,
    rate: u64,
    /// When the next read may start.
    free_at: Instant,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S> Throttled<S> {
    pub(crate) fn new(inner: S, bytes_per_sec: u64) -> Self {
        Self {
            inner,
            rate: bytes_per_sec.max(1),
            free_at: Instant::now(),
            wait: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let now = Instant::now();
        if this.free_at > now {
            let free_at = this.free_at;
            let wait = this
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(free_at)));
            wait.as_mut().reset(free_at);
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let want = buf.remaining().min(MAX_READ);
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        if let Poll::Ready(Ok(())) = polled {
            buf.advance(n);
            let pause = Duration::from_secs_f64(n as f64 / this.rate as f64);
            let behind = Instant::now().checked_sub(SLACK).unwrap_or(this.free_at);
            this.free_at = this.free_at.max(behind) + pause;
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
    async fn reads_are_held_to_the_rate_and_idle_time_earns_nothing() {
        let (mut tx, rx) = tokio::io::duplex(2 << 20);
        let mut slow = Throttled::new(rx, 256 << 10);
        for round in 0..2 {
            tx.write_all(&vec![7u8; 512 << 10]).await.unwrap();
            let started = Instant::now();
            let mut got = vec![0u8; 512 << 10];
            slow.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|&b| b == 7));
            // 512 KiB at 256 KiB/s in reads of 64 KiB, each followed by its quarter
            // second: the eighth read starts 1.75s in (paused, auto-advanced time).
            let took = started.elapsed();
            assert!(
                took.as_millis().abs_diff(1750) <= 50,
                "round {round}: {took:?}"
            );
            // Idle time earns nothing: the next 512 KiB take as long again.
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }
}
