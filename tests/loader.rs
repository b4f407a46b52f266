//! The loader's promises, proven against the real binary over real sockets and signals.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;
use tokio::io::AsyncWriteExt;

fn row(id: u64) -> String {
    format!(r#"{{"id":{id},"name":"row-{id}","note":"caf\u00e9 \"quoted\""}}"#)
}

/// A loader with one sink, `orders`, to the FE at `fe`; `extra` is added to the sink.
async fn orders_loader(fe: &str, label_prefix: &str, extra: &str) -> Loader {
    Loader::start(|dir| {
        let sink = sink_yaml("orders", &dir.join("orders.sock"), fe, extra);
        format!("labelPrefix: {label_prefix}\nsinks:\n{sink}")
    })
    .await
}

/// Starts `n` writers on `socket`: writer `w` connects, writes the pieces `writes(w)` in
/// order (each one write), and closes.
fn spawn_writers(
    socket: &std::path::Path,
    n: u64,
    writes: impl Fn(u64) -> Vec<Vec<u8>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let (socket, writes) = (socket.to_owned(), writes(w));
            tokio::spawn(async move {
                let mut conn = connect(&socket).await;
                for piece in &writes {
                    conn.write_all(piece).await.unwrap();
                }
                conn.shutdown().await.unwrap();
            })
        })
        .collect()
}

