//! Producer acknowledgements (`acks: spooled | committed`): lines written back on the
//! producer's own connection.
//!
//! ```text
//! ok N            lines 1..N of this connection are settled: each is safe as the mode
//!                 says, unless an `err` line (always written before this `ok`) named it
//! err LINE REASON line LINE was not taken (REASON: too_long, not_json, not_object, empty,
//!                 incomplete) or, with `committed`, its batch was refused and is in the
//!                 dead-letter directory (dead_lettered)
//! ```
//!
//! Three parties share a connection's [`ConnAck`]: the connection's reader (its progress
//! and its rejects), the sink task (lines settled, batches refused) and the connection's
//! writer task, which alone touches the socket's write half. Progress travels in `watch`
//! channels, so it coalesces and never blocks anyone; `err` reports travel in a bounded
//! queue that drops (and counts) what a producer leaves unread past [`ERR_QUEUE`].

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Acks;
use crate::loader::metrics::SinkMetrics;

/// `err` reports (runs of lines) queued per connection before further ones are dropped.
pub const ERR_QUEUE: usize = 1024;

/// Bytes of ack lines gathered before they are written.
const WRITE_CHUNK: usize = 64 * 1024;

/// A run of consecutive lines refused for one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrRun {
    pub first: u64,
    pub count: u64,
    pub reason: &'static str,
}

/// What the connection's reader has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadProgress {
    /// Lines framed so far (records and rejects).
    pub lines: u64,
    /// The line of the last record handed to the sink task (0 if none).
    pub last_record: u64,
    /// The reader has finished: no more lines will come.
    pub done: bool,
}

/// The sink task's and the reader's handle on one connection's acks.
pub struct ConnAck {
    /// The sink's `acks` when the connection was accepted: it keeps them for its life.
    mode: Acks,
    settled: watch::Sender<u64>,
    errs: mpsc::Sender<ErrRun>,
    metrics: Arc<SinkMetrics>,
}

impl std::fmt::Debug for ConnAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnAck")
            .field("settled", &*self.settled.borrow())
            .finish()
    }
}

impl ConnAck {
    /// What this connection's `ok` means.
    pub fn mode(&self) -> Acks {
        self.mode
    }

    /// Lines up to `line` are settled (a smaller value than before changes nothing).
    pub fn settle_through(&self, line: u64) {
        self.settled.send_if_modified(|v| {
            let grew = line > *v;
            if grew {
                *v = line;
            }
            grew
        });
    }

    /// Reports `count` lines from `first` as not taken, for `reason`. Never waits.
    pub fn report(&self, first: u64, count: u64, reason: &'static str) {
        if count == 0 {
            return;
        }
        if self
            .errs
            .try_send(ErrRun {
                first,
                count,
                reason,
            })
            .is_err()
        {
            self.metrics.ack_errs_dropped.fetch_add(count, Relaxed);
        }
    }
}

/// Where a sink's connections start their ack writers: the sink's ack mode, the tracker
/// the loader waits on before it exits, and the shutdown deadline writers give up at.
pub struct AckWriters {
    /// The sink's `acks`, for connections accepted from now on.
    mode: std::sync::Mutex<Acks>,
    tracker: TaskTracker,
    deadline: CancellationToken,
}

impl AckWriters {
    pub fn new(mode: Acks, tracker: TaskTracker, deadline: CancellationToken) -> Self {
        Self {
            mode: std::sync::Mutex::new(mode),
            tracker,
            deadline,
        }
    }

    /// Changes the mode for connections accepted from now on.
    pub fn set_mode(&self, mode: Acks) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    /// Starts one connection's ack writer on `write` when the sink has acks on, and gives
    /// back the connection's ack handle and its read-progress sender. Without acks it gives
    /// `write` back untouched: the caller holds it while the connection lasts, because
    /// dropping it would shut our side down, and a producer such as `socat -` takes that
    /// end of file as the end of the session and may stop sending.
    pub fn start(
        &self,
        metrics: Arc<SinkMetrics>,
        write: OwnedWriteHalf,
    ) -> Result<(Arc<ConnAck>, watch::Sender<ReadProgress>), OwnedWriteHalf> {
        let mode = *self.mode.lock().unwrap_or_else(|p| p.into_inner());
        if mode == Acks::None {
            return Err(write);
        }
        let (ack, progress, writer) = channel(metrics, write, self.deadline.clone(), mode);
        self.tracker.spawn(writer);
        Ok((ack, progress))
    }
}

