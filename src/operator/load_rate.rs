//! How often each StarRocks table is loaded by the pods of the sinks that write to it,
//! against what StarRocks advises, as pure functions.
//!
//! Every committed load adds a version to each tablet it writes; past
//! `tablet_max_versions` (1000) a tablet refuses loads, and StarRocks' own guidance is
//! at least 5s between loads to a table, 0.2 loads/s (`shared/design/fleet.md` §0.1, from
//! StarRocks' `docs/en/administration/management/monitoring/alert.md`). With a loader in
//! every pod, a table gets `pods / flush.interval` loads/s from each sink that writes it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::resource::StoredSink;
use kube::ResourceExt;

/// StarRocks' advice: at most one load per table every 5 seconds.
pub const DEFAULT_MAX_TABLE_LOAD_RATE: f64 = 0.2;

/// A table of one StarRocks cluster: the cluster is named by its FE endpoints (in any
/// order), so two clusters with a table of the same name are two tables.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableKey {
    pub cluster: Vec<String>,
    pub database: String,
    pub table: String,
}

impl std::fmt::Display for TableKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.database, self.table)
    }
}

/// One sink's share of its table's loads.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkLoad {
    pub namespace: String,
    pub sink: String,
    pub table: TableKey,
    /// Running pods whose loader serves the sink.
    pub pods: i32,
    /// How often each of those loaders loads.
    pub interval: Duration,
    /// With Merge Commit, the window: StarRocks makes one transaction of all the
    /// sink's loads in it, whatever the number of pods.
    pub window: Option<Duration>,
}

impl SinkLoad {
    /// The sink's share, with `pods` attached; `None` for a spec that cannot be read.
    pub fn of(stored: &StoredSink, pods: i32) -> Option<SinkLoad> {
        let spec = stored.decode().ok()?.spec;
        let mut cluster: Vec<String> = spec
            .starrocks
            .fe_endpoints
            .iter()
            .map(|e| e.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        cluster.sort();
        cluster.dedup();
        Some(SinkLoad {
            namespace: stored.namespace().unwrap_or_default(),
            sink: stored.name_any(),
            table: TableKey {
                cluster,
                database: spec.starrocks.database,
                table: spec.starrocks.table,
            },
            pods,
            interval: spec.flush.interval.0,
            window: spec.starrocks.merge_commit.map(|mc| mc.interval.0),
        })
    }

    /// Loads (transactions) per second: each pod every `interval`, or with Merge Commit
    /// one per window while any pod loads.
    pub fn rate(&self) -> f64 {
        let (every, loads) = match self.window {
            Some(window) => (window.as_secs_f64(), f64::from(u8::from(self.pods > 0))),
            None => (self.interval.as_secs_f64(), f64::from(self.pods.max(0))),
        };
        if every > 0.0 {
            loads / every
        } else {
            0.0
        }
    }

    /// How the sink's pods load: `every 5s`, or `merged every 5s`.
    fn how(&self) -> String {
        match self.window {
            Some(w) => format!("merged every {}", secs(w)),
            None => format!("every {}", secs(self.interval)),
        }
    }
}

/// The `LoadRateOK` verdict on one sink: whether its table's load rate is within
/// `max_rate`, and a message with the figures (and, when it is not, the fix).
#[derive(Clone, Debug, PartialEq)]
pub struct RateCheck {
    pub ok: bool,
    pub message: String,
}

/// Checks the table `sink` writes to, counting every sink in `all` that writes to the
/// same table (`all` may or may not hold `sink` itself; `sink` is what counts for it).
pub fn check_rate(sink: &SinkLoad, all: &[SinkLoad], max_rate: f64) -> RateCheck {
    let same = |s: &&SinkLoad| s.table == sink.table;
    let itself = |s: &&SinkLoad| s.namespace == sink.namespace && s.sink == sink.sink;
    let mut on_table: Vec<&SinkLoad> = all.iter().filter(same).filter(|s| !itself(s)).collect();
    on_table.push(sink);
    on_table.sort_by(|a, b| (&a.namespace, &a.sink).cmp(&(&b.namespace, &b.sink)));
    let rate: f64 = on_table.iter().map(|s| s.rate()).sum();
    let pods: i32 = on_table.iter().map(|s| s.pods.max(0)).sum();
    let who = if on_table.len() == 1 {
        format!("{pods} pod(s) load {} {}", sink.table, sink.how())
    } else {
        let parts: Vec<String> = on_table
            .iter()
            .map(|s| format!("{}/{}: {} {}", s.namespace, s.sink, s.pods, s.how()))
            .collect();
        format!(
            "{pods} pod(s) of {} sinks ({}) load {}",
            on_table.len(),
            parts.join(", "),
            sink.table
        )
    };
    let figures =
        format!("{who}: {rate:.2} loads/s; StarRocks advises at most {max_rate} per table");
    if rate <= max_rate {
        return RateCheck {
            ok: true,
            message: figures,
        };
    }
    let needed = (f64::from(pods) / max_rate).ceil();
    let each = if on_table.len() == 1 {
        ""
    } else {
        " on each of these sinks"
    };
    RateCheck {
        ok: false,
        message: format!(
            "{figures}; set starrocks.mergeCommit (StarRocks 3.4+: one transaction per window, whatever the number of pods), or flush.interval to at least {needed}s{each} (loading more often piles up versions until StarRocks refuses loads with \"too many versions\")"
        ),
    }
}

/// The load rate each namespace's sinks put on each table: `(namespace, database,
/// table)` to loads/s. Summed over namespaces, a table's total.
pub fn rates_by_namespace(all: &[SinkLoad]) -> BTreeMap<(String, String, String), f64> {
    let mut out = BTreeMap::new();
    for s in all {
        let key = (
            s.namespace.clone(),
            s.table.database.clone(),
            s.table.table.clone(),
        );
        *out.entry(key).or_insert(0.0) += s.rate();
    }
    out
}

/// A whole number of seconds reads as such (`5s`); a fraction keeps it (`0.5s`).
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(ns: &str, sink: &str, table: &str, pods: i32, every: u64) -> SinkLoad {
        SinkLoad {
            namespace: ns.into(),
            sink: sink.into(),
            table: TableKey {
                cluster: vec!["http://fe:8030".into()],
                database: "shop".into(),
                table: table.into(),
            },
            pods,
            interval: Duration::from_secs(every),
            window: None,
        }
    }

