//! The Stream Load body format, in one place: how records are laid out in a body and
//! the headers that tell StarRocks so. Ingest, the batch, spool replay and the client
//! all use it.
//!
//! - JSON: `[` record `,` record `,` ... record `]`, sent with `format: json` and
//!   `strip_outer_array: true` (one request loads every object of the array).
//! - CSV: record `\n` record `\n` ..., sent with `format: csv` and `column_separator`.
//!
//! Every record is followed by [`record_end`] while a body is built, so that records can
//! be appended with one copy; [`close`] turns the last JSON `,` into `]`.
//!
//! A built body is a [`Body`]: pieces sent back to back, so that CSV records can be sent
//! from the buffers they were read into instead of being copied into one.

use std::io::IoSlice;

use bytes::{Buf, Bytes};

use crate::api::Format;

/// A Stream Load body: the bytes of its pieces, in order, with no empty piece. Cloning it
/// clones references, never bytes.
#[derive(Clone, Debug, Default)]
pub struct Body {
    pieces: Vec<Bytes>,
    len: usize,
    /// The memory its pieces keep alive: more than `len` when they are slices of larger
    /// buffers (the batch says so), `len` otherwise.
    held: usize,
}

impl Body {
    /// Appends `piece` (an empty one is left out).
    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.held += piece.len();
            self.pieces.push(piece);
        }
    }

    /// The same body, known to keep `held` bytes of memory alive (never less than its
    /// length).
    pub fn holding(mut self, held: usize) -> Self {
        self.held = held.max(self.len);
        self
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The memory it keeps alive while it is held.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// The body's bytes in one buffer (a copy unless it is one piece).
    pub fn to_bytes(&self) -> Bytes {
        match self.pieces.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => many.concat().into(),
        }
    }

    /// Its one piece, for reuse once loaded; `None` when it has several (or none).
    pub fn into_single(mut self) -> Option<Bytes> {
        match self.pieces.len() {
            1 => self.pieces.pop(),
            _ => None,
        }
    }

    /// A cursor over its bytes, for writing it out with as few calls as possible
    /// (vectored writes, one slice per piece).
    pub fn reader(&self) -> BodyReader<'_> {
        BodyReader {
            pieces: &self.pieces,
            offset: 0,
            remaining: self.len,
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        let mut body = Body::default();
        body.push(bytes);
        body
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body::from(Bytes::from(bytes))
    }
}

/// What is left to write of a [`Body`].
#[derive(Debug)]
pub struct BodyReader<'a> {
    /// The pieces not yet wholly written; the first has `offset` bytes written.
    pieces: &'a [Bytes],
    offset: usize,
    remaining: usize,
}

impl Buf for BodyReader<'_> {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.pieces.first().map_or(&[], |p| &p[self.offset..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advanced past the end of a body");
        self.remaining -= cnt;
        while let Some(first) = self.pieces.first() {
            let left = first.len() - self.offset;
            if cnt < left {
                self.offset += cnt;
                return;
            }
            cnt -= left;
            self.pieces = &self.pieces[1..];
            self.offset = 0;
        }
    }

    fn chunks_vectored<'b>(&'b self, dst: &mut [IoSlice<'b>]) -> usize {
        let mut offset = self.offset;
        let mut n = 0;
        for (slot, piece) in dst.iter_mut().zip(self.pieces) {
            *slot = IoSlice::new(&piece[offset..]);
            offset = 0;
            n += 1;
        }
        n
    }
}

/// The byte written after each record.
pub const fn record_end(format: Format) -> u8 {
    match format {
        Format::Json => b',',
        Format::Csv => b'\n',
    }
}

/// The bytes a body starts with, before its first record.
pub const fn opening(format: Format) -> &'static [u8] {
    match format {
        Format::Json => b"[",
        Format::Csv => b"",
    }
}

/// Finishes a body built as [`opening`] and records each followed by [`record_end`]:
/// the JSON array's last `,` becomes its `]`. A body with no record is left as it is.
pub fn close(format: Format, body: &mut [u8]) {
    if format == Format::Json && body.len() > opening(format).len() {
        if let Some(last) = body.last_mut() {
            *last = b']';
        }
    }
}

/// The Stream Load headers that describe the body (HTTP header lines, each ending in
/// `\r\n`). `column_separator` is for CSV only.
pub fn headers(format: Format, column_separator: &str) -> String {
    match format {
        Format::Json => "format: json\r\nstrip_outer_array: true\r\n".to_owned(),
        Format::Csv => {
            format!("format: csv\r\ncolumn_separator: {column_separator}\r\nrow_delimiter: \\n\r\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole body from records (each without a line end), built as the loader does.
    fn encode<'a>(format: Format, records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut body = opening(format).to_vec();
        for r in records {
            body.extend_from_slice(r);
            body.push(record_end(format));
        }
        close(format, &mut body);
        body
    }

    #[test]
    fn bodies_are_a_json_array_or_csv_lines() {
        let records: [&[u8]; 2] = [br#"{"a":1}"#, br#"{"a":2}"#];
        assert_eq!(encode(Format::Json, records), br#"[{"a":1},{"a":2}]"#);
        let rows: [&[u8]; 2] = [b"1,a", b"2,b"];
        assert_eq!(encode(Format::Csv, rows), b"1,a\n2,b\n");
        assert_eq!(encode(Format::Json, []), b"[");
        assert_eq!(encode(Format::Csv, []), b"");
    }

    #[test]
    fn a_body_is_written_as_its_pieces_in_order_whatever_the_write_sizes() {
        let mut body = Body::default();
        for piece in [&b"ab"[..], b"", b"cde", b"f", b"ghij"] {
            body.push(Bytes::copy_from_slice(piece));
        }
        assert_eq!(body.len(), 10);
        assert_eq!(body.pieces().len(), 4, "empty pieces are left out");
        assert_eq!(&body.to_bytes()[..], b"abcdefghij");
        // Writes of every size, from each `advance` a vectored write could report.
        for step in 1..=11 {
            let mut reader = body.reader();
            let mut written = Vec::new();
            while reader.has_remaining() {
                let mut slices = [IoSlice::new(&[]); 3];
                let n = reader.chunks_vectored(&mut slices);
                let all: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
                assert_eq!(&all[..], &body.to_bytes()[written.len()..][..all.len()]);
                let took = step.min(reader.remaining());
                written.extend_from_slice(&all[..took.min(all.len())]);
                reader.advance(took.min(all.len()));
            }
            assert_eq!(written, b"abcdefghij", "step {step}");
        }
        let one = Body::from(Bytes::from_static(b"xyz"));
        assert_eq!(one.into_single().as_deref(), Some(&b"xyz"[..]));
        assert!(body.into_single().is_none());
    }

    #[test]
    fn the_headers_name_the_format() {
        assert_eq!(
            headers(Format::Json, ","),
            "format: json\r\nstrip_outer_array: true\r\n"
        );
        assert_eq!(
            headers(Format::Csv, "\\x01"),
            "format: csv\r\ncolumn_separator: \\x01\r\nrow_delimiter: \\n\r\n"
        );
    }
}
