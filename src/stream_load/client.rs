//! The Stream Load HTTP client: FE hop with headers only, redirect followed by hand with
//! credentials sent again, body sent once to the BE after `100 Continue`.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::api::sink::TlsSpec;
use crate::api::{MergeCommitSpec, SinkSpec};
use crate::http1::{Conn, Http1Error};
use crate::stream_load::body;
use crate::stream_load::response::{parse_load_state, LoadState};
use crate::stream_load::transport::{Stream, TlsClient};

/// Redirects followed per request: a follower FE may send us to the leader FE, which
/// sends us to a BE (stream-load.md, "Request").
const MAX_REDIRECTS: usize = 2;
/// How long to wait for `100 Continue` before sending the body anyway (RFC 9110 §10.1.1).
const CONTINUE_WAIT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER: usize = 1 << 20;

/// An HTTP endpoint, `host:port`, over TLS or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `https://`.
    pub tls: bool,
}

impl Endpoint {
    /// Parses `http://host[:port][/]` or `https://...` as written in `feEndpoints`
    /// (default port 8030, or 443 with https).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => {
                return Err(format!(
                    "`{url}` is not an http(s) URL; write it like http://starrocks-fe:8030"
                ))
            }
        };
        let authority = rest.trim_end_matches('/');
        if let Some((_, host)) = authority.rsplit_once('@') {
            // The URL is logged with every failed load; the password must not be in it.
            return Err(format!(
                "`http://…@{host}` carries credentials; remove `user:password@` from the URL and set starrocks.user and starrocks.passwordFile (in a StarRocksSink, credentialsSecretRef)"
            ));
        }
        if authority.contains('/') {
            return Err(format!(
                "`{url}` has a path; give only scheme, host and port, e.g. http://starrocks-fe:8030"
            ));
        }
        let default_port = if tls { 443 } else { 8030 };
        Self::from_authority(authority, default_port, tls).map_err(|e| format!("`{url}`: {e}"))
    }

    fn from_authority(authority: &str, default_port: u16, tls: bool) -> Result<Self, String> {
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, rest) = v6.split_once(']').ok_or("unclosed [ in host")?;
            let port = rest.strip_prefix(':');
            (format!("[{h}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err("no host".into());
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("bad port `{p}`"))?,
            None => default_port,
        };
        Ok(Self { host, port, tls })
    }

    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn is_loopback(&self) -> bool {
        matches!(self.host.as_str(), "127.0.0.1" | "localhost" | "[::1]")
    }
}

/// Splits an absolute `Location` into endpoint and path; a relative one stays on `base`.
fn parse_location(location: &str, base: &Endpoint) -> Result<(Endpoint, String), String> {
    if location.starts_with('/') {
        return Ok((base.clone(), location.to_owned()));
    }
    let (rest, tls) = match (
        location.strip_prefix("http://"),
        location.strip_prefix("https://"),
    ) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err(format!("redirect to unsupported location {location:?}")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    Ok((
        Endpoint::from_authority(authority, if tls { 443 } else { 80 }, tls)?,
        path.to_owned(),
    ))
}

/// Where the password comes from. A file is read again for each request, so a rotated
/// Secret reaches the loader without a restart.
#[derive(Clone, Debug)]
pub enum PasswordSource {
    None,
    Inline(String),
    File(PathBuf),
    Env(String),
}

impl PasswordSource {
    fn read(&self) -> Result<String, String> {
        match self {
            PasswordSource::None => Ok(String::new()),
            PasswordSource::Inline(p) => Ok(p.clone()),
            PasswordSource::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| format!("cannot read passwordFile {}: {e}", path.display())),
            PasswordSource::Env(var) => std::env::var(var)
                .map_err(|_| format!("environment variable {var} (passwordEnv) is not set")),
        }
    }
}

/// A failed exchange, split by whether StarRocks may have received the body.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No body byte left this process: re-sending is safe.
    #[error("{0}")]
    NotSent(String),
    /// The request could not be made because of the sink's configuration (a password
    /// file that cannot be read, an unset variable); nothing was sent.
    #[error("{0}")]
    Misconfigured(String),
    /// The body was (partly) sent and no answer came: the load may have committed.
    #[error("{0}")]
    Unknown(String),
}

/// A final answer to a Stream Load PUT.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// Whether the whole body was sent before this answer came.
    pub body_sent: bool,
}

