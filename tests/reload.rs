//! Live reload, end to end: a real loader whose config files change under it (written in
//! place, swapped as a ConfigMap volume does, or changed behind a symlink and signalled
//! with SIGHUP), against the dev endpoint.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);

fn row(id: u64) -> String {
    format!(r#"{{"id":{id},"name":"row-{id}"}}"#)
}

/// A one-sink config: sink `orders` on `{dir}/orders.sock`, into `shop.<table>`.
fn config(dir: &Path, fe: &str, table: &str, interval: &str) -> String {
    format!(
        "labelPrefix: reload\nmetricsAddr: 127.0.0.1:0\nsinks:\n  - name: orders\n    socket: {}\n    starrocks:\n      feEndpoints: [\"{fe}\"]\n      database: shop\n      table: {table}\n    flush:\n      interval: {interval}\n    retry:\n      minBackoff: 20ms\n      maxBackoff: 100ms\n",
        dir.join("orders.sock").display()
    )
}

/// Connects to the sink and writes one row, leaving the connection open and silent;
/// returns once the loader has the row.
async fn one_row_then_silence(loader: &Loader, id: u64) -> tokio::net::UnixStream {
    let mut conn = connect(&loader.socket("orders")).await;
    conn.write_all((row(id) + "\n").as_bytes()).await.unwrap();
    let port = loader.metrics_port();
    let received = r#"starsink_records_received_total{sink="orders"}"#;
    wait_until("the row received", WAIT, || async {
        metric_at(port, received).await >= id as f64
    })
    .await;
    conn
}

/// Waits for the log line of an applied change, by what triggered it.
async fn wait_applied(loader: &mut Loader, trigger: &str) {
    let what = format!("a config change applied on {trigger}");
    loader
        .wait_log_where(
            &what,
            |l| l["trigger"] == trigger && l["hash"].is_string(),
            WAIT,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_interval_reaches_the_batch_of_an_open_silent_connection() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| config(dir, &fe, "orders", "1h")).await;
    let port = loader.metrics_port();
    let info = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("starsink_config_info{sink=\"orders\""))
            .map(str::to_owned)
    };
    let before = info(&http_get(port, "/metrics").await.1);
    let _conn = one_row_then_silence(&loader, 1).await;
    let path = loader.dir.path().join("loader.yaml");
    std::fs::write(&path, config(loader.dir.path(), &fe, "orders", "200ms")).unwrap();
    // Without the reload the row would wait an hour: its deadline moved.
    assert!(sr.wait_for_rows(1, WAIT).await, "{}", loader.log_text());
    wait_applied(&mut loader, "file change").await;
    let applied = r#"starsink_config_reload_total{result="applied"}"#;
    assert_eq!(metric_at(port, applied).await, 1.0);
    let after = info(&http_get(port, "/metrics").await.1);
    assert!(
        before.is_some() && after.is_some() && before != after,
        "{before:?} {after:?}"
    );
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(1), "{acc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_is_refused_with_its_problems_and_the_old_config_keeps_loading() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| config(dir, &fe, "orders", "200ms")).await;
    let port = loader.metrics_port();
    let path = loader.dir.path().join("loader.yaml");
    let bad = config(loader.dir.path(), &fe, "orders", "1h").replace("table:", "tabel:");
    std::fs::write(&path, bad).unwrap();
    let rejected = r#"starsink_config_reload_total{result="rejected"}"#;
    wait_until("the edit rejected", WAIT, || async {
        metric_at(port, rejected).await == 1.0
    })
    .await;
    // The problem is named as at start (the config's errors are its user interface).
    loader
        .wait_log_where(
            "an error naming the misspelt key",
            |l| l["level"] == "ERROR" && l["message"].as_str().is_some_and(|m| m.contains("tabel")),
            WAIT,
        )
        .await;
    // Still 200ms, into shop.orders.
    write_lines(&loader.socket("orders"), &[row(1), row(2)]).await;
    assert!(sr.wait_for_rows(2, WAIT).await, "{}", loader.log_text());
    assert_eq!(sr.rows("shop.orders").len(), 2);
    let applied = r#"starsink_config_reload_total{result="applied"}"#;
    assert_eq!(metric_at(port, applied).await, 0.0);
    loader.stop_expecting(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_a_config_changed_where_no_watch_sees_it() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    // The config is a symlink to a file in another directory: editing that file is no
    // event in the directory the loader watches. SIGHUP is how it learns.
    let real = |dir: &Path| dir.join("real").join("loader.yaml");
    let mut loader = Loader::start_with_args(|dir| {
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::fs::create_dir_all(dir.join("conf")).unwrap();
        std::fs::write(real(dir), config(dir, &fe, "orders", "1h")).unwrap();
        let link = dir.join("conf").join("loader.yaml");
        std::os::unix::fs::symlink(real(dir), &link).unwrap();
        vec!["--config".into(), link.display().to_string()]
    })
    .await;
    let _conn = one_row_then_silence(&loader, 1).await;
    let dir = loader.dir.path().to_owned();
    std::fs::write(real(&dir), config(&dir, &fe, "orders", "200ms")).unwrap();
    loader.signal(Signal::SIGHUP);
    wait_applied(&mut loader, "SIGHUP").await;
    assert!(sr.wait_for_rows(1, WAIT).await, "{}", loader.log_text());
    loader.stop_expecting(0).await;
}

