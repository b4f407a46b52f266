//! The BE side: checks auth and labels, reads the body after `100 Continue`, loads rows
//! and answers the way StarRocks does, or with an injected fault.

use std::time::Instant;

use super::Io;

use super::merge::{self, MergeParams, MergeReply};
use super::{load_answer, LabelState, LoadRecord, Shared};
use crate::http1::{response, BodyLength, Conn, RequestHead};
use crate::stream_load::label;

const MAX_BODY: usize = 1 << 30;

/// Serves one keep-alive BE connection (the loader keeps one per sink): each request is
/// routed, may be answered before its body (auth, an early-success fault, a bad label;
/// that ends the connection, its body unread), has its body read after `100 Continue`,
/// and is loaded and answered.
pub(super) async fn connection<S: Io>(stream: S, shared: &Shared) {
    let mut conn = Conn::new(stream);
    while let Ok(Some(req)) = conn.read_request_head().await {
        let Some(target) = Target::of(&req) else {
            let _ = conn
                .write_all(&response(404, "Not Found", &[("Connection", "close")], b""))
                .await;
            return;
        };
        if let Some(body) = early_answer(shared, &req, &target) {
            let headers = [
                ("Content-Type", "application/json"),
                ("Connection", "close"),
            ];
            let _ = conn.write_all(&response(200, "OK", &headers, &body)).await;
            return;
        }
        let Some(body) = read_body(&mut conn, &req).await else {
            return;
        };
        {
            let mut st = shared.state();
            st.largest_body = st.largest_body.max(body.len());
        }
        match MergeParams::of(&req, &target.table) {
            Ok(None) => {}
            Ok(Some(params)) => {
                let reply = merge::load(
                    shared,
                    &params,
                    &target.table,
                    &target.label,
                    target.json,
                    &body,
                )
                .await;
                let MergeReply::Answer(answer) = reply else {
                    return;
                };
                let headers = [("Content-Type", "application/json")];
                if conn
                    .write_all(&response(200, "OK", &headers, &answer))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Err(refusal) => {
                let headers = [
                    ("Content-Type", "application/json"),
                    ("Connection", "close"),
                ];
                let _ = conn
                    .write_all(&response(200, "OK", &headers, &refusal))
                    .await;
                return;
            }
        }
        let outcome = run_load(shared, &target, &body).await;
        if !reply(&mut conn, shared, &target, body.len(), outcome).await {
            return;
        }
    }
}

/// Where a load goes: `/api/{db}/{table}/_stream_load`, with its label and format.
struct Target {
    table: String,
    label: String,
    json: bool,
}

impl Target {
    fn of(req: &RequestHead) -> Option<Target> {
        let parts: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
        let ["api", db, table, "_stream_load"] = parts.as_slice() else {
            return None;
        };
        Some(Target {
            table: format!("{db}.{table}"),
            // The label is optional: StarRocks makes one up when none is given (Stream
            // Load docs, "label": "If you do not specify a label, StarRocks automatically
            // generates a label"); it follows the same rules, so the load cannot dedupe.
            label: match req.headers.get("label") {
                Some(l) if !l.is_empty() => l.to_owned(),
                _ => format!(
                    "generated_{:016x}{:016x}",
                    fastrand::u64(..),
                    fastrand::u64(..)
                ),
            },
            json: req
                .headers
                .get("format")
                .unwrap_or("csv")
                .eq_ignore_ascii_case("json"),
        })
    }

    fn record(&self, status: &str, rows: usize, body_bytes: usize) -> LoadRecord {
        LoadRecord {
            label: self.label.clone(),
            table: self.table.clone(),
            status: status.to_owned(),
            rows,
            body_bytes,
            at: Instant::now(),
        }
    }
}

/// The answer given before the body is read, if any: bad credentials, an injected early
/// `Success` (a broken proxy), or a label StarRocks would refuse.
fn early_answer(shared: &Shared, req: &RequestHead, t: &Target) -> Option<Vec<u8>> {
    let label = &t.label;
    if !shared.authorized(req.headers.get("authorization")) {
        shared.state().auth_failures += 1;
        let message = "no valid Basic authorization";
        return Some(load_answer(label, "Fail", message, 0, 0, &[]));
    }
    if shared.roll(shared.faults().early_success) {
        shared.record_load(t.record("early Success", 0, 0));
        return Some(load_answer(label, "Success", "OK", 10, 0, &[]));
    }
    if !label::is_valid(label) {
        let message = format!("Invalid label: {label:?} must match ^[-\\w]{{1,128}}$");
        return Some(load_answer(label, "Fail", &message, 0, 0, &[]));
    }
    None
}

/// Reads the body, after `100 Continue` when the client asked for it; `None` when the
/// connection is to end (no length: 411; or it failed).
async fn read_body<S: Io>(conn: &mut Conn<S>, req: &RequestHead) -> Option<bytes::Bytes> {
    let expects = req
        .headers
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects
        && conn
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return None;
    }
    match req.headers.body_length() {
        BodyLength::UntilClose => {
            let refusal = response(411, "Length Required", &[("Connection", "close")], b"");
            let _ = conn.write_all(&refusal).await;
            None
        }
        len => conn.read_body(len, MAX_BODY).await.ok(),
    }
}

