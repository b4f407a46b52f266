//! The sink task: sole owner of its sink's batches. It fills one batch from the channel
//! while at most one other is being loaded (in Merge Commit async, a few more whose rows
//! wait for their windows), seals on size, rows, the oldest record's deadline or
//! shutdown, and stops reading (backpressure) when a sealed batch must wait.

mod filling;
mod load;
mod refused;
mod spool_io;

use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Acks, Format, RetrySpec, SinkSpec, SpoolSync};
use crate::loader::ack::ConnAck;
use crate::loader::batch::{AdaptiveInterval, Batch, Chunk, FlushPolicy, FlushTrigger, Sealed};
use crate::loader::dead_letter::{self, Refusal};
use crate::loader::metrics::{Held, SinkMetrics};
use crate::loader::spool::segment::Disposition;
use crate::loader::spool::store::{PendingBatch, Replay, Spool};
use crate::loader::HOLD_BEHIND_LOAD;
use crate::stream_load::client::{SinkClient, Target};
use crate::stream_load::{
    body, deliver_from, Attempt, Delivered, LabelGen, Start, StreamLoadClient,
};
use filling::{Filling, Queue};
use load::InFlight;
use refused::Refused;
use spool_io::REPAIR_MAX;

/// A sealed batch with its label, fixed for the rest of its life.
struct Labelled {
    label: String,
    batch: Sealed,
    /// Where it goes: the table and headers in effect when it was sealed.
    target: Arc<Target>,
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
enum LoadEnd {
    Committed,
    DeadLettered,
    /// Refused, and its dead-letter file could not be written yet: the sink task keeps
    /// the batch and retries the write.
    Refused(Refusal),
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

/// Loads that may wait for their windows side by side (Merge Commit async), at most...
const MAX_WINDOWS_AWAITED: usize = 4;

/// What the sink task woke up for.
enum Event {
    /// The shutdown deadline: give up what is not committed.
    Deadline,
    /// The load at this index in `loads` ended.
    Loaded(
        usize,
        Result<(StreamLoadClient, LoadEnd, Bytes), tokio::task::JoinError>,
    ),
    DeadLetterWritten(Result<(Refused, std::io::Result<PathBuf>), tokio::task::JoinError>),
    /// SIGTERM.
    Stop,
    /// The batch held in memory behind a load has waited [`HOLD_BEHIND_LOAD`].
    HoldOver,
    RepairDue,
    BacklogRetryDue,
    DeadLetterRetryDue,
    SyncDue,
    /// The filling batch's oldest record is due.
    FlushDue,
    /// The load in flight met backpressure: load less often.
    Backpressure,
    /// A load's rows are in a Merge Commit window: the next batch may go.
    Parked,
    /// The sink's config changed (validated, and with what needs a restart kept).
    Reconfigured(Arc<SinkSpec>),
    /// A chunk from a producer, or `None`: every connection is gone.
    Chunk(Option<Chunk>),
}

pub struct SinkTask {
    name: String,
    format: Format,
    retry: RetrySpec,
    dead_letter_dir: PathBuf,
    policy: FlushPolicy,
    /// The flush interval in effect, which backpressure widens; `policy.interval` follows it.
    interval: AdaptiveInterval,
    /// Backpressure answers so far: loads count them, the task wakes on each.
    pressure: Arc<watch::Sender<u64>>,
    pressure_seen: watch::Receiver<u64>,
    labels: LabelGen,
    rx: mpsc::Receiver<Chunk>,
    filling: Filling,
    queue: Queue,
    /// The sink's connection and the target of new batches.
    clients: SinkClient,
    /// The client no load holds (the one whose connection is pooled), if any.
    idle: Option<StreamLoadClient>,
    /// Loads under way, in seal order: one, or with `pipelines` up to
    /// [`MAX_WINDOWS_AWAITED`], all but the newest waiting for their windows.
    loads: Vec<InFlight>,
    /// Loads that entered a window so far: they count them, the task wakes on each.
    parked: Arc<watch::Sender<u64>>,
    parked_seen: watch::Receiver<u64>,
    /// The sink's config as reloads change it.
    config: Option<watch::Receiver<Arc<SinkSpec>>>,
    /// The newest changed config, not yet applied: it waits while the filling batch
    /// must first be sealed under the old target and cannot be yet. Nothing is read
    /// meanwhile.
    reconfiguring: Option<Arc<SinkSpec>>,
    /// Producers' chunks may still come (the channel is open).
    input_open: bool,
    /// SIGTERM was seen.
    stopping: bool,
    /// With a spool, the waiting batch is held in memory behind a load in flight, and no
    /// producer read, until then (see [`HOLD_BEHIND_LOAD`]).
    hold_until: Option<Instant>,
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
    /// a load's lines wait here from its start until its verdict and those of the loads
    /// before it are known (a refused batch's once its file is written).
    /// (label, lines, verdict: dead-lettered or not, once known.)
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
        clients: SinkClient,
        rx: mpsc::Receiver<Chunk>,
        metrics: Arc<SinkMetrics>,
    ) -> Self {
        let (pressure, pressure_seen) = watch::channel(0);
        let (parked, parked_seen) = watch::channel(0);
        let interval = AdaptiveInterval::new(sink.flush.interval.0, sink.flush.most_interval());
        let interval_ms = interval.now().as_millis() as u64;
        metrics.flush_interval_ms.store(interval_ms, Relaxed);
        Self {
            name: sink.name.clone(),
            format: sink.format,
            retry: sink.retry,
            dead_letter_dir: sink.dead_letter_dir(),
            policy: FlushPolicy::of(sink),
            interval,
            pressure: Arc::new(pressure),
            pressure_seen,
            labels,
            rx,
            filling: Filling {
                batch: Batch::new(sink.format, FlushPolicy::of(sink)),
                seqs: None,
                acks: Vec::new(),
                leftover: None,
            },
            queue: Queue::default(),
            clients,
            idle: None,
            loads: Vec::new(),
            parked: Arc::new(parked),
            parked_seen,
            config: None,
            reconfiguring: None,
            input_open: true,
            stopping: false,
            hold_until: None,
            unsynced_bytes: 0,
            sync_due: None,
            was_full: false,
            metrics,
            spool: None,
            spool_sync: sink.spool_sync,
            replay: None,
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

    /// Gives the task the changes of its config (see [`SinkTask::reconfigure`]).
    pub fn with_config(mut self, config: watch::Receiver<Arc<SinkSpec>>) -> Self {
        self.config = Some(config);
        self
    }

    /// Gives the task its opened spool and what it held at start.
    pub fn with_spool(mut self, spool: Spool, replay: Replay) -> Self {
        self.spool = Some(spool);
        self.replay = Some(replay);
        self
    }

    /// A sealed batch goes to `waiting` when that is free and nothing is queued before
    /// it. With a spool, one that cannot be sent at once is held there (producers not
    /// read, so memory holds the batch loading and this one, never a third) for at most
    /// [`HOLD_BEHIND_LOAD`], then waits on disk, its body dropped from memory; behind
    /// other queued batches, or once shutdown has begun, it waits on disk at once.
    fn enqueue(&mut self, mut next: Labelled) {
        let on_disk = self.spool.is_some() && next.seqs.is_some();
        let loading = !self.may_load(next.batch.body.len());
        let hold = loading && on_disk;
        if self.queue.is_empty() && !(hold && self.stopping) {
            if hold {
                self.hold_until = Some(Instant::now() + HOLD_BEHIND_LOAD);
            }
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
            Some(w) => {
                self.hold_until = None;
                Some(w)
            }
            None => self.take_backlog(),
        }
    }

    /// The batch held in memory behind a load goes to disk, first in the backlog, and
    /// producers are read again.
    fn stop_holding(&mut self) {
        self.hold_until = None;
        if let Some(mut held) = self.queue.waiting.take() {
            held.batch.body = Bytes::new();
            held.on_disk = true;
            self.queue.backlog.push_front(held);
        }
    }

    /// Sealing is possible now: `waiting` is free, or a spool can hold the batch (but not
    /// while the waiting batch is held in memory behind a load: then, as without a spool,
    /// nothing more is taken in until it goes).
    fn can_seal(&self) -> bool {
        self.queue.waiting.is_none() || (self.spool.is_some() && self.hold_until.is_none())
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
            if let Some(spec) = self.reconfiguring.take() {
                self.reconfigure(spec);
                if self.reconfiguring.is_none() {
                    // Applied: a batch it sealed may go now.
                    continue;
                }
            }
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
        self.loads.is_empty()
            && self.queue.is_empty()
            && self.refused.iter().all(|r| r.on_disk)
            && self.dead_letter_writing.is_none()
    }

    /// Whether a batch of `bytes` may start loading now: when nothing loads; or, when
    /// loads pipeline, beside loads that all wait for their windows, up to
    /// [`MAX_WINDOWS_AWAITED`] of them holding at most `maxBytes` together (so memory
    /// holds what it would with one load of a full batch).
    fn may_load(&self, bytes: usize) -> bool {
        let held: usize = self.loads.iter().map(|f| f.bytes as usize).sum();
        self.loads.is_empty()
            || (self.clients.target().pipelines()
                && self.loads.len() < MAX_WINDOWS_AWAITED
                && self.loads.iter().all(InFlight::parked)
                && held + bytes <= self.policy.max_bytes)
    }

    /// Starts the next load when one may start and a batch may go. Beside other loads
    /// only the waiting batch goes (the backlog is read back from disk one at a time).
    fn start_next_load(&mut self) {
        let next_bytes = match &self.queue.waiting {
            Some(w) => w.batch.body.len(),
            None if self.loads.is_empty() => 0,
            None => return,
        };
        if !self.may_load(next_bytes) {
            return;
        }
        let Some(next) = self.next_to_send() else {
            return;
        };
        let client = match self.idle.take() {
            Some(mut client) => {
                client.retarget(&next.target);
                client
            }
            None => self.clients.client(&next.target),
        };
        let load = self.start_load(client, next);
        self.loads.push(load);
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
        let held = [
            (Held::SpoolFull, spool_full),
            (Held::SpoolFailing, self.spool_trouble.is_some()),
            (
                Held::DeadLetterPending,
                !self.refused.iter().all(|r| r.on_disk),
            ),
            (Held::BacklogFull, !self.can_seal()),
        ];
        for (reason, on) in held {
            self.metrics.set_held(reason, on);
        }
        self.input_open
            && self.filling.leftover.is_none()
            && self.reconfiguring.is_none()
            && held.iter().all(|(_, on)| !on)
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
        tokio::select! {
            biased;
            _ = stopping.deadline.cancelled() => Event::Deadline,
            (i, done) = join_any(&mut self.loads) => Event::Loaded(i, done),
            written = join(self.dead_letter_writing.as_mut()) => Event::DeadLetterWritten(written),
            _ = stopping.stop.cancelled(), if !self.stopping => Event::Stop,
            _ = sleep_until(repair_at) => Event::RepairDue,
            _ = sleep_until(backlog_at) => Event::BacklogRetryDue,
            _ = sleep_until(dead_letter_at) => Event::DeadLetterRetryDue,
            _ = sleep_until(self.sync_due) => Event::SyncDue,
            _ = sleep_until(flush_at) => Event::FlushDue,
            Ok(()) = self.pressure_seen.changed() => Event::Backpressure,
            Ok(()) = self.parked_seen.changed() => Event::Parked,
            // After `Parked`: a batch that may go beside parked loads is not put on disk.
            _ = sleep_until(self.hold_until) => Event::HoldOver,
            Some(spec) = changed(self.config.as_mut()) => Event::Reconfigured(spec),
            chunk = self.rx.recv(), if readable => Event::Chunk(chunk),
        }
    }

    /// Handles one event; false when the task must stop now.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Deadline => {
                // Given up: no longer counted as in flight.
                for f in self.loads.drain(..) {
                    f.handle.abort();
                }
                return false;
            }
            Event::Loaded(i, Ok((client, verdict, body))) => {
                let finished = self.loads.remove(i);
                self.idle.get_or_insert(client);
                self.finish_load(finished, verdict, body);
            }
            Event::DeadLetterWritten(Ok((refused, result))) => {
                self.dead_letter_writing = None;
                self.dead_letter_written(refused, result);
            }
            Event::Loaded(_, Err(e)) => {
                for f in self.loads.drain(..) {
                    f.handle.abort();
                }
                tracing::error!(sink = %self.name, error = %e, "load task failed; its records are lost");
                return false;
            }
            Event::DeadLetterWritten(Err(e)) => {
                self.dead_letter_writing = None;
                tracing::error!(sink = %self.name, error = %e, "dead-letter task failed; its records are lost");
                return false;
            }
            Event::HoldOver => self.stop_holding(),
            Event::Stop => {
                self.stopping = true;
                if self.hold_until.is_some() {
                    self.stop_holding();
                }
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
                match self.spool.as_mut().map(|s| spool_io::blocking(|| s.sync())) {
                    Some(Ok(())) => self.spool_synced(),
                    Some(Err(e)) => self.spool_failed("sync", e),
                    None => {}
                }
            }
            Event::FlushDue => {
                if !self.top_up() {
                    self.seal_filling(FlushTrigger::Interval);
                }
            }
            Event::Backpressure => {
                self.pressure_seen.borrow_and_update();
                let before = self.interval.now();
                self.interval.widen();
                self.interval_changed(before);
            }
            Event::Parked => {
                self.parked_seen.borrow_and_update();
            }
            // Applied at the top of the next turn; a newer config replaces one not yet
            // applied.
            Event::Reconfigured(spec) => self.reconfiguring = Some(spec),
            Event::Chunk(Some(chunk)) => {
                let base = self.spool_append(&chunk);
                self.filling.leftover = Some((chunk, 0, base));
            }
            Event::Chunk(None) => self.input_open = false,
        }
        true
    }

