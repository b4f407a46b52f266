//! The batch being filled (with what travels with it) and the queue of sealed batches.

use super::*;

/// The batch being filled, with what travels with its records.
pub(super) struct Filling {
    pub(super) batch: Batch,
    /// The spool sequence numbers of its records.
    pub(super) seqs: Option<Range<u64>>,
    /// The producers' lines in it.
    pub(super) acks: Vec<AckPart>,
    /// The rest of a chunk that did not fit in the batch it arrived at: the chunk, its
    /// first record not taken, and the sequence number of its first record.
    pub(super) leftover: Option<(Chunk, usize, u64)>,
}

impl Filling {
    /// Takes what it can of the leftover chunk into the batch; returns the trigger when
    /// that filled the batch (the rest stays leftover for the next one).
    pub(super) fn take_leftover(&mut self) -> Option<FlushTrigger> {
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
pub(super) struct Queue {
    pub(super) waiting: Option<Labelled>,
    pub(super) backlog: VecDeque<Labelled>,
}

impl Queue {
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_none() && self.backlog.is_empty()
    }
}