/// How a sink reaches StarRocks: its FEs and credentials. Every request reads the
/// latest, so a changed config reaches loads already under way (a fixed password ends a
/// load that kept failing for the old one).
#[derive(Debug)]
pub struct Connection {
    endpoints: Vec<Endpoint>,
    /// For `https://` FEs and BEs: built when an FE is `https://` or `starrocks.tls` is set.
    tls: Option<TlsClient>,
    user: String,
    password: PasswordSource,
    request_timeout: Duration,
    rewrite_loopback: bool,
}

impl Connection {
    fn of(sink: &SinkSpec) -> Result<Self, String> {
        let sr = &sink.starrocks;
        let endpoints = sr
            .fe_endpoints
            .iter()
            .map(|e| Endpoint::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        let password = match (&sr.password, &sr.password_file, &sr.password_env) {
            (Some(p), _, _) => PasswordSource::Inline(p.clone()),
            (_, Some(f), _) => PasswordSource::File(f.clone()),
            (_, _, Some(v)) => PasswordSource::Env(v.clone()),
            _ => PasswordSource::None,
        };
        if sr.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            tracing::warn!(sink = %sink.name, "starrocks.tls.insecureSkipVerify is on: no StarRocks certificate is checked, so anyone on the network path can read the credentials and the rows; set caFile instead");
        }
        let tls = match (&sr.tls, endpoints.iter().any(|e| e.tls)) {
            (Some(spec), _) => Some(TlsClient::new(spec)?),
            (None, true) => Some(TlsClient::new(&TlsSpec::default())?),
            (None, false) => None,
        };
        Ok(Self {
            endpoints,
            tls,
            user: sr.user.clone(),
            password,
            request_timeout: sr.request_timeout.0,
            rewrite_loopback: sr.rewrite_loopback_redirect,
        })
    }

    fn authorization(&self) -> Result<String, String> {
        let password = self.password.read()?;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, password));
        Ok(format!("Basic {token}"))
    }
}

/// Where a batch goes and how StarRocks reads its body: the table, the headers, Merge
/// Commit. Fixed when the batch is sealed, so that a config change sends new batches
/// elsewhere while sealed ones go where their records were accepted for.
#[derive(Debug, PartialEq)]
pub struct Target {
    database: String,
    /// `db.table`, for logs.
    table: String,
    load_path: String,
    headers: String,
    /// Whether StarRocks' row count of a load is the number of records sent: not when
    /// a property changes what a row is (`json_root` can expand one record into many,
    /// `skip_header` drops lines).
    rows_as_sent: bool,
    /// Merge Commit, when the sink uses it: deliveries then go by [`crate::stream_load::merge`].
    merge_commit: Option<MergeCommitSpec>,
}

impl Target {
    pub fn of(sink: &SinkSpec) -> Self {
        let sr = &sink.starrocks;
        let mut headers = body::headers(sink.format, sink.csv_separator());
        if let Some(cols) = &sr.columns {
            headers.push_str(&format!("columns: {cols}\r\n"));
        }
        for (k, v) in &sr.properties {
            headers.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(mc) = &sr.merge_commit {
            // StarRocks merges only requests whose headers are identical: these are
            // the same from every loader of the sink (StreamLoadHttpHeader).
            headers.push_str(&format!(
                "enable_merge_commit: true\r\nmerge_commit_interval_ms: {}\r\nmerge_commit_parallel: {}\r\nmerge_commit_async: {}\r\n",
                mc.interval.0.as_millis(),
                mc.parallel,
                mc.asynchronous
            ));
        }
        Self {
            database: sr.database.clone(),
            table: format!("{}.{}", sr.database, sr.table),
            load_path: format!("/api/{}/{}/_stream_load", sr.database, sr.table),
            headers,
            rows_as_sent: !sr
                .properties
                .keys()
                .any(|k| ["json_root", "skip_header"].contains(&k.to_ascii_lowercase().as_str())),
            merge_commit: sr.merge_commit.clone(),
        }
    }

    /// `db.table`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Whether loads may run side by side: in Merge Commit async, a batch waiting for its
    /// window's transaction holds no connection, and the next batch should not wait a
    /// second window behind it.
    pub fn pipelines(&self) -> bool {
        self.merge_commit.as_ref().is_some_and(|mc| mc.asynchronous)
    }
}

/// A sink's client settings as they change: the connection every client of the sink
/// reads at each request, and the target new batches are sealed for.
pub struct SinkClient {
    connection: tokio::sync::watch::Sender<std::sync::Arc<Connection>>,
    target: std::sync::Arc<Target>,
}

impl SinkClient {
    /// The settings of a validated sink.
    pub fn new(sink: &SinkSpec) -> Result<Self, String> {
        let (connection, _) =
            tokio::sync::watch::channel(std::sync::Arc::new(Connection::of(sink)?));
        Ok(Self {
            connection,
            target: std::sync::Arc::new(Target::of(sink)),
        })
    }

