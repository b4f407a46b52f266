//! The FE side: redirects Stream Load to the BE (headers only), serves `get_load_state`.

use std::time::Duration;

use super::Io;
use tokio::io::AsyncReadExt;

use super::{LabelState, Shared};
use crate::http1::{response, Conn, RequestHead};

/// How long the FE keeps reading after its 307, to catch a body wrongly sent to it.
const BODY_WATCH: Duration = Duration::from_secs(2);

/// JSON, and the connection closes after the answer (the FE keeps none open).
const JSON_CLOSE: [(&str, &str); 2] = [
    ("Content-Type", "application/json"),
    ("Connection", "close"),
];

/// Serves one FE request: the endpoint's own `/dev/` API, a Stream Load PUT (redirected
/// to the BE, headers only), or `get_load_state`; then counts any body wrongly sent here.
pub(super) async fn connection<S: Io>(stream: S, shared: &Shared) {
    let mut conn = Conn::new(stream);
    let Ok(Some(req)) = conn.read_request_head().await else {
        return;
    };
    shared.state().fe_requests += 1;
    let path = req.path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let authorized = shared.authorized(req.headers.get("authorization"));
    let reply = match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["dev", what]) => inspect(shared, what, req.query("table")),
        (_, _) if !authorized => unauthorized(shared),
        ("PUT", ["api", db, table, "_stream_load"]) => redirect(shared, &req, db, table),
        ("GET", ["api", db, "get_load_state"]) => {
            load_state(shared, db, req.query("label").unwrap_or_default())
        }
        _ => response(
            404,
            "Not Found",
            &[("Connection", "close")],
            b"not a Stream Load path\n",
        ),
    };
    if conn.write_all(&reply).await.is_ok() {
        count_stray_body(conn, shared).await;
    }
}

fn unauthorized(shared: &Shared) -> Vec<u8> {
    shared.state().auth_failures += 1;
    let headers = [
        ("WWW-Authenticate", "Basic realm=\"\""),
        ("Connection", "close"),
    ];
    response(401, "Unauthorized", &headers, b"Access denied\n")
}

/// A Stream Load PUT: without `Expect: 100-continue` it is refused; with it, redirected
/// (307) to the BE, the query kept.
fn redirect(shared: &Shared, req: &RequestHead, db: &str, table: &str) -> Vec<u8> {
    let expects = req
        .headers
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if !expects {
        shared.state().missing_expect += 1;
        let body = br#"{"Status":"FAILED","Message":"class com.starrocks.common.DdlException: There is no 100-continue header"}"#;
        return response(200, "OK", &JSON_CLOSE, body);
    }
    let query = req
        .target
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    // Not a StarRocks fact: which scheme a real FE with HTTPS puts in its 307 is not
    // established here (shared/design/stream-load.md says nothing of TLS), and TLS is
    // often a proxy in front of both ports (the StarRocks operator's FE proxy). So the
    // endpoint can be made to say either, and the loader is tested against both.
    let scheme = if shared.be_tls() { "https" } else { "http" };
    let location = format!(
        "{scheme}://{}/api/{db}/{table}/_stream_load{query}",
        shared.be_location(req.headers.get("host"))
    );
    let headers = [("Location", location.as_str()), ("Connection", "close")];
    response(307, "Temporary Redirect", &headers, b"")
}

/// `get_load_state`: the label's state, `UNKNOWN` if never seen.
fn load_state(shared: &Shared, db: &str, label: &str) -> Vec<u8> {
    shared.close_due_windows();
    let state = {
        let mut st = shared.state();
        let s = st.labels.get(label).copied();
        // A published-late load becomes visible once it has been seen as COMMITTED.
        if s == Some(LabelState::Committed) {
            st.labels.insert(label.to_owned(), LabelState::Visible);
        }
        s
    };
    let body = serde_json::json!({
        "status": "OK", "code": "0", "msg": "Success", "message": "OK",
        "state": state.map_or("UNKNOWN", LabelState::as_str),
        "reason": "", "db": db,
    });
    response(200, "OK", &JSON_CLOSE, body.to_string().as_bytes())
}

/// The FE closes every connection after answering. Before it does, counts any body bytes
/// the client sent here: with `Expect: 100-continue` a correct client sends none.
async fn count_stray_body<S: Io>(mut conn: Conn<S>, shared: &Shared) {
    let _ = conn.flush().await;
    let mut stray = conn.buffered() as u64;
    let _ = tokio::time::timeout(BODY_WATCH, async {
        let mut buf = [0u8; 8192];
        loop {
            match conn.get_mut().read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => stray += n as u64,
            }
        }
    })
    .await;
    if stray > 0 {
        shared.state().fe_body_bytes += stray;
    }
}

/// What `/dev/summary` says: rows, loads and transactions, and per table its rows (and
/// how many are a repeat of another), its versions now and at most, and the loads the
/// limits refused.
fn summary(st: &super::State) -> serde_json::Value {
    let tables: serde_json::Map<String, serde_json::Value> = st
        .rows
        .iter()
        .map(|(t, rows)| {
            let distinct: std::collections::HashSet<&String> = rows.iter().collect();
            let versions = st.ledger.versions.get(t);
            let v = serde_json::json!({
                "rows": rows.len(),
                "duplicates": rows.len() - distinct.len(),
                "versionsNow": versions.map_or(0.0, |v| v.now.ceil()),
                "versionsPeak": versions.map_or(0, |v| v.peak),
            });
            (t.clone(), v)
        })
        .collect();
    serde_json::json!({
        "committedRows": st.committed_rows,
        "loads": st.loads.len(),
        "transactions": st.ledger.commits.len(),
        "runningTransactions": st.ledger.running,
        "refused": {
            "tooManyVersions": st.ledger.refused_versions,
            "runningTransactions": st.ledger.refused_running,
        },
        "tables": tables,
    })
}

/// The endpoint's own read API (not StarRocks'; no auth): `/dev/summary` (rows per
/// table), `/dev/loads` (every load with its outcome), `/dev/rows?table=db.table` (the
/// committed rows of a table, one per line, in commit order).
fn inspect(shared: &Shared, what: &str, table: Option<&str>) -> Vec<u8> {
    let json = |v: serde_json::Value| {
        response(
            200,
            "OK",
            &[
                ("Content-Type", "application/json"),
                ("Connection", "close"),
            ],
            format!("{v}\n").as_bytes(),
        )
    };
    shared.close_due_windows();
    let st = shared.state();
    match (what, table) {
        ("summary", _) => json(summary(&st)),
        ("loads", _) => json(serde_json::Value::Array(
            st.loads
                .iter()
                .map(|l| {
                    serde_json::json!({"label": l.label, "table": l.table, "status": l.status, "rows": l.rows, "bytes": l.body_bytes})
                })
                .collect(),
        )),
        ("rows", Some(table)) => {
            let mut body = String::new();
            for row in st.rows.get(table).into_iter().flatten() {
                body.push_str(row);
                body.push('\n');
            }
            response(
                200,
                "OK",
                &[("Content-Type", "text/plain"), ("Connection", "close")],
                body.as_bytes(),
            )
        }
        _ => response(
            404,
            "Not Found",
            &[("Connection", "close")],
            b"try /dev/summary, /dev/loads or /dev/rows?table=DB.TABLE\n",
        ),
    }
}
