//! The loader's configuration file (`starsink loader --config FILE`) and the checks that
//! turn a bad file into an error naming the key, the value and the fix.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sink::{defaults, Acks, Format, SinkSpec};
use super::units::{ByteSize, HumanDuration};

/// The whole loader configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoaderConfig {
    /// First part of every label. Default: the hostname (in Kubernetes, the pod's name).
    #[serde(default)]
    pub label_prefix: Option<String>,
    /// Total budget from SIGTERM to exit.
    #[serde(default = "defaults::shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
    /// How long open connections are still read after SIGTERM. Default: a fifth of
    /// `shutdownTimeout`, at most 5s.
    #[serde(default)]
    pub drain_timeout: Option<HumanDuration>,
    /// Serves `/metrics`, `/healthz` and `/readyz`. Off when unset.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    pub sinks: Vec<SinkSpec>,
}

impl LoaderConfig {
    pub fn drain_timeout(&self) -> Duration {
        match self.drain_timeout {
            Some(d) => d.0,
            None => (self.shutdown_timeout.0 / 5).min(Duration::from_secs(5)),
        }
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: LoaderConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: located(&e, text),
        })?;
        let issues = config.problems();
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                issues,
            })
        }
    }

    /// The configuration from command-line parts: an optional config file, sink files
    /// (each one sink's settings, as the controller renders them into `sink.yaml`) added to
    /// its sinks, and settings that override the file's. Validated as a whole.
    pub fn assemble(
        config: Option<&Path>,
        sink_files: &[PathBuf],
        shutdown_timeout: Option<HumanDuration>,
        metrics_addr: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let mut out = match config {
            Some(path) => {
                let text = read(path)?;
                serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: located(&e, &text),
                })?
            }
            None => LoaderConfig {
                label_prefix: None,
                shutdown_timeout: defaults::shutdown_timeout(),
                drain_timeout: None,
                metrics_addr: None,
                sinks: Vec::new(),
            },
        };
        let first_from_files = out.sinks.len();
        for file in sink_files {
            let text = read(file)?;
            let sink: SinkSpec = serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: file.clone(),
                message: located(&e, &text),
            })?;
            out.sinks.push(sink);
        }
        if let Some(t) = shutdown_timeout {
            out.shutdown_timeout = t;
        }
        if metrics_addr.is_some() {
            out.metrics_addr = metrics_addr;
        }
        let issues: Vec<(Option<usize>, ConfigIssue)> = out
            .problems()
            .into_iter()
            .map(|i| in_sink_file(i, first_from_files, sink_files))
            .collect();
        if issues.is_empty() {
            return Ok(out);
        }
        // The file named is the one every problem is in, when there is one.
        let file_of = |f: &Option<usize>| match f {
            Some(n) => sink_files.get(*n).cloned(),
            None => config.map(Path::to_owned),
        };
        let one_file = issues.iter().all(|(f, _)| *f == issues[0].0);
        let path = if one_file {
            file_of(&issues[0].0)
        } else {
            None
        }
        .or_else(|| config.map(Path::to_owned))
        .or_else(|| sink_files.first().cloned())
        .unwrap_or_default();
        let issues = issues
            .into_iter()
            .map(|(f, mut issue)| {
                if let (Some(_), false) = (f, one_file) {
                    let file = file_of(&f).unwrap_or_default();
                    issue.key = format!("{}: {}", file.display(), issue.key);
                }
                issue
            })
            .collect();
        Err(ConfigError::Invalid { path, issues })
    }

    /// Settings that no longer do anything: each is worth a warning, not a refusal (a
    /// config written for an earlier release must still start).
    pub fn ignored(&self) -> Vec<ConfigIssue> {
        self.sinks
            .iter()
            .enumerate()
            .filter(|(_, s)| s.retry.give_up_after.is_some())
            .map(|(i, _)| {
                ConfigIssue::new(
                    format!("sinks[{i}].retry.giveUpAfter"),
                    "is ignored: a batch failing for a transient reason is no longer dead-lettered but retried until it loads (it waits in the spool, or in memory while producers wait); remove it, and set retry.warnAfter for when such a wait is logged",
                )
            })
            .collect()
    }

    /// Every problem with this config, including those only the loader can check
    /// (files and environment it reads, uniqueness across sinks).
    pub fn problems(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.sinks.is_empty() {
            issues.push(ConfigIssue::new(
                "sinks",
                "no sinks are configured; add at least one under `sinks:`",
            ));
        }
        if self.shutdown_timeout.0.is_zero() {
            issues.push(ConfigIssue::new(
                "shutdownTimeout",
                "must be more than zero; it is the time from SIGTERM to exit, e.g. 25s",
            ));
        }
        if let Some(d) = self.drain_timeout {
            if d.0 >= self.shutdown_timeout.0 {
                issues.push(ConfigIssue::new(
                    "drainTimeout",
                    format!(
                        "{d} leaves no time to flush within shutdownTimeout {}; make it shorter",
                        self.shutdown_timeout
                    ),
                ));
            }
        }
        if let Some(prefix) = &self.label_prefix {
            if crate::stream_load::label::sanitize(prefix).is_empty() {
                issues.push(ConfigIssue::new(
                    "labelPrefix",
                    "is empty; leave it out to use the hostname",
                ));
            }
        }
        issues.extend(self.sink_problems());
        issues
    }
}

