//! The batch a sink task fills: records already encoded as the Stream Load body, plus
//! the pure policy that says when it must be flushed.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::api::{Format, SinkSpec};
use crate::stream_load::body::{self, Body};

/// Records from one connection read, each followed by `\n` (as lines, and as the spool
/// stores them; the batch writes the body's record end). `ends[i]` is where record `i`
/// ends in `data`.
#[derive(Debug)]
pub struct Chunk {
    pub data: Bytes,
    pub ends: Vec<u32>,
    /// The memory `data` keeps alive while it is referenced: the size of the buffer it is
    /// a slice of, when nothing read later is put in that buffer; [`SHARED_BUFFER`] when
    /// something may be. A batch keeps a reference to CSV records instead of a copy only
    /// where this is about their size (see [`Batch::push`]).
    pub backing: usize,
    /// When the bytes were read from the socket: the start of the records' wait.
    pub arrived: Instant,
    /// The producer's connection, when it wants acks. Its records in this chunk are
    /// then consecutive lines of the connection, starting at `first_line`.
    pub ack: Option<std::sync::Arc<crate::loader::ack::ConnAck>>,
    /// The connection line number (1-based) of the first record.
    pub first_line: u64,
}

impl Chunk {
    pub fn rows(&self) -> usize {
        self.ends.len()
    }

    /// Records (each without its line end) as one chunk, not tied to a connection.
    pub fn from_records<R: AsRef<[u8]>>(records: &[R]) -> Chunk {
        let mut data = Vec::with_capacity(records.iter().map(|r| r.as_ref().len() + 1).sum());
        let mut ends = Vec::with_capacity(records.len());
        for r in records {
            data.extend_from_slice(r.as_ref());
            data.push(b'\n');
            ends.push(u32::try_from(data.len()).unwrap_or(u32::MAX));
        }
        Chunk {
            ack: None,
            first_line: 1,
            backing: data.capacity(),
            data: data.into(),
            ends,
            arrived: Instant::now(),
        }
    }
}

/// The [`Chunk::backing`] of records in a buffer that later reads share.
pub const SHARED_BUFFER: usize = usize::MAX;

/// A run of CSV records is referenced from its read buffer rather than copied only when
/// the buffer is at most this share larger than the run (1/8): a batch's memory stays
/// within `maxBytes`, and waste could at most end a batch that much early.
const WASTE_SHARE: usize = 8;

/// Why a batch was sealed; the `trigger` label of `starsink_flushes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushTrigger {
    Size,
    Rows,
    Interval,
    Shutdown,
    /// The sink's target changed: what it holds goes where it was accepted for.
    Reload,
}

impl FlushTrigger {
    pub const ALL: [FlushTrigger; 5] = [
        FlushTrigger::Size,
        FlushTrigger::Rows,
        FlushTrigger::Interval,
        FlushTrigger::Shutdown,
        FlushTrigger::Reload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FlushTrigger::Size => "size",
            FlushTrigger::Rows => "rows",
            FlushTrigger::Interval => "interval",
            FlushTrigger::Shutdown => "shutdown",
            FlushTrigger::Reload => "reload",
        }
    }
}

/// Once shutdown has begun, records still arriving on open connections wait at most this
/// long before they are flushed, whatever the sink's interval.
pub const SHUTDOWN_INTERVAL: Duration = Duration::from_millis(200);

/// The flush limits of one sink. Size and rows are applied as records go in
/// ([`Batch::push`] stops at either); time by [`FlushPolicy::flush_at`].
#[derive(Clone, Copy, Debug)]
pub struct FlushPolicy {
    pub max_bytes: usize,
    pub max_rows: u64,
    pub interval: Duration,
}

impl FlushPolicy {
    /// When a batch whose oldest record arrived at `oldest` must be flushed: `interval`
    /// after it, or at most [`SHUTDOWN_INTERVAL`] after it once the sink is stopping.
    /// `None` for an empty batch. A time already past means now.
    pub fn flush_at(&self, oldest: Option<Instant>, stopping: bool) -> Option<Instant> {
        let wait = if stopping {
            self.interval.min(SHUTDOWN_INTERVAL)
        } else {
            self.interval
        };
        oldest.map(|t| t + wait)
    }

