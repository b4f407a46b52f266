//! The loader's counters (lock-free atomics, one set per sink) and their Prometheus text
//! form; `crate::telemetry` serves them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::loader::batch::FlushTrigger;
use crate::loader::record::RejectReason;
use crate::stream_load::response::Pressure;
use crate::telemetry::{Exposition, Histogram};

/// `kind` label values of `starsink_spool_damage_total`: what [`crate::loader::spool::
/// segment::Damage::kind`] names at start, and `unreadable` for a batch whose spooled bytes
/// changed while the loader ran.
pub const DAMAGE_KINDS: [&str; 5] = ["torn_tail", "corrupt", "bad_header", "empty", "unreadable"];

/// `outcome` label values of `starsink_loads_total`, one per attempt.
pub const LOAD_OUTCOMES: [&str; 11] = [
    "committed",
    "retried",
    "misconfigured",
    "uncertain",
    "refused",
    "pending",
    "state_unavailable",
    "dead_lettered",
    "backpressure",
    "in_window",
    "window_failed",
];

/// One sink's counters.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub sink: String,
    /// Every framed line, rejected ones included.
    pub received: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    pub loaded: AtomicU64,
    pub bytes_loaded: AtomicU64,
    pub dead_lettered: AtomicU64,
    loads: [AtomicU64; LOAD_OUTCOMES.len()],
    flushes: [AtomicU64; FlushTrigger::ALL.len()],
    load_duration: Histogram,
    /// Bytes held in batches (filling, waiting and in flight).
    pub buffered_bytes: AtomicU64,
    /// Records taken over from the spool at start.
    pub replayed: AtomicU64,
    /// Records in the spool this run: appended plus replayed.
    pub spooled: AtomicU64,
    /// Bytes the spool takes on disk.
    pub spool_bytes: AtomicU64,
    /// The spool's `spoolMaxBytes` as opened at start (0 without a spool).
    pub spool_max_bytes: AtomicU64,
    /// Damage found in the spool, by kind ([`DAMAGE_KINDS`]).
    spool_damage: [AtomicU64; DAMAGE_KINDS.len()],
    /// `err` reports for producers dropped because their connection's queue was full.
    pub ack_errs_dropped: AtomicU64,
    /// Records the spool lost to damage found at run time (it could not read them back).
    pub lost_to_damage: AtomicU64,
    /// Bytes held in unfinished lines across the sink's connections.
    pub unfinished_bytes: Arc<AtomicU64>,
    /// Failed spool writes, syncs, reads and removals (each retry that fails counts).
    pub spool_errors: AtomicU64,
    /// Bytes of batches read back from the spool (they waited on disk).
    pub spool_read_back_bytes: AtomicU64,
    /// Failed attempts to write a refused batch's dead-letter file.
    pub dead_letter_failures: AtomicU64,
    /// Refused batches whose dead-letter file is not written yet.
    pub dead_letters_pending: AtomicU64,
    /// When the oldest record not yet committed or dead-lettered arrived, in Unix
    /// milliseconds (0: none). Records replayed from the spool count from this start.
    pub oldest_unloaded_unix_ms: AtomicU64,
    /// 1 while the sink reads no producer for that [`Held`] reason.
    held: [AtomicU64; Held::ALL.len()],
    /// Backpressure answers from StarRocks, by what it is short of.
    backpressure: [AtomicU64; Pressure::ALL.len()],
    /// The flush interval in effect (widened by backpressure), in milliseconds.
    pub flush_interval_ms: AtomicU64,
    /// The hash of the config the sink runs (see [`config_hash`]).
    config_hash: std::sync::Mutex<String>,
}

/// The hash of a sink's config, as `starsink_config_info` shows it: of its YAML as the
/// controller renders it into the sink's ConfigMap, so it equals the ConfigMap's hash
/// annotation and the resource's `status.configHash` once the sink runs that config.
pub fn config_hash(spec: &crate::api::SinkSpec) -> String {
    serde_yaml::to_string(spec)
        .map(|yaml| crate::api::pod_contract::content_hash(yaml.as_bytes()))
        .unwrap_or_default()
}

/// Config reloads, by result: the `result` of `starsink_config_reload_total`.
#[derive(Debug, Default)]
pub struct ReloadCounts {
    /// A changed, valid config was applied (what needs a restart excepted).
    pub applied: AtomicU64,
    /// A changed config was invalid: the one in effect kept running.
    pub rejected: AtomicU64,
}

