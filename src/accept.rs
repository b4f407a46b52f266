//! What every listener does when `accept` fails. At the descriptor limit (EMFILE,
//! ENFILE) a failed accept leaves the connection in the backlog, so the listener stays
//! readable and a loop that retries at once spins a core and floods the log. Instead the
//! loop waits, doubling the wait while accepts keep failing, and logs once per run of
//! failures.

use std::io;
use std::time::Duration;

const FIRST_WAIT: Duration = Duration::from_millis(5);
const MAX_WAIT: Duration = Duration::from_secs(1);

/// The accept-error state of one listener.
#[derive(Debug)]
pub struct AcceptBackoff {
    listener: String,
    wait: Duration,
    failures: u64,
}

impl AcceptBackoff {
    /// `listener` names it in the log ("metrics", "webhook", a sink's socket ...).
    pub fn new(listener: impl Into<String>) -> Self {
        Self {
            listener: listener.into(),
            wait: FIRST_WAIT,
            failures: 0,
        }
    }

    /// An accept succeeded: the next failure starts a new run.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                listener = %self.listener,
                failures = self.failures,
                "accepting again"
            );
        }
        self.failures = 0;
        self.wait = FIRST_WAIT;
    }

    /// The next accepted connection, trying `accept` again (with backoff) while it
    /// fails; `None` once `stop` is cancelled. Every accept loop is this plus what it
    /// does with a connection.
    pub async fn next<T, F, Fut>(
        &mut self,
        stop: &tokio_util::sync::CancellationToken,
        mut accept: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = io::Result<T>>,
    {
        loop {
            let failed = tokio::select! {
                _ = stop.cancelled() => return None,
                r = accept() => match r {
                    Ok(conn) => {
                        self.succeeded();
                        return Some(conn);
                    }
                    Err(e) => e,
                },
            };
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = self.failed(&failed) => {}
            }
        }
    }

    /// An accept failed: logs the first failure of a run, then waits before the next try.
    pub async fn failed(&mut self, error: &io::Error) {
        if self.failures == 0 {
            tracing::warn!(listener = %self.listener, error = %error, "accept failed; retrying with backoff (at the descriptor limit, connections wait in the backlog)");
        }
        self.failures += 1;
        tokio::time::sleep(self.wait).await;
        self.wait = (self.wait * 2).min(MAX_WAIT);
    }
}

/// Producer connections a loader may hold, across its sinks, given its descriptor limit,
/// the descriptors open now and its number of sinks. What is kept back covers what is
/// open now, and per sink its listener, its StarRocks connections (FE and BE) and its
/// spool and dead-letter files, plus room for the metrics server: so loads and the spool
/// never meet EMFILE because producers took every descriptor. Past the budget, new
/// connections wait in the socket's backlog until one ends.
pub fn connection_budget(fd_limit: u64, open_now: u64, sinks: u64) -> usize {
    let reserve = open_now + 8 * sinks + 16;
    usize::try_from(fd_limit.saturating_sub(reserve).max(1)).unwrap_or(usize::MAX)
}

/// How many descriptors this process has open (`/proc/self/fd`), if it can tell.
pub fn open_descriptors() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64)
}

/// Raises this process's soft limit on open descriptors to its hard limit: a loader holds
/// one per producer connection, and the default soft limit (often 1024) is reached long
/// before memory is. Returns the limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_of_descriptors_is_kept_from_producers() {
        assert_eq!(connection_budget(1_048_576, 12, 2), 1_048_576 - 44);
        assert_eq!(connection_budget(1024, 12, 1), 988);
        assert_eq!(connection_budget(48, 12, 1), 12);
        assert_eq!(connection_budget(16, 12, 1), 1, "always one");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_wait_longer_each_time_up_to_a_second_and_reset_on_success() {
        let mut b = AcceptBackoff::new("test");
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        let mut waits = Vec::new();
        for _ in 0..10 {
            let before = tokio::time::Instant::now();
            b.failed(&e).await;
            waits.push(before.elapsed().as_millis());
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        let before = tokio::time::Instant::now();
        b.failed(&e).await;
        assert_eq!(before.elapsed(), FIRST_WAIT);
    }
}
