//! A local Stream Load endpoint that behaves like StarRocks, for the tests and the demo.
//!
//! Every behaviour here is one `shared/design/stream-load.md` describes: the FE requires
//! `Expect: 100-continue`, answers 307 to the BE and closes; the BE checks Basic auth,
//! keeps labels with their states, answers `Label Already Exists` with the existing job's
//! status, fails empty loads and invalid labels, and serves `get_load_state`. Faults are
//! injected on demand. Loaded rows are kept so tests can assert on them.

mod be;
pub mod command;
mod fe;
pub mod limits;
mod merge;
mod throttle;

use std::collections::HashMap;

pub use limits::ServerLimits;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Faults injected into BE loads, each a probability in `[0, 1]` drawn per request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Commit the rows, then drop the connection without an answer.
    pub commit_then_drop: f64,
    /// Roll back and answer `Fail` with a transient message (a BE shutting down).
    pub fail: f64,
    /// Roll back and answer `Fail` with StarRocks' "too many versions" (backpressure).
    pub backpressure: f64,
    /// Answer HTTP 503 without loading.
    pub unavailable: f64,
    /// Commit, answer `Publish Timeout` (the label reads COMMITTED once, then VISIBLE).
    pub publish_timeout: f64,
    /// Roll back and answer `Fail` with a data error and an `ErrorURL` (not retryable).
    pub refuse: f64,
    /// Delay the answer by `slow_by`.
    pub slow: f64,
    pub slow_by: Duration,
    /// A broken BE or proxy: answer `Success` at once, before the body is sent (no
    /// `100 Continue`), and load nothing. StarRocks itself never does this.
    pub early_success: f64,
    /// A body cut on the way: commit only the first half of the rows, and answer
    /// `Success` counting those.
    pub short_body: f64,
}

/// How the endpoint is set up.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Serve the FE and/or the BE over TLS with this certificate (tests make one).
    pub tls: Option<EndpointTls>,
    pub user: String,
    pub password: String,
    pub faults: Faults,
    /// Keep every row (tests) or only count bytes and rows (benchmarks).
    pub keep_rows: bool,
    pub seed: u64,
    /// StarRocks' version, transaction and label limits (see [`limits`]).
    pub limits: ServerLimits,
    /// Bytes per second each BE connection is read at (`None`: as fast as it comes), for
    /// measuring a loader against a BE that drains slowly.
    pub be_read_rate: Option<u64>,
}

/// TLS for the dev endpoint: a serving certificate, and which listeners use it.
#[derive(Clone)]
pub struct EndpointTls {
    pub config: Arc<rustls::ServerConfig>,
    pub fe: bool,
    pub be: bool,
}

impl std::fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTls")
            .field("fe", &self.fe)
            .field("be", &self.be)
            .finish()
    }
}

/// What a connection of the FE or the BE runs over: TCP, or TLS on it.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            tls: None,
            user: "root".into(),
            password: String::new(),
            faults: Faults::default(),
            keep_rows: true,
            seed: 1,
            limits: ServerLimits::default(),
            be_read_rate: None,
        }
    }
}

/// A label's state, as `get_load_state` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelState {
    Prepare,
    Committed,
    Visible,
    Aborted,
}

impl LabelState {
    fn as_str(self) -> &'static str {
        match self {
            LabelState::Prepare => "PREPARE",
            LabelState::Committed => "COMMITTED",
            LabelState::Visible => "VISIBLE",
            LabelState::Aborted => "ABORTED",
        }
    }
}

/// One BE load request and how it ended.
#[derive(Clone, Debug)]
pub struct LoadRecord {
    pub label: String,
    pub table: String,
    /// `Success`, `Fail`, `Publish Timeout`, `Label Already Exists`, `503`, `dropped`, ...
    pub status: String,
    pub rows: usize,
    pub body_bytes: usize,
    pub at: Instant,
}

