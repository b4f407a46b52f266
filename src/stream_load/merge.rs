//! Delivering a batch with Merge Commit (StarRocks 3.4 or later): StarRocks puts the
//! requests of every loader of a sink that arrive within one window into one transaction
//! of its own, labelled `merge_commit_...`, and ignores the request's label (it comes
//! back as `RequestId`). So a batch counts as loaded only once that transaction is
//! COMMITTED or VISIBLE, a request whose outcome is unknown is sent again (at-least-once),
//! and a window that fails for its data (perhaps another loader's rows) is retried a few
//! times before the batch is dead-lettered. The protocol facts, with their sources in
//! StarRocks' code, are in `shared/design/fleet.md` §1.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::api::{MergeCommitSpec, RetrySpec};
use crate::stream_load::client::{StreamLoadClient, TransportError};
use crate::stream_load::delivery::{settle, Attempt, Backoff, Delivered, Then};
use crate::stream_load::response::{classify, LoadState, Verdict};

/// Failed windows a batch is sent again after, before it is dead-lettered.
pub const MAX_FAILED_WINDOWS: u32 = 3;
/// How long a window's transaction may stay unknown to the FE after the window closed
/// before it counts as lost (StarRocks does not persist Merge Commit tasks, so an FE
/// restart forgets it) and the batch is sent again.
const LOST_AFTER: Duration = Duration::from_secs(60);
/// The first look at a window's transaction comes this long after the window closes.
const FIRST_POLL_DELAY: Duration = Duration::from_millis(500);
/// Later looks back off from the first to the most, with jitter, so that many loaders
/// do not ask the leader FE in step.
const POLL_BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(5));

/// What one Merge Commit answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeAnswer {
    /// Visible: a sync `Success`, or a plain commit from a server that ignored Merge
    /// Commit (no `RequestId` in the answer).
    Committed,
    /// In the window whose transaction is `txn_label`: ask for it after `wait`. An async
    /// `Success`; or a sync `Fail` at the deadline whose transaction is committed but not
    /// yet visible ("Load has not been published before timeout") or still running
    /// ("load timeout, txn status: PREPARE").
    InWindow { txn_label: String, wait: Duration },
    /// The window's transaction failed for its data, which may be another loader's.
    WindowFailed {
        reason: String,
        error_url: Option<String>,
    },
    /// What the plain classifier says (transient, backpressure, configuration, unknown).
    Other(Verdict),
}

