//! The sink task: sole owner of its sink's batches. It fills one batch from the channel
//! while at most one other is being loaded, seals on size, rows, the oldest record's
//! deadline or shutdown, and stops reading (backpressure) when a sealed batch must wait.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{Format, RetrySpec, SinkSpec};
use crate::loader::batch::{Batch, Chunk, FlushPolicy, FlushTrigger, Sealed};
use crate::loader::metrics::SinkMetrics;
use crate::stream_load::{deliver, Attempt, Delivered, LabelGen, StreamLoadClient};

/// Once shutdown has begun, records still arriving on open connections wait at most this
/// long before they are flushed, whatever the sink's interval.
const SHUTDOWN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// A sealed batch with its label, fixed for the rest of its life.
struct Labelled {
    label: String,
    batch: Sealed,
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
    rows: u64,
    bytes: u64,
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
        }
    }

    /// Runs until the channel is closed and everything is loaded, or the deadline passes.
    pub async fn run(mut self, stopping: Stopping) {
        let mut filling = Batch::new(self.format, self.policy);
        // The rest of a chunk that did not fit in the batch it arrived at.
        let mut leftover: Option<(Chunk, usize)> = None;
        // A sealed batch waiting for the load in flight; while it waits, nothing is read.
        let mut waiting: Option<Labelled> = None;
        let mut in_flight: Option<InFlight> = None;
        let mut input_open = true;
        let mut stop_seen = false;

        loop {
            if in_flight.is_none() {
                if let Some(next) = waiting.take() {
                    in_flight = Some(self.start_load(next));
                }
            }
            if waiting.is_none() {
                if let Some((chunk, from)) = leftover.take() {
                    if let Some((next, trigger)) = filling.push(&chunk, from) {
                        waiting = self.seal(&mut filling, trigger);
                        leftover = (next < chunk.rows()).then_some((chunk, next));
                    }
                    self.update_buffered(&filling, &waiting, &in_flight);
                    continue;
                }
            }
            if !input_open && waiting.is_none() && leftover.is_none() {
                if !filling.is_empty() {
                    waiting = self.seal(&mut filling, FlushTrigger::Shutdown);
                    continue;
                }
                if in_flight.is_none() {
                    break;
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
                            match finished.trigger {
                                FlushTrigger::Size | FlushTrigger::Rows => {
                                    if let Ok(body) = body.try_into_mut() {
                                        filling.recycle(body.into());
                                    }
                                }
                                FlushTrigger::Interval | FlushTrigger::Shutdown => filling.release_spare(),
                            }
                            match verdict {
                                Verdict::Committed => {
                                    self.metrics.loaded.fetch_add(finished.rows, Relaxed);
                                    self.metrics.bytes_loaded.fetch_add(finished.bytes, Relaxed);
                                }
                                Verdict::DeadLettered => {
                                    self.metrics.dead_lettered.fetch_add(finished.rows, Relaxed);
                                }
                                Verdict::Lost => {}
                            }
                        }
                        Err(e) => {
                            tracing::error!(sink = %self.name, error = %e, "load task failed; its records are lost");
                            return;
                        }
                    }
                }
                _ = stopping.stop.cancelled(), if !stop_seen => {
                    stop_seen = true;
                    if waiting.is_none() && !filling.is_empty() {
                        waiting = self.seal(&mut filling, FlushTrigger::Shutdown);
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && waiting.is_none() => {
                    waiting = self.seal(&mut filling, FlushTrigger::Interval);
                }
                chunk = self.rx.recv(), if input_open && waiting.is_none() && leftover.is_none() => {
                    match chunk {
                        Some(chunk) => leftover = Some((chunk, 0)),
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
    }

    fn seal(&mut self, filling: &mut Batch, trigger: FlushTrigger) -> Option<Labelled> {
        let batch = filling.seal(trigger)?;
        let label = self.labels.next_label();
        self.metrics.flushed(trigger);
        tracing::info!(
            sink = %self.name,
            trigger = trigger.as_str(),
            rows = batch.rows,
            bytes = batch.body.len(),
            label = %label,
            "flush"
        );
        Some(Labelled { label, batch })
    }

    fn start_load(&mut self, next: Labelled) -> InFlight {
        let Some(mut client) = self.client.take() else {
            unreachable!("the client is back whenever no load is in flight");
        };
        let rows = next.batch.rows;
        let bytes = next.batch.body.len() as u64;
        let trigger = next.batch.trigger;
        let retry = self.retry;
        let metrics = self.metrics.clone();
        let name = self.name.clone();
        let dir = self.dead_letter_dir.clone();
        let format = self.format;
        let handle = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let Labelled { label, batch } = next;
            let delivered = deliver(&mut client, &label, &batch.body, &retry, |a| {
                metrics.load_attempt(a.outcome());
                log_attempt(&name, &label, a);
            })
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
            (client, verdict, batch.body)
        });
        InFlight {
            handle,
            trigger,
            rows,
            bytes,
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
