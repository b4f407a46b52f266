//! Row ids for Merge Commit's `rowIdColumn`: each record gets an id that is fixed for its
//! life and never reused, so a record sent twice (Merge Commit is at-least-once) overwrites
//! itself in a Primary Key table keyed by it, and two records never share one.
//!
//! The id is `{label base}_r{n}`: the label base (prefix, sink, and the start id that no
//! two starts share) and a counter of the sink's records in this start. It is written
//! into the record as it is read, before the spool, so a record replayed from the spool
//! after a restart keeps its id; a record is never read twice, so no id is made twice.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::api::sink::separator_bytes;
use crate::api::Format;

/// The ids of one sink's records in this start, shared by its connections.
#[derive(Debug)]
pub struct RowIds {
    /// `"column":"base_r` for JSON, `{separator}base_r` for CSV: all of an id but its
    /// number.
    lead: Vec<u8>,
    format: Format,
    next: AtomicU64,
}

impl RowIds {
    /// Ids under `base` (a label base: letters, digits, `_` and `-`, so never escaped) in
    /// `column` (an identifier) of JSON records, or as the last value of CSV rows.
    pub fn new(base: &str, column: &str, format: Format, separator: &str) -> Self {
        let lead = match format {
            Format::Json => format!("\"{column}\":\"{base}_r").into_bytes(),
            Format::Csv => [
                // The config was checked: a separator StarRocks refuses never gets here.
                separator_bytes(separator).unwrap_or_else(|_| separator.as_bytes().to_vec()),
                format!("{base}_r").into_bytes(),
            ]
            .concat(),
        };
        Self {
            lead,
            format,
            next: AtomicU64::new(0),
        }
    }

    /// Appends `record` (one checked record: a JSON object, or a CSV row) to `out` with
    /// the next id in it.
    pub fn append(&self, out: &mut Vec<u8>, record: &[u8]) {
        let n = self.next.fetch_add(1, Relaxed);
        match self.format {
            Format::Csv => {
                out.extend_from_slice(record);
                out.extend_from_slice(&self.lead);
                out.extend_from_slice(n.to_string().as_bytes());
            }
            Format::Json => {
                // A checked record is one object: its last `}` closes it.
                let close = record
                    .iter()
                    .rposition(|b| *b == b'}')
                    .unwrap_or(record.len());
                let (head, tail) = record.split_at(close);
                out.extend_from_slice(head);
                let empty = head
                    .iter()
                    .rev()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_none_or(|b| *b == b'{');
                if !empty {
                    out.push(b',');
                }
                out.extend_from_slice(&self.lead);
                out.extend_from_slice(n.to_string().as_bytes());
                out.push(b'"');
                out.extend_from_slice(tail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_record_gets_the_next_id_in_its_column_and_stays_valid() {
        let ids = RowIds::new("pod_orders_18c2", "_starsink_id", Format::Json, ",");
        let mut out = Vec::new();
        for record in [&br#"{"id":1}"#[..], b"{ }", br#" {"a":{"b":2}}  "#] {
            ids.append(&mut out, record);
            out.push(b'\n');
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect(l))
            .collect();
        assert_eq!(lines[0]["_starsink_id"], "pod_orders_18c2_r0");
        assert_eq!(lines[0]["id"], 1);
        assert_eq!(lines[1]["_starsink_id"], "pod_orders_18c2_r1");
        assert_eq!(lines[2]["_starsink_id"], "pod_orders_18c2_r2");
        assert_eq!(lines[2]["a"]["b"], 2);

        let csv = RowIds::new("p_s_1", "rid", Format::Csv, "|");
        let mut out = Vec::new();
        csv.append(&mut out, b"1|a");
        assert_eq!(out, b"1|a|p_s_1_r0");
        // A hex separator is the byte it names, as StarRocks reads it.
        let hex = RowIds::new("p_s_1", "rid", Format::Csv, "\\x01");
        let mut out = Vec::new();
        hex.append(&mut out, b"1\x01a");
        assert_eq!(out, b"1\x01a\x01p_s_1_r0");
    }
}