    /// Takes a sink's changed config: the connection at once, for every client; the
    /// target for batches sealed from now on.
    pub fn reconfigure(&mut self, sink: &SinkSpec) -> Result<(), String> {
        self.connection
            .send_replace(std::sync::Arc::new(Connection::of(sink)?));
        self.target = std::sync::Arc::new(Target::of(sink));
        Ok(())
    }

    /// The target batches sealed now go to.
    pub fn target(&self) -> &std::sync::Arc<Target> {
        &self.target
    }

    /// A client for `target`, with no pooled connection yet.
    pub fn client(&self, target: &std::sync::Arc<Target>) -> StreamLoadClient {
        StreamLoadClient {
            connection: self.connection.subscribe(),
            target: target.clone(),
            current: 0,
            pooled: None,
        }
    }
}

/// One sink's Stream Load client for one target. Owned by one task at a time (a load),
/// so the pooled BE connection needs no lock.
pub struct StreamLoadClient {
    connection: tokio::sync::watch::Receiver<std::sync::Arc<Connection>>,
    target: std::sync::Arc<Target>,
    current: usize,
    pooled: Option<(Endpoint, Conn<Stream>)>,
}

impl StreamLoadClient {
    /// Builds the client for a validated sink, whose settings never change.
    pub fn new(sink: &SinkSpec) -> Result<Self, String> {
        let settings = SinkClient::new(sink)?;
        Ok(settings.client(&settings.target().clone()))
    }

    /// The target this client loads into.
    pub fn target(&self) -> &std::sync::Arc<Target> {
        &self.target
    }

    /// Points this client at another target (its pooled BE connection stays).
    pub fn retarget(&mut self, target: &std::sync::Arc<Target>) {
        self.target = target.clone();
    }

    /// The sink's Merge Commit settings, if it uses Merge Commit.
    pub fn merge_commit(&self) -> Option<&MergeCommitSpec> {
        self.target.merge_commit.as_ref()
    }

    /// The row count StarRocks should report for a load of `records`, when it can be
    /// known (see `rows_as_sent`).
    pub fn expected_rows(&self, records: u64) -> Option<u64> {
        self.target.rows_as_sent.then_some(records)
    }

    /// The connection settings in effect now. A change drops the pooled connection,
    /// which may lead to a BE of FEs no longer configured.
    fn connection(&mut self) -> std::sync::Arc<Connection> {
        if self.connection.has_changed().unwrap_or(false) {
            self.pooled = None;
        }
        self.connection.borrow_and_update().clone()
    }

    /// Connects to the first reachable FE, starting with the one that answered last.
    async fn connect_fe(&mut self, conn: &Connection) -> Result<(Endpoint, Conn<Stream>), String> {
        let mut errors = Vec::new();
        let n = conn.endpoints.len();
        for i in 0..n {
            let idx = (self.current + i) % n;
            let ep = conn.endpoints[idx].clone();
            match connect(&ep, conn.tls.as_ref()).await {
                Ok(c) => {
                    self.current = idx;
                    return Ok((ep, c));
                }
                Err(e) => errors.push(format!("{}: {e}", ep.authority())),
            }
        }
        Err(format!("no FE reachable ({})", errors.join("; ")))
    }

    /// Moves on to the next FE for the following request (after a 5xx, say).
    pub fn rotate_fe(&mut self) {
        let n = self.connection.borrow().endpoints.len().max(1);
        self.current = (self.current + 1) % n;
    }

    /// Sends one batch under `label`. The body crosses the network at most once per call.
    pub async fn put(&mut self, label: &str, body: &Bytes) -> Result<Answer, TransportError> {
        let mut body_sent = false;
        let settings = self.connection();
        let wait = settings.request_timeout;
        match timeout(wait, self.put_inner(&settings, label, body, &mut body_sent)).await {
            Ok(r) => r,
            Err(_) => {
                self.pooled = None;
                let msg = format!("no answer within requestTimeout {wait:?}");
                Err(if body_sent {
                    TransportError::Unknown(msg)
                } else {
                    TransportError::NotSent(msg)
                })
            }
        }
    }