/// Classifies an answer to a Merge Commit request. `Status` is only `Success` or `Fail`
/// here; `Label` is the window's transaction, `LeftMergeTimeMs` (older servers:
/// `LeftTimeMs`) how long its window still runs (`StreamLoadContext::to_merge_commit_json`).
pub fn classify_merge(
    http_status: u16,
    body: &[u8],
    body_sent: bool,
    asynchronous: bool,
) -> MergeAnswer {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let get = |k: &str| json.as_ref().and_then(|j| j.get(k));
    let text = |k: &str| {
        get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let txn_label = text("Label");
    let in_window = |wait| MergeAnswer::InWindow {
        txn_label: txn_label.clone(),
        wait,
    };
    let message = text("Message").to_ascii_lowercase();
    match (http_status, text("Status").as_str()) {
        (200, "Success") if !body_sent => MergeAnswer::Other(Verdict::Uncertain {
            reason: "a Success answered before the body was sent".into(),
        }),
        (200, "Success") if get("RequestId").is_none() || !asynchronous => MergeAnswer::Committed,
        (200, "Success") if txn_label.is_empty() => MergeAnswer::Other(Verdict::Uncertain {
            reason: "an async Merge Commit Success without the window's Label".into(),
        }),
        (200, "Success") => {
            let left = get("LeftMergeTimeMs")
                .or(get("LeftTimeMs"))
                .and_then(Value::as_u64);
            in_window(Duration::from_millis(left.unwrap_or(0)))
        }
        // Committed, not yet visible, at the sync deadline: never re-send (isomorphic_batch_write.cpp).
        (200, "Fail")
            if !txn_label.is_empty()
                && message.contains("load has not been published before timeout") =>
        {
            in_window(Duration::ZERO)
        }
        (200, "Fail")
            if !txn_label.is_empty() && message.contains("load timeout, txn status: prepare") =>
        {
            in_window(Duration::ZERO)
        }
        _ => match classify(http_status, body) {
            Verdict::Permanent { reason, error_url } => {
                MergeAnswer::WindowFailed { reason, error_url }
            }
            // "Load is aborted, reason: ..." for a cause other than the data: send again.
            Verdict::Transient { reason } if message.contains("data quality") => {
                MergeAnswer::WindowFailed {
                    reason,
                    error_url: None,
                }
            }
            other => MergeAnswer::Other(other),
        },
    }
}

/// How a window's transaction ended, as `get_load_state` says.
enum Window {
    Committed,
    Aborted,
    /// Unknown to the FE long after its window: forgotten.
    Lost,
}

/// Delivers `body` under Merge Commit until its window's transaction commits, or until
/// [`MAX_FAILED_WINDOWS`] windows failed for their data, as StarRocks' answer said (then
/// it is refused, to be dead-lettered, marked as maybe committed if an earlier copy may
/// have been). A window seen ABORTED through `get_load_state`, which gives no reason, is
/// sent again without counting. Transient failures and backpressure are retried as in
/// [`crate::stream_load::deliver`]; an unknown outcome is sent again.
pub async fn deliver_merged(
    client: &mut StreamLoadClient,
    label: &str,
    body: &Bytes,
    retry: &RetrySpec,
    mc: &MergeCommitSpec,
    report: &mut impl FnMut(&Attempt),
) -> Delivered {
    let mut backoff = Backoff::new(retry);
    let mut pressure = Backoff::for_pressure(retry);
    let mut failed = 0;
    // An earlier request may have committed its copy (an answer lost, a window forgotten):
    // a batch dead-lettered then is marked so.
    let mut maybe_committed = false;
    loop {
        let answer = send(client, label, body, mc.asynchronous).await;
        let wait = match follow(client, answer, mc, report, &mut maybe_committed).await {
            Step::Done(delivered) => return delivered,
            Step::Again => backoff.wait(),
            Step::SlowDown => pressure.wait(),
            Step::WindowFailed(reason, error_url) => {
                failed += 1;
                report(&Attempt::WindowFailed(reason.clone()));
                if failed >= MAX_FAILED_WINDOWS {
                    return Delivered::Refused {
                        reason: format!("the merged window failed {failed} times, the last: {reason} (a window holds other loaders' rows too: the bad rows may be theirs)"),
                        error_url,
                        uncertain: maybe_committed,
                        miscounted: false,
                    };
                }
                backoff.wait()
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Sends the batch once and classifies the answer; a transport failure by whether the
/// body may have been received.
async fn send(
    client: &mut StreamLoadClient,
    label: &str,
    body: &Bytes,
    asynchronous: bool,
) -> MergeAnswer {
    match client.put(label, body).await {
        Ok(a) => classify_merge(a.status, &a.body, a.body_sent, asynchronous),
        Err(TransportError::NotSent(e)) => MergeAnswer::Other(Verdict::Transient { reason: e }),
        Err(TransportError::Misconfigured(e)) => {
            MergeAnswer::Other(Verdict::Misconfigured { reason: e })
        }
        Err(TransportError::Unknown(e)) => MergeAnswer::Other(Verdict::Uncertain { reason: e }),
    }
}

/// What follows one answer.
enum Step {
    Done(Delivered),
    /// Send again after the usual backoff.
    Again,
    /// StarRocks pushes back: send again, to the next FE, after the longer backoff.
    SlowDown,
    /// The window failed for its data, as StarRocks said: counts toward dead-lettering.
    WindowFailed(String, Option<String>),
}

/// Follows an answer: a window is waited for; the plain classes go as in
/// [`crate::stream_load::deliver`]. Sets `maybe_committed` when an earlier copy may have
/// landed (its outcome unknown, or its window forgotten).
async fn follow(
    client: &mut StreamLoadClient,
    answer: MergeAnswer,
    mc: &MergeCommitSpec,
    report: &mut impl FnMut(&Attempt),
    maybe_committed: &mut bool,
) -> Step {
    match answer {
        MergeAnswer::Committed => {
            report(&Attempt::Committed);
            Step::Done(Delivered::Committed { filtered_rows: 0 })
        }
        MergeAnswer::InWindow { txn_label, wait } => {
            report(&Attempt::InWindow(txn_label.clone()));
            match await_window(client, &txn_label, wait, mc, report).await {
                Window::Committed => {
                    report(&Attempt::Committed);
                    Step::Done(Delivered::Committed { filtered_rows: 0 })
                }
                Window::Aborted => {
                    // get_load_state does not say why: the data, or the cluster (a
                    // timeout, a restart, backpressure). Sent again without counting
                    // toward dead-lettering, which only known data failures do.
                    let why = format!("the window's transaction {txn_label} was aborted");
                    report(&Attempt::WindowFailed(why));
                    Step::Again
                }
                Window::Lost => {
                    *maybe_committed = true;
                    report(&Attempt::Uncertain(format!("the window's transaction {txn_label} is unknown to StarRocks; sending the batch again")));
                    Step::Again
                }
            }
        }
        MergeAnswer::WindowFailed { reason, error_url } => Step::WindowFailed(reason, error_url),
        MergeAnswer::Other(verdict) => match settle(verdict, report) {
            Then::Done(delivered) => Step::Done(delivered),
            Then::SlowDown => {
                client.rotate_fe();
                Step::SlowDown
            }
            Then::OtherFe => {
                client.rotate_fe();
                Step::Again
            }
            // StarRocks ignores the label: an unknown outcome cannot be looked up, only
            // sent again (at-least-once).
            Then::Resolve => {
                *maybe_committed = true;
                Step::Again
            }
            Then::Retry => Step::Again,
        },
    }
}

/// Waits for the window's transaction: a first look once the window has closed (after
/// `wait`, plus a little and some jitter), then looks with backoff until it is COMMITTED
/// or VISIBLE, ABORTED, or unknown for longer than [`LOST_AFTER`].
async fn await_window(
    client: &mut StreamLoadClient,
    txn_label: &str,
    wait: Duration,
    mc: &MergeCommitSpec,
    report: &mut impl FnMut(&Attempt),
) -> Window {
    let jitter = mc.interval.0.mul_f64(fastrand::f64() * 0.2);
    tokio::time::sleep(wait + FIRST_POLL_DELAY + jitter).await;
    let since = tokio::time::Instant::now();
    let mut backoff = Backoff::between(POLL_BACKOFF.0, POLL_BACKOFF.1);
    loop {
        match client.load_state(txn_label).await {
            Ok(LoadState::Committed) => return Window::Committed,
            Ok(LoadState::Aborted) => return Window::Aborted,
            Ok(LoadState::Unknown) if since.elapsed() > mc.interval.0 + LOST_AFTER => {
                return Window::Lost
            }
            Ok(LoadState::Pending | LoadState::Unknown) => report(&Attempt::Pending),
            Err(e) => report(&Attempt::StateUnavailable(e)),
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(status: u16, body: serde_json::Value, asynchronous: bool) -> MergeAnswer {
        classify_merge(status, body.to_string().as_bytes(), true, asynchronous)
    }

    /// The answers of `to_merge_commit_json` and `isomorphic_batch_write.cpp`, as
    /// `shared/design/fleet.md` §1.5 and §4 give them.
    #[test]
    fn merge_commit_answers_mean_what_starrocks_says() {
        use serde_json::json;
        let ok = json!({"TxnId": 1234, "Label": "merge_commit_7", "Status": "Success", "Message": "OK",
            "RequestId": "pod_orders_x_1", "LeftMergeTimeMs": 4990});
        assert_eq!(
            c(200, ok.clone(), true),
            MergeAnswer::InWindow {
                txn_label: "merge_commit_7".into(),
                wait: Duration::from_millis(4990)
            }
        );
        assert_eq!(
            c(200, ok, false),
            MergeAnswer::Committed,
            "sync Success is visible"
        );
        let older = json!({"Label": "merge_commit_8", "Status": "Success", "RequestId": "r", "LeftTimeMs": 10});
        assert!(
            matches!(c(200, older, true), MergeAnswer::InWindow { wait, .. } if wait == Duration::from_millis(10))
        );
        // A server that ignored enable_merge_commit answers a plain load: committed.
        let plain = json!({"Label": "pod_orders_x_1", "Status": "Success", "NumberTotalRows": 3});
        assert_eq!(c(200, plain, true), MergeAnswer::Committed);
        // Committed but not visible at the sync deadline: ask, never re-send.
        let late = json!({"Label": "merge_commit_9", "Status": "Fail", "RequestId": "r",
            "Message": "Load has not been published before timeout"});
        assert_eq!(
            c(200, late, false),
            MergeAnswer::InWindow {
                txn_label: "merge_commit_9".into(),
                wait: Duration::ZERO
            }
        );
        let running = json!({"Label": "merge_commit_10", "Status": "Fail", "Message": "load timeout, txn status: PREPARE"});
        assert!(matches!(
            c(200, running, false),
            MergeAnswer::InWindow { .. }
        ));
        // A window failed for its data: bounded retries, then dead-letter.
        let bad = json!({"Label": "merge_commit_11", "Status": "Fail",
            "Message": "Load is aborted, reason: too many filtered rows", "ErrorURL": "http://be/x"});
        assert!(matches!(
            c(200, bad, false),
            MergeAnswer::WindowFailed {
                error_url: Some(_),
                ..
            }
        ));
        let quality = json!({"Status": "Fail", "Message": "Load is aborted, reason: There is a data quality issue"});
        assert!(matches!(
            c(200, quality, false),
            MergeAnswer::WindowFailed { .. }
        ));
        // The plain classes still apply: backpressure, and an early Success is no commit.
        let versions = json!({"Status": "Fail", "Message": "Failed to load data into tablet 1, because of too many versions, current/limit: 1001/1000."});
        assert!(matches!(
            c(200, versions, true),
            MergeAnswer::Other(Verdict::Backpressure { .. })
        ));
        let early = json!({"Label": "merge_commit_12", "Status": "Success", "RequestId": "r"});
        assert!(matches!(
            classify_merge(200, early.to_string().as_bytes(), false, true),
            MergeAnswer::Other(Verdict::Uncertain { .. })
        ));
        assert!(matches!(
            c(503, json!({}), true),
            MergeAnswer::Other(Verdict::Transient { .. })
        ));
    }
}
