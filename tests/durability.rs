//! Durability through the real binary: the spool's cap, producer acknowledgements,
//! `kill -9` at random moments, and a damaged spool directory.

mod support;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

/// A JSON row padded to about `pad` bytes.
fn padded_row(id: u64, pad: usize) -> String {
    format!(r#"{{"id":{id},"pad":"{}"}}"#, "x".repeat(pad))
}

/// A one-sink loader config with the spool in `spool` and the sink settings in `extra`.
fn spooled_sink(dir: &Path, prefix: &str, fe: &str, spool: &Path, extra: &str) -> String {
    format!(
        "labelPrefix: {prefix}\nshutdownTimeout: 2s\nmetricsAddr: 127.0.0.1:0\nsinks:\n{}",
        sink_yaml(
            "orders",
            &dir.join("orders.sock"),
            fe,
            &format!("    spoolDir: {}\n{extra}", spool.display())
        )
    )
}

/// Bytes of the spool's segment files now (files vanish while being listed: skip them).
fn spool_disk_bytes(spool: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(spool) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_stops_the_reads_until_loads_free_space_and_loses_nothing() {
    let spool = tempfile::tempdir().unwrap();
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    const CAP: u64 = 256 << 10;
    let mut loader = Loader::start(|dir| {
        spooled_sink(
            dir,
            "cap",
            &fe,
            spool.path(),
            &format!("    spoolMaxBytes: {CAP}\n    flush:\n      maxBytes: 64KiB\n      interval: 200ms\n    retry:\n      minBackoff: 20ms\n      maxBackoff: 100ms\n"),
        )
    })
    .await;
    // 4 MiB: far more than the cap, the channel and the socket buffers hold together.
    let rows: Vec<String> = (0..40_000).map(|i| padded_row(i, 80)).collect();
    let socket = loader.socket("orders");
    let writer = tokio::spawn(async move { write_lines(&socket, &rows).await });

    // Sample the spool's size while StarRocks is down and the producer pushes, until the
    // sink says it holds producers back for a full spool.
    let port = loader.metrics_port();
    let full = r#"starsink_producers_held{sink="orders",reason="spool_full"}"#;
    let mut peak = 0;
    wait_until(
        "the sink to hold producers for a full spool",
        Duration::from_secs(30),
        || {
            peak = peak.max(spool_disk_bytes(spool.path()));
            async move { metric_at(port, full).await == 1.0 }
        },
    )
    .await;
    assert!(!writer.is_finished(), "the producer was not held back");
    assert_eq!(sr.committed_rows(), 0);

    // StarRocks comes back: the spool drains, the producer finishes, every row once.
    sr.set_faults(Faults::default());
    while !writer.is_finished() {
        peak = peak.max(spool_disk_bytes(spool.path()));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.unwrap();
    assert!(
        sr.wait_for_rows(40_000, Duration::from_secs(30)).await,
        "{}",
        loader.log_text()
    );
    // One producer read (64 KiB) plus its frame may land on top of a spool just under the cap.
    assert!(peak <= CAP + (66 << 10), "spool grew to {peak} bytes");
    assert_eq!(
        metric_at(port, full).await,
        0.0,
        "no longer held once the spool drained"
    );
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(40_000), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 40_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_a_batch_sealed_during_a_load_is_sent_from_memory_unless_that_load_outlasts_the_hold(
) {
    let read_back = r#"starsink_spool_read_back_bytes_total{sink="orders"}"#;
    let spool = tempfile::tempdir().unwrap();
    let slow = |ms| Faults {
        slow: 1.0,
        slow_by: Duration::from_millis(ms),
        ..Faults::default()
    };
    // Loads answer after 300 ms, well within the hold (1 s): the batches sealed while one
    // loads wait for it in memory, and none is written out only to be read back.
    let sr = endpoint(slow(300)).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        spooled_sink(
            dir,
            "hold",
            &fe,
            spool.path(),
            "    flush:\n      maxBytes: 64KiB\n      interval: 1s\n",
        )
    })
    .await;
    let port = loader.metrics_port();
    // Rows `ids` written at once, all loaded.
    let load = |ids: std::ops::Range<u64>| {
        let rows: Vec<String> = ids.clone().map(|i| padded_row(i, 80)).collect();
        let (socket, sr) = (loader.socket("orders"), &sr);
        async move {
            write_lines(&socket, &rows).await;
            sr.wait_for_rows(ids.end, Duration::from_secs(60)).await
        }
    };
    // About eight batches.
    assert!(load(0..5_000).await, "{}", loader.log_text());
    assert_eq!(metric_at(port, read_back).await, 0.0);

    // Loads answer after 1.5 s: a batch sealed meanwhile waits on disk after the hold,
    // producers are read again, and it is read back when its turn comes.
    sr.set_faults(slow(1_500));
    assert!(load(5_000..8_000).await, "{}", loader.log_text());
    assert!(
        metric_at(port, read_back).await > 0.0,
        "{}",
        loader.log_text()
    );
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(8_000), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 8_000);
}

/// Writes `lines` on one connection, closes the write side and collects every ack line
/// the loader writes back until it closes the connection. Reads as it writes.
async fn write_and_read_acks(path: &Path, lines: &[String]) -> Vec<String> {
    use tokio::io::AsyncWriteExt;
    let (read, mut write) = connect(path).await.into_split();
    let reader = read_acks(read);
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(l.as_bytes());
        buf.push(b'\n');
    }
    write.write_all(&buf).await.expect("write");
    write.shutdown().await.expect("shutdown");
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the loader did not finish acking within 60s")
        .expect("ack reader")
}

