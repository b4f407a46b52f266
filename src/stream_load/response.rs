//! What a Stream Load answer means: a pure classifier over the HTTP status and body,
//! following the table in `shared/design/stream-load.md`.

use serde_json::Value;

/// What the loader must do after one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The rows are committed (visible now or soon). Never re-send.
    Committed { filtered_rows: u64 },
    /// The attempt may or may not have committed: ask `get_load_state` before re-sending.
    Uncertain { reason: String },
    /// Rolled back or never started, for a reason that may pass: re-send with the same label.
    Transient { reason: String },
    /// StarRocks will never accept this batch's data as it is: dead-letter it.
    Permanent {
        reason: String,
        error_url: Option<String>,
    },
    /// StarRocks says it committed, but counted other rows than were sent (a body cut on
    /// the way): the label is spent and part of the batch may be in the table. Keep the
    /// batch (dead-letter it, marked as maybe committed) rather than count it as loaded.
    Miscounted { reason: String },
    /// The sink's configuration stops every load (access denied, an unknown table, a
    /// password that cannot be read, an endpoint that is not a Stream Load API): no batch
    /// is at fault, so none is dead-lettered. Logged as such, and retried with backoff
    /// under the same label until someone fixes the configuration.
    Misconfigured { reason: String },
    /// StarRocks asks for fewer loads (too many versions, transactions, requests): rolled
    /// back, nothing wrong with the data. Re-send under the same label after a backoff,
    /// and load less often. Never dead-lettered.
    Backpressure { reason: String, pressure: Pressure },
}

/// What StarRocks is short of when it pushes back: the `reason` of
/// `starsink_backpressure_total`. The messages, and where StarRocks writes them, are in
/// `shared/design/fleet.md` §4; every BE answer among them is an HTTP 200 with `Fail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pressure {
    /// A tablet has more versions than `tablet_max_versions` (1000): loads come faster
    /// than compaction merges them (`DeltaWriter::_init`).
    Versions,
    /// A Primary Key tablet has more committed, unapplied rowsets than
    /// `tablet_max_pending_versions` (`TabletUpdates::rowset_commit`).
    PendingRowsets,
    /// The database runs `max_running_txn_num_per_db` transactions, or a BE its share
    /// (`DatabaseTransactionMgr::checkRunningTxnExceedLimit`, `TxnManager`,
    /// `stream_load_max_txn_num_per_be`).
    Transactions,
    /// A BE is at its concurrent Stream Load limit (`enable_http_stream_load_limit`).
    Requests,
    /// Shared-data: a partition's compaction score is past the upper bound, or the
    /// ingestion slowdown outlasted the transaction (`CommitRateLimiter`).
    Compaction,
    /// A BE's load memory, or a Primary Key index, is at its limit.
    Memory,
}

impl Pressure {
    pub const ALL: [Pressure; 6] = [
        Pressure::Versions,
        Pressure::PendingRowsets,
        Pressure::Transactions,
        Pressure::Requests,
        Pressure::Compaction,
        Pressure::Memory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::Versions => "versions",
            Pressure::PendingRowsets => "pending_rowsets",
            Pressure::Transactions => "transactions",
            Pressure::Requests => "requests",
            Pressure::Compaction => "compaction",
            Pressure::Memory => "memory",
        }
    }
}

/// Message fragments (lower case) that mean StarRocks pushes back, each with what it is
/// short of (`shared/design/fleet.md` §4, with their sources in StarRocks' code).
const BACKPRESSURE: &[(&str, Pressure)] = &[
    // "Failed to load data into tablet <id>, because of too many versions, current/limit:
    // <v>/<l>. ..." (DeltaWriter::_init); 2.5.x wrote "Too many versions. tablet_id: ...".
    ("too many versions", Pressure::Versions),
    // The older BE text for the same cap (Loading_faq.md).
    ("too many tablet versions", Pressure::Versions),
    // Usually the version cap seen from the coordinator (Loading_faq.md §1).
    ("close index channel failed", Pressure::Versions),
    ("too many pending rowsets", Pressure::PendingRowsets),
    // "current running txns on db <id> is <n>, larger than limit <m>".
    ("current running txns on db", Pressure::Transactions),
    // BE txn-map shard cap: "Txn number exceeds the limit. txn_count: ..., limit: ...".
    ("txn number exceeds the limit", Pressure::Transactions),
    (
        "streamload txn num per be exceeds limit",
        Pressure::Transactions,
    ),
    // sic: "Stream Load exceed http cuncurrent limit 47, please try again later".
    ("exceed http cuncurrent limit", Pressure::Requests),
    ("exceed http concurrent limit", Pressure::Requests),
    // "Failed to load data into partition <p>, because of too large compaction score, ...".
    (
        "because of too large compaction score",
        Pressure::Compaction,
    ),
    // "Txn <id> timed out due to ingestion slowdown".
    ("timed out due to ingestion slowdown", Pressure::Compaction),
    // "memory limit exceeded, please reduce load frequency" (DeltaWriter::write).
    ("please reduce load frequency", Pressure::Memory),
    (
        "primary key memory usage exceeds the limit",
        Pressure::Memory,
    ),
];