/// Why a sink reads no producer: the `reason` of `starsink_producers_held`. Producers'
/// writes wait (backpressure) while any of them holds; nothing is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The spool holds `spoolMaxBytes`; loads free space.
    SpoolFull,
    /// A spool write, sync or read failed; it is retried until it works.
    SpoolFailing,
    /// A refused batch's dead-letter file could not be written yet.
    DeadLetterPending,
    /// A sealed batch already waits behind the load in flight (with a spool, for at
    /// most [`HOLD_BEHIND_LOAD`](crate::loader::HOLD_BEHIND_LOAD)).
    BacklogFull,
}

impl Held {
    pub const ALL: [Held; 4] = [
        Held::SpoolFull,
        Held::SpoolFailing,
        Held::DeadLetterPending,
        Held::BacklogFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Held::SpoolFull => "spool_full",
            Held::SpoolFailing => "spool_failing",
            Held::DeadLetterPending => "dead_letter_pending",
            Held::BacklogFull => "backlog_full",
        }
    }
}

impl SinkMetrics {
    pub fn new(sink: &str) -> Self {
        Self {
            sink: sink.to_owned(),
            ..Default::default()
        }
    }

    /// The sink was removed by a reload: it runs no config any more (its counters stay).
    pub fn set_removed(&self) {
        self.config_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Records the config the sink now runs.
    pub fn set_config(&self, spec: &crate::api::SinkSpec) {
        let hash = config_hash(spec);
        *self.config_hash.lock().unwrap_or_else(|p| p.into_inner()) = hash;
    }

    /// Sets whether the sink holds producers back for `reason`.
    pub fn set_held(&self, reason: Held, held: bool) {
        if let Some(c) = slot(&Held::ALL, &self.held, reason) {
            c.store(u64::from(held), Relaxed);
        }
    }

    pub fn reject(&self, reason: RejectReason) {
        count(slot(&RejectReason::ALL, &self.rejected, reason));
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        slot(&RejectReason::ALL, &self.rejected, reason).map_or(0, |c| c.load(Relaxed))
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Counts a backpressure answer.
    pub fn pushed_back(&self, pressure: Pressure) {
        count(slot(&Pressure::ALL, &self.backpressure, pressure));
    }

    /// Counts damage of `kind` (one of [`DAMAGE_KINDS`]) found in the spool.
    pub fn damaged(&self, kind: &str) {
        count(slot(&DAMAGE_KINDS, &self.spool_damage, kind));
    }

    pub fn load_attempt(&self, outcome: &str) {
        count(slot(&LOAD_OUTCOMES, &self.loads, outcome));
    }

    pub fn flushed(&self, trigger: FlushTrigger) {
        count(slot(&FlushTrigger::ALL, &self.flushes, trigger));
    }

    pub fn load_duration(&self, secs: f64) {
        self.load_duration.observe(secs);
    }

    /// Records accepted (framed and not rejected, or replayed from the spool) and not yet
    /// committed or dead-lettered.
    pub fn outstanding(&self) -> u64 {
        self.accepted().saturating_sub(self.finished())
    }

    /// Of the outstanding records, those the spool keeps for the next start.
    pub fn left_in_spool(&self) -> u64 {
        self.spooled
            .load(Relaxed)
            .saturating_sub(self.finished() + self.lost_to_damage.load(Relaxed))
    }

    fn finished(&self) -> u64 {
        self.loaded.load(Relaxed) + self.dead_lettered.load(Relaxed)
    }

    /// Seconds since the oldest record not yet committed or dead-lettered arrived.
    pub fn oldest_unloaded_age_secs(&self) -> u64 {
        match self.oldest_unloaded_unix_ms.load(Relaxed) {
            0 => 0,
            at => unix_ms(std::time::SystemTime::now()).saturating_sub(at) / 1000,
        }
    }

    /// Records that the oldest record not yet loaded arrived at `at` (`None`: there is none).
    pub fn set_oldest_unloaded(&self, at: Option<tokio::time::Instant>) {
        let ms = at.map_or(0, |at| {
            let age = tokio::time::Instant::now().saturating_duration_since(at);
            unix_ms(std::time::SystemTime::now() - age).max(1)
        });
        self.oldest_unloaded_unix_ms.store(ms, Relaxed);
    }

    pub fn accepted(&self) -> u64 {
        self.received
            .load(Relaxed)
            .saturating_sub(self.rejected_total())
            + self.replayed.load(Relaxed)
    }
}

/// The counter of `which` in `counters`, which holds one per value of `all`, in order.
fn slot<'a, T: PartialEq>(all: &[T], counters: &'a [AtomicU64], which: T) -> Option<&'a AtomicU64> {
    all.iter()
        .position(|v| *v == which)
        .and_then(|i| counters.get(i))
}

