//! Shutdown: SIGTERM or SIGINT starts an orderly stop (stop accepting, drain open
//! connections for a bounded time, flush every sink, retry until the deadline); a second
//! signal exits at once. Either way the last log line accounts for every record.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::loader::metrics::SinkMetrics;

/// The phases of a stop, each a token that is cancelled when the phase begins.
#[derive(Clone, Default)]
pub struct Phases {
    /// First signal: stop accepting, flush what is buffered.
    pub stop: CancellationToken,
    /// Open connections are no longer read.
    pub drain: CancellationToken,
    /// Nothing more is sent; what is not committed is lost (or, with a spool, kept).
    pub deadline: CancellationToken,
    /// Second signal: exit now.
    pub abort: CancellationToken,
}

impl Phases {
    /// The phases of one part (a sink, one of its sockets): they begin with these, or
    /// earlier, alone.
    pub fn child(&self) -> Self {
        Self {
            stop: self.stop.child_token(),
            drain: self.drain.child_token(),
            deadline: self.deadline.child_token(),
            abort: self.abort.clone(),
        }
    }
}

/// Installs the signal handlers and drives the phases from them; each SIGHUP goes to
/// `reloads` (one waiting is enough).
pub fn watch_signals(
    phases: Phases,
    drain_after: Duration,
    deadline_after: Duration,
    reloads: tokio::sync::mpsc::Sender<crate::loader::reload::Trigger>,
) -> std::io::Result<()> {
    let mut signals = crate::signals::Terminations::install_with(move || {
        tracing::info!(signal = "SIGHUP", "reading the config again");
        let _ = reloads.try_send(crate::loader::reload::Trigger::Signal);
    })?;
    tokio::spawn(async move {
        let name = signals.next().await;
        tracing::info!(
            signal = name,
            drain_ms = drain_after.as_millis() as u64,
            deadline_ms = deadline_after.as_millis() as u64,
            "stopping: no new connections; flushing every sink"
        );
        phases.stop.cancel();
        let p = phases.clone();
        tokio::spawn(async move {
            tokio::time::sleep(drain_after).await;
            p.drain.cancel();
            tokio::time::sleep(deadline_after.saturating_sub(drain_after)).await;
            p.deadline.cancel();
        });
        signals.next().await;
        tracing::warn!("second signal: exiting now");
        phases.abort.cancel();
    });
    Ok(())
}

/// What happened to every record this process accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    pub accepted: u64,
    pub committed: u64,
    pub dead_lettered: u64,
    pub rejected: u64,
    /// Not committed yet, but kept in the spool: the next start loads them.
    pub spooled: u64,
    /// Accepted and neither committed, dead-lettered nor spooled.
    pub lost: u64,
}

impl Accounting {
    pub fn of(sinks: &[Arc<SinkMetrics>]) -> Self {
        let mut a = Accounting::default();
        for s in sinks {
            a.accepted += s.accepted();
            a.committed += s.loaded.load(Relaxed);
            a.dead_lettered += s.dead_lettered.load(Relaxed);
            a.rejected += s.rejected_total();
            let spooled = s.left_in_spool();
            a.spooled += spooled;
            a.lost += s.outstanding().saturating_sub(spooled);
        }
        a
    }

    /// The process exit code: 0 only when every accepted record was committed.
    pub fn exit_code(&self) -> i32 {
        if self.lost > 0 {
            EXIT_LOST
        } else if self.spooled > 0 {
            EXIT_SPOOLED
        } else if self.dead_lettered > 0 {
            EXIT_DEAD_LETTERED
        } else {
            0
        }
    }

    /// Logs the final accounting line.
    pub fn log(&self) {
        let Accounting {
            accepted,
            committed,
            dead_lettered,
            rejected,
            spooled,
            lost,
        } = *self;
        if lost > 0 {
            tracing::error!(
                accepted,
                committed,
                dead_lettered,
                rejected,
                spooled,
                lost,
                "loader stopped: {lost} accepted record(s) were NOT committed and are lost"
            );
        } else if spooled > 0 {
            tracing::warn!(accepted, committed, dead_lettered, rejected, spooled, lost, "loader stopped: {spooled} record(s) not committed yet are kept in the spool; the next start loads them under the same labels");
        } else if dead_lettered > 0 {
            tracing::warn!(accepted, committed, dead_lettered, rejected, spooled, lost, "loader stopped: {dead_lettered} record(s) refused by StarRocks are in the dead-letter directory");
        } else {
            tracing::info!(
                accepted,
                committed,
                dead_lettered,
                rejected,
                spooled,
                lost,
                "loader stopped: every accepted record was committed"
            );
        }
    }
}

/// Exit code when accepted records were neither committed nor dead-lettered.
pub const EXIT_LOST: i32 = 1;
/// Exit code for a configuration or start-up error.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code when nothing was lost but some records went to the dead-letter directory.
pub const EXIT_DEAD_LETTERED: i32 = 3;
/// Exit code when records were not committed by the deadline but the spool keeps them.
pub const EXIT_SPOOLED: i32 = 4;
