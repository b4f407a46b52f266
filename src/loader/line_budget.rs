//! A sink's bound on memory held in unfinished lines (bytes read whose newline has not
//! come yet) across all its connections. Each connection may hold up to
//! `maxRecordBytes` of one line; without a shared bound, a few hundred producers that
//! stall mid-line would hold gigabytes. Past the bound, the connection holding the
//! longest unfinished line is told to drop it: that line is then rejected as
//! `too_long`, like any line over the limit.
//!
//! Connections publish what they hold with atomics; the registry's lock is taken only
//! to join, to leave, and to pick a connection to evict, never across I/O.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// One connection's share: what it holds, and whether it was told to drop it.
#[derive(Default)]
struct Share {
    held: AtomicU64,
    evicted: AtomicBool,
    wake: Notify,
}

/// The bound for one sink, shared by its connections.
pub struct LineBudget {
    limit: u64,
    /// Shared with the sink's metrics (`starsink_unfinished_line_bytes`).
    total: Arc<AtomicU64>,
    shares: Mutex<Vec<Weak<Share>>>,
}

/// A connection's membership in its sink's [`LineBudget`]; leaving (drop) gives back
/// what it held.
pub struct Hold {
    budget: Arc<LineBudget>,
    share: Arc<Share>,
}

/// Of the connections' `(held, already evicted)`, the one to evict: the longest not
/// already told, if it holds anything.
pub fn choose_victim(shares: &[(u64, bool)]) -> Option<usize> {
    shares
        .iter()
        .enumerate()
        .filter(|(_, (held, evicted))| *held > 0 && !evicted)
        .max_by_key(|(_, (held, _))| *held)
        .map(|(i, _)| i)
}

impl LineBudget {
    /// A bound of `limit` bytes, keeping its running total in `total`.
    pub fn new(limit: u64, total: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            total,
            shares: Mutex::new(Vec::new()),
        })
    }

    /// Bytes held in unfinished lines across the sink's connections now.
    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Joins a connection.
    pub fn join(self: &Arc<Self>) -> Hold {
        let share = Arc::new(Share::default());
        let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        shares.retain(|s| s.strong_count() > 0);
        shares.push(Arc::downgrade(&share));
        Hold {
            budget: self.clone(),
            share,
        }
    }

    /// Over the bound: tells the connection with the longest unfinished line (not told
    /// already) to drop it. Bytes already being dropped do not count twice.
    fn enforce(&self) {
        let shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        let live: Vec<Arc<Share>> = shares.iter().filter_map(Weak::upgrade).collect();
        drop(shares);
        let dropping: u64 = live
            .iter()
            .filter(|s| s.evicted.load(Relaxed))
            .map(|s| s.held.load(Relaxed))
            .sum();
        if self.total().saturating_sub(dropping) <= self.limit {
            return;
        }
        let view: Vec<(u64, bool)> = live
            .iter()
            .map(|s| (s.held.load(Relaxed), s.evicted.load(Relaxed)))
            .collect();
        if let Some(i) = choose_victim(&view) {
            live[i].evicted.store(true, Relaxed);
            live[i].wake.notify_one();
        }
    }
}

impl Hold {
    /// Publishes that this connection now holds `bytes` of an unfinished line; over the
    /// sink's bound, some connection (maybe this one) is told to drop its line.
    pub fn set(&self, bytes: u64) {
        let before = self.share.held.swap(bytes, Relaxed);
        if bytes >= before {
            self.budget.total.fetch_add(bytes - before, Relaxed);
        } else {
            self.budget.total.fetch_sub(before - bytes, Relaxed);
        }
        if bytes > before && self.budget.total() > self.budget.limit {
            self.budget.enforce();
        }
    }

    /// This connection was told to drop its unfinished line: true once per telling.
    pub fn take_eviction(&self) -> bool {
        self.share.evicted.swap(false, Relaxed)
    }

    /// Resolves when this connection is told to drop its unfinished line.
    pub async fn evicted(&self) {
        loop {
            let notified = self.share.wake.notified();
            if self.share.evicted.load(Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// The sink's bound.
    pub fn limit(&self) -> u64 {
        self.budget.limit
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_victim_is_the_longest_line_not_already_told() {
        type Shares<'a> = &'a [(u64, bool)];
        let cases: &[(Shares, Option<usize>)] = &[
            (&[], None),
            (&[(0, false), (0, false)], None),
            (&[(10, false), (30, false), (20, false)], Some(1)),
            (&[(10, false), (30, true), (20, false)], Some(2)),
            (&[(10, true), (30, true)], None),
        ];
        for (shares, want) in cases {
            assert_eq!(choose_victim(shares), *want, "{shares:?}");
        }
    }

    #[test]
    fn past_the_bound_the_longest_holder_is_told_once_and_leaving_frees_its_share() {
        let budget = LineBudget::new(100, Arc::default());
        let (a, b, c) = (budget.join(), budget.join(), budget.join());
        a.set(40);
        b.set(50);
        assert!(!a.take_eviction() && !b.take_eviction());
        c.set(30);
        assert_eq!(budget.total(), 120);
        // b holds the longest line; only b is told, though c's write tipped it over.
        assert!(b.share.evicted.load(Relaxed));
        assert!(!a.share.evicted.load(Relaxed) && !c.share.evicted.load(Relaxed));
        // More bytes while b's are on their way out: b's 50 no longer count.
        c.set(35);
        assert!(!a.share.evicted.load(Relaxed) && !c.share.evicted.load(Relaxed));
        assert!(b.take_eviction());
        b.set(0);
        assert_eq!(budget.total(), 75);
        drop(a);
        assert_eq!(budget.total(), 35);
    }
}
