//! One load: the task that delivers a sealed batch under its label and counts its
//! verdict, and what the sink task does with that verdict.

use super::*;

pub(super) struct InFlight {
    /// Gives back the client, the verdict and the body (for reuse).
    pub(super) handle: JoinHandle<(StreamLoadClient, LoadEnd, bytes::Bytes)>,
    pub(super) trigger: FlushTrigger,
    pub(super) label: String,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) seqs: Option<Range<u64>>,
    pub(super) oldest: Instant,
    /// Backpressure answers counted before this load began.
    pub(super) pressure_before: u64,
    /// Its rows are in a Merge Commit window and it only asks for the window's
    /// transaction: another load may send meanwhile.
    pub(super) in_window: Arc<AtomicBool>,
}

impl InFlight {
    pub(super) fn parked(&self) -> bool {
        self.in_window.load(Relaxed)
    }
}

pub(super) fn log_attempt(sink: &str, label: &str, attempt: &Attempt) {
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
        Attempt::InWindow(txn) => {
            tracing::debug!(sink, label, window = %txn, "in a Merge Commit window; asking for its transaction until it commits")
        }
        Attempt::WindowFailed(why) => {
            tracing::warn!(sink, label, reason = %why, "the Merge Commit window failed (for every loader in it, and perhaps for another loader's rows); sending the batch again")
        }
        Attempt::Backpressure(why, pressure) => {
            tracing::warn!(sink, label, reason = %why, pressure = pressure.as_str(), "StarRocks asks for fewer loads; retrying with the same label after a backoff, and flushing less often")
        }
    }
}

impl SinkTask {
    /// A load's verdict: recorded in the spool, counted, acked; a refused batch whose
    /// dead-letter file could not be written is kept for a retry.
    pub(super) fn finish_load(&mut self, finished: InFlight, verdict: LoadEnd, body: Bytes) {
        let outcome = match &verdict {
            LoadEnd::Committed => Disposition::Committed,
            LoadEnd::DeadLettered => Disposition::DeadLettered,
            LoadEnd::Refused(refusal) => {
                self.keep_refused(finished, refusal.clone(), body);
                return;
            }
        };
        self.record_verdict(&finished.label, outcome);
        let dead_lettered = outcome == Disposition::DeadLettered;
        self.settle_acks(&finished.label, dead_lettered);
        if outcome == Disposition::Committed
            && *self.pressure_seen.borrow() == finished.pressure_before
        {
            let before = self.interval.now();
            self.interval.narrow();
            self.interval_changed(before);
        }
        match finished.trigger {
            FlushTrigger::Size | FlushTrigger::Rows => {
                if let Ok(body) = body.try_into_mut() {
                    self.filling.batch.recycle(body.into());
                }
            }
            FlushTrigger::Interval | FlushTrigger::Shutdown | FlushTrigger::Reload => {
                self.filling.batch.release_spare()
            }
        }
    }

    /// Starts loading `next` on a task of its own, lending it the client. Its lines
    /// join the queue of verdicts in seal order.
    pub(super) fn start_load(&mut self, client: StreamLoadClient, mut next: Labelled) -> InFlight {
        let acks = std::mem::take(&mut next.acks);
        self.ack_queue.push_back((next.label.clone(), acks, None));
        let in_window = Arc::new(AtomicBool::new(false));
        let (label, seqs, oldest) = (next.label.clone(), next.seqs.clone(), next.oldest);
        let (trigger, rows, bytes) = (
            next.batch.trigger,
            next.batch.rows,
            next.batch.body.len() as u64,
        );
        let job = LoadJob {
            client,
            label: next.label,
            batch: next.batch,
            start: next.start,
            retry: self.retry,
            metrics: self.metrics.clone(),
            sink: self.name.clone(),
            dead_letter_dir: self.dead_letter_dir.clone(),
            format: self.format,
            pressure: self.pressure.clone(),
            in_window: in_window.clone(),
            parked: self.parked.clone(),
        };
        // Counted before the load can meet any backpressure.
        let pressure_before = *self.pressure_seen.borrow();
        InFlight {
            handle: tokio::spawn(job.run()),
            trigger,
            label,
            rows,
            bytes,
            seqs,
            oldest,
            pressure_before,
            in_window,
        }
    }
}

/// One batch's load, run as a task of its own: it delivers the batch under its label,
/// writes its dead-letter file if StarRocks refuses it, and counts the verdict, then
/// gives the client, the verdict and the body back.
struct LoadJob {
    client: StreamLoadClient,
    label: String,
    batch: Sealed,
    start: Start,
    retry: RetrySpec,
    metrics: Arc<SinkMetrics>,
    sink: String,
    dead_letter_dir: PathBuf,
    format: Format,
    /// Where backpressure answers are counted, waking the sink task.
    pressure: Arc<watch::Sender<u64>>,
    /// Set while the batch's rows wait in a Merge Commit window...
    in_window: Arc<AtomicBool>,
    /// ...where entering one is counted, waking the sink task to send the next batch.
    parked: Arc<watch::Sender<u64>>,
}