/// The parts of one connection's acks: the shared handle, the reader's progress sender,
/// and the writer task's future.
pub fn channel(
    metrics: Arc<SinkMetrics>,
    write: OwnedWriteHalf,
    deadline: CancellationToken,
    mode: Acks,
) -> (
    Arc<ConnAck>,
    watch::Sender<ReadProgress>,
    impl std::future::Future<Output = ()>,
) {
    let (settled, settled_rx) = watch::channel(0);
    let (errs, errs_rx) = mpsc::channel(ERR_QUEUE);
    let (progress, progress_rx) = watch::channel(ReadProgress::default());
    let ack = Arc::new(ConnAck {
        mode,
        settled,
        errs,
        metrics,
    });
    let writer = write_acks(write, settled_rx, progress_rx, errs_rx, deadline);
    (ack, progress, writer)
}

/// The `ok N` a producer may be told: lines settled by the sink task, or every line read
/// once all records are settled (the lines after the last record were all refused, and
/// their `err` lines are already queued).
pub fn ok_count(progress: ReadProgress, settled: u64) -> u64 {
    if settled >= progress.last_record {
        progress.lines
    } else {
        settled
    }
}

/// Writes acks until every line the reader took is settled, the producer goes away, or
/// the shutdown deadline passes.
async fn write_acks(
    mut write: OwnedWriteHalf,
    mut settled: watch::Receiver<u64>,
    mut progress: watch::Receiver<ReadProgress>,
    mut errs: mpsc::Receiver<ErrRun>,
    deadline: CancellationToken,
) {
    let mut sent = 0u64;
    let mut out = String::new();
    let mut next_err: Option<ErrRun> = None;
    let (mut settled_open, mut progress_open, mut errs_open) = (true, true, true);
    loop {
        // Progress first, then the err queue: every err for a line up to the `ok` about
        // to be written was queued before the progress that allows it was published.
        let p = *progress.borrow_and_update();
        let s = *settled.borrow_and_update();
        let n = ok_count(p, s);
        while let Some(run) = next_err.take().or_else(|| errs.try_recv().ok()) {
            for line in run.first..run.first + run.count {
                let _ = writeln!(out, "err {line} {}", run.reason);
                if out.len() >= WRITE_CHUNK && !flush(&mut write, &mut out, &deadline).await {
                    return;
                }
            }
        }
        if n > sent {
            let _ = writeln!(out, "ok {n}");
            sent = n;
        }
        if !flush(&mut write, &mut out, &deadline).await {
            return;
        }
        if p.done && sent >= p.lines {
            break;
        }
        if !settled_open && !progress_open && !errs_open {
            // Nothing can change any more (the sink task is gone).
            break;
        }
        tokio::select! {
            _ = deadline.cancelled() => break,
            r = settled.changed(), if settled_open => settled_open = r.is_ok(),
            r = progress.changed(), if progress_open => progress_open = r.is_ok(),
            r = errs.recv(), if errs_open => match r {
                Some(run) => next_err = Some(run),
                None => errs_open = false,
            },
        }
    }
    let _ = write.shutdown().await;
}

/// Writes `out` (then clears it); false if the producer is gone or the deadline passed.
async fn flush(write: &mut OwnedWriteHalf, out: &mut String, deadline: &CancellationToken) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = tokio::select! {
        r = write.write_all(out.as_bytes()) => r.is_ok(),
        _ = deadline.cancelled() => false,
    };
    out.clear();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_covers_trailing_rejects_only_once_every_record_is_settled() {
        let p = ReadProgress {
            lines: 10,
            last_record: 8,
            done: false,
        };
        assert_eq!(ok_count(p, 0), 0);
        assert_eq!(ok_count(p, 5), 5);
        // Lines 9 and 10 were refused: with line 8 settled, all ten are.
        assert_eq!(ok_count(p, 8), 10);
        let no_records = ReadProgress {
            lines: 3,
            last_record: 0,
            done: true,
        };
        assert_eq!(ok_count(no_records, 0), 3);
    }
}
