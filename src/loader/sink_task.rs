//! The sink task: sole owner of its sink's batches. It fills one batch from the channel
//! while at most one other is being loaded, seals on size, rows, the oldest record's
//! deadline or shutdown, and stops reading (backpressure) when a sealed batch must wait.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Acks, Format, RetrySpec, SinkSpec, SpoolSync};
use crate::loader::ack::ConnAck;
use crate::loader::batch::{Batch, Chunk, FlushPolicy, FlushTrigger, Sealed};
use crate::loader::dead_letter::{self, Refusal};
use crate::loader::metrics::SinkMetrics;
use crate::loader::spool::segment::Outcome;
use crate::loader::spool::store::{PendingBatch, Replay, Spool};
use crate::stream_load::{
    body, deliver_from, Attempt, Delivered, LabelGen, Start, StreamLoadClient,
};

/// With `spoolSync: interval`, written records reach the disk at most this long after...
const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// ...or once this many bytes are waiting, whichever comes first.
const SYNC_BYTES: usize = 1 << 20;

/// After a spool write fails, it is retried after this long, doubling up to...
const REPAIR_FIRST: Duration = Duration::from_millis(50);
/// ...this.
const REPAIR_MAX: Duration = Duration::from_secs(5);
/// After a dead-letter file cannot be written, it is retried after this long, doubling
/// up to...
const DEAD_LETTER_FIRST: Duration = Duration::from_secs(1);
/// ...this.
const DEAD_LETTER_MAX: Duration = Duration::from_secs(60);

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
    /// Its seal is synced (or there is no spool): it may be sent. A batch sealed while
    /// the spool fails waits until a repair has put its label on disk.
    durable: bool,
    /// When its oldest record arrived.
    oldest: Instant,
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
    /// Refused, and its dead-letter file could not be written yet: the sink task keeps
    /// the batch and retries the write.
    Refused(Refusal),
}

struct InFlight {
    /// Gives back the client, the verdict and the body (for reuse).
    handle: JoinHandle<(StreamLoadClient, Verdict, bytes::Bytes)>,
    trigger: FlushTrigger,
    label: String,
    rows: u64,
    bytes: u64,
    seqs: Option<Range<u64>>,
    oldest: Instant,
    acks: Vec<AckPart>,
}

/// A refused batch waiting for its dead-letter file. With a spool its body waits on
/// disk (sealed, without a verdict, so a restart keeps it too); without one, in memory.
struct Refused {
    label: String,
    rows: u64,
    body: Bytes,
    seqs: Option<Range<u64>>,
    on_disk: bool,
    refusal: Refusal,
    oldest: Instant,
}

/// A retry that waits: when it is due, and how long the one after will wait.
#[derive(Clone, Copy, Debug)]
struct RetryAt {
    at: Instant,
    backoff: Duration,
}

impl RetryAt {
    fn after(backoff: Duration) -> Self {
        Self {
            at: Instant::now() + backoff,
            backoff,
        }
    }

    /// The next retry, `backoff` doubled up to `max`.
    fn next(self, max: Duration) -> Self {
        Self::after((self.backoff * 2).min(max))
    }
}

/// The shutdown signals a sink task obeys.
#[derive(Clone)]
pub struct Stopping {
    /// SIGTERM: flush what is buffered now; keep taking records until the channel closes.
    pub stop: CancellationToken,
    /// The shutdown deadline: give up on whatever is not committed.
    pub deadline: CancellationToken,
}

/// The batch being filled, with what travels with its records.
struct Filling {
    batch: Batch,
    /// The spool sequence numbers of its records.
    seqs: Option<Range<u64>>,
    /// The producers' lines in it.
    acks: Vec<AckPart>,
    /// The rest of a chunk that did not fit in the batch it arrived at: the chunk, its
    /// first record not taken, and the sequence number of its first record.
    leftover: Option<(Chunk, usize, u64)>,
}

impl Filling {
    /// Takes what it can of the leftover chunk into the batch; returns the trigger when
    /// that filled the batch (the rest stays leftover for the next one).
    fn take_leftover(&mut self) -> Option<FlushTrigger> {
        let (chunk, from, base) = self.leftover.take()?;
        let pushed = self.batch.push(&chunk, from);
        let taken_to = pushed.map_or(chunk.rows(), |(next, _)| next);
        if taken_to > from {
            let (start, end) = (base + from as u64, base + taken_to as u64);
            self.seqs = Some(self.seqs.take().map_or(start..end, |s| s.start..end));
            if let Some(conn) = &chunk.ack {
                let first = chunk.first_line + from as u64;
                AckPart::add(&mut self.acks, conn, first, (taken_to - from) as u64);
            }
        }
        let (next, trigger) = pushed?;
        self.leftover = (next < chunk.rows()).then_some((chunk, next, base));
        Some(trigger)
    }
}

/// Sealed batches not yet sent, in seal order: the next one (in memory), then those
/// that wait on disk (with a spool; the spool held some at start, they come first).
#[derive(Default)]
struct Queue {
    waiting: Option<Labelled>,
    backlog: VecDeque<Labelled>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.waiting.is_none() && self.backlog.is_empty()
    }
}