/// Lays out `dir` as the kubelet lays out a ConfigMap volume: the data in a timestamped
/// directory, `..data` a symlink to it, and each key a symlink through `..data`.
fn configmap_volume(dir: &Path, version: u32, yaml: &str) -> PathBuf {
    let data = dir.join(format!("..2026_12_05_00_00_0{version}.000"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("loader.yaml"), yaml).unwrap();
    // The kubelet's atomic writer: a new symlink, renamed over `..data`.
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let key = dir.join("loader.yaml");
    if !key.exists() {
        std::os::unix::fs::symlink("..data/loader.yaml", &key).unwrap();
    }
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_volume_swapping_its_data_symlink_is_seen() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let volume = |dir: &Path| dir.join("cm");
    let mut loader = Loader::start_with_args(|dir| {
        std::fs::create_dir_all(volume(dir)).unwrap();
        let key = configmap_volume(&volume(dir), 1, &config(dir, &fe, "orders", "1h"));
        vec!["--config".into(), key.display().to_string()]
    })
    .await;
    let _conn = one_row_then_silence(&loader, 1).await;
    let dir = loader.dir.path().to_owned();
    configmap_volume(&volume(&dir), 2, &config(&dir, &fe, "orders", "200ms"));
    wait_applied(&mut loader, "file change").await;
    assert!(sr.wait_for_rows(1, WAIT).await, "{}", loader.log_text());
    loader.stop_expecting(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_table_takes_new_batches_while_a_sealed_one_goes_where_its_rows_were_accepted_for() {
    let sr = endpoint(Faults {
        unavailable: 1.0,
        ..Faults::default()
    })
    .await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| config(dir, &fe, "orders", "100ms")).await;
    write_lines(&loader.socket("orders"), &[row(1)]).await;
    // Its batch is sealed and being retried: StarRocks is unavailable.
    sr.loads_after(0).await;
    let path = loader.dir.path().join("loader.yaml");
    std::fs::write(&path, config(loader.dir.path(), &fe, "orders_v2", "100ms")).unwrap();
    wait_applied(&mut loader, "file change").await;
    write_lines(&loader.socket("orders"), &[row(2)]).await;
    let port = loader.metrics_port();
    wait_until("the second batch sealed", WAIT, || async {
        metric_at(
            port,
            r#"starsink_flushes_total{sink="orders",trigger="interval"}"#,
        )
        .await
            >= 2.0
    })
    .await;
    sr.set_faults(Faults::default());
    assert!(sr.wait_for_rows(2, WAIT).await, "{}", loader.log_text());
    assert_eq!(ids(&sr.rows("shop.orders")), vec![1]);
    assert_eq!(ids(&sr.rows("shop.orders_v2")), vec![2]);
    loader.stop_expecting(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_the_filling_batch_when_the_table_changes_go_to_the_table_they_were_accepted_for(
) {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| config(dir, &fe, "orders", "1h")).await;
    // Row 1 waits in the filling batch (an hour's interval) on an open connection.
    let mut conn = one_row_then_silence(&loader, 1).await;
    let dir = loader.dir.path().to_owned();
    let moved = config(&dir, &fe, "orders_v2", "100ms");
    std::fs::write(dir.join("loader.yaml"), moved).unwrap();
    wait_applied(&mut loader, "file change").await;
    conn.write_all((row(2) + "\n").as_bytes()).await.unwrap();
    assert!(sr.wait_for_rows(2, WAIT).await, "{}", loader.log_text());
    assert_eq!(ids(&sr.rows("shop.orders")), vec![1]);
    assert_eq!(ids(&sr.rows("shop.orders_v2")), vec![2]);
    let port = loader.metrics_port();
    let reload = r#"starsink_flushes_total{sink="orders",trigger="reload"}"#;
    assert_eq!(metric_at(port, reload).await, 1.0);
    drop(conn);
    loader.stop_expecting(0).await;
}

/// A config of the named sinks, each on its socket in `dir` into `shop.<name>`; with
/// `spooled`, each with a spool in `dir` and `acks: committed`.
fn sinks_config(dir: &Path, fe: &str, sinks: &[(&str, &str)]) -> String {
    sinks_config_with(dir, fe, sinks, false)
}

fn sinks_config_with(dir: &Path, fe: &str, sinks: &[(&str, &str)], spooled: bool) -> String {
    let mut yaml = "labelPrefix: reload\nmetricsAddr: 127.0.0.1:0\ndrainTimeout: 10s\nshutdownTimeout: 30s\nsinks:\n".to_owned();
    for (name, socket) in sinks {
        let mut extra = "    flush:\n      interval: 100ms\n".to_owned();
        if spooled {
            let spool = dir.join(format!("spool-{name}"));
            extra += &format!("    spoolDir: {}\n    acks: committed\n", spool.display());
        }
        yaml += &sink_yaml(name, &dir.join(socket), fe, &extra);
    }
    yaml
}

fn rows(from: u64, n: u64) -> String {
    (from..from + n).map(|i| row(i) + "\n").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_added_and_a_sink_removed_while_producers_write_lose_and_repeat_nothing() {
    add_and_remove_while_writing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_spools_and_committed_acks() {
    add_and_remove_while_writing(true).await;
}

async fn add_and_remove_while_writing(spooled: bool) {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let before = [("orders", "orders.sock"), ("payments", "payments.sock")];
    let mut loader = Loader::start(|dir| sinks_config_with(dir, &fe, &before, spooled)).await;
    let mut orders = connect(&loader.socket("orders")).await;
    let mut payments = connect(&loader.socket("payments")).await;
    orders.write_all(rows(0, 500).as_bytes()).await.unwrap();
    payments.write_all(rows(0, 500).as_bytes()).await.unwrap();
    let dir = loader.dir.path().to_owned();
    let after = [("orders", "orders.sock"), ("refunds", "refunds.sock")];
    let changed = sinks_config_with(&dir, &fe, &after, spooled);
    std::fs::write(dir.join("loader.yaml"), changed).unwrap();
    loader
        .wait_log_where("payments removed", |l| removed(l, "payments"), WAIT)
        .await;
    loader
        .wait_log_where(
            "refunds added",
            |l| l["sink"] == "refunds" && l["trigger"].is_string() && l["hash"].is_string(),
            WAIT,
        )
        .await;
    // A removed sink's open connection is still read until its drain ends; its socket
    // takes no new one.
    payments.write_all(rows(500, 500).as_bytes()).await.unwrap();
    drop(payments);
    assert!(
        tokio::net::UnixStream::connect(dir.join("payments.sock"))
            .await
            .is_err(),
        "the removed sink's socket is gone"
    );
    orders.write_all(rows(500, 500).as_bytes()).await.unwrap();
    drop(orders);
    write_lines(
        &loader.socket("refunds"),
        &(0..300).map(row).collect::<Vec<_>>(),
    )
    .await;
    assert!(sr.wait_for_rows(2300, WAIT).await, "{}", loader.log_text());
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(2300), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 1000);
    assert_exactly_once(&ids(&sr.rows("shop.payments")), 1000);
    assert_exactly_once(&ids(&sr.rows("shop.refunds")), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_socket_is_bound_before_the_old_one_stops_and_its_open_connections_drain() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let mut loader =
        Loader::start(|dir| sinks_config(dir, &fe, &[("orders", "orders.sock")])).await;
    let mut old = connect(&loader.socket("orders")).await;
    old.write_all(rows(0, 100).as_bytes()).await.unwrap();
    let dir = loader.dir.path().to_owned();
    let moved = sinks_config(&dir, &fe, &[("orders", "orders-v2.sock")]);
    std::fs::write(dir.join("loader.yaml"), moved).unwrap();
    wait_applied(&mut loader, "file change").await;
    write_lines(
        &dir.join("orders-v2.sock"),
        &(100..200).map(row).collect::<Vec<_>>(),
    )
    .await;
    old.write_all(rows(200, 100).as_bytes()).await.unwrap();
    drop(old);
    assert!(
        tokio::net::UnixStream::connect(dir.join("orders.sock"))
            .await
            .is_err(),
        "the old socket takes no new connection"
    );
    assert!(sr.wait_for_rows(300, WAIT).await, "{}", loader.log_text());
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(300), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 300);
}

/// Whether a log line says a reload removed `sink` (a flush's `trigger` is no reload's).
fn removed(l: &serde_json::Value, sink: &str) -> bool {
    l["sink"] == sink && l["trigger"] == "file change" && l["hash"].is_null()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_removed_and_added_back_loads_under_new_labels() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    let both = [("orders", "orders.sock"), ("payments", "payments.sock")];
    let mut loader = Loader::start(|dir| sinks_config(dir, &fe, &both)).await;
    let dir = loader.dir.path().to_owned();
    write_lines(
        &dir.join("payments.sock"),
        &(0..50).map(row).collect::<Vec<_>>(),
    )
    .await;
    assert!(sr.wait_for_rows(50, WAIT).await, "{}", loader.log_text());
    let one = sinks_config(&dir, &fe, &[("orders", "orders.sock")]);
    std::fs::write(dir.join("loader.yaml"), one).unwrap();
    loader
        .wait_log_where("payments removed", |l| removed(l, "payments"), WAIT)
        .await;
    std::fs::write(dir.join("loader.yaml"), sinks_config(&dir, &fe, &both)).unwrap();
    let added = |l: &serde_json::Value| {
        l["sink"] == "payments" && l["trigger"] == "file change" && l["hash"].is_string()
    };
    loader
        .wait_log_where("payments added back", added, WAIT)
        .await;
    write_lines(
        &dir.join("payments.sock"),
        &(50..100).map(row).collect::<Vec<_>>(),
    )
    .await;
    // Its first labels would repeat the first instance's, which StarRocks answers as
    // already loaded: the rows would be counted and never be in the table.
    assert!(sr.wait_for_rows(100, WAIT).await, "{}", loader.log_text());
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(100), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.payments")), 100);
}
