//! The loader (`starsink loader`): Unix sockets in, Stream Load out.
//!
//! ```text
//! app ──lines──▶ socket ──▶ connection task ──(bounded channel)──▶ sink task ──▶ Stream Load
//!                 one per sink     one per connection                one per sink   one load in flight
//! ```
//!
//! (In Merge Commit async, batches whose rows wait for their windows do not count as in
//! flight: the next one is sent beside them; see `sink_task`.)
//!
//! The running sinks are one set (`sinks`): started at start, and added, removed or moved
//! to another socket by `reload`, which reads the config again when its files change or
//! on SIGHUP and hands each sink task its new config (applied at a batch boundary).

pub mod ack;
pub mod batch;
pub mod chunker;
pub mod dead_letter;
pub mod framing;
pub mod json;
pub mod line_budget;
pub mod metrics;
pub mod record;
pub mod reload;
pub mod row_id;
pub mod shutdown;
pub mod sink_task;
pub mod sinks;
pub mod socket;
pub mod spool;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::api::LoaderConfig;
use reload::ConfigSource;
use shutdown::{Accounting, Phases};
use sinks::Sinks;
use socket::SocketError;

/// Chunks (each at most one socket read of records) queued per sink before connections
/// stop being read.
pub(crate) const CHANNEL_CHUNKS: usize = 16;

/// With a spool, a batch sealed while another loads waits in memory, producers held, at
/// most this long; then it waits on disk instead (read back when its turn comes) and
/// producers are read again. A healthy load ends well within it, so the batch is never
/// written out and read back only to be sent; an outage or a slow one does not hold
/// producers longer than this.
pub const HOLD_BEHIND_LOAD: Duration = Duration::from_secs(1);

/// How long, once every sink is done, the loader waits for the last acks to be written.
const ACK_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("sink {sink}: {source}")]
    Socket { sink: String, source: SocketError },
    #[error("sink {sink}: {message}")]
    Client { sink: String, message: String },
    #[error("{0}")]
    Metrics(String),
    #[error("sink {sink}: {source}")]
    Spool {
        sink: String,
        source: spool::store::SpoolError,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The label prefix in effect: `labelPrefix`, or the hostname (a pod's name).
pub fn label_prefix(config: &LoaderConfig) -> String {
    config.label_prefix.clone().unwrap_or_else(hostname)
}

/// This host's name (in Kubernetes, the pod's name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "starsink".into())
}

/// Runs the loader until a signal stops it; returns what happened to every record. It
/// reads `source` again on SIGHUP and when its files change.
pub async fn run(config: LoaderConfig, source: ConfigSource) -> Result<Accounting, LoaderError> {
    metrics::start_time();
    large_buffers_from_the_kernel();
    let connections = Arc::new(tokio::sync::Semaphore::new(producer_budget(&config)));
    for issue in config.ignored() {
        tracing::warn!("{issue}");
    }
    let phases = Phases::default();
    let budget = config.shutdown_timeout.0;
    // Keep a moment of the budget for the final accounting and exit.
    let deadline_after = budget.saturating_sub((budget / 20).min(Duration::from_millis(500)));
    let (reload_tx, reload_rx) = mpsc::channel(1);
    shutdown::watch_signals(
        phases.clone(),
        config.drain_timeout(),
        deadline_after,
        reload_tx.clone(),
    )
    .map_err(LoaderError::Signals)?;
    let files: Vec<_> = source.files().map(Path::to_owned).collect();
    if let Err(e) = reload::watch(&files, reload_tx) {
        tracing::warn!(error = %e, "the config files are not watched for changes; SIGHUP still reloads them");
    }

    // Spools first: one that cannot be opened stops the start before any socket exists.
    let spools = config
        .sinks
        .iter()
        .map(open_spool)
        .collect::<Result<Vec<_>, _>>()?;
    let prefix = label_prefix(&config);
    let timing = (config.drain_timeout(), deadline_after);
    let sinks = Arc::new(Sinks::new(
        prefix.clone(),
        phases.clone(),
        timing,
        connections,
    ));
    let mut handles = Vec::new();
    for (sink, spool) in config.sinks.iter().zip(spools) {
        handles.push(sinks.start(sink, spool).await?);
    }
    let reloads = Arc::new(metrics::ReloadCounts::default());
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = config.metrics_addr {
        let exposed = (sinks.registry().clone(), reloads.clone());
        serve_metrics(addr, exposed, ready.clone(), phases.abort.clone()).await?;
    }
    let count = handles.len();
    let running = config.clone();
    let stop = phases.stop.clone();
    let reloading = reload::run(
        source,
        running,
        sinks.clone(),
        handles,
        reload_rx,
        reloads,
        stop,
    );
    tokio::spawn(reloading);
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let (stop, not_ready) = (phases.stop.clone(), ready.clone());
    tokio::spawn(async move {
        stop.cancelled().await;
        not_ready.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    tracing::info!(sinks = count, label_prefix = %prefix, "loader ready");

    tokio::select! {
        _ = sinks.wait() => {}
        _ = phases.abort.cancelled() => {}
    }
    // Producers waiting for their last `ok` get it: each writer ends once its lines are
    // settled, its producer is gone, or the deadline passes.
    // A producer that does not read its acks gets a short grace, not the whole budget.
    let ack_writers = sinks.ack_writers();
    ack_writers.close();
    tokio::select! {
        _ = ack_writers.wait() => {}
        _ = tokio::time::sleep(ACK_GRACE) => {}
        _ = phases.deadline.cancelled() => {}
        _ = phases.abort.cancelled() => {}
    }
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let all = sinks
        .registry()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Accounting::of(&all))
}

/// Producer connections the loader serves at once, across its sinks: its descriptor
/// limit (raised to the hard limit first) less a reserve.
fn producer_budget(config: &LoaderConfig) -> usize {
    let fd_limit = match crate::accept::raise_fd_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-descriptor limit; assuming 1024");
            1024
        }
    };
    let budget = crate::accept::connection_budget(
        fd_limit,
        crate::accept::open_descriptors().unwrap_or(16),
        config.sinks.len() as u64,
    );
    tracing::debug!(fd_limit, producer_connections = budget, "descriptors");
    budget
}