fn count(counter: Option<&AtomicU64>) {
    if let Some(c) = counter {
        c.fetch_add(1, Relaxed);
    }
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The series with one value per sink: name, type, help, value.
type Simple = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SinkMetrics) -> f64,
);
const SIMPLE: &[Simple] = &[
    (
        "starsink_records_received_total",
        "counter",
        "Lines read from producers, rejected ones included.",
        |s| s.received.load(Relaxed) as f64,
    ),
    (
        "starsink_records_loaded_total",
        "counter",
        "Records committed in StarRocks.",
        |s| s.loaded.load(Relaxed) as f64,
    ),
    (
        "starsink_records_dead_lettered_total",
        "counter",
        "Records written to the dead-letter directory.",
        |s| s.dead_lettered.load(Relaxed) as f64,
    ),
    (
        "starsink_bytes_loaded_total",
        "counter",
        "Stream Load body bytes committed.",
        |s| s.bytes_loaded.load(Relaxed) as f64,
    ),
    (
        "starsink_buffered_bytes",
        "gauge",
        "Bytes held in batches not yet committed.",
        |s| s.buffered_bytes.load(Relaxed) as f64,
    ),
    (
        "starsink_records_replayed_total",
        "counter",
        "Records the spool held at start, loaded by this run.",
        |s| s.replayed.load(Relaxed) as f64,
    ),
    (
        "starsink_records_spooled_total",
        "counter",
        "Records written to the spool: appended (once on disk), or found there at start.",
        |s| s.spooled.load(Relaxed) as f64,
    ),
    (
        "starsink_spool_bytes",
        "gauge",
        "Bytes the sink's spool takes on disk (0 without a spool).",
        |s| s.spool_bytes.load(Relaxed) as f64,
    ),
    (
        "starsink_spool_max_bytes",
        "gauge",
        "The spool's spoolMaxBytes (0 without a spool); at it, producers are held.",
        |s| s.spool_max_bytes.load(Relaxed) as f64,
    ),
    (
        "starsink_records_lost_total",
        "counter",
        "Accepted records lost while the loader ran: spooled batches that could not be read back. A loss at shutdown shows in the exit code and the last log line.",
        |s| s.lost_to_damage.load(Relaxed) as f64,
    ),
    (
        "starsink_ack_errors_dropped_total",
        "counter",
        "err lines not written to a producer because it left 1024 of them unread.",
        |s| s.ack_errs_dropped.load(Relaxed) as f64,
    ),
    (
        "starsink_unfinished_line_bytes",
        "gauge",
        "Bytes held in unfinished lines (no newline yet) across the sink's connections.",
        |s| s.unfinished_bytes.load(Relaxed) as f64,
    ),
    (
        "starsink_spool_errors_total",
        "counter",
        "Failed spool writes, syncs, reads and removals; while they fail the sink reads no producer.",
        |s| s.spool_errors.load(Relaxed) as f64,
    ),
    (
        "starsink_spool_read_back_bytes_total",
        "counter",
        "Bytes of batches read back from the spool (as Stream Load bodies): batches that waited on disk because the load before them took longer than the hold in memory (StarRocks down or slow), or that were in the spool at start or are retried to the dead-letter directory.",
        |s| s.spool_read_back_bytes.load(Relaxed) as f64,
    ),
    (
        "starsink_dead_letter_failures_total",
        "counter",
        "Failed writes of a refused batch's dead-letter file (retried; the batch is kept).",
        |s| s.dead_letter_failures.load(Relaxed) as f64,
    ),
    (
        "starsink_dead_letters_pending",
        "gauge",
        "Refused batches whose dead-letter file is not written yet.",
        |s| s.dead_letters_pending.load(Relaxed) as f64,
    ),
    (
        "starsink_oldest_unloaded_record_age_seconds",
        "gauge",
        "Age of the oldest record not yet committed or dead-lettered (0 when none); grows while StarRocks fails.",
        |s| s.oldest_unloaded_age_secs() as f64,
    ),
    (
        "starsink_flush_interval_seconds",
        "gauge",
        "The flush interval in effect: flush.interval, widened while StarRocks pushes back (up to flush.maxInterval).",
        |s| s.flush_interval_ms.load(Relaxed) as f64 / 1000.0,
    ),
];

