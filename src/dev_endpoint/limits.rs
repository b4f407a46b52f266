//! The StarRocks limits that bite when many loaders write one table, as the dev endpoint
//! imitates them (`shared/design/fleet.md` §3.1 and §4, which cite StarRocks' code):
//! - every committed transaction adds a version to the table's tablets; compaction merges
//!   them away at some rate; past `tablet_max_versions` (1000) a load is refused with
//!   "too many versions" (`DeltaWriter::_init`);
//! - a database runs at most `max_running_txn_num_per_db` (1000) transactions
//!   (`DatabaseTransactionMgr::checkRunningTxnExceedLimit`);
//! - it remembers at most `label_keep_max_num` (1000) finished labels, the oldest evicted
//!   first (`DatabaseTransactionMgr::removeExpiredTxns`): a label evicted is unknown to
//!   `get_load_state` and free to load again.
//!
//! One table's tablets are modelled as one: a load adds one version to each tablet it
//! writes, and compaction works on all of them alike.

use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime};

/// StarRocks' answer when a tablet has more than `tablet_max_versions` versions, as
/// `DeltaWriter::_init` writes it (be/src/storage/delta_writer.cpp; the text is also in
/// docs/en/best_practices/primarykey_table.md).
pub fn too_many_versions(current: u64, limit: u32) -> String {
    format!("Failed to load data into tablet 10087, because of too many versions, current/limit: {current}/{limit}. You can reduce the loading job concurrency, or increase loading data batch size. If you are using INSERT INTO, please use batch insert.")
}

/// The limits in force. The defaults are StarRocks' own, except compaction: 50 versions
/// a second, enough that a test never meets the version cap unless it sets a rate.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// `tablet_max_versions`.
    pub max_versions: u32,
    /// Versions compaction removes per second, per table.
    pub compaction_per_sec: f64,
    /// `max_running_txn_num_per_db`.
    pub max_running_txns: u32,
    /// `label_keep_max_num`; `None`: every label is kept.
    pub label_keep_max_num: Option<usize>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_versions: 1000,
            compaction_per_sec: 50.0,
            max_running_txns: 1000,
            label_keep_max_num: None,
        }
    }
}

/// One table's versions.
#[derive(Clone, Debug, Default)]
pub struct Versions {
    /// Versions not yet compacted (fractional: compaction is modelled as a rate).
    pub now: f64,
    pub peak: u32,
    since: Option<Instant>,
}

/// One committed transaction: which table, how many rows, when.
#[derive(Clone, Debug)]
pub struct Commit {
    pub table: String,
    pub rows: usize,
    pub at: SystemTime,
}

/// What the limits keep track of.
#[derive(Debug, Default)]
pub struct Ledger {
    pub versions: HashMap<String, Versions>,
    /// Transactions begun and not yet ended.
    pub running: u32,
    /// Finished labels, oldest first (only kept while `label_keep_max_num` applies).
    finished: VecDeque<String>,
    /// Every committed transaction, in order.
    pub commits: Vec<Commit>,
    /// Loads refused by each limit.
    pub refused_versions: u64,
    pub refused_running: u64,
}

impl Ledger {
    /// Compacts `table` up to now, at `rate` versions a second.
    fn compact(&mut self, table: &str, rate: f64, now: Instant) -> &mut Versions {
        let v = self.versions.entry(table.to_owned()).or_default();
        if let Some(since) = v.since {
            v.now = (v.now - rate * now.duration_since(since).as_secs_f64()).max(0.0);
        }
        v.since = Some(now);
        v
    }

    /// Why a load to `table` may not begin now, in StarRocks' words, if it may not.
    pub fn refusal(&mut self, limits: &ServerLimits, table: &str) -> Option<String> {
        let versions = self
            .compact(table, limits.compaction_per_sec, Instant::now())
            .now;
        if versions + 1.0 > f64::from(limits.max_versions) {
            self.refused_versions += 1;
            let current = versions.ceil() as u64 + 1;
            return Some(too_many_versions(current, limits.max_versions));
        }
        if self.running >= limits.max_running_txns {
            self.refused_running += 1;
            return Some(format!(
                "current running txns on db 10052 is {}, larger than limit {}",
                self.running, limits.max_running_txns
            ));
        }
        None
    }

    /// A transaction on `table` committed `rows` rows: one more version.
    pub fn committed(&mut self, limits: &ServerLimits, table: &str, rows: usize) {
        let v = self.compact(table, limits.compaction_per_sec, Instant::now());
        v.now += 1.0;
        v.peak = v.peak.max(v.now.ceil() as u32);
        self.commits.push(Commit {
            table: table.to_owned(),
            rows,
            at: SystemTime::now(),
        });
    }

    /// `label` finished (committed or aborted); returns the labels now forgotten.
    pub fn finished(&mut self, limits: &ServerLimits, label: &str) -> Vec<String> {
        let Some(keep) = limits.label_keep_max_num else {
            return Vec::new();
        };
        self.finished.push_back(label.to_owned());
        let over = self.finished.len().saturating_sub(keep);
        self.finished.drain(..over).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn versions_pile_up_faster_than_compaction_until_loads_are_refused() {
        let limits = ServerLimits {
            max_versions: 3,
            compaction_per_sec: 0.0,
            ..ServerLimits::default()
        };
        let mut l = Ledger::default();
        for _ in 0..3 {
            assert_eq!(l.refusal(&limits, "shop.orders"), None);
            l.committed(&limits, "shop.orders", 10);
        }
        let why = l.refusal(&limits, "shop.orders").expect("refused");
        assert!(
            why.contains("because of too many versions, current/limit: 4/3"),
            "{why}"
        );
        assert_eq!(
            l.refusal(&limits, "shop.clicks"),
            None,
            "another table has its own"
        );
        assert_eq!((l.versions["shop.orders"].peak, l.refused_versions), (3, 1));
    }

    #[test]
    fn compaction_makes_room_again() {
        let limits = ServerLimits {
            max_versions: 1,
            compaction_per_sec: 1000.0,
            ..ServerLimits::default()
        };
        let mut l = Ledger::default();
        l.committed(&limits, "t", 1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.refusal(&limits, "t"), None);
    }

    #[test]
    fn the_oldest_finished_labels_are_forgotten_past_the_count() {
        let limits = ServerLimits {
            label_keep_max_num: Some(2),
            ..ServerLimits::default()
        };
        let mut l = Ledger::default();
        assert!(l.finished(&limits, "a").is_empty());
        assert!(l.finished(&limits, "b").is_empty());
        assert_eq!(l.finished(&limits, "c"), ["a"]);
    }

    #[test]
    fn a_database_at_its_running_transactions_refuses_to_begin_another() {
        let limits = ServerLimits {
            max_running_txns: 1,
            ..ServerLimits::default()
        };
        let mut l = Ledger {
            running: 1,
            ..Ledger::default()
        };
        let why = l.refusal(&limits, "t").expect("refused");
        assert_eq!(
            why,
            "current running txns on db 10052 is 1, larger than limit 1"
        );
    }
}
