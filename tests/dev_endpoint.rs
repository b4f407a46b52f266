//! `starsink dev-endpoint` as a user runs it: a process listening on every interface, a
//! real loader pointed at it by name, each load printed as it happens, and what was
//! loaded read back over HTTP.

mod support;

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(20);

/// `starsink dev-endpoint ARGS`, its output piped.
fn dev_endpoint(args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_starsink"));
    c.arg("dev-endpoint")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    c
}

/// Starts the endpoint; its process and the lines it prints.
fn spawn(
    mut command: tokio::process::Command,
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = command.spawn().expect("spawn starsink dev-endpoint");
    let out = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_pointed_at_the_dev_endpoint_loads_and_each_load_is_printed() {
    let mut command = dev_endpoint(&["--fe-addr=0.0.0.0:0", "--be-addr=0.0.0.0:0"]);
    command
        .args(["--user", "loader"])
        .env("STARSINK_DEV_PASSWORD", "s3cret");
    let (mut endpoint, mut out) = spawn(command);
    let mut next_line = async || {
        tokio::time::timeout(WAIT, out.next_line())
            .await
            .expect("a line from the endpoint in time")
            .unwrap()
            .expect("the endpoint is running")
    };
    // Port 0: the endpoint says which ports it got.
    let first = next_line().await;
    let fe: u16 = first
        .split_once("FE http://0.0.0.0:")
        .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no FE address in {first:?}"));

    // Reached by name: the FE redirects to that name with the BE's port.
    let mut loader = Loader::start(|dir| {
        format!(
            "sinks:\n  - name: orders\n    socket: {}\n    starrocks:\n      feEndpoints: [\"http://localhost:{fe}\"]\n      database: shop\n      table: orders\n      user: loader\n      password: s3cret\n    flush:\n      maxRows: 10\n",
            dir.join("orders.sock").display()
        )
    })
    .await;
    let lines: Vec<String> = (0..25).map(|i| format!("{{\"id\":{i}}}")).collect();
    write_lines(&loader.socket("orders"), &lines).await;

    let mut printed = Vec::new();
    while printed.iter().map(|(rows, _)| rows).sum::<u64>() < 20 {
        let line = next_line().await;
        if let Some(rest) = line.strip_prefix("load ") {
            let field = |k: &str| {
                rest.split(' ')
                    .find_map(|f| f.strip_prefix(&format!("{k}=")))
                    .unwrap_or_default()
                    .to_owned()
            };
            assert_eq!(field("table"), "shop.orders", "{line}");
            assert!(!field("label").is_empty(), "{line}");
            printed.push((field("rows").parse::<u64>().unwrap(), field("outcome")));
        }
    }
    assert!(
        printed
            .iter()
            .all(|(rows, outcome)| *rows == 10 && outcome == "Success"),
        "{printed:?}"
    );

    loader.stop_expecting(0).await;
    let (status, rows) = http_get(fe, "/dev/rows?table=shop.orders").await;
    assert_eq!(status, 200);
    let ids = ids(&rows.lines().map(str::to_owned).collect::<Vec<_>>());
    assert_exactly_once(&ids, 25);
    let (_, summary) = http_get(fe, "/dev/summary").await;
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let orders = &summary["tables"]["shop.orders"];
    assert_eq!(
        (orders["rows"].as_u64(), orders["duplicates"].as_u64()),
        (Some(25), Some(0)),
        "{summary}"
    );
    // Three loads of 10, 10 and 5 rows: three transactions, three versions so far.
    assert_eq!(summary["transactions"], 3, "{summary}");
    assert!(
        orders["versionsPeak"]
            .as_u64()
            .is_some_and(|v| (1..=3).contains(&v)),
        "{summary}"
    );

    kill(
        Pid::from_raw(endpoint.id().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(WAIT, endpoint.wait())
        .await
        .expect("the endpoint stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_dev_endpoint_serves_tls_and_a_loader_trusting_its_ca_loads() {
    use starsink::operator::certs::{renew, Renewal, Validity};
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let names = ["127.0.0.1".to_owned()];
    let m = renew(None, Renewal::NewCa, &names, now, Validity::default()).unwrap();
    let (cert, key, ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    std::fs::write(&cert, &m.cert).unwrap();
    std::fs::write(&key, &m.key).unwrap();
    std::fs::write(&ca, &m.ca_bundle).unwrap();
    let mut command = dev_endpoint(&["--fe-addr=127.0.0.1:0", "--be-addr=127.0.0.1:0"]);
    command
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key);
    let (mut endpoint, mut out) = spawn(command);
    let first = tokio::time::timeout(WAIT, out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let fe = first
        .split_once("FE ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .unwrap_or_default()
        .to_owned();
    assert!(fe.starts_with("https://127.0.0.1:"), "{first}");
    let mut loader = Loader::start(|d| {
        format!(
            "sinks:\n  - name: orders\n    socket: {}\n    starrocks:\n      feEndpoints: [\"{fe}\"]\n      database: shop\n      table: orders\n      tls: {{caFile: {}}}\n    flush:\n      maxRows: 5\n",
            d.join("orders.sock").display(),
            ca.display()
        )
    })
    .await;
    let lines: Vec<String> = (0..5).map(|i| format!("{{\"id\":{i}}}")).collect();
    write_lines(&loader.socket("orders"), &lines).await;
    loop {
        let line = tokio::time::timeout(WAIT, out.next_line())
            .await
            .expect("a load printed in time")
            .unwrap()
            .unwrap();
        if line.starts_with("load ") {
            assert!(
                line.contains("rows=5") && line.contains("outcome=Success"),
                "{line}"
            );
            break;
        }
    }
    loader.stop_expecting(0).await;
    let _ = kill(
        Pid::from_raw(endpoint.id().unwrap() as i32),
        Signal::SIGTERM,
    );
    let _ = endpoint.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_without_a_label_gets_one_made_up_as_starrocks_does() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sr = starsink::dev_endpoint::DevEndpoint::start(Default::default())
        .await
        .unwrap();
    let body = "1,a\n2,b\n";
    let request = format!(
        "PUT /api/shop/orders/_stream_load HTTP/1.1\r\nHost: be\r\nAuthorization: Basic cm9vdDo=\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(sr.be_addr()).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    // The BE keeps the connection for the next load: read until the answer's JSON ends.
    let mut answer = String::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !answer.trim_end().ends_with('}') {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the BE closed before answering: {answer}");
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(read.is_ok(), "no whole answer within 10s: {answer}");
    assert!(answer.contains("\"Status\":\"Success\""), "{answer}");
    assert!(answer.contains("\"Label\":\"generated_"), "{answer}");
    assert_eq!(sr.rows("shop.orders").len(), 2);
}
