//! Delivering one batch: send, classify, resolve uncertainty through the label's state,
//! retry with backoff, all under the batch's one label. Unlike clients that mint a new
//! label per retry (and so can commit a batch twice), the label here never changes.

use std::time::Duration;

use bytes::Bytes;

use crate::api::RetrySpec;
use crate::stream_load::client::{StreamLoadClient, TransportError};
use crate::stream_load::response::{judge, LoadState, Pressure, Verdict};

/// How one batch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Committed in StarRocks (possibly by an earlier attempt under the same label).
    Committed { filtered_rows: u64 },
    /// StarRocks refused the data: to be dead-lettered. `uncertain` means an earlier
    /// attempt may have committed; whoever replays it must check the label first. A
    /// transient failure never ends here, however long it lasts. `miscounted`: StarRocks
    /// committed the label counting other rows than were sent (rows may be missing), so
    /// the batch must not simply be sent again, nor taken as loaded.
    Refused {
        reason: String,
        error_url: Option<String>,
        uncertain: bool,
        miscounted: bool,
    },
}

/// What one attempt did, reported as it happens (for logs and metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Committed,
    Transient(String),
    /// The sink's configuration stopped it; retried until someone fixes it.
    Misconfigured(String),
    Uncertain(String),
    Permanent(String),
    /// `get_load_state` said the label is still pending.
    Pending,
    /// `get_load_state` could not be asked.
    StateUnavailable(String),
    /// StarRocks asked for fewer loads; retried after a backoff of at least
    /// [`PRESSURE_MIN_BACKOFF`].
    Backpressure(String, Pressure),
    /// Merge Commit: the rows are in the window whose transaction has this label; it is
    /// asked for until it commits.
    InWindow(String),
    /// Merge Commit: the window's transaction failed for its data (perhaps another
    /// loader's); sent again, a few times at most.
    WindowFailed(String),
}

/// The least wait after a backpressure answer, and the most it doubles to: a fleet that
/// retries in step makes the pressure worse (`shared/design/fleet.md` §7.3: base 1s, cap
/// about 60s).
pub const PRESSURE_MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const PRESSURE_MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Attempt {
    /// The `outcome` label of `starsink_loads_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Attempt::Committed => "committed",
            Attempt::Transient(_) => "retried",
            Attempt::Misconfigured(_) => "misconfigured",
            Attempt::Uncertain(_) => "uncertain",
            Attempt::Permanent(_) => "refused",
            Attempt::Pending => "pending",
            Attempt::StateUnavailable(_) => "state_unavailable",
            Attempt::Backpressure(..) => "backpressure",
            Attempt::InWindow(_) => "in_window",
            Attempt::WindowFailed(_) => "window_failed",
        }
    }
}

/// Exponential backoff with jitter: each wait is drawn from [d/2, d], d doubling to `max`.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn between(first: Duration, most: Duration) -> Self {
        Self {
            next: first,
            max: most,
        }
    }

    pub(crate) fn new(spec: &RetrySpec) -> Self {
        Self {
            next: spec.min_backoff.0,
            max: spec.max_backoff.0,
        }
    }

    /// The backoff after backpressure: the retry settings, but from at least
    /// [`PRESSURE_MIN_BACKOFF`] up to at least [`PRESSURE_MAX_BACKOFF`].
    pub(crate) fn for_pressure(spec: &RetrySpec) -> Self {
        Self {
            next: spec.min_backoff.0.max(PRESSURE_MIN_BACKOFF),
            max: spec.max_backoff.0.max(PRESSURE_MAX_BACKOFF),
        }
    }

    pub(crate) fn wait(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Delivers `body` under `label` until it is committed or refused for good. Never
/// re-sends while an earlier attempt's outcome is unknown: it asks the label's state first.
/// Transient failures are retried for as long as they last: it runs until done, and the
/// caller bounds it (e.g. the shutdown deadline) by dropping it.
pub async fn deliver(
    client: &mut StreamLoadClient,
    label: &str,
    body: &Bytes,
    rows: u64,
    retry: &RetrySpec,
    report: impl FnMut(&Attempt),
) -> Delivered {
    deliver_from(client, label, body, rows, retry, Start::Send, report).await
}

/// Where a delivery starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new batch: send it.
    Send,
    /// A batch that may have been sent before (replayed from the spool after a restart):
    /// ask the label's state first, and send only if StarRocks has no load under it.
    Resolve,
}