/// Waits for `writers` to finish, then for `total` rows in `shop.orders`; returns them.
async fn rows_once_written(
    sr: &DevEndpoint,
    loader: &Loader,
    writers: Vec<tokio::task::JoinHandle<()>>,
    total: u64,
) -> Vec<String> {
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        sr.wait_for_rows(total, Duration::from_secs(60)).await,
        "only {} rows; log:\n{}",
        sr.committed_rows(),
        loader.log_text()
    );
    sr.rows("shop.orders")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_an_idle_batch_when_its_oldest_record_is_due() {
    let sr = endpoint(Faults::default()).await;
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
    let sr = endpoint(Faults::default()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_writers_each_row_loaded_once_and_intact() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = orders_loader(
        &fe,
        "conc",
        "    flush:\n      interval: 200ms\n      maxBytes: 256KiB\n",
    )
    .await;
    const WRITERS: u64 = 32;
    const ROWS: u64 = 4000;
    let writers = spawn_writers(&loader.socket("orders"), WRITERS, |w| {
        let mut rng = fastrand::Rng::with_seed(w);
        let (mut pending, mut writes) = (Vec::new(), Vec::new());
        for i in 0..ROWS {
            pending.extend_from_slice(row(w * ROWS + i).as_bytes());
            pending.push(b'\n');
            // Varied write sizes: lines are split across writes at random points.
            while pending.len() > rng.usize(1..2000) {
                let cut = rng.usize(1..=pending.len());
                writes.push(pending.drain(..cut).collect());
            }
        }
        writes.push(pending);
        writes
    });
    let total = WRITERS * ROWS;
    let rows = rows_once_written(&sr, &loader, writers, total).await;
    assert_exactly_once(&ids(&rows), total);
    for r in &rows {
        let v: serde_json::Value = serde_json::from_str(r).unwrap();
        let id = v["id"].as_u64().unwrap();
        assert_eq!(r, &row(id), "row {id} was altered");
    }
    loader.signal(Signal::SIGTERM);
    assert!(loader.wait_exit(Duration::from_secs(10)).await.success());
}

/// A CSV row of varied length, by id.
fn csv_row(id: u64) -> String {
    format!("{id},row-{id},{}", "x".repeat((id % 300) as usize))
}

/// CSV rows through the real loader: whatever the write sizes (small ones that leave read
/// buffers part-full, large ones that fill them, so that records are copied into bodies
/// in short and long runs), and with CRLF lines among them, each row arrives once and
/// exactly as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_of_eight_writers_each_loaded_once_and_intact_whatever_the_reads() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let extra = "    format: csv\n    flush:\n      interval: 200ms\n      maxBytes: 1MiB\n";
    let mut loader = orders_loader(&fe, "csv", extra).await;
    const WRITERS: u64 = 8;
    const ROWS: u64 = 12_000;
    let writers = spawn_writers(&loader.socket("orders"), WRITERS, |w| {
        let mut rng = fastrand::Rng::with_seed(w);
        let end: &[u8] = if w == 0 { b"\r\n" } else { b"\n" };
        let (mut pending, mut writes) = (Vec::new(), Vec::new());
        for i in 0..ROWS {
            pending.extend_from_slice(csv_row(w * ROWS + i).as_bytes());
            pending.extend_from_slice(end);
            let size = if rng.bool() {
                rng.usize(1..500)
            } else {
                rng.usize(1..300_000)
            };
            if pending.len() > size {
                writes.push(std::mem::take(&mut pending));
            }
        }
        writes.push(pending);
        writes
    });
    let total = WRITERS * ROWS;
    let rows = rows_once_written(&sr, &loader, writers, total).await;
    let ids: Vec<u64> = rows
        .iter()
        .map(|r| {
            let id: u64 = r
                .split(',')
                .next()
                .and_then(|i| i.parse().ok())
                .expect("row has an id");
            assert_eq!(r, &csv_row(id), "row {id} was altered");
            id
        })
        .collect();
    assert_exactly_once(&ids, total);
    loader.signal(Signal::SIGTERM);
    assert!(loader.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_still_connected_at_sigterm_loses_nothing_it_writes_before_closing() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: late\nshutdownTimeout: 20s\ndrainTimeout: 10s\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                "    flush:\n      interval: 1h\n"
            )
        )
    })
    .await;
    let mut conn = connect(&loader.socket("orders")).await;
    let first: String = (0..100).map(|i| row(i) + "\n").collect();
    conn.write_all(first.as_bytes()).await.unwrap();
    loader.signal(Signal::SIGTERM);
    // The loader flushes what it has at once; this writer is still being read.
    assert!(
        sr.wait_for_rows(100, Duration::from_secs(10)).await,
        "{}",
        loader.log_text()
    );
    let last: String = (100..250).map(|i| row(i) + "\n").collect();
    conn.write_all(last.as_bytes()).await.unwrap();
    conn.shutdown().await.unwrap();
    drop(conn);
    let status = loader.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        loader.log_text()
    );
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_cause_neither_duplicates_nor_loss() {
    let sr = endpoint(Faults {
        commit_then_drop: 0.20,
        fail: 0.15,
        unavailable: 0.10,
        publish_timeout: 0.20,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: faults\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                "    flush:\n      interval: 50ms\n      maxRows: 300\n    retry:\n      minBackoff: 5ms\n      maxBackoff: 50ms\n"
            )
        )
    })
    .await;
    const N: u64 = 20_000;
    let socket = loader.socket("orders");
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let socket = socket.clone();
        writers.push(tokio::spawn(async move {
            let lines: Vec<String> = (w * N / 4..(w + 1) * N / 4).map(row).collect();
            // Several connections per writer, so batches mix rows of many connections.
            for part in lines.chunks(1000) {
                write_lines(&socket, part).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        sr.wait_for_rows(N, Duration::from_secs(120)).await,
        "only {} rows; log:\n{}",
        sr.committed_rows(),
        loader.log_text()
    );
    loader.signal(Signal::SIGTERM);
    let status = loader.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status:?}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), N);
    let st = sr.state();
    let count = |s: &str| st.loads.iter().filter(|l| l.status == s).count();
    // Every fault happened, so every recovery path ran.
    for s in ["dropped", "Fail", "503", "Publish Timeout", "Success"] {
        assert!(count(s) > 0, "no {s:?} load in {} loads", st.loads.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_rejected_and_counted_while_good_ones_load() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: bad\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                "    maxRecordBytes: 1MiB\n    flush:\n      interval: 100ms\n"
            )
        )
    })
    .await;
    let mut conn = connect(&loader.socket("orders")).await;
    let huge = format!(r#"{{"id":999,"blob":"{}"}}"#, "x".repeat(3 << 20));
    let input = [
        row(0),
        "not json at all".into(),
        row(1),
        "[1,2,3]".into(),
        "42".into(),
        r#"{"id":2,"truncated":"#.into(),
        huge,
        row(2),
        r#""just a string""#.into(),
        "".into(),
    ];
    for line in &input {
        conn.write_all(line.as_bytes()).await.unwrap();
        conn.write_all(b"\r\n").await.unwrap();
    }
    // The same connection stays usable after the rejections.
    conn.write_all(row(3).as_bytes()).await.unwrap();
    conn.shutdown().await.unwrap();
    assert!(
        sr.wait_for_rows(4, Duration::from_secs(10)).await,
        "{}",
        loader.log_text()
    );
    loader.signal(Signal::SIGTERM);
    let status = loader.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        loader.log_text()
    );
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 4);
    // No failed load: rejected lines never reached StarRocks.
    assert!(sr.state().loads.iter().all(|l| l.status == "Success"));
    let acc = loader.accounting();
    assert_eq!(acc["rejected"].as_u64(), Some(7), "{acc}");
    let reasons: Vec<String> = loader
        .log_json()
        .iter()
        .filter_map(|l| l["reason"].as_str().map(str::to_owned))
        .collect();
    for r in ["not_json", "not_object", "too_long", "empty"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no rejection logged as {r}: {reasons:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_trigger_keeps_bodies_under_max_bytes_and_off_the_fe() {
    let sr = DevEndpoint::start(EndpointConfig {
        password: "s3cret".into(),
        ..EndpointConfig::default()
    })
    .await
    .unwrap();
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        std::fs::write(dir.join("password"), "s3cret\n").unwrap();
        format!(
            "labelPrefix: size\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                &format!("      passwordFile: {}\n    flush:\n      interval: 1h\n      maxBytes: 64KiB\n", dir.join("password").display())
            )
        )
    })
    .await;
    const N: u64 = 5000;
    let lines: Vec<String> = (0..N).map(row).collect();
    write_lines(&loader.socket("orders"), &lines).await;
    // With a 1h interval, only the size trigger can load these before shutdown.
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let expected_loads = bytes / (64 << 10);
    // Every full batch is sealed by size once the loader has read the lines; only then
    // does SIGTERM flush the rest (writing to the socket finishes before the reading).
    let size_flushes = |loader: &Loader| {
        loader
            .log_json()
            .iter()
            .filter(|l| l["trigger"] == "size")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while size_flushes(&loader) < expected_loads {
        assert!(
            std::time::Instant::now() < deadline,
            "{} size flushes within 10s, expected {expected_loads}",
            size_flushes(&loader)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loader.signal(Signal::SIGTERM);
    assert!(
        loader.wait_exit(Duration::from_secs(20)).await.success(),
        "{}",
        loader.log_text()
    );
    assert_exactly_once(&ids(&sr.rows("shop.orders")), N);
    let st = sr.state();
    assert!(
        st.loads.len() > expected_loads,
        "{} loads for {bytes} bytes",
        st.loads.len()
    );
    assert!(
        st.largest_body <= 64 << 10,
        "a body of {} bytes",
        st.largest_body
    );
    assert!(
        st.largest_body > 60 << 10,
        "batches should fill up: largest {}",
        st.largest_body
    );
    let log = loader.log_text();
    assert!(
        !log.contains("s3cret") && !log.to_ascii_lowercase().contains("authorization: basic"),
        "the password or the Authorization header was logged"
    );
    assert_eq!(st.fe_body_bytes, 0, "body bytes reached the FE");
    assert_eq!(st.auth_failures, 0);
    assert_eq!(st.missing_expect, 0);
    assert!(size_flushes(&loader) >= expected_loads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_what_happened_to_every_line() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: metrics\nmetricsAddr: 127.0.0.1:0\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                "    flush:\n      interval: 100ms\n"
            )
        )
    })
    .await;
    let port = loader.metrics_port();
    assert_eq!(http_get(port, "/readyz").await.0, 200);
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    let mut lines: Vec<String> = (0..20).map(row).collect();
    lines.extend(["nope".into(), "[1]".into()]);
    write_lines(&loader.socket("orders"), &lines).await;
    assert!(sr.wait_for_rows(20, Duration::from_secs(5)).await);
    // The load is committed; its bookkeeping follows a moment later: the load's counters
    // when its verdict is known, the sink's buffered bytes when the sink task next looks.
    let mut text = String::new();
    for _ in 0..100 {
        text = http_get(port, "/metrics").await.1;
        if metric(&text, r#"starsink_records_loaded_total{sink="orders"}"#) == 20.0
            && metric(&text, r#"starsink_buffered_bytes{sink="orders"}"#) == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = |k: &str| metric(&text, k);
    assert_eq!(m(r#"starsink_records_received_total{sink="orders"}"#), 22.0);
    assert_eq!(m(r#"starsink_records_loaded_total{sink="orders"}"#), 20.0);
    assert_eq!(
        m(r#"starsink_records_rejected_total{sink="orders",reason="not_json"}"#),
        1.0
    );
    assert_eq!(
        m(r#"starsink_records_rejected_total{sink="orders",reason="not_object"}"#),
        1.0
    );
    let body_bytes: usize = sr.state().loads.iter().map(|l| l.body_bytes).sum();
    assert_eq!(
        m(r#"starsink_bytes_loaded_total{sink="orders"}"#),
        body_bytes as f64
    );
    let loads = sr.state().loads.len() as f64;
    assert_eq!(
        m(r#"starsink_loads_total{sink="orders",outcome="committed"}"#),
        loads
    );
    assert_eq!(
        m(r#"starsink_flushes_total{sink="orders",trigger="interval"}"#),
        loads
    );
    assert_eq!(
        m(r#"starsink_load_duration_seconds_count{sink="orders"}"#),
        loads
    );
    assert_eq!(m(r#"starsink_buffered_bytes{sink="orders"}"#), 0.0);
    loader.signal(Signal::SIGTERM);
    assert!(loader.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_files_as_the_injector_passes_them_run_one_loader_for_several_sinks() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start_with_args(|dir| {
        let mut args = Vec::new();
        for name in ["orders", "billing-events"] {
            // The shape the controller renders into each sink's ConfigMap (sink.yaml).
            let file = dir.join(format!("{name}.yaml"));
            std::fs::write(
                &file,
                format!(
                    "name: {name}\nsocket: {}\nsocketMode: '0666'\nstarrocks:\n  feEndpoints: [\"{fe}\"]\n  database: shop\n  table: {}\nflush:\n  interval: 100ms\n",
                    dir.join(format!("{name}.sock")).display(),
                    name.replace('-', "_")
                ),
            )
            .unwrap();
            args.extend(["--sink-file".into(), file.display().to_string()]);
        }
        args.extend([
            "--shutdown-timeout".into(),
            "4s".into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
        ]);
        args
    })
    .await;
    let port = loader.metrics_port();
    assert_eq!(http_get(port, "/readyz").await.0, 200);
    let mode = std::fs::metadata(loader.socket("orders"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o666,
        "app and loader run as different users"
    );
    write_lines(
        &loader.socket("orders"),
        &(0..30).map(row).collect::<Vec<_>>(),
    )
    .await;
    write_lines(
        &loader.socket("billing-events"),
        &(100..120).map(row).collect::<Vec<_>>(),
    )
    .await;
    assert!(sr.wait_for_rows(50, Duration::from_secs(10)).await);
    loader.signal(Signal::SIGTERM);
    assert!(loader.wait_exit(Duration::from_secs(10)).await.success());
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 30);
    assert_eq!(
        ids(&sr.rows("shop.billing_events")),
        (100..120).collect::<Vec<_>>()
    );
}

#[test]
fn starsink_loader_without_a_config_shows_both_ways_to_give_one() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_starsink"))
        .arg("loader")
        .output()
        .expect("run starsink loader");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--config <CONFIG>") && err.contains("--sink-file <SINK_FILES>"),
        "{err}"
    );
}
