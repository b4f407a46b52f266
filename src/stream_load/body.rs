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
