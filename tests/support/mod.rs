//! Test support: runs the real `starsink loader` binary against the dev endpoint, over
//! real Unix sockets, and sends it real signals.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub use starsink::dev_endpoint::{DevEndpoint, EndpointConfig, Faults};

/// A running loader process with its captured (JSON) log lines.
pub struct Loader {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    log_count: watch::Receiver<usize>,
    pub dir: tempfile::TempDir,
}

/// One sink's YAML for a test config; `extra` is appended inside the sink (8 spaces deep
/// for `flush:` children etc. is the caller's business).
pub fn sink_yaml(name: &str, socket: &Path, fe_url: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    socket: {}\n    starrocks:\n      feEndpoints: [\"{fe_url}\"]\n      database: shop\n      table: {table}\n{extra}",
        socket.display(),
        table = name.replace('-', "_"),
    )
}

impl Loader {
    /// Writes `config` (with `{dir}` replaced by the loader's temp dir) and starts the
    /// loader; returns once it logs that it is ready.
    pub async fn start(config: impl FnOnce(&Path) -> String) -> Loader {
        Self::start_with_args(|dir| {
            let path = dir.join("loader.yaml");
            std::fs::write(&path, config(dir)).expect("write config");
            vec!["--config".into(), path.display().to_string()]
        })
        .await
    }

    /// Starts `starsink --log-format json loader ARGS`, with the arguments (and any files
    /// they name) made by `args` in the loader's temp dir.
    pub async fn start_with_args(args: impl FnOnce(&Path) -> Vec<String>) -> Loader {
        Self::start_wrapped(|dir| (Vec::new(), args(dir))).await
    }

    /// [`Loader::start`], in a mount namespace of its own (`unshare -rm`, no privilege
    /// needed) where a tmpfs of `size` (as `mount -o size=` takes it) is mounted at
    /// `{dir}/{mount}`: a disk the test can fill ([`Loader::inside`]).
    pub async fn start_on_tmpfs(
        size: &str,
        mount: &str,
        config: impl FnOnce(&Path) -> String,
    ) -> Loader {
        Self::start_wrapped(|dir| {
            let target = dir.join(mount);
            std::fs::create_dir_all(&target).expect("mount point");
            let wrapper = vec![
                "unshare".into(),
                "-rm".into(),
                "sh".into(),
                "-c".into(),
                format!(
                    "mount -t tmpfs -o size={size} starsink-test '{}' && exec \"$0\" \"$@\"",
                    target.display()
                ),
            ];
            let path = dir.join("loader.yaml");
            std::fs::write(&path, config(dir)).expect("write config");
            (wrapper, vec!["--config".into(), path.display().to_string()])
        })
        .await
    }

    /// A path as the loader sees it, through its mount namespace (for a loader started
    /// by [`Loader::start_on_tmpfs`]).
    pub fn inside(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(relative)
    }

