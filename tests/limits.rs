//! Limits, through the real binary. The descriptor limit (started under `setrlimit`):
//! the loader raises its soft limit to the hard one, at the hard limit every accept loop
//! backs off instead of spinning, and nothing is lost once descriptors free up. Memory:
//! producers stalled mid-line are held to the sink's `maxUnfinishedBytes`.

mod support;

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;
use tokio::io::AsyncWriteExt;

/// Starts a loader with `RLIMIT_NOFILE` set to (soft, hard); returns it, its socket and
/// its metrics port once the socket accepts.
async fn loader_with_fd_limit(
    sr: &DevEndpoint,
    dir: &std::path::Path,
    soft: u64,
    hard: u64,
    extra: &str,
) -> (tokio::process::Child, std::path::PathBuf, u16) {
    let socket = dir.join("orders.sock");
    let config = dir.join("loader.yaml");
    std::fs::write(
        &config,
        format!(
            "metricsAddr: 127.0.0.1:0\nsinks:\n{}",
            sink_yaml(
                "orders",
                &socket,
                &sr.fe_url(),
                &format!("    flush:\n      interval: 100ms\n{extra}")
            )
        ),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_starsink"));
    cmd.args(["--log-format", "json", "loader", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("loader.log")).unwrap())
        .env("RUST_LOG", "debug")
        .kill_on_drop(true);
    // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn starsink loader");
    wait_for_socket(&socket).await;
    // `metricsAddr` port 0: the loader logs the port it got (just after the sockets).
    let log = dir.join("loader.log");
    wait_until(
        "the metrics address in the log",
        Duration::from_secs(10),
        || async { metrics_port_in(&log).is_some() },
    )
    .await;
    let port = metrics_port_in(&log).unwrap_or_default();
    (child, socket, port)
}

/// The metrics port a JSON log file names, once it does.
fn metrics_port_in(log: &std::path::Path) -> Option<u16> {
    metrics_port_logged(&std::fs::read_to_string(log).ok()?)
}

/// Opens `n` producer connections and writes one row on each, keeping them open.
async fn producers(socket: &std::path::Path, first_id: u64, n: u64) -> Vec<tokio::net::UnixStream> {
    let mut conns = Vec::new();
    for i in first_id..first_id + n {
        let mut c = connect(socket).await;
        c.write_all(format!("{{\"id\":{i}}}\n").as_bytes())
            .await
            .unwrap();
        conns.push(c);
    }
    conns
}

/// Stops the loader with SIGTERM: it exits 0, and `rows` rows loaded, each once.
async fn stop_and_check(child: &mut tokio::process::Child, sr: &DevEndpoint, rows: u64) {
    kill(
        Pid::from_raw(child.id().expect("running") as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the loader exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_exactly_once(&ids(&sr.rows("shop.orders")), rows);
}

/// CPU seconds the process has used (user + system), from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_soft_fd_limit_is_raised_so_every_producer_is_served_at_once() {
    let sr = endpoint(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, socket, _) = loader_with_fd_limit(&sr, dir.path(), 64, 4096, "").await;
    // 300 producers hold their connections open: each must be accepted (not left in the
    // backlog) for its row to load.
    let conns = producers(&socket, 0, 300).await;
    assert!(
        sr.wait_for_rows(300, Duration::from_secs(20)).await,
        "{} of 300 rows loaded with every producer still connected",
        sr.committed_rows()
    );
    drop(conns);
    stop_and_check(&mut child, &sr, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_hard_fd_limit_accept_loops_back_off_and_nothing_is_lost() {
    let sr = endpoint(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, socket, port) = loader_with_fd_limit(&sr, dir.path(), 48, 48, "").await;
    let pid = child.id().unwrap();
    // More producers than descriptors: those past the budget (the limit less what is
    // open at start and a reserve) wait in the backlog, and the reserve keeps StarRocks
    // reachable, so the rows of the accepted connections load while every producer
    // still holds on.
    let held = producers(&socket, 0, 60).await;
    assert!(
        sr.wait_for_rows(10, Duration::from_secs(20)).await,
        "{} rows loaded while the producers hold every descriptor they may; log:\n{}",
        sr.committed_rows(),
        std::fs::read_to_string(dir.path().join("loader.log")).unwrap_or_default()
    );
    // A scrape also waits for a descriptor: its listener is at the limit too.
    let scrape = tokio::spawn(async move { http_get(port, "/metrics").await });
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.5,
        "the loader used {used:.2} CPU-s in 2s at the descriptor limit: an accept loop spins"
    );
    // Producers leave: every row, including those of connections that waited, loads.
    drop(held);
    assert!(
        sr.wait_for_rows(60, Duration::from_secs(20)).await,
        "{} of 60 rows loaded",
        sr.committed_rows()
    );
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), scrape)
        .await
        .expect("the waiting scrape is answered once descriptors free up")
        .unwrap();
    assert_eq!(status, 200);
    stop_and_check(&mut child, &sr, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_producer_waits_until_another_leaves() {
    let sr = endpoint(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, socket, _) =
        loader_with_fd_limit(&sr, dir.path(), 4096, 4096, "    maxConnections: 10\n").await;
    let mut held = producers(&socket, 0, 11).await;
    assert!(sr.wait_for_rows(10, Duration::from_secs(20)).await);
    // A negative cannot be awaited: give the 11th a fair chance to be (wrongly) served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sr.committed_rows(),
        10,
        "the 11th connection was served: {}",
        std::fs::read_to_string(dir.path().join("loader.log")).unwrap()
    );
    held.remove(0);
    assert!(
        sr.wait_for_rows(11, Duration::from_secs(20)).await,
        "the waiting producer is served once one leaves"
    );
    drop(held);
    stop_and_check(&mut child, &sr, 11).await;
}

/// The sink's unfinished-line bytes now.
async fn unfinished_bytes(port: u16) -> f64 {
    metric_at(port, "starsink_unfinished_line_bytes{sink=\"orders\"}").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_stalled_mid_line_are_held_to_the_sinks_bound_by_dropping_the_longest() {
    let sr = endpoint(Faults::default()).await;
    let fe = sr.fe_url();
    const PART: usize = 200 << 10;
    let mut loader = Loader::start(|dir| {
        format!(
            "metricsAddr: 127.0.0.1:0\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                "    maxRecordBytes: 256KiB\n    maxUnfinishedBytes: 1MiB\n    flush:\n      interval: 100ms\n"
            )
        )
    })
    .await;
    let port = loader.metrics_port();
    // Ten producers each send 200 KiB of a line and stall: 2 MB against a 1 MiB bound.
    let mut producers = Vec::new();
    for id in 0..10u64 {
        let mut s = connect(&loader.socket("orders")).await;
        let head = format!(r#"{{"id":{id},"pad":""#);
        let part = format!("{head}{}", "x".repeat(PART - head.len()));
        s.write_all(part.as_bytes()).await.unwrap();
        producers.push(s);
        // Each one past the fifth makes the loader drop one 200 KiB line: the bound
        // holds five, and the total never stays above it.
        let held = (id.min(4) + 1) as f64 * PART as f64;
        let what = format!("{held} bytes held after producer {id}");
        wait_until(&what, Duration::from_secs(10), || async {
            unfinished_bytes(port).await == held
        })
        .await;
    }
    // Every producer finishes its line: the five dropped ones are rejected as too long,
    // the five kept ones load whole.
    for mut s in producers {
        s.write_all(b"\"}\n").await.unwrap();
        s.shutdown().await.unwrap();
    }
    assert!(
        sr.wait_for_rows(5, Duration::from_secs(10)).await,
        "{}",
        loader.log_text()
    );
    let too_long = r#"starsink_records_rejected_total{sink="orders",reason="too_long"}"#;
    assert_eq!(
        metric_at(port, too_long).await,
        5.0,
        "the dropped lines, as too_long"
    );
    let acc = loader.stop_expecting(0).await;
    assert_eq!(
        (acc["committed"].as_u64(), acc["rejected"].as_u64()),
        (Some(5), Some(5)),
        "{acc}"
    );
    let rows = sr.rows("shop.orders");
    assert!(
        rows.iter().all(|r| r.len() == PART + 2),
        "kept lines load whole"
    );
}
