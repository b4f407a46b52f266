//! Delivering one batch: send, classify, resolve uncertainty through the label's state,
//! retry with backoff, all under the batch's one label. Unlike clients that mint a new
//! label per retry (and so can commit a batch twice), the label here never changes.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::api::RetrySpec;
use crate::stream_load::client::{StreamLoadClient, TransportError};
use crate::stream_load::response::{classify, LoadState, Verdict};

/// How one batch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Committed in StarRocks (possibly by an earlier attempt under the same label).
    Committed { filtered_rows: u64 },
    /// Not loadable: to be dead-lettered. `uncertain` means an earlier attempt may have
    /// committed; whoever replays it must check the label first.
    Refused {
        reason: String,
        error_url: Option<String>,
        uncertain: bool,
    },
}

/// What one attempt did, reported as it happens (for logs and metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Committed,
    Transient(String),
    Uncertain(String),
    Permanent(String),
    /// `get_load_state` said the label is still pending.
    Pending,
    /// `get_load_state` could not be asked.
    StateUnavailable(String),
}

impl Attempt {
    /// The `outcome` label of `starsink_loads_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Attempt::Committed => "committed",
            Attempt::Transient(_) => "retried",
            Attempt::Uncertain(_) => "uncertain",
            Attempt::Permanent(_) => "refused",
            Attempt::Pending => "pending",
            Attempt::StateUnavailable(_) => "state_unavailable",
        }
    }
}

/// Exponential backoff with jitter: each wait is drawn from [d/2, d], d doubling to `max`.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(spec: &RetrySpec) -> Self {
        Self {
            next: spec.min_backoff.0,
            max: spec.max_backoff.0,
        }
    }

    fn wait(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Delivers `body` under `label` until it is committed or refused for good. Never
/// re-sends while an earlier attempt's outcome is unknown: it asks the label's state first.
/// Runs until done; the caller bounds it (e.g. the shutdown deadline) by dropping it.
pub async fn deliver(
    client: &mut StreamLoadClient,
    label: &str,
    body: &Bytes,
    retry: &RetrySpec,
    mut report: impl FnMut(&Attempt),
) -> Delivered {
    let started = Instant::now();
    let mut backoff = Backoff::new(retry);
    let mut resolve = false;
    let mut last_problem = String::new();
    loop {
        let out_of_time = started.elapsed() >= retry.give_up_after.0;
        if resolve {
            match client.load_state(label).await {
                Ok(LoadState::Committed) => {
                    report(&Attempt::Committed);
                    return Delivered::Committed { filtered_rows: 0 };
                }
                Ok(LoadState::Aborted) | Ok(LoadState::Unknown) => resolve = false,
                Ok(LoadState::Pending) => {
                    report(&Attempt::Pending);
                    last_problem = "the label's load stayed pending".into();
                }
                Err(e) => {
                    report(&Attempt::StateUnavailable(e.clone()));
                    last_problem = e;
                }
            }
            if resolve {
                if out_of_time {
                    return Delivered::Refused {
                        reason: format!(
                            "gave up after {:?} resolving label {label}: {last_problem}",
                            retry.give_up_after.0
                        ),
                        error_url: None,
                        uncertain: true,
                    };
                }
                tokio::time::sleep(backoff.wait()).await;
                continue;
            }
        }

        let verdict = match client.put(label, body).await {
            Ok(answer) => classify(answer.status, &answer.body),
            Err(TransportError::NotSent(e)) => Verdict::Transient { reason: e },
            Err(TransportError::Unknown(e)) => Verdict::Uncertain { reason: e },
        };
        match verdict {
            Verdict::Committed { filtered_rows } => {
                report(&Attempt::Committed);
                return Delivered::Committed { filtered_rows };
            }
            Verdict::Permanent { reason, error_url } => {
                report(&Attempt::Permanent(reason.clone()));
                return Delivered::Refused {
                    reason,
                    error_url,
                    uncertain: false,
                };
            }
            Verdict::Uncertain { reason } => {
                report(&Attempt::Uncertain(reason.clone()));
                last_problem = reason;
                resolve = true;
            }
            Verdict::Transient { reason } => {
                report(&Attempt::Transient(reason.clone()));
                client.rotate_fe();
                if out_of_time {
                    return Delivered::Refused {
                        reason: format!(
                            "gave up after {:?} of transient failures; last: {reason}",
                            retry.give_up_after.0
                        ),
                        error_url: None,
                        uncertain: false,
                    };
                }
                last_problem = reason;
            }
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HumanDuration;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let spec = RetrySpec {
            min_backoff: HumanDuration::from_millis(100),
            max_backoff: HumanDuration::from_millis(400),
            give_up_after: HumanDuration::from_secs(1),
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