    /// Starts `WRAPPER... starsink --log-format json loader ARGS`, with the wrapper and
    /// the arguments (and any files they name) made by `make` in the loader's temp dir.
    /// The wrapper must exec the loader in its own process.
    async fn start_wrapped(make: impl FnOnce(&Path) -> (Vec<String>, Vec<String>)) -> Loader {
        let dir = tempfile::tempdir().expect("temp dir");
        let (wrapper, args) = make(dir.path());
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_starsink"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_starsink")),
        };
        let mut child = command
            .args(["--log-format", "json", "loader"])
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn starsink");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, log_count) = watch::channel(0usize);
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Release the log lock before notifying: `wait_log` runs its check (which
                // takes the log lock) while holding the watch channel's lock, so holding both
                // here in the other order deadlocks the test runtime.
                let count = {
                    let mut l = sink.lock().unwrap();
                    l.push(line);
                    l.len()
                };
                count_tx.send_replace(count);
            }
        });
        let mut loader = Loader {
            child,
            logs,
            log_count,
            dir,
        };
        if !loader
            .wait_log("loader ready", Duration::from_secs(10))
            .await
        {
            panic!(
                "loader did not become ready; its log:\n{}",
                loader.log_text()
            );
        }
        loader
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("running") as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("send signal");
    }

    /// Waits for the process to exit; panics (with the log) if it does not in time.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => {
                // Let the stderr reader catch the last lines.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    self.log_count.wait_for(|_| false),
                )
                .await;
                status
            }
            _ => panic!(
                "loader did not exit within {within:?}; its log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Sends SIGTERM, asserts the exit code, and returns the final accounting line.
    pub async fn stop_expecting(&mut self, code: i32) -> serde_json::Value {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(code), "{}", self.log_text());
        self.accounting()
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Log lines parsed as JSON objects.
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The port of the loader's metrics server (started with `metricsAddr:
    /// 127.0.0.1:0`, so that no test races another for a port), from its log.
    pub fn metrics_port(&self) -> u16 {
        metrics_port_logged(&self.log_text())
            .unwrap_or_else(|| panic!("no metrics address in the log:\n{}", self.log_text()))
    }

    /// Waits until a JSON log line satisfies `check` (its level and fields, not its
    /// wording); fails the test after `within`, saying what it waited for.
    pub async fn wait_log_where(
        &mut self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
        within: Duration,
    ) {
        let logs = self.logs.clone();
        let found = |_: &usize| {
            logs.lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .any(|l| check(&l))
        };
        let waited = tokio::time::timeout(within, self.log_count.wait_for(found))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            waited,
            "waited {within:?} for a log line: {what}; log:\n{}",
            self.log_text()
        );
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_log(&mut self, needle: &str, within: Duration) -> bool {
        let logs = self.logs.clone();
        let found = |_: &usize| logs.lock().unwrap().iter().any(|l| l.contains(needle));
        matches!(
            tokio::time::timeout(within, self.log_count.wait_for(found)).await,
            Ok(Ok(_))
        )
    }

    /// The final accounting line's fields.
    pub fn accounting(&self) -> serde_json::Value {
        self.log_json()
            .into_iter()
            .rev()
            .find(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("loader stopped"))
            })
            .unwrap_or_else(|| panic!("no accounting line; log:\n{}", self.log_text()))
    }
}

/// Connects to a sink's socket.
pub async fn connect(path: &Path) -> UnixStream {
    UnixStream::connect(path)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()))
}

/// Writes `lines` (each without newline) to a new connection and closes it. A loader
/// that stops reading for a minute fails the test instead of hanging it.
pub async fn write_lines(path: &Path, lines: &[String]) {
    let mut s = connect(path).await;
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(l.as_bytes());
        buf.push(b'\n');
    }
    let written = tokio::time::timeout(Duration::from_secs(60), async {
        s.write_all(&buf).await.expect("write");
        s.shutdown().await.expect("shutdown");
    })
    .await;
    assert!(
        written.is_ok(),
        "the loader stopped reading {} for 60s (backpressure that never ended)",
        path.display()
    );
}

/// The ids of JSON rows `{"id":N,...}` in commit order.
pub fn ids(rows: &[String]) -> Vec<u64> {
    rows.iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).expect("row is JSON");
            v["id"].as_u64().expect("row has an id")
        })
        .collect()
}

