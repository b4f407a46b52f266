//! The sink task: sole owner of its sink's batches. It fills one batch from the channel
//! while at most one other is being loaded, seals on size, rows, the oldest record's
//! deadline or shutdown, and stops reading (backpressure) when a sealed batch must wait.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Acks, Format, RetrySpec, SinkSpec, SpoolSync};
use crate::loader::ack::ConnAck;
use crate::loader::batch::{Batch, Chunk, FlushPolicy, FlushTrigger, Sealed};
use crate::loader::metrics::SinkMetrics;
use crate::loader::spool::segment::Outcome;
use crate::loader::spool::store::{PendingBatch, Replay, Spool};
use crate::stream_load::{deliver_from, Attempt, Delivered, LabelGen, Start, StreamLoadClient};

/// With `spoolSync: interval`, written records reach the disk at most this long after...
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// ...or once this many bytes are waiting, whichever comes first.
const SYNC_BYTES: usize = 1 << 20;

/// Once shutdown has begun, records still arriving on open connections wait at most this
/// long before they are flushed, whatever the sink's interval.
const SHUTDOWN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// A sealed batch with its label, fixed for the rest of its life.
struct Labelled {
    label: String,
    batch: Sealed,
    /// Replayed from the spool: resolve the label before any send.
    start: Start,
    /// Its records' spool sequence numbers (with a spool).
    seqs: Option<Range<u64>>,
    /// The body is not in memory: read it back from the spool when its turn comes.
    on_disk: bool,
    /// The producers' lines in it that wait for this batch's verdict.
    acks: Vec<AckPart>,
}

/// Consecutive lines of one producer's connection within a batch.
struct AckPart {
    conn: Arc<ConnAck>,
    first: u64,
    count: u64,
}

impl AckPart {
    /// Adds lines `first..first + count` of `conn` to `parts`, merged with the last part
    /// when they continue it.
    fn add(parts: &mut Vec<AckPart>, conn: &Arc<ConnAck>, first: u64, count: u64) {
        if count == 0 {
            return;
        }
        if let Some(last) = parts.last_mut() {
            if Arc::ptr_eq(&last.conn, conn) && last.first + last.count == first {
                last.count += count;
                return;
            }
        }
        parts.push(AckPart {
            conn: conn.clone(),
            first,
            count,
        });
    }
}

/// How a load ended, as the sink task sees it.
enum Verdict {
    Committed,
    DeadLettered,
    /// Refused, and the dead-letter file could not be written either.
    Lost,
}

struct InFlight {
    /// Gives back the client, the verdict and the body (for reuse).
    handle: JoinHandle<(StreamLoadClient, Verdict, bytes::Bytes)>,
    trigger: FlushTrigger,
    label: String,
    bytes: u64,
    acks: Vec<AckPart>,
}

/// The shutdown signals a sink task obeys.
#[derive(Clone)]
pub struct Stopping {
    /// SIGTERM: flush what is buffered now; keep taking records until the channel closes.
    pub stop: CancellationToken,
    /// The shutdown deadline: give up on whatever is not committed.
    pub deadline: CancellationToken,
}

pub struct SinkTask {
    name: String,
    format: Format,
    retry: RetrySpec,
    dead_letter_dir: PathBuf,
    policy: FlushPolicy,
    labels: LabelGen,
    client: Option<StreamLoadClient>,
    rx: mpsc::Receiver<Chunk>,
    metrics: Arc<SinkMetrics>,
    /// The sink's spool, if it has one: records are appended on arrival, labels synced
    /// before the first send, verdicts recorded.
    spool: Option<Spool>,
    spool_sync: SpoolSync,
    replay: Option<Replay>,
    acks: Acks,
    /// With `acks: spooled`: connections' lines written to the spool and not yet synced.
    unsynced_acks: Vec<(Arc<ConnAck>, u64)>,
}

impl SinkTask {
    pub fn new(
        sink: &SinkSpec,
        labels: LabelGen,
        client: StreamLoadClient,
        rx: mpsc::Receiver<Chunk>,
        metrics: Arc<SinkMetrics>,
    ) -> Self {
        Self {
            name: sink.name.clone(),
            format: sink.format,
            retry: sink.retry,
            dead_letter_dir: sink.dead_letter_dir(),
            policy: FlushPolicy::of(sink),
            labels,
            client: Some(client),
            rx,
            metrics,
            spool: None,
            spool_sync: sink.spool_sync,
            replay: None,
            acks: sink.acks,
            unsynced_acks: Vec::new(),
        }
    }