    /// Before a due batch is sealed, it takes the chunks already waiting in the channel,
    /// as far as it has room; true if that filled it (and sealed it). Without this, a
    /// batch that could not be sealed while the one before it waited to be sent would go
    /// with only what it held then: at shutdown, or behind a slow load, a handful of rows
    /// per load while the channel holds many.
    fn top_up(&mut self) -> bool {
        while self.readable() {
            let Ok(chunk) = self.rx.try_recv() else {
                return false;
            };
            let base = self.spool_append(&chunk);
            self.filling.leftover = Some((chunk, 0, base));
            if let Some(trigger) = self.filling.take_leftover() {
                self.seal_filling(trigger);
                return true;
            }
        }
        false
    }

    /// Takes a changed config at the batch boundary: what is sealed keeps its label and
    /// target; the filling batch is sealed first if the target changed, else it keeps
    /// its records and size limits, and its deadline follows the new interval at once; batches sealed from now go to the new target
    /// with the new limits; every load, those under way too, uses the new connection
    /// (FEs, credentials) from its next request, and loads started from now the new
    /// retry settings.
    fn reconfigure(&mut self, spec: Arc<SinkSpec>) {
        // Records already taken go where they were accepted for: with a new target, the
        // filling batch is sealed first, under the old one, and the rest of a chunk it
        // had no room for goes in after it.
        if **self.clients.target() != Target::of(&spec) {
            if self.filling.leftover.is_some() {
                self.reconfiguring = Some(spec);
                return;
            }
            if !self.filling.batch.is_empty() {
                if !self.can_seal() {
                    self.reconfiguring = Some(spec);
                    return;
                }
                self.seal_filling(FlushTrigger::Reload);
            }
        }
        if let Err(e) = self.clients.reconfigure(&spec) {
            // Validation builds the same client first: this is not expected.
            tracing::error!(sink = %self.name, error = %e, "the changed config cannot be used; keeping the one in effect");
            return;
        }
        self.retry = spec.retry;
        let policy = FlushPolicy::of(&spec);
        self.filling.batch.set_policy(policy);
        self.policy.max_bytes = policy.max_bytes;
        self.policy.max_rows = policy.max_rows;
        let before = self.interval.now();
        self.interval = self
            .interval
            .rebased(spec.flush.interval.0, spec.flush.most_interval());
        self.policy.interval = self.interval.spread(fastrand::f64());
        self.interval_changed(before);
        tracing::info!(sink = %self.name, table = self.clients.target().table(), interval_ms = self.policy.interval.as_millis() as u64, "config reloaded: new batches follow it");
    }