    async fn put_inner(
        &mut self,
        settings: &Connection,
        label: &str,
        body: &Bytes,
        body_sent: &mut bool,
    ) -> Result<Answer, TransportError> {
        let auth = settings
            .authorization()
            .map_err(TransportError::Misconfigured)?;
        let (mut ep, mut conn) = self
            .connect_fe(settings)
            .await
            .map_err(TransportError::NotSent)?;
        let fe = ep.clone();
        let target = self.target.clone();
        let mut path = target.load_path.clone();
        let mut hops = 0;
        loop {
            let head = format!(
                "PUT {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nExpect: 100-continue\r\nContent-Length: {}\r\nlabel: {label}\r\n{}\r\n",
                ep.authority(),
                body.len(),
                target.headers,
            );
            let result = exchange(&mut conn, head.as_bytes(), body, body_sent).await;
            let (status, headers, answer) = match result {
                Ok(r) => r,
                Err(e) => {
                    let msg = format!("{}: {e}", ep.authority());
                    return Err(if *body_sent {
                        TransportError::Unknown(msg)
                    } else {
                        TransportError::NotSent(msg)
                    });
                }
            };
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                hops += 1;
                let location = headers.get("location").unwrap_or_default().to_owned();
                if hops > MAX_REDIRECTS {
                    return Err(TransportError::NotSent(format!(
                        "more than {MAX_REDIRECTS} redirects (last to {location})"
                    )));
                }
                let (mut next, next_path) =
                    parse_location(&location, &ep).map_err(TransportError::NotSent)?;
                check_redirect(settings, &ep, &next).map_err(TransportError::Misconfigured)?;
                if settings.rewrite_loopback && next.is_loopback() && !fe.is_loopback() {
                    next.host = fe.host.clone();
                }
                conn = match self.pooled.take() {
                    Some((pooled_ep, pooled)) if pooled_ep == next => pooled,
                    _ => connect(&next, settings.tls.as_ref()).await.map_err(|e| {
                        TransportError::NotSent(format!("{}: {e}", next.authority()))
                    })?,
                };
                ep = next;
                path = next_path;
                continue;
            }
            if !headers.wants_close() && *body_sent {
                self.pooled = Some((ep, conn));
            }
            return Ok(Answer {
                status,
                body: answer,
                body_sent: *body_sent,
            });
        }
    }

    /// Asks an FE for a label's state (`GET /api/{db}/get_load_state?label=L`).
    pub async fn load_state(&mut self, label: &str) -> Result<LoadState, String> {
        let settings = self.connection();
        let wait = settings.request_timeout;
        match timeout(wait, self.load_state_inner(&settings, label)).await {
            Ok(r) => r,
            Err(_) => Err(format!("get_load_state: no answer within {wait:?}")),
        }
    }

    async fn load_state_inner(
        &mut self,
        settings: &Connection,
        label: &str,
    ) -> Result<LoadState, String> {
        let auth = settings.authorization()?;
        let (mut ep, mut conn) = self.connect_fe(settings).await?;
        let database = &self.target.database;
        let mut path = format!("/api/{database}/get_load_state?label={label}");
        for _ in 0..=MAX_REDIRECTS {
            let head = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
                ep.authority()
            );
            conn.write_all(head.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let resp = conn.read_response_head().await.map_err(|e| e.to_string())?;
            if matches!(resp.status, 301 | 302 | 303 | 307 | 308) {
                let location = resp.headers.get("location").unwrap_or_default();
                let (next, next_path) = parse_location(location, &ep)?;
                check_redirect(settings, &ep, &next)?;
                conn = connect(&next, settings.tls.as_ref()).await?;
                ep = next;
                path = next_path;
                continue;
            }
            let body = conn
                .read_body(resp.headers.body_length(), MAX_ANSWER)
                .await
                .map_err(|e| e.to_string())?;
            return parse_load_state(resp.status, &body);
        }
        Err(format!(
            "get_load_state: more than {MAX_REDIRECTS} redirects"
        ))
    }
}

