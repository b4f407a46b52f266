//! Loader benchmark: NDJSON (and CSV) through 4 Unix-socket connections into a real
//! `starsink loader` process, against a local Stream Load endpoint that only counts bytes.
//!
//! Prints throughput, the loader's CPU seconds per GiB (from `/proc/<pid>/stat`), its idle
//! and peak RSS (`VmRSS`, `VmHWM`), and how late timer flushes are.
//!
//! ```text
//! cargo bench --bench loader               # 2 GiB per format
//! cargo bench --bench loader -- --gib 0.5  # quicker
//! cargo bench --bench loader -- --slow-receiver 120 --slow-only   # against a BE reading
//!                                          # 120 MiB/s, 16 MiB batches, 1 s interval
//! cargo bench --bench loader -- --throughput-only --format csv --spool never --slow-receiver 0 --no-peer --no-floor
//!                                          # one spool run only, for a profiler
//! ```
//!
//! Under `cargo bench` it also measures syslog-ng on the same rows (`--no-peer` skips it);
//! every run, the smoke run of `cargo test` too, measures the floor the kernel sets
//! (`--no-floor` skips it): a relay that only moves the bytes from the Unix socket to TCP,
//! without and with a synced file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use starsink::dev_endpoint::{DevEndpoint, EndpointConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, Command};

const ROW: usize = 128;
const CONNECTIONS: usize = 4;
const WRITE: usize = 256 << 10;
const MAX_BYTES_MIB: u64 = 64;

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Json,
    Csv,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }

    /// Row `id`, padded to exactly `ROW` bytes with its newline.
    fn row(self, id: u64, out: &mut Vec<u8>) {
        let start = out.len();
        let head = match self {
            Format::Json => format!(
                r#"{{"id":{id},"user":"user-{:05}","event":"page_view","url":"/products/{}","ts":"2026-11-24T15:30:00.123Z","pad":""#,
                id % 100_000,
                id % 9973
            ),
            Format::Csv => format!(
                "{id},user-{:05},page_view,/products/{},2026-11-24 15:30:00.123,",
                id % 100_000,
                id % 9973
            ),
        };
        out.extend_from_slice(head.as_bytes());
        let tail: &[u8] = if self == Format::Json {
            b"\"}\n"
        } else {
            b"\n"
        };
        let pad = ROW - head.len() - tail.len();
        out.resize(out.len() + pad, b'x');
        out.extend_from_slice(tail);
        debug_assert_eq!(out.len() - start, ROW);
    }
}

struct Figures {
    format: Format,
    /// The sink's spool: none, or one with this `spoolSync`.
    spool: Option<&'static str>,
    /// The endpoint's read rate in MiB/s (`None`: as fast as loopback goes).
    receiver: Option<u64>,
    bytes: u64,
    /// From exec to its socket taking a connection.
    ready: Duration,
    /// `maxBytes` of its sink, in MiB (peak RSS is held to 2 x this + 16 MiB).
    max_mib: u64,
    loads: usize,
    m: Measured,
}

/// What one process cost: idle after start-up, then over one workload.
struct Measured {
    idle_rss_kib: u64,
    /// Context switches a second of all its threads while idle (no connection, no record).
    idle_wakeups: f64,
    secs: f64,
    cpu_secs: f64,
    peak_rss_kib: u64,
}

