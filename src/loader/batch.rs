//! The batch a sink task fills: records already encoded as the Stream Load body, plus
//! the pure policy that says when it must be flushed.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::api::{Format, SinkSpec};
use crate::stream_load::body;

/// Records from one connection read, each followed by `\n` (as lines, and as the spool
/// stores them; the batch writes the body's record end). A record never holds a `\n`:
/// every `\n` in `data` ends one. `ends[i]` is where record `i` ends in `data`.
#[derive(Debug)]
pub struct Chunk {
    pub data: Bytes,
    pub ends: Vec<u32>,
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
            data: data.into(),
            ends,
            arrived: Instant::now(),
        }
    }
}

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

/// A batch being filled. Invariant: its encoded size never exceeds `max_bytes`, its rows
/// never exceed `max_rows`, and it is never sealed empty.
#[derive(Debug)]
pub struct Batch {
    format: Format,
    policy: FlushPolicy,
    /// For JSON: `[` followed by `record,` entries; the last `,` becomes `]` at seal.
    body: Vec<u8>,
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
    pub body: Bytes,
    pub rows: u64,
    pub trigger: FlushTrigger,
}

impl Batch {
    pub fn new(format: Format, policy: FlushPolicy) -> Self {
        Self {
            format,
            policy,
            body: Vec::new(),
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
        self.body.len()
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
        let opening = if self.body.is_empty() {
            body::opening(self.format)
        } else {
            b""
        };
        let room_rows = self.policy.max_rows - self.rows;
        let room_bytes = self.policy.max_bytes - self.body.len() - opening.len();

        // How many records fit, found by binary search on the cumulative ends.
        let base = start_of(from);
        let avail = chunk.rows() - from;
        let fits_bytes = chunk.ends[from..].partition_point(|&e| e as usize - base <= room_bytes);
        let take = fits_bytes
            .min(usize::try_from(room_rows).unwrap_or(usize::MAX))
            .min(avail);
        if take > 0 {
            let end = chunk.ends[from + take - 1] as usize;
            self.reserve(opening.len() + end - base);
            self.body.extend_from_slice(opening);
            body::append_lines(self.format, &mut self.body, &chunk.data[base..end]);
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

    /// Grows the body in steps that never reserve past `max_bytes`, so memory stays
    /// bounded by the batch size rather than by a doubling allocator.
    fn reserve(&mut self, extra: usize) {
        let need = self.body.len() + extra;
        if self.body.capacity() == 0 {
            if let Some(spare) = self.spare.take() {
                self.body = spare;
            }
        }
        if need > self.body.capacity() {
            let target = (self.body.capacity() * 2)
                .max(4096)
                .min(self.policy.max_bytes)
                .max(need);
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
        let mut body = std::mem::take(&mut self.body);
        body::close(self.format, &mut body);
        let rows = std::mem::take(&mut self.rows);
        self.oldest = None;
        if let Some(policy) = self.next_policy.take() {
            self.use_policy(policy);
        }
        Some(Sealed {
            body: Bytes::from(body),
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
        assert_eq!(&sealed.body[..], br#"[{"a":1},{"a":2}]"#);
        assert_eq!(sealed.rows, 2);

        let mut b = Batch::new(Format::Csv, policy(1000, 100));
        b.push(&chunk(&["1,a", "2,b"]), 0);
        assert_eq!(
            &b.seal(FlushTrigger::Interval).unwrap().body[..],
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
        assert_eq!(&s.body[..], br#"[{"a":1},{"a":2},{"a":3}]"#);
        assert_eq!(b.push(&c, 3), None);
        assert_eq!(b.rows(), 2);
        let s = b.seal(FlushTrigger::Size).unwrap();
        assert_eq!(
            &s.body[..],
            br#"[{"a":4},{"a":5}]"#,
            "the rest, from record 3"
        );
    }

    #[test]
    fn records_copied_in_long_runs_keep_the_body_within_max_bytes() {
        // 40 records of 1000 bytes: runs long enough to go in with non-temporal stores.
        let records: Vec<String> = (0..40).map(|i| format!("{i:0>999}")).collect();
        let c = chunk(&records.iter().map(String::as_str).collect::<Vec<_>>());
        for format in [Format::Json, Format::Csv] {
            let mut b = Batch::new(format, policy(10_000, 1000));
            let mut from = 0;
            let mut seen = Vec::new();
            while let Some((next, trigger)) = b.push(&c, from) {
                assert_eq!(trigger, FlushTrigger::Size);
                assert!(b.body.capacity() <= 10_000, "{}", b.body.capacity());
                let body = b.seal(trigger).unwrap().body;
                seen.push((next - from, body.len()));
                from = next;
            }
            // CSV: ten rows fill 10,000 bytes exactly; JSON's `[` leaves room for nine.
            let (per_batch, last) = if format == Format::Json {
                (9, 4)
            } else {
                (10, 10)
            };
            let json = usize::from(format == Format::Json);
            assert!(seen
                .iter()
                .all(|&s| s == (per_batch, per_batch * 1000 + json)));
            assert_eq!(b.rows(), last);
        }
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
        let c = chunk(&["1,a", "2,b"]);
        let mut b = Batch::new(Format::Csv, policy(1000, 100));
        b.push(&c, 0);
        let sealed = b.seal(FlushTrigger::Size).unwrap();
        let ptr = sealed.body.as_ptr();
        let body = Vec::from(sealed.body.try_into_mut().expect("the only reference"));
        b.recycle(body);
        b.push(&c, 0);
        let again = b.seal(FlushTrigger::Size).unwrap();
        assert_eq!(again.body.as_ptr(), ptr, "the spare body was not reused");
        assert_eq!(&again.body[..], b"1,a\n2,b\n");
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