/// 1000 lines; lines 7, 500 and 501 (1-based) are not JSON objects, line 900 is empty.
fn lines_with_bad_ones() -> (Vec<String>, Vec<u64>) {
    let mut lines = Vec::new();
    let mut good = Vec::new();
    let mut id = 0;
    for line in 1..=1000u64 {
        match line {
            7 | 500 | 501 => lines.push("not json".to_string()),
            900 => lines.push(String::new()),
            _ => {
                lines.push(padded_row(id, 10));
                good.push(id);
                id += 1;
            }
        }
    }
    (lines, good)
}

fn expected_errs() -> Vec<(u64, String)> {
    vec![
        (7, "not_json".into()),
        (500, "not_json".into()),
        (501, "not_json".into()),
        (900, "empty".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_spooled_count_every_line_and_name_the_refused_ones() {
    let spool = tempfile::tempdir().unwrap();
    // StarRocks is down: `spooled` acks must not wait for it.
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        spooled_sink(
            dir,
            "acks",
            &fe,
            spool.path(),
            "    acks: spooled\n    flush:\n      maxRows: 100\n    retry:\n      minBackoff: 20ms\n      maxBackoff: 100ms\n",
        )
    })
    .await;
    let (lines, good) = lines_with_bad_ones();
    let acks = write_and_read_acks(&loader.socket("orders"), &lines).await;
    let (oks, errs) = parse_acks(&acks);
    assert_eq!(errs, expected_errs());
    assert_eq!(oks.last(), Some(&1000), "{acks:?}");
    assert_eq!(sr.committed_rows(), 0);

    // What was acked is on disk: StarRocks comes back after a restart and gets it all.
    let acc = loader.stop_expecting(4).await;
    assert_eq!(acc["spooled"].as_u64(), Some(good.len() as u64), "{acc}");
    sr.set_faults(Faults::default());
    let mut again = Loader::start(|dir| spooled_sink(dir, "again", &fe, spool.path(), "")).await;
    assert!(
        sr.wait_for_rows(good.len() as u64, Duration::from_secs(20))
            .await
    );
    again.stop_expecting(0).await;
    assert_exactly_once(&ids(&sr.rows("shop.orders")), good.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_committed_follow_the_commits_and_report_refused_batches_line_by_line() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: committed\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                "    acks: committed\n    flush:\n      maxRows: 100\n      interval: 50ms\n"
            )
        )
    })
    .await;
    let (lines, good) = lines_with_bad_ones();
    let socket = loader.socket("orders");
    let acks = write_and_read_acks(&socket, &lines).await;
    let (oks, errs) = parse_acks(&acks);
    assert_eq!(errs, expected_errs());
    assert_eq!(oks.last(), Some(&1000), "{acks:?}");
    // Committed means committed: by the last ok, StarRocks has every good row.
    assert_exactly_once(&ids(&sr.rows("shop.orders")), good.len() as u64);

    // A connection whose batches StarRocks refuses hears about each of its lines.
    sr.set_faults(Faults {
        refuse: 1.0,
        ..Faults::default()
    });
    let refused: Vec<String> = (0..250).map(|i| padded_row(10_000 + i, 10)).collect();
    let acks = write_and_read_acks(&socket, &refused).await;
    let (oks, errs) = parse_acks(&acks);
    let expected: Vec<(u64, String)> = (1..=250).map(|l| (l, "dead_lettered".into())).collect();
    assert_eq!(errs, expected);
    assert_eq!(oks.last(), Some(&250));
    loader.stop_expecting(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_never_reads_its_acks_is_never_held_back_by_them() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: deaf\nmetricsAddr: 127.0.0.1:0\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                "    acks: committed\n    flush:\n      maxRows: 1000\n      interval: 50ms\n"
            )
        )
    })
    .await;
    let port = loader.metrics_port();
    // Every other line is refused: 100k `err` lines (about 1.5 MB) no one reads, far more
    // than the socket buffer and the err queue hold.
    let lines: Vec<String> = (0..200_000u64)
        .map(|i| {
            if i % 2 == 0 {
                padded_row(i / 2, 10)
            } else {
                "x".into()
            }
        })
        .collect();
    let socket = loader.socket("orders");
    let mut conn = connect(&socket).await;
    let mut buf = Vec::new();
    for l in &lines {
        buf.extend_from_slice(l.as_bytes());
        buf.push(b'\n');
    }
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(Duration::from_secs(60), conn.write_all(&buf))
        .await
        .expect("the producer was held back by acks it did not read")
        .expect("write");
    conn.shutdown().await.expect("shutdown");
    assert!(
        sr.wait_for_rows(100_000, Duration::from_secs(30)).await,
        "{}",
        loader.log_text()
    );
    // The err lines that did not fit were dropped, and counted.
    let (_, text) = http_get(port, "/metrics").await;
    assert!(metric(&text, "starsink_ack_errors_dropped_total{sink=\"orders\"}") > 0.0);
    drop(conn);
    loader.stop_expecting(0).await;
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 100_000);
}