impl LoaderConfig {
    /// Each sink's own problems, and what two sinks may not share: a name, a socket, a
    /// spool directory (paths compared as spelled the same way).
    fn sink_problems(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut sockets: HashMap<PathBuf, usize> = HashMap::new();
        let mut spools: HashMap<PathBuf, usize> = HashMap::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let key = format!("sinks[{i}]");
            issues.extend(validate_sink(sink, &key));
            issues.extend(check_password_source(sink, &key));
            issues.extend(check_tls_files(sink, &key));
            let mut shared = |field: &str, value: String, first: usize, fix: &str| {
                issues.push(ConfigIssue::new(
                    format!("{key}.{field}"),
                    format!("`{value}` is also the {field} of sinks[{first}]; {fix}"),
                ));
            };
            if let Some(first) = names.insert(sink.name.as_str(), i) {
                shared(
                    "name",
                    sink.name.clone(),
                    first,
                    "sink names must be unique",
                );
            }
            if let Some(dir) = &sink.spool_dir {
                if let Some(first) = spools.insert(normalize(dir), i) {
                    let fix = "give each sink its own spool directory";
                    shared("spoolDir", dir.display().to_string(), first, fix);
                }
            }
            if let Some(first) = sockets.insert(normalize(&sink.socket), i) {
                let fix = "give each sink its own socket";
                shared("socket", sink.socket.display().to_string(), first, fix);
            }
        }
        issues
    }
}

/// A path as the file system will resolve it, for telling whether two spellings name
/// one file (`run/../run/orders.sock` and `./run/orders.sock`): made absolute, its
/// directory resolved (symlinks included) when it exists, and `.` and `..` taken out
/// by their meaning where it does not.
/// The TLS files a sink reads (the CA file, or the system bundle for an `https://` FE):
/// readable, and holding certificates.
fn check_tls_files(sink: &SinkSpec, key: &str) -> Option<ConfigIssue> {
    let sr = &sink.starrocks;
    let https = sr.fe_endpoints.iter().any(|e| e.starts_with("https://"));
    let spec = match &sr.tls {
        Some(spec) => spec.clone(),
        None if https => crate::api::sink::TlsSpec::default(),
        None => return None,
    };
    crate::stream_load::transport::TlsClient::new(&spec)
        .err()
        .map(|e| ConfigIssue::new(format!("{key}.starrocks.tls"), e))
}

fn normalize(p: &Path) -> PathBuf {
    let absolute = match std::env::current_dir() {
        Ok(cwd) if p.is_relative() => cwd.join(p),
        _ => p.to_owned(),
    };
    if let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name()) {
        if let Ok(dir) = std::fs::canonicalize(dir) {
            return dir.join(name);
        }
    }
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// One thing wrong with a config: where (`sinks[0].starrocks.table`) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is not valid: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config file {} has {} problem(s):\n{}", path.display(), issues.len(), list(issues))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

