//! `starsink demo`: the whole loader path on one machine. It starts the dev Stream Load
//! endpoint, runs a real `starsink loader` process on temporary sockets, writes records
//! from concurrent producers, stops the loader with SIGTERM and summarises what loaded.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::dev_endpoint::{DevEndpoint, EndpointConfig};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    pub producers: u64,
    /// Records per producer.
    #[arg(long, default_value_t = 2500)]
    pub records: u64,
}

/// Runs the demo; returns the process exit code.
pub async fn run(args: DemoArgs) -> i32 {
    match demo(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("demo failed: {e}");
            1
        }
    }
}

async fn demo(args: DemoArgs) -> Result<i32, String> {
    let endpoint = DevEndpoint::start(EndpointConfig::default())
        .await
        .map_err(|e| format!("cannot start the local Stream Load endpoint: {e}"))?;
    let dir = tempfile_dir()?;
    let socket = dir.join("orders.sock");
    let config = dir.join("loader.yaml");
    let yaml = format!(
        "labelPrefix: demo\nshutdownTimeout: 10s\nsinks:\n  - name: orders\n    socket: {}\n    starrocks:\n      feEndpoints: [\"{}\"]\n      database: shop\n      table: orders\n    flush:\n      interval: 1s\n      maxRows: 3000\n",
        socket.display(),
        endpoint.fe_url()
    );
    std::fs::write(&config, &yaml)
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    println!(
        "== local Stream Load endpoint (FE) at {}",
        endpoint.fe_url()
    );
    println!("== loader config ({}):\n{yaml}", config.display());

    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .args(["loader", "--config"])
        .arg(&config)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the loader: {e}"))?;

    // Wait for the socket to accept connections.
    let mut tries = 0;
    while UnixStream::connect(&socket).await.is_err() {
        tries += 1;
        if tries > 100 {
            return Err("the loader did not start listening within 5s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "== {} producers write {} records each",
        args.producers, args.records
    );
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let socket = socket.clone();
        let n = args.records;
        producers.push(tokio::spawn(async move {
            let mut conn = UnixStream::connect(&socket).await?;
            for i in 0..n {
                let line = format!(
                    "{{\"id\":{},\"producer\":{p},\"amount\":{}}}\n",
                    p * n + i,
                    i % 97
                );
                conn.write_all(line.as_bytes()).await?;
                if i % 500 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            conn.shutdown().await
        }));
    }
    for p in producers {
        p.await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("producer: {e}"))?;
    }
    println!("== producers done; sending SIGTERM to the loader");
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let st = endpoint.state();
    let written = args.producers * args.records;
    println!("\n== summary");
    println!("records written:   {written}");
    println!("records committed: {}", st.committed_rows);
    println!("loads:             {}", st.loads.len());
    for l in &st.loads {
        println!("  {:<40} {:>6} rows  {}", l.label, l.rows, l.status);
    }
    println!("loader exit code:  {}", status.code().unwrap_or(-1));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if st.committed_rows == written && status.success() {
        0
    } else {
        1
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("starsink-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
