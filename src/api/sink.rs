//! `SinkSpec`: everything the loader needs to know about one sink. The fields a user
//! declares in a `StarRocksSink` too ([`Format`], `columnSeparator`, `maxRecordBytes`,
//! [`StarRocksSpec`], [`FlushSpec`], [`RetrySpec`], [`Acks`]) are the same Rust types with
//! the same words in both; what only a loader process has (socket, password sources, paths)
//! stays out of the resource's schema. The resource's spec is projected onto this type by
//! [`crate::api::StarRocksSinkSpec::to_sink_spec`], and a test there proves the two agree
//! field by field, docs included.
//!
//! Why two structs and not one: the resource's spec and a loader config differ in the
//! fields around the shared ones (a Secret reference and a `spool` object there, a socket
//! and flat spool paths here), and serde cannot flatten a shared part into both while
//! still refusing unknown keys (`deny_unknown_fields` does not work with `flatten`), which
//! is how a misspelt key in a loader config is caught.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::{ByteSize, HumanDuration};

/// One sink: a socket that producers write lines to, and the StarRocks table the lines
/// are loaded into.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkSpec {
    /// `[a-z0-9-]`, unique within a loader; part of every label.
    pub name: String,
    /// Path of the Unix stream socket producers connect to.
    pub socket: PathBuf,
    /// Octal file mode of the socket, e.g. "0666".
    #[serde(default = "defaults::socket_mode")]
    pub socket_mode: String,
    /// Producer connections served at once; more wait in the socket's backlog until one
    /// ends (their connect succeeds, their writes wait).
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Bound on the bytes held in unfinished lines (read, newline not yet seen) across
    /// all the sink's connections. Past it, the connection holding the longest one has
    /// that line rejected as `too_long`. Default: 16MiB, or twice `maxRecordBytes` if
    /// that is more (see [`SinkSpec::unfinished_budget`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unfinished_bytes: Option<ByteSize>,
    /// How each line is read and sent: `json`, one JSON object per line; `csv`, one row
    /// per line.
    #[serde(default)]
    pub format: Format,
    /// CSV only: the column separator (default `,`), sent as `column_separator`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column_separator: Option<String>,
    /// Longer lines are rejected, never sent. Default: 1MiB, or less when
    /// `flush.maxBytes` is smaller, so that one record always fits in a batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_record_bytes: Option<ByteSize>,
    /// The StarRocks cluster, database and table, and the Stream Load headers. In a
    /// `StarRocksSink` the user and password come from `credentialsSecretRef`.
    pub starrocks: StarRocksSpec,
    /// When a batch is sealed and loaded: whichever limit comes first.
    #[serde(default)]
    pub flush: FlushSpec,
    /// How transient load failures are retried, always under the batch's one label.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Where batches that StarRocks refuses for good are written. Default: `dead-letter`
    /// in the spool directory (so they outlive the pod, on the spool's volume), or without
    /// a spool a `dead-letter/<sink>` directory beside the socket.
    #[serde(default)]
    pub dead_letter_dir: Option<PathBuf>,
    /// Keep accepted records on disk here until StarRocks has them: they survive a crash,
    /// `kill -9` and a shutdown deadline, and the next start loads them under the same
    /// labels. Unset: records live in memory only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,
    /// When spooled records reach the disk (see [`SpoolSync`]).
    #[serde(default)]
    pub spool_sync: SpoolSync,
    /// Bound on the spool's disk use. While the spool holds this much, the sockets are not
    /// read (producers' writes wait); nothing is dropped. At least twice `flush.maxBytes`.
    #[serde(default = "defaults::spool_max_bytes")]
    pub spool_max_bytes: ByteSize,
    /// What the loader writes back to producers on their connection: `none`, `spooled`
    /// (needs a spool) or `committed`.
    #[serde(default)]
    pub acks: Acks,
}

/// Bytes a row id adds to a record at most: a 64-character column name, a label base of
/// at most 107 characters (see `stream_load::label`), and a sequence number, quoted.
pub const ROW_ID_ROOM: u64 = 256;