/// Everything the endpoint has seen and keeps.
#[derive(Debug, Default)]
pub struct State {
    pub labels: HashMap<String, LabelState>,
    /// Committed rows per `db.table`: JSON objects as sent, or CSV lines.
    pub rows: HashMap<String, Vec<String>>,
    pub loads: Vec<LoadRecord>,
    pub committed_rows: u64,
    pub committed_bytes: u64,
    pub fe_requests: u64,
    /// Body bytes that reached the FE (a correct client sends none there).
    pub fe_body_bytes: u64,
    pub auth_failures: u64,
    /// Requests refused for lacking `Expect: 100-continue`.
    pub missing_expect: u64,
    pub largest_body: usize,
    /// Merge Commit windows, in the order they opened (window n is `merge_commit_n`).
    pub windows: Vec<merge::MergeWindow>,
    /// Versions, running transactions, finished labels and commits, under the limits.
    pub ledger: limits::Ledger,
}

impl State {
    /// `label` ended: recorded as `state`, and the labels past `label_keep_max_num`
    /// forgotten.
    pub(crate) fn finish_label(&mut self, limits: &ServerLimits, label: &str, state: LabelState) {
        self.labels.insert(label.to_owned(), state);
        for gone in self.ledger.finished(limits, label) {
            self.labels.remove(&gone);
        }
    }
}

pub(crate) struct Shared {
    pub config: EndpointConfig,
    pub faults: Mutex<Faults>,
    pub state: Mutex<State>,
    pub rng: Mutex<fastrand::Rng>,
    pub committed: watch::Sender<u64>,
    /// How many loads have been recorded (for a feed of them).
    pub loads_seen: watch::Sender<usize>,
    pub be_addr: SocketAddr,
    /// `host:port` the FE redirects to; `None`: the BE's own address, or (when the BE
    /// listens on every interface) the host the client reached the FE by, with the BE's port.
    pub be_advertised: Option<String>,
}

impl Shared {
    /// Whether the BE serves TLS (the FE's redirects then say `https://`).
    pub fn be_tls(&self) -> bool {
        self.config.tls.as_ref().is_some_and(|t| t.be)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record_load(&self, load: LoadRecord) {
        let n = {
            let mut st = self.state();
            st.loads.push(load);
            st.loads.len()
        };
        self.loads_seen.send_replace(n);
    }

    /// Where the FE redirects a load to, given the `Host` the client sent the FE.
    pub fn be_location(&self, fe_host: Option<&str>) -> String {
        if let Some(a) = &self.be_advertised {
            return a.clone();
        }
        match fe_host {
            Some(host) if self.be_addr.ip().is_unspecified() => {
                let name = match host.rsplit_once(':') {
                    Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                    _ => host,
                };
                format!("{name}:{}", self.be_addr.port())
            }
            _ => self.be_addr.to_string(),
        }
    }

    pub fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64() < p
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether an `Authorization` header carries this endpoint's user and password.
    pub fn authorized(&self, header: Option<&str>) -> bool {
        use base64::Engine;
        let Some(token) = header.and_then(|h| h.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(token.trim()) else {
            return false;
        };
        raw == format!("{}:{}", self.config.user, self.config.password).as_bytes()
    }
}

/// A running endpoint. Dropping it stops it.
pub struct DevEndpoint {
    shared: Arc<Shared>,
    fe_addr: SocketAddr,
    stop: CancellationToken,
}

impl DevEndpoint {
    /// Starts FE and BE listeners on ephemeral loopback ports.
    pub async fn start(config: EndpointConfig) -> std::io::Result<Self> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(config, loopback, loopback, None).await
    }

    /// Starts FE and BE listeners on the given addresses; the FE redirects loads to
    /// `be_advertised` (`host:port`) when given (see [`Shared::be_location`]).
    pub async fn start_on(
        config: EndpointConfig,
        fe: SocketAddr,
        be: SocketAddr,
        be_advertised: Option<String>,
    ) -> std::io::Result<Self> {
        let fe = TcpListener::bind(fe).await?;
        let be = TcpListener::bind(be).await?;
        let (committed, _) = watch::channel(0);
        let (loads_seen, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            faults: Mutex::new(config.faults.clone()),
            rng: Mutex::new(fastrand::Rng::with_seed(config.seed)),
            config,
            state: Mutex::new(State::default()),
            committed,
            loads_seen,
            be_addr: be.local_addr()?,
            be_advertised,
        });
        let stop = CancellationToken::new();
        let fe_addr = fe.local_addr()?;
        tokio::spawn(serve(fe, shared.clone(), stop.clone(), Role::Fe));
        tokio::spawn(serve(be, shared.clone(), stop.clone(), Role::Be));
        Ok(Self {
            shared,
            fe_addr,
            stop,
        })
    }