/// Measures `pid` idle once start-up has settled, then while `work` runs (it returns once
/// everything the workload wrote has arrived).
async fn measure(pid: u32, work: impl std::future::Future<Output = ()>) -> Measured {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_wakeups = wakeups_per_sec(pid, IDLE_WINDOW).await;
    let idle_rss_kib = proc_status(pid, "VmRSS:");
    let cpu_before = proc_cpu_secs(pid);
    let started = Instant::now();
    work.await;
    Measured {
        idle_rss_kib,
        idle_wakeups,
        secs: started.elapsed().as_secs_f64(),
        cpu_secs: proc_cpu_secs(pid) - cpu_before,
        peak_rss_kib: proc_status(pid, "VmHWM:"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The floor's relay: this same binary, started again by `relay_floor` (below).
    if let Some(at) = args.iter().position(|a| a == RELAY_FLAG) {
        floor::relay(&args[at + 1..]);
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run(args));
}

async fn run(args: Vec<String>) {
    let gib: f64 = value_of(&args, "--gib").unwrap_or(2.0);
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and then a
    // small run only checks that the harness works.
    let smoke = !args.iter().any(|a| a == "--bench");
    let gib = if smoke { 1.0 / 64.0 } else { gib };
    if smoke {
        println!("smoke run (not under `cargo bench`): the figures below mean nothing");
    }
    let bytes = ((gib * (1u64 << 30) as f64) as u64) / ROW as u64 * ROW as u64;
    println!(
        "starsink loader benchmark: {:.2} GiB of {ROW}-byte rows per format, {CONNECTIONS} connections, maxBytes {MAX_BYTES_MIB}MiB",
        bytes as f64 / (1u64 << 30) as f64
    );
    // `--slow-receiver MIBPS`: also each format against an endpoint that reads bodies at
    // that rate, with the batches of a busier sink (16 MiB, 1 s); `--slow-only`: only those.
    // Under `cargo bench` the slow runs are on by default at 120 MiB/s; `0` turns them off.
    let slow: Option<u64> = value_of(&args, "--slow-receiver")
        .or((!smoke).then_some(120))
        .filter(|&r| r > 0);
    let slow_only = args.iter().any(|a| a == "--slow-only");
    // `--format json|csv`: that format only; `--no-spool`: no spool runs (for profiling).
    // A spool is measured with `spoolSync: interval` (the default) and `never` (what the
    // syncs cost).
    let only: Option<&str> = args
        .iter()
        .position(|a| a == "--format")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let formats: Vec<Format> = [Format::Json, Format::Csv]
        .into_iter()
        .filter(|f| only.is_none_or(|o| o == f.name()))
        .collect();
    let one_spool = args
        .iter()
        .position(|a| a == "--spool")
        .and_then(|i| args.get(i + 1))
        .map(|s| match s.as_str() {
            "interval" => Some("interval"),
            "never" => Some("never"),
            other => panic!("--spool {other}: say interval or never"),
        });
    let spools: &[Option<&str>] = if args.iter().any(|a| a == "--no-spool") {
        &[None]
    } else if let Some(spool) = &one_spool {
        std::slice::from_ref(spool)
    } else {
        &[None, Some("interval"), Some("never")]
    };
    let mut all = Vec::new();
    for &format in &formats {
        if !slow_only {
            for &spool in spools {
                all.push(throughput(format, bytes, spool, None).await);
            }
        }
        if let Some(rate) = slow {
            all.push(throughput(format, bytes, None, Some(rate)).await);
        }
    }
    // The same workload through syslog-ng, in the same run: under `cargo bench` unless
    // `--no-peer`; in a smoke run only with `--peer`.
    let peer =
        args.iter().any(|a| a == "--peer") || (!smoke && !args.iter().any(|a| a == "--no-peer"));
    // What the kernel alone charges for the same bytes, unless `--no-floor` (a smoke run
    // measures it too, so that the relay is known to work).
    let floors = if !args.iter().any(|a| a == "--no-floor") {
        let mut floors = vec![relay_floor(bytes, false).await];
        if !args.iter().any(|a| a == "--no-spool") {
            floors.push(relay_floor(bytes, true).await);
        }
        print_floors(&floors);
        floors
    } else {
        Vec::new()
    };
    if peer {
        let mut peers = Vec::new();
        // It is slow (a few MiB/s), so it gets at most `--peer-gib` (0.25 by default):
        // CPU per GiB is compared, not totals.
        let peer_gib: f64 = value_of(&args, "--peer-gib").unwrap_or(0.25);
        let peer_bytes =
            bytes.min((peer_gib * (1u64 << 30) as f64) as u64 / ROW as u64 * ROW as u64);
        for &format in &formats {
            peers.push(peer_throughput(format, peer_bytes).await);
        }
        print_peer(&all, &peers);
    }
    if args.iter().any(|a| a == "--throughput-only") || slow_only {
        print_throughput(&all);
        print_targets(&all, &floors, None);
        return;
    }
    let lateness = timer_lateness().await;
    let outage = if smoke { 2 } else { 60 };
    let down = dead_endpoint(Duration::from_secs(outage), None).await;
    let spool_cap_mib = if smoke { 128 } else { 512 };
    let spooled = dead_endpoint(Duration::from_secs(outage), Some(spool_cap_mib)).await;

    print_throughput(&all);
    println!();
    println!(
        "StarRocks down for {outage}s while 4 producers write (maxBytes {MAX_BYTES_MIB}MiB): peak RSS {:.1} MiB; producers got {:.0} MiB in before backpressure held them",
        down.peak_rss_kib as f64 / 1024.0,
        down.written as f64 / (1 << 20) as f64
    );
    println!(
        "The same with a spool (spoolMaxBytes {spool_cap_mib}MiB): peak RSS {:.1} MiB; producers got {:.0} MiB in before the full spool held them",
        spooled.peak_rss_kib as f64 / 1024.0,
        spooled.written as f64 / (1 << 20) as f64
    );
    if let Some((rss, secs, rows)) = spooled.replay {
        println!(
            "A new loader replayed that spool ({rows} rows) into a healthy endpoint in {secs:.1}s, peak RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
    }
    println!(
        "timer flush lateness over {} idle batches (interval 200ms): median {} ms, max {} ms",
        lateness.len(),
        lateness[lateness.len() / 2].as_millis(),
        lateness[lateness.len() - 1].as_millis()
    );
    print_targets(&all, &floors, Some(&lateness));
}

/// Issue 17's targets for the loader, each with what this run measured (and, for CPU,
/// the floor the kernel sets for the same bytes, when it was measured).
fn print_targets(all: &[Figures], floors: &[Figures], lateness: Option<&[Duration]>) {
    println!();
    println!("| target | measured | met |");
    println!("|---|---|---|");
    let row = |target: String, measured: String, met: bool| {
        println!(
            "| {target} | {measured} | {} |",
            if met { "yes" } else { "**no**" }
        )
    };
    let per_gib = |f: &Figures| f.m.cpu_secs / (f.bytes as f64 / (1u64 << 30) as f64);
    let find = |format: Format, spool: Option<&str>, slow: bool| {
        all.iter()
            .find(|f| f.format == format && f.spool == spool && f.receiver.is_some() == slow)
    };
    let floor = |spool: bool| {
        floors
            .iter()
            .find(|f| f.spool.is_some() == spool)
            .map(per_gib)
    };
    let floor_note = match (floor(false), floor(true)) {
        (Some(relay), Some(spooled)) => {
            format!(
                " (kernel floor {relay:.2}; a synced file adds {:+.2})",
                spooled - relay
            )
        }
        (Some(relay), None) => format!(" (kernel floor {relay:.2})"),
        _ => String::new(),
    };
    for (format, limit) in [(Format::Json, 0.5), (Format::Csv, 0.25)] {
        for (slow, endpoint) in [(false, "fast endpoint"), (true, "slow BE")] {
            if let Some(f) = find(format, None, slow) {
                let cost = per_gib(f);
                let target = format!("{} CPU-s/GiB <= {limit}, {endpoint}", format.name());
                let note = if slow { "" } else { &floor_note };
                row(target, format!("{cost:.2}{note}"), cost <= limit);
            }
        }
        if let (Some(plain), Some(spooled)) = (
            find(format, None, false),
            find(format, Some("interval"), false),
        ) {
            let extra = per_gib(spooled) - per_gib(plain);
            let target = format!("{} spool's extra CPU-s/GiB <= +0.3", format.name());
            row(target, format!("{extra:+.2}"), extra <= 0.3);
        }
    }
    let worst = |key: &dyn Fn(&Figures) -> f64| all.iter().map(key).fold(0.0, f64::max);
    let wakeups = worst(&|f| f.m.idle_wakeups);
    row(
        "idle wakeups/s = 0".into(),
        format!("{wakeups:.1} (most of any run)"),
        wakeups == 0.0,
    );
    let ready = worst(&|f| f.ready.as_secs_f64() * 1000.0);
    row(
        "socket ready <= 20 ms after exec".into(),
        format!("{ready:.1} ms (slowest start)"),
        ready <= 20.0,
    );
    let idle = worst(&|f| f.m.idle_rss_kib as f64 / 1024.0);
    row(
        "idle RSS <= 8 MiB".into(),
        format!("{idle:.1} MiB (most of any run)"),
        idle <= 8.0,
    );
    // Each run against its own bound: 2 x its maxBytes + 16 MiB.
    let over = worst(&|f| f.m.peak_rss_kib as f64 / 1024.0 / (2.0 * f.max_mib as f64 + 16.0));
    row(
        "peak RSS <= 2 x maxBytes + 16 MiB".into(),
        format!("{:.0}% of the bound (closest run)", over * 100.0),
        over <= 1.0,
    );
    if let Some(late) = lateness.and_then(|l| l.last()) {
        row(
            "timer lateness <= 100 ms".into(),
            format!("{} ms (max)", late.as_millis()),
            late.as_millis() <= 100,
        );
    }
}

/// The value after flag `name`, if it is there and parses.
fn value_of<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

/// The peer's figures beside the loader's (fast endpoint, no spool), with the ratios.
fn print_peer(loader: &[Figures], peers: &[Figures]) {
    println!();
    println!("| format | shipper | MiB/s | CPU-s/GiB | peak RSS | loads | CPU ratio (peer / starsink) | peak RSS ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    let gib = |f: &Figures| f.bytes as f64 / (1u64 << 30) as f64;
    for p in peers {
        let Some(ours) = loader.iter().find(|f| {
            f.format.name() == p.format.name() && f.spool.is_none() && f.receiver.is_none()
        }) else {
            continue;
        };
        for (who, f) in [("starsink", ours), ("syslog-ng 3.38", p)] {
            println!(
                "| {} | {who} | {:.0} | {:.2} | {:.1} MiB | {} | {:.1} | {:.2} |",
                f.format.name(),
                f.bytes as f64 / (1 << 20) as f64 / f.m.secs,
                f.m.cpu_secs / gib(f),
                f.m.peak_rss_kib as f64 / 1024.0,
                f.loads,
                (p.m.cpu_secs / gib(p)) / (ours.m.cpu_secs / gib(ours)),
                p.m.peak_rss_kib as f64 / ours.m.peak_rss_kib as f64,
            );
        }
    }
}

fn print_throughput(all: &[Figures]) {
    println!();
    println!(
        "| format | spool | endpoint reads | MiB/s | loader CPU-s/GiB | idle RSS | idle wakeups/s | socket ready | peak RSS | loads |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in all {
        let gib = f.bytes as f64 / (1u64 << 30) as f64;
        let receiver = f
            .receiver
            .map_or_else(|| "fast".to_owned(), |r| format!("{r} MiB/s"));
        println!(
            "| {} | {} | {receiver} | {:.0} | {:.2} | {:.1} MiB | {:.1} | {:.1} ms | {:.1} MiB | {} |",
            f.format.name(),
            f.spool.unwrap_or("none"),
            f.bytes as f64 / (1 << 20) as f64 / f.m.secs,
            f.m.cpu_secs / gib,
            f.m.idle_rss_kib as f64 / 1024.0,
            f.m.idle_wakeups,
            f.ready.as_secs_f64() * 1000.0,
            f.m.peak_rss_kib as f64 / 1024.0,
            f.loads
        );
    }
}

/// Writes `bytes` of rows through `CONNECTIONS` connections and waits until all are loaded.
/// With `receiver` (MiB/s), the endpoint reads bodies at that rate and batches are those
/// of a busier sink: 16 MiB or 1 s.
async fn throughput(
    format: Format,
    bytes: u64,
    spool: Option<&'static str>,
    receiver: Option<u64>,
) -> Figures {
    let sr = DevEndpoint::start(EndpointConfig {
        keep_rows: false,
        be_read_rate: receiver.map(|mib| mib << 20),
        ..EndpointConfig::default()
    })
    .await
    .expect("start endpoint");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("bench.sock");
    let (interval, max_mib) = match receiver {
        None => ("250ms", MAX_BYTES_MIB),
        Some(_) => ("1s", 16),
    };
    let mut config = format!(
        "labelPrefix: bench\nmetricsAddr: 127.0.0.1:0\nsinks:\n  - name: bench\n    socket: {}\n    format: {}\n    starrocks:\n      feEndpoints: [\"{}\"]\n      database: bench\n      table: events\n    flush:\n      interval: {interval}\n      maxBytes: {max_mib}MiB\n      maxRows: 10000000\n",
        socket.display(),
        format.name(),
        sr.fe_url()
    );
    if let Some(sync) = spool {
        config.push_str(&format!(
            "    spoolDir: {}\n    spoolSync: {sync}\n",
            dir.path().join("spool").display()
        ));
    }
    let (mut loader, ready) = spawn_loader_timed(dir.path(), &config, &socket, "warn").await;
    let metrics = metrics_port(dir.path()).await;
    let pid = loader.id().expect("loader pid");
    let rows = bytes / ROW as u64;
    let m = measure(pid, async {
        write_rows(&socket, format, bytes).await;
        while loaded(metrics).await < rows {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let loads = sr.state().loads.len();
    stop(&mut loader).await;
    Figures {
        format,
        spool,
        receiver,
        bytes,
        ready,
        max_mib,
        loads,
        m,
    }
}

/// Writes `bytes` of `format` rows to `socket` through `CONNECTIONS` connections, in
/// `WRITE`-sized writes of one block of distinct rows written over and over.
async fn write_rows(socket: &Path, format: Format, bytes: u64) {
    let mut block = Vec::with_capacity(16 << 20);
    let mut id = 0;
    while block.len() < 16 << 20 {
        format.row(id, &mut block);
        id += 1;
    }
    let block = std::sync::Arc::new(block);
    let rows = bytes / ROW as u64;
    let mut writers = Vec::new();
    for c in 0..CONNECTIONS as u64 {
        let share =
            bytes / ROW as u64 / CONNECTIONS as u64 + u64::from(c < rows % CONNECTIONS as u64);
        let (block, socket) = (block.clone(), socket.to_owned());
        writers.push(tokio::spawn(async move {
            let mut conn = UnixStream::connect(&socket).await.expect("connect");
            let mut left = (share * ROW as u64) as usize;
            while left > 0 {
                for piece in block.chunks(WRITE) {
                    let n = piece.len().min(left);
                    conn.write_all(&piece[..n]).await.expect("write");
                    left -= n;
                    if left == 0 {
                        break;
                    }
                }
            }
            conn.shutdown().await.expect("shutdown");
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
}

/// syslog-ng's configuration for the peer run: a Unix stream source into a batched HTTP
/// PUT to the BE's Stream Load URL, with flow control (without it syslog-ng drops rows
/// when its queue is full), batches as large as the loader's (`MAX_BYTES_MIB`, 250 ms),
/// one worker. JSON lines go as one array (`strip_outer_array`), CSV rows as lines.
fn peer_config(socket: &Path, be: std::net::SocketAddr, format: Format) -> String {
    let body = match format {
        Format::Json => {
            r#"headers("format: json", "strip_outer_array: true") body-prefix("[") delimiter(",") body-suffix("]")"#
        }
        Format::Csv => r#"delimiter("\n")"#,
    };
    format!(
        r#"@version: 3.35
options {{ keep-hostname(yes); chain-hostnames(no); log-msg-size(65536); }};
source s_app {{ unix-stream("{socket}" max-connections(16) log-iw-size(40000) flags(no-parse)); }};
destination d_starrocks {{
  http(url("http://{be}/api/bench/events/_stream_load") method("PUT") user("root") password("")
       {body} body("${{MESSAGE}}")
       batch-lines(10000000) batch-bytes({MAX_BYTES_MIB}MiB) batch-timeout(250) workers(1)
       persist-name("bench"));
}};
log {{ source(s_app); destination(d_starrocks); flags(flow-control); }};
"#,
        socket = socket.display(),
    )
}

/// The same workload through syslog-ng (Debian's, installed by
/// `scripts/install-bench-tools` when missing), into the same endpoint.
async fn peer_throughput(format: Format, bytes: u64) -> Figures {
    if std::process::Command::new("syslog-ng")
        .arg("--version")
        .output()
        .is_err()
    {
        let installed = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/install-bench-tools"
        ))
        .status()
        .expect("run scripts/install-bench-tools");
        assert!(installed.success(), "scripts/install-bench-tools failed");
    }
    let sr = DevEndpoint::start(EndpointConfig {
        keep_rows: false,
        ..EndpointConfig::default()
    })
    .await
    .expect("start endpoint");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("peer.sock");
    let config = dir.path().join("syslog-ng.conf");
    std::fs::write(&config, peer_config(&socket, sr.be_addr(), format)).expect("write config");
    let state = |name: &str| dir.path().join(name);
    let mut peer = Command::new("syslog-ng")
        .arg("-F")
        .arg("--no-caps")
        .arg("-f")
        .arg(&config)
        .arg("-R")
        .arg(state("persist"))
        .arg("-p")
        .arg(state("pid"))
        .arg("-c")
        .arg(state("ctl"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(state("syslog-ng.log")).expect("create the peer log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn syslog-ng");
    let pid = peer.id().expect("peer pid");
    let spawned = Instant::now();
    while !socket.exists() {
        assert!(
            peer.try_wait().expect("peer status").is_none(),
            "syslog-ng exited: {}",
            std::fs::read_to_string(state("syslog-ng.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = spawned.elapsed();
    // Every row arrived once its bytes did: a batch is its rows without their newlines,
    // joined by one byte each (a JSON batch adds its two brackets), so it is at most one
    // byte shorter than what was written for it.
    let arrived = || {
        let state = sr.state();
        let ok = state.loads.iter().filter(|l| l.status == "Success");
        ok.map(|l| l.body_bytes as u64 + 1).sum::<u64>()
    };
    let m = measure(pid, async {
        write_rows(&socket, format, bytes).await;
        while arrived() < bytes {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let loads = sr.state().loads.len();
    let _ = peer.kill().await;
    Figures {
        format,
        spool: None,
        receiver: None,
        bytes,
        ready,
        max_mib: 0,
        loads,
        m,
    }
}

/// Starts this binary as the floor's relay (see [`floor::relay`]).
const RELAY_FLAG: &str = "--relay-floor";

/// The floor under any loader here: the same rows (CSV; bytes are bytes) through a relay
/// that only reads each Unix-socket connection, 64 KiB at a time, and writes what it read
/// to a TCP connection that the harness reads and discards; with `spool`, it also appends
/// them to 64 MiB segment files, synced every 4 MiB as `spoolSync: interval` does at
/// most, the oldest of three written over as the next (as the spool reuses its files).
/// No framing, no batching, no checksums, no HTTP: its CPU per GiB is what the kernel
/// charges for the bytes alone.
async fn relay_floor(bytes: u64, spool: bool) -> Figures {
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the discard port");
    let port = sink.local_addr().expect("discard port").port();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let discard = tokio::spawn(async move {
        while let Ok((mut conn, _)) = sink.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n @ 1..) = conn.read(&mut buf).await {
                    counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("relay.sock");
    let mut command = Command::new(std::env::current_exe().expect("this benchmark's path"));
    command.arg(RELAY_FLAG).arg(&socket).arg(port.to_string());
    if spool {
        command.arg(dir.path());
    }
    let spawned = Instant::now();
    let mut relay = command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the relay");
    let pid = relay.id().expect("relay pid");
    // The relay exits on any failure (see `floor::relay`): the wait ends with it.
    let mut alive = || relay.try_wait().expect("relay status").is_none();
    while !socket.exists() {
        assert!(alive(), "the relay exited before its socket appeared");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ready = spawned.elapsed();
    let m = measure(pid, async {
        write_rows(&socket, Format::Csv, bytes).await;
        while received.load(std::sync::atomic::Ordering::Relaxed) < bytes {
            assert!(alive(), "the relay exited before every byte went through");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let _ = relay.kill().await;
    discard.abort();
    Figures {
        format: Format::Csv,
        spool: spool.then_some("interval"),
        receiver: None,
        bytes,
        ready,
        max_mib: 0,
        loads: 0,
        m,
    }
}

fn print_floors(floors: &[Figures]) {
    println!();
    println!("| floor: the same bytes through a relay, no loader | MiB/s | CPU-s/GiB |");
    println!("|---|---|---|");
    for f in floors {
        let what = match f.spool {
            None => "Unix socket -> TCP, 64 KiB reads",
            Some(_) => "the same, also appended to reused 64 MiB files, synced every 4 MiB",
        };
        println!(
            "| {what} | {:.0} | {:.2} |",
            f.bytes as f64 / (1 << 20) as f64 / f.m.secs,
            f.m.cpu_secs / (f.bytes as f64 / (1u64 << 30) as f64),
        );
    }
}

/// The floor's relay process.
mod floor {
    use std::collections::VecDeque;
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    /// Syncs once this much was appended since the last sync.
    const SYNC_BYTES: usize = 4 << 20;
    /// Segment files: this size, and this many kept before the oldest is written over.
    const SEGMENT: usize = 64 << 20;
    const KEPT: usize = 2;

    /// Where the relay appends: the segment being written, and the full ones.
    struct Segments {
        dir: PathBuf,
        current: File,
        written: usize,
        unsynced: usize,
        full: VecDeque<File>,
        made: usize,
    }

    impl Segments {
        fn append(&mut self, bytes: &[u8]) {
            if self.written + bytes.len() > SEGMENT {
                self.current.sync_data().expect("sync");
                let next = match self.full.len() {
                    KEPT => {
                        let mut oldest = self.full.pop_front().expect("a full segment");
                        oldest.seek(SeekFrom::Start(0)).expect("rewind");
                        oldest
                    }
                    _ => {
                        self.made += 1;
                        File::create(self.dir.join(format!("{}.seg", self.made))).expect("segment")
                    }
                };
                self.full
                    .push_back(std::mem::replace(&mut self.current, next));
                (self.written, self.unsynced) = (0, 0);
            }
            self.current.write_all(bytes).expect("append");
            self.written += bytes.len();
            self.unsynced += bytes.len();
            if self.unsynced >= SYNC_BYTES {
                self.current.sync_data().expect("sync");
                self.unsynced = 0;
            }
        }
    }

    /// `args`: the Unix socket to listen on, the TCP port to relay each connection to,
    /// and optionally a directory for segment files. Runs until killed; the harness
    /// measures its CPU.
    pub fn relay(args: &[String]) {
        // A failure in any thread ends the process, so that the harness sees it exit.
        std::panic::set_hook(Box::new(|failure| {
            eprintln!("relay: {failure}");
            std::process::exit(1);
        }));
        let port: u16 = args[1].parse().expect("relay port");
        let segments = args.get(2).map(|dir| {
            let dir = PathBuf::from(dir);
            let current = File::create(dir.join("0.seg")).expect("segment");
            Arc::new(Mutex::new(Segments {
                dir,
                current,
                written: 0,
                unsynced: 0,
                full: VecDeque::new(),
                made: 0,
            }))
        });
        let listener = std::os::unix::net::UnixListener::bind(&args[0]).expect("relay socket");
        for conn in listener.incoming() {
            let mut conn = conn.expect("accept");
            let segments = segments.clone();
            std::thread::spawn(move || {
                let mut out = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = conn.read(&mut buf).expect("read");
                    if n == 0 {
                        break;
                    }
                    if let Some(segments) = &segments {
                        segments.lock().expect("segments").append(&buf[..n]);
                    }
                    out.write_all(&buf[..n]).expect("send");
                }
            });
        }
    }
}

/// Peak RSS of a loader whose StarRocks answers 503 to everything for `outage`, while
/// 4 producers keep writing as fast as the loader lets them; and the bytes they got in.
/// With `spool_mib`, the sink has a spool of that cap, and once the loader has exited a
/// new one replays it into a healthy endpoint: its peak RSS and how long it took.
async fn dead_endpoint(outage: Duration, spool_mib: Option<u64>) -> Outage {
    let sr = DevEndpoint::start(EndpointConfig {
        keep_rows: false,
        faults: starsink::dev_endpoint::Faults {
            unavailable: 1.0,
            ..Default::default()
        },
        ..EndpointConfig::default()
    })
    .await
    .expect("start endpoint");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("down.sock");
    let mut config = format!(
        "labelPrefix: down\nshutdownTimeout: 2s\nsinks:\n  - name: down\n    socket: {}\n    starrocks:\n      feEndpoints: [\"{}\"]\n      database: bench\n      table: down\n    flush:\n      interval: 1s\n      maxBytes: {MAX_BYTES_MIB}MiB\n    retry:\n      minBackoff: 100ms\n      maxBackoff: 1s\n",
        socket.display(),
        sr.fe_url()
    );
    if let Some(mib) = spool_mib {
        config.push_str(&format!(
            "    spoolDir: {}\n    spoolMaxBytes: {mib}MiB\n",
            dir.path().join("spool").display()
        ));
    }
    // Every retry would log a warning; only errors matter here.
    let mut loader = spawn_loader_timed(dir.path(), &config, &socket, "error")
        .await
        .0;
    let pid = loader.id().expect("loader pid");
    let mut block = Vec::with_capacity(1 << 20);
    let mut id = 0;
    while block.len() < 1 << 20 {
        Format::Json.row(id, &mut block);
        id += 1;
    }
    let block = std::sync::Arc::new(block);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + outage;
    let mut writers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (block, socket, written) = (block.clone(), socket.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let mut conn = UnixStream::connect(&socket).await.expect("connect");
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                // A blocked write is the backpressure; give up at the deadline.
                match tokio::time::timeout(left, conn.write_all(&block)).await {
                    Ok(Ok(())) => {
                        written.fetch_add(block.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let peak = proc_status(pid, "VmHWM:");
    // Nothing can be loaded: the loader must say so and exit non-zero, not hang.
    if let Some(pid) = loader.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let status = loader.wait().await.expect("wait for the loader");
    // Nothing could be committed: lost without a spool (1), kept in it with one (4).
    let expected = if spool_mib.is_some() { 4 } else { 1 };
    assert_eq!(
        status.code(),
        Some(expected),
        "the exit code says what happened"
    );
    let mut out = Outage {
        peak_rss_kib: peak,
        written: written.load(std::sync::atomic::Ordering::Relaxed),
        replay: None,
    };
    if spool_mib.is_some() {
        sr.set_faults(Default::default());
        let config = format!("metricsAddr: 127.0.0.1:0\n{config}");
        let started = Instant::now();
        let mut again = spawn_loader_timed(dir.path(), &config, &socket, "error")
            .await
            .0;
        let port = metrics_port(dir.path()).await;
        let pid = again.id().expect("loader pid");
        let replayed = loop {
            let n = metric(port, "starsink_records_replayed_total", "down").await;
            if n > 0 {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        while metric(port, "starsink_records_loaded_total", "down").await < replayed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out.replay = Some((
            proc_status(pid, "VmHWM:"),
            started.elapsed().as_secs_f64(),
            replayed,
        ));
        stop(&mut again).await;
    }
    out
}

/// What the outage phase measured.
struct Outage {
    peak_rss_kib: u64,
    /// Bytes producers got in before they were held back.
    written: u64,
    /// With a spool: the replaying loader's peak RSS (KiB), seconds to load it all, rows.
    replay: Option<(u64, f64, u64)>,
}

/// How late each idle batch's timer flush commits, past its 200ms interval.
async fn timer_lateness() -> Vec<Duration> {
    let sr = DevEndpoint::start(EndpointConfig::default())
        .await
        .expect("start endpoint");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("timer.sock");
    let config = format!(
        "labelPrefix: timer\nsinks:\n  - name: timer\n    socket: {}\n    starrocks:\n      feEndpoints: [\"{}\"]\n      database: bench\n      table: timer\n    flush:\n      interval: 200ms\n",
        socket.display(),
        sr.fe_url()
    );
    let mut loader = spawn_loader(dir.path(), &config, &socket).await;
    let mut conn = UnixStream::connect(&socket).await.expect("connect");
    let interval = Duration::from_millis(200);
    let mut late = Vec::new();
    for i in 0..25u64 {
        let mut row = Vec::new();
        Format::Json.row(i, &mut row);
        conn.write_all(&row).await.expect("write");
        let written = Instant::now();
        assert!(
            sr.wait_for_rows(i + 1, Duration::from_secs(5)).await,
            "timer flush never came"
        );
        let committed = sr.state().loads.last().expect("a load").at;
        late.push(committed.duration_since(written).saturating_sub(interval));
    }
    drop(conn);
    stop(&mut loader).await;
    late.sort();
    late
}

async fn spawn_loader(dir: &Path, config: &str, socket: &Path) -> Child {
    spawn_loader_timed(dir, config, socket, "warn").await.0
}

/// The loader, and how long after exec its socket took a first connection (tried every
/// millisecond).
async fn spawn_loader_timed(
    dir: &Path,
    config: &str,
    socket: &Path,
    level: &str,
) -> (Child, Duration) {
    let path: PathBuf = dir.join("loader.yaml");
    std::fs::write(&path, config).expect("write config");
    // The log goes to `loader.log` in `dir`, as JSON: `metrics_port` reads the port the
    // loader took from it (the loader module logs at info; the rest at `level`).
    let log = std::fs::File::create(dir.join("loader.log")).expect("create the loader log");
    let child = Command::new(env!("CARGO_BIN_EXE_starsink"))
        .args(["--log-format", "json", "loader", "--config"])
        .arg(&path)
        .env("RUST_LOG", format!("{level},starsink::loader=info"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn starsink loader");
    let spawned = Instant::now();
    while UnixStream::connect(socket).await.is_err() {
        assert!(
            spawned.elapsed() < Duration::from_secs(10),
            "the loader never listened"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (child, spawned.elapsed())
}

/// How long an idle process is watched for wakeups.
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// Context switches a second, voluntary or not, of every thread of `pid` over `window`:
/// each is a thread waking up.
async fn wakeups_per_sec(pid: u32, window: Duration) -> f64 {
    let before = context_switches(pid);
    tokio::time::sleep(window).await;
    (context_switches(pid) - before) as f64 / window.as_secs_f64()
}

/// Context switches so far of every thread of `pid`.
fn context_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read the task list");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

async fn stop(loader: &mut Child) {
    if let Some(pid) = loader.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let status = loader.wait().await.expect("wait for the loader");
    assert!(status.success(), "the loader exited with {status}");
}

/// `starsink_records_loaded_total` of sink `bench` from the loader's `/metrics`.
async fn loaded(port: u16) -> u64 {
    metric(port, "starsink_records_loaded_total", "bench").await
}

/// A per-sink series from the loader's `/metrics` (0 while it cannot be read).
async fn metric(port: u16, name: &str, sink: &str) -> u64 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let req = "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}{{sink=\"{sink}\"}} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The port the loader started last in `dir` serves its metrics on (`metricsAddr` port
/// 0: any free one, which it logs), once it has logged it.
async fn metrics_port(dir: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logged = std::fs::read_to_string(dir.join("loader.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "serving metrics")
            .and_then(|l| l["addr"].as_str()?.rsplit_once(':')?.1.parse().ok());
        if let Some(port) = logged {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "the loader never logged its metrics port"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `/proc/<pid>/status` field in KiB.
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("status field")
}

/// User plus system CPU seconds of `pid`.
fn proc_cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    ticks as f64 / hz as f64
}
