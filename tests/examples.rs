//! The examples a user copies: every manifest validates (Kubernetes' schema for built-in
//! kinds, strict; the CRD schema for sinks is checked in tests/crd.rs), the example app
//! injected with the example sink still validates, and the Python, shell and Node.js
//! producers load rows through a real `starsink loader`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;
use tokio::io::AsyncWriteExt;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn validate(files: &[PathBuf]) {
    let tool = repo(".tools/venv/bin/kubernetes-validate");
    assert!(
        tool.exists(),
        "{} is missing; ./scripts/test installs it",
        tool.display()
    );
    let out = std::process::Command::new(tool)
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && !text.contains("ERROR"), "{text}");
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            line.contains("kind StarRocksSink"),
            "only sinks lack a built-in schema: {line}"
        );
    }
}

#[test]
fn every_example_manifest_validates_and_so_does_the_injected_app() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("secret.yaml")));
    assert!(files.iter().any(|f| f.ends_with("deployment.yaml")));
    validate(&files);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_starsink"))
        .args(["inject", "-f"])
        .arg(repo("examples/deployment.yaml"))
        .arg("--sink")
        .arg(repo("examples/starrocks-sink.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected = String::from_utf8(out.stdout).unwrap();
    assert!(injected.contains("starsink-loader"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("injected.yaml");
    std::fs::write(&file, injected).unwrap();
    validate(&[file]);
}

/// A loader with one JSON sink, `orders`, flushing every 100ms.
async fn loader(sr: &DevEndpoint) -> Loader {
    loader_with(sr, "").await
}

/// [`loader`], with more sink settings.
async fn loader_with(sr: &DevEndpoint, extra: &str) -> Loader {
    let fe = sr.fe_url();
    Loader::start(|dir| {
        format!(
            "labelPrefix: examples\nsinks:\n{}",
            sink_yaml(
                "orders",
                &dir.join("orders.sock"),
                &fe,
                &format!("    flush:\n      interval: 100ms\n{extra}")
            )
        )
    })
    .await
}

async fn finish(mut loader: Loader) {
    loader.signal(Signal::SIGTERM);
    let status = loader.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", loader.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_producer_loads_its_records() {
    let sr = endpoint(Faults::default()).await;
    let loader = loader(&sr).await;
    let out = tokio::process::Command::new("python3")
        .arg(repo("examples/producers/python/producer.py"))
        .arg("300")
        .env("STARSINK_SOCKET_ORDERS", loader.socket("orders"))
        .output()
        .await
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sr.wait_for_rows(300, Duration::from_secs(10)).await);
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 300);
    finish(loader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_producer_waits_for_its_acks_and_reports_refused_lines() {
    let sr = endpoint(Faults::default()).await;
    let loader = loader_with(&sr, "    acks: committed\n").await;
    let run = |args: &[&str]| {
        tokio::process::Command::new("python3")
            .arg(repo("examples/producers/python/producer.py"))
            .args(args)
            .env("STARSINK_SOCKET_ORDERS", loader.socket("orders"))
            .output()
    };
    let out = run(&["200", "--acks"]).await.expect("run python3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("200 of 200 lines acked, 0 refused"), "{err}");
    // Acked as committed: StarRocks has them all already.
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 200);

    // A bad line after record 205 is line 7 of this connection.
    let out = run(&["10", "--start", "200", "--acks", "--bad", "205"])
        .await
        .expect("run python3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("line 7 not loaded: not_json"), "{err}");
    assert!(err.contains("11 of 11 lines acked, 1 refused"), "{err}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 210);
    finish(loader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_producer_explains_a_missing_socket() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("python3")
        .arg(repo("examples/producers/python/producer.py"))
        .args(["5", "--attempts", "2", "--socket"])
        .arg(dir.path().join("nobody.sock"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("attempt 1/2")
            && err.contains("starsink.io/inject")
            && err.contains("gave up"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_producer_loads_standard_input() {
    let sr = endpoint(Faults::default()).await;
    let loader = loader(&sr).await;
    let mut child = tokio::process::Command::new(repo("examples/producers/shell/producer.sh"))
        .env("STARSINK_SOCKET_ORDERS", loader.socket("orders"))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run producer.sh");
    let mut stdin = child.stdin.take().unwrap();
    let lines: String = (0..150)
        .map(|i| format!("{{\"id\":{i},\"name\":\"shell-{i}\"}}\n"))
        .collect();
    stdin.write_all(lines.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sr.wait_for_rows(150, Duration::from_secs(10)).await);
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 150);
    finish(loader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_producer_waits_for_its_acks() {
    let sr = endpoint(Faults::default()).await;
    let loader = loader_with(&sr, "    acks: committed\n").await;
    let run = |input: String| {
        let mut child = tokio::process::Command::new(repo("examples/producers/shell/producer.sh"))
            .env("STARSINK_SOCKET_ORDERS", loader.socket("orders"))
            .env("ACKS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run producer.sh");
        let mut stdin = child.stdin.take().unwrap();
        async move {
            stdin.write_all(input.as_bytes()).await.unwrap();
            drop(stdin);
            child.wait_with_output().await.unwrap()
        }
    };
    let lines: String = (0..150)
        .map(|i| format!("{{\"id\":{i},\"name\":\"shell-{i}\"}}\n"))
        .collect();
    let out = run(lines).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("150 of 150 lines acked"), "{err}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 150);

    let out = run("{\"id\":150}\n[1,2]\n".into()).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("err 2 not_object"), "{err}");
    assert!(err.contains("2 of 2 lines acked"), "{err}");
    finish(loader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_producer_loads_its_records() {
    let sr = endpoint(Faults::default()).await;
    let loader = loader(&sr).await;
    let out = tokio::process::Command::new("node")
        .arg(repo("examples/producers/node/producer.js"))
        .arg("120")
        .env("STARSINK_SOCKET_ORDERS", loader.socket("orders"))
        .output()
        .await
        .expect("run node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sr.wait_for_rows(120, Duration::from_secs(10)).await);
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 120);
    finish(loader).await;
}