    /// Puts the interval in effect, spread at random once widened, into the flush policy
    /// (the filling batch's deadline moves with it at once) and the metrics.
    fn interval_changed(&mut self, before: Duration) {
        let now = self.interval.now();
        if now == before {
            return;
        }
        tracing::info!(sink = %self.name, interval_ms = now.as_millis() as u64, "flush interval in effect changed (StarRocks' backpressure widens it, healthy loads narrow it back)");
        self.policy.interval = self.interval.spread(fastrand::f64());
        self.metrics
            .flush_interval_ms
            .store(now.as_millis() as u64, Relaxed);
    }

    /// Publishes what the sink holds: bytes in memory, the spool's size, and the age of
    /// the oldest record not yet loaded (it is in the first of: the refused batches, the
    /// oldest load under way, the waiting batch, the backlog, the filling batch).
    fn publish(&self) {
        let waiting = self.queue.waiting.as_ref();
        let bytes = self.filling.batch.encoded_len() as u64
            + waiting.map_or(0, |w| w.batch.body.len() as u64)
            + self.loads.iter().map(|f| f.bytes).sum::<u64>()
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
            self.loads.iter().map(|f| f.oldest).min(),
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
            match spool_io::blocking(|| spool.seal(&label, range)) {
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
            target: self.clients.target().clone(),
            start: Start::Send,
            seqs,
            on_disk: false,
            durable: durable && self.spool_trouble.is_none(),
            oldest,
            acks,
        };
        self.enqueue(sealed);
    }
}

/// The next value of a watched config (never resolves without one, or once its sender
/// is gone).
async fn changed<T: Clone>(rx: Option<&mut watch::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Waits for the first of the loads to end (never resolves while there is none).
async fn join_any(
    loads: &mut [InFlight],
) -> (
    usize,
    Result<(StreamLoadClient, LoadEnd, Bytes), tokio::task::JoinError>,
) {
    std::future::poll_fn(|cx| {
        for (i, f) in loads.iter_mut().enumerate() {
            if let std::task::Poll::Ready(done) =
                std::future::Future::poll(std::pin::Pin::new(&mut f.handle), cx)
            {
                return std::task::Poll::Ready((i, done));
            }
        }
        std::task::Poll::Pending
    })
    .await
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
            SinkClient::new(&sink).unwrap(),
            rx,
            metrics.clone(),
        );
        let client = StreamLoadClient::new(&sink).unwrap();
        let target = client.target().clone();
        let load = task.start_load(
            client,
            Labelled {
                target,
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