/// [`classify`], knowing what was sent. An answer that came before the body was sent is
/// never a commit: StarRocks cannot have loaded rows it was not sent, so the answer comes
/// from a broken BE or proxy, and the label's state decides. A commit whose
/// `NumberTotalRows` is not the number of rows sent is [`Verdict::Miscounted`].
pub fn judge(http_status: u16, body: &[u8], body_sent: bool, rows_sent: Option<u64>) -> Verdict {
    let verdict = classify(http_status, body);
    if !matches!(verdict, Verdict::Committed { .. }) {
        return verdict;
    }
    if !body_sent {
        return Verdict::Uncertain {
            reason: format!("HTTP {http_status} answered a commit before the body was sent"),
        };
    }
    // Only a load that ran now counts rows: an existing label's answer carries
    // NumberTotalRows 0 (StarRocks' StreamLoadContext::to_json).
    let json = serde_json::from_slice::<Value>(body).ok();
    let ran_now = json
        .as_ref()
        .and_then(|j| text(j, &["Status", "status"]))
        .is_some_and(|s| s == "Success" || s == "Publish Timeout");
    let counted = json
        .as_ref()
        .filter(|_| ran_now)
        .and_then(|j| field(j, &["NumberTotalRows"]).and_then(Value::as_u64));
    match counted {
        Some(n) if rows_sent.is_some_and(|sent| sent != n) => Verdict::Miscounted {
            reason: format!(
                "StarRocks committed the label but counted {n} row(s) of the {} sent",
                rows_sent.unwrap_or_default()
            ),
        },
        _ => verdict,
    }
}

/// Message fragments that mean this batch's data cannot load as it is (stream-load.md,
/// "Not retryable").
const PERMANENT: &[&str] = &[
    "too many filtered rows",
    "primary key size exceed the limit",
];

/// Message fragments that mean the sink's configuration (user, password, database,
/// table, the table's kind, or a proxy that drops `Expect`) stops every load, whatever
/// the data (stream-load.md, "Not retryable").
const MISCONFIGURED: &[&str] = &[
    "access denied",
    "no valid basic authorization",
    "there is no 100-continue header",
    "unknown database",
    "unknown table",
    "does not exist",
    "only primary key table support partial update",
];

/// Message fragments of failures that pass (stream-load.md, "Retry with backoff").
const TRANSIENT: &[&str] = &[
    "service is shutting down",
    "no backend alive",
    "timeout",
    "timed out",
];

fn field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|n| v.get(*n))
}

