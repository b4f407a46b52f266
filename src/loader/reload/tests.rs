use super::*;
use crate::api::units::ByteSize;
use crate::api::{Acks, Format, SpoolSync};

fn config() -> LoaderConfig {
    serde_yaml::from_str(
        "sinks:\n  - name: orders\n    socket: /run/starsink/orders.sock\n    spoolDir: /spool/orders\n    starrocks:\n      feEndpoints: [\"http://fe:8030\"]\n      database: shop\n      table: orders\n      mergeCommit: {interval: 5s}\n",
    )
    .unwrap()
}

fn secs(s: u64) -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(s))
}

fn with(change: impl FnOnce(&mut SinkSpec)) -> LoaderConfig {
    let mut c = config();
    change(&mut c.sinks[0]);
    c
}

#[test]
fn the_same_config_changes_nothing() {
    assert_eq!(plan(&config(), &config()), Plan::default());
}

#[test]
fn what_can_change_live_is_applied_whole() {
    type Change = fn(&mut SinkSpec);
    let live: [(&str, Change); 11] = [
        ("socket, with its mode", |s| {
            s.socket = "/run/starsink/other.sock".into();
            s.socket_mode = "0666".into();
        }),
        ("flush.interval", |s| s.flush.interval = secs(30)),
        ("flush.maxBytes", |s| s.flush.max_bytes = ByteSize::mib(1)),
        ("feEndpoints", |s| {
            s.starrocks.fe_endpoints = vec!["http://fe-2:8030".into()]
        }),
        ("password", |s| s.starrocks.password = Some("new".into())),
        ("table", |s| s.starrocks.table = "orders_v2".into()),
        ("properties", |s| {
            s.starrocks
                .properties
                .insert("max_filter_ratio".into(), "0.1".into());
        }),
        ("retry", |s| s.retry.max_backoff = secs(5)),
        ("acks", |s| s.acks = Acks::Committed),
        ("maxRecordBytes", |s| {
            s.max_record_bytes = Some(ByteSize::mib(2))
        }),
        ("mergeCommit.interval", |s| {
            if let Some(mc) = s.starrocks.merge_commit.as_mut() {
                mc.interval = secs(10)
            }
        }),
    ];
    for (what, change) in live {
        let new = with(change);
        let p = plan(&config(), &new);
        assert_eq!(p.changed, vec![new.sinks[0].clone()], "{what}");
        assert!(p.need_restart.is_empty(), "{what}: {:?}", p.need_restart);
        assert!(p.added.is_empty() && p.removed.is_empty(), "{what}");
    }
}

#[test]
fn what_needs_a_restart_is_named_and_kept_while_the_rest_applies() {
    type Change = fn(&mut SinkSpec);
    let restart: [(&str, Change); 10] = [
        ("socketMode", |s| s.socket_mode = "0666".into()),
        ("maxConnections", |s| s.max_connections = 7),
        ("maxUnfinishedBytes", |s| {
            s.max_unfinished_bytes = Some(ByteSize::mib(64))
        }),
        ("format", |s| s.format = Format::Csv),
        ("columnSeparator", |s| s.column_separator = Some("|".into())),
        ("deadLetterDir", |s| s.dead_letter_dir = Some("/dl".into())),
        ("spoolDir", |s| s.spool_dir = Some("/elsewhere".into())),
        ("spoolSync", |s| s.spool_sync = SpoolSync::Always),
        ("spoolMaxBytes", |s| s.spool_max_bytes = ByteSize::mib(4096)),
        ("starrocks.mergeCommit (its rowIdColumn changed)", |s| {
            if let Some(mc) = s.starrocks.merge_commit.as_mut() {
                mc.row_id_column = Some("_id".into());
                mc.parallel = 5;
            }
        }),
    ];
    for (key, change) in restart {
        let new = with(|s| {
            change(s);
            s.starrocks.table = "orders_v2".into();
        });
        let p = plan(&config(), &new);
        assert_eq!(p.need_restart, vec![format!("sinks[orders].{key}")]);
        let expected = with(|s| s.starrocks.table = "orders_v2".into());
        assert_eq!(
            p.changed, expected.sinks,
            "{key}: kept as it runs, and the table change still applies"
        );
    }
}

#[test]
fn a_live_setting_that_needs_one_waiting_for_a_restart_waits_with_it() {
    let mut old = config();
    old.sinks[0].spool_dir = None;
    let new = with(|s| {
        s.acks = Acks::Spooled;
        s.starrocks.table = "orders_v2".into();
    });
    let p = plan(&old, &new);
    assert!(p.changed.is_empty(), "{p:?}");
    assert_eq!(p.need_restart.len(), 1);
    let why = &p.need_restart[0];
    assert!(
        why.starts_with("sinks[orders] (all of its change") && why.contains("spoolDir"),
        "{why}"
    );
}

#[test]
fn added_and_removed_sinks_and_loader_settings_are_told_apart() {
    let mut new = config();
    new.sinks[0].name = "payments".into();
    new.label_prefix = Some("other".into());
    new.metrics_addr = Some("127.0.0.1:9000".parse().unwrap());
    let p = plan(&config(), &new);
    assert_eq!(p.added, new.sinks);
    assert_eq!(p.removed, vec!["orders".to_owned()]);
    assert_eq!(p.need_restart, vec!["labelPrefix", "metricsAddr"]);
    assert!(p.changed.is_empty());
}
