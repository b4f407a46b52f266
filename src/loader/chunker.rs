//! Lines in, chunks out, with no I/O: each framed line of one socket read is checked
//! (one JSON object; a CSV row is only framed), encoded for the Stream Load body, and
//! gathered into [`Chunk`]s for the sink task. With acks on, a chunk never spans a
//! rejected line (its records are consecutive lines of the connection), and consecutive
//! rejects with one reason become one `err` run.
//!
//! A chunk holds its records as lines (each followed by `\n`), as the spool stores them;
//! the batch writes the body's record end as it copies them in. A run of records that
//! arrived exactly so (consecutive in the read) is not copied: its chunk is a slice of
//! the read's own bytes. Only records that must be changed (a `\r` to drop, a row id to
//! add, the last line of a stream without `\n`) are copied.

use std::ops::Range;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::api::Format;
use crate::loader::ack::{ConnAck, ErrRun};
use crate::loader::batch::Chunk;
use crate::loader::framing::Line;
use crate::loader::record::{self, RejectReason};
use crate::loader::row_id::RowIds;

/// The chunks of one socket read, built line by line.
pub struct Chunker {
    format: Format,
    ack: Option<Arc<ConnAck>>,
    /// With Merge Commit's `rowIdColumn`: where each record's id comes from.
    row_ids: Option<Arc<RowIds>>,
    arrived: Instant,
    /// About how many bytes the read holds: the first run's buffers are sized for all of
    /// them; later runs (after a reject or a change of kind) grow as they need, so a read
    /// cut into many runs never reserves its size many times over.
    bytes: usize,
    /// The run of records being built, and the runs closed before it, in line order.
    run: Option<Run>,
    runs: Vec<Run>,
    errs: Vec<ErrRun>,
    last_record: Option<u64>,
}

/// Consecutive records of one chunk.
enum Run {
    /// Bytes `range` of the read, each record followed by its `\n`.
    InPlace {
        range: Range<usize>,
        ends: Vec<u32>,
        first_line: u64,
    },
    /// Records copied out, each followed by `\n`.
    Copied {
        out: Vec<u8>,
        ends: Vec<u32>,
        first_line: u64,
    },
}

/// What one read gave: its chunks, its `err` runs (with acks on), and the line number of
/// its last record.
pub struct Chunked {
    pub chunks: Vec<Chunk>,
    pub errs: Vec<ErrRun>,
    pub last_record: Option<u64>,
}

impl Chunker {
    /// For lines read at `arrived`, about `bytes` of them; `ack` when the producer wants
    /// acks.
    pub fn new(format: Format, ack: Option<Arc<ConnAck>>, arrived: Instant, bytes: usize) -> Self {
        Self {
            format,
            ack,
            row_ids: None,
            arrived,
            bytes,
            run: None,
            runs: Vec::new(),
            errs: Vec::new(),
            last_record: None,
        }
    }

    /// Each record gets the next of `ids` written into it.
    pub fn with_row_ids(mut self, ids: Option<Arc<RowIds>>) -> Self {
        self.row_ids = ids;
        self
    }

    /// Line `line_no` of the connection, with where its bytes and `\n` lie in the read
    /// if the framer could say (see [`crate::loader::framing::LineFramer::drain`]); the
    /// reason it was rejected, if it was.
    pub fn line(
        &mut self,
        line_no: u64,
        line: &Line<'_>,
        span: Option<Range<usize>>,
    ) -> Option<RejectReason> {
        let reason = match line {
            Line::TooLong(_) => RejectReason::TooLong,
            Line::Record(r) => match record::check(self.format, r) {
                Ok(()) => {
                    match span.filter(|_| self.row_ids.is_none()) {
                        Some(span) => self.in_place(line_no, span),
                        None => self.copied(line_no, r),
                    }
                    self.last_record = Some(line_no);
                    return None;
                }
                Err(reason) => reason,
            },
        };
        if self.ack.is_some() {
            self.cut();
            let reason_text = reason.as_str();
            match self.errs.last_mut() {
                Some(run) if run.reason == reason_text && run.first + run.count == line_no => {
                    run.count += 1
                }
                _ => self.errs.push(ErrRun {
                    first: line_no,
                    count: 1,
                    reason: reason_text,
                }),
            }
        }
        Some(reason)
    }