/// Acknowledgements written back on a producer's connection. With acks on, the loader
/// writes `ok N\n` once lines 1..N of the connection are settled (each one is safe as the
/// mode says, unless an `err` line named it) and `err LINE REASON\n` for each line that was
/// not accepted. Acks are cumulative and coalesced: a producer that never reads them is
/// never blocked by them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Nothing is written back.
    #[default]
    None,
    /// A line is acked once it is in the spool and synced as `spoolSync` says. Needs `spoolDir`.
    Spooled,
    /// A line is acked once StarRocks committed it; a batch StarRocks refused for good gets
    /// `err LINE dead_lettered` for each of its lines.
    Committed,
}

impl Acks {
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::None => "none",
            Acks::Spooled => "spooled",
            Acks::Committed => "committed",
        }
    }
}

/// When spooled records are synced to disk. A process crash (or `kill -9`) loses nothing
/// that was written under any policy: the kernel has it. A power cut or kernel crash loses
/// what was not yet synced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpoolSync {
    /// After every read from a producer: nothing is lost on a power cut; slowest.
    Always,
    /// At most 100ms or 4MiB after a write, whichever comes first.
    #[default]
    Interval,
    /// Left to the kernel (usually within 30s).
    Never,
}

impl SinkSpec {
    /// The directory dead-lettered batches of this sink go to.
    pub fn dead_letter_dir(&self) -> PathBuf {
        match (&self.dead_letter_dir, &self.spool_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(spool)) => spool.join("dead-letter"),
            (None, None) => self
                .socket
                .parent()
                .unwrap_or_else(|| std::path::Path::new("."))
                .join("dead-letter")
                .join(&self.name),
        }
    }

    /// The bound on bytes held in unfinished lines: `maxUnfinishedBytes`, or by default
    /// 16MiB or twice the longest record, whichever is more.
    pub fn unfinished_budget(&self) -> u64 {
        self.max_unfinished_bytes
            .map(|b| b.0)
            .unwrap_or_else(|| (16 << 20).max(self.max_record_bytes().saturating_mul(2)))
    }

    /// The longest record accepted: `maxRecordBytes`, or by default 1MiB capped so that
    /// one record always fits in a batch.
    pub fn max_record_bytes(&self) -> u64 {
        self.max_record_bytes
            .map(|b| b.0)
            .unwrap_or_else(|| defaults::max_record_bytes().0.min(self.record_room()))
    }

    /// The most a record may take in a batch before its row id: the batch less its
    /// brackets, and less [`ROW_ID_ROOM`] when the loader adds an id to each record.
    pub fn record_room(&self) -> u64 {
        let id = self.row_id_column().map_or(0, |_| ROW_ID_ROOM);
        self.flush.max_bytes.0.saturating_sub(2 + id)
    }

    /// The column the loader fills with each record's id (`mergeCommit.rowIdColumn`).
    pub fn row_id_column(&self) -> Option<&str> {
        self.starrocks
            .merge_commit
            .as_ref()?
            .row_id_column
            .as_deref()
    }

    /// The CSV column separator in effect (StarRocks' own default is `\t`; ours is `,`).
    pub fn csv_separator(&self) -> &str {
        self.column_separator.as_deref().unwrap_or(",")
    }
}

/// The bytes a `column_separator` stands for, read as StarRocks reads it (the FE's
/// `com.starrocks.analysis.Delimiter.convertDelimiter`): after a `\x` or `0x` prefix, in
/// either case, pairs of hex digits are the bytes (`\x01`); anything else is itself.
/// `Err` says why StarRocks would refuse a hex form (and with it every load).
pub fn separator_bytes(separator: &str) -> Result<Vec<u8>, &'static str> {
    let prefix = separator.get(..2).map(str::to_ascii_lowercase);
    if !matches!(prefix.as_deref(), Some("\\x" | "0x")) {
        return Ok(separator.as_bytes().to_vec());
    }
    let hex = &separator[2..];
    if hex.is_empty() {
        return Err("no hex digits after its prefix");
    }
    if !hex.len().is_multiple_of(2) {
        return Err("an odd number of hex digits");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or("a character that is not a hex digit")
}