    /// Gives the task its opened spool and what it held at start.
    pub fn with_spool(mut self, spool: Spool, replay: Replay) -> Self {
        self.spool = Some(spool);
        self.replay = Some(replay);
        self
    }

    /// Stops using the spool after a disk error; the sink goes on in memory.
    fn spool_failed(&mut self, what: &str, e: std::io::Error) {
        tracing::error!(sink = %self.name, error = %e, "spool {what} failed; this sink now keeps records in memory only");
        self.spool = None;
        // Lines not yet synced are acked at their commit instead.
        self.unsynced_acks.clear();
    }

    /// Appends a received chunk's records to the spool; returns the first one's sequence
    /// number (0 without a spool).
    fn spool_append(
        &mut self,
        chunk: &Chunk,
        unsynced: &mut usize,
        sync_due: &mut Option<Instant>,
    ) -> u64 {
        let Some(spool) = self.spool.as_mut() else {
            return 0;
        };
        let mut synced = false;
        let appended = spool
            .append_chunk(&chunk.data, &chunk.ends)
            .and_then(|seqs| {
                match self.spool_sync {
                    SpoolSync::Always => {
                        spool.sync()?;
                        synced = true;
                    }
                    SpoolSync::Interval => {
                        *unsynced += chunk.data.len();
                        if *unsynced >= SYNC_BYTES {
                            spool.sync()?;
                            synced = true;
                            *unsynced = 0;
                            *sync_due = None;
                        } else if sync_due.is_none() {
                            *sync_due = Some(Instant::now() + SYNC_INTERVAL);
                        }
                    }
                    // The page cache has it: it survives the process, which is all `never` promises.
                    SpoolSync::Never => synced = true,
                }
                Ok(seqs)
            });
        match appended {
            Ok(seqs) => {
                self.metrics.spooled.fetch_add(chunk.rows() as u64, Relaxed);
                if let (Acks::Spooled, Some(conn)) = (self.acks, &chunk.ack) {
                    let through = chunk.first_line + chunk.rows() as u64 - 1;
                    self.unsynced_acks.push((conn.clone(), through));
                }
                if synced {
                    self.spool_synced();
                }
                seqs.start
            }
            Err(e) => {
                self.spool_failed("write", e);
                0
            }
        }
    }

    /// Everything written to the spool is synced: its lines are acked (`acks: spooled`).
    fn spool_synced(&mut self) {
        for (conn, through) in self.unsynced_acks.drain(..) {
            conn.settle_through(through);
        }
    }

    /// A batch's verdict reaches the producers whose lines it holds. Committed lines are
    /// settled; with `acks: committed`, lines of a refused batch get an `err` first.
    fn ack_verdict(&self, parts: Vec<AckPart>, verdict: &Verdict) {
        let refused = match verdict {
            Verdict::Committed => None,
            Verdict::DeadLettered => Some("dead_lettered"),
            Verdict::Lost => Some("lost"),
        };
        for part in parts {
            if let (Some(reason), Acks::Committed) = (refused, self.acks) {
                part.conn.report(part.first, part.count, reason);
            }
            part.conn.settle_through(part.first + part.count - 1);
        }
    }

    /// A batch the spool held sealed at start: it waits on disk for its turn, and its
    /// label is resolved before any send.
    fn replayed_batch(&self, pending: PendingBatch) -> Labelled {
        Labelled {
            label: pending.label,
            batch: Sealed {
                body: Bytes::new(),
                rows: pending.rows,
                trigger: FlushTrigger::Shutdown,
            },
            start: Start::Resolve,
            seqs: Some(pending.seqs),
            on_disk: true,
            acks: Vec::new(),
        }
    }

    /// A sealed batch goes to `waiting` when that is free and nothing is queued before
    /// it. With a spool it waits on disk instead, its body dropped from memory, whenever
    /// it cannot be sent at once: memory then holds the batch loading and the one
    /// filling, never a third.
    fn enqueue(
        &self,
        sealed: Option<Labelled>,
        waiting: &mut Option<Labelled>,
        backlog: &mut VecDeque<Labelled>,
        loading: bool,
    ) {
        let Some(mut next) = sealed else { return };
        let on_disk = self.spool.is_some() && next.seqs.is_some();
        if waiting.is_none() && backlog.is_empty() && !(loading && on_disk) {
            *waiting = Some(next);
            return;
        }
        if on_disk {
            next.batch.body = Bytes::new();
            next.on_disk = true;
        }
        backlog.push_back(next);
    }