    fn in_place(&mut self, line_no: u64, span: Range<usize>) {
        if let Some(Run::InPlace { range, ends, .. }) = &mut self.run {
            if range.end == span.start {
                range.end = span.end;
                ends.push(end_at(range.start, span.end));
                return;
            }
        }
        self.cut();
        let mut ends = Vec::with_capacity(self.first_run_bytes() / 64 + 1);
        ends.push(end_at(span.start, span.end));
        self.run = Some(Run::InPlace {
            range: span,
            ends,
            first_line: line_no,
        });
    }

    fn copied(&mut self, line_no: u64, record: &[u8]) {
        if !matches!(self.run, Some(Run::Copied { .. })) {
            self.cut();
            // Records never take more room than the bytes they came in (plus a delimiter
            // for a last line without newline), so for the first run one allocation holds
            // them all.
            let bytes = self.first_run_bytes();
            self.run = Some(Run::Copied {
                out: Vec::with_capacity(bytes.max(record.len()) + 1),
                ends: Vec::with_capacity(bytes / 64 + 1),
                first_line: line_no,
            });
        }
        if let Some(Run::Copied { out, ends, .. }) = &mut self.run {
            match &self.row_ids {
                Some(ids) => ids.append(out, record),
                None => out.extend_from_slice(record),
            }
            out.push(b'\n');
            ends.push(u32::try_from(out.len()).unwrap_or(u32::MAX));
        }
    }

    /// What to size a new run's buffers for: the read's bytes for its first run, nothing
    /// for later ones.
    fn first_run_bytes(&self) -> usize {
        if self.runs.is_empty() {
            self.bytes
        } else {
            0
        }
    }

    /// Closes the run being built, if any.
    fn cut(&mut self) {
        if let Some(run) = self.run.take() {
            self.runs.push(run);
        }
    }

    /// The chunks, given `read`: the bytes the framer returned for this read (the spans
    /// passed to [`Chunker::line`] lie in it).
    pub fn finish(mut self, read: BytesMut) -> Chunked {
        self.cut();
        let read = read.freeze();
        let chunks = self
            .runs
            .into_iter()
            .map(|run| {
                let (data, ends, first_line) = match run {
                    Run::InPlace {
                        range,
                        ends,
                        first_line,
                    } => (read.slice(range), ends, first_line),
                    Run::Copied {
                        out,
                        ends,
                        first_line,
                    } => (out.into(), ends, first_line),
                };
                Chunk {
                    data,
                    ends,
                    arrived: self.arrived,
                    ack: self.ack.clone(),
                    first_line,
                }
            })
            .collect();
        Chunked {
            chunks,
            errs: self.errs,
            last_record: self.last_record,
        }
    }
}

