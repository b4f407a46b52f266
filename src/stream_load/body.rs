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

use crate::api::Format;

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

/// Runs at least this long are appended with non-temporal stores (see [`append_lines`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const STREAM_MIN: usize = 4096;

/// Appends `lines` (records, each followed by `\n`, holding no other `\n`) to `body`,
/// each `\n` written as the format's [`record_end`]. A body is sent long after it is
/// built (after `maxBytes` more have come in), so long runs go around the CPU caches
/// (non-temporal stores): caching them would cost a read of every line before it is
/// written, and evict the read buffers being worked on.
pub fn append_lines(format: Format, body: &mut Vec<u8>, lines: &[u8]) {
    let end = record_end(format);
    body.reserve(lines.len());
    #[cfg(target_arch = "x86_64")]
    if lines.len() >= STREAM_MIN {
        // SAFETY: room for `lines` was reserved just above.
        unsafe { stream_lines(body, lines, end) };
        return;
    }
    let at = body.len();
    body.extend_from_slice(lines);
    if end != b'\n' {
        for b in &mut body[at..] {
            if *b == b'\n' {
                *b = end;
            }
        }
    }
}

/// [`append_lines`] with SSE2 (every x86-64 CPU has it): bytes up to the body's next
/// 16-byte boundary, and after its last whole block, one at a time; the blocks between
/// with one non-temporal store each, then a fence so that they are ordered before the
/// body is handed on.
///
/// # Safety
/// `body` has room for `lines` past its length.
#[cfg(target_arch = "x86_64")]
unsafe fn stream_lines(body: &mut Vec<u8>, lines: &[u8], end: u8) {
    use std::arch::x86_64::*;
    let at = body.len();
    debug_assert!(body.capacity() - at >= lines.len());
    let dst = body.as_mut_ptr().add(at);
    let put = |i: usize| {
        let b = lines[i];
        *dst.add(i) = if b == b'\n' { end } else { b };
    };
    let head = dst.align_offset(16).min(lines.len());
    (0..head).for_each(put);
    let blocks = (lines.len() - head) / 16;
    let (newline, with) = (_mm_set1_epi8(b'\n' as i8), _mm_set1_epi8(end as i8));
    for k in 0..blocks {
        let i = head + 16 * k;
        let mut v = _mm_loadu_si128(lines.as_ptr().add(i).cast());
        if end != b'\n' {
            let m = _mm_cmpeq_epi8(v, newline);
            v = _mm_or_si128(_mm_andnot_si128(m, v), _mm_and_si128(m, with));
        }
        _mm_stream_si128(dst.add(i).cast(), v);
    }
    _mm_sfence();
    (head + 16 * blocks..lines.len()).for_each(put);
    body.set_len(at + lines.len());
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
    fn lines_are_appended_with_their_record_ends_at_any_length_and_alignment() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..400 {
            let len = rng.usize(0..3 * STREAM_MIN);
            let lines: Vec<u8> = (0..len)
                .map(|_| if rng.u8(..8) == 0 { b'\n' } else { rng.u8(..) })
                .collect();
            for format in [Format::Json, Format::Csv] {
                let mut body = vec![b'['; rng.usize(0..64)];
                let mut want = body.clone();
                want.extend(
                    lines
                        .iter()
                        .map(|&b| if b == b'\n' { record_end(format) } else { b }),
                );
                append_lines(format, &mut body, &lines);
                assert_eq!(body, want, "{len} bytes after {}", want.len() - len);
            }
        }
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