fn text(v: &Value, names: &[&str]) -> Option<String> {
    field(v, names).map(|x| match x {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The fields of a Stream Load answer that decide its verdict.
struct Answer {
    /// `Status`, if the body is JSON that has one.
    status: Option<String>,
    /// `Message`, or the start of the body when it is not JSON.
    message: String,
    error_url: Option<String>,
    filtered_rows: u64,
    /// `ExistingJobStatus`, set with `Label Already Exists`.
    existing_job: String,
}

impl Answer {
    fn read(body: &[u8]) -> Answer {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let get = |names: &[&str]| json.as_ref().and_then(|j| text(j, names));
        Answer {
            status: get(&["Status", "status"]),
            message: get(&["Message", "message", "msg"]).unwrap_or_else(|| {
                String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned()
            }),
            error_url: get(&["ErrorURL", "ErrorUrl", "errorUrl"]).filter(|u| !u.is_empty()),
            filtered_rows: json
                .as_ref()
                .and_then(|j| field(j, &["NumberFilteredRows"]))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            existing_job: get(&["ExistingJobStatus"]).unwrap_or_default(),
        }
    }
}

/// Classifies a final answer to a Stream Load PUT: by its HTTP status first, then, for a
/// 200, by its `Status` and message.
pub fn classify(http_status: u16, body: &[u8]) -> Verdict {
    let answer = Answer::read(body);
    if http_status != 200 {
        return by_http_status(http_status, answer);
    }
    let Some(status) = answer.status.clone() else {
        // A 200 we cannot read: the load may have run.
        return Verdict::Uncertain {
            reason: format!("unreadable answer: {}", answer.message),
        };
    };
    match status.as_str() {
        "Success" | "Publish Timeout" => Verdict::Committed {
            filtered_rows: answer.filtered_rows,
        },
        "Label Already Exists" if answer.existing_job == "FINISHED" => {
            Verdict::Committed { filtered_rows: 0 }
        }
        "Label Already Exists" => Verdict::Uncertain {
            reason: format!("label already exists, its job is {:?}", answer.existing_job),
        },
        "Fail" | "FAILED" | "failed" | "Failed" => failed(&status, answer),
        other => Verdict::Uncertain {
            reason: format!("unknown status {other:?}: {}", answer.message),
        },
    }
}

/// The verdict on an answer that is not a 200.
fn by_http_status(http_status: u16, answer: Answer) -> Verdict {
    let message = answer.message;
    match http_status {
        401 | 403 => Verdict::Misconfigured {
            reason: format!(
                "HTTP {http_status}: access denied; check the sink's user and password"
            ),
        },
        404 => Verdict::Misconfigured {
            reason: format!(
                "HTTP 404: {message}; check that feEndpoints are StarRocks FE HTTP ports"
            ),
        },
        408 | 429 | 500..=599 => Verdict::Transient {
            reason: format!("HTTP {http_status}: {message}"),
        },
        _ => Verdict::Permanent {
            reason: format!("HTTP {http_status}: {message}"),
            error_url: answer.error_url,
        },
    }
}

/// The verdict on a failed load, by its message: a label already used is uncertain (the
/// load under it may have committed); then configuration, data, backpressure and
/// transient causes.
fn failed(status: &str, answer: Answer) -> Verdict {
    let Answer {
        message, error_url, ..
    } = answer;
    let lower = message.to_ascii_lowercase();
    let has_error_log = error_url.is_some();
    let permanent = |reason| Verdict::Permanent { reason, error_url };
    if lower.contains("has already been used") {
        Verdict::Uncertain {
            reason: format!("label already used: {message}"),
        }
    } else if MISCONFIGURED.iter().any(|p| lower.contains(p)) {
        Verdict::Misconfigured { reason: message }
    } else if PERMANENT.iter().any(|p| lower.contains(p)) {
        permanent(message)
    } else if let Some((_, pressure)) = BACKPRESSURE.iter().find(|(p, _)| lower.contains(p)) {
        Verdict::Backpressure {
            reason: message,
            pressure: *pressure,
        }
    } else if TRANSIENT.iter().any(|p| lower.contains(p)) {
        Verdict::Transient { reason: message }
    } else if has_error_log {
        // A failure with an error log is about the data: re-sending cannot help.
        permanent(message)
    } else if status == "Fail" {
        Verdict::Transient { reason: message }
    } else {
        // An FE refusal we do not know: most are configuration (no such table, bad column
        // mapping), which no retry fixes.
        permanent(message)
    }
}

/// A label's state, from `get_load_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadState {
    /// Never began, or forgotten (outside the label window).
    Unknown,
    /// Begun, not yet committed or aborted: wait.
    Pending,
    /// COMMITTED or VISIBLE: loaded.
    Committed,
    /// Rolled back: the label is free to use again.
    Aborted,
}

/// Reads a `get_load_state` answer.
pub fn parse_load_state(http_status: u16, body: &[u8]) -> Result<LoadState, String> {
    if http_status != 200 {
        return Err(format!(
            "get_load_state answered HTTP {http_status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(256)])
        ));
    }
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| format!("get_load_state answer is not JSON ({e})"))?;
    let ok = text(&json, &["status", "Status"]).unwrap_or_default();
    if !ok.eq_ignore_ascii_case("OK") {
        let msg = text(&json, &["msg", "message", "Message"]).unwrap_or_default();
        return Err(format!("get_load_state failed: {ok} {msg}"));
    }
    match text(&json, &["state", "State"]).as_deref() {
        Some("VISIBLE") | Some("COMMITTED") => Ok(LoadState::Committed),
        Some("PREPARE") | Some("PREPARED") => Ok(LoadState::Pending),
        Some("ABORTED") => Ok(LoadState::Aborted),
        Some("UNKNOWN") => Ok(LoadState::Unknown),
        other => Err(format!("get_load_state gave an unknown state {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(body: &str) -> Verdict {
        classify(200, body.as_bytes())
    }

    #[test]
    fn a_commit_is_believed_only_after_the_body_went_and_with_the_rows_sent() {
        let success =
            br#"{"Status":"Success","Message":"OK","NumberTotalRows":10,"NumberLoadedRows":10}"#;
        assert_eq!(
            judge(200, success, true, Some(10)),
            Verdict::Committed { filtered_rows: 0 }
        );
        assert!(matches!(
            judge(200, success, false, Some(10)),
            Verdict::Uncertain { .. }
        ));
        assert!(matches!(
            judge(200, success, true, Some(12)),
            Verdict::Miscounted { .. }
        ));
        // A property that changes what a row is: no count to check.
        assert_eq!(
            judge(200, success, true, None),
            Verdict::Committed { filtered_rows: 0 }
        );
        // Without counts (an existing label's answer) the commit stands.
        let existing = br#"{"Status":"Label Already Exists","ExistingJobStatus":"FINISHED","NumberTotalRows":0}"#;
        assert_eq!(
            judge(200, existing, true, Some(10)),
            Verdict::Committed { filtered_rows: 0 }
        );
        // An early refusal is still a refusal.
        assert!(matches!(
            judge(401, b"", false, Some(10)),
            Verdict::Misconfigured { .. }
        ));
    }

    #[test]
    fn success_and_publish_timeout_are_committed() {
        assert_eq!(
            v(
                r#"{"TxnId":1003,"Label":"l1","Status":"Success","Message":"OK","NumberTotalRows":1000,"NumberLoadedRows":1000,"NumberFilteredRows":0}"#
            ),
            Verdict::Committed { filtered_rows: 0 }
        );
        assert_eq!(
            v(r#"{"Status":"Success","NumberFilteredRows":3}"#),
            Verdict::Committed { filtered_rows: 3 }
        );
        assert!(matches!(
            v(
                r#"{"Status":"Publish Timeout","Message":"transaction commit successfully, BUT data will be publish later"}"#
            ),
            Verdict::Committed { .. }
        ));
    }

    #[test]
    fn an_existing_finished_label_is_committed_and_a_running_one_uncertain() {
        assert!(matches!(
            v(r#"{"Status":"Label Already Exists","ExistingJobStatus":"FINISHED"}"#),
            Verdict::Committed { .. }
        ));
        assert!(matches!(
            v(r#"{"Status":"Label Already Exists","ExistingJobStatus":"RUNNING"}"#),
            Verdict::Uncertain { .. }
        ));
    }

    #[test]
    fn a_reused_label_on_newer_servers_is_resolved_like_an_existing_one() {
        assert!(matches!(
            v(r#"{"Status":"Fail","Message":"Label [l1] has already been used."}"#),
            Verdict::Uncertain { .. }
        ));
    }

    #[test]
    fn data_failures_are_permanent_with_their_error_url() {
        let verdict = v(
            r#"{"Status":"Fail","Message":"too many filtered rows","ErrorURL":"http://be:8040/api/_load_error_log?file=x"}"#,
        );
        assert_eq!(
            verdict,
            Verdict::Permanent {
                reason: "too many filtered rows".into(),
                error_url: Some("http://be:8040/api/_load_error_log?file=x".into())
            }
        );
        let body = r#"{"Status":"Fail","Message":"primary key size exceed the limit"}"#;
        assert!(matches!(v(body), Verdict::Permanent { .. }));
        assert!(matches!(
            v(r#"{"Status":"Fail","Message":"parse error at row 3","ErrorURL":"http://be/x"}"#),
            Verdict::Permanent { .. }
        ));
    }

    /// Each text as StarRocks writes it (`shared/design/fleet.md` §4 gives the source of
    /// each), with what it is short of.
    #[test]
    fn every_backpressure_answer_is_its_own_class_never_a_batchs_fault() {
        use Pressure::*;
        let cases = [
            ("Failed to load data into tablet 10087, because of too many versions, current/limit: 1001/1000. You can reduce the loading job concurrency, or increase loading data batch size. If you are using INSERT INTO, please use batch insert.", Versions),
            ("too many tablet versions", Versions),
            ("Too many versions. tablet_id: 221090, version_count: 1230, limit: 1000", Versions),
            ("close index channel failed", Versions),
            ("rowset commit failed too many pending rowsets tablet:10091 #pending:1001", PendingRowsets),
            ("current running txns on db 10052 is 1000, larger than limit 1000", Transactions),
            ("Txn number exceeds the limit. txn_count: 100, limit: 100", Transactions),
            ("streamload txn num per be exceeds limit", Transactions),
            ("Stream Load exceed http cuncurrent limit 47, please try again later", Requests),
            ("Failed to load data into partition p20261205, because of too large compaction score, current/limit: 2105/2000. You can reduce the loading job concurrency, or increase compaction concurrency", Compaction),
            ("Txn 1883 timed out due to ingestion slowdown", Compaction),
            ("memory limit exceeded, please reduce load frequency or increase config `load_process_max_memory_limit_percent`", Memory),
            ("primary key memory usage exceeds the limit", Memory),
        ];
        for (msg, pressure) in cases {
            let body = serde_json::json!({"Status": "Fail", "Message": msg}).to_string();
            assert_eq!(
                v(&body),
                Verdict::Backpressure {
                    reason: msg.into(),
                    pressure
                },
                "{msg}"
            );
        }
        // Data at fault wins over a backpressure word in the same message.
        let both =
            r#"{"Status":"Fail","Message":"too many filtered rows; close index channel failed"}"#;
        assert!(matches!(v(both), Verdict::Permanent { .. }));
    }

    #[test]
    fn passing_failures_are_transient() {
        for msg in [
            "Service is shutting down, please retry later",
            "call frontend service failed, THRIFT_EAGAIN (timed out)",
        ] {
            let body = format!(r#"{{"Status":"Fail","Message":"{msg}"}}"#);
            assert!(matches!(v(&body), Verdict::Transient { .. }), "{msg}");
        }
        assert!(matches!(
            v(r#"{"status":"FAILED","msg":"No backend alive."}"#),
            Verdict::Transient { .. }
        ));
    }

    #[test]
    fn configuration_causes_are_never_a_batchs_fault() {
        for msg in [
            "Access denied; you need (at least one of) the INSERT privilege(s)",
            "only primary key table support partial update",
            "no valid Basic authorization",
            "class com.starrocks.common.DdlException: There is no 100-continue header",
            "Unknown table 'shop.ordrs'",
            "Unknown database 'shp'",
        ] {
            let body = format!(r#"{{"Status":"Fail","Message":"{msg}"}}"#);
            assert!(matches!(v(&body), Verdict::Misconfigured { .. }), "{msg}");
        }
        assert!(matches!(
            v(r#"{"status":"FAILED","msg":"Unknown table 'shop.ordrs'"}"#),
            Verdict::Misconfigured { .. }
        ));
    }

    #[test]
    fn http_errors_are_classified_by_code() {
        assert!(matches!(classify(503, b"busy"), Verdict::Transient { .. }));
        assert!(matches!(classify(500, b""), Verdict::Transient { .. }));
        assert!(matches!(classify(401, b""), Verdict::Misconfigured { .. }));
        assert!(matches!(
            classify(404, b"no such path"),
            Verdict::Misconfigured { .. }
        ));
        assert!(matches!(
            classify(400, b"bad request"),
            Verdict::Permanent { .. }
        ));
    }

    #[test]
    fn an_unreadable_or_unknown_answer_is_uncertain() {
        assert!(matches!(
            classify(200, b"<html>"),
            Verdict::Uncertain { .. }
        ));
        assert!(matches!(
            v(r#"{"Status":"Mystery"}"#),
            Verdict::Uncertain { .. }
        ));
    }

    #[test]
    fn load_states_map_to_what_the_loader_does() {
        let s = |state: &str| {
            parse_load_state(
                200,
                format!(r#"{{"status":"OK","code":"0","msg":"Success","message":"OK","state":"{state}","reason":""}}"#).as_bytes(),
            )
        };
        assert_eq!(s("VISIBLE"), Ok(LoadState::Committed));
        assert_eq!(s("COMMITTED"), Ok(LoadState::Committed));
        assert_eq!(s("PREPARE"), Ok(LoadState::Pending));
        assert_eq!(s("PREPARED"), Ok(LoadState::Pending));
        assert_eq!(s("ABORTED"), Ok(LoadState::Aborted));
        assert_eq!(s("UNKNOWN"), Ok(LoadState::Unknown));
        assert!(s("WHATEVER").is_err());
        assert!(parse_load_state(401, b"").is_err());
        assert!(parse_load_state(200, br#"{"status":"FAILED","msg":"denied"}"#).is_err());
    }
}