    #[test]
    fn one_sink_within_the_advice_is_ok_with_its_figures() {
        let s = load("shop", "orders", "orders", 1, 5);
        let c = check_rate(&s, std::slice::from_ref(&s), 0.2);
        assert!(c.ok, "{c:?}");
        assert_eq!(
            c.message,
            "1 pod(s) load shop.orders every 5s: 0.20 loads/s; StarRocks advises at most 0.2 per table"
        );
    }

    #[test]
    fn a_fleet_too_frequent_for_its_table_is_told_the_interval_that_fits() {
        let s = load("shop", "orders", "orders", 52, 5);
        let c = check_rate(&s, &[], 0.2);
        assert!(!c.ok);
        let expected = "52 pod(s) load shop.orders every 5s: 10.40 loads/s; StarRocks advises at most 0.2 per table; set starrocks.mergeCommit";
        assert!(c.message.starts_with(expected), "{}", c.message);
        assert!(
            c.message.contains("or flush.interval to at least 260s"),
            "{}",
            c.message
        );
    }

    #[test]
    fn sinks_on_one_table_add_up_and_other_tables_and_clusters_do_not() {
        let a = load("shop", "orders", "orders", 1, 10);
        let b = load("billing", "orders-copy", "orders", 2, 20);
        let other_table = load("shop", "clicks", "clicks", 100, 1);
        let mut other_cluster = load("shop", "dr", "orders", 100, 1);
        other_cluster.table.cluster = vec!["http://dr-fe:8030".into()];
        let all = [a.clone(), b.clone(), other_table, other_cluster];
        let c = check_rate(&a, &all, 0.2);
        assert!(c.ok, "0.1 + 0.1 is within 0.2: {c:?}");
        let expected = "3 pod(s) of 2 sinks (billing/orders-copy: 2 every 20s, shop/orders: 1 every 10s) load shop.orders: 0.20 loads/s";
        assert!(c.message.starts_with(expected), "{}", c.message);
        // One more pod on either sink tips the table over, for both sinks.
        let a2 = load("shop", "orders", "orders", 2, 10);
        for (me, all) in [(&a2, vec![b.clone()]), (&b, vec![a2.clone(), b.clone()])] {
            let c = check_rate(me, &all, 0.2);
            let fix = "at least 20s on each of these sinks";
            assert!(!c.ok && c.message.contains(fix), "{c:?}");
        }
    }

    #[test]
    fn a_sinks_own_fresh_count_replaces_what_the_list_held_for_it() {
        let stale = load("shop", "orders", "orders", 40, 5);
        let fresh = load("shop", "orders", "orders", 0, 5);
        let c = check_rate(&fresh, &[stale], 0.2);
        assert!(c.ok, "{c:?}");
    }

    #[test]
    fn a_merge_commit_sink_is_one_transaction_per_window_whatever_its_pods() {
        let mut merged = load("shop", "orders", "orders", 1000, 1);
        merged.window = Some(Duration::from_secs(5));
        let c = check_rate(&merged, &[], 0.2);
        assert!(c.ok, "{c:?}");
        assert!(
            c.message
                .starts_with("1000 pod(s) load shop.orders merged every 5s: 0.20 loads/s"),
            "{}",
            c.message
        );
        merged.pods = 0;
        assert_eq!(merged.rate(), 0.0, "no pod, no load");
    }

    #[test]
    fn rates_are_summed_per_namespace_and_table() {
        let all = [
            load("shop", "a", "orders", 1, 5),
            load("shop", "b", "orders", 1, 5),
            load("billing", "c", "orders", 1, 10),
        ];
        let r = rates_by_namespace(&all);
        let key = |ns: &str| (ns.to_owned(), "shop".to_owned(), "orders".to_owned());
        assert_eq!(r[&key("shop")], 0.4);
        assert_eq!(r[&key("billing")], 0.1);
    }
}
