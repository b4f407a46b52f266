//! Merge Commit, end to end: real loaders against the dev endpoint's Merge Commit server
//! (`src/dev_endpoint/merge.rs`, which cites the StarRocks behaviour it imitates).

mod support;

use std::time::Duration;

use support::*;

fn row(id: u64) -> String {
    format!(r#"{{"id":{id},"name":"row-{id}"}}"#)
}

const WAIT: Duration = Duration::from_secs(20);

/// A one-sink config (`orders`) with Merge Commit set as `mc`, a metrics port and
/// `extra` in the sink.
fn merged(dir: &std::path::Path, prefix: &str, fe: &str, mc: &str, extra: &str) -> String {
    format!(
        "labelPrefix: {prefix}\nmetricsAddr: 127.0.0.1:0\nsinks:\n{}",
        sink_yaml(
            "orders",
            &dir.join("orders.sock"),
            fe,
            &format!("      mergeCommit: {mc}\n    flush:\n      interval: 100ms\n    retry:\n      minBackoff: 20ms\n      maxBackoff: 100ms\n{extra}")
        )
    )
}

/// Waits until the loader on `port` counts `rows` rows committed.
async fn wait_loaded(port: u16, rows: u64) {
    let what = format!("{rows} rows counted as committed");
    wait_until(&what, WAIT, || async {
        metric_at(port, r#"starsink_records_loaded_total{sink="orders"}"#).await == rows as f64
    })
    .await;
}

/// The endpoint's records of windows: (committed, aborted).
fn windows(sr: &starsink::dev_endpoint::DevEndpoint) -> (usize, usize) {
    let st = sr.state();
    let n = |status: &str| st.loads.iter().filter(|l| l.status == status).count();
    (n("window committed"), n("window aborted"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_loaders_of_one_sink_share_windows_and_a_batch_is_acked_once_its_window_commits() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mc = "{interval: 1s}";
    let acks = "    acks: committed\n";
    let mut a = Loader::start(|dir| merged(dir, "pod-a", &fe, mc, acks)).await;
    let mut b = Loader::start(|dir| merged(dir, "pod-b", &fe, mc, acks)).await;
    let mut acked = Vec::new();
    for (loader, base) in [(&a, 0), (&b, 1000)] {
        let (read, mut write) = connect(&loader.socket("orders")).await.into_split();
        let reader = read_acks(read);
        let lines: String = (base..base + 200).map(|i| row(i) + "\n").collect();
        tokio::io::AsyncWriteExt::write_all(&mut write, lines.as_bytes())
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut write)
            .await
            .unwrap();
        acked.push((reader, write));
    }
    // Async: a batch is in a window at once, and counted (and acked) only when the
    // window's transaction is seen committed.
    for (reader, _write) in acked {
        let acks = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        let (oks, errs) = parse_acks(&acks);
        assert_eq!(
            (oks.last().copied(), errs.len()),
            (Some(200), 0),
            "{acks:?}"
        );
    }
    let loaded = ids(&sr.rows("shop.orders"));
    assert_eq!(loaded.len(), 400);
    let requests = sr
        .state()
        .loads
        .iter()
        .filter(|l| l.status == "in window")
        .count();
    let (committed, aborted) = windows(&sr);
    assert!(
        committed < requests && aborted == 0,
        "{requests} requests of two loaders went into {committed} windows"
    );
    let port = a.metrics_port();
    let in_window = r#"starsink_loads_total{sink="orders",outcome="in_window"}"#;
    assert!(metric_at(port, in_window).await >= 1.0);
    for loader in [&mut a, &mut b] {
        let acc = loader.stop_expecting(0).await;
        assert_eq!(acc["committed"].as_u64(), Some(200), "{acc}");
    }
    let mut unique = loaded.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 400, "no row twice");
}

/// Requests the endpoint answered with a window.
fn requests_in_window(sr: &starsink::dev_endpoint::DevEndpoint) -> usize {
    let st = sr.state();
    st.loads.iter().filter(|l| l.status == "in window").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sealed_while_the_one_before_waits_for_its_window_is_sent_into_that_window() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let acks = "    acks: committed\n";
    let mut loader = Loader::start(|dir| merged(dir, "pipe", &fe, "{interval: 3s}", acks)).await;
    let (read, mut write) = connect(&loader.socket("orders")).await.into_split();
    let reader = read_acks(read);
    for i in 0..3 {
        // One row per batch (flush interval 100ms); the next is written once this
        // one's request is in the window, which stays open for 3s.
        let line = row(i) + "\n";
        tokio::io::AsyncWriteExt::write_all(&mut write, line.as_bytes())
            .await
            .unwrap();
        let what = format!("{} requests in a window", i + 1);
        wait_until(&what, WAIT, || async {
            requests_in_window(&sr) > i as usize
        })
        .await;
    }
    tokio::io::AsyncWriteExt::shutdown(&mut write)
        .await
        .unwrap();
    let acks = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    let (oks, errs) = parse_acks(&acks);
    assert!(errs.is_empty(), "{acks:?}");
    assert!(
        oks.windows(2).all(|w| w[0] < w[1]) && oks.last() == Some(&3),
        "acks in seal order, whichever load saw the commit first: {acks:?}"
    );
    // Each batch went while the one before waited for the window: one transaction,
    // where one load at a time would have taken three windows.
    assert_eq!(requests_in_window(&sr), 3);
    assert_eq!(windows(&sr), (1, 0), "{}", loader.log_text());
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(3), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_a_window_committed_but_not_yet_visible_is_asked_for_never_sent_again() {
    let sr = endpoint(Faults {
        publish_timeout: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader =
        Loader::start(|dir| merged(dir, "sync", &fe, "{interval: 300ms, async: false}", "")).await;
    write_lines(
        &loader.socket("orders"),
        &(0..100).map(row).collect::<Vec<_>>(),
    )
    .await;
    assert!(sr.wait_for_rows(100, WAIT).await, "{}", loader.log_text());
    let port = loader.metrics_port();
    // The "not published before timeout" Fail sent the loader to the window's state,
    // which said COMMITTED: done, nothing sent twice.
    wait_loaded(port, 100).await;
    let in_window = r#"starsink_loads_total{sink="orders",outcome="in_window"}"#;
    assert!(metric_at(port, in_window).await >= 1.0);
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(100), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_a_window_seen_committed_but_not_yet_visible_counts_as_loaded() {
    let sr = endpoint(Faults {
        publish_timeout: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| merged(dir, "late", &fe, "{interval: 300ms}", "")).await;
    write_lines(
        &loader.socket("orders"),
        &(0..60).map(row).collect::<Vec<_>>(),
    )
    .await;
    let port = loader.metrics_port();
    wait_loaded(port, 60).await;
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(60), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_window_is_sent_again_in_the_next_one() {
    let sr = endpoint(Faults {
        fail: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| merged(dir, "abort", &fe, "{interval: 200ms}", "")).await;
    let port = loader.metrics_port();
    write_lines(
        &loader.socket("orders"),
        &(0..50).map(row).collect::<Vec<_>>(),
    )
    .await;
    let failed = r#"starsink_loads_total{sink="orders",outcome="window_failed"}"#;
    wait_until("an aborted window", WAIT, || async {
        metric_at(port, failed).await >= 1.0
    })
    .await;
    sr.set_faults(Faults::default());
    assert!(sr.wait_for_rows(50, WAIT).await, "{}", loader.log_text());
    let acc = loader.stop_expecting(0).await;
    assert_eq!(
        (acc["committed"].as_u64(), acc["dead_lettered"].as_u64()),
        (Some(50), Some(0)),
        "{acc}"
    );
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 50);
    assert!(windows(&sr).1 >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_keeps_failing_for_its_data_is_dead_lettered_after_three_tries() {
    let sr = endpoint(Faults {
        refuse: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        let dlq = format!("    deadLetterDir: {}\n", dir.join("dlq").display());
        merged(dir, "poison", &fe, "{interval: 200ms, async: false}", &dlq)
    })
    .await;
    write_lines(
        &loader.socket("orders"),
        &(0..30).map(row).collect::<Vec<_>>(),
    )
    .await;
    let port = loader.metrics_port();
    wait_until("the batch dead-lettered", WAIT, || async {
        metric_at(
            port,
            r#"starsink_records_dead_lettered_total{sink="orders"}"#,
        )
        .await
            == 30.0
    })
    .await;
    let failed = r#"starsink_loads_total{sink="orders",outcome="window_failed"}"#;
    assert_eq!(metric_at(port, failed).await, 3.0);
    let dlq = loader.dir.path().join("dlq");
    let reason = std::fs::read_dir(&dlq)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".reason.json"))
        .expect("a reason file");
    let reason: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reason).unwrap()).unwrap();
    let text = reason["reason"].as_str().unwrap_or_default();
    assert!(
        text.contains("merged window failed 3 times") && text.contains("other loaders' rows"),
        "{reason}"
    );
    let acc = loader.stop_expecting(3).await;
    assert_eq!(acc["dead_lettered"].as_u64(), Some(30), "{acc}");
    assert_eq!(sr.committed_rows(), 0);
}

/// The rows of `shop.orders` grouped by their row id: id to the rows that carry it.
fn by_row_id(rows: &[String]) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
    for r in rows {
        let v: serde_json::Value = serde_json::from_str(r).expect("a JSON row");
        let id = v["_starsink_id"].as_str().expect("a row id").to_owned();
        out.entry(id).or_default().push(r.clone());
    }
    out
}

/// Loads 100 rows while StarRocks commits the first request's window but the answer is
/// lost, so the loader sends that batch again; returns what the table holds.
async fn load_through_a_lost_answer(mc: &str, prefix: &str) -> Vec<String> {
    let sr = endpoint(Faults {
        commit_then_drop: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| merged(dir, prefix, &fe, mc, "")).await;
    write_lines(
        &loader.socket("orders"),
        &(0..100).map(row).collect::<Vec<_>>(),
    )
    .await;
    wait_until(
        "an answer lost after its rows went into a window",
        WAIT,
        || async {
            sr.state()
                .loads
                .iter()
                .any(|l| l.status == "in window, answer dropped")
        },
    )
    .await;
    sr.set_faults(Faults::default());
    let port = loader.metrics_port();
    wait_loaded(port, 100).await;
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(100), "{acc}");
    sr.rows("shop.orders")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_is_sent_again_and_duplicates_unless_rows_carry_their_id() {
    // Without a row id: at-least-once, the lost batch's rows are in the table twice.
    let rows = load_through_a_lost_answer("{interval: 300ms}", "plain").await;
    let loaded = ids(&rows);
    let mut unique = loaded.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique, (0..100).collect::<Vec<_>>(), "every row arrived");
    assert!(
        loaded.len() > 100,
        "the re-sent batch is duplicated ({} rows)",
        loaded.len()
    );

    // With rowIdColumn: the same duplicates carry the same id, so a Primary Key table
    // keyed by it holds each record once; and no two records share an id.
    let rows =
        load_through_a_lost_answer("{interval: 300ms, rowIdColumn: _starsink_id}", "keyed").await;
    assert!(rows.len() > 100, "the batch was sent twice");
    let groups = by_row_id(&rows);
    assert_eq!(groups.len(), 100, "one id per record");
    for (id, copies) in &groups {
        assert!(
            copies.iter().all(|c| c == &copies[0]),
            "{id} names two records: {copies:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_ids_are_never_reused_by_a_restarted_loader_without_a_spool() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mc = "{interval: 200ms, rowIdColumn: _starsink_id}";
    for round in 0..2 {
        let mut loader = Loader::start(|dir| merged(dir, "same-pod", &fe, mc, "")).await;
        let lines: Vec<String> = (round * 50..round * 50 + 50).map(row).collect();
        write_lines(&loader.socket("orders"), &lines).await;
        let port = loader.metrics_port();
        wait_loaded(port, 50).await;
        loader.stop_expecting(0).await;
    }
    let groups = by_row_id(&sr.rows("shop.orders"));
    assert_eq!(
        groups.len(),
        100,
        "two starts of one loader, 100 records, 100 ids"
    );
}