/// Opens a sink's spool, if it has one, and says what it found.
pub(crate) fn open_spool(
    sink: &crate::api::SinkSpec,
) -> Result<Option<(spool::store::Spool, spool::store::Replay)>, LoaderError> {
    let Some(dir) = &sink.spool_dir else {
        return Ok(None);
    };
    let (spool, replay) =
        spool::store::Spool::open(dir, sink.spool_max_bytes.0).map_err(|source| {
            LoaderError::Spool {
                sink: sink.name.clone(),
                source,
            }
        })?;
    for (file, damage) in &replay.damage {
        tracing::warn!(sink = %sink.name, file = %file.display(), "spool damage repaired: {damage}");
    }
    if replay.orphaned > 0 {
        tracing::warn!(sink = %sink.name, records = replay.orphaned, "spool damage took the labels of some batches; their records load again under new labels (rows StarRocks already had from them will be duplicated)");
    }
    let unsealed = replay.unsealed.len();
    let sealed: u64 = replay.sealed.iter().map(|b| b.rows).sum();
    if unsealed as u64 + sealed > 0 {
        tracing::info!(sink = %sink.name, sealed_batches = replay.sealed.len(), sealed_records = sealed, unsealed_records = unsealed, "spool replay: loading what the last run left");
    }
    Ok(Some((spool, replay)))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    (sinks, reloads): (sinks::Registry, Arc<metrics::ReloadCounts>),
    ready: Arc<AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), LoaderError> {
    let listener = crate::telemetry::bind(addr, "metricsAddr")
        .await
        .map_err(LoaderError::Metrics)?;
    // Port 0 takes any free port: the log says which.
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(addr = %bound, "serving metrics");
    }
    tokio::spawn(crate::telemetry::serve(
        listener,
        Arc::new(move || {
            let all = sinks.read().unwrap_or_else(|p| p.into_inner()).clone();
            metrics::render(&all, &reloads)
        }),
        ready,
        stop,
    ));
    Ok(())
}

/// Batch bodies and bodies read back from the spool (up to `maxBytes` each) are mapped
/// from the kernel and unmapped when freed, never kept in the allocator's heap. glibc
/// otherwise raises its mmap threshold after the first large free (up to 32 MiB) and
/// serves later bodies from its arenas, which keep freed memory: with a spool the peak RSS
/// then reached four 64 MiB bodies instead of two (`cargo bench --bench loader`). A fixed
/// threshold also lets a growing body be moved by `mremap` instead of copied.
fn large_buffers_from_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator (it takes the allocator's own locks); a
    // failure (return 0) leaves the default behaviour, which is correct, only larger.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