    /// The next queued batch, with its body read back from the spool if it waited there.
    /// Without a usable spool, batches that waited on disk stay there for the next start.
    fn take_backlog(&mut self, backlog: &mut VecDeque<Labelled>) -> Option<Labelled> {
        while let Some(mut next) = backlog.pop_front() {
            if !next.on_disk {
                return Some(next);
            }
            let (Some(spool), Some(seqs)) = (self.spool.as_mut(), next.seqs.clone()) else {
                tracing::error!(sink = %self.name, label = %next.label, rows = next.batch.rows, "the spool failed; this batch stays in the spool directory for the next start");
                continue;
            };
            // The body is built straight from the frames read back: the batch is in
            // memory once.
            let (delimiter, open) = match self.format {
                Format::Json => (b',', Some(b'[')),
                Format::Csv => (b'\n', None),
            };
            let mut body = Vec::with_capacity(self.policy.max_bytes.min(256 << 20));
            body.extend(open);
            let mut rows = 0u64;
            let read = spool.read_each(seqs, |record| {
                body.extend_from_slice(&record);
                body.push(delimiter);
                rows += 1;
            });
            match read {
                Ok(()) if rows == 0 => {
                    tracing::warn!(sink = %self.name, label = %next.label, "none of this batch's records survived damage to the spool; nothing to load");
                    if let Err(e) = spool.done(&next.label, Outcome::Committed) {
                        self.spool_failed("verdict", e);
                    }
                }
                Ok(()) => {
                    if rows != next.batch.rows {
                        tracing::warn!(sink = %self.name, label = %next.label, expected = next.batch.rows, found = rows, "the spool gave back fewer records than the batch had (damage found at start)");
                    }
                    if self.format == Format::Json {
                        if let Some(last) = body.last_mut() {
                            *last = b']';
                        }
                    }
                    next.batch.rows = rows;
                    next.batch.body = body.into();
                    next.on_disk = false;
                    return Some(next);
                }
                Err(e) => {
                    tracing::error!(sink = %self.name, label = %next.label, "this batch stays in the spool directory for the next start");
                    self.spool_failed("read", e);
                }
            }
        }
        None
    }

    /// Sealing is possible now: `waiting` is free, or a spool can hold the batch.
    fn can_seal(&self, waiting: &Option<Labelled>) -> bool {
        waiting.is_none() || self.spool.is_some()
    }