/// Refuses a redirect from `https://` to plain `http://` unless the sink allows it: the
/// next hop would carry the credentials and the rows in clear.
fn check_redirect(settings: &Connection, from: &Endpoint, to: &Endpoint) -> Result<(), String> {
    let allowed = settings.tls.as_ref().is_some_and(|t| t.allow_http_redirect);
    if from.tls && !to.tls && !allowed {
        return Err(format!(
            "{} redirected to http://{}, which is not TLS: the credentials and rows would cross the network in clear; give the BE TLS, or set starrocks.tls.allowHttpRedirect: true",
            from.authority(),
            to.authority()
        ));
    }
    Ok(())
}

async fn connect(ep: &Endpoint, tls: Option<&TlsClient>) -> Result<Conn<Stream>, String> {
    let host = ep.host.trim_start_matches('[').trim_end_matches(']');
    let tcp = match timeout(CONNECT_TIMEOUT, TcpStream::connect((host, ep.port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect failed: {e}")),
        Err(_) => return Err(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
    };
    let _ = tcp.set_nodelay(true);
    if !ep.tls {
        return Ok(Conn::new(Stream::Plain(tcp)));
    }
    let Some(tls) = tls else {
        return Err(format!(
            "{} is https://, and the sink has no TLS settings; set starrocks.tls",
            ep.authority()
        ));
    };
    match timeout(CONNECT_TIMEOUT, tls.connect(host, tcp)).await {
        Ok(r) => r.map(Conn::new),
        Err(_) => Err(format!("TLS handshake timed out after {CONNECT_TIMEOUT:?}")),
    }
}

/// Sends a head with `Expect: 100-continue`; sends the body only after `100 Continue`
/// (or after [`CONTINUE_WAIT`] of silence), never after a final answer such as a redirect.
async fn exchange(
    conn: &mut Conn<Stream>,
    head: &[u8],
    body: &Bytes,
    body_sent: &mut bool,
) -> Result<(u16, crate::http1::Headers, Bytes), Http1Error> {
    conn.write_all(head).await?;
    conn.flush().await?;
    let first = match timeout(CONTINUE_WAIT, conn.read_response_head()).await {
        Ok(r) => Some(r?),
        Err(_) => None,
    };
    let final_head = match first {
        Some(h) if h.status >= 200 => h,
        informational => {
            *body_sent = true;
            conn.write_all(body).await?;
            conn.flush().await?;
            if informational.is_some() {
                conn.read_response_head().await?
            } else {
                loop {
                    let h = conn.read_response_head().await?;
                    if h.status >= 200 {
                        break h;
                    }
                }
            }
        }
    };
    // A 307 carries at most a short body; the FE closes the connection after it anyway.
    let answer = conn
        .read_body(final_head.headers.body_length(), MAX_ANSWER)
        .await
        .or_else(|e| match final_head.status {
            300..=399 => Ok(Bytes::new()),
            _ => Err(e),
        })?;
    Ok((final_head.status, final_head.headers, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fe_endpoints_parse_with_and_without_port() {
        assert_eq!(
            Endpoint::parse("http://fe:8030/").unwrap(),
            Endpoint {
                host: "fe".into(),
                port: 8030,
                tls: false,
            }
        );
        assert_eq!(Endpoint::parse("http://fe").unwrap().port, 8030);
        assert_eq!(Endpoint::parse("http://[::1]:9").unwrap().host, "[::1]");
        let secure = Endpoint::parse("https://fe").unwrap();
        assert_eq!((secure.port, secure.tls), (443, true));
        assert!(Endpoint::parse("ftp://fe").is_err());
        assert!(Endpoint::parse("fe:8030").is_err());
        assert!(Endpoint::parse("http://fe:80/api").is_err());
        assert!(Endpoint::parse("http://fe:http").is_err());
        let e = Endpoint::parse("http://loader:hunter2@fe:8030").unwrap_err();
        assert!(
            e.contains("carries credentials") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn redirect_locations_keep_path_and_query() {
        let fe = Endpoint {
            host: "fe".into(),
            port: 8030,
            tls: false,
        };
        let (ep, path) =
            parse_location("http://10.0.0.5:8040/api/db/t/_stream_load?x=1", &fe).unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, path.as_str()),
            ("10.0.0.5", 8040, "/api/db/t/_stream_load?x=1")
        );
        let (ep, path) = parse_location("/other", &fe).unwrap();
        assert_eq!((ep, path.as_str()), (fe.clone(), "/other"));
        let (ep, _) = parse_location("https://be:8443/api", &fe).unwrap();
        assert_eq!((ep.port, ep.tls), (8443, true));
    }
}