    pub fn of(sink: &SinkSpec) -> Self {
        Self {
            max_bytes: usize::try_from(sink.flush.max_bytes.0).unwrap_or(usize::MAX),
            max_rows: sink.flush.max_rows,
            interval: sink.flush.interval.0,
        }
    }
}

/// The flush interval in effect. Each backpressure answer from StarRocks doubles it, up to
/// `most`; every [`CLEAN_LOADS`] loads in a row that meet none take a fifth off, down to
/// the configured `base`. A fleet that loads a table too often so slows itself down
/// before StarRocks refuses it, and batches grow instead; it comes back only after a
/// clean period, so that it does not return in one step to the rate that hurt
/// (`shared/design/fleet.md` §7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveInterval {
    base: Duration,
    most: Duration,
    now: Duration,
    /// Loads in a row that met no backpressure since the interval last changed.
    clean: u32,
}

/// Loads in a row without backpressure before the interval narrows a step.
pub const CLEAN_LOADS: u32 = 3;

impl AdaptiveInterval {
    pub fn new(base: Duration, most: Duration) -> Self {
        Self {
            base,
            most: most.max(base),
            now: base,
            clean: 0,
        }
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    /// The same after a config change: the configured interval if backpressure had not
    /// widened it; a widened one stays as far as the new bounds allow, so that a fleet
    /// held back by StarRocks is not let loose by an edit.
    pub fn rebased(self, base: Duration, most: Duration) -> Self {
        let most = most.max(base);
        let now = if self.now > self.base {
            self.now.clamp(base, most)
        } else {
            base
        };
        Self {
            base,
            most,
            now,
            clean: 0,
        }
    }

    /// After a backpressure answer.
    pub fn widen(&mut self) {
        self.now = self.now.saturating_mul(2).min(self.most);
        self.clean = 0;
    }

    /// The interval the next batches wait, for a `draw` in `[0, 1)`: `now`, less up to a
    /// quarter once backpressure has widened it. Loaders that started together widen
    /// together; without the spread they would go on flushing in step, in bursts the
    /// table cannot take (`shared/design/fleet.md` §7.2, §7.3: jitter the interval).
    pub fn spread(&self, draw: f64) -> Duration {
        if self.now > self.base {
            let cut = self.now.mul_f64(draw.clamp(0.0, 1.0) / 4.0);
            (self.now - cut).max(self.base)
        } else {
            self.now
        }
    }

    /// After a load that met no backpressure.
    pub fn narrow(&mut self) {
        self.clean += 1;
        if self.clean >= CLEAN_LOADS {
            self.now = (self.now * 4 / 5).max(self.base);
            self.clean = 0;
        }
    }
}

/// A batch being filled. Invariants: its encoded size never exceeds `max_bytes`, nor does
/// the memory it holds (its copy's capacity and the buffers it references); its rows
/// never exceed `max_rows`; it is never sealed empty.
#[derive(Debug)]
pub struct Batch {
    format: Format,
    policy: FlushPolicy,
    /// Records copied in, each followed by its record end: for JSON `[` followed by
    /// `record,` entries (the last `,` becomes `]` at seal), all of the body; for CSV the
    /// records not referenced where they were read.
    body: Vec<u8>,
    /// Runs of CSV records referenced in the buffers they were read into, each with the
    /// length `body` had when it came (it is sent after those bytes, before the rest).
    shared: Vec<(usize, Bytes)>,
    /// The bytes of `shared`, and the memory its buffers hold (at least as much).
    shared_len: usize,
    pinned: usize,
    /// An emptied body of an earlier batch, kept while batches fill up back to back so
    /// the next one does not fault in fresh pages.
    spare: Option<Vec<u8>>,
    rows: u64,
    oldest: Option<Instant>,
    /// Limits from a changed config, for the next batch: a batch keeps the limits it
    /// began with (lower ones could find it already past them).
    next_policy: Option<FlushPolicy>,
}

/// A batch ready to load.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub body: Body,
    pub rows: u64,
    pub trigger: FlushTrigger,
}

impl Batch {
    pub fn new(format: Format, policy: FlushPolicy) -> Self {
        Self {
            format,
            policy,
            body: Vec::new(),
            shared: Vec::new(),
            shared_len: 0,
            pinned: 0,
            spare: None,
            rows: 0,
            oldest: None,
            next_policy: None,
        }
    }

