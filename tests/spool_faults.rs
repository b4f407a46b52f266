//! The spool and the dead-letter directory under disk faults, through the real binary:
//! a full disk (a small tmpfs in the loader's own mount namespace, filled by "another
//! process") and a dead-letter directory that cannot be written.

mod support;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

/// A JSON row padded to about 100 bytes.
fn row(id: u64) -> String {
    format!(r#"{{"id":{id},"pad":"{}"}}"#, "x".repeat(80))
}

/// A one-sink config with a metrics port and the sink settings in `extra`.
fn config(dir: &Path, fe: &str, extra: &str) -> String {
    format!(
        "labelPrefix: faults\nshutdownTimeout: 3s\nmetricsAddr: 127.0.0.1:0\nsinks:\n{}",
        sink_yaml("orders", &dir.join("orders.sock"), fe, extra)
    )
}

/// Retries quick enough that a test does not wait long once StarRocks is back.
const FAST_RETRY: &str = "    retry:\n      minBackoff: 20ms\n      maxBackoff: 100ms\n";

/// A loader whose spool (`spoolSync: always`, batches of 64 KiB or 100ms) is on a 4 MiB tmpfs
/// at `{dir}/disk`, with `extra` added to the sink.
async fn start_on_small_disk(fe: &str, extra: &str) -> Loader {
    Loader::start_on_tmpfs("4m", "disk", |dir| {
        config(
            dir,
            fe,
            &format!(
                "    spoolDir: {}\n    spoolSync: always\n    flush:\n      maxBytes: 64KiB\n      interval: 100ms\n{extra}",
                dir.join("disk/spool").display()
            ),
        )
    })
    .await
}

/// Writes zeros to `path` until the disk under it is full.
fn fill_disk(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create the filler");
    let block = vec![0u8; 64 << 10];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
}

/// The loader's metric `name{sink="orders"}` now (or `name` as given, with its labels).
async fn sink_metric(port: u16, name: &str) -> f64 {
    if name.contains('{') {
        metric_at(port, name).await
    } else {
        metric_at(port, &format!("{name}{{sink=\"orders\"}}")).await
    }
}

/// Waits until the metric reaches `at_least`.
async fn await_metric(port: u16, name: &str, at_least: f64, within: Duration) {
    let what = format!("{name} to reach {at_least}");
    wait_until(&what, within, || async {
        sink_metric(port, name).await >= at_least
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_producers_back_and_once_it_frees_every_row_loads_once() {
    // StarRocks is down too, so that no load frees space while the disk is full.
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    let mut loader = start_on_small_disk(&fe, FAST_RETRY).await;
    let port = loader.metrics_port();
    let filler = loader.inside(&loader.dir.path().join("disk/filler"));
    fill_disk(&filler);

    const N: u64 = 60_000;
    let socket = loader.socket("orders");
    let producer = tokio::spawn(async move {
        let rows: Vec<String> = (0..N).map(row).collect();
        write_lines(&socket, &rows).await;
    });
    await_metric(
        port,
        "starsink_spool_errors_total",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    // The spool gives back its reserve (1 MiB) and fills it too; from then on, while the
    // disk stays full, the repair keeps failing and no producer is read.
    let reserve = loader.inside(&loader.dir.path().join("disk/spool/RESERVE"));
    let within = Duration::from_secs(10);
    wait_until("the reserve to be given back", within, || async {
        !reserve.exists()
    })
    .await;
    let errors = "starsink_spool_errors_total";
    let failed = sink_metric(port, errors).await;
    await_metric(port, errors, failed + 1.0, within).await;
    // The sink takes nothing more (connections may still fill its 16-chunk channel).
    let spooled = sink_metric(port, "starsink_records_spooled_total").await;
    await_metric(port, errors, failed + 3.0, within).await;
    assert_eq!(
        sink_metric(port, "starsink_records_spooled_total").await,
        spooled,
        "the sink must take no records while the spool cannot be written"
    );
    let received = sink_metric(port, "starsink_records_received_total").await;
    assert!((received as u64) < N, "the producer was held back");
    let failing = r#"starsink_producers_held{sink="orders",reason="spool_failing"}"#;
    assert_eq!(metric_at(port, failing).await, 1.0, "the sink says why");

    // The disk frees and StarRocks is back: the sink goes on by itself.
    std::fs::remove_file(&filler).expect("free the disk");
    sr.set_faults(Faults::default());
    producer
        .await
        .expect("the producer finishes once the disk frees");
    assert!(
        sr.wait_for_rows(N, Duration::from_secs(30)).await,
        "{}",
        loader.log_text()
    );
    assert_eq!(
        metric_at(port, failing).await,
        0.0,
        "producers are read again"
    );
    let acc = loader.stop_expecting(0).await;
    assert_eq!(
        (acc["committed"].as_u64(), acc["lost"].as_u64()),
        (Some(N), Some(0)),
        "{acc}"
    );
    assert_exactly_once(&ids(&sr.rows("shop.orders")), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_while_the_disk_is_full_it_counts_what_is_on_disk_as_spooled() {
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    let mut loader = start_on_small_disk(&fe, FAST_RETRY).await;
    let port = loader.metrics_port();
    // 1,000 rows reach the disk while StarRocks is down...
    write_lines(
        &loader.socket("orders"),
        &(0..1000).map(row).collect::<Vec<_>>(),
    )
    .await;
    await_metric(
        port,
        "starsink_flushes_total{sink=\"orders\",trigger=\"interval\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    // ...then the disk fills, and 1,000 more arrive.
    fill_disk(&loader.inside(&loader.dir.path().join("disk/filler")));
    write_lines(
        &loader.socket("orders"),
        &(1000..2000).map(row).collect::<Vec<_>>(),
    )
    .await;
    await_metric(
        port,
        "starsink_spool_errors_total",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    loader.signal(Signal::SIGTERM);
    loader.wait_exit(Duration::from_secs(10)).await;
    let acc = loader.accounting();
    let count = |k: &str| acc[k].as_u64().unwrap_or_else(|| panic!("{k} in {acc}"));
    assert_eq!(count("accepted"), 2000, "{acc}");
    assert_eq!(count("committed"), 0, "{acc}");
    // What is on disk is kept for the next start, and said so; only rows the full disk
    // never took can be lost, and those were never acknowledged.
    assert!(count("spooled") >= 1000, "{acc}");
    assert_eq!(count("spooled") + count("lost"), 2000, "{acc}");
}

/// The accounting's (committed, dead-lettered, lost).
fn settled(acc: &serde_json::Value) -> (Option<u64>, Option<u64>, Option<u64>) {
    let n = |k: &str| acc[k].as_u64();
    (n("committed"), n("dead_lettered"), n("lost"))
}

/// A loader whose StarRocks refused its first batch (100 rows) and whose dead-letter
/// directory cannot be written (a file is in the way, which stops root too).
struct Refusing {
    sr: DevEndpoint,
    loader: Loader,
    port: u16,
    dead_letters: std::path::PathBuf,
    _blocked: tempfile::TempDir,
}

async fn refused_with_dead_letters_blocked(extra: &str) -> Refusing {
    let refusing = refusing_loader(extra).await;
    let rows: Vec<String> = (0..100).map(row).collect();
    write_lines(&refusing.loader.socket("orders"), &rows).await;
    let failures = "starsink_dead_letter_failures_total";
    await_metric(refusing.port, failures, 1.0, Duration::from_secs(10)).await;
    refusing
}

/// A loader (batches of 100 rows) whose StarRocks refuses every load and whose
/// dead-letter directory cannot be written; nothing written to it yet.
async fn refusing_loader(extra: &str) -> Refusing {
    let sr = endpoint(Faults {
        refuse: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let blocked = tempfile::tempdir().unwrap();
    let dead_letters = blocked.path().join("dead-letters");
    std::fs::write(&dead_letters, b"in the way").unwrap();
    let extra = format!(
        "{extra}    deadLetterDir: {}\n    flush:\n      maxRows: 100\n      interval: 100ms\n",
        dead_letters.display()
    );
    let loader = Loader::start(|dir| config(dir, &fe, &extra)).await;
    let port = loader.metrics_port();
    Refusing {
        sr,
        loader,
        port,
        dead_letters,
        _blocked: blocked,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_file_that_cannot_be_written_waits_in_the_spool_while_other_batches_load() {
    let spool = tempfile::tempdir().unwrap();
    let extra = format!("    spoolDir: {}\n", spool.path().display());
    let Refusing {
        sr,
        mut loader,
        port,
        dead_letters,
        _blocked,
    } = refused_with_dead_letters_blocked(&extra).await;

    // StarRocks takes the next batches: they load while the refused one waits.
    sr.set_faults(Faults::default());
    write_lines(
        &loader.socket("orders"),
        &(100..400).map(row).collect::<Vec<_>>(),
    )
    .await;
    assert!(
        sr.wait_for_rows(300, Duration::from_secs(10)).await,
        "{}",
        loader.log_text()
    );
    assert_eq!(
        sink_metric(port, "starsink_dead_letters_pending").await,
        1.0
    );
    await_metric(
        port,
        "starsink_dead_letter_failures_total",
        2.0,
        Duration::from_secs(10),
    )
    .await;

    // The directory can be written again: the retry writes the file.
    std::fs::remove_file(&dead_letters).unwrap();
    let written =
        || async { sink_metric(port, "starsink_records_dead_lettered_total").await >= 100.0 };
    wait_until(
        "the refused batch's dead-letter file",
        Duration::from_secs(10),
        written,
    )
    .await;
    assert_eq!(
        sink_metric(port, "starsink_dead_letters_pending").await,
        0.0
    );
    let written: Vec<String> = std::fs::read_dir(&dead_letters)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written.len(), 2, "the batch and its reason: {written:?}");
    let acc = loader.stop_expecting(3).await;
    assert_eq!(settled(&acc), (Some(300), Some(100), Some(0)), "{acc}");
    let loaded: Vec<u64> = ids(&sr.rows("shop.orders"))
        .iter()
        .map(|id| id.checked_sub(100).expect("a refused row was loaded"))
        .collect();
    assert_exactly_once(&loaded, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_spool_a_refused_batch_waits_in_memory_for_its_dead_letter_file() {
    let Refusing {
        sr,
        mut loader,
        port,
        dead_letters,
        _blocked,
    } = refused_with_dead_letters_blocked("").await;
    assert_eq!(
        sink_metric(port, "starsink_dead_letters_pending").await,
        1.0
    );

    sr.set_faults(Faults::default());
    let socket = loader.socket("orders");
    let producer = tokio::spawn(async move {
        write_lines(&socket, &(100..200).map(row).collect::<Vec<_>>()).await;
    });
    std::fs::remove_file(&dead_letters).unwrap();
    let written =
        || async { sink_metric(port, "starsink_records_dead_lettered_total").await >= 100.0 };
    wait_until(
        "the refused batch's dead-letter file",
        Duration::from_secs(10),
        written,
    )
    .await;
    producer.await.unwrap();
    assert!(
        sr.wait_for_rows(100, Duration::from_secs(10)).await,
        "{}",
        loader.log_text()
    );
    let acc = loader.stop_expecting(3).await;
    assert_eq!(settled(&acc), (Some(100), Some(100), Some(0)), "{acc}");
    assert!(dead_letters.is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_committed_after_a_refused_batch_are_not_acked_before_its_err_lines() {
    use tokio::io::AsyncWriteExt;
    let spool = tempfile::tempdir().unwrap();
    let extra = format!(
        "    spoolDir: {}\n    acks: committed\n",
        spool.path().display()
    );
    let Refusing {
        sr,
        mut loader,
        port,
        dead_letters,
        _blocked,
    } = refusing_loader(&extra).await;
    let (read, mut write) = connect(&loader.socket("orders")).await.into_split();
    let reader = read_acks(read);
    let lines =
        |ids: std::ops::Range<u64>| ids.map(|i| format!("{}\n", row(i))).collect::<String>();
    // Lines 1-100 are refused, and their dead-letter file cannot be written yet...
    write.write_all(lines(0..100).as_bytes()).await.unwrap();
    await_metric(
        port,
        "starsink_dead_letter_failures_total",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    // ...while lines 101-200 commit.
    sr.set_faults(Faults::default());
    write.write_all(lines(100..200).as_bytes()).await.unwrap();
    await_metric(
        port,
        "starsink_records_loaded_total",
        100.0,
        Duration::from_secs(10),
    )
    .await;
    std::fs::remove_file(&dead_letters).unwrap();
    write.shutdown().await.unwrap();
    let acks = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("every line settled")
        .unwrap();
    // `ok N` covers lines 1..N: none may come before the err lines of 1-100.
    let (oks, errs) = parse_acks(&acks);
    assert_eq!(errs.len(), 100, "{acks:?}");
    assert!(errs.iter().all(|(_, reason)| reason == "dead_lettered"));
    assert_eq!(oks.last(), Some(&200), "{acks:?}");
    loader.stop_expecting(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_that_fills_its_own_disk_goes_on_once_starrocks_takes_its_batches() {
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    // StarRocks is down and the spool's cap (1 GiB by default) is far above the disk's
    // 4 MiB: the spool's own batches fill the disk.
    let mut loader = start_on_small_disk(&fe, FAST_RETRY).await;
    let port = loader.metrics_port();
    const N: u64 = 60_000;
    let socket = loader.socket("orders");
    let producer = tokio::spawn(async move {
        write_lines(&socket, &(0..N).map(row).collect::<Vec<_>>()).await;
    });
    await_metric(
        port,
        "starsink_spool_errors_total",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    // StarRocks comes back: the batches on disk load, which frees the space the rest needs.
    sr.set_faults(Faults::default());
    producer.await.expect("the producer finishes");
    assert!(
        sr.wait_for_rows(N, Duration::from_secs(60)).await,
        "{} of {N} rows; log:\n{}",
        sr.committed_rows(),
        loader.log_text()
    );
    let acc = loader.stop_expecting(0).await;
    assert_eq!(settled(&acc), (Some(N), Some(0), Some(0)), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_spooled_bytes_changed_is_counted_as_damage_and_the_sink_goes_on() {
    let sr = down_endpoint().await;
    let fe = sr.fe_url();
    let spool = tempfile::tempdir().unwrap();
    // Batches of exactly 100 rows: only the row limit seals them (a timer could seal a
    // short one on a busy machine).
    let extra = format!(
        "    spoolDir: {}\n    flush:\n      maxRows: 100\n      interval: 1h\n{FAST_RETRY}",
        spool.path().display()
    );
    let mut loader = Loader::start(|dir| config(dir, &fe, &extra)).await;
    let port = loader.metrics_port();
    // StarRocks is down: ten batches wait, the later ones on disk only.
    write_lines(
        &loader.socket("orders"),
        &(0..1000).map(row).collect::<Vec<_>>(),
    )
    .await;
    let flushes = "starsink_flushes_total{sink=\"orders\",trigger=\"rows\"}";
    await_metric(port, flushes, 10.0, Duration::from_secs(10)).await;
    damage_row_in_spool(spool.path(), 850);

    sr.set_faults(Faults::default());
    // The damaged batch is dropped, counted and logged; the others load once, and
    // producers are still read.
    await_metric(
        port,
        r#"starsink_spool_damage_total{sink="orders",kind="unreadable"}"#,
        1.0,
        Duration::from_secs(10),
    )
    .await;
    write_lines(
        &loader.socket("orders"),
        &(1000..1100).map(row).collect::<Vec<_>>(),
    )
    .await;
    wait_until(
        "rows written after the damage to load",
        Duration::from_secs(10),
        || async { ids(&sr.rows("shop.orders")).contains(&1099) },
    )
    .await;
    let loaded = ids(&sr.rows("shop.orders"));
    let acc = loader.stop_expecting(1).await;
    let n = |k: &str| acc[k].as_u64().unwrap_or_default();
    assert_eq!(n("accepted"), 1100, "{acc}");
    assert!(
        n("lost") >= 100 && n("lost") % 100 == 0,
        "whole batches: {acc}"
    );
    assert_eq!(n("committed") + n("lost"), 1100, "{acc}");
    assert!(!loaded.contains(&850), "the damaged batch is not loaded");
    let mut unique = loaded.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), loaded.len(), "no row loaded twice");
    assert_eq!(loaded.len() as u64, n("committed"));
}
