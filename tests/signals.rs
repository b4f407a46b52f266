//! Signals and a broken log pipe, through the real binary: SIGHUP never kills the loader,
//! and a stderr that is closed or never read neither panics it nor holds up its shutdown.
//! Logging must never decide whether data is flushed.

mod support;

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

fn rows(from: u64, n: u64) -> Vec<String> {
    (from..from + n)
        .map(|i| format!("{{\"id\":{i}}}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_an_unchanged_config_again_and_nothing_is_lost() {
    let sr = endpoint(Faults::default()).await;
    let mut loader = Loader::start(|dir| {
        format!(
            "sinks:\n{}",
            sink_yaml("orders", &dir.join("orders.sock"), &sr.fe_url(), "")
        )
    })
    .await;
    write_lines(&loader.socket("orders"), &rows(0, 100)).await;
    loader.signal(Signal::SIGHUP);
    loader
        .wait_log_where(
            "the config read again and found unchanged on SIGHUP",
            |l| l["level"] == "INFO" && l["trigger"] == "SIGHUP",
            Duration::from_secs(10),
        )
        .await;
    loader.signal(Signal::SIGHUP);
    write_lines(&loader.socket("orders"), &rows(100, 100)).await;
    let accounting = loader.stop_expecting(0).await;
    assert_eq!(accounting["committed"], 200, "{accounting}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 200);
}

/// A pipe for the loader's stderr: `(read end, write end)`.
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("pipe")
}

/// Fills a pipe to the brim, so the next write to it blocks.
fn fill(write_end: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd = write_end.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
    let chunk = [b'x'; 4096];
    while nix::unistd::write(write_end, &chunk).is_ok() {}
    fcntl(fd, FcntlArg::F_SETFL(flags)).unwrap();
}

/// Runs a loader whose stderr is `stderr`, writes 1000 rows, stops it with SIGTERM, and
/// checks it exits 0 at once with every row loaded once.
async fn loads_everything_with_stderr(stderr: OwnedFd) {
    let sr = endpoint(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("orders.sock");
    let config = dir.path().join("loader.yaml");
    std::fs::write(
        &config,
        format!(
            "sinks:\n{}",
            sink_yaml(
                "orders",
                &socket,
                &sr.fe_url(),
                "    flush:\n      maxRows: 50\n"
            )
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_starsink"))
        .args(["loader", "--config"])
        .arg(&config)
        // Every load and connection is logged: plenty of lines to write to a dead pipe.
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn starsink loader");
    // No log to wait on: the socket appearing is the loader being ready.
    wait_for_socket(&socket).await;
    write_lines(&socket, &rows(0, 1000)).await;
    assert!(sr.wait_for_rows(1000, Duration::from_secs(20)).await);
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the loader exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_neither_panics_nor_holds_up_shutdown() {
    let (read, write) = pipe();
    drop(read);
    loads_everything_with_stderr(write).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_neither_blocks_loads_nor_holds_up_shutdown() {
    let (read, write) = pipe();
    fill(&write);
    loads_everything_with_stderr(write).await;
    drop(read);
}