    /// New limits: at once if the batch is empty, else from the next batch on.
    pub fn set_policy(&mut self, policy: FlushPolicy) {
        if self.is_empty() {
            self.use_policy(policy);
        } else {
            self.next_policy = Some(policy);
        }
    }

    fn use_policy(&mut self, policy: FlushPolicy) {
        self.policy = policy;
        if self
            .spare
            .as_ref()
            .is_some_and(|s| s.capacity() > policy.max_bytes)
        {
            self.spare = None;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes the body takes now (what it would be if sealed).
    pub fn encoded_len(&self) -> usize {
        self.body.len() + self.shared_len
    }

    /// When its oldest record arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }

    /// Adds records of `chunk` from index `from` on. Returns `None` when all were taken,
    /// or the index of the first record that did not fit and the trigger that filled
    /// the batch. A batch that reaches `max_rows` reports itself full at once.
    pub fn push(&mut self, chunk: &Chunk, from: usize) -> Option<(usize, FlushTrigger)> {
        let start_of = |i: usize| {
            if i == 0 {
                0
            } else {
                chunk.ends[i - 1] as usize
            }
        };
        let opening = if self.rows == 0 {
            body::opening(self.format)
        } else {
            b""
        };
        let room_rows = self.policy.max_rows - self.rows;
        // Referenced runs count with the buffers they hold, so that memory is bounded too.
        let room_bytes = self.policy.max_bytes - self.body.len() - self.pinned - opening.len();

        // How many records fit, found by binary search on the cumulative ends.
        let base = start_of(from);
        let avail = chunk.rows() - from;
        let fits_bytes = chunk.ends[from..].partition_point(|&e| e as usize - base <= room_bytes);
        let take = fits_bytes
            .min(usize::try_from(room_rows).unwrap_or(usize::MAX))
            .min(avail);
        if take > 0 {
            let end = chunk.ends[from + take - 1] as usize;
            if self.may_reference(chunk.backing, end - base) {
                self.shared
                    .push((self.body.len(), chunk.data.slice(base..end)));
                self.shared_len += end - base;
                self.pinned += chunk.backing;
            } else {
                self.copy(opening, chunk, from..from + take);
            }
            self.rows += take as u64;
            if self.oldest.is_none() {
                self.oldest = Some(chunk.arrived);
            }
        }
        let next = from + take;
        if self.rows >= self.policy.max_rows {
            return Some((next, FlushTrigger::Rows));
        }
        if next < chunk.rows() {
            return Some((next, FlushTrigger::Size));
        }
        None
    }

    /// Whether a run of `len` bytes in a buffer of `backing` bytes goes in as a reference:
    /// only CSV records (JSON's record ends are written as they are copied), only from a
    /// buffer not much larger than the run, and only while the memory held stays within
    /// `max_bytes`. The body is then sent from the buffer the records were read into.
    fn may_reference(&self, backing: usize, len: usize) -> bool {
        body::record_end(self.format) == b'\n'
            && body::opening(self.format).is_empty()
            && backing <= len + len / WASTE_SHARE
            && self.body.capacity() + self.pinned + backing <= self.policy.max_bytes
    }

    /// Copies records `records` of `chunk` into the body, after `opening`, each with the
    /// body's record end.
    fn copy(&mut self, opening: &[u8], chunk: &Chunk, records: std::ops::Range<usize>) {
        let start_of = |i: usize| i.checked_sub(1).map_or(0, |p| chunk.ends[p] as usize);
        let (base, end) = (start_of(records.start), start_of(records.end));
        self.reserve(opening.len() + end - base);
        self.body.extend_from_slice(opening);
        let at = self.body.len();
        self.body.extend_from_slice(&chunk.data[base..end]);
        let delimiter = body::record_end(self.format);
        if delimiter != b'\n' {
            for &e in &chunk.ends[records] {
                self.body[at + e as usize - base - 1] = delimiter;
            }
        }
    }

    /// Grows the body in steps that never reserve past `max_bytes` (less what referenced
    /// buffers hold), so memory stays bounded by the batch size rather than by a doubling
    /// allocator.
    fn reserve(&mut self, extra: usize) {
        let need = self.body.len() + extra;
        let most = self.policy.max_bytes - self.pinned;
        if self.body.capacity() == 0 {
            if let Some(spare) = self.spare.take_if(|s| s.capacity() <= most) {
                self.body = spare;
            }
        }
        if need > self.body.capacity() {
            let target = (self.body.capacity() * 2).max(4096).min(most).max(need);
            self.body.reserve_exact(target - self.body.len());
        }
    }

    /// Gives back a loaded body for reuse. Only a body no larger than `max_bytes` is kept,
    /// and only one; the caller offers it only while traffic fills batches up.
    pub fn recycle(&mut self, mut body: Vec<u8>) {
        if self.spare.is_none() && body.capacity() <= self.policy.max_bytes {
            body.clear();
            self.spare = Some(body);
        }
    }

    /// The spare body, emptied, for another use that would otherwise allocate a body of
    /// its own (a batch read back from the spool): one body's memory serves both.
    pub fn take_spare(&mut self) -> Option<Vec<u8>> {
        self.spare.take()
    }

    /// Drops the spare body, returning its memory while traffic is light.
    pub fn release_spare(&mut self) {
        self.spare = None;
    }

    /// Takes the records out as a body ready to send, leaving this batch empty.
    pub fn seal(&mut self, trigger: FlushTrigger) -> Option<Sealed> {
        if self.rows == 0 {
            return None;
        }
        let mut copied = std::mem::take(&mut self.body);
        body::close(self.format, &mut copied);
        // What referenced buffers hold beyond their records counts; a copy's spare
        // capacity does not (it is what one body of `maxBytes` may take anyway).
        let held = copied.len() + self.pinned;
        let copied = Bytes::from(copied);
        let mut body = Body::default();
        let mut at = 0;
        for (before, run) in std::mem::take(&mut self.shared) {
            body.push(copied.slice(at..before));
            body.push(run);
            at = before;
        }
        // The copy itself when it is the whole body, so that it can be reused once loaded.
        body.push(if at == 0 { copied } else { copied.slice(at..) });
        (self.shared_len, self.pinned) = (0, 0);
        let rows = std::mem::take(&mut self.rows);
        self.oldest = None;
        if let Some(policy) = self.next_policy.take() {
            self.use_policy(policy);
        }
        Some(Sealed {
            body: body.holding(held),
            rows,
            trigger,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(records: &[&str]) -> Chunk {
        Chunk::from_records(records)
    }

    fn policy(max_bytes: usize, max_rows: u64) -> FlushPolicy {
        FlushPolicy {
            max_bytes,
            max_rows,
            interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn json_bodies_are_arrays_and_csv_bodies_are_rows() {
        let mut b = Batch::new(Format::Json, policy(1000, 100));
        assert_eq!(b.push(&chunk(&[r#"{"a":1}"#, r#"{"a":2}"#]), 0), None);
        let sealed = b.seal(FlushTrigger::Interval).unwrap();
        assert_eq!(&sealed.body.to_bytes()[..], br#"[{"a":1},{"a":2}]"#);
        assert_eq!(sealed.rows, 2);

        let mut b = Batch::new(Format::Csv, policy(1000, 100));
        b.push(&chunk(&["1,a", "2,b"]), 0);
        assert_eq!(
            &b.seal(FlushTrigger::Interval).unwrap().body.to_bytes()[..],
            b"1,a\n2,b\n"
        );
    }

    #[test]
    fn an_empty_batch_is_never_sealed() {
        let mut b = Batch::new(Format::Json, policy(1000, 100));
        assert!(b.seal(FlushTrigger::Shutdown).is_none());
        assert!(b.oldest().is_none());
    }

    #[test]
    fn a_batch_never_exceeds_max_bytes_and_says_where_it_stopped() {
        // Each record is 8 bytes with its comma; "[" takes one: 3 records = 25 bytes.
        let c = chunk(&[
            r#"{"a":1}"#,
            r#"{"a":2}"#,
            r#"{"a":3}"#,
            r#"{"a":4}"#,
            r#"{"a":5}"#,
        ]);
        let mut b = Batch::new(Format::Json, policy(25, 100));
        assert_eq!(b.push(&c, 0), Some((3, FlushTrigger::Size)));
        let s = b.seal(FlushTrigger::Size).unwrap();
        assert_eq!(&s.body.to_bytes()[..], br#"[{"a":1},{"a":2},{"a":3}]"#);
        assert_eq!(b.push(&c, 3), None);
        assert_eq!(b.rows(), 2);
        let s = b.seal(FlushTrigger::Size).unwrap();
        assert_eq!(
            &s.body.to_bytes()[..],
            br#"[{"a":4},{"a":5}]"#,
            "the rest, from record 3"
        );
    }

    #[test]
    fn max_rows_fills_the_batch_at_once() {
        let c = chunk(&["1", "2", "3"]);
        let mut b = Batch::new(Format::Csv, policy(1000, 2));
        assert_eq!(b.push(&c, 0), Some((2, FlushTrigger::Rows)));
        b.seal(FlushTrigger::Rows);
        assert_eq!(b.push(&c, 2), None);
    }

    #[test]
    fn a_recycled_body_is_reused_without_a_new_allocation() {
        let c = chunk(&["1", "2"]);
        let mut b = Batch::new(Format::Json, policy(1000, 100));
        b.push(&c, 0);
        let sealed = b.seal(FlushTrigger::Size).unwrap();
        let one = sealed
            .body
            .into_single()
            .expect("a copied body is one piece");
        let ptr = one.as_ptr();
        let body = Vec::from(one.try_into_mut().expect("the only reference"));
        b.recycle(body);
        b.push(&c, 0);
        let again = b.seal(FlushTrigger::Size).unwrap().body.to_bytes();
        assert_eq!(again.as_ptr(), ptr, "the spare body was not reused");
        assert_eq!(&again[..], b"[1,2]");
    }

    /// A chunk of `records` whose buffer holds `backing` bytes.
    fn backed(records: &[&str], backing: usize) -> Chunk {
        Chunk {
            backing,
            ..chunk(records)
        }
    }

    #[test]
    fn csv_records_that_fill_their_buffer_are_sent_from_it_in_order_with_copied_ones() {
        let a = chunk(&["1,a", "2,b"]);
        let b = backed(&["3,c"], SHARED_BUFFER);
        let c = chunk(&["4,d", "5,e"]);
        // Room for the copy's first reservation (4 KiB) and the referenced buffers.
        let mut batch = Batch::new(Format::Csv, policy(5000, 100));
        for chunk in [&a, &b, &c] {
            assert_eq!(batch.push(chunk, 0), None);
        }
        assert_eq!(batch.encoded_len(), 20);
        let body = batch.seal(FlushTrigger::Interval).unwrap().body;
        assert_eq!(&body.to_bytes()[..], b"1,a\n2,b\n3,c\n4,d\n5,e\n");
        let pieces = body.pieces();
        assert_eq!(pieces.len(), 3);
        assert_eq!(
            pieces[0].as_ptr(),
            a.data.as_ptr(),
            "not sent from its buffer"
        );
        assert_eq!(&pieces[1][..], b"3,c\n");
        assert_ne!(
            pieces[1].as_ptr(),
            b.data.as_ptr(),
            "a shared buffer is copied"
        );
        assert_eq!(pieces[2].as_ptr(), c.data.as_ptr());

        // JSON records need their `,`: always copied, one piece.
        let mut json = Batch::new(Format::Json, policy(1000, 100));
        json.push(&chunk(&["1", "2"]), 0);
        json.push(&chunk(&["3"]), 0);
        let body = json.seal(FlushTrigger::Interval).unwrap().body;
        assert_eq!(body.pieces().len(), 1);
        assert_eq!(&body.to_bytes()[..], b"[1,2,3]");
    }

    #[test]
    fn referenced_buffers_count_against_max_bytes_and_larger_ones_are_copied() {
        // Records of 10 bytes with their `\n`.
        let four = ["00000000a", "00000000b", "00000000c", "00000000d"];
        let six = [
            "11111111a",
            "11111111b",
            "11111111c",
            "11111111d",
            "11111111e",
            "11111111f",
        ];
        // 40 bytes in a buffer of 45 (an eighth more): referenced, and 45 held.
        let kept = backed(&four, 45);
        let mut batch = Batch::new(Format::Csv, policy(100, 100));
        assert_eq!(batch.push(&kept, 0), None);
        assert_eq!(batch.pinned, 45);
        // 55 bytes of room left: five of six records, and the batch ends at 90 bytes.
        assert_eq!(
            batch.push(&backed(&six, SHARED_BUFFER), 0),
            Some((5, FlushTrigger::Size))
        );
        assert!(batch.body.capacity() + batch.pinned <= 100);
        let body = batch.seal(FlushTrigger::Size).unwrap().body;
        assert_eq!(body.len(), 90);
        assert_eq!(
            body.held(),
            95,
            "the referenced buffer's 5 bytes more are held"
        );
        assert_eq!(body.pieces()[0].as_ptr(), kept.data.as_ptr());

        // A buffer more than an eighth larger than its records is not kept: copied.
        let big = backed(&four, 46);
        assert_eq!(batch.push(&big, 0), None);
        let body = batch.seal(FlushTrigger::Size).unwrap().body;
        assert_eq!(body.pieces().len(), 1);
        assert_ne!(body.pieces()[0].as_ptr(), big.data.as_ptr());
    }

    proptest::proptest! {
        /// Whatever the chunks and their buffers, the bodies hold every record once, in
        /// order, and no batch ever holds more than `max_bytes` of memory or body.
        #[test]
        fn bodies_hold_every_record_in_order_within_max_bytes(
            csv in proptest::bool::ANY,
            max_bytes in 700usize..20_000,
            chunks in proptest::collection::vec(
                (proptest::collection::vec(0usize..600, 1..8), 0usize..4),
                1..40,
            ),
        ) {
            let format = if csv { Format::Csv } else { Format::Json };
            let mut batch = Batch::new(format, policy(max_bytes, 7));
            let (mut sent, mut want) = (Vec::new(), Vec::new());
            let seal = |batch: &mut Batch, sent: &mut Vec<u8>| {
                if let Some(sealed) = batch.seal(FlushTrigger::Size) {
                    let bytes = sealed.body.to_bytes();
                    proptest::prop_assert!(bytes.len() <= max_bytes);
                    let records = if csv { &bytes[..] } else { &bytes[1..bytes.len() - 1] };
                    let delimiter = body::record_end(format);
                    for r in records.split(|&b| b == delimiter).filter(|r| !r.is_empty()) {
                        sent.extend_from_slice(r);
                        sent.push(b'|');
                    }
                }
                Ok(())
            };
            for (n, (sizes, kind)) in chunks.iter().enumerate() {
                let records: Vec<String> =
                    sizes.iter().map(|&len| format!("{n:x}{}", "x".repeat(len))).collect();
                let records: Vec<&str> = records.iter().map(String::as_str).collect();
                for r in &records {
                    want.extend_from_slice(r.as_bytes());
                    want.push(b'|');
                }
                let exact = chunk(&records);
                let len = exact.data.len();
                let backing = [len, len + len / 8, len + len / 8 + 1, SHARED_BUFFER][*kind];
                let c = backed(&records, backing);
                let mut from = 0;
                while let Some((next, _)) = batch.push(&c, from) {
                    proptest::prop_assert!(batch.body.capacity() + batch.pinned <= max_bytes);
                    seal(&mut batch, &mut sent)?;
                    from = next;
                }
                proptest::prop_assert!(batch.body.capacity() + batch.pinned <= max_bytes);
            }
            seal(&mut batch, &mut sent)?;
            proptest::prop_assert_eq!(String::from_utf8_lossy(&sent), String::from_utf8_lossy(&want));
        }
    }

    #[test]
    fn the_deadline_follows_the_oldest_record() {
        let mut b = Batch::new(Format::Csv, policy(1000, 100));
        let first = chunk(&["1"]);
        b.push(&first, 0);
        let later = Chunk {
            arrived: first.arrived + Duration::from_millis(500),
            ..chunk(&["2"])
        };
        b.push(&later, 0);
        assert_eq!(b.oldest(), Some(first.arrived));
        let due = policy(1000, 100).flush_at(b.oldest(), false);
        assert_eq!(due, Some(first.arrived + Duration::from_secs(1)));
        b.seal(FlushTrigger::Interval);
        assert!(b.oldest().is_none(), "a new batch starts its own clock");
    }

    #[test]
    fn the_flush_time_is_the_interval_after_the_oldest_record_shorter_once_stopping() {
        // A fake clock: instants built from one origin, nothing waits.
        let t0 = Instant::now();
        let secs = |s: u64| Duration::from_secs(s);
        let with_interval = |interval: Duration| FlushPolicy {
            max_bytes: 1000,
            max_rows: 100,
            interval,
        };
        let cases = [
            (secs(5), None, false, None),
            (secs(5), Some(t0), false, Some(t0 + secs(5))),
            (secs(5), Some(t0), true, Some(t0 + SHUTDOWN_INTERVAL)),
            (
                Duration::from_millis(50),
                Some(t0),
                true,
                Some(t0 + Duration::from_millis(50)),
            ),
            (secs(5), Some(t0 + secs(2)), false, Some(t0 + secs(7))),
        ];
        for (interval, oldest, stopping, want) in cases {
            assert_eq!(
                with_interval(interval).flush_at(oldest, stopping),
                want,
                "interval {interval:?}, oldest {oldest:?}, stopping {stopping}"
            );
        }
    }

    #[test]
    fn a_config_change_sets_the_interval_unless_backpressure_holds_it_wider() {
        let s = Duration::from_secs;
        let calm = AdaptiveInterval::new(s(3600), s(3600)).rebased(s(1), s(60));
        assert_eq!(calm.now(), s(1), "not widened: the new interval at once");
        let mut held = AdaptiveInterval::new(s(5), s(60));
        held.widen();
        held.widen();
        assert_eq!(held.rebased(s(2), s(60)).now(), s(20), "still held back");
        assert_eq!(
            held.rebased(s(2), s(10)).now(),
            s(10),
            "within the new most"
        );
        assert_eq!(
            held.rebased(s(30), s(60)).now(),
            s(30),
            "never below the new base"
        );
    }

    #[test]
    fn a_batch_keeps_its_limits_and_the_next_takes_the_new_ones() {
        let mut b = Batch::new(Format::Json, policy(1 << 20, 10));
        assert!(b.push(&chunk(&["{}", "{}"]), 0).is_none());
        b.set_policy(policy(1 << 20, 1));
        assert!(b.push(&chunk(&["{}"]), 0).is_none(), "still 10 rows");
        assert_eq!(b.rows(), 3);
        assert!(b.seal(FlushTrigger::Interval).is_some());
        assert_eq!(
            b.push(&chunk(&["{}", "{}"]), 0),
            Some((1, FlushTrigger::Rows)),
            "the next batch holds 1 row"
        );
    }

    #[test]
    fn a_widened_interval_is_spread_by_up_to_a_quarter_never_below_the_configured_one() {
        let s = Duration::from_secs;
        let mut i = AdaptiveInterval::new(s(5), s(60));
        assert_eq!((i.spread(0.0), i.spread(0.99)), (s(5), s(5)));
        i.widen();
        i.widen();
        assert_eq!(i.spread(0.0), s(20));
        assert_eq!(i.spread(0.5), Duration::from_millis(17_500));
        assert_eq!(i.spread(1.0), s(15));
        let mut one_step = AdaptiveInterval::new(s(5), s(6));
        one_step.widen();
        assert_eq!(
            one_step.spread(1.0),
            s(5),
            "never below the configured interval"
        );
    }

    #[test]
    fn backpressure_doubles_the_interval_to_its_most_and_health_brings_it_back_in_steps() {
        let s = Duration::from_secs;
        let mut i = AdaptiveInterval::new(s(5), s(60));
        i.widen();
        assert_eq!(i.now(), s(10));
        for _ in 0..10 {
            i.widen();
        }
        assert_eq!(i.now(), s(60), "never past the most");
        i.narrow();
        i.narrow();
        assert_eq!(i.now(), s(60), "two clean loads are not yet a clean period");
        i.narrow();
        assert_eq!(i.now(), s(48));
        i.narrow();
        i.widen();
        i.narrow();
        i.narrow();
        assert_eq!(i.now(), s(60), "backpressure starts the clean period over");
        let mut loads = 0;
        while i.now() > s(5) {
            i.narrow();
            loads += 1;
        }
        let expected = (s(5), 12 * CLEAN_LOADS - 2);
        assert_eq!(
            (i.now(), loads),
            expected,
            "back to the configured interval, in steps"
        );
        for _ in 0..CLEAN_LOADS {
            i.narrow();
        }
        assert_eq!(
            i.spread(0.99),
            s(5),
            "the configured interval is kept exactly"
        );
        assert_eq!(i.now(), s(5), "never below it");
        // A most below the base is the base: the interval never shrinks under pressure.
        let mut fixed = AdaptiveInterval::new(s(90), s(60));
        fixed.widen();
        assert_eq!(fixed.now(), s(90));
    }
}
