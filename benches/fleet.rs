//! Fleet benchmark: N real `starsink loader` processes, one per simulated pod, each fed
//! by its own producer at R rows/s, all loading one table of one dev endpoint that
//! imitates StarRocks' fleet limits (versions per table with a compaction rate,
//! `max_running_txn_num_per_db`, `label_keep_max_num`; `src/dev_endpoint/limits.rs`).
//! Three runs of D seconds each:
//! 1. plain labels, `flush.interval: 5s`, backpressure not allowed to widen it
//!    (`maxInterval: 5s`): what a fleet does to a table today;
//! 2. plain labels with backpressure (`maxInterval: 60s`, or `--max-interval S`): the
//!    loaders slow down;
//! 3. Merge Commit, 5s window, async.
//!
//! For each: loads/s and transactions/s at the table, peak versions, refused loads, rows
//! loaded / duplicated / missing, freshness (write to committed) p50 and p99, total and
//! per-loader peak RSS, total loader CPU.
//!
//! ```text
//! cargo bench --bench fleet                              # 200 loaders, 50 rows/s, 60s
//! cargo bench --bench fleet -- --loaders 1000 --secs 60
//! cargo bench --bench fleet -- --loaders 1000 --secs 600 --only backpressure --max-interval 300
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use starsink::dev_endpoint::{DevEndpoint, EndpointConfig, ServerLimits};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

/// Versions compaction merges away per second on the table: a cluster that keeps up
/// with about one load every 0.2s, far more than StarRocks' advice of one per 5s.
const COMPACTION_PER_SEC: f64 = 5.0;

struct Args {
    loaders: usize,
    rate: u64,
    secs: u64,
    /// `flush.maxInterval` of the backpressure run, in seconds.
    max_interval: u64,
    smoke: bool,
}

fn args() -> Args {
    let all: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        all.iter()
            .position(|a| a == name)
            .and_then(|i| all.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and then a
    // small run only checks that the harness works.
    let smoke = !all.iter().any(|a| a == "--bench");
    Args {
        loaders: if smoke {
            3
        } else {
            get("--loaders").unwrap_or(200) as usize
        },
        rate: get("--rate").unwrap_or(50),
        max_interval: get("--max-interval").unwrap_or(60),
        secs: if smoke {
            2
        } else {
            get("--secs").unwrap_or(60)
        },
        smoke,
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Backpressure,
    MergeCommit,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain, 5s",
            Mode::Backpressure => "plain + backpressure",
            Mode::MergeCommit => "Merge Commit, 5s",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Backpressure => "backpressure",
            Mode::MergeCommit => "merge",
        }
    }

    fn sink_extra(self, max_interval: u64) -> String {
        match self {
            Mode::Plain => "    flush:\n      interval: 5s\n      maxInterval: 5s\n".into(),
            Mode::Backpressure => {
                format!("    flush:\n      interval: 5s\n      maxInterval: {max_interval}s\n")
            }
            Mode::MergeCommit => {
                "      mergeCommit: {interval: 5s, async: true}\n    flush:\n      interval: 5s\n"
                    .into()
            }
        }
    }
}

struct Figures {
    mode: Mode,
    loads_per_sec: f64,
    txns_per_sec: f64,
    peak_versions: u32,
    refused: u64,
    written: u64,
    loaded: u64,
    duplicated: u64,
    missing: u64,
    fresh_p50: Duration,
    fresh_p99: Duration,
    rss_total_mib: f64,
    rss_per_loader_mib: f64,
    cpu_secs: f64,
    /// Loaders that did not exit 0 (records lost at the shutdown deadline).
    loaders_losing: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    raise_fd_limit();
    let a = args();
    if a.smoke {
        println!("smoke run (not under `cargo bench`): the figures below mean nothing");
    }
    println!(
        "starsink fleet benchmark: {} loaders, {} rows/s each, {}s per run, compaction {COMPACTION_PER_SEC} versions/s, tablet_max_versions 1000, label_keep_max_num 1000, backpressure run's maxInterval {}s",
        a.loaders, a.rate, a.secs, a.max_interval
    );
    let mut all = Vec::new();
    // `--only plain|backpressure|merge` runs one of the three.
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    for mode in [Mode::Plain, Mode::Backpressure, Mode::MergeCommit] {
        if only.as_deref().is_none_or(|o| o == mode.key()) {
            all.push(run(mode, &a).await);
        }
    }
    println!();
    println!("| run | loads/s | txns/s | peak versions | refused | rows written | loaded | duplicated | missing | loaders losing rows | freshness p50 | p99 | RSS total | per loader | loader CPU-s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in &all {
        println!(
            "| {} | {:.1} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {:.1}s | {:.1}s | {:.0} MiB | {:.1} MiB | {:.1} |",
            f.mode.name(),
            f.loads_per_sec,
            f.txns_per_sec,
            f.peak_versions,
            f.refused,
            f.written,
            f.loaded,
            f.duplicated,
            f.missing,
            f.loaders_losing,
            f.fresh_p50.as_secs_f64(),
            f.fresh_p99.as_secs_f64(),
            f.rss_total_mib,
            f.rss_per_loader_mib,
            f.cpu_secs
        );
    }
}