/// The series with one value per sink and label value: name, type, help, the label, its
/// values, and the counts in the same order.
type Labelled = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    fn() -> Vec<&'static str>,
    fn(&SinkMetrics) -> &[AtomicU64],
);
const LABELLED: &[Labelled] = &[
    (
        "starsink_records_rejected_total",
        "counter",
        "Lines not loaded because they are not valid records.",
        "reason",
        || RejectReason::ALL.iter().map(|r| r.as_str()).collect(),
        |s| &s.rejected[..],
    ),
    (
        "starsink_loads_total",
        "counter",
        "Stream Load attempts and label-state checks, by outcome.",
        "outcome",
        || LOAD_OUTCOMES.to_vec(),
        |s| &s.loads[..],
    ),
    (
        "starsink_spool_damage_total",
        "counter",
        "Damage found in the spool, by kind: at start torn_tail (repaired, nothing lost), corrupt, bad_header, empty; while running unreadable (that batch is lost).",
        "kind",
        || DAMAGE_KINDS.to_vec(),
        |s| &s.spool_damage[..],
    ),
    (
        "starsink_flushes_total",
        "counter",
        "Batches sealed for loading, by what triggered them.",
        "trigger",
        || FlushTrigger::ALL.iter().map(|t| t.as_str()).collect(),
        |s| &s.flushes[..],
    ),
    (
        "starsink_backpressure_total",
        "counter",
        "Answers in which StarRocks asked for fewer loads, by what it is short of: versions, pending_rowsets, transactions, requests, compaction, memory. Each widens the flush interval.",
        "reason",
        || Pressure::ALL.iter().map(|p| p.as_str()).collect(),
        |s| &s.backpressure[..],
    ),
    (
        "starsink_producers_held",
        "gauge",
        "1 while the sink reads no producer (their writes wait), by why: spool_full, spool_failing, dead_letter_pending, backlog_full.",
        "reason",
        || Held::ALL.iter().map(|h| h.as_str()).collect(),
        |s| &s.held[..],
    ),
];

/// When this loader started, in Unix seconds: set by the first call (the loader's start).
pub fn start_time() -> f64 {
    static STARTED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(|| unix_ms(std::time::SystemTime::now()) as f64 / 1000.0)
}

/// Renders every sink's counters in the Prometheus text format.
pub fn render(sinks: &[Arc<SinkMetrics>], reloads: &ReloadCounts) -> String {
    let mut out = Exposition::default();
    // The conventional name: alerts tell a loader that started within their window (its
    // counters rose from 0 before the first scrape) from one Prometheus only began to see.
    out.family(
        "process_start_time_seconds",
        "gauge",
        "When the loader started, in Unix seconds.",
    )
    .sample("process_start_time_seconds", &[], start_time());
    out.family(
        "starsink_config_info",
        "gauge",
        "1 for the hash of the config each sink runs (a StarRocksSink's status.configHash).",
    );
    for s in sinks {
        let hash = s
            .config_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !hash.is_empty() {
            out.sample(
                "starsink_config_info",
                &[("sink", &s.sink), ("hash", &hash)],
                1,
            );
        }
    }
    out.family(
        "starsink_config_reload_total",
        "counter",
        "Config changes seen: applied, or rejected as invalid (the config in effect kept running).",
    );
    for (result, count) in [
        ("applied", &reloads.applied),
        ("rejected", &reloads.rejected),
    ] {
        out.sample(
            "starsink_config_reload_total",
            &[("result", result)],
            count.load(Relaxed),
        );
    }
    for (name, kind, help, get) in SIMPLE {
        out.family(name, kind, help);
        for s in sinks {
            out.sample(name, &[("sink", &s.sink)], get(s));
        }
    }
    for (name, kind, help, label, values, counts) in LABELLED {
        out.family(name, kind, help);
        for s in sinks {
            for (value, count) in values().into_iter().zip(counts(s)) {
                let labels = [("sink", s.sink.as_str()), (*label, value)];
                out.sample(name, &labels, count.load(Relaxed));
            }
        }
    }
    let duration = "starsink_load_duration_seconds";
    out.family(
        duration,
        "histogram",
        "Time from a batch's first send to its verdict.",
    );
    for s in sinks {
        out.histogram(duration, &[("sink", &s.sink)], &s.load_duration);
    }
    out.finish()
}
