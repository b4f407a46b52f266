//! What the loader does when things go wrong: refused loads, StarRocks down at shutdown,
//! slow loads, a dead FE, a socket in use, a bad config. Each runs the real binary.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

fn row(id: u64) -> String {
    format!(r#"{{"id":{id},"name":"row-{id}"}}"#)
}

/// A one-sink loader config for `table` with the sink settings in `extra`.
/// A config with one sink, `orders`, and a metrics port (any free one: the loader logs it).
fn one_sink(dir: &std::path::Path, prefix: &str, fe: &str, extra: &str) -> String {
    format!(
        "labelPrefix: {prefix}\nmetricsAddr: 127.0.0.1:0\nsinks:\n{}",
        sink_yaml("orders", &dir.join("orders.sock"), fe, extra)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_are_dead_lettered_with_their_reason_and_the_exit_code_says_so() {
    let sr = endpoint(Faults {
        refuse: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        one_sink(
            dir,
            "dlq",
            &fe,
            &format!(
                "    deadLetterDir: {}\n    flush:\n      interval: 100ms\n",
                dir.join("dlq").display()
            ),
        )
    })
    .await;
    let lines: Vec<String> = (0..50).map(row).collect();
    write_lines(&loader.socket("orders"), &lines).await;
    let dlq = loader.dir.path().join("dlq");
    wait_until("a dead-letter file", Duration::from_secs(10), || async {
        std::fs::read_dir(&dlq).is_ok_and(|mut d| d.next().is_some())
    })
    .await;
    let acc = loader.stop_expecting(3).await;
    assert_eq!(
        (acc["dead_lettered"].as_u64(), acc["lost"].as_u64()),
        (Some(50), Some(0)),
        "{acc}"
    );
    assert_eq!(sr.committed_rows(), 0);

    // Every refused row is in a data file; each data file has its reason beside it.
    let dlq = loader.dir.path().join("dlq");
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(&dlq).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.ends_with(".reason.json") {
            continue;
        }
        let label = name.strip_suffix(".json").expect("a .json data file");
        let body: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        rows.extend(body.iter().map(|v| v.to_string()));
        let reason: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dlq.join(format!("{label}.reason.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(reason["label"], label);
        assert_eq!(reason["sink"], "orders");
        assert_eq!(reason["rows"].as_u64(), Some(body.len() as u64));
        assert_eq!(reason["mayBeCommitted"], false);
        assert!(
            reason["reason"]
                .as_str()
                .unwrap()
                .contains("too many filtered rows"),
            "{reason}"
        );
        assert!(
            reason["errorUrl"]
                .as_str()
                .unwrap()
                .contains("_load_error_log"),
            "{reason}"
        );
    }
    assert_exactly_once(&ids(&rows), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starrocks_down_through_the_shutdown_budget_exits_one_and_counts_the_lost_rows() {
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "shutdownTimeout: 2s\n{}",
            one_sink(
                dir,
                "down",
                &fe,
                "    flush:\n      interval: 1h\n    retry:\n      minBackoff: 20ms\n      maxBackoff: 100ms\n"
            )
        )
    })
    .await;
    let lines: Vec<String> = (0..300).map(row).collect();
    write_lines(&loader.socket("orders"), &lines).await;
    // Written and closed before the signal: the drain still reads them, so they count as
    // accepted, and with StarRocks down they are lost, loudly.
    let acc = loader.stop_expecting(1).await;
    assert_eq!(
        (
            acc["accepted"].as_u64(),
            acc["committed"].as_u64(),
            acc["lost"].as_u64()
        ),
        (Some(300), Some(0), Some(300)),
        "{acc}"
    );
    assert!(
        sr.state()
            .loads
            .iter()
            .filter(|l| l.status == "503")
            .count()
            > 1,
        "the loader kept retrying until the deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_the_accounting_line() {
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "shutdownTimeout: 10m\n{}",
            one_sink(dir, "twice", &fe, "    flush:\n      interval: 1h\n")
        )
    })
    .await;
    let lines: Vec<String> = (0..40).map(row).collect();
    write_lines(&loader.socket("orders"), &lines).await;
    loader.signal(Signal::SIGTERM);
    // The first signal's flush keeps failing; a 10m budget would keep it retrying.
    let port = loader.metrics_port();
    let retried = r#"starsink_loads_total{sink="orders",outcome="retried"}"#;
    wait_until("a failed load", Duration::from_secs(10), || async {
        metric_at(port, retried).await >= 1.0
    })
    .await;
    loader.signal(Signal::SIGTERM);
    let status = loader.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(1), "{}", loader.log_text());
    let acc = loader.accounting();
    assert_eq!(
        (acc["accepted"].as_u64(), acc["lost"].as_u64()),
        (Some(40), Some(40)),
        "{acc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_slower_than_the_request_timeout_is_waited_for_not_sent_twice() {
    let sr = endpoint(Faults {
        slow: 1.0,
        slow_by: Duration::from_millis(1200),
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        one_sink(
            dir,
            "slow",
            &fe,
            "      requestTimeout: 300ms\n    flush:\n      interval: 50ms\n    retry:\n      minBackoff: 50ms\n      maxBackoff: 200ms\n",
        )
    })
    .await;
    let lines: Vec<String> = (0..100).map(row).collect();
    write_lines(&loader.socket("orders"), &lines).await;
    assert!(
        sr.wait_for_rows(100, Duration::from_secs(10)).await,
        "{}",
        loader.log_text()
    );
    let pending = r#"starsink_loads_total{sink="orders",outcome="pending"}"#;
    assert!(
        metric_at(loader.metrics_port(), pending).await >= 1.0,
        "the loader should have seen the label PREPARE: {}",
        loader.log_text()
    );
    sr.set_faults(Faults::default());
    loader.signal(Signal::SIGTERM);
    let status = loader.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", loader.log_text());
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 100);
    // The body crossed the network once per batch: waiting, not re-sending.
    let st = sr.state();
    let sent: Vec<&str> = st.loads.iter().map(|l| l.label.as_str()).collect();
    let mut unique = sent.clone();
    unique.dedup();
    assert_eq!(sent, unique, "a label was sent twice: {sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_fe_is_failed_over_to_the_next_one() {
    let sr = endpoint(Faults::default()).await;
    let dead = dead_address();
    let live = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: failover\nsinks:\n  - name: orders\n    socket: {}\n    starrocks:\n      feEndpoints: [\"{dead}\", \"{live}\"]\n      database: shop\n      table: orders\n    flush:\n      interval: 50ms\n    retry:\n      minBackoff: 10ms\n",
            dir.join("orders.sock").display()
        )
    })
    .await;
    for part in 0..5u64 {
        let lines: Vec<String> = (part * 100..(part + 1) * 100).map(row).collect();
        write_lines(&loader.socket("orders"), &lines).await;
        assert!(
            sr.wait_for_rows((part + 1) * 100, Duration::from_secs(10))
                .await,
            "{}",
            loader.log_text()
        );
    }
    loader.signal(Signal::SIGTERM);
    assert!(loader.wait_exit(Duration::from_secs(10)).await.success());
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_is_never_stolen_but_a_stale_one_is_replaced() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut first =
        Loader::start(|dir| one_sink(dir, "first", &fe, "    flush:\n      interval: 50ms\n"))
            .await;
    let socket = first.socket("orders");

    // A second loader on the same socket must refuse to start and say why.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("second.yaml");
    std::fs::write(
        &config,
        format!(
            "labelPrefix: second\nsinks:\n{}",
            sink_yaml("orders", &socket, &fe, "")
        ),
    )
    .unwrap();
    let (status, log) = run_loader_to_exit(&config, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("in use by a live process"), "{log}");
    // The first loader still owns its socket.
    write_lines(&socket, &[row(1)]).await;
    assert!(sr.wait_for_rows(1, Duration::from_secs(5)).await);
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(5)).await;

    // After a crash the socket file stays behind; the next loader takes it over.
    assert!(socket.exists(), "SIGKILL leaves the socket file");
    let mut next = Loader::start(|_| {
        format!(
            "labelPrefix: next\nsinks:\n{}",
            sink_yaml("orders", &socket, &fe, "    flush:\n      interval: 50ms\n")
        )
    })
    .await;
    write_lines(&socket, &[row(2)]).await;
    assert!(sr.wait_for_rows(2, Duration::from_secs(5)).await);
    next.signal(Signal::SIGTERM);
    assert!(next.wait_exit(Duration::from_secs(10)).await.success());
    assert_eq!(ids(&sr.rows("shop.orders")), [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_stops_the_loader_with_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("format: parquet", "sinks[0].format", "json"),
        (
            "flush:\n      interval: 0s",
            "sinks[0].flush.interval",
            "more than zero",
        ),
        (
            "passwordFile: /nonexistent/pw",
            "passwordFile",
            "/nonexistent/pw",
        ),
    ];
    for (i, (setting, key, hint)) in cases.iter().enumerate() {
        let socket = dir.path().join(format!("s{i}.sock"));
        let setting = if setting.starts_with("password") {
            format!("      {setting}\n")
        } else {
            format!("    {setting}\n")
        };
        let config = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(
            &config,
            format!(
                "sinks:\n{}",
                sink_yaml("orders", &socket, "http://127.0.0.1:1", &setting)
            ),
        )
        .unwrap();
        let (status, log) = run_loader_to_exit(&config, Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(2), "{setting}: {log}");
        assert!(
            log.contains(key) && log.contains(hint),
            "{setting}: the error should name {key:?} and say {hint:?}: {log}"
        );
        assert!(!socket.exists(), "a refused config must not create sockets");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_loader_on_the_same_spool_refuses_to_start_and_names_the_owner() {
    let sr = endpoint(Faults::default()).await;
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().display().to_string();
    let mut first = Loader::start(|dir| {
        format!(
            "sinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &sr.fe_url(),
                &format!("    spoolDir: {spool_dir}\n")
            )
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("orders.sock");
    let config = dir.path().join("second.yaml");
    std::fs::write(
        &config,
        format!(
            "labelPrefix: second\nsinks:\n{}",
            sink_yaml(
                "orders",
                &socket,
                &sr.fe_url(),
                &format!("    spoolDir: {spool_dir}\n")
            )
        ),
    )
    .unwrap();
    let (status, log) = run_loader_to_exit(&config, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2), "{log}");
    let owner = format!("in use by another loader (pid {})", first.pid());
    assert!(
        log.contains(&owner),
        "the error should name the owner: {log}"
    );
    assert!(!socket.exists(), "the second loader bound no socket");
    // The owner's spool is untouched: it goes on loading.
    write_lines(
        &first.socket("orders"),
        &(0..100).map(row).collect::<Vec<_>>(),
    )
    .await;
    let accounting = first.stop_expecting(0).await;
    assert_eq!(accounting["committed"], 100, "{accounting}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_answered_before_the_body_was_sent_is_not_a_commit() {
    // Half of the loads meet a broken BE that answers Success at once and loads nothing.
    let sr = endpoint(Faults {
        early_success: 0.5,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        one_sink(
            dir,
            "early",
            &fe,
            "    flush:\n      maxRows: 50\n    retry:\n      minBackoff: 10ms\n",
        )
    })
    .await;
    write_lines(
        &loader.socket("orders"),
        &(0..1000).map(row).collect::<Vec<_>>(),
    )
    .await;
    assert!(
        sr.wait_for_rows(1000, Duration::from_secs(30)).await,
        "{}",
        loader.log_text()
    );
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"], 1000, "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 1000);
    let early = sr
        .state()
        .loads
        .iter()
        .filter(|l| l.status == "early Success")
        .count();
    assert!(early > 0, "the fault never fired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_counted_fewer_rows_than_sent_is_kept_not_counted_as_loaded() {
    let sr = endpoint(Faults {
        short_body: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        one_sink(
            dir,
            "short",
            &fe,
            &format!("    deadLetterDir: {}\n", dir.join("dlq").display()),
        )
    })
    .await;
    write_lines(
        &loader.socket("orders"),
        &(0..10).map(row).collect::<Vec<_>>(),
    )
    .await;
    let acc = loader.stop_expecting(3).await;
    assert_eq!(
        (acc["committed"].as_u64(), acc["dead_lettered"].as_u64()),
        (Some(0), Some(10)),
        "{acc}"
    );
    let dlq = loader.dir.path().join("dlq");
    let reason = std::fs::read_dir(&dlq)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".reason.json"))
        .expect("a reason file");
    let reason: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reason).unwrap()).unwrap();
    assert_eq!(reason["mayBeCommitted"], true, "{reason}");
    assert!(
        reason["reason"]
            .as_str()
            .unwrap_or("")
            .contains("counted 5 row(s) of the 10 sent"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_an_fe_url_is_refused_and_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("orders.sock");
    let config = dir.path().join("loader.yaml");
    std::fs::write(
        &config,
        format!(
            "sinks:\n{}",
            sink_yaml("orders", &socket, "http://loader:hunter2@127.0.0.1:1", "")
        ),
    )
    .unwrap();
    let (status, log) = run_loader_to_exit(&config, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("sinks[0].starrocks.feEndpoints[0]") && log.contains("passwordFile"),
        "the error should name the key and the fix: {log}"
    );
    assert!(
        !log.contains("hunter2"),
        "the password is in the log: {log}"
    );
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_what_starrocks_did_not_take_by_the_deadline_loads_on_the_next_start() {
    let spool = tempfile::tempdir().unwrap();
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    let config = |dir: &std::path::Path, prefix: &str| {
        format!(
            "shutdownTimeout: 2s\n{}",
            one_sink(
                dir,
                prefix,
                &fe,
                &format!(
                    "    spoolDir: {}\n    flush:\n      interval: 1h\n      maxRows: 120\n    retry:\n      minBackoff: 20ms\n      maxBackoff: 100ms\n",
                    spool.path().display()
                )
            )
        )
    };
    let mut first = Loader::start(|dir| config(dir, "first")).await;
    let lines: Vec<String> = (0..300).map(row).collect();
    write_lines(&first.socket("orders"), &lines).await;
    let acc = first.stop_expecting(4).await;
    assert_eq!(
        (
            acc["spooled"].as_u64(),
            acc["lost"].as_u64(),
            acc["committed"].as_u64()
        ),
        (Some(300), Some(0), Some(0)),
        "{acc}"
    );

    // StarRocks is back; a new loader on the same spool loads all of it, once.
    sr.set_faults(Faults::default());
    let mut second = Loader::start(|dir| config(dir, "second")).await;
    assert!(
        sr.wait_for_rows(300, Duration::from_secs(10)).await,
        "{}",
        second.log_text()
    );
    second.signal(Signal::SIGTERM);
    let status = second.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", second.log_text());
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 300);
    // Sealed batches kept their labels across the restart.
    let labels: Vec<String> = sr
        .state()
        .loads
        .iter()
        .filter(|l| l.status == "Success")
        .map(|l| l.label.clone())
        .collect();
    assert!(labels.iter().any(|l| l.starts_with("first_")), "{labels:?}");
    let acc = second.accounting();
    assert_eq!(acc["spooled"].as_u64(), Some(0), "{acc}");

    // A third start finds nothing left.
    let mut third = Loader::start(|dir| config(dir, "third")).await;
    third.signal(Signal::SIGTERM);
    assert!(third.wait_exit(Duration::from_secs(10)).await.success());
    assert_eq!(sr.committed_rows(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_warn_after_is_warned_about_and_never_dead_lettered() {
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        one_sink(
            dir,
            "outage",
            &fe,
            &format!(
                "    deadLetterDir: {}\n    flush:\n      interval: 100ms\n    retry:\n      minBackoff: 20ms\n      maxBackoff: 200ms\n      warnAfter: 1s\n",
                dir.join("dlq").display()
            ),
        )
    })
    .await;
    let port = loader.metrics_port();
    write_lines(
        &loader.socket("orders"),
        &(0..50).map(row).collect::<Vec<_>>(),
    )
    .await;
    // An error each warnAfter, saying how long the batch has waited.
    let warned = |at_least: u64| {
        move |l: &serde_json::Value| {
            l["level"] == "ERROR" && l["waited_s"].as_u64().is_some_and(|w| w >= at_least)
        }
    };
    loader
        .wait_log_where(
            "an error after warnAfter",
            warned(1),
            Duration::from_secs(10),
        )
        .await;
    // Twice warnAfter: the batch is still retried, nothing is dead-lettered, and the
    // age of the oldest record says how long it has waited.
    loader
        .wait_log_where("a second error", warned(2), Duration::from_secs(10))
        .await;
    let (_, text) = http_get(port, "/metrics").await;
    assert!(
        metric(
            &text,
            "starsink_oldest_unloaded_record_age_seconds{sink=\"orders\"}"
        ) >= 2.0
    );
    assert_eq!(
        metric(
            &text,
            "starsink_records_dead_lettered_total{sink=\"orders\"}"
        ),
        0.0
    );

    sr.set_faults(Faults::default());
    assert!(
        sr.wait_for_rows(50, Duration::from_secs(10)).await,
        "{}",
        loader.log_text()
    );
    // Once everything is loaded, nothing waits: the gauge goes back to 0.
    let gauge = "starsink_oldest_unloaded_record_age_seconds{sink=\"orders\"}";
    wait_until(
        "the age gauge back at 0",
        Duration::from_secs(10),
        || async { metric_at(port, gauge).await == 0.0 },
    )
    .await;
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(50), "{acc}");
    assert!(
        !loader.dir.path().join("dlq").exists(),
        "nothing was dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_configuration_problem_retried_until_fixed_never_dead_lettered() {
    let sr = DevEndpoint::start(EndpointConfig {
        password: "s3cret".into(),
        ..EndpointConfig::default()
    })
    .await
    .unwrap();
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        std::fs::write(dir.join("password"), "wrong\n").unwrap();
        one_sink(
            dir,
            "auth",
            &fe,
            &format!(
                "      passwordFile: {}\n    deadLetterDir: {}\n    flush:\n      interval: 100ms\n    retry:\n      minBackoff: 20ms\n      maxBackoff: 100ms\n",
                dir.join("password").display(),
                dir.join("dlq").display()
            ),
        )
    })
    .await;
    let port = loader.metrics_port();
    write_lines(
        &loader.socket("orders"),
        &(0..20).map(row).collect::<Vec<_>>(),
    )
    .await;
    let misconfigured = "starsink_loads_total{sink=\"orders\",outcome=\"misconfigured\"}";
    wait_until(
        "two misconfigured attempts",
        Duration::from_secs(10),
        || async { metric_at(port, misconfigured).await >= 2.0 },
    )
    .await;
    // Someone fixes the password file (it is read again for each request).
    std::fs::write(loader.dir.path().join("password"), "s3cret\n").unwrap();
    assert!(
        sr.wait_for_rows(20, Duration::from_secs(10)).await,
        "{}",
        loader.log_text()
    );
    let acc = loader.stop_expecting(0).await;
    assert_eq!(
        (acc["committed"].as_u64(), acc["dead_lettered"].as_u64()),
        (Some(20), Some(0)),
        "{acc}"
    );
    assert!(
        !loader.dir.path().join("dlq").exists(),
        "nothing was dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_widens_the_flush_interval_and_healthy_loads_narrow_it_back() {
    let sr = endpoint(Faults {
        backpressure: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        one_sink(
            dir,
            "pressure",
            &fe,
            "    flush:\n      interval: 200ms\n      maxInterval: 1s\n    retry:\n      minBackoff: 10ms\n      maxBackoff: 50ms\n",
        )
    })
    .await;
    let port = loader.metrics_port();
    let interval = r#"starsink_flush_interval_seconds{sink="orders"}"#;
    assert_eq!(metric_at(port, interval).await, 0.2);
    write_lines(
        &loader.socket("orders"),
        &(0..50).map(row).collect::<Vec<_>>(),
    )
    .await;

    // "Too many versions": the batch is retried under its label, never dead-lettered,
    // and each answer doubles the interval in effect.
    let versions = r#"starsink_backpressure_total{sink="orders",reason="versions"}"#;
    wait_until(
        "two backpressure answers",
        Duration::from_secs(10),
        || async { metric_at(port, versions).await >= 2.0 },
    )
    .await;
    let widened = metric_at(port, interval).await;
    assert!((0.8..=1.0).contains(&widened), "interval {widened}s");
    let dead = r#"starsink_loads_total{sink="orders",outcome="dead_lettered"}"#;
    assert_eq!(metric_at(port, dead).await, 0.0);
    assert_eq!(sr.committed_rows(), 0);

    // StarRocks has caught up: each load that meets no backpressure narrows it again,
    // down to the configured interval and no further.
    sr.set_faults(Faults::default());
    let mut next = 50;
    wait_until(
        "the interval back at 200ms",
        Duration::from_secs(30),
        || {
            let id = next;
            next += 1;
            let socket = loader.socket("orders");
            let sr = &sr;
            async move {
                write_lines(&socket, &[row(id)]).await;
                sr.wait_for_rows(id + 1, Duration::from_secs(5)).await;
                metric_at(port, interval).await == 0.2
            }
        },
    )
    .await;
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(next), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_behind_a_slow_load_takes_what_waits_in_the_channel_before_it_goes() {
    // Every load takes a second; rows arrive in 40 small writes meanwhile.
    let sr = endpoint(Faults {
        slow: 1.0,
        slow_by: Duration::from_secs(1),
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader =
        Loader::start(|dir| one_sink(dir, "held", &fe, "    flush:\n      interval: 50ms\n")).await;
    let mut conn = connect(&loader.socket("orders")).await;
    for w in 0..40u64 {
        let lines: String = (w * 25..w * 25 + 25).map(|i| row(i) + "\n").collect();
        tokio::io::AsyncWriteExt::write_all(&mut conn, lines.as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(conn);
    // A batch that could not be sealed while another waited takes the chunks queued
    // for it when it may go, instead of one chunk per one-second load.
    assert!(
        sr.wait_for_rows(1000, Duration::from_secs(15)).await,
        "{} rows after 15s of one-second loads",
        sr.committed_rows()
    );
    let loads = sr.state().loads.len();
    assert!(loads <= 10, "1000 rows in 40 writes took {loads} loads");
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(1000), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 1000);
}
