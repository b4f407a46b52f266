//! The BE side: checks auth and labels, reads the body after `100 Continue`, loads rows
//! and answers the way StarRocks does, or with an injected fault.

use std::time::Instant;

use tokio::net::TcpStream;

use super::{load_answer, LabelState, LoadRecord, Shared};
use crate::http1::{response, BodyLength, Conn};
use crate::stream_load::label;

const MAX_BODY: usize = 1 << 30;

pub(super) async fn connection(stream: TcpStream, shared: &Shared) {
    let mut conn = Conn::new(stream);
    // BE connections are keep-alive: the loader keeps one per sink.
    while let Ok(Some(req)) = conn.read_request_head().await {
        let parts: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
        let ["api", db, table, "_stream_load"] = parts.as_slice() else {
            let _ = conn
                .write_all(&response(404, "Not Found", &[("Connection", "close")], b""))
                .await;
            return;
        };
        let table = format!("{db}.{table}");
        let label = req.headers.get("label").unwrap_or_default().to_owned();
        let json = req
            .headers
            .get("format")
            .unwrap_or("csv")
            .eq_ignore_ascii_case("json");

        // Answers that come before the body is read end the connection: its body is unread.
        let early = if !shared.authorized(req.headers.get("authorization")) {
            shared.state().auth_failures += 1;
            Some(load_answer(
                &label,
                "Fail",
                "no valid Basic authorization",
                0,
                0,
                &[],
            ))
        } else if shared.roll(shared.faults().early_success) {
            shared.record_load(LoadRecord {
                label: label.clone(),
                table: table.clone(),
                status: "early Success".into(),
                rows: 0,
                body_bytes: 0,
                at: Instant::now(),
            });
            Some(load_answer(&label, "Success", "OK", 10, 0, &[]))
        } else if !label::is_valid(&label) {
            Some(load_answer(
                &label,
                "Fail",
                &format!("Invalid label: {label:?} must match ^[-\\w]{{1,128}}$"),
                0,
                0,
                &[],
            ))
        } else {
            None
        };
        if let Some(body) = early {
            let _ = conn
                .write_all(&response(
                    200,
                    "OK",
                    &[
                        ("Content-Type", "application/json"),
                        ("Connection", "close"),
                    ],
                    &body,
                ))
                .await;
            return;
        }

        let len = req.headers.body_length();
        if req
            .headers
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            && conn
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let body = match len {
            BodyLength::UntilClose => {
                let _ = conn
                    .write_all(&response(
                        411,
                        "Length Required",
                        &[("Connection", "close")],
                        b"",
                    ))
                    .await;
                return;
            }
            len => match conn.read_body(len, MAX_BODY).await {
                Ok(b) => b,
                Err(_) => return,
            },
        };
        {
            let mut st = shared.state();
            st.largest_body = st.largest_body.max(body.len());
        }

        let faults = shared.faults();
        let outcome = match existing_label(shared, &label) {
            Some(answer) => answer,
            None => {
                if shared.roll(faults.slow) {
                    // A slow load is a running transaction: its label reads PREPARE, and a
                    // second request with it is told `Label Already Exists` / `RUNNING`.
                    shared
                        .state()
                        .labels
                        .insert(label.clone(), LabelState::Prepare);
                    tokio::time::sleep(faults.slow_by).await;
                }
                load(shared, &label, &table, json, &body, &faults)
            }
        };
        let record = |status: &str, rows: usize| LoadRecord {
            label: label.clone(),
            table: table.clone(),
            status: status.to_owned(),
            rows,
            body_bytes: body.len(),
            at: Instant::now(),
        };
        let notify = || {
            let committed = shared.state().committed_rows;
            shared.committed.send_replace(committed);
        };
        match outcome {
            LoadAnswer::Drop { rows } => {
                shared.record_load(record("dropped", rows));
                notify();
                return;
            }
            LoadAnswer::Http503 => {
                shared.record_load(record("503", 0));
                let _ = conn
                    .write_all(&response(503, "Service Unavailable", &[], b"busy\n"))
                    .await;
            }
            LoadAnswer::Answer {
                status,
                message,
                rows,
                extra,
            } => {
                shared.record_load(record(&status, rows));
                notify();
                let body = load_answer(&label, &status, &message, rows, body.len(), &extra);
                if conn
                    .write_all(&response(
                        200,
                        "OK",
                        &[("Content-Type", "application/json")],
                        &body,
                    ))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

enum LoadAnswer {
    Answer {
        status: String,
        message: String,
        rows: usize,
        extra: Vec<(&'static str, serde_json::Value)>,
    },
    Http503,
    /// Committed, and the connection is to be dropped without an answer.
    Drop {
        rows: usize,
    },
}

fn answer(status: &str, message: &str, rows: usize) -> LoadAnswer {
    LoadAnswer::Answer {
        status: status.into(),
        message: message.into(),
        rows,
        extra: Vec::new(),
    }
}

/// The answer to a request whose label is already taken, if it is: a finished or a
/// running transaction keeps its label; an aborted one frees it for a retry.
fn existing_label(shared: &Shared, label: &str) -> Option<LoadAnswer> {
    let status = match shared.state().labels.get(label)? {
        LabelState::Committed | LabelState::Visible => "FINISHED",
        LabelState::Prepare => "RUNNING",
        LabelState::Aborted => return None,
    };
    Some(LoadAnswer::Answer {
        status: "Label Already Exists".into(),
        message: format!("Label [{label}] has already been used."),
        rows: 0,
        extra: vec![("ExistingJobStatus", status.into())],
    })
}

/// Runs a load whose label is free.
fn load(
    shared: &Shared,
    label: &str,
    table: &str,
    json: bool,
    body: &[u8],
    faults: &super::Faults,
) -> LoadAnswer {
    if shared.roll(faults.unavailable) {
        // No transaction began: a slow request's PREPARE label is free again.
        shared.state().labels.remove(label);
        return LoadAnswer::Http503;
    }
    if body.is_empty() {
        shared
            .state()
            .labels
            .insert(label.to_owned(), LabelState::Aborted);
        return answer("Fail", "all partitions have no load data", 0);
    }
    if shared.roll(faults.fail) {
        shared
            .state()
            .labels
            .insert(label.to_owned(), LabelState::Aborted);
        return answer("Fail", "too many tablet versions", 0);
    }
    let rows = match parse_rows(json, body, shared.config.keep_rows) {
        Ok(rows) => rows,
        Err(e) => {
            shared
                .state()
                .labels
                .insert(label.to_owned(), LabelState::Aborted);
            return LoadAnswer::Answer {
                status: "Fail".into(),
                message: format!("parse error: {e}"),
                rows: 0,
                extra: vec![(
                    "ErrorURL",
                    "http://127.0.0.1/api/_load_error_log?file=parse".into(),
                )],
            };
        }
    };
    let rows = if shared.roll(faults.short_body) {
        match rows {
            Rows::Kept(mut r) => {
                r.truncate(r.len() / 2);
                Rows::Kept(r)
            }
            Rows::Counted(n) => Rows::Counted(n / 2),
        }
    } else {
        rows
    };
    let count = rows.len();
    if shared.roll(faults.refuse) {
        shared
            .state()
            .labels
            .insert(label.to_owned(), LabelState::Aborted);
        return LoadAnswer::Answer {
            status: "Fail".into(),
            message: "too many filtered rows".into(),
            rows: count,
            extra: vec![(
                "ErrorURL",
                format!("http://127.0.0.1/api/_load_error_log?file=__shard_0/error_log_{label}")
                    .into(),
            )],
        };
    }
    let publish_late = shared.roll(faults.publish_timeout);
    let drop_answer = shared.roll(faults.commit_then_drop);
    {
        let mut st = shared.state();
        st.labels.insert(
            label.to_owned(),
            if publish_late {
                LabelState::Committed
            } else {
                LabelState::Visible
            },
        );
        st.committed_rows += count as u64;
        st.committed_bytes += body.len() as u64;
        if let Rows::Kept(rows) = rows {
            st.rows.entry(table.to_owned()).or_default().extend(rows);
        }
    }
    if drop_answer {
        LoadAnswer::Drop { rows: count }
    } else if publish_late {
        answer(
            "Publish Timeout",
            "transaction commit successfully, BUT data will be publish later",
            count,
        )
    } else {
        answer("Success", "OK", count)
    }
}

/// Splits a body into rows: a JSON array of objects (`strip_outer_array`), or `\n` rows.
/// Without `keep` (benchmarks) the body is not parsed at all and counts as no rows.
/// The rows of a body: kept (as text) for tests, or only counted (benchmarks), since an
/// answer always carries `NumberTotalRows`.
enum Rows {
    Kept(Vec<String>),
    Counted(usize),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Kept(r) => r.len(),
            Rows::Counted(n) => *n,
        }
    }
}

fn parse_rows(json: bool, body: &[u8], keep: bool) -> Result<Rows, String> {
    if !keep {
        return Ok(Rows::Counted(if json {
            count_json_elements(body)
        } else {
            memchr::memchr_iter(b'\n', body).count() + usize::from(!body.ends_with(b"\n"))
        }));
    }
    parse_kept(json, body).map(Rows::Kept)
}

/// The number of elements of a JSON array, by one pass over its structure (strings and
/// nesting skipped); for bodies too large to keep.
fn count_json_elements(body: &[u8]) -> usize {
    let (mut depth, mut in_string, mut escaped, mut count) = (0u32, false, false, 0);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                if depth == 1 {
                    count += 1;
                }
                depth += 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    count
}

fn parse_kept(json: bool, body: &[u8]) -> Result<Vec<String>, String> {
    if json {
        let items: Vec<&serde_json::value::RawValue> =
            serde_json::from_slice(body).map_err(|e| format!("body is not a JSON array: {e}"))?;
        if let Some(bad) = items.iter().find(|r| !r.get().starts_with('{')) {
            return Err(format!("array element is not an object: {}", bad.get()));
        }
        Ok(items.iter().map(|r| r.get().to_owned()).collect())
    } else {
        let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        Ok(text.split('\n').map(str::to_owned).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_rows_match_kept_rows() {
        let body = br#"[{"a":"x]}\"{"},{"b":[1,{"c":2}]},{}]"#;
        assert_eq!(count_json_elements(body), 3);
        assert_eq!(parse_kept(true, body).unwrap().len(), 3);
        assert_eq!(parse_rows(false, b"a,b\nc,d\n", false).unwrap().len(), 2);
        assert_eq!(parse_rows(false, b"a,b\nc,d", false).unwrap().len(), 2);
    }
}