/// The sink's one Stream Load client: idle, or lent to the load in flight.
enum Load {
    Idle(StreamLoadClient),
    Busy(InFlight),
    /// Only while a method moves the client from one to the other.
    Moving,
}

/// What the sink task woke up for.
enum Event {
    /// The shutdown deadline: give up what is not committed.
    Deadline,
    Loaded(Result<(StreamLoadClient, Verdict, Bytes), tokio::task::JoinError>),
    DeadLetterWritten(Result<(Refused, std::io::Result<PathBuf>), tokio::task::JoinError>),
    /// SIGTERM.
    Stop,
    RepairDue,
    BacklogRetryDue,
    DeadLetterRetryDue,
    SyncDue,
    /// The filling batch's oldest record is due.
    FlushDue,
    /// A chunk from a producer, or `None`: every connection is gone.
    Chunk(Option<Chunk>),
}

pub struct SinkTask {
    name: String,
    format: Format,
    retry: RetrySpec,
    dead_letter_dir: PathBuf,
    policy: FlushPolicy,
    labels: LabelGen,
    rx: mpsc::Receiver<Chunk>,
    filling: Filling,
    queue: Queue,
    load: Load,
    /// Producers' chunks may still come (the channel is open).
    input_open: bool,
    /// SIGTERM was seen.
    stopping: bool,
    /// With `spoolSync: interval`: bytes written since the last sync, and when it is due.
    unsynced_bytes: usize,
    sync_due: Option<Instant>,
    /// The spool was full when last looked at (its changes are logged).
    was_full: bool,
    metrics: Arc<SinkMetrics>,
    /// The sink's spool, if it has one: records are appended on arrival, labels synced
    /// before the first send, verdicts recorded.
    spool: Option<Spool>,
    spool_sync: SpoolSync,
    replay: Option<Replay>,
    acks: Acks,
    /// With `acks: spooled`: connections' lines written to the spool and not yet synced.
    unsynced_acks: Vec<(Arc<ConnAck>, u64)>,
    /// A spool write, sync, read or removal failed: no producer is read, and no batch
    /// sealed since is sent, until [`Spool::repair`] succeeds at this retry.
    spool_trouble: Option<RetryAt>,
    /// Rows appended while the spool failed: in its buffer, not yet on disk.
    unspooled_rows: u64,
    /// Refused batches whose dead-letter file is not written yet, oldest first.
    refused: VecDeque<Refused>,
    /// When the front of `refused` is tried again.
    dead_letter_retry: Option<RetryAt>,
    /// The wait after the last failed dead-letter write (zero after a success).
    dead_letter_backoff: Duration,
    /// The dead-letter write under way, if any.
    dead_letter_writing: Option<JoinHandle<(Refused, std::io::Result<PathBuf>)>>,
    /// Verdicts reach producers in seal order, because `ok N` covers every line up to N:
    /// while a refused batch waits for its file, the lines of batches that commit after
    /// it wait here with it. (label, lines, verdict: dead-lettered or not, once known.)
    ack_queue: VecDeque<(String, Vec<AckPart>, Option<bool>)>,
    /// A batch could not be read back from the spool: the backlog is tried again at
    /// this retry (producers are not held back for it).
    backlog_retry: Option<RetryAt>,
    /// The wait after the last failed read-back (zero after a success).
    backlog_backoff: Duration,
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
            rx,
            filling: Filling {
                batch: Batch::new(sink.format, FlushPolicy::of(sink)),
                seqs: None,
                acks: Vec::new(),
                leftover: None,
            },
            queue: Queue::default(),
            load: Load::Idle(client),
            input_open: true,
            stopping: false,
            unsynced_bytes: 0,
            sync_due: None,
            was_full: false,
            metrics,
            spool: None,
            spool_sync: sink.spool_sync,
            replay: None,
            acks: sink.acks,
            unsynced_acks: Vec::new(),
            spool_trouble: None,
            unspooled_rows: 0,
            refused: VecDeque::new(),
            dead_letter_retry: None,
            dead_letter_backoff: Duration::ZERO,
            dead_letter_writing: None,
            ack_queue: VecDeque::new(),
            backlog_retry: None,
            backlog_backoff: Duration::ZERO,
        }
    }

    /// Gives the task its opened spool and what it held at start.
    pub fn with_spool(mut self, spool: Spool, replay: Replay) -> Self {
        self.spool = Some(spool);
        self.replay = Some(replay);
        self
    }

    /// A spool operation failed. Nothing is lost or switched off: the spool keeps what
    /// failed in its buffer, the sink stops reading producers (backpressure), and the
    /// repair is retried with backoff.
    fn spool_failed(&mut self, what: &str, e: std::io::Error) {
        self.metrics.spool_errors.fetch_add(1, Relaxed);
        if self.spool_trouble.is_none() {
            tracing::error!(sink = %self.name, error = %e, "spool {what} failed; this sink reads no producer until the spool can be written again (retrying)");
            self.spool_trouble = Some(RetryAt::after(REPAIR_FIRST));
        }
    }

    /// Retries what failed in the spool. Once it works, batches sealed meanwhile may be
    /// sent, their lines acked (`acks: spooled`), and producers are read again.
    fn repair_spool(&mut self) {
        let (Some(spool), Some(trouble)) = (self.spool.as_mut(), self.spool_trouble) else {
            self.spool_trouble = None;
            return;
        };
        match spool.repair() {
            Ok(()) => {
                self.spool_trouble = None;
                self.metrics
                    .spooled
                    .fetch_add(std::mem::take(&mut self.unspooled_rows), Relaxed);
                let queue = &mut self.queue;
                for batch in queue.waiting.iter_mut().chain(queue.backlog.iter_mut()) {
                    batch.durable = true;
                }
                self.spool_synced();
                tracing::info!(sink = %self.name, "the spool can be written again; reading producers");
            }
            Err(e) => {
                self.metrics.spool_errors.fetch_add(1, Relaxed);
                let next = trouble.next(REPAIR_MAX);
                tracing::warn!(sink = %self.name, error = %e, retry_in_ms = next.backoff.as_millis() as u64, "the spool still cannot be written");
                self.spool_trouble = Some(next);
            }
        }
    }

    /// Appends a received chunk's records to the spool; returns the first one's sequence
    /// number (0 without a spool). A failed write still numbers the records: they are
    /// the spool's, buffered until a repair puts them on disk.
    fn spool_append(&mut self, chunk: &Chunk) -> u64 {
        let Some(spool) = self.spool.as_mut() else {
            return 0;
        };
        let (seqs, written) = spool.append_chunk(&chunk.data, &chunk.ends);
        let synced = written.and_then(|()| match self.spool_sync {
            SpoolSync::Always => spool.sync().map(|()| true),
            SpoolSync::Interval => {
                self.unsynced_bytes += chunk.data.len();
                if self.unsynced_bytes >= SYNC_BYTES {
                    self.unsynced_bytes = 0;
                    self.sync_due = None;
                    spool.sync().map(|()| true)
                } else {
                    self.sync_due
                        .get_or_insert_with(|| Instant::now() + SYNC_INTERVAL);
                    Ok(false)
                }
            }
            // The page cache has it: it survives the process, which is all `never` promises.
            SpoolSync::Never => Ok(true),
        });
        if let (Acks::Spooled, Some(conn)) = (self.acks, &chunk.ack) {
            let through = chunk.first_line + chunk.rows() as u64 - 1;
            self.unsynced_acks.push((conn.clone(), through));
        }
        match synced {
            Ok(synced) => {
                self.metrics.spooled.fetch_add(chunk.rows() as u64, Relaxed);
                if synced {
                    self.spool_synced();
                }
            }
            Err(e) => {
                self.unspooled_rows += chunk.rows() as u64;
                self.spool_failed("write", e);
            }
        }
        seqs.start
    }

    /// Everything written to the spool is synced: its lines are acked (`acks: spooled`).
    fn spool_synced(&mut self) {
        for (conn, through) in self.unsynced_acks.drain(..) {
            conn.settle_through(through);
        }
    }

    /// A batch's verdict reaches the producers whose lines it holds. Committed lines are
    /// settled; with `acks: committed`, lines of a dead-lettered batch get an `err` first.
    fn ack_verdict(&self, parts: Vec<AckPart>, dead_lettered: bool) {
        for part in parts {
            if dead_lettered && self.acks == Acks::Committed {
                part.conn.report(part.first, part.count, "dead_lettered");
            }
            part.conn.settle_through(part.first + part.count - 1);
        }
    }

    /// A refused batch's file is written: its lines get their `err`s, and the lines of the
    /// batches that committed after it, held until now, their `ok`.
    fn dead_lettered_acks(&mut self, label: &str) {
        if let Some(entry) = self.ack_queue.iter_mut().find(|e| e.0 == label) {
            entry.2 = Some(true);
        }
        while let Some((_, _, Some(_))) = self.ack_queue.front() {
            if let Some((_, acks, Some(dead_lettered))) = self.ack_queue.pop_front() {
                self.ack_verdict(acks, dead_lettered);
            }
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
            durable: true,
            oldest: Instant::now(),
            acks: Vec::new(),
        }
    }

    /// A sealed batch goes to `waiting` when that is free and nothing is queued before
    /// it. With a spool it waits on disk instead, its body dropped from memory, whenever
    /// it cannot be sent at once: memory then holds the batch loading and the one
    /// filling, never a third.
    fn enqueue(&mut self, mut next: Labelled) {
        let on_disk = self.spool.is_some() && next.seqs.is_some();
        let loading = matches!(self.load, Load::Busy(_));
        if self.queue.is_empty() && !(loading && on_disk) {
            self.queue.waiting = Some(next);
            return;
        }
        if on_disk {
            next.batch.body = Bytes::new();
            next.on_disk = true;
        }
        self.queue.backlog.push_back(next);
    }

    /// The next batch to send, if one may go now: `waiting` once its seal is on disk,
    /// else the front of the backlog, read back from the spool.
    fn next_to_send(&mut self) -> Option<Labelled> {
        match self.queue.waiting.take() {
            Some(w) if !w.durable => {
                self.queue.waiting = Some(w);
                None
            }
            Some(w) => Some(w),
            None => self.take_backlog(),
        }
    }

    /// The next queued batch, with its body read back from the spool if it waited there.
    /// While the spool fails, a batch on disk (or one whose seal is not) stays queued.
    fn take_backlog(&mut self) -> Option<Labelled> {
        while let Some(mut next) = self.queue.backlog.pop_front() {
            if !next.on_disk {
                if next.durable {
                    return Some(next);
                }
                self.queue.backlog.push_front(next);
                return None;
            }
            // A batch sealed while the spool failed is not on disk whole yet; one sealed
            // before is, and loading it frees space.
            if !next.durable || self.backlog_retry.is_some() {
                self.queue.backlog.push_front(next);
                return None;
            }
            match self.read_back(next.seqs.clone(), &next.label, next.batch.rows) {
                Ok(Some((body, rows))) => {
                    self.backlog_backoff = Duration::ZERO;
                    next.batch.rows = rows;
                    next.batch.body = body;
                    next.on_disk = false;
                    return Some(next);
                }
                Ok(None) => {
                    tracing::warn!(sink = %self.name, label = %next.label, "none of this batch's records survived damage to the spool; nothing to load");
                    if let Some(Err(e)) = self
                        .spool
                        .as_mut()
                        .map(|s| s.done(&next.label, Outcome::Committed))
                    {
                        self.spool_failed("verdict", e);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // The spool's bytes changed under it: what it cannot read back is
                    // gone, like damage found at start.
                    self.metrics.spool_damage.fetch_add(1, Relaxed);
                    self.metrics
                        .lost_to_damage
                        .fetch_add(next.batch.rows, Relaxed);
                    tracing::error!(sink = %self.name, label = %next.label, rows = next.batch.rows, error = %e, "spool damage: this batch cannot be read back and is lost");
                    if let Some(Err(e)) = self
                        .spool
                        .as_mut()
                        .map(|s| s.done(&next.label, Outcome::Committed))
                    {
                        self.spool_failed("verdict", e);
                    }
                }
                Err(e) => {
                    self.metrics.spool_errors.fetch_add(1, Relaxed);
                    self.backlog_backoff =
                        (self.backlog_backoff * 2).clamp(REPAIR_FIRST, REPAIR_MAX);
                    tracing::warn!(sink = %self.name, label = %next.label, error = %e, retry_in_ms = self.backlog_backoff.as_millis() as u64, "cannot read a batch back from the spool; trying again");
                    self.backlog_retry = Some(RetryAt::after(self.backlog_backoff));
                    self.queue.backlog.push_front(next);
                    return None;
                }
            }
        }
        None
    }

    /// Reads a batch's records back from the spool as a Stream Load body: the batch is in
    /// memory once, built straight from the frames read. `None` when none survived.
    fn read_back(
        &mut self,
        seqs: Option<Range<u64>>,
        label: &str,
        expected: u64,
    ) -> std::io::Result<Option<(Bytes, u64)>> {
        let (Some(spool), Some(seqs)) = (self.spool.as_mut(), seqs) else {
            return Ok(None);
        };
        let delimiter = body::record_end(self.format);
        let mut body = Vec::with_capacity(self.policy.max_bytes.min(256 << 20));
        body.extend_from_slice(body::opening(self.format));
        let mut rows = 0u64;
        spool.read_each(seqs, |record| {
            body.extend_from_slice(&record);
            body.push(delimiter);
            rows += 1;
        })?;
        if rows == 0 {
            return Ok(None);
        }
        if rows != expected {
            tracing::warn!(sink = %self.name, label, expected, found = rows, "the spool gave back fewer records than the batch had (damage found at start)");
        }
        body::close(self.format, &mut body);
        Ok(Some((body.into(), rows)))
    }

    /// Sealing is possible now: `waiting` is free, or a spool can hold the batch.
    fn can_seal(&self) -> bool {
        self.queue.waiting.is_none() || self.spool.is_some()
    }

    /// Runs until the channel is closed and everything is loaded, or the deadline passes.
    ///
    /// Each turn: start the next load if the client is idle, move records of a chunk
    /// into the batch (sealing it when full), and once producers are gone seal the rest;
    /// otherwise wait for the next [`Event`] and handle it.
    pub async fn run(mut self, stopping: Stopping) {
        if let Some(replay) = self.replay.take() {
            self.take_replay(replay);
        }
        loop {
            self.start_next_load();
            if self.can_seal() {
                if self.filling.leftover.is_some() {
                    if let Some(trigger) = self.filling.take_leftover() {
                        self.seal_filling(trigger);
                    }
                    self.publish();
                    continue;
                }
                if !self.input_open {
                    if !self.filling.batch.is_empty() {
                        self.seal_filling(FlushTrigger::Shutdown);
                        continue;
                    }
                    if self.all_settled() {
                        break;
                    }
                }
            }
            let event = self.next_event(&stopping).await;
            if !self.handle(event) {
                break;
            }
            self.publish();
        }
        // A last try to put what the spool buffered on disk, so that it counts as spooled.
        if self.spool_trouble.is_some() {
            self.repair_spool();
        }
        self.publish();
    }

    /// Nothing is left to do once producers are gone: no batch is loading or queued, and
    /// refused batches wait in the spool (the next start writes their files), not here.
    fn all_settled(&self) -> bool {
        matches!(self.load, Load::Idle(_))
            && self.queue.is_empty()
            && self.refused.iter().all(|r| r.on_disk)
            && self.dead_letter_writing.is_none()
    }

    /// Starts the next load when the client is idle and a batch may go.
    fn start_next_load(&mut self) {
        if !matches!(self.load, Load::Idle(_)) {
            return;
        }
        let Some(next) = self.next_to_send() else {
            return;
        };
        if let Load::Idle(client) = std::mem::replace(&mut self.load, Load::Moving) {
            self.load = Load::Busy(self.start_load(client, next));
        }
    }

    /// Producers are read only while what they send has somewhere to go: the batch can
    /// take it, the spool works and has room, and no refused batch holds memory waiting
    /// for its file. A full spool stops the reads until verdicts free space; once
    /// shutdown has begun, records already accepted still go in.
    fn readable(&mut self) -> bool {
        let spool_full = !self.stopping && self.spool.as_ref().is_some_and(Spool::is_full);
        if spool_full != self.was_full {
            self.was_full = spool_full;
            if spool_full {
                tracing::warn!(sink = %self.name, bytes = self.spool.as_ref().map_or(0, Spool::bytes), "spool is full (spoolMaxBytes); producers wait until loads free space");
            } else {
                tracing::info!(sink = %self.name, "spool has room again; reading producers");
            }
        }
        self.input_open
            && self.filling.leftover.is_none()
            && self.can_seal()
            && !spool_full
            && self.spool_trouble.is_none()
            && self.refused.iter().all(|r| r.on_disk)
    }

    /// Waits for the next event that matters now; each arm's guard says when it does.
    async fn next_event(&mut self, stopping: &Stopping) -> Event {
        let readable = self.readable();
        let flush_at = self
            .policy
            .flush_at(self.filling.batch.oldest(), self.stopping)
            .filter(|_| self.can_seal());
        let repair_at = self.spool_trouble.map(|t| t.at);
        let backlog_at = self.backlog_retry.map(|r| r.at);
        let dead_letter_at = self
            .dead_letter_retry
            .filter(|_| self.dead_letter_writing.is_none())
            .map(|r| r.at);
        let loading = match &mut self.load {
            Load::Busy(f) => Some(&mut f.handle),
            _ => None,
        };
        tokio::select! {
            biased;
            _ = stopping.deadline.cancelled() => Event::Deadline,
            done = join(loading) => Event::Loaded(done),
            written = join(self.dead_letter_writing.as_mut()) => Event::DeadLetterWritten(written),
            _ = stopping.stop.cancelled(), if !self.stopping => Event::Stop,
            _ = sleep_until(repair_at) => Event::RepairDue,
            _ = sleep_until(backlog_at) => Event::BacklogRetryDue,
            _ = sleep_until(dead_letter_at) => Event::DeadLetterRetryDue,
            _ = sleep_until(self.sync_due) => Event::SyncDue,
            _ = sleep_until(flush_at) => Event::FlushDue,
            chunk = self.rx.recv(), if readable => Event::Chunk(chunk),
        }
    }

    /// Handles one event; false when the task must stop now.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Deadline => {
                if let Load::Busy(f) = &self.load {
                    f.handle.abort();
                }
                return false;
            }
            Event::Loaded(Ok((client, verdict, body))) => {
                if let Load::Busy(finished) = std::mem::replace(&mut self.load, Load::Idle(client))
                {
                    self.finish_load(finished, verdict, body);
                }
            }
            Event::DeadLetterWritten(Ok((refused, result))) => {
                self.dead_letter_writing = None;
                self.dead_letter_written(refused, result);
            }
            Event::Loaded(Err(e)) | Event::DeadLetterWritten(Err(e)) => {
                tracing::error!(sink = %self.name, error = %e, "a load or dead-letter task failed; its records are lost");
                return false;
            }
            Event::Stop => {
                self.stopping = true;
                if self.can_seal() && !self.filling.batch.is_empty() {
                    self.seal_filling(FlushTrigger::Shutdown);
                }
            }
            Event::RepairDue => self.repair_spool(),
            Event::BacklogRetryDue => self.backlog_retry = None,
            Event::DeadLetterRetryDue => {
                self.dead_letter_retry = None;
                self.retry_dead_letter();
            }
            Event::SyncDue => {
                self.sync_due = None;
                self.unsynced_bytes = 0;
                match self.spool.as_mut().map(Spool::sync) {
                    Some(Ok(())) => self.spool_synced(),
                    Some(Err(e)) => self.spool_failed("sync", e),
                    None => {}
                }
            }
            Event::FlushDue => self.seal_filling(FlushTrigger::Interval),
            Event::Chunk(Some(chunk)) => {
                let base = self.spool_append(&chunk);
                self.filling.leftover = Some((chunk, 0, base));
            }
            Event::Chunk(None) => self.input_open = false,
        }
        true
    }

    /// Takes what the spool held at start: sealed batches queue first, in seal order;
    /// records not yet in a batch come back as the first chunk, due at once.
    fn take_replay(&mut self, replay: Replay) {
        let mut count = 0;
        for pending in replay.sealed {
            count += pending.rows;
            let batch = self.replayed_batch(pending);
            self.queue.backlog.push_back(batch);
        }
        if let Some((first, _)) = replay.unsealed.first() {
            let records: Vec<Bytes> = replay.unsealed.iter().map(|(_, r)| r.clone()).collect();
            count += records.len() as u64;
            let mut chunk = encode_records(self.format, &records);
            // They waited through a restart already: due at once.
            chunk.arrived = Instant::now()
                .checked_sub(self.policy.interval)
                .unwrap_or_else(Instant::now);
            self.filling.leftover = Some((chunk, 0, *first));
        }
        self.metrics.replayed.fetch_add(count, Relaxed);
        self.metrics.spooled.fetch_add(count, Relaxed);
    }

    /// A load's verdict: recorded in the spool, counted, acked; a refused batch whose
    /// dead-letter file could not be written is kept for a retry.
    fn finish_load(&mut self, finished: InFlight, verdict: Verdict, body: Bytes) {
        let outcome = match &verdict {
            Verdict::Committed => Outcome::Committed,
            Verdict::DeadLettered => Outcome::DeadLettered,
            Verdict::Refused(refusal) => {
                self.keep_refused(finished, refusal.clone(), body);
                return;
            }
        };
        if let Some(Err(e)) = self
            .spool
            .as_mut()
            .map(|s| s.done(&finished.label, outcome))
        {
            self.spool_failed("verdict", e);
        }
        match finished.trigger {
            FlushTrigger::Size | FlushTrigger::Rows => {
                if let Ok(body) = body.try_into_mut() {
                    self.filling.batch.recycle(body.into());
                }
            }
            FlushTrigger::Interval | FlushTrigger::Shutdown => self.filling.batch.release_spare(),
        }
        let dead_lettered = matches!(verdict, Verdict::DeadLettered);
        if self.ack_queue.is_empty() {
            self.ack_verdict(finished.acks, dead_lettered);
        } else {
            self.ack_queue
                .push_back((finished.label, finished.acks, Some(dead_lettered)));
        }
    }

    /// Keeps a refused batch until its dead-letter file is written: on disk when the
    /// spool has it (the sink goes on loading), else in memory (producers wait).
    fn keep_refused(&mut self, finished: InFlight, refusal: Refusal, body: Bytes) {
        let on_disk = self.spool.is_some() && finished.seqs.is_some();
        self.ack_queue
            .push_back((finished.label.clone(), finished.acks, None));
        self.refused.push_back(Refused {
            label: finished.label,
            rows: finished.rows,
            body: if on_disk { Bytes::new() } else { body },
            seqs: finished.seqs,
            on_disk,
            refusal,
            oldest: finished.oldest,
        });
        self.metrics
            .dead_letters_pending
            .store(self.refused.len() as u64, Relaxed);
        if self.dead_letter_retry.is_none() && self.dead_letter_writing.is_none() {
            self.dead_letter_retry = Some(RetryAt::after(DEAD_LETTER_FIRST));
        }
    }

    /// Tries the oldest refused batch's dead-letter file again, off this task.
    fn retry_dead_letter(&mut self) {
        let Some(mut refused) = self.refused.pop_front() else {
            return;
        };
        if refused.on_disk {
            match self.read_back(refused.seqs.clone(), &refused.label, refused.rows) {
                Ok(Some((body, _))) => refused.body = body,
                // Nothing survived to write: the verdict alone is recorded.
                Ok(None) => {
                    tracing::warn!(sink = %self.name, label = %refused.label, "none of this refused batch's records survived damage to the spool; no dead-letter file to write");
                    if let Some(Err(e)) = self
                        .spool
                        .as_mut()
                        .map(|s| s.done(&refused.label, Outcome::DeadLettered))
                    {
                        self.spool_failed("verdict", e);
                    }
                    self.dead_lettered_acks(&refused.label);
                    self.metrics
                        .dead_letters_pending
                        .store(self.refused.len() as u64, Relaxed);
                    if !self.refused.is_empty() {
                        self.dead_letter_retry = Some(RetryAt::after(Duration::ZERO));
                    }
                    return;
                }
                Err(e) => {
                    self.metrics.spool_errors.fetch_add(1, Relaxed);
                    tracing::warn!(sink = %self.name, label = %refused.label, error = %e, "cannot read a refused batch back from the spool for its dead-letter file; trying again");
                    self.refused.push_front(refused);
                    self.dead_letter_retry = Some(RetryAt::after(REPAIR_MAX));
                    return;
                }
            }
        }
        let (dir, name, format) = (self.dead_letter_dir.clone(), self.name.clone(), self.format);
        self.dead_letter_writing = Some(tokio::spawn(async move {
            let result = dead_letter::write(
                &dir,
                &name,
                &refused.label,
                format,
                &refused.body,
                refused.rows,
                &refused.refusal,
            )
            .await;
            (refused, result)
        }));
    }

    /// The outcome of a retried dead-letter write.
    fn dead_letter_written(&mut self, mut refused: Refused, result: std::io::Result<PathBuf>) {
        match result {
            Ok(path) => {
                self.metrics.load_attempt("dead_lettered");
                self.metrics.dead_lettered.fetch_add(refused.rows, Relaxed);
                tracing::error!(sink = %self.name, label = %refused.label, rows = refused.rows, reason = %refused.refusal.reason, file = %path.display(), outcome = "dead_lettered", "refused batch written to the dead-letter directory");
                if let Some(Err(e)) = self
                    .spool
                    .as_mut()
                    .map(|s| s.done(&refused.label, Outcome::DeadLettered))
                {
                    self.spool_failed("verdict", e);
                }
                self.dead_lettered_acks(&refused.label);
                self.dead_letter_backoff = Duration::ZERO;
                if !self.refused.is_empty() {
                    self.dead_letter_retry = Some(RetryAt::after(Duration::ZERO));
                }
            }
            Err(e) => {
                self.metrics.dead_letter_failures.fetch_add(1, Relaxed);
                self.dead_letter_backoff =
                    (self.dead_letter_backoff * 2).clamp(DEAD_LETTER_FIRST, DEAD_LETTER_MAX);
                let next = RetryAt::after(self.dead_letter_backoff);
                tracing::error!(sink = %self.name, label = %refused.label, rows = refused.rows, dir = %self.dead_letter_dir.display(), error = %e, retry_in_ms = next.backoff.as_millis() as u64, "cannot write a refused batch's dead-letter file; the batch is kept and the write retried");
                if refused.on_disk {
                    refused.body = Bytes::new();
                }
                self.refused.push_front(refused);
                self.dead_letter_retry = Some(next);
            }
        }
        self.metrics
            .dead_letters_pending
            .store(self.refused.len() as u64, Relaxed);
    }

    /// Publishes what the sink holds: bytes in memory, the spool's size, and the age of
    /// the oldest record not yet loaded (batches finish in order, so it is in the first
    /// of: the refused batches, the load in flight, the waiting batch, the backlog, the
    /// filling batch).
    fn publish(&self) {
        let in_flight = match &self.load {
            Load::Busy(f) => Some(f),
            _ => None,
        };
        let waiting = self.queue.waiting.as_ref();
        let bytes = self.filling.batch.encoded_len() as u64
            + waiting.map_or(0, |w| w.batch.body.len() as u64)
            + in_flight.map_or(0, |f| f.bytes)
            + self
                .refused
                .iter()
                .map(|r| r.body.len() as u64)
                .sum::<u64>();
        self.metrics.buffered_bytes.store(bytes, Relaxed);
        if let Some(spool) = &self.spool {
            self.metrics.spool_bytes.store(spool.bytes(), Relaxed);
        }
        let oldest = [
            self.refused.front().map(|r| r.oldest),
            in_flight.map(|f| f.oldest),
            waiting.map(|w| w.oldest),
            self.queue.backlog.front().map(|b| b.oldest),
            self.filling.batch.oldest(),
        ]
        .into_iter()
        .flatten()
        .min();
        self.metrics.set_oldest_unloaded(oldest);
    }

    /// Seals the filling batch under a new label (synced to the spool first, if there is
    /// one) and queues it.
    fn seal_filling(&mut self, trigger: FlushTrigger) {
        let oldest = self.filling.batch.oldest().unwrap_or_else(Instant::now);
        let Some(batch) = self.filling.batch.seal(trigger) else {
            return;
        };
        let acks = std::mem::take(&mut self.filling.acks);
        let label = self.labels.next_label();
        let seqs = self.filling.seqs.take();
        let mut durable = true;
        if let (Some(spool), Some(range)) = (self.spool.as_mut(), seqs.clone()) {
            // Durable before the first send: after a crash the batch is resolved by this
            // label, never sent under another. Until then it waits.
            match spool.seal(&label, range) {
                Ok(()) => self.spool_synced(),
                Err(e) => {
                    durable = false;
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
        let sealed = Labelled {
            label,
            batch,
            start: Start::Send,
            seqs,
            on_disk: false,
            durable: durable && self.spool_trouble.is_none(),
            oldest,
            acks,
        };
        self.enqueue(sealed);
    }

    fn start_load(&mut self, mut client: StreamLoadClient, mut next: Labelled) -> InFlight {
        let rows = next.batch.rows;
        let bytes = next.batch.body.len() as u64;
        let trigger = next.batch.trigger;
        let in_flight_label = next.label.clone();
        let (seqs, oldest) = (next.seqs.clone(), next.oldest);
        let acks = std::mem::take(&mut next.acks);
        let start = next.start;
        let retry = self.retry;
        let metrics = self.metrics.clone();
        let name = self.name.clone();
        let dir = self.dead_letter_dir.clone();
        let format = self.format;
        let handle = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut warn_after = retry.warn_after.0;
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
                    let waited = started.elapsed();
                    if waited >= warn_after && *a != Attempt::Committed {
                        tracing::error!(sink = %name, label = %label, rows, waited_s = waited.as_secs(), "this batch has failed for {}s and is still retried under its label; producers wait once the sink's buffers are full (see starsink_oldest_unloaded_record_age_seconds)", waited.as_secs());
                        warn_after += retry.warn_after.0;
                    }
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
                    miscounted,
                } => {
                    let refusal = Refusal {
                        reason,
                        error_url,
                        uncertain,
                        miscounted,
                    };
                    match dead_letter::write(
                        &dir,
                        &name,
                        &label,
                        format,
                        &batch.body,
                        rows,
                        &refusal,
                    )
                    .await
                    {
                        Ok(path) => {
                            metrics.load_attempt("dead_lettered");
                            tracing::error!(sink = %name, label = %label, rows, reason = %refusal.reason, error_url = refusal.error_url.as_deref().unwrap_or(""), file = %path.display(), outcome = "dead_lettered", "load refused; batch written to the dead-letter directory");
                            Verdict::DeadLettered
                        }
                        Err(e) => {
                            metrics.dead_letter_failures.fetch_add(1, Relaxed);
                            tracing::error!(sink = %name, label = %label, rows, reason = %refusal.reason, dir = %dir.display(), error = %e, "load refused and its dead-letter file cannot be written; the batch is kept and the write retried");
                            Verdict::Refused(refusal)
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
                Verdict::Refused(_) => {}
            }
            (client, verdict, batch.body)
        });
        InFlight {
            handle,
            trigger,
            label: in_flight_label,
            rows,
            bytes,
            seqs,
            oldest,
            acks,
        }
    }
}

/// Waits for a task, if there is one (never resolves otherwise).
async fn join<T>(task: Option<&mut JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; with no time, never wakes (the arm's guard keeps it off anyway).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn log_attempt(sink: &str, label: &str, attempt: &Attempt) {
    match attempt {
        Attempt::Committed => {}
        Attempt::Transient(why) => {
            tracing::warn!(sink, label, reason = %why, "load failed; retrying with the same label")
        }
        Attempt::Misconfigured(why) => {
            tracing::error!(sink, label, reason = %why, "the sink's configuration stops every load: fix it (no batch is dead-lettered for this); retrying with the same label")
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

/// Records (each without its line end) as a chunk: each followed by the body's delimiter.
fn encode_records(format: Format, records: &[Bytes]) -> Chunk {
    let delimiter = body::record_end(format);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev_endpoint::{DevEndpoint, EndpointConfig};
    use crate::loader::shutdown::Accounting;

    #[tokio::test]
    async fn a_load_counts_its_own_commit_so_an_exit_that_does_not_wait_for_the_sink_still_does() {
        let sr = DevEndpoint::start(EndpointConfig::default()).await.unwrap();
        let sink: SinkSpec = serde_yaml::from_str(&format!(
            "name: orders\nsocket: /tmp/orders.sock\nstarrocks:\n  feEndpoints: [\"{}\"]\n  database: shop\n  table: orders\n",
            sr.fe_url()
        ))
        .unwrap();
        let metrics = Arc::new(SinkMetrics::new("orders"));
        metrics.received.store(2, Relaxed);
        let (_tx, rx) = mpsc::channel(1);
        let mut task = SinkTask::new(
            &sink,
            LabelGen::new("p", "orders", "a"),
            StreamLoadClient::new(&sink).unwrap(),
            rx,
            metrics.clone(),
        );
        let client = StreamLoadClient::new(&sink).unwrap();
        let load = task.start_load(
            client,
            Labelled {
                label: "p_orders_a_0".into(),
                batch: Sealed {
                    body: Bytes::from_static(br#"[{"id":1},{"id":2}]"#),
                    rows: 2,
                    trigger: FlushTrigger::Shutdown,
                },
                start: Start::Send,
                seqs: None,
                on_disk: false,
                durable: true,
                oldest: Instant::now(),
                acks: Vec::new(),
            },
        );
        // A second signal exits without the sink task looking at the finished load: the
        // accounting must already have it.
        assert!(load.handle.await.is_ok());
        let accounting = Accounting::of(&[metrics]);
        assert_eq!((accounting.committed, accounting.lost), (2, 0));
        assert_eq!(sr.committed_rows(), 2);
    }
}
