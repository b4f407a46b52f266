//! `starsink demo`: the whole loader path on one machine. It starts the dev Stream Load
//! endpoint and a real `starsink loader` process with a spool and `acks: spooled`, then:
//! producers write and wait for their acks; StarRocks goes down, producers write more
//! (acked, because it is on disk), and the loader is killed with SIGKILL; StarRocks comes
//! back, a new loader replays the spool and is stopped with SIGTERM. The summary checks
//! that every record was loaded exactly once.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Child;

use crate::dev_endpoint::{DevEndpoint, EndpointConfig, Faults};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    pub producers: u64,
    /// Records per producer in each of the two rounds.
    #[arg(long, default_value_t = 2500)]
    pub records: u64,
}

/// Runs the demo; returns the process exit code (0 when every record loaded once).
pub async fn run(args: DemoArgs) -> i32 {
    let dir = std::env::temp_dir().join(format!("starsink-demo-{}", std::process::id()));
    let result = demo(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo failed: {e}");
            1
        }
    }
}

async fn demo(args: &DemoArgs, dir: &Path) -> Result<i32, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let endpoint = DevEndpoint::start(EndpointConfig::default())
        .await
        .map_err(|e| format!("cannot start the local Stream Load endpoint: {e}"))?;
    let socket = dir.join("orders.sock");
    let config = dir.join("loader.yaml");
    let yaml = format!(
        "labelPrefix: demo\nshutdownTimeout: 10s\nsinks:\n  - name: orders\n    socket: {}\n    starrocks:\n      feEndpoints: [\"{}\"]\n      database: shop\n      table: orders\n    flush:\n      interval: 500ms\n      maxRows: 3000\n    retry:\n      minBackoff: 200ms\n      maxBackoff: 1s\n    spoolDir: {}\n    acks: spooled\n",
        socket.display(),
        endpoint.fe_url(),
        dir.join("spool").display()
    );
    std::fs::write(&config, &yaml)
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    println!(
        "== local Stream Load endpoint (FE) at {}",
        endpoint.fe_url()
    );
    println!("== loader config ({}):\n{yaml}", config.display());

    println!(
        "== 1. {} producers write {} records each and wait for `ok N`",
        args.producers, args.records
    );
    let mut loader = start_loader(&config, &socket).await?;
    produce(&socket, args, 0).await?;

    println!(
        "\n== 2. StarRocks goes down; the producers write as much again; it is acked once on disk"
    );
    endpoint.set_faults(Faults {
        unavailable: 1.0,
        ..Faults::default()
    });
    produce(&socket, args, 1).await?;
    println!("== the loader is killed (SIGKILL) while StarRocks is still down");
    signal(&loader, "-KILL");
    let status = loader.wait().await.map_err(|e| e.to_string())?;
    let acked = 2 * args.producers * args.records;
    let loaded = endpoint.committed_rows();
    println!(
        "== loader exit: {status}; {acked} records acked, {loaded} of them in StarRocks: with `acks: spooled`, `ok` means on disk in the spool; the other {} wait there for StarRocks",
        acked.saturating_sub(loaded)
    );

    println!("\n== 3. StarRocks is back; a new loader replays the spool (its log says what it found), then gets SIGTERM");
    endpoint.set_faults(Faults::default());
    let written = 2 * args.producers * args.records;
    let mut loader = start_loader(&config, &socket).await?;
    if !endpoint
        .wait_for_rows(written, Duration::from_secs(60))
        .await
    {
        return Err(format!(
            "only {} of {written} rows loaded within 60s",
            endpoint.committed_rows()
        ));
    }
    signal(&loader, "-TERM");
    let status = loader.wait().await.map_err(|e| e.to_string())?;

    Ok(summary(&endpoint, written, status))
}

/// Prints what reached StarRocks against what was written and acked; 0 when every
/// record loaded exactly once and the last loader exited cleanly.
fn summary(endpoint: &DevEndpoint, written: u64, status: std::process::ExitStatus) -> i32 {
    let rows = endpoint.rows("shop.orders");
    let mut ids: Vec<u64> = rows
        .iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .filter_map(|v| v["id"].as_u64())
        .collect();
    ids.sort_unstable();
    let loaded = ids.len() as u64;
    ids.dedup();
    let duplicates = loaded - ids.len() as u64;
    let missing = written - ids.len() as u64;
    let st = endpoint.state();
    println!("\n== summary");
    println!("records written and acked: {written}");
    println!("rows in StarRocks:         {loaded} ({duplicates} duplicates, {missing} missing)");
    let refused = st.loads.iter().filter(|l| l.status != "Success").count();
    println!(
        "loads:                     {} committed, {refused} {} refused while StarRocks was down",
        st.loads.iter().filter(|l| l.status == "Success").count(),
        if refused == 1 { "attempt" } else { "attempts" }
    );
    println!("last loader exit code:     {}", status.code().unwrap_or(-1));
    if duplicates == 0 && missing == 0 && status.success() {
        println!("every record loaded exactly once");
        0
    } else {
        1
    }
}

/// Starts `starsink loader` on `config`; returns once its socket accepts connections.
async fn start_loader(config: &Path, socket: &Path) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let child = tokio::process::Command::new(exe)
        .args(["loader", "--config"])
        .arg(config)
        // Warnings, and what a start finds in the spool and the final accounting line
        // (not each flush).
        .env(
            "RUST_LOG",
            "warn,starsink::loader=info,starsink::loader::sinks=warn,starsink::loader::sink_task=warn",
        )
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the loader: {e}"))?;
    for _ in 0..100 {
        if UnixStream::connect(socket).await.is_ok() {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the loader did not start listening within 5s".into())
}

fn signal(child: &Child, sig: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status();
    }
}

/// Round `round` of every producer: writes its records, closes its side, and reads acks
/// until the loader has acked them all.
async fn produce(socket: &Path, args: &DemoArgs, round: u64) -> Result<(), String> {
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let socket = socket.to_path_buf();
        let n = args.records;
        let first = (round * args.producers + p) * n;
        producers.push(tokio::spawn(async move {
            let (read, mut write) = UnixStream::connect(&socket)
                .await
                .map_err(|e| e.to_string())?
                .into_split();
            let mut lines = String::new();
            for id in first..first + n {
                lines.push_str(&format!(
                    "{{\"id\":{id},\"producer\":{p},\"amount\":{}}}\n",
                    id % 97
                ));
            }
            write
                .write_all(lines.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            write.shutdown().await.map_err(|e| e.to_string())?;
            let mut acked = 0;
            let mut acks = BufReader::new(read).lines();
            while let Some(line) = acks.next_line().await.map_err(|e| e.to_string())? {
                if let Some(n) = line.strip_prefix("ok ").and_then(|n| n.parse().ok()) {
                    acked = n;
                }
            }
            if acked != n {
                return Err(format!("producer {p}: {acked} of {n} lines acked"));
            }
            Ok::<_, String>(())
        }));
    }
    for p in producers {
        p.await.map_err(|e| e.to_string())??;
    }
    println!("== every producer got `ok {}`", args.records);
    Ok(())
}