/// How producers' lines are interpreted and sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line; sent as a JSON array with `strip_outer_array: true`.
    #[default]
    Json,
    /// One CSV row per line; sent as rows ending in `\n`.
    Csv,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

/// Where and how to Stream Load. In a `StarRocksSink` the user and password come from
/// the credentials Secret, so those fields are not part of the resource's schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StarRocksSpec {
    /// FE HTTP endpoints, `http://host:port` or `https://host:port`; the loader fails
    /// over between them.
    #[schemars(length(min = 1), inner(regex(pattern = r"^https?://[^/?#@\s]+/?$")))]
    pub fe_endpoints: Vec<String>,
    /// The database: 1-64 letters, digits and `_`, starting with a letter or `_`.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"))]
    pub database: String,
    /// The table: 1-64 letters, digits and `_`, starting with a letter or `_`.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"))]
    pub table: String,
    #[serde(default = "defaults::user")]
    #[schemars(skip)]
    pub user: String,
    /// The password inline. At most one of `password`, `passwordFile`, `passwordEnv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub password: Option<String>,
    /// A file holding the password (read again before each load, so a rotated
    /// Secret takes effect without a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub password_env: Option<String>,
    /// The `columns` Stream Load header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<String>,
    /// Any other Stream Load header, passed through as is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Bound on one HTTP exchange (connect, headers, body, answer).
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout: HumanDuration,
    /// Rewrite a redirect to `127.0.0.1`/`localhost` into the FE's own host. Only for
    /// single-node clusters whose BE advertises a loopback address.
    #[serde(default)]
    pub rewrite_loopback_redirect: bool,
    /// Merge Commit (StarRocks 3.4 or later): StarRocks merges the loads of every loader
    /// of this sink that arrive within `interval` into one transaction, so the table's
    /// versions stop growing with the number of pods. Delivery becomes at-least-once
    /// (StarRocks ignores the label); `rowIdColumn` makes it exactly-once on a Primary Key
    /// table. Unset: one labelled transaction per batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_commit: Option<MergeCommitSpec>,
    /// TLS for `https://` FE endpoints and for BE redirects to `https://`. Not in a
    /// `StarRocksSink` yet (its files are paths in the loader's container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub tls: Option<TlsSpec>,
}

/// How the loader checks the FEs' and BEs' certificates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM file of the CA certificates to trust. Default: the system's bundle,
    /// `/etc/ssl/certs/ca-certificates.crt` (the image has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The name the certificates must be issued for, when it is not the host in the
    /// URL (an FE reached by its IP address, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A client certificate (PEM, the chain) to present, for StarRocks or a proxy that
    /// asks for one; with `keyFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM); with `certFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Check no certificate at all: anyone on the path can then read the credentials and
    /// the rows. Logged as a warning at start and at each config change. Off by default.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Follow a redirect from `https://` to plain `http://` (a BE without TLS behind an
    /// FE with it). Off: such a load fails, since the BE hop would carry the credentials
    /// and the rows in clear.
    #[serde(default)]
    pub allow_http_redirect: bool,
}

/// Merge Commit settings, sent as Stream Load headers. StarRocks merges only requests
/// whose headers are identical, so every loader of a sink sends the same ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MergeCommitSpec {
    /// The merge window (`merge_commit_interval_ms`): loads that arrive within it are one
    /// transaction. 5s meets StarRocks' advice of one load per table every 5 seconds.
    pub interval: HumanDuration,
    /// `merge_commit_parallel`: how many BEs run a window's load (at most the BE count).
    #[serde(default = "defaults::merge_commit_parallel")]
    #[schemars(range(min = 1, max = 1024))]
    pub parallel: u32,
    /// `merge_commit_async`. `true`: StarRocks answers once the rows are in the window and
    /// the loader asks for the window's transaction until it commits (a batch counts as
    /// loaded, and is acked, only then). `false`: each request waits for the window's
    /// transaction to be visible, holding a BE HTTP thread meanwhile.
    #[serde(default = "defaults::merge_commit_async", rename = "async")]
    pub asynchronous: bool,
    /// A column the loader fills with an id unique to each record, fixed for its life
    /// (kept in the spool) and never reused: a JSON field, or the last CSV column. Make it
    /// the table's primary key (or part of it) and a re-sent record overwrites itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"))]
    pub row_id_column: Option<String>,
}

