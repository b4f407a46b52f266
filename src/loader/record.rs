//! Which lines are records the sink will load, and why the others are rejected.

use crate::api::Format;

/// Why a line was rejected; the `reason` label of `starsink_records_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    TooLong,
    NotJson,
    NotObject,
    Empty,
    /// An unfinished line when the connection was cut (reset, or the shutdown drain ended).
    Incomplete,
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        RejectReason::TooLong,
        RejectReason::NotJson,
        RejectReason::NotObject,
        RejectReason::Empty,
        RejectReason::Incomplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooLong => "too_long",
            RejectReason::NotJson => "not_json",
            RejectReason::NotObject => "not_object",
            RejectReason::Empty => "empty",
            RejectReason::Incomplete => "incomplete",
        }
    }
}

/// Checks one framed line (already within `maxRecordBytes`).
pub fn check(format: Format, line: &[u8]) -> Result<(), RejectReason> {
    let first = line.iter().position(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Err(RejectReason::Empty);
    };
    match format {
        Format::Csv => Ok(()),
        Format::Json => {
            if super::json::is_object(line) {
                Ok(())
            } else if line[first] == b'{' {
                Err(RejectReason::NotJson)
            } else if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() {
                Err(RejectReason::NotObject)
            } else {
                Err(RejectReason::NotJson)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_must_be_whole_objects() {
        let j = |s: &str| check(Format::Json, s.as_bytes());
        assert_eq!(j(r#"{"id":1,"name":"a"}"#), Ok(()));
        assert_eq!(j(r#"  {"nested":{"a":[1,2,{"b":null}]}}  "#), Ok(()));
        assert_eq!(j(r#"[1,2]"#), Err(RejectReason::NotObject));
        assert_eq!(j(r#"42"#), Err(RejectReason::NotObject));
        assert_eq!(j(r#""str""#), Err(RejectReason::NotObject));
        assert_eq!(j(r#"{"id":1"#), Err(RejectReason::NotJson));
        assert_eq!(j(r#"{"id":1} {"id":2}"#), Err(RejectReason::NotJson));
        assert_eq!(j("hello"), Err(RejectReason::NotJson));
        assert_eq!(j("   "), Err(RejectReason::Empty));
    }

    #[test]
    fn csv_lines_pass_unless_blank() {
        assert_eq!(check(Format::Csv, b"1,a,2024-01-01"), Ok(()));
        assert_eq!(check(Format::Csv, b""), Err(RejectReason::Empty));
    }
}