/// One producer of a kill round: writes ids `base..base + quota` in small writes until
/// the loader dies or the quota is written, reading `ok N` as they come. Returns how many
/// of its lines (from the first) were acked.
async fn kill_round_producer(
    socket: std::path::PathBuf,
    base: u64,
    quota: u64,
    written: tokio::sync::watch::Sender<u64>,
) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let Ok(stream) = tokio::net::UnixStream::connect(&socket).await else {
        return 0;
    };
    let (read, mut write) = stream.into_split();
    let acked = std::sync::Arc::new(AtomicU64::new(0));
    let seen = acked.clone();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line.strip_prefix("ok ").and_then(|n| n.parse().ok()) {
                seen.store(n, SeqCst);
            }
        }
    });
    let mut next = 0;
    while next < quota {
        let mut buf = String::new();
        for id in base + next..base + (next + 50).min(quota) {
            buf.push_str(&padded_row(id, 40));
            buf.push('\n');
        }
        if write.write_all(buf.as_bytes()).await.is_err() {
            break;
        }
        written.send_modify(|w| *w += (next + 50).min(quota) - next);
        next = (next + 50).min(quota);
        tokio::task::yield_now().await;
    }
    let _ = write.shutdown().await;
    // The reader ends when the loader closes the connection: all acked, or it died.
    let _ = tokio::time::timeout(Duration::from_secs(30), reader).await;
    acked.load(SeqCst)
}