    /// Runs until the channel is closed and everything is loaded, or the deadline passes.
    pub async fn run(mut self, stopping: Stopping) {
        let mut filling = Batch::new(self.format, self.policy);
        // The spool sequence numbers of the filling batch's records.
        let mut filling_seqs: Option<Range<u64>> = None;
        // The producers' lines in the filling batch.
        let mut filling_acks: Vec<AckPart> = Vec::new();
        // The rest of a chunk that did not fit in the batch it arrived at, with the
        // sequence number of the chunk's first record.
        let mut leftover: Option<(Chunk, usize, u64)> = None;
        // A sealed batch waiting for the load in flight. Without a spool, nothing is read
        // while it waits.
        let mut waiting: Option<Labelled> = None;
        // With a spool: sealed batches behind `waiting`, in seal order, kept on disk only.
        // Those the spool held sealed at start come first.
        let mut backlog: VecDeque<Labelled> = VecDeque::new();
        let mut in_flight: Option<InFlight> = None;
        let mut input_open = true;
        let mut stop_seen = false;
        let mut unsynced = 0usize;
        let mut sync_due: Option<Instant> = None;
        let mut was_full = false;

        if let Some(replay) = self.replay.take() {
            let mut count = 0;
            for pending in replay.sealed {
                count += pending.rows;
                backlog.push_back(self.replayed_batch(pending));
            }
            if let Some((first, _)) = replay.unsealed.first() {
                let records: Vec<Bytes> = replay.unsealed.iter().map(|(_, r)| r.clone()).collect();
                count += records.len() as u64;
                let mut chunk = encode_records(self.format, &records);
                // They waited through a restart already: due at once.
                chunk.arrived = Instant::now()
                    .checked_sub(self.policy.interval)
                    .unwrap_or_else(Instant::now);
                leftover = Some((chunk, 0, *first));
            }
            self.metrics.replayed.fetch_add(count, Relaxed);
            self.metrics.spooled.fetch_add(count, Relaxed);
        }

        loop {
            if in_flight.is_none() {
                let next = match waiting.take() {
                    Some(w) => Some(w),
                    None => self.take_backlog(&mut backlog),
                };
                if let Some(next) = next {
                    in_flight = Some(self.start_load(next));
                }
            }
            if self.can_seal(&waiting) {
                if let Some((chunk, from, base)) = leftover.take() {
                    let pushed = filling.push(&chunk, from);
                    let taken_to = pushed.map_or(chunk.rows(), |(next, _)| next);
                    if taken_to > from {
                        let (start, end) = (base + from as u64, base + taken_to as u64);
                        filling_seqs = Some(filling_seqs.map_or(start..end, |s| s.start..end));
                        if let Some(conn) = &chunk.ack {
                            let first = chunk.first_line + from as u64;
                            AckPart::add(&mut filling_acks, conn, first, (taken_to - from) as u64);
                        }
                    }
                    if let Some((next, trigger)) = pushed {
                        let sealed =
                            self.seal(&mut filling, &mut filling_seqs, &mut filling_acks, trigger);
                        self.enqueue(sealed, &mut waiting, &mut backlog, in_flight.is_some());
                        leftover = (next < chunk.rows()).then_some((chunk, next, base));
                    }
                    self.update_buffered(&filling, &waiting, &in_flight);
                    continue;
                }
            }
            if !input_open && leftover.is_none() && self.can_seal(&waiting) {
                if !filling.is_empty() {
                    let sealed = self.seal(
                        &mut filling,
                        &mut filling_seqs,
                        &mut filling_acks,
                        FlushTrigger::Shutdown,
                    );
                    self.enqueue(sealed, &mut waiting, &mut backlog, in_flight.is_some());
                    continue;
                }
                if in_flight.is_none() && waiting.is_none() && backlog.is_empty() {
                    break;
                }
            }

            // A full spool stops the reads (producers wait on their sockets) until verdicts
            // free space. Once shutdown has begun, records already accepted still go in.
            let spool_full = !stop_seen && self.spool.as_ref().is_some_and(Spool::is_full);
            if spool_full != was_full {
                was_full = spool_full;
                if spool_full {
                    tracing::warn!(sink = %self.name, bytes = self.spool.as_ref().map_or(0, Spool::bytes), "spool is full (spoolMaxBytes); producers wait until loads free space");
                } else {
                    tracing::info!(sink = %self.name, "spool has room again; reading producers");
                }
            }
            let deadline = if stop_seen {
                filling.deadline_capped(SHUTDOWN_INTERVAL)
            } else {
                filling.deadline()
            };
            tokio::select! {
                biased;
                _ = stopping.deadline.cancelled() => {
                    if let Some(f) = in_flight.take() {
                        f.handle.abort();
                    }
                    break;
                }
                done = join(&mut in_flight), if in_flight.is_some() => {
                    let Some(finished) = in_flight.take() else { continue };
                    match done {
                        Ok((client, verdict, body)) => {
                            self.client = Some(client);
                            let outcome = match verdict {
                                Verdict::Committed => Some(Outcome::Committed),
                                Verdict::DeadLettered => Some(Outcome::DeadLettered),
                                // Not recorded: the spool keeps the batch for the next start.
                                Verdict::Lost => None,
                            };
                            if let (Some(outcome), Some(spool)) = (outcome, self.spool.as_mut()) {
                                if let Err(e) = spool.done(&finished.label, outcome) {
                                    self.spool_failed("verdict", e);
                                }
                            }
                            match finished.trigger {
                                FlushTrigger::Size | FlushTrigger::Rows => {
                                    if let Ok(body) = body.try_into_mut() {
                                        filling.recycle(body.into());
                                    }
                                }
                                FlushTrigger::Interval | FlushTrigger::Shutdown => filling.release_spare(),
                            }
                            self.ack_verdict(finished.acks, &verdict);
                        }
                        Err(e) => {
                            tracing::error!(sink = %self.name, error = %e, "load task failed; its records are lost");
                            return;
                        }
                    }
                }
                _ = stopping.stop.cancelled(), if !stop_seen => {
                    stop_seen = true;
                    if self.can_seal(&waiting) && !filling.is_empty() {
                        let sealed = self.seal(&mut filling, &mut filling_seqs, &mut filling_acks, FlushTrigger::Shutdown);
                        self.enqueue(sealed, &mut waiting, &mut backlog, in_flight.is_some());
                    }
                }
                _ = tokio::time::sleep_until(sync_due.unwrap_or_else(Instant::now)), if sync_due.is_some() => {
                    sync_due = None;
                    unsynced = 0;
                    match self.spool.as_mut().map(Spool::sync) {
                        Some(Ok(())) => self.spool_synced(),
                        Some(Err(e)) => self.spool_failed("sync", e),
                        None => {}
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && self.can_seal(&waiting) => {
                    let sealed = self.seal(&mut filling, &mut filling_seqs, &mut filling_acks, FlushTrigger::Interval);
                    self.enqueue(sealed, &mut waiting, &mut backlog, in_flight.is_some());
                }
                chunk = self.rx.recv(), if input_open && self.can_seal(&waiting) && leftover.is_none() && !spool_full => {
                    match chunk {
                        Some(chunk) => {
                            let base = self.spool_append(&chunk, &mut unsynced, &mut sync_due);
                            leftover = Some((chunk, 0, base));
                        }
                        None => input_open = false,
                    }
                }
            }
            self.update_buffered(&filling, &waiting, &in_flight);
        }
        self.update_buffered(&filling, &waiting, &in_flight);
    }

    fn update_buffered(
        &self,
        filling: &Batch,
        waiting: &Option<Labelled>,
        in_flight: &Option<InFlight>,
    ) {
        let bytes = filling.encoded_len() as u64
            + waiting.as_ref().map_or(0, |w| w.batch.body.len() as u64)
            + in_flight.as_ref().map_or(0, |f| f.bytes);
        self.metrics.buffered_bytes.store(bytes, Relaxed);
        if let Some(spool) = &self.spool {
            self.metrics.spool_bytes.store(spool.bytes(), Relaxed);
        }
    }

    fn seal(
        &mut self,
        filling: &mut Batch,
        seqs: &mut Option<Range<u64>>,
        acks: &mut Vec<AckPart>,
        trigger: FlushTrigger,
    ) -> Option<Labelled> {
        let batch = filling.seal(trigger)?;
        let acks = std::mem::take(acks);
        let label = self.labels.next_label();
        let mut seqs = seqs.take();
        if let (Some(spool), Some(range)) = (self.spool.as_mut(), seqs.clone()) {
            // Durable before the first send: after a crash the batch is resolved by this
            // label, never sent under another.
            match spool.seal(&label, range) {
                Ok(()) => self.spool_synced(),
                Err(e) => {
                    seqs = None;
                    self.spool_failed("seal", e);
                }
            }
        }
        self.metrics.flushed(trigger);
        tracing::info!(
            sink = %self.name,
            trigger = trigger.as_str(),
            rows = batch.rows,
            bytes = batch.body.len(),
            label = %label,
            "flush"
        );
        Some(Labelled {
            label,
            batch,
            start: Start::Send,
            seqs,
            on_disk: false,
            acks,
        })
    }

    fn start_load(&mut self, mut next: Labelled) -> InFlight {
        let Some(mut client) = self.client.take() else {
            unreachable!("the client is back whenever no load is in flight");
        };
        let rows = next.batch.rows;
        let bytes = next.batch.body.len() as u64;
        let trigger = next.batch.trigger;
        let in_flight_label = next.label.clone();
        let acks = std::mem::take(&mut next.acks);
        let start = next.start;
        let retry = self.retry;
        let metrics = self.metrics.clone();
        let name = self.name.clone();
        let dir = self.dead_letter_dir.clone();
        let format = self.format;
        let handle = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let Labelled { label, batch, .. } = next;
            let delivered = deliver_from(
                &mut client,
                &label,
                &batch.body,
                batch.rows,
                &retry,
                start,
                |a| {
                    metrics.load_attempt(a.outcome());
                    log_attempt(&name, &label, a);
                },
            )
            .await;
            let secs = started.elapsed().as_secs_f64();
            metrics.load_duration(secs);
            let verdict = match delivered {
                Delivered::Committed { filtered_rows } => {
                    if filtered_rows > 0 {
                        tracing::warn!(sink = %name, label = %label, filtered_rows, "StarRocks filtered rows of a committed load");
                    }
                    tracing::info!(sink = %name, label = %label, rows, ms = (secs * 1000.0) as u64, outcome = "committed", "load");
                    Verdict::Committed
                }
                Delivered::Refused {
                    reason,
                    error_url,
                    uncertain,
                } => {
                    match dead_letter(
                        &dir,
                        &name,
                        &label,
                        format,
                        &batch,
                        &reason,
                        error_url.as_deref(),
                        uncertain,
                    )
                    .await
                    {
                        Ok(path) => {
                            metrics.load_attempt("dead_lettered");
                            tracing::error!(sink = %name, label = %label, rows, reason = %reason, error_url = error_url.as_deref().unwrap_or(""), file = %path.display(), outcome = "dead_lettered", "load refused; batch written to the dead-letter directory");
                            Verdict::DeadLettered
                        }
                        Err(e) => {
                            tracing::error!(sink = %name, label = %label, rows, reason = %reason, error = %e, outcome = "lost", "load refused and the dead-letter file could not be written; these records are lost");
                            Verdict::Lost
                        }
                    }
                }
            };
            // Counted here, as the verdict is known, not when the sink task next looks:
            // after a second signal the process exits without waiting for it, and a
            // committed batch must not be reported lost.
            match verdict {
                Verdict::Committed => {
                    metrics.loaded.fetch_add(rows, Relaxed);
                    metrics.bytes_loaded.fetch_add(bytes, Relaxed);
                }
                Verdict::DeadLettered => {
                    metrics.dead_lettered.fetch_add(rows, Relaxed);
                }
                Verdict::Lost => {}
            }
            (client, verdict, batch.body)
        });
        InFlight {
            handle,
            trigger,
            label: in_flight_label,
            bytes,
            acks,
        }
    }
}

