//! The BE side of Merge Commit, as StarRocks 3.4+ behaves (`shared/design/fleet.md` §1,
//! from `LoadAction`, `BatchWriteMgr`, `MergeCommitJob`, `MergeCommitTask`,
//! `isomorphic_batch_write.cpp` and `StreamLoadContext::to_merge_commit_json`):
//! - requests to one table whose Stream Load parameters are identical (the label is not
//!   one of them) and that arrive within `merge_commit_interval_ms` of the window's first
//!   go into one transaction, labelled `merge_commit_<n>`; the request's label comes back
//!   as `RequestId`;
//! - async requests are answered at once with the window's `Label` and
//!   `LeftMergeTimeMs`; sync ones when the window's transaction is visible (`Success`),
//!   committed but not yet visible at the deadline (`Fail`, "Load has not been published
//!   before timeout") or aborted (`Fail`, "Load is aborted, reason: ...");
//! - one request whose data cannot be loaded fails the whole window, for every request in it.
//!
//! Windows close lazily: when a request or a `get_load_state` comes after their end.

use std::time::Duration;

use tokio::time::Instant;

use super::{LabelState, LoadRecord, Shared};
use crate::http1::RequestHead;

/// What makes requests mergeable: the table, and every Stream Load parameter that
/// StarRocks keys its merge jobs by (`StreamLoadHttpHeader.HTTP_HEADER_LIST`).
const KEY_HEADERS: &[&str] = &[
    "format",
    "columns",
    "column_separator",
    "strip_outer_array",
    "timeout",
    "merge_commit_interval_ms",
    "merge_commit_parallel",
    "merge_commit_async",
];

/// A Merge Commit request's parameters.
pub(super) struct MergeParams {
    key: String,
    interval: Duration,
    asynchronous: bool,
}

impl MergeParams {
    /// `Ok(None)`: not a Merge Commit request. `Err`: the FE's refusal (a `RestBaseResult`
    /// with `status: FAILED`) of one without a positive interval or parallelism.
    pub(super) fn of(req: &RequestHead, table: &str) -> Result<Option<MergeParams>, Vec<u8>> {
        let h = |k: &str| req.headers.get(k).map(str::trim);
        if !h("enable_merge_commit").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let positive = |k: &str| h(k).and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0);
        let refuse = |what: &str, k: &str| {
            let msg = format!(
                "Batch write {what} must be set positive, but is {}",
                h(k).unwrap_or("null")
            );
            serde_json::json!({"status": "FAILED", "code": "INVALID_ARGUMENT", "msg": msg})
                .to_string()
                .into_bytes()
        };
        let Some(interval_ms) = positive("merge_commit_interval_ms") else {
            return Err(refuse("interval", "merge_commit_interval_ms"));
        };
        if positive("merge_commit_parallel").is_none() {
            return Err(refuse("parallel", "merge_commit_parallel"));
        }
        let key = KEY_HEADERS
            .iter()
            .map(|k| format!("{k}={}", h(k).unwrap_or("")))
            .fold(table.to_owned(), |acc, part| acc + "|" + &part);
        Ok(Some(MergeParams {
            key,
            interval: Duration::from_millis(interval_ms),
            asynchronous: h("merge_commit_async").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        }))
    }
}

/// One merge window: a transaction that takes the rows of every matching request until
/// `closes`.
#[derive(Debug)]
pub struct MergeWindow {
    key: String,
    pub label: String,
    table: String,
    closes: Instant,
    rows: Vec<String>,
    row_count: usize,
    bytes: usize,
    /// Why the window fails, once a request in it brought data that cannot load.
    poisoned: Option<String>,
    /// How it ended, once closed.
    pub outcome: Option<LabelState>,
}

/// What the BE does with a Merge Commit request.
pub(super) enum MergeReply {
    Answer(Vec<u8>),
    /// The rows are in the window; the connection is dropped without an answer.
    Drop,
}

/// Puts a request's rows into its window and answers as StarRocks would.
pub(super) async fn load(
    shared: &Shared,
    params: &MergeParams,
    table: &str,
    request_label: &str,
    json: bool,
    body: &[u8],
) -> MergeReply {
    shared.close_due_windows();
    let parsed = super::be::parse_rows(json, body, shared.config.keep_rows);
    let faults = shared.faults();
    let (txn, closes) = match shared.join_window(params, table, body.len(), parsed) {
        Ok(joined) => joined,
        Err(why) => return MergeReply::Answer(answer(0, "", "Fail", &why, request_label, 0)),
    };
    let record = |status: &str| LoadRecord {
        label: request_label.to_owned(),
        table: table.to_owned(),
        status: status.to_owned(),
        rows: 0,
        body_bytes: body.len(),
        at: std::time::Instant::now(),
    };
    if shared.roll(faults.commit_then_drop) {
        shared.record_load(record("in window, answer dropped"));
        return MergeReply::Drop;
    }
    if params.asynchronous {
        shared.record_load(record("in window"));
        let left = closes.saturating_duration_since(Instant::now()).as_millis() as u64;
        return MergeReply::Answer(answer(
            txn,
            &shared.window_label(txn),
            "Success",
            "OK",
            request_label,
            left,
        ));
    }
    tokio::time::sleep_until(closes).await;
    shared.close_due_windows();
    let label = shared.window_label(txn);
    let (status, message) = match shared.window_outcome(txn) {
        Some((LabelState::Visible, _)) => ("Success", "OK".to_owned()),
        Some((LabelState::Committed, _)) => (
            "Fail",
            "Load has not been published before timeout".to_owned(),
        ),
        Some((_, why)) => ("Fail", format!("Load is aborted, reason: {why}")),
        None => ("Fail", "load timeout, txn status: PREPARE".to_owned()),
    };
    shared.record_load(record(status));
    MergeReply::Answer(answer(txn, &label, status, &message, request_label, 0))
}