/// One run: start the endpoint and the loaders, feed them for `secs`, stop them (the
/// shutdown flushes what they hold), and read the figures.
async fn run(mode: Mode, a: &Args) -> Figures {
    let sr = DevEndpoint::start(EndpointConfig {
        limits: ServerLimits {
            max_versions: 1000,
            compaction_per_sec: COMPACTION_PER_SEC,
            max_running_txns: 1000,
            label_keep_max_num: Some(1000),
        },
        ..EndpointConfig::default()
    })
    .await
    .expect("start the dev endpoint");
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut loaders = Vec::with_capacity(a.loaders);
    for pod in 0..a.loaders {
        loaders.push(spawn_loader(dir.path(), pod, &sr.fe_url(), mode, a).await);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(a.secs);
    let producers: Vec<_> = (0..a.loaders)
        .map(|pod| tokio::spawn(produce(socket(dir.path(), pod), pod as u64, a.rate, until)))
        .collect();
    let mut written = 0;
    for p in producers {
        written += p.await.expect("a producer");
    }
    let (cpu_secs, peak_kib) = loaders.iter().fold((0.0, 0u64), |(cpu, rss), l| {
        let pid = l.id().unwrap_or_default();
        (cpu + proc_cpu_secs(pid), rss + proc_status(pid, "VmHWM:"))
    });
    for l in &loaders {
        signal(l, nix::sys::signal::Signal::SIGTERM);
    }
    let mut lost = 0;
    for mut l in loaders {
        // Exit 1: records not committed by the shutdown deadline were lost.
        lost += usize::from(l.wait().await.map_or(true, |s| s.code() != Some(0)));
    }
    let secs = started.elapsed().as_secs_f64();
    let mut f = figures(mode, &sr, written, secs, cpu_secs, peak_kib, a.loaders);
    f.loaders_losing = lost;
    f
}

fn figures(
    mode: Mode,
    sr: &DevEndpoint,
    written: u64,
    secs: f64,
    cpu_secs: f64,
    peak_kib: u64,
    n: usize,
) -> Figures {
    let rows = sr.rows("shop.orders");
    let st = sr.state();
    let requests = st
        .loads
        .iter()
        .filter(|l| !l.status.starts_with("window"))
        .count();
    // Commits append their rows in order: walk both to time each row.
    let mut fresh = Vec::with_capacity(rows.len());
    let mut next = 0;
    let mut seen: HashMap<(u64, u64), u32> = HashMap::new();
    for c in st
        .ledger
        .commits
        .iter()
        .filter(|c| c.table == "shop.orders")
    {
        let at =
            c.at.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
        for r in rows.iter().skip(next).take(c.rows) {
            let v: serde_json::Value = serde_json::from_str(r).unwrap_or_default();
            let (pod, id, t) = (v["pod"].as_u64(), v["id"].as_u64(), v["t"].as_u64());
            if let (Some(pod), Some(id), Some(t)) = (pod, id, t) {
                *seen.entry((pod, id)).or_default() += 1;
                fresh.push(Duration::from_millis(at.saturating_sub(t)));
            }
        }
        next += c.rows;
    }
    fresh.sort();
    let pct = |p: f64| {
        fresh
            .get(((fresh.len() as f64 * p) as usize).min(fresh.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let versions = st.ledger.versions.get("shop.orders");
    Figures {
        mode,
        loads_per_sec: requests as f64 / secs,
        txns_per_sec: st.ledger.commits.len() as f64 / secs,
        peak_versions: versions.map_or(0, |v| v.peak),
        refused: st.ledger.refused_versions + st.ledger.refused_running,
        written,
        loaded: seen.len() as u64,
        duplicated: seen.values().map(|n| u64::from(n - 1)).sum(),
        missing: written.saturating_sub(seen.len() as u64),
        fresh_p50: pct(0.5),
        fresh_p99: pct(0.99),
        rss_total_mib: peak_kib as f64 / 1024.0,
        rss_per_loader_mib: peak_kib as f64 / 1024.0 / n.max(1) as f64,
        cpu_secs,
        loaders_losing: 0,
    }
}

fn socket(dir: &Path, pod: usize) -> PathBuf {
    dir.join(format!("pod-{pod}.sock"))
}

async fn spawn_loader(dir: &Path, pod: usize, fe: &str, mode: Mode, a: &Args) -> Child {
    let config = dir.join(format!("pod-{pod}.yaml"));
    let socket = socket(dir, pod);
    let yaml = format!(
        "labelPrefix: pod-{pod}\nshutdownTimeout: 60s\nsinks:\n  - name: orders\n    socket: {}\n    starrocks:\n      feEndpoints: [\"{fe}\"]\n      database: shop\n      table: orders\n{}",
        socket.display(),
        mode.sink_extra(a.max_interval)
    );
    std::fs::write(&config, yaml).expect("write a loader config");
    let child = Command::new(env!("CARGO_BIN_EXE_starsink"))
        .args(["loader", "--config"])
        .arg(&config)
        .env(
            "RUST_LOG",
            if std::env::var_os("FLEET_LOG_DIR").is_some() {
                "info"
            } else {
                "warn"
            },
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(pod))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn starsink loader");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&socket).await.is_err() {
        assert!(Instant::now() < deadline, "loader {pod} never listened");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child
}

/// Writes `rate` rows a second, in tenths, until `until`; each row has its pod, its id
/// and when it was written (Unix ms). A write the loader holds back (backpressure) is
/// given up at `until`. Returns how many whole rows reached the socket.
async fn produce(socket: PathBuf, pod: u64, rate: u64, until: Instant) -> u64 {
    let mut conn = UnixStream::connect(&socket)
        .await
        .expect("connect a producer");
    let per_tick = rate.div_ceil(10).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut id, mut whole) = (0, 0);
    let deadline = tokio::time::Instant::from_std(until);
    while Instant::now() < until {
        tick.tick().await;
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut lines = String::new();
        for _ in 0..per_tick {
            lines.push_str(&format!("{{\"pod\":{pod},\"id\":{id},\"t\":{t}}}\n"));
            id += 1;
        }
        let bytes = lines.as_bytes();
        let mut sent = 0;
        while sent < bytes.len() {
            match tokio::time::timeout_at(deadline, conn.write(&bytes[sent..])).await {
                Ok(Ok(n)) if n > 0 => sent += n,
                _ => break,
            }
        }
        whole += bytes[..sent].iter().filter(|b| **b == b'\n').count() as u64;
        if sent < bytes.len() {
            break;
        }
    }
    whole
}

/// Where loader `pod` logs: `$FLEET_LOG_DIR/pod-N.log` when that is set, else nowhere.
fn log_file(pod: usize) -> Stdio {
    match std::env::var_os("FLEET_LOG_DIR") {
        Some(dir) => std::fs::File::create(Path::new(&dir).join(format!("pod-{pod}.log")))
            .map_or_else(|_| Stdio::null(), Stdio::from),
        None => Stdio::null(),
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

/// Lets this process hold a socket per loader and per producer.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A `/proc/<pid>/status` field in KiB (0 if the process is gone).
fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User plus system CPU seconds of `pid` (0 if the process is gone).
fn proc_cpu_secs(pid: u32) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(end) = text.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = text[end + 2..].split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    ticks as f64 / hz as f64
}