/// Waits for the load in flight, if any (never resolves otherwise).
async fn join(
    in_flight: &mut Option<InFlight>,
) -> Result<(StreamLoadClient, Verdict, bytes::Bytes), tokio::task::JoinError> {
    match in_flight {
        Some(f) => (&mut f.handle).await,
        None => std::future::pending().await,
    }
}

fn log_attempt(sink: &str, label: &str, attempt: &Attempt) {
    match attempt {
        Attempt::Committed => {}
        Attempt::Transient(why) => {
            tracing::warn!(sink, label, reason = %why, "load failed; retrying with the same label")
        }
        Attempt::Uncertain(why) => {
            tracing::warn!(sink, label, reason = %why, "load outcome unknown; asking StarRocks for the label's state before any re-send")
        }
        Attempt::Permanent(why) => {
            tracing::warn!(sink, label, reason = %why, "load refused for good")
        }
        Attempt::Pending => {
            tracing::info!(sink, label, "the label's load is still running; waiting")
        }
        Attempt::StateUnavailable(why) => {
            tracing::warn!(sink, label, reason = %why, "cannot read the label's state yet")
        }
    }
}

/// Writes a refused batch as `<label>.json|csv` with `<label>.reason.json` beside it.
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    dir: &std::path::Path,
    sink: &str,
    label: &str,
    format: Format,
    batch: &Sealed,
    reason: &str,
    error_url: Option<&str>,
    uncertain: bool,
) -> std::io::Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await?;
    let data = dir.join(format!("{label}.{}", format.as_str()));
    tokio::fs::write(&data, &batch.body).await?;
    let meta = serde_json::json!({
        "sink": sink,
        "label": label,
        "rows": batch.rows,
        "format": format.as_str(),
        "reason": reason,
        "errorUrl": error_url,
        "mayBeCommitted": uncertain,
        "at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    tokio::fs::write(dir.join(format!("{label}.reason.json")), meta.to_string()).await?;
    Ok(data)
}

/// Records (each without its line end) as a chunk: each followed by the body's delimiter.
fn encode_records(format: Format, records: &[Bytes]) -> Chunk {
    let delimiter = match format {
        Format::Json => b',',
        Format::Csv => b'\n',
    };
    let mut data = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
    let mut ends = Vec::with_capacity(records.len());
    for r in records {
        data.extend_from_slice(r);
        data.push(delimiter);
        ends.push(u32::try_from(data.len()).unwrap_or(u32::MAX));
    }
    Chunk {
        ack: None,
        first_line: 1,
        data: data.into(),
        ends,
        arrived: Instant::now(),
    }
}