/// When a batch is sealed and loaded: whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlushSpec {
    /// The oldest buffered record is loaded at most this long after it arrived.
    #[serde(default = "defaults::interval")]
    pub interval: HumanDuration,
    /// Bound on the encoded Stream Load body.
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: ByteSize,
    #[serde(default = "defaults::max_rows")]
    #[schemars(range(min = 1, max = 1_000_000_000_000u64))]
    pub max_rows: u64,
    /// The longest the interval grows to while StarRocks pushes back (too many versions,
    /// transactions or requests): each such answer doubles the interval in effect, and
    /// every 3 loads in a row that meet none take a fifth off, down to `interval` again.
    /// Default: 60s, or `interval` if that is longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<HumanDuration>,
}

impl FlushSpec {
    /// The longest interval in effect: `maxInterval`, or 60s, never below `interval`.
    pub fn most_interval(&self) -> std::time::Duration {
        let most = self.max_interval.unwrap_or_else(defaults::max_interval).0;
        most.max(self.interval.0)
    }
}

impl Default for FlushSpec {
    fn default() -> Self {
        Self {
            interval: defaults::interval(),
            max_bytes: defaults::max_bytes(),
            max_rows: defaults::max_rows(),
            max_interval: None,
        }
    }
}

/// How transient load failures are retried (always with the batch's one label).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// First backoff; doubled on each failure, with jitter.
    #[serde(default = "defaults::min_backoff")]
    pub min_backoff: HumanDuration,
    #[serde(default = "defaults::max_backoff")]
    pub max_backoff: HumanDuration,
    /// A batch still failing for a transient reason (StarRocks down, 5xx, timeouts)
    /// after this long is logged as an error, and again each time as long again passes.
    /// It is never given up: it waits (in the spool, or in memory with producers held
    /// back) and is retried until it loads. Only data StarRocks refuses is dead-lettered.
    #[serde(default = "defaults::warn_after")]
    pub warn_after: HumanDuration,
    /// Removed (transient failures are never dead-lettered any more); read only so that
    /// the loader can warn that it is ignored and name `warnAfter`.
    #[serde(default, skip_serializing)]
    #[schemars(skip)]
    pub give_up_after: Option<serde::de::IgnoredAny>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            min_backoff: defaults::min_backoff(),
            max_backoff: defaults::max_backoff(),
            warn_after: defaults::warn_after(),
            give_up_after: None,
        }
    }
}

/// Defaults, in one place so the README can list them.
pub mod defaults {
    use super::*;

    pub fn socket_mode() -> String {
        "0660".into()
    }
    pub fn max_connections() -> usize {
        1024
    }
    pub fn max_record_bytes() -> ByteSize {
        ByteSize::mib(1)
    }
    pub fn user() -> String {
        "root".into()
    }
    pub fn request_timeout() -> HumanDuration {
        HumanDuration::from_secs(60)
    }
    pub fn interval() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub fn max_bytes() -> ByteSize {
        ByteSize::mib(64)
    }
    pub fn max_rows() -> u64 {
        500_000
    }
    pub fn merge_commit_parallel() -> u32 {
        3
    }
    pub fn merge_commit_async() -> bool {
        true
    }
    pub fn max_interval() -> HumanDuration {
        HumanDuration::from_secs(60)
    }
    pub fn min_backoff() -> HumanDuration {
        HumanDuration::from_millis(100)
    }
    pub fn max_backoff() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
    pub fn spool_max_bytes() -> ByteSize {
        ByteSize::gib(1)
    }
    pub fn warn_after() -> HumanDuration {
        HumanDuration::from_secs(600)
    }
    pub fn shutdown_timeout() -> HumanDuration {
        HumanDuration::from_secs(25)
    }
}