/// Where a round's `kill -9` lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillAt {
    /// While producers are writing, after a random number of lines.
    Writing,
    /// Just after a batch is sealed: its load is in flight (and some loads are slow).
    LoadInFlight,
    /// After the endpoint committed a load but dropped the answer: the loader does not
    /// know yet that the label is committed.
    CommittedUnanswered,
    /// While the new process replays what the last one left.
    Replaying,
}

/// Whether `check` holds within `within` (looking every 10ms): a moment to aim a kill at,
/// which lands anyway if the moment does not come.
async fn reached<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_no_acked_row_and_loads_none_twice() {
    const ROUNDS: u64 = 24;
    const PRODUCERS: u64 = 3;
    const QUOTA: u64 = 4000;
    let seed = std::env::var("STARSINK_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("kill -9 rounds with STARSINK_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let spool = tempfile::tempdir().unwrap();
    let sr = endpoint(Faults {
        commit_then_drop: 0.3,
        slow: 0.3,
        slow_by: Duration::from_millis(150),
        fail: 0.1,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let config = |dir: &Path, prefix: &str| {
        spooled_sink(
            dir,
            prefix,
            &fe,
            spool.path(),
            "    acks: spooled\n    flush:\n      maxRows: 300\n      interval: 30ms\n    retry:\n      minBackoff: 10ms\n      maxBackoff: 50ms\n",
        )
    };

    let mut acked: Vec<u64> = Vec::new();
    let mut landed = std::collections::HashMap::<&str, u64>::new();
    for round in 0..ROUNDS {
        let at = match round % 4 {
            0 => KillAt::Writing,
            1 => KillAt::LoadInFlight,
            2 => KillAt::CommittedUnanswered,
            _ => KillAt::Replaying,
        };
        let mut loader = Loader::start(|dir| config(dir, &format!("r{round}"))).await;
        let (written, mut lines_written) = tokio::sync::watch::channel(0u64);
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let base = round * 1_000_000 + p * 100_000;
                let socket = loader.socket("orders");
                let producer = kill_round_producer(socket, base, QUOTA, written.clone());
                (base, tokio::spawn(producer))
            })
            .collect();
        // Wait for the moment (bounded: if it does not come, the kill lands anyway).
        let within = Duration::from_secs(5);
        let hit = match at {
            KillAt::Writing => {
                let lines = rng.u64(1..QUOTA * PRODUCERS);
                let reached = lines_written.wait_for(|w| *w >= lines);
                matches!(tokio::time::timeout(within, reached).await, Ok(Ok(_)))
            }
            KillAt::LoadInFlight => {
                let seen = sr.state().fe_requests;
                reached(within, || async { sr.state().fe_requests > seen }).await
            }
            KillAt::CommittedUnanswered => {
                let seen = sr.state().loads.len();
                reached(within, || async {
                    sr.state().loads[seen..]
                        .iter()
                        .any(|l| l.status == "dropped")
                })
                .await
            }
            KillAt::Replaying => {
                let port = loader.metrics_port();
                let replayed = r#"starsink_records_replayed_total{sink="orders"}"#;
                reached(within, || async { metric_at(port, replayed).await > 0.0 }).await
            }
        };
        if hit {
            *landed.entry(format!("{at:?}").leak()).or_default() += 1;
        }
        loader.signal(Signal::SIGKILL);
        let status = loader.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(
            status.code(),
            None,
            "round {round}: the loader was not killed"
        );
        for (base, producer) in producers {
            let n = producer.await.unwrap();
            acked.extend(base..base + n);
        }
    }

    // StarRocks behaves again; a last start loads whatever the spool still holds.
    sr.set_faults(Faults::default());
    let mut last = Loader::start(|dir| {
        config(dir, "last").replace("shutdownTimeout: 2s", "shutdownTimeout: 20s")
    })
    .await;
    let acc = last.stop_expecting(0).await;
    assert_eq!(acc["lost"].as_u64(), Some(0), "{acc}");

    let loaded = ids(&sr.rows("shop.orders"));
    let mut seen = std::collections::HashSet::new();
    let dups: Vec<u64> = loaded
        .iter()
        .filter(|id| !seen.insert(**id))
        .copied()
        .collect();
    assert!(
        dups.is_empty(),
        "seed {seed}: {} rows loaded twice, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
    let missing: Vec<u64> = acked
        .iter()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: {} acked rows never loaded, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        acked.len() > 1000,
        "seed {seed}: only {} rows were acked",
        acked.len()
    );
    println!(
        "seed {seed}: {} rows loaded, {} acked, kills landed: {landed:?}",
        loaded.len(),
        acked.len()
    );
    for at in ["LoadInFlight", "CommittedUnanswered", "Replaying"] {
        assert!(
            landed.get(at).copied().unwrap_or(0) > 0,
            "seed {seed}: no kill landed at {at}: {landed:?}"
        );
    }
}

/// A spool holding 300 rows StarRocks never took (3 connections of 100, so several
/// Records frames and sealed batches), left by a loader stopped with exit code 4.
async fn spool_with_300_unloaded_rows() -> tempfile::TempDir {
    let spool = tempfile::tempdir().unwrap();
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        spooled_sink(
            dir,
            "fill",
            &fe,
            spool.path(),
            "    flush:\n      maxRows: 100\n    retry:\n      minBackoff: 20ms\n      maxBackoff: 100ms\n",
        )
    })
    .await;
    for c in 0..3u64 {
        let rows: Vec<String> = (c * 100..c * 100 + 100)
            .map(|i| padded_row(i, 20))
            .collect();
        write_lines(&loader.socket("orders"), &rows).await;
    }
    let acc = loader.stop_expecting(4).await;
    assert_eq!(acc["spooled"].as_u64(), Some(300), "{acc}");
    spool
}