/// Where a record ending at `end` of the read ends in a chunk starting at `start`.
fn end_at(start: usize, end: usize) -> u32 {
    u32::try_from(end - start).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines given without spans, as the last line of a stream or one with `\r` is: all
    /// copied.
    fn lines(chunker: &mut Chunker, lines: &[Line<'_>]) -> Vec<Option<RejectReason>> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| chunker.line(i as u64 + 1, l, None))
            .collect()
    }

    /// `input` framed and chunked as one socket read is.
    fn read(format: Format, input: &[u8]) -> (Chunked, *const u8) {
        let mut framer = crate::loader::framing::LineFramer::new(1000);
        let mut buf = BytesMut::from(input);
        let mut chunker = Chunker::new(format, None, Instant::now(), input.len());
        let mut n = 0;
        let framed = framer.drain(&mut buf, |l, span| {
            n += 1;
            chunker.line(n, &l, span);
        });
        let at = framed.as_ptr();
        (chunker.finish(framed), at)
    }

    #[test]
    fn records_that_arrive_as_lines_are_handed_on_without_a_copy() {
        let (csv, at) = read(Format::Csv, b"1,a\n2,b\n3,c\n");
        assert_eq!(csv.chunks.len(), 1);
        assert_eq!(&csv.chunks[0].data[..], b"1,a\n2,b\n3,c\n");
        assert_eq!(csv.chunks[0].data.as_ptr(), at, "a slice of the read");
        assert_eq!(csv.chunks[0].ends, [4, 8, 12]);

        let (json, at) = read(Format::Json, b"{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(json.chunks.len(), 1);
        assert_eq!(&json.chunks[0].data[..], b"{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(json.chunks[0].data.as_ptr(), at);
    }

    /// A connection's ack state, for chunks of a producer that wants acks (needs a
    /// runtime for its socket).
    fn acked() -> Arc<ConnAck> {
        let (_, ours) = tokio::net::UnixStream::pair().unwrap();
        let (_, write) = ours.into_split();
        let metrics = Arc::new(crate::loader::metrics::SinkMetrics::new("t"));
        let (ack, _, _) = crate::loader::ack::channel(
            metrics,
            write,
            Default::default(),
            crate::api::Acks::Committed,
        );
        ack
    }

    #[tokio::test]
    async fn a_read_cut_into_many_runs_reserves_its_size_once() {
        // A CR line, then a rejected one, over and over, with acks: hundreds of runs.
        let input = b"{\"a\":1}\r\nx\r\n".repeat(500);
        let ack = acked();
        let mut c = Chunker::new(Format::Json, Some(ack), Instant::now(), input.len());
        let mut framer = crate::loader::framing::LineFramer::new(1000);
        let mut buf = BytesMut::from(&input[..]);
        let mut n = 0;
        framer.drain(&mut buf, |l, span| {
            n += 1;
            c.line(n, &l, span);
        });
        c.cut();
        assert_eq!(c.runs.len(), 500);
        let reserved: usize = c
            .runs
            .iter()
            .map(|r| match r {
                Run::Copied { out, ends, .. } => out.capacity() + 4 * ends.capacity(),
                Run::InPlace { ends, .. } => 4 * ends.capacity(),
            })
            .sum();
        assert!(
            reserved < 3 * input.len(),
            "{reserved} bytes reserved for a read of {}",
            input.len()
        );
    }

    #[test]
    fn records_that_must_change_are_copied_and_every_record_keeps_its_order() {
        let input = b"{\"a\":1}\n{\"a\":2}\r\n{\"a\":3}\n[4]\n{\"a\":5}\n{\"a\":6}\n";
        let (out, at) = read(Format::Json, input);
        let body: Vec<u8> = out.chunks.iter().flat_map(|c| c.data.to_vec()).collect();
        assert_eq!(
            body,
            b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\":5}\n{\"a\":6}\n"
        );
        let shape: Vec<(u64, usize, bool)> = out
            .chunks
            .iter()
            .map(|c| {
                let inside = (c.data.as_ptr() as usize).wrapping_sub(at as usize) < input.len();
                (c.first_line, c.rows(), inside)
            })
            .collect();
        // The `\r` line is copied; the rejected line breaks the slice in two.
        assert_eq!(
            shape,
            [(1, 1, true), (2, 1, false), (3, 1, true), (5, 2, true)]
        );
        assert_eq!(out.chunks[3].ends, [8, 16]);
        assert_eq!(out.last_record, Some(6));
    }

    #[test]
    fn without_acks_every_record_of_a_read_is_one_chunk_and_rejects_are_only_reported() {
        let mut c = Chunker::new(Format::Json, None, Instant::now(), 64);
        let said = lines(
            &mut c,
            &[
                Line::Record(br#"{"a":1}"#),
                Line::Record(b"[2]"),
                Line::TooLong(99),
                Line::Record(br#"{"a":3}"#),
            ],
        );
        assert_eq!(
            said,
            [
                None,
                Some(RejectReason::NotObject),
                Some(RejectReason::TooLong),
                None
            ]
        );
        let out = c.finish(BytesMut::new());
        assert_eq!(out.chunks.len(), 1);
        assert_eq!(&out.chunks[0].data[..], b"{\"a\":1}\n{\"a\":3}\n");
        assert_eq!(out.chunks[0].ends, [8, 16]);
        assert!(out.errs.is_empty());
        assert_eq!(out.last_record, Some(4));
    }

    #[tokio::test]
    async fn with_acks_chunks_are_cut_at_rejects_and_rejects_merge_into_runs() {
        let ack = acked();
        let mut c = Chunker::new(Format::Csv, Some(ack), Instant::now(), 64);
        lines(
            &mut c,
            &[
                Line::Record(b"1,a"),
                Line::TooLong(10),
                Line::TooLong(11),
                Line::Record(b"4,d"),
                Line::Record(b"5,e"),
                Line::TooLong(12),
            ],
        );
        let out = c.finish(BytesMut::new());
        let firsts: Vec<(u64, usize)> = out
            .chunks
            .iter()
            .map(|c| (c.first_line, c.rows()))
            .collect();
        assert_eq!(firsts, [(1, 1), (4, 2)]);
        assert_eq!(&out.chunks[1].data[..], b"4,d\n5,e\n");
        let runs: Vec<(u64, u64, &str)> = out
            .errs
            .iter()
            .map(|r| (r.first, r.count, r.reason))
            .collect();
        assert_eq!(runs, [(2, 2, "too_long"), (6, 1, "too_long")]);
    }
}