    /// The BE's listening address.
    pub fn be_addr(&self) -> SocketAddr {
        self.shared.be_addr
    }

    /// Waits until more than `seen` loads are recorded; returns the new ones.
    pub async fn loads_after(&self, seen: usize) -> Vec<LoadRecord> {
        let mut rx = self.shared.loads_seen.subscribe();
        let _ = rx.wait_for(|n| *n > seen).await;
        self.state()
            .loads
            .get(seen..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// The FE URL to put in `feEndpoints`.
    pub fn fe_url(&self) -> String {
        let fe_tls = self.shared.config.tls.as_ref().is_some_and(|t| t.fe);
        let scheme = if fe_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.fe_addr)
    }

    /// Changes the faults for the requests that follow.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// Reads the endpoint's state.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Rows committed to `db.table`, in commit order (Merge Commit windows whose time
    /// is up count as committed, as they would be in StarRocks).
    pub fn rows(&self, table: &str) -> Vec<String> {
        self.shared.close_due_windows();
        self.state().rows.get(table).cloned().unwrap_or_default()
    }

    /// Waits until at least `n` rows are committed in all; `false` on timeout.
    pub async fn wait_for_rows(&self, n: u64, within: Duration) -> bool {
        let mut rx = self.shared.committed.subscribe();
        tokio::time::timeout(within, rx.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Rows committed so far, in all tables.
    pub fn committed_rows(&self) -> u64 {
        *self.shared.committed.borrow()
    }
}

impl Drop for DevEndpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone, Copy)]
enum Role {
    Fe,
    Be,
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken, role: Role) {
    let mut backoff = crate::accept::AcceptBackoff::new(match role {
        Role::Fe => "dev endpoint FE",
        Role::Be => "dev endpoint BE",
    });
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    backoff.failed(&e).await;
                    continue;
                }
            },
        };
        backoff.succeeded();
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        let tls = shared.config.tls.as_ref().filter(|t| match role {
            Role::Fe => t.fe,
            Role::Be => t.be,
        });
        let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        tokio::spawn(async move {
            let work = async {
                match acceptor {
                    Some(acceptor) => {
                        // A client that does not trust the certificate ends here.
                        if let Ok(stream) = acceptor.accept(stream).await {
                            role_connection(role, stream, &shared).await;
                        }
                    }
                    None => role_connection(role, stream, &shared).await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = work => {}
            }
        });
    }
}

async fn role_connection<S: Io>(role: Role, stream: S, shared: &Shared) {
    match (role, shared.config.be_read_rate) {
        (Role::Fe, _) => fe::connection(stream, shared).await,
        (Role::Be, None) => be::connection(stream, shared).await,
        (Role::Be, Some(rate)) => {
            be::connection(throttle::Throttled::new(stream, rate), shared).await
        }
    }
}

/// The JSON of a Stream Load answer, in StarRocks' field names.
pub(crate) fn load_answer(
    label: &str,
    status: &str,
    message: &str,
    rows: usize,
    bytes: usize,
    extra: &[(&str, serde_json::Value)],
) -> Vec<u8> {
    let mut v = serde_json::json!({
        "TxnId": 1000 + rows as u64,
        "Label": label,
        "Status": status,
        "Message": message,
        "NumberTotalRows": rows,
        "NumberLoadedRows": if status == "Success" || status == "Publish Timeout" { rows } else { 0 },
        "NumberFilteredRows": 0,
        "NumberUnselectedRows": 0,
        "LoadBytes": bytes,
        "LoadTimeMs": 1,
    });
    if let Some(map) = v.as_object_mut() {
        for (k, val) in extra {
            map.insert((*k).to_owned(), val.clone());
        }
    }
    v.to_string().into_bytes()
}