/// Asserts that `ids` holds each of `0..n` exactly once.
pub fn assert_exactly_once(ids: &[u64], n: u64) {
    let mut seen = vec![0u32; n as usize];
    for &id in ids {
        assert!(id < n, "unexpected id {id}");
        seen[id as usize] += 1;
    }
    let dup: Vec<u64> = (0..n).filter(|i| seen[*i as usize] > 1).collect();
    let missing: Vec<u64> = (0..n).filter(|i| seen[*i as usize] == 0).collect();
    assert!(
        dup.is_empty() && missing.is_empty(),
        "{} duplicated (e.g. {:?}), {} missing (e.g. {:?})",
        dup.len(),
        &dup[..dup.len().min(10)],
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Runs `starsink loader` on a config that must make it exit by itself (bad config, a
/// socket in use); returns its exit status and its (human-readable) log.
pub async fn run_loader_to_exit(config: &Path, within: Duration) -> (ExitStatus, String) {
    let child = loader_command(config, "human")
        .spawn()
        .expect("spawn starsink");
    match tokio::time::timeout(within, child.wait_with_output()).await {
        Ok(Ok(out)) => (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("waiting for starsink: {e}"),
        Err(_) => panic!("starsink loader did not exit within {within:?}"),
    }
}

/// A loopback TCP address nothing listens on, and nothing else can take: a socket bound
/// to it and never put to listen, held for the life of the test process (a connect to it
/// is refused, like one to a stopped FE).
pub fn dead_address() -> String {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    let port = *PORT.get_or_init(|| {
        // SAFETY: plain socket calls on a descriptor this function owns (and leaks on
        // purpose: it holds the port); `addr` and `len` are valid for the calls.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let bound = libc::bind(fd, (&raw const addr).cast(), len);
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let named = libc::getsockname(fd, (&raw mut addr).cast(), &mut len);
            assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
            u16::from_be(addr.sin_port)
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// `starsink --log-format FORMAT loader --config CONFIG`, logging to a pipe, killed on drop.
fn loader_command(config: &Path, log_format: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_starsink"));
    cmd.args(["--log-format", log_format, "loader", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A dev endpoint (user root, no password) that injects `faults`.
pub async fn endpoint(faults: Faults) -> DevEndpoint {
    DevEndpoint::start(EndpointConfig {
        faults,
        seed: 42,
        ..EndpointConfig::default()
    })
    .await
    .expect("start the dev endpoint")
}

/// A dev endpoint that is "down": it answers 503 to every load.
pub async fn down_endpoint() -> DevEndpoint {
    endpoint(Faults {
        unavailable: 1.0,
        ..Faults::default()
    })
    .await
}

/// `GET path` on `127.0.0.1:port` with `Connection: close`; returns status and body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics address");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .expect("the server closes after answering a Connection: close request")
        .expect("read answer");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

/// The value of the metric line `name{labels}` in Prometheus text.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name_and_labels} in:\n{text}"))
}

/// `(ok counts in order, err lines as (line, reason) in order)`, checking that every
/// line is one or the other and that each `err` comes before any `ok` covering it.
pub fn parse_acks(acks: &[String]) -> (Vec<u64>, Vec<(u64, String)>) {
    let (mut oks, mut errs) = (Vec::new(), Vec::new());
    for a in acks {
        let parts: Vec<&str> = a.split(' ').collect();
        match parts.as_slice() {
            ["ok", n] => {
                let n: u64 = n.parse().expect("ok count");
                assert!(
                    oks.last().is_none_or(|&last| n > last),
                    "ok went back: {acks:?}"
                );
                oks.push(n);
            }
            ["err", line, reason] => {
                let line: u64 = line.parse().expect("err line");
                assert!(
                    oks.last().is_none_or(|&ok| line > ok),
                    "err {line} came after ok {:?}",
                    oks.last()
                );
                errs.push((line, reason.to_string()));
            }
            _ => panic!("not an ack line: {a:?}"),
        }
    }
    (oks, errs)
}

/// Waits until `check` holds, looking again every 10ms; after `within`, fails the test
/// saying what it waited for.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "waited {within:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the metric `name{labels}` a loader serves on `port` now.
pub async fn metric_at(port: u16, name_and_labels: &str) -> f64 {
    metric(&http_get(port, "/metrics").await.1, name_and_labels)
}

/// The metrics port a loader's JSON log names (`metricsAddr` port 0: it logs the one it
/// took), once it does.
pub fn metrics_port_logged(log: &str) -> Option<u16> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "serving metrics")
        .and_then(|l| l["addr"].as_str()?.rsplit_once(':')?.1.parse().ok())
}

/// Waits (10s at most) until a socket at `path` accepts connections.
pub async fn wait_for_socket(path: &Path) {
    wait_until("the loader's socket", Duration::from_secs(10), || async {
        UnixStream::connect(path).await.is_ok()
    })
    .await;
}

/// Collects every ack line the loader writes on `read` until it closes the connection.
pub fn read_acks(read: tokio::net::unix::OwnedReadHalf) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acks = Vec::new();
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await.expect("read acks") {
            acks.push(line);
        }
        acks
    })
}

/// Changes a digit of the JSON row `{"id":ID,...}` (ID ≥ 100) in the spool's segment
/// file, as something else writing into the spool would: the batch holding it can no
/// longer be read back.
pub fn damage_row_in_spool(spool: &Path, id: u64) {
    let segment = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let needle = format!("\"id\":{id},");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("row {id} is in the segment"));
    let digit = at + 5;
    bytes[digit] = if bytes[digit] == b'9' { b'8' } else { b'9' };
    std::fs::write(&segment, &bytes).unwrap();
}