/// A copy of a spool directory's segment files.
fn copy_spool(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    to
}

fn only_segment(spool: &Path) -> std::path::PathBuf {
    let segs: Vec<_> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.into_iter().next().unwrap()
}

/// Starts a loader on `spool` against a healthy endpoint, waits for `rows` rows and stops
/// it (exit 0); returns the loaded ids and the damage the loader counted, by kind.
async fn recover(spool: &Path, rows: u64) -> (Vec<u64>, Vec<&'static str>) {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| spooled_sink(dir, "recover", &fe, spool, "")).await;
    assert!(
        sr.wait_for_rows(rows, Duration::from_secs(20)).await,
        "{}",
        loader.log_text()
    );
    let damage = damage_counted(loader.metrics_port()).await;
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(rows), "{acc}");
    (ids(&sr.rows("shop.orders")), damage)
}

/// Each kind of spool damage the loader on `port` counted, once per count.
async fn damage_counted(port: u16) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    for kind in ["torn_tail", "corrupt", "bad_header", "empty", "unreadable"] {
        let series = format!(r#"starsink_spool_damage_total{{sink="orders",kind="{kind}"}}"#);
        let n = metric_at(port, &series).await as usize;
        kinds.extend(std::iter::repeat_n(kind, n));
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_spool_is_repaired_at_start_and_what_is_readable_loads_once() {
    let original = spool_with_300_unloaded_rows().await;

    // A torn tail (a write cut short by a crash): nothing whole is lost.
    let torn = copy_spool(original.path());
    let seg = only_segment(torn.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0xF5, 0xFF, 0x53, 0x4B, 0x40, 0, 0, 0, 0x01]);
    std::fs::write(&seg, bytes).unwrap();
    let (ids_loaded, damage) = recover(torn.path(), 300).await;
    assert_exactly_once(&ids_loaded, 300);
    assert_eq!(damage, ["torn_tail"]);
    assert!(!torn.path().join("corrupt").exists());

    // A flipped bit in the segment's header: every frame is still found by its marker
    // and checksum, so all 300 rows load once; the file is kept aside.
    let bad_header = copy_spool(original.path());
    let seg = only_segment(bad_header.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[3] ^= 0x10;
    std::fs::write(&seg, bytes).unwrap();
    let (ids_loaded, damage) = recover(bad_header.path(), 300).await;
    assert_exactly_once(&ids_loaded, 300);
    assert_eq!(damage, ["bad_header"]);
    assert_eq!(
        std::fs::read_dir(bad_header.path().join("corrupt"))
            .unwrap()
            .count(),
        1
    );

    // A zero-length segment (created, never written) is removed; everything loads.
    let empty = copy_spool(original.path());
    std::fs::write(empty.path().join("00000000000000001000.seg"), b"").unwrap();
    let (ids_loaded, damage) = recover(empty.path(), 300).await;
    assert_exactly_once(&ids_loaded, 300);
    assert_eq!(damage, ["empty"]);

    // A flipped byte in the middle: that frame's records are gone, the rest load once,
    // and the damaged file is kept aside for inspection.
    let flipped = copy_spool(original.path());
    let seg = only_segment(flipped.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = memchr_find(&bytes, b"\"id\":150,").expect("row 150 in the segment");
    bytes[at + 3] ^= 0x55;
    std::fs::write(&seg, bytes).unwrap();
    let readable = {
        let sr = endpoint(Faults::default()).await;
        let fe = sr.fe_url();
        let mut loader =
            Loader::start(|dir| spooled_sink(dir, "flipped", &fe, flipped.path(), "")).await;
        let port = loader.metrics_port();
        wait_until(
            "the spool's records to be replayed",
            Duration::from_secs(5),
            || async {
                metric_at(port, r#"starsink_records_replayed_total{sink="orders"}"#).await > 0.0
            },
        )
        .await;
        assert_eq!(damage_counted(port).await, ["corrupt"]);
        let acc = loader.stop_expecting(0).await;
        let loaded = ids(&sr.rows("shop.orders"));
        assert_eq!(
            acc["committed"].as_u64(),
            Some(loaded.len() as u64),
            "{acc}"
        );
        loaded
    };
    let mut unique = readable.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), readable.len(), "a row loaded twice");
    assert!(
        readable.len() >= 200 && readable.len() < 300,
        "{} rows",
        readable.len()
    );
    assert!(!readable.contains(&150));
    assert!(unique.iter().all(|id| *id < 300));
    let aside: Vec<_> = std::fs::read_dir(flipped.path().join("corrupt"))
        .unwrap()
        .collect();
    assert_eq!(aside.len(), 1);

    // A spool from a newer starsink: a clear error, exit 2, no socket, files untouched.
    let newer = tempfile::tempdir().unwrap();
    let mut header = starsink::loader::spool::segment::header();
    header[8..10].copy_from_slice(&3u16.to_le_bytes());
    let seg = newer.path().join("00000000000000000000.seg");
    std::fs::write(&seg, header).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("loader.yaml");
    std::fs::write(
        &config,
        spooled_sink(dir.path(), "newer", &dead_address(), newer.path(), ""),
    )
    .unwrap();
    let (status, log) = run_loader_to_exit(&config, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("00000000000000000000.seg") && log.contains("version 3 is newer"),
        "{log}"
    );
    assert!(log.contains("run the newer starsink"), "{log}");
    assert!(!dir.path().join("orders.sock").exists());
    assert_eq!(std::fs::read(&seg).unwrap(), header);
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acks_the_loader_leaves_its_side_of_the_connection_open() {
    use tokio::io::AsyncWriteExt;
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| {
        format!(
            "labelPrefix: quiet\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                "    flush:\n      interval: 50ms\n"
            )
        )
    })
    .await;
    let mut conn = connect(&loader.socket("orders")).await;
    conn.write_all(format!("{}\n", padded_row(0, 10)).as_bytes())
        .await
        .unwrap();
    // The record is loaded, so its connection task is well under way. An end of file
    // here would tell a bidirectional producer (`socat -`) that the session is over.
    assert!(sr.wait_for_rows(1, Duration::from_secs(10)).await);
    let mut byte = [0u8; 1];
    match conn.try_read(&mut byte) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the loader closed or wrote on a connection without acks: {other:?}"),
    }
    drop(conn);
    loader.stop_expecting(0).await;
}
