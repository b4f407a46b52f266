//! Line framing, separate from I/O: bytes in, whole lines out. A partial line is simply
//! "not yet"; a line longer than the limit is skipped without being held in memory.

use std::ops::Range;

use bytes::BytesMut;

/// One framed line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line, without its `\n` or `\r\n`.
    Record(&'a [u8]),
    /// A line over the limit, with its length; its bytes were dropped.
    TooLong(usize),
}

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineFramer {
    max: usize,
    /// Bytes of an over-long line dropped so far, while waiting for its end.
    discarding: Option<usize>,
}

impl LineFramer {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            discarding: None,
        }
    }

    /// Takes every complete line out of `buf` and returns their bytes, split off its front
    /// without a copy, leaving an incomplete tail. A tail already over the limit is
    /// dropped at once, so `buf` never holds much more than `max` bytes.
    ///
    /// `each` gets every line with, for a record that is exactly its bytes followed by
    /// `\n` (no `\r`), where those bytes and the `\n` lie in the returned bytes, so a
    /// caller can hand them on as they are.
    pub fn drain(
        &mut self,
        buf: &mut BytesMut,
        mut each: impl FnMut(Line<'_>, Option<Range<usize>>),
    ) -> BytesMut {
        let mut pos = 0;
        for nl in memchr::memchr_iter(b'\n', buf) {
            let raw = &buf[pos..nl];
            match self.discarding.take() {
                Some(dropped) => each(Line::TooLong(dropped + raw.len()), None),
                None => self.emit(raw, Some(pos..nl + 1), &mut each),
            }
            pos = nl + 1;
        }
        let tail = buf.len() - pos;
        let framed = buf.split_to(pos);
        if let Some(dropped) = self.discarding.as_mut() {
            *dropped += tail;
            buf.clear();
        } else if tail > self.max + 1 {
            // +1: the tail may end in the `\r` of a `\r\n` that is not complete yet.
            self.discarding = Some(tail);
            buf.clear();
        }
        framed
    }

    /// At end of stream: the last line, without a newline, is still a record (never one
    /// that can be handed on as it is: it has no `\n`).
    pub fn finish(
        &mut self,
        buf: &mut BytesMut,
        mut each: impl FnMut(Line<'_>, Option<Range<usize>>),
    ) {
        if let Some(dropped) = self.discarding.take() {
            each(Line::TooLong(dropped + buf.len()), None);
        } else if !buf.is_empty() {
            self.emit(&buf[..], None, &mut each);
        }
        buf.clear();
    }

    /// Drops the unfinished line held in `buf`; the rest of it is skipped as it arrives,
    /// and at its end it is a [`Line::TooLong`]. Returns the bytes dropped now.
    pub fn abandon(&mut self, buf: &mut BytesMut) -> usize {
        let n = buf.len();
        if n > 0 {
            *self.discarding.get_or_insert(0) += n;
            buf.clear();
        }
        n
    }

    /// Bytes of an unfinished line held or being dropped (lost if the stream is cut).
    pub fn pending(&self, buf: &BytesMut) -> usize {
        self.discarding.unwrap_or(0) + buf.len()
    }

    /// One line; `span` is where `raw` and its `\n` lie, if it had one.
    fn emit(
        &self,
        raw: &[u8],
        span: Option<Range<usize>>,
        each: &mut impl FnMut(Line<'_>, Option<Range<usize>>),
    ) {
        let (line, span) = match raw.strip_suffix(b"\r") {
            Some(line) => (line, None),
            None => (raw, span),
        };
        if line.len() > self.max {
            each(Line::TooLong(line.len()), None);
        } else {
            each(Line::Record(line), span);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Just;

    fn frame(max: usize, pieces: &[&[u8]], eof: bool) -> Vec<String> {
        let mut f = LineFramer::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut push = |l: Line<'_>, _: Option<Range<usize>>| {
            out.push(match l {
                Line::Record(r) => String::from_utf8_lossy(r).into_owned(),
                Line::TooLong(n) => format!("<too long: {n}>"),
            })
        };
        for p in pieces {
            buf.extend_from_slice(p);
            let mut spans = Vec::new();
            let framed = f.drain(&mut buf, |l, span| {
                if let (Line::Record(r), Some(span)) = (&l, &span) {
                    spans.push(([*r, b"\n"].concat(), span.clone()));
                }
                push(l, span)
            });
            // A record handed on as it is: its span holds exactly it and its `\n`.
            for (record, span) in spans {
                assert_eq!(&framed[span], &record[..]);
            }
        }
        if eof {
            f.finish(&mut buf, &mut push);
        }
        out
    }

    #[test]
    fn splits_on_lf_and_crlf() {
        assert_eq!(frame(100, &[b"a\nb\r\nc\n"], false), ["a", "b", "c"]);
    }

    #[test]
    fn a_line_split_across_reads_is_whole() {
        assert_eq!(
            frame(100, &[b"{\"a\"", b":1}\r", b"\n{}"], false),
            ["{\"a\":1}"]
        );
    }

    #[test]
    fn the_last_line_without_newline_is_a_record_at_eof() {
        assert_eq!(frame(100, &[b"a\nlast"], true), ["a", "last"]);
        assert!(frame(100, &[b"a\n"], true).len() == 1);
    }

    #[test]
    fn an_over_long_line_is_reported_once_and_the_next_line_survives() {
        let long = vec![b'x'; 50];
        assert_eq!(
            frame(10, &[b"ok\n", &long, &long, b"x\nnext\n"], false),
            ["ok", "<too long: 101>", "next"]
        );
        assert_eq!(frame(3, &[b"abcd\n"], false), ["<too long: 4>"]);
        assert_eq!(frame(3, &[b"abc\r\n"], false), ["abc"]);
    }

    #[test]
    fn an_over_long_unterminated_line_at_eof_is_too_long() {
        assert_eq!(frame(3, &[b"abcdefgh"], true), ["<too long: 8>"]);
    }

    /// What framing must give for `input`: split on `\n`, drop one trailing `\r`, a last
    /// unterminated line counts, and lines over `max` are rejected as too long (their
    /// reported length is for the log; whether it counts a dropped `\r` may vary).
    fn model(max: usize, input: &[u8]) -> Vec<String> {
        let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
            .into_iter()
            .map(|raw| {
                let l = raw.strip_suffix(b"\r").unwrap_or(raw);
                if l.len() > max {
                    "<too long>".to_owned()
                } else {
                    String::from_utf8_lossy(l).into_owned()
                }
            })
            .collect()
    }

    fn without_lengths(lines: Vec<String>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| {
                if l.starts_with("<too long") {
                    "<too long>".into()
                } else {
                    l
                }
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn framing_does_not_depend_on_how_the_stream_is_split(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    Just(b'\n'), Just(b'\r'), Just(b'a'), Just(b'{'), Just(b'"'), proptest::num::u8::ANY
                ],
                0..400,
            ),
            cuts in proptest::collection::vec(proptest::num::usize::ANY, 0..20),
            max in 1usize..40,
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            points.push(0);
            points.push(input.len());
            points.sort_unstable();
            points.dedup();
            let pieces: Vec<&[u8]> = points.windows(2).map(|w| &input[w[0]..w[1]]).collect();
            let whole = without_lengths(frame(max, &[&input], true));
            proptest::prop_assert_eq!(&without_lengths(frame(max, &pieces, true)), &whole);
            proptest::prop_assert_eq!(whole, model(max, &input));
        }
    }

    #[test]
    fn an_abandoned_line_is_skipped_to_its_end_and_reported_too_long() {
        let mut f = LineFramer::new(100);
        let mut buf = BytesMut::from(&b"ok\npart"[..]);
        let mut out = Vec::new();
        let mut push = |l: Line<'_>, _: Option<Range<usize>>| out.push(format!("{l:?}"));
        f.drain(&mut buf, &mut push);
        assert_eq!(f.abandon(&mut buf), 4);
        assert!(buf.is_empty());
        buf.extend_from_slice(b" of it\nnext\n");
        f.drain(&mut buf, &mut push);
        assert_eq!(
            out,
            [
                "Record([111, 107])",
                "TooLong(10)",
                "Record([110, 101, 120, 116])"
            ]
        );
    }

    #[test]
    fn records_ending_in_lf_are_placed_in_the_framed_bytes_and_others_are_not() {
        let mut f = LineFramer::new(4);
        let mut buf = BytesMut::from(&b"ab\ncd\r\ntoolong\nef\ntail"[..]);
        let mut said = Vec::new();
        let framed = f.drain(&mut buf, |l, span| said.push((format!("{l:?}"), span)));
        assert_eq!(&framed[..], b"ab\ncd\r\ntoolong\nef\n");
        assert_eq!(&buf[..], b"tail");
        assert_eq!(
            said,
            [
                ("Record([97, 98])".to_owned(), Some(0..3)),
                ("Record([99, 100])".to_owned(), None),
                ("TooLong(7)".to_owned(), None),
                ("Record([101, 102])".to_owned(), Some(15..18)),
            ]
        );
        let mut last = Vec::new();
        f.finish(&mut buf, |l, span| last.push((format!("{l:?}"), span)));
        assert_eq!(last, [("Record([116, 97, 105, 108])".to_owned(), None)]);
    }

    #[test]
    fn empty_lines_are_framed_as_empty_records() {
        assert_eq!(frame(10, &[b"\n\r\n"], false), ["", ""]);
    }
}