fn list(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A YAML error's message, with the line and column of the key it names when the
/// parser gives none (it gives none for an unknown key at the top of a file).
fn located(e: &serde_yaml::Error, text: &str) -> String {
    let message = e.to_string();
    if e.location().is_some() {
        return message;
    }
    let key = message
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key);
    let at = key.and_then(|key| {
        text.lines().position(|l| {
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
    });
    match at {
        Some(line) => format!("{message} at line {} column 1", line + 1),
        None => message,
    }
}

/// An issue of the assembled config, said where the user wrote it: one about sink
/// `sinks[n]` that came from sink file `n - first` gets that file's index and its key
/// within the file (`starrocks.table`, not `sinks[1].starrocks.table`).
fn in_sink_file(
    issue: ConfigIssue,
    first: usize,
    files: &[PathBuf],
) -> (Option<usize>, ConfigIssue) {
    let parsed = issue
        .key
        .strip_prefix("sinks[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(n, tail)| Some((n.parse::<usize>().ok()?, tail)));
    match parsed {
        Some((n, tail)) if n >= first && n - first < files.len() => {
            let key = match tail.trim_start_matches('.') {
                "" => "(the sink)".to_owned(),
                k => k.to_owned(),
            };
            let issue = ConfigIssue::new(key, issue.message);
            (Some(n - first), issue)
        }
        _ => (None, issue),
    }
}

/// Headers the loader sets itself; a `properties` entry may not override them.
const MANAGED_HEADERS: &[(&str, &str)] = &[
    ("label", "labels are made by starsink, one per batch"),
    ("format", "set `format` on the sink instead"),
    (
        "strip_outer_array",
        "starsink always sends JSON as an array",
    ),
    ("columns", "set `starrocks.columns` instead"),
    (
        "column_separator",
        "set `columnSeparator` on the sink instead",
    ),
    ("row_delimiter", "starsink always ends rows with \\n"),
    ("expect", "starsink always sends Expect: 100-continue"),
    (
        "authorization",
        "set `starrocks.user` and a password source instead",
    ),
    ("content-length", "starsink sets it from the batch"),
    ("host", "starsink sets it from the endpoint"),
    ("enable_merge_commit", "set `starrocks.mergeCommit` instead"),
    (
        "merge_commit_interval_ms",
        "set `starrocks.mergeCommit.interval` instead",
    ),
    (
        "merge_commit_parallel",
        "set `starrocks.mergeCommit.parallel` instead",
    ),
    (
        "merge_commit_async",
        "set `starrocks.mergeCommit.async` instead",
    ),
];

/// Checks one sink's settings on their own. Shared by the loader and the operator so
/// both reject the same things with the same words. `key` is where the sink sits,
/// e.g. `sinks[0]` or `spec`.
pub fn validate_sink(sink: &SinkSpec, key: &str) -> Vec<ConfigIssue> {
    let mut out = Vec::new();
    let mut bad =
        |field: &str, msg: String| out.push(ConfigIssue::new(format!("{key}.{field}"), msg));
    check_intake(sink, &mut bad);
    check_starrocks(sink, &mut bad);
    check_merge_commit(sink, &mut bad);
    check_batching(sink, &mut bad);
    out
}

/// Where records come in: the name, the socket, connections, format and record size.
///
/// Longer than a screen on purpose: a flat list of independent checks, each an `if` that
/// reads alone and whose message names the key, the value and the fix; splitting it
/// would only scatter them.
fn check_intake(sink: &SinkSpec, bad: &mut impl FnMut(&str, String)) {
    if !is_dns_label(&sink.name) {
        bad(
            "name",
            format!(
                "`{}` is not a valid sink name; use 1-63 characters of a-z, 0-9 and -, starting and ending with a letter or digit",
                sink.name
            ),
        );
    }
    if sink.socket.as_os_str().is_empty() {
        bad(
            "socket",
            "is empty; give the path of the Unix socket, e.g. /var/run/starsink/orders.sock".into(),
        );
    } else if sink.socket.as_os_str().len() > 107 {
        bad(
            "socket",
            format!(
                "`{}` is longer than the 107 bytes a Unix socket path may have; use a shorter path",
                sink.socket.display()
            ),
        );
    }
    if let Some(b) = sink.max_unfinished_bytes {
        if b.0 < sink.max_record_bytes() {
            bad(
                "maxUnfinishedBytes",
                format!(
                    "{b} is below the longest record accepted ({} bytes): such a record could never arrive; raise it or lower maxRecordBytes",
                    sink.max_record_bytes()
                ),
            );
        }
    }
    if sink.max_connections == 0 {
        bad(
            "maxConnections",
            "must be at least 1; it bounds the producer connections served at once, e.g. 1024"
                .into(),
        );
    }
    if parse_mode(&sink.socket_mode).is_none() {
        bad(
            "socketMode",
            format!(
                "`{}` is not an octal file mode; write it like \"0660\"",
                sink.socket_mode
            ),
        );
    }
    match (sink.format, &sink.column_separator) {
        (Format::Json, Some(_)) => bad(
            "columnSeparator",
            "only applies to format: csv; remove it or set format: csv".into(),
        ),
        (Format::Csv, Some(sep)) => match crate::api::sink::separator_bytes(sep) {
            Err(why) => bad(
                "columnSeparator",
                format!("{sep:?} is hex with {why}, which StarRocks refuses; write `\\x` and pairs of hex digits, e.g. \"\\x01\""),
            ),
            Ok(bytes) if bytes.is_empty() || bytes.iter().any(|b| matches!(b, b'\n' | b'\r')) => bad(
                "columnSeparator",
                format!("{sep:?} cannot separate columns; use a non-empty string without line breaks (`\\x0a`, `0x0d` are ones), e.g. \",\""),
            ),
            Ok(_) => {}
        },
        _ => {}
    }
    match sink.max_record_bytes {
        Some(m) if m.0 == 0 => bad("maxRecordBytes", "must be more than zero, e.g. 1MiB".into()),
        Some(m) if m.0 > sink.record_room() => bad(
            "maxRecordBytes",
            format!(
                "{m} does not fit in a batch of flush.maxBytes {}; make it at most {} bytes (the batch less its brackets{})",
                sink.flush.max_bytes,
                sink.record_room(),
                if sink.row_id_column().is_some() { " and each record's row id" } else { "" }
            ),
        ),
        _ => {}
    }
}

/// How StarRocks is reached: endpoints, table, user, password source, headers.
///
/// Longer than a screen on purpose: a flat list of independent checks, each an `if` that
/// reads alone and whose message names the key, the value and the fix; splitting it
/// would only scatter them.
fn check_starrocks(sink: &SinkSpec, bad: &mut impl FnMut(&str, String)) {
    let sr = &sink.starrocks;
    if sr.fe_endpoints.is_empty() {
        bad(
            "starrocks.feEndpoints",
            "is empty; list at least one FE, e.g. [\"http://starrocks-fe:8030\"]".into(),
        );
    }
    for (i, ep) in sr.fe_endpoints.iter().enumerate() {
        if let Err(e) = crate::stream_load::client::Endpoint::parse(ep) {
            bad(&format!("starrocks.feEndpoints[{i}]"), e);
        }
    }
    for (field, value) in [("database", &sr.database), ("table", &sr.table)] {
        if !is_identifier(value) {
            bad(
                &format!("starrocks.{field}"),
                format!("`{value}` is not an identifier; use 1-64 letters, digits and _, starting with a letter or _"),
            );
        }
    }
    if sr.user.is_empty() || sr.user.contains(':') {
        bad(
            "starrocks.user",
            format!(
                "`{}` is not a valid user name (empty, or contains ':')",
                sr.user
            ),
        );
    }
    let sources = [
        sr.password.is_some(),
        sr.password_file.is_some(),
        sr.password_env.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        bad(
            "starrocks",
            "sets more than one of password, passwordFile and passwordEnv; keep one".into(),
        );
    }
    if let Some(cols) = &sr.columns {
        if cols.trim().is_empty() || cols.contains(['\r', '\n']) {
            bad(
                "starrocks.columns",
                "must be a non-empty single line, e.g. \"id,name,ts\"".into(),
            );
        }
    }
    for (name, value) in &sr.properties {
        let k = format!("starrocks.properties.{name}");
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || name.is_empty()
        {
            bad(
                &k,
                "is not a valid header name; use letters, digits, _ and -".into(),
            );
        } else if let Some((_, why)) = MANAGED_HEADERS
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(name))
        {
            bad(&k, format!("cannot be set here: {why}"));
        }
        if value.contains(['\r', '\n']) {
            bad(&k, "value must be a single line".into());
        }
    }
    if sr.request_timeout.0.is_zero() {
        bad(
            "starrocks.requestTimeout",
            "must be more than zero, e.g. 60s".into(),
        );
    }
}

/// What Merge Commit needs (StarRocks' `STREAM_LOAD.md`, "Merge Commit parameters"; the
/// facts are in `shared/design/fleet.md` §1): a window and a parallelism above zero, no
/// `skip_header`, an answer awaited longer than the window in sync mode, and a row-id
/// column StarRocks will fill.
fn check_merge_commit(sink: &SinkSpec, bad: &mut impl FnMut(&str, String)) {
    let sr = &sink.starrocks;
    let Some(mc) = &sr.merge_commit else {
        return;
    };
    if mc.interval.0.is_zero() {
        bad(
            "starrocks.mergeCommit.interval",
            "must be more than zero; it is the merge window, e.g. 5s".into(),
        );
    }
    if mc.parallel == 0 {
        bad(
            "starrocks.mergeCommit.parallel",
            "must be at least 1, e.g. 3".into(),
        );
    }
    if !mc.asynchronous && sr.request_timeout.0 <= mc.interval.0 + Duration::from_secs(5) {
        bad(
            "starrocks.requestTimeout",
            format!(
                "{} is too short for mergeCommit with async: false, whose answer waits for the {} window and its publish; make it at least {}s longer than the window, or use async: true",
                sr.request_timeout, mc.interval, 5
            ),
        );
    }
    if let Some(k) = sr
        .properties
        .keys()
        .find(|k| k.eq_ignore_ascii_case("skip_header"))
    {
        bad(
            &format!("starrocks.properties.{k}"),
            "Merge Commit does not support skip_header; remove it or mergeCommit".into(),
        );
    }
    if let Some(column) = mc.row_id_column.as_ref().filter(|c| !is_identifier(c)) {
        bad(
            "starrocks.mergeCommit.rowIdColumn",
            format!("`{column}` is not a column name; use 1-64 letters, digits and _, starting with a letter or _"),
        );
        return;
    }
    let (Some(column), Some(columns)) = (&mc.row_id_column, &sr.columns) else {
        return;
    };
    let listed: Vec<&str> = columns.split(',').map(str::trim).collect();
    let fits = match sink.format {
        // A CSV row's last value is the id: the last column must take it.
        Format::Csv => listed.last() == Some(&column.as_str()),
        Format::Json => listed.contains(&column.as_str()),
    };
    if !fits {
        let where_ = match sink.format {
            Format::Csv => "end with it (the id is each row's last value)",
            Format::Json => "name it",
        };
        bad(
            "starrocks.columns",
            format!("`{columns}` must {where_}, since mergeCommit.rowIdColumn is `{column}`"),
        );
    }
}

/// How records wait and are sent: flush limits, the spool, acks and retries.
///
/// Longer than a screen on purpose, like `check_intake` and `check_starrocks`: a flat list
/// of independent checks.
fn check_batching(sink: &SinkSpec, bad: &mut impl FnMut(&str, String)) {
    let max_bytes = sink.flush.max_bytes.0;
    let f = &sink.flush;
    if f.interval.0.is_zero() {
        bad(
            "flush.interval",
            "must be more than zero; it bounds how long a record waits, e.g. 5s".into(),
        );
    }
    if max_bytes < 1024 {
        bad(
            "flush.maxBytes",
            format!(
                "{} is too small; use at least 1KiB (tens of MiB suit StarRocks best)",
                f.max_bytes
            ),
        );
    }
    if f.max_rows == 0 {
        bad(
            "flush.maxRows",
            "must be more than zero, e.g. 500000".into(),
        );
    }
    if let Some(most) = f.max_interval.filter(|m| m.0 < f.interval.0) {
        bad(
            "flush.maxInterval",
            format!(
                "{most} is below flush.interval {}; it is how far backpressure may widen the interval, so make it at least that (or leave it out: 60s)",
                f.interval
            ),
        );
    }
    if sink.spool_dir.is_some() {
        let need = max_bytes.saturating_mul(2);
        if sink.spool_max_bytes.0 < need {
            bad(
                "spoolMaxBytes",
                format!(
                    "{} cannot hold the two batches of flush.maxBytes {} a sink keeps (one loading, one filling); make it at least {}",
                    sink.spool_max_bytes,
                    f.max_bytes,
                    ByteSize(need)
                ),
            );
        }
    }
    if sink.acks == Acks::Spooled && sink.spool_dir.is_none() {
        bad(
            "acks",
            "`spooled` needs a spool to spool to; set spoolDir (spec.spool in a StarRocksSink), or use acks: committed".into(),
        );
    }
    let r = &sink.retry;
    if r.min_backoff.0.is_zero() {
        bad(
            "retry.minBackoff",
            "must be more than zero, e.g. 100ms".into(),
        );
    }
    if r.max_backoff < r.min_backoff {
        bad(
            "retry.maxBackoff",
            format!(
                "{} is below retry.minBackoff {}",
                r.max_backoff, r.min_backoff
            ),
        );
    }
    if r.warn_after.0.is_zero() {
        bad("retry.warnAfter", "must be more than zero, e.g. 10m".into());
    }
}

/// Checks that the password the sink names can be read now.
fn check_password_source(sink: &SinkSpec, key: &str) -> Vec<ConfigIssue> {
    let sr = &sink.starrocks;
    let mut out = Vec::new();
    if let Some(file) = &sr.password_file {
        if let Err(e) = std::fs::read(file) {
            out.push(ConfigIssue::new(
                format!("{key}.starrocks.passwordFile"),
                format!(
                    "cannot read {}: {e}; check the path and the file's permissions",
                    file.display()
                ),
            ));
        }
    }
    if let Some(var) = &sr.password_env {
        if std::env::var_os(var).is_none() {
            out.push(ConfigIssue::new(
                format!("{key}.starrocks.passwordEnv"),
                format!("environment variable `{var}` is not set; set it or use passwordFile"),
            ));
        }
    }
    out
}

/// Parses an octal file mode such as "0666".
pub fn parse_mode(s: &str) -> Option<u32> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8).ok()?;
    (m <= 0o777 && !s.is_empty()).then_some(m)
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::FlushSpec;

    const GOOD: &str = r#"
labelPrefix: orders-7f9c
sinks:
  - name: orders
    socket: /tmp/orders.sock
    starrocks:
      feEndpoints: ["http://fe:8030"]
      database: shop
      table: orders
"#;

    fn problems_of(yaml: &str) -> String {
        match LoaderConfig::parse(yaml, Path::new("test.yaml")) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_misspelt_top_level_key_is_named_with_its_line_and_column() {
        let text = "labelPrefix: x\n# comment\nsinkz:\n  - name: orders\n";
        let problems = problems_of(text);
        assert!(
            problems.contains("unknown field `sinkz`") && problems.contains("at line 3 column 1"),
            "{problems}"
        );
    }

    #[test]
    fn one_socket_spelled_two_ways_is_one_socket() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let yaml = |a: &Path, b: &Path| {
            format!("sinks:\n  - name: orders\n    socket: {}\n    starrocks: {{feEndpoints: [\"http://fe:8030\"], database: shop, table: orders}}\n  - name: payments\n    socket: {}\n    starrocks: {{feEndpoints: [\"http://fe:8030\"], database: shop, table: payments}}\n", a.display(), b.display())
        };
        let plain = run.join("orders.sock");
        for other in [
            run.join("..").join("run").join("orders.sock"),
            run.join(".").join("orders.sock"),
            dir.path()
                .join("missing")
                .join("..")
                .join("run")
                .join("orders.sock"),
        ] {
            let problems = problems_of(&yaml(&plain, &other));
            assert!(
                problems.contains("sinks[1].socket")
                    && problems.contains("give each sink its own socket"),
                "{other:?}: {problems}"
            );
        }
        assert_eq!(problems_of(&yaml(&plain, &run.join("payments.sock"))), "");
    }

    #[test]
    fn a_problem_in_a_sink_file_names_that_file_and_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let sink = |name: &str, table: &str| {
            format!("name: {name}\nsocket: /tmp/{name}.sock\nstarrocks:\n  feEndpoints: [\"http://fe:8030\"]\n  database: shop\n  table: \"{table}\"\n")
        };
        let good = dir.path().join("orders-sink.yaml");
        let bad = dir.path().join("bad-sink.yaml");
        std::fs::write(&good, sink("orders", "orders")).unwrap();
        std::fs::write(&bad, sink("payments", "")).unwrap();
        let files = [good.clone(), bad.clone()];
        let Err(ConfigError::Invalid { path, issues }) =
            LoaderConfig::assemble(None, &files, None, None)
        else {
            panic!("an empty table is refused")
        };
        assert_eq!(path, bad);
        assert!(
            issues.iter().all(|i| i.key.starts_with("starrocks.table")),
            "{issues:?}"
        );
        // Problems in two files: each names its file.
        std::fs::write(&good, sink("orders", "")).unwrap();
        let Err(ConfigError::Invalid { issues, .. }) =
            LoaderConfig::assemble(None, &files, None, None)
        else {
            panic!("refused")
        };
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("{}: starrocks.table", good.display())))
                && keys
                    .iter()
                    .any(|k| k.starts_with(&format!("{}: starrocks.table", bad.display()))),
            "{keys:?}"
        );
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let c = LoaderConfig::parse(GOOD, Path::new("t")).unwrap();
        let s = &c.sinks[0];
        assert_eq!(s.format, Format::Json);
        assert_eq!(s.flush.interval.0, Duration::from_secs(5));
        assert_eq!(s.flush.max_bytes.0, 64 << 20);
        assert_eq!(s.flush.max_rows, 500_000);
        assert_eq!(s.max_record_bytes(), 1 << 20);
        assert_eq!(s.socket_mode, "0660");
        assert_eq!(s.starrocks.user, "root");
        assert_eq!(c.shutdown_timeout.0, Duration::from_secs(25));
        assert_eq!(c.drain_timeout(), Duration::from_secs(5));
        assert_eq!(
            s.dead_letter_dir(),
            PathBuf::from("/tmp/dead-letter/orders")
        );
        assert_eq!(s.retry.warn_after.0, Duration::from_secs(600));
    }

    #[test]
    fn with_a_spool_dead_letters_live_on_its_volume() {
        let c = LoaderConfig::parse(
            &GOOD.replace(
                "socket: /tmp/orders.sock",
                "socket: /tmp/orders.sock\n    spoolDir: /spool/pod-1/orders",
            ),
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(
            c.sinks[0].dead_letter_dir(),
            PathBuf::from("/spool/pod-1/orders/dead-letter")
        );
    }

    #[test]
    fn the_removed_give_up_after_is_ignored_with_a_warning_naming_what_replaced_it() {
        let c = LoaderConfig::parse(
            &GOOD.replace(
                "socket: /tmp/orders.sock",
                "socket: /tmp/orders.sock\n    retry:\n      giveUpAfter: 10m",
            ),
            Path::new("t"),
        )
        .expect("a config written for an earlier release still starts");
        let ignored: Vec<String> = c.ignored().iter().map(|i| i.to_string()).collect();
        assert_eq!(ignored.len(), 1, "{ignored:?}");
        assert!(
            ignored[0].starts_with("sinks[0].retry.giveUpAfter: is ignored")
                && ignored[0].contains("retry.warnAfter"),
            "{ignored:?}"
        );
        assert!(LoaderConfig::parse(GOOD, Path::new("t"))
            .unwrap()
            .ignored()
            .is_empty());
    }

    #[test]
    fn an_unknown_format_is_named_with_its_key() {
        let e = problems_of(&GOOD.replace(
            "socket: /tmp/orders.sock",
            "socket: /tmp/o.sock\n    format: parquet",
        ));
        assert!(
            e.contains("sinks[0].format") && e.contains("parquet"),
            "{e}"
        );
    }

    #[test]
    fn a_misspelt_key_is_refused_not_ignored() {
        let e = problems_of(&GOOD.replace("table: orders", "table: orders\n      tabel: x"));
        assert!(e.contains("tabel"), "{e}");
    }

    #[test]
    fn a_table_that_is_not_an_identifier_is_refused() {
        let e = problems_of(&GOOD.replace("table: orders", "table: \"orders; drop\""));
        assert!(
            e.contains("sinks[0].starrocks.table") && e.contains("not an identifier"),
            "{e}"
        );
    }

    #[test]
    fn a_zero_interval_is_refused() {
        let e = problems_of(&GOOD.replace(
            "table: orders",
            "table: orders\n    flush:\n      interval: 0s",
        ));
        assert!(
            e.contains("sinks[0].flush.interval") && e.contains("more than zero"),
            "{e}"
        );
    }

    #[test]
    fn a_max_interval_below_the_interval_is_refused_and_an_unset_one_follows_it() {
        let e = problems_of(&GOOD.replace(
            "table: orders",
            "table: orders\n    flush:\n      interval: 2m\n      maxInterval: 30s",
        ));
        assert!(
            e.contains("sinks[0].flush.maxInterval") && e.contains("below flush.interval 2m"),
            "{e}"
        );
        let flush = |interval: u64| FlushSpec {
            interval: HumanDuration::from_secs(interval),
            ..FlushSpec::default()
        };
        assert_eq!(flush(5).most_interval(), Duration::from_secs(60));
        assert_eq!(flush(120).most_interval(), Duration::from_secs(120));
    }

    #[test]
    fn merge_commit_is_refused_where_starrocks_cannot_merge() {
        let with = |mc: &str, more: &str| {
            problems_of(&GOOD.replace(
                "table: orders",
                &format!("table: orders\n      mergeCommit: {mc}{more}"),
            ))
        };
        assert_eq!(
            with("{interval: 5s}", ""),
            "",
            "async by default, 3 in parallel"
        );
        let e = with("{interval: 0s, parallel: 0}", "");
        assert!(
            e.contains("sinks[0].starrocks.mergeCommit.interval")
                && e.contains("sinks[0].starrocks.mergeCommit.parallel"),
            "{e}"
        );
        let e = with("{interval: 60s, async: false}", "");
        assert!(
            e.contains("sinks[0].starrocks.requestTimeout") && e.contains("async: true"),
            "{e}"
        );
        let e = with(
            "{interval: 5s}",
            "\n      properties: {skip_header: \"1\", merge_commit_parallel: \"9\"}",
        );
        assert!(e.contains("does not support skip_header"), "{e}");
        assert!(
            e.contains("set `starrocks.mergeCommit.parallel` instead"),
            "{e}"
        );
        let e = with(
            "{interval: 5s, rowIdColumn: rid}",
            "\n      columns: \"id,name\"",
        );
        assert!(
            e.contains("sinks[0].starrocks.columns") && e.contains("must name it"),
            "{e}"
        );
        assert_eq!(
            with(
                "{interval: 5s, rowIdColumn: rid}",
                "\n      columns: \"id,rid\""
            ),
            ""
        );
    }

    #[test]
    fn an_unreadable_password_file_is_refused() {
        let e = problems_of(&GOOD.replace(
            "table: orders",
            "table: orders\n      passwordFile: /nonexistent/pw",
        ));
        assert!(
            e.contains("sinks[0].starrocks.passwordFile") && e.contains("/nonexistent/pw"),
            "{e}"
        );
    }

    #[test]
    fn an_unset_password_env_is_refused() {
        let e = problems_of(&GOOD.replace(
            "table: orders",
            "table: orders\n      passwordEnv: STARSINK_TEST_SURELY_UNSET",
        ));
        assert!(e.contains("STARSINK_TEST_SURELY_UNSET"), "{e}");
    }

    #[test]
    fn two_sinks_on_one_socket_are_refused() {
        let two = format!(
            "{GOOD}{}",
            r#"  - name: clicks
    socket: /tmp/./orders.sock
    starrocks:
      feEndpoints: ["http://fe:8030"]
      database: shop
      table: clicks
"#
        );
        let e = problems_of(&two);
        assert!(
            e.contains("sinks[1].socket") && e.contains("sinks[0]"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = problems_of(
            &GOOD
                .replace("name: orders", "name: Orders_1")
                .replace("http://fe:8030", "ftp://fe"),
        );
        assert!(
            e.contains("sinks[0].name") && e.contains("sinks[0].starrocks.feEndpoints[0]"),
            "{e}"
        );
    }

    #[test]
    fn managed_headers_cannot_be_overridden_through_properties() {
        let e = problems_of(&GOOD.replace(
            "table: orders",
            "table: orders\n      properties: {label: x, timeout: \"600\"}",
        ));
        assert!(
            e.contains("properties.label") && !e.contains("properties.timeout"),
            "{e}"
        );
    }

    #[test]
    fn a_csv_column_separator_that_holds_a_line_break_or_is_bad_hex_is_refused_however_written() {
        let with = |sep: &str| {
            problems_of(&GOOD.replace(
                "table: orders",
                &format!("table: orders\n    format: csv\n    columnSeparator: '{sep}'"),
            ))
        };
        let breaks = ["", "\\x0a", "\\x0D", "\\x2c0a", "0x0a", "\\X0d", "0X2C0A"];
        // Hex forms StarRocks refuses (`Delimiter.convertDelimiter`).
        let not_hex = ["\\x", "0x1", "\\xzz", "0X0g"];
        for bad in breaks.into_iter().chain(not_hex) {
            assert!(with(bad).contains("columnSeparator"), "{bad:?} was taken");
        }
        for good in [",", "|", "\\x01", "0x2c", "\\t", "x0a"] {
            assert_eq!(with(good), "", "{good:?} was refused");
        }
    }

    #[test]
    fn a_column_separator_on_a_json_sink_is_refused() {
        let e = problems_of(
            &GOOD.replace("table: orders", "table: orders\n    columnSeparator: \",\""),
        );
        assert!(e.contains("columnSeparator"), "{e}");
    }

    #[test]
    fn records_larger_than_a_batch_are_refused() {
        let e = problems_of(&GOOD.replace(
            "table: orders",
            "table: orders\n    maxRecordBytes: 2MiB\n    flush: {maxBytes: 1MiB}",
        ));
        assert!(e.contains("sinks[0].maxRecordBytes"), "{e}");
    }

    #[test]
    fn the_default_record_limit_shrinks_to_fit_a_small_batch() {
        let c = LoaderConfig::parse(
            &GOOD.replace(
                "table: orders",
                "table: orders\n    flush: {maxBytes: 64KiB}",
            ),
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(c.sinks[0].max_record_bytes(), (64 << 10) - 2);
    }

    #[test]
    fn socket_modes_are_octal() {
        assert_eq!(parse_mode("0666"), Some(0o666));
        assert_eq!(parse_mode("660"), Some(0o660));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_mode("01777"), None);
    }
}
