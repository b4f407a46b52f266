//! Lines in, chunks out, with no I/O: each framed line of one socket read is checked
//! (one JSON object; a CSV row is only framed), encoded for the Stream Load body, and
//! gathered into [`Chunk`]s for the sink task. With acks on, a chunk never spans a
//! rejected line (its records are consecutive lines of the connection), and consecutive
//! rejects with one reason become one `err` run.

use std::sync::Arc;

use tokio::time::Instant;

use crate::api::Format;
use crate::loader::ack::{ConnAck, ErrRun};
use crate::loader::batch::Chunk;
use crate::loader::framing::Line;
use crate::loader::record::{self, RejectReason};
use crate::loader::row_id::RowIds;
use crate::stream_load::body;

/// The chunks of one socket read, built line by line.
pub struct Chunker {
    format: Format,
    ack: Option<Arc<ConnAck>>,
    /// With Merge Commit's `rowIdColumn`: where each record's id comes from.
    row_ids: Option<Arc<RowIds>>,
    arrived: Instant,
    /// Records of the chunk being built, each followed by its body delimiter.
    out: Vec<u8>,
    ends: Vec<u32>,
    first_line: u64,
    chunks: Vec<Chunk>,
    errs: Vec<ErrRun>,
    last_record: Option<u64>,
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
            // Records never take more room than the bytes they came in (plus a delimiter
            // for a last line without newline), so one allocation holds them all.
            out: Vec::with_capacity(bytes + 1),
            ends: Vec::with_capacity(bytes / 64 + 1),
            first_line: 0,
            chunks: Vec::new(),
            errs: Vec::new(),
            last_record: None,
        }
    }

    /// Each record gets the next of `ids` written into it.
    pub fn with_row_ids(mut self, ids: Option<Arc<RowIds>>) -> Self {
        self.row_ids = ids;
        self
    }

    /// Line `line_no` of the connection; the reason it was rejected, if it was.
    pub fn line(&mut self, line_no: u64, line: &Line<'_>) -> Option<RejectReason> {
        let reason = match line {
            Line::TooLong(_) => RejectReason::TooLong,
            Line::Record(r) => match record::check(self.format, r) {
                Ok(()) => {
                    if self.ends.is_empty() {
                        self.first_line = line_no;
                    }
                    match &self.row_ids {
                        Some(ids) => ids.append(&mut self.out, r),
                        None => self.out.extend_from_slice(r),
                    }
                    self.out.push(body::record_end(self.format));
                    self.ends.push(self.out.len() as u32);
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

    /// Closes the chunk being built, if it has records.
    fn cut(&mut self) {
        if self.ends.is_empty() {
            return;
        }
        self.chunks.push(Chunk {
            data: std::mem::take(&mut self.out).into(),
            ends: std::mem::take(&mut self.ends),
            arrived: self.arrived,
            ack: self.ack.clone(),
            first_line: self.first_line,
        });
    }

    pub fn finish(mut self) -> Chunked {
        self.cut();
        Chunked {
            chunks: self.chunks,
            errs: self.errs,
            last_record: self.last_record,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunker: &mut Chunker, lines: &[Line<'_>]) -> Vec<Option<RejectReason>> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| chunker.line(i as u64 + 1, l))
            .collect()
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
        let out = c.finish();
        assert_eq!(out.chunks.len(), 1);
        assert_eq!(&out.chunks[0].data[..], br#"{"a":1},{"a":3},"#);
        assert_eq!(out.chunks[0].ends, [8, 16]);
        assert!(out.errs.is_empty());
        assert_eq!(out.last_record, Some(4));
    }

    #[tokio::test]
    async fn with_acks_chunks_are_cut_at_rejects_and_rejects_merge_into_runs() {
        let (_, ours) = tokio::net::UnixStream::pair().unwrap();
        let (_, write) = ours.into_split();
        let metrics = Arc::new(crate::loader::metrics::SinkMetrics::new("t"));
        let (ack, _, _) = crate::loader::ack::channel(
            metrics,
            write,
            Default::default(),
            crate::api::Acks::Committed,
        );
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
        let out = c.finish();
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