fn answer(
    txn: u64,
    label: &str,
    status: &str,
    message: &str,
    request: &str,
    left_ms: u64,
) -> Vec<u8> {
    serde_json::json!({
        "TxnId": txn, "Label": label, "Status": status, "Message": message,
        "RequestId": request, "LeftMergeTimeMs": left_ms,
    })
    .to_string()
    .into_bytes()
}

impl Shared {
    /// Adds a request's rows to the open window of its kind, opening one if there is
    /// none (unless the limits refuse a new transaction: then why); a request whose data
    /// cannot load poisons the window. Returns the window's transaction id and when it
    /// closes.
    fn join_window(
        &self,
        params: &MergeParams,
        table: &str,
        bytes: usize,
        parsed: Result<super::be::Rows, String>,
    ) -> Result<(u64, Instant), String> {
        let now = Instant::now();
        let mut st = self.state();
        let open = st
            .windows
            .iter()
            .position(|w| w.key == params.key && w.outcome.is_none() && w.closes > now);
        let i = match open {
            Some(i) => i,
            None => {
                if let Some(why) = st.ledger.refusal(&self.config.limits, table) {
                    return Err(why);
                }
                st.ledger.running += 1;
                let label = format!("merge_commit_{}", st.windows.len() + 1);
                st.labels.insert(label.clone(), LabelState::Prepare);
                st.windows.push(MergeWindow {
                    key: params.key.clone(),
                    label,
                    table: table.to_owned(),
                    closes: now + params.interval,
                    rows: Vec::new(),
                    row_count: 0,
                    bytes: 0,
                    poisoned: None,
                    outcome: None,
                });
                st.windows.len() - 1
            }
        };
        let w = &mut st.windows[i];
        w.bytes += bytes;
        match parsed {
            Ok(super::be::Rows::Kept(rows)) => {
                w.row_count += rows.len();
                w.rows.extend(rows);
            }
            Ok(super::be::Rows::Counted(n)) => w.row_count += n,
            Err(_) => w.poisoned = Some("too many filtered rows".into()),
        }
        if self.roll(self.faults().refuse) {
            w.poisoned = Some("too many filtered rows".into());
        }
        Ok((i as u64 + 1, w.closes))
    }

    fn window_label(&self, txn: u64) -> String {
        format!("merge_commit_{txn}")
    }

    /// How window `txn` ended, and why it was aborted; `None` while it is open.
    fn window_outcome(&self, txn: u64) -> Option<(LabelState, String)> {
        let st = self.state();
        let w = st.windows.get(usize::try_from(txn).ok()?.checked_sub(1)?)?;
        let why = w
            .poisoned
            .clone()
            .unwrap_or_else(|| "the transaction was aborted".into());
        w.outcome.map(|o| (o, why))
    }

    /// Ends every window whose time is up: its rows are committed (visible, or only
    /// committed with the publish-timeout fault), or, if one of its requests brought
    /// data that cannot load or the `fail` fault says so, all of them are aborted.
    pub fn close_due_windows(&self) {
        let now = Instant::now();
        let faults = self.faults();
        let due: Vec<usize> = {
            let st = self.state();
            st.windows
                .iter()
                .enumerate()
                .filter(|(_, w)| w.outcome.is_none() && w.closes <= now)
                .map(|(i, _)| i)
                .collect()
        };
        for i in due {
            let aborted = self.roll(faults.fail);
            let late = self.roll(faults.publish_timeout);
            let mut st = self.state();
            let w = &mut st.windows[i];
            // Another caller may have closed it since the list was made.
            if w.outcome.is_some() {
                continue;
            }
            let outcome = if w.poisoned.is_some() || aborted {
                LabelState::Aborted
            } else if late {
                LabelState::Committed
            } else {
                LabelState::Visible
            };
            w.outcome = Some(outcome);
            let (label, table, rows, count, bytes) = (
                w.label.clone(),
                w.table.clone(),
                std::mem::take(&mut w.rows),
                w.row_count,
                w.bytes,
            );
            let limits = &self.config.limits;
            st.finish_label(limits, &label, outcome);
            st.ledger.running = st.ledger.running.saturating_sub(1);
            if outcome != LabelState::Aborted {
                st.ledger.committed(limits, &table, count);
                st.committed_rows += count as u64;
                st.committed_bytes += bytes as u64;
                st.rows.entry(table.clone()).or_default().extend(rows);
            }
            let committed = st.committed_rows;
            drop(st);
            self.record_load(LoadRecord {
                label,
                table,
                status: if outcome == LabelState::Aborted {
                    "window aborted"
                } else {
                    "window committed"
                }
                .into(),
                rows: count,
                body_bytes: bytes,
                at: std::time::Instant::now(),
            });
            self.committed.send_replace(committed);
        }
    }
}
