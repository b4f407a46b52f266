//! The sink task's side of its spool: appends, syncs, repairs after a failure (the
//! sink reads no producer meanwhile), reading batches back, and what the spool held at
//! start.

use super::*;

/// With `spoolSync: interval`, written records reach the disk at most this long after...
pub(super) const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// ...or once this many bytes are waiting, whichever comes first.
pub(super) const SYNC_BYTES: usize = 4 << 20;

/// After a spool write fails, it is retried after this long, doubling up to...
pub(super) const REPAIR_FIRST: Duration = Duration::from_millis(50);

/// ...this.
pub(super) const REPAIR_MAX: Duration = Duration::from_secs(5);

/// Runs blocking file work (`fsync`, reads of the spool, removing segments) so that it
/// does not stall the other tasks of the async worker it runs on: on the multi-threaded
/// runtime the worker hands its other tasks over while this one blocks.
pub(super) fn blocking<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

impl SinkTask {
    /// Records a batch's verdict in the spool, if there is one (a failed write is
    /// repaired like any other).
    pub(super) fn record_verdict(&mut self, label: &str, outcome: Disposition) {
        if let Some(Err(e)) = self
            .spool
            .as_mut()
            .map(|s| blocking(|| s.done(label, outcome)))
        {
            self.spool_failed("verdict", e);
        }
    }

    /// A spool operation failed. Nothing is lost or switched off: the spool keeps what
    /// failed in its buffer, the sink stops reading producers (backpressure), and the
    /// repair is retried with backoff.
    pub(super) fn spool_failed(&mut self, what: &str, e: std::io::Error) {
        self.metrics.spool_errors.fetch_add(1, Relaxed);
        if self.spool_trouble.is_none() {
            tracing::error!(sink = %self.name, error = %e, "spool {what} failed; this sink reads no producer until the spool can be written again (retrying)");
            self.spool_trouble = Some(RetryAt::after(REPAIR_FIRST));
        }
    }

    /// Retries what failed in the spool. Once it works, batches sealed meanwhile may be
    /// sent, their lines acked (`acks: spooled`), and producers are read again.
    pub(super) fn repair_spool(&mut self) {
        let (Some(spool), Some(trouble)) = (self.spool.as_mut(), self.spool_trouble) else {
            self.spool_trouble = None;
            return;
        };
        match blocking(|| spool.repair()) {
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
    pub(super) fn spool_append(&mut self, chunk: &Chunk) -> u64 {
        let Some(spool) = self.spool.as_mut() else {
            return 0;
        };
        // A write to the page cache: quick enough to do in place (the syncs are not).
        let (seqs, written) = spool.append_chunk(&chunk.data, &chunk.ends);
        let synced = written.and_then(|()| match self.spool_sync {
            SpoolSync::Always => blocking(|| spool.sync()).map(|()| true),
            SpoolSync::Interval => {
                self.unsynced_bytes += chunk.data.len();
                if self.unsynced_bytes >= SYNC_BYTES {
                    self.unsynced_bytes = 0;
                    self.sync_due = None;
                    blocking(|| spool.sync()).map(|()| true)
                } else {
                    self.sync_due
                        .get_or_insert_with(|| Instant::now() + SYNC_INTERVAL);
                    Ok(false)
                }
            }
            // The page cache has it: it survives the process, which is all `never` promises.
            SpoolSync::Never => Ok(true),
        });
        if let Some(conn) = chunk.ack.as_ref().filter(|c| c.mode() == Acks::Spooled) {
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
    pub(super) fn spool_synced(&mut self) {
        for (conn, through) in self.unsynced_acks.drain(..) {
            conn.settle_through(through);
        }
    }

    /// A batch the spool held sealed at start: it waits on disk for its turn, and its
    /// label is resolved before any send.
    pub(super) fn replayed_batch(&self, pending: PendingBatch) -> Labelled {
        Labelled {
            target: self.clients.target().clone(),
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

    /// The next queued batch, with its body read back from the spool if it waited there.
    /// While the spool fails, a batch on disk (or one whose seal is not) stays queued.
    pub(super) fn take_backlog(&mut self) -> Option<Labelled> {
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
                    self.record_verdict(&next.label, Disposition::Committed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // The spool's bytes changed under it: what it cannot read back is
                    // gone, like damage found at start.
                    self.metrics.damaged("unreadable");
                    self.metrics
                        .lost_to_damage
                        .fetch_add(next.batch.rows, Relaxed);
                    tracing::error!(sink = %self.name, label = %next.label, rows = next.batch.rows, error = %e, "spool damage: this batch cannot be read back and is lost");
                    self.record_verdict(&next.label, Disposition::Committed);
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
    pub(super) fn read_back(
        &mut self,
        seqs: Option<Range<u64>>,
        label: &str,
        expected: u64,
    ) -> std::io::Result<Option<(Bytes, u64)>> {
        let (Some(spool), Some(seqs)) = (self.spool.as_mut(), seqs) else {
            return Ok(None);
        };
        let delimiter = body::record_end(self.format);
        // The body of the load that just ended, if it is spare: while loads run back to
        // back, the filling batch and the one read back are then all the bodies held.
        let mut body = self.filling.batch.take_spare().unwrap_or_default();
        // Room for a whole batch at once (a spare may be smaller): growing by doubling
        // could pass `maxBytes`.
        body.reserve_exact(self.policy.max_bytes.min(256 << 20));
        body.extend_from_slice(body::opening(self.format));
        let rows = blocking(|| spool.read_into(seqs, &mut body, delimiter))?;
        if rows == 0 {
            return Ok(None);
        }
        if rows != expected {
            tracing::warn!(sink = %self.name, label, expected, found = rows, "the spool gave back fewer records than the batch had (damage found at start)");
        }
        body::close(self.format, &mut body);
        let read = body.len() as u64;
        self.metrics.spool_read_back_bytes.fetch_add(read, Relaxed);
        Ok(Some((body.into(), rows)))
    }

    /// Takes what the spool held at start: sealed batches queue first, in seal order;
    /// records not yet in a batch come back as the first chunk, due at once.
    pub(super) fn take_replay(&mut self, replay: Replay) {
        let mut count = 0;
        for pending in replay.sealed {
            count += pending.rows;
            let batch = self.replayed_batch(pending);
            self.queue.backlog.push_back(batch);
        }
        if let Some((first, _)) = replay.unsealed.first() {
            let records: Vec<Bytes> = replay.unsealed.iter().map(|(_, r)| r.clone()).collect();
            count += records.len() as u64;
            let mut chunk = Chunk::from_records(&records);
            // They waited through a restart already: due at once.
            chunk.arrived = Instant::now()
                .checked_sub(self.policy.interval)
                .unwrap_or_else(Instant::now);
            self.filling.leftover = Some((chunk, 0, *first));
        }
        self.metrics.replayed.fetch_add(count, Relaxed);
        self.metrics.spooled.fetch_add(count, Relaxed);
    }
}