/// [`deliver`], starting as `start` says. Each turn asks the label's state (when the last
/// outcome is unknown, or at [`Start::Resolve`]) or sends the body; a verdict either ends
/// the delivery or is retried after a backoff, always under the one label.
pub async fn deliver_from(
    client: &mut StreamLoadClient,
    label: &str,
    body: &Bytes,
    rows: u64,
    retry: &RetrySpec,
    start: Start,
    mut report: impl FnMut(&Attempt),
) -> Delivered {
    if let Some(mc) = client.merge_commit().cloned() {
        // StarRocks ignores the label under Merge Commit: there is nothing to resolve
        // at a restart, only a batch to send.
        return super::merge::deliver_merged(client, label, body, retry, &mc, &mut report).await;
    }
    let mut backoff = Backoff::new(retry);
    let mut pressure = Backoff::for_pressure(retry);
    let mut resolve = start == Start::Resolve;
    loop {
        if resolve {
            match label_state(client, label, &mut report).await {
                Lookup::Committed => return Delivered::Committed { filtered_rows: 0 },
                Lookup::Free => resolve = false,
                Lookup::Wait => {
                    tokio::time::sleep(backoff.wait()).await;
                    continue;
                }
            }
        }
        let verdict = put_once(client, label, body, rows).await;
        let wait = match settle(verdict, &mut report) {
            Then::Done(delivered) => return delivered,
            Then::Resolve => {
                resolve = true;
                backoff.wait()
            }
            Then::OtherFe => {
                client.rotate_fe();
                backoff.wait()
            }
            Then::Retry => backoff.wait(),
            Then::SlowDown => {
                client.rotate_fe();
                pressure.wait()
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// What a look at a label's state says for the delivery.
enum Lookup {
    /// A load under it committed: the batch is delivered.
    Committed,
    /// No load holds it (aborted, or never seen): the body may be sent.
    Free,
    /// A load under it is still running, or the state could not be read: ask again.
    Wait,
}

async fn label_state(
    client: &mut StreamLoadClient,
    label: &str,
    report: &mut impl FnMut(&Attempt),
) -> Lookup {
    match client.load_state(label).await {
        Ok(LoadState::Committed) => {
            report(&Attempt::Committed);
            Lookup::Committed
        }
        Ok(LoadState::Aborted) | Ok(LoadState::Unknown) => Lookup::Free,
        Ok(LoadState::Pending) => {
            report(&Attempt::Pending);
            Lookup::Wait
        }
        Err(e) => {
            report(&Attempt::StateUnavailable(e));
            Lookup::Wait
        }
    }
}

/// Sends the body once and judges the answer; a transport failure is judged by whether
/// the body may have been received.
async fn put_once(client: &mut StreamLoadClient, label: &str, body: &Bytes, rows: u64) -> Verdict {
    match client.put(label, body).await {
        Ok(answer) => judge(
            answer.status,
            &answer.body,
            answer.body_sent,
            client.expected_rows(rows),
        ),
        Err(TransportError::NotSent(e)) => Verdict::Transient { reason: e },
        Err(TransportError::Misconfigured(e)) => Verdict::Misconfigured { reason: e },
        Err(TransportError::Unknown(e)) => Verdict::Uncertain { reason: e },
    }
}

/// What follows a verdict.
pub(crate) enum Then {
    Done(Delivered),
    /// The outcome is unknown: ask the label's state before any re-send.
    Resolve,
    /// Try the next FE, then send again.
    OtherFe,
    /// Send again (a configuration problem is retried until it is fixed).
    Retry,
    /// StarRocks pushes back: send again, to the next FE, after the longer backoff.
    SlowDown,
}

pub(crate) fn settle(verdict: Verdict, report: &mut impl FnMut(&Attempt)) -> Then {
    let refused = |reason, error_url, miscounted| {
        Then::Done(Delivered::Refused {
            reason,
            error_url,
            uncertain: miscounted,
            miscounted,
        })
    };
    match verdict {
        Verdict::Committed { filtered_rows } => {
            report(&Attempt::Committed);
            Then::Done(Delivered::Committed { filtered_rows })
        }
        Verdict::Permanent { reason, error_url } => {
            report(&Attempt::Permanent(reason.clone()));
            refused(reason, error_url, false)
        }
        Verdict::Miscounted { reason } => {
            report(&Attempt::Permanent(reason.clone()));
            refused(reason, None, true)
        }
        Verdict::Uncertain { reason } => {
            report(&Attempt::Uncertain(reason));
            Then::Resolve
        }
        Verdict::Transient { reason } => {
            report(&Attempt::Transient(reason));
            Then::OtherFe
        }
        Verdict::Misconfigured { reason } => {
            report(&Attempt::Misconfigured(reason));
            Then::Retry
        }
        Verdict::Backpressure { reason, pressure } => {
            report(&Attempt::Backpressure(reason, pressure));
            Then::SlowDown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HumanDuration;
    use crate::dev_endpoint::{DevEndpoint, EndpointConfig};

    fn client(fe: &str) -> StreamLoadClient {
        let sink: crate::api::SinkSpec = serde_yaml::from_str(&format!(
            "name: orders\nsocket: /tmp/orders.sock\nstarrocks:\n  feEndpoints: [\"{fe}\"]\n  database: shop\n  table: orders\n"
        ))
        .unwrap();
        StreamLoadClient::new(&sink).unwrap()
    }

    #[tokio::test]
    async fn a_resumed_batch_already_committed_is_not_sent_again() {
        let sr = DevEndpoint::start(EndpointConfig::default()).await.unwrap();
        let mut c = client(&sr.fe_url());
        let body = Bytes::from_static(br#"[{"id":1}]"#);
        let retry = RetrySpec::default();
        let first = deliver(&mut c, "p_orders_a_0", &body, 1, &retry, |_| {}).await;
        assert!(matches!(first, Delivered::Committed { .. }));
        // After a restart the spool still has the batch: its label says it is done.
        let mut attempts = Vec::new();
        let again = deliver_from(
            &mut c,
            "p_orders_a_0",
            &body,
            1,
            &retry,
            Start::Resolve,
            |a| attempts.push(a.outcome()),
        )
        .await;
        assert!(matches!(again, Delivered::Committed { .. }));
        assert_eq!(sr.state().loads.len(), 1, "no second load");
        assert_eq!(sr.committed_rows(), 1);
        // A batch StarRocks never saw is sent.
        let fresh = deliver_from(
            &mut c,
            "p_orders_a_1",
            &body,
            1,
            &retry,
            Start::Resolve,
            |_| {},
        )
        .await;
        assert!(matches!(fresh, Delivered::Committed { .. }));
        assert_eq!(sr.committed_rows(), 2);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let spec = RetrySpec {
            min_backoff: HumanDuration::from_millis(100),
            max_backoff: HumanDuration::from_millis(400),
            ..RetrySpec::default()
        };
        let mut b = Backoff::new(&spec);
        let waits: Vec<Duration> = (0..5).map(|_| b.wait()).collect();
        let bounds = [100, 200, 400, 400, 400];
        for (w, hi) in waits.iter().zip(bounds) {
            assert!(
                *w <= Duration::from_millis(hi) && *w >= Duration::from_millis(hi / 2),
                "{waits:?}"
            );
        }
    }
}
