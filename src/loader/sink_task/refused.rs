//! Refused batches whose dead-letter file waits for a retry, and the order in which
//! verdicts reach producers (`ok N` covers every line up to N).

use super::*;

/// After a dead-letter file cannot be written, it is retried after this long, doubling
/// up to...
pub(super) const DEAD_LETTER_FIRST: Duration = Duration::from_secs(1);

/// ...this.
pub(super) const DEAD_LETTER_MAX: Duration = Duration::from_secs(60);

/// A refused batch waiting for its dead-letter file. With a spool its body waits on
/// disk (sealed, without a verdict, so a restart keeps it too); without one, in memory.
pub(super) struct Refused {
    pub(super) label: String,
    pub(super) rows: u64,
    pub(super) body: Bytes,
    pub(super) seqs: Option<Range<u64>>,
    pub(super) on_disk: bool,
    pub(super) refusal: Refusal,
    pub(super) oldest: Instant,
}

impl SinkTask {
    /// A batch's verdict reaches the producers whose lines it holds. Committed lines are
    /// settled; with `acks: committed`, lines of a dead-lettered batch get an `err` first.
    pub(super) fn ack_verdict(&self, parts: Vec<AckPart>, dead_lettered: bool) {
        for part in parts {
            if dead_lettered && part.conn.mode() == Acks::Committed {
                part.conn.report(part.first, part.count, "dead_lettered");
            }
            part.conn.settle_through(part.first + part.count - 1);
        }
    }

    /// A batch's verdict is known (for a refused batch: its file is written): its lines,
    /// and those of the batches sealed after it that were held until now for it, get
    /// their answers, in seal order.
    pub(super) fn settle_acks(&mut self, label: &str, dead_lettered: bool) {
        if let Some(entry) = self.ack_queue.iter_mut().find(|e| e.0 == label) {
            entry.2 = Some(dead_lettered);
        }
        while let Some((_, _, Some(_))) = self.ack_queue.front() {
            if let Some((_, acks, Some(dead_lettered))) = self.ack_queue.pop_front() {
                self.ack_verdict(acks, dead_lettered);
            }
        }
    }

    /// Keeps a refused batch until its dead-letter file is written: on disk when the
    /// spool has it (the sink goes on loading), else in memory (producers wait).
    pub(super) fn keep_refused(&mut self, finished: InFlight, refusal: Refusal, body: Bytes) {
        let on_disk = self.spool.is_some() && finished.seqs.is_some();
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
    pub(super) fn retry_dead_letter(&mut self) {
        let Some(mut refused) = self.refused.pop_front() else {
            return;
        };
        if refused.on_disk {
            match self.read_back(refused.seqs.clone(), &refused.label, refused.rows) {
                Ok(Some((body, _))) => refused.body = body,
                // Nothing survived to write: the verdict alone is recorded.
                Ok(None) => {
                    tracing::warn!(sink = %self.name, label = %refused.label, "none of this refused batch's records survived damage to the spool; no dead-letter file to write");
                    self.refused_settled(&refused.label);
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

    /// A refused batch is done with (its file written, or nothing left to write): its
    /// verdict is recorded, its lines answered, and the next refused batch tried.
    fn refused_settled(&mut self, label: &str) {
        self.record_verdict(label, Disposition::DeadLettered);
        self.settle_acks(label, true);
        self.metrics
            .dead_letters_pending
            .store(self.refused.len() as u64, Relaxed);
        if !self.refused.is_empty() {
            self.dead_letter_retry = Some(RetryAt::after(Duration::ZERO));
        }
    }

    /// The outcome of a retried dead-letter write.
    pub(super) fn dead_letter_written(
        &mut self,
        mut refused: Refused,
        result: std::io::Result<PathBuf>,
    ) {
        match result {
            Ok(path) => {
                self.metrics.load_attempt("dead_lettered");
                self.metrics.dead_lettered.fetch_add(refused.rows, Relaxed);
                tracing::error!(sink = %self.name, label = %refused.label, rows = refused.rows, reason = %refused.refusal.reason, file = %path.display(), outcome = "dead_lettered", "refused batch written to the dead-letter directory");
                self.dead_letter_backoff = Duration::ZERO;
                self.refused_settled(&refused.label);
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
}