impl LoadJob {
    async fn run(mut self) -> (StreamLoadClient, LoadEnd, Bytes) {
        let started = std::time::Instant::now();
        let delivered = self.deliver(started).await;
        let secs = started.elapsed().as_secs_f64();
        self.metrics.load_duration(secs);
        let (sink, label, rows) = (&self.sink, &self.label, self.batch.rows);
        let verdict = match delivered {
            Delivered::Committed { filtered_rows } => {
                if filtered_rows > 0 {
                    tracing::warn!(sink = %sink, label = %label, filtered_rows, "StarRocks filtered rows of a committed load");
                }
                tracing::info!(sink = %sink, label = %label, rows, ms = (secs * 1000.0) as u64, outcome = "committed", "load");
                LoadEnd::Committed
            }
            Delivered::Refused {
                reason,
                error_url,
                uncertain,
                miscounted,
            } => {
                self.dead_letter(Refusal {
                    reason,
                    error_url,
                    uncertain,
                    miscounted,
                })
                .await
            }
        };
        // Counted here, as the verdict is known, not when the sink task next looks:
        // after a second signal the process exits without waiting for it, and a
        // committed batch must not be reported lost.
        match verdict {
            LoadEnd::Committed => {
                self.metrics.loaded.fetch_add(rows, Relaxed);
                let bytes = self.batch.body.len() as u64;
                self.metrics.bytes_loaded.fetch_add(bytes, Relaxed);
            }
            LoadEnd::DeadLettered => {
                self.metrics.dead_lettered.fetch_add(rows, Relaxed);
            }
            LoadEnd::Refused(_) => {}
        }
        (self.client, verdict, self.batch.body)
    }

    /// Delivers the batch, counting and logging each attempt, and logging an error each
    /// `retry.warnAfter` while it keeps failing.
    async fn deliver(&mut self, started: std::time::Instant) -> Delivered {
        let (sink, label, rows) = (&self.sink, &self.label, self.batch.rows);
        let (metrics, retry, pressure) = (&self.metrics, self.retry, &self.pressure);
        let (in_window, parked) = (&self.in_window, &self.parked);
        let mut warn_after = retry.warn_after.0;
        deliver_from(
            &mut self.client,
            label,
            &self.batch.body,
            rows,
            &retry,
            self.start,
            |a| {
                metrics.load_attempt(a.outcome());
                if let Attempt::Backpressure(_, p) = a {
                    metrics.pushed_back(*p);
                    pressure.send_modify(|n| *n += 1);
                }
                match a {
                    Attempt::InWindow(_) => {
                        in_window.store(true, Relaxed);
                        parked.send_modify(|n| *n += 1);
                    }
                    // Polling the window goes on; anything else sends again.
                    Attempt::Pending | Attempt::StateUnavailable(_) => {}
                    _ => in_window.store(false, Relaxed),
                }
                log_attempt(sink, label, a);
                let waited = started.elapsed();
                if waited >= warn_after && *a != Attempt::Committed {
                    tracing::error!(sink = %sink, label = %label, rows, waited_s = waited.as_secs(), "this batch has failed for {}s and is still retried under its label; producers wait once the sink's buffers are full (see starsink_oldest_unloaded_record_age_seconds)", waited.as_secs());
                    warn_after += retry.warn_after.0;
                }
            },
        )
        .await
    }

    /// Writes the refused batch's dead-letter file; if that fails, the sink task keeps
    /// the batch and retries.
    async fn dead_letter(&self, refusal: Refusal) -> LoadEnd {
        let (sink, label, rows) = (&self.sink, &self.label, self.batch.rows);
        let dir = &self.dead_letter_dir;
        let written = dead_letter::write(
            dir,
            sink,
            label,
            self.format,
            &self.batch.body,
            rows,
            &refusal,
        )
        .await;
        match written {
            Ok(path) => {
                self.metrics.load_attempt("dead_lettered");
                tracing::error!(sink = %sink, label = %label, rows, reason = %refusal.reason, error_url = refusal.error_url.as_deref().unwrap_or(""), file = %path.display(), outcome = "dead_lettered", "load refused; batch written to the dead-letter directory");
                LoadEnd::DeadLettered
            }
            Err(e) => {
                self.metrics.dead_letter_failures.fetch_add(1, Relaxed);
                tracing::error!(sink = %sink, label = %label, rows, reason = %refusal.reason, dir = %dir.display(), error = %e, "load refused and its dead-letter file cannot be written; the batch is kept and the write retried");
                LoadEnd::Refused(refusal)
            }
        }
    }
}