/// Loads a body: a taken label is answered as such; otherwise, after an injected slow
/// start (its label reads PREPARE meanwhile), the load runs.
async fn run_load(shared: &Shared, t: &Target, body: &[u8]) -> LoadAnswer {
    if let Some(answer) = existing_label(shared, &t.label) {
        return answer;
    }
    let faults = shared.faults();
    let limits = &shared.config.limits;
    if let Some(why) = shared.state().ledger.refusal(limits, &t.table) {
        return answer("Fail", &why, 0);
    }
    if !shared.roll(faults.slow) {
        return load(shared, &t.label, &t.table, t.json, body, &faults);
    }
    // A slow load is a running transaction: its label reads PREPARE, and a second
    // request with it is told `Label Already Exists` / `RUNNING`.
    {
        let mut st = shared.state();
        st.labels.insert(t.label.clone(), LabelState::Prepare);
        st.ledger.running += 1;
    }
    tokio::time::sleep(faults.slow_by).await;
    let answer = load(shared, &t.label, &t.table, t.json, body, &faults);
    shared.state().ledger.running -= 1;
    answer
}

/// Records the load and answers it; false when the connection is to end (a dropped
/// answer, or a failed write).
async fn reply<S: Io>(
    conn: &mut Conn<S>,
    shared: &Shared,
    t: &Target,
    body_bytes: usize,
    outcome: LoadAnswer,
) -> bool {
    let notify = || {
        let committed = shared.state().committed_rows;
        shared.committed.send_replace(committed);
    };
    match outcome {
        LoadAnswer::Drop { rows } => {
            shared.record_load(t.record("dropped", rows, body_bytes));
            notify();
            false
        }
        LoadAnswer::Http503 => {
            shared.record_load(t.record("503", 0, body_bytes));
            let busy = response(503, "Service Unavailable", &[], b"busy\n");
            conn.write_all(&busy).await.is_ok()
        }
        LoadAnswer::Answer {
            status,
            message,
            rows,
            extra,
        } => {
            shared.record_load(t.record(&status, rows, body_bytes));
            notify();
            let body = load_answer(&t.label, &status, &message, rows, body_bytes, &extra);
            let headers = [("Content-Type", "application/json")];
            conn.write_all(&response(200, "OK", &headers, &body))
                .await
                .is_ok()
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

/// Runs a load whose label is free: an injected fault, an empty or unparsable body, or
/// refused rows abort it (the label is free again); otherwise its rows are committed.
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
    let abort = |answer: LoadAnswer| {
        let limits = &shared.config.limits;
        shared
            .state()
            .finish_label(limits, label, LabelState::Aborted);
        answer
    };
    if body.is_empty() {
        return abort(answer("Fail", "all partitions have no load data", 0));
    }
    if shared.roll(faults.fail) {
        // StarRocks' BE while it stops (be/src/http/action/stream_load.cpp).
        return abort(answer(
            "Fail",
            "Service is shutting down, please retry later",
            0,
        ));
    }
    if shared.roll(faults.backpressure) {
        let why = super::limits::too_many_versions(1001, 1000);
        return abort(answer("Fail", &why, 0));
    }
    let mut rows = match parse_rows(json, body, shared.config.keep_rows) {
        Ok(rows) => rows,
        Err(e) => {
            let url = "http://127.0.0.1/api/_load_error_log?file=parse";
            return abort(failed(&format!("parse error: {e}"), 0, url));
        }
    };
    if shared.roll(faults.short_body) {
        rows.halve();
    }
    let count = rows.len();
    if shared.roll(faults.refuse) {
        let url = format!("http://127.0.0.1/api/_load_error_log?file=__shard_0/error_log_{label}");
        return abort(failed("too many filtered rows", count, &url));
    }
    let publish_late = shared.roll(faults.publish_timeout);
    let drop_answer = shared.roll(faults.commit_then_drop);
    commit(shared, label, table, rows, body.len(), publish_late);
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

/// A `Fail` answer with an `ErrorURL`.
fn failed(message: &str, rows: usize, error_url: &str) -> LoadAnswer {
    LoadAnswer::Answer {
        status: "Fail".into(),
        message: message.into(),
        rows,
        extra: vec![("ErrorURL", error_url.into())],
    }
}

/// Commits `rows` under `label`: COMMITTED when its publish is late, else VISIBLE.
fn commit(shared: &Shared, label: &str, table: &str, rows: Rows, bytes: usize, late: bool) {
    let mut st = shared.state();
    let state = if late {
        LabelState::Committed
    } else {
        LabelState::Visible
    };
    let limits = &shared.config.limits;
    st.finish_label(limits, label, state);
    st.ledger.committed(limits, table, rows.len());
    st.committed_rows += rows.len() as u64;
    st.committed_bytes += bytes as u64;
    if let Rows::Kept(rows) = rows {
        st.rows.entry(table.to_owned()).or_default().extend(rows);
    }
}

/// Splits a body into rows: a JSON array of objects (`strip_outer_array`), or `\n` rows.
/// Without `keep` (benchmarks) the body is not parsed at all and counts as no rows.
/// The rows of a body: kept (as text) for tests, or only counted (benchmarks), since an
/// answer always carries `NumberTotalRows`.
pub(super) enum Rows {
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

    /// Keeps the first half: a commit that counts fewer rows than were sent.
    fn halve(&mut self) {
        match self {
            Rows::Kept(r) => r.truncate(r.len() / 2),
            Rows::Counted(n) => *n /= 2,
        }
    }
}

pub(super) fn parse_rows(json: bool, body: &[u8], keep: bool) -> Result<Rows, String> {
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
