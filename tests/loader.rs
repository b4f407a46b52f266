//! The loader's promises, proven against the real binary over real sockets and signals.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;
use tokio::io::AsyncWriteExt;

fn row(id: u64) -> String {
    format!(r#"{{"id":{id},"name":"row-{id}","note":"caf\u00e9 \"quoted\""}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_an_idle_batch_when_its_oldest_record_is_due() {
    let sr = DevEndpoint::start(EndpointConfig::default()).await.unwrap();
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: idle\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                "    flush:\n      interval: 1s\n"
            )
        )
    })
    .await;

    let mut conn = connect(&loader.socket("orders")).await;
    let body: String = (0..10).map(|i| row(i) + "\n").collect();
    conn.write_all(body.as_bytes()).await.unwrap();
    let written = Instant::now();
    // The connection stays open and silent: only the timer can flush.
    assert!(
        sr.wait_for_rows(10, Duration::from_secs(5)).await,
        "{}",
        loader.log_text()
    );
    let committed_at = sr
        .state()
        .loads
        .iter()
        .find(|l| l.status == "Success")
        .unwrap()
        .at;
    let waited = committed_at.duration_since(written);
    assert!(
        waited >= Duration::from_millis(900) && waited <= Duration::from_millis(1300),
        "committed {waited:?} after the write; the interval is 1s"
    );
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 10);
    drop(conn);
    loader.signal(Signal::SIGTERM);
    assert!(loader.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_everything_buffered_under_a_long_interval_and_exits_zero() {
    let sr = DevEndpoint::start(EndpointConfig::default()).await.unwrap();
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: term\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                "    flush:\n      interval: 1h\n"
            )
        )
    })
    .await;
    let lines: Vec<String> = (0..500).map(row).collect();
    write_lines(&loader.socket("orders"), &lines).await;
    assert_eq!(
        sr.committed_rows(),
        0,
        "nothing may load before the 1h interval"
    );
    loader.signal(Signal::SIGTERM);
    let status = loader.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        loader.log_text()
    );
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 500);
    let acc = loader.accounting();
    assert_eq!(
        (acc["committed"].as_u64(), acc["lost"].as_u64()),
        (Some(500), Some(0)),
        "{acc}"
    );
}
