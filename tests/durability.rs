//! Durability through the real binary: the spool's cap, producer acknowledgements,
//! `kill -9` at random moments, and a damaged spool directory.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

/// A JSON row padded to about `pad` bytes.
fn padded_row(id: u64, pad: usize) -> String {
    format!(r#"{{"id":{id},"pad":"{}"}}"#, "x".repeat(pad))
}

/// A one-sink loader config with the spool in `spool` and the sink settings in `extra`.
fn spooled_sink(dir: &Path, prefix: &str, fe: &str, spool: &Path, extra: &str) -> String {
    format!(
        "labelPrefix: {prefix}\nsinks:\n{}",
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
    let sr = endpoint(Faults {
        unavailable: 1.0,
        ..Faults::default()
    })
    .await;
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

    // Sample the spool's size while StarRocks is down and the producer pushes.
    let mut peak = 0;
    let became_full = {
        let full = loader.wait_log("spool is full", Duration::from_secs(30));
        tokio::pin!(full);
        loop {
            peak = peak.max(spool_disk_bytes(spool.path()));
            tokio::select! {
                found = &mut full => break found,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    };
    assert!(became_full, "{}", loader.log_text());
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
    assert!(loader.log_text().contains("spool has room again"));
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(40_000), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 40_000);
}
