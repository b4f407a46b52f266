//! Live reload. The loader watches the files it was started with (and takes SIGHUP); a
//! changed config is read and validated in full first, and only a valid one is applied,
//! sink by sink, at a batch boundary ([`crate::loader::sink_task`]). A setting that
//! cannot change in a running loader is logged as needing a restart, and the rest of the
//! config still applies.

mod triggers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::config::{ConfigError, LoaderConfig};
use crate::api::units::HumanDuration;
use crate::api::SinkSpec;
use crate::loader::metrics::{ReloadCounts, SinkMetrics};
use crate::loader::socket::Ingest;

pub use triggers::{watch, Trigger};

/// Where the loader's config comes from, so that it can be read again.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    pub config: Option<PathBuf>,
    pub sink_files: Vec<PathBuf>,
    pub shutdown_timeout: Option<HumanDuration>,
    pub metrics_addr: Option<SocketAddr>,
}

impl ConfigSource {
    /// Reads, parses and validates the config, as at start.
    pub fn read(&self) -> Result<LoaderConfig, ConfigError> {
        LoaderConfig::assemble(
            self.config.as_deref(),
            &self.sink_files,
            self.shutdown_timeout,
            self.metrics_addr,
        )
    }

    /// The files the config is read from.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.config
            .iter()
            .chain(&self.sink_files)
            .map(PathBuf::as_path)
    }
}

/// A running sink, as a reload reaches it.
pub struct SinkHandle {
    /// The config its sink task runs.
    pub config: watch::Sender<Arc<SinkSpec>>,
    /// Its sockets' side: the record limit and acks of new connections.
    pub ingest: Arc<Ingest>,
    pub metrics: Arc<SinkMetrics>,
}

/// Reads the config again on each trigger until `stop`, and applies what changed.
pub async fn run(
    source: ConfigSource,
    mut running: LoaderConfig,
    sinks: Vec<SinkHandle>,
    mut triggers: mpsc::Receiver<Trigger>,
    counts: Arc<ReloadCounts>,
    stop: CancellationToken,
) {
    // The config last read: a trigger that finds it again changes nothing (a restart
    // still pending is not logged again).
    let mut seen = running.clone();
    loop {
        let trigger = tokio::select! {
            _ = stop.cancelled() => return,
            t = triggers.recv() => match t {
                Some(t) => t,
                None => return,
            },
        };
        let reading = source.clone();
        let read = tokio::task::spawn_blocking(move || reading.read()).await;
        let new = match read {
            Ok(Ok(new)) => new,
            Ok(Err(e)) => {
                counts.rejected.fetch_add(1, Relaxed);
                tracing::error!(
                    trigger = trigger.as_str(),
                    "{e}; the config in effect keeps running"
                );
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the config failed");
                continue;
            }
        };
        if new == seen {
            if trigger == Trigger::Signal {
                tracing::info!(trigger = trigger.as_str(), "config unchanged");
            }
            continue;
        }
        seen = new.clone();
        let plan = plan(&running, &new);
        counts.applied.fetch_add(1, Relaxed);
        apply(&mut running, plan, &sinks, trigger);
    }
}

/// Applies a plan: each changed sink gets its new config; what needs a restart is
/// logged as such. `running` becomes the config now in effect.
fn apply(running: &mut LoaderConfig, plan: Plan, sinks: &[SinkHandle], trigger: Trigger) {
    for key in &plan.need_restart {
        tracing::warn!(setting = %key, "changed, but takes effect only after a restart (roll the pods); the rest of the config is applied");
    }
    for sink in &plan.added {
        tracing::warn!(sink = %sink, "sink added: it starts only after a restart");
    }
    for sink in &plan.removed {
        tracing::warn!(sink = %sink, "sink removed: it keeps running until a restart");
    }
    for spec in plan.changed {
        let Some(handle) = sinks.iter().find(|h| h.metrics.sink == spec.name) else {
            continue;
        };
        handle.ingest.reconfigure(&spec);
        handle.metrics.set_config(&spec);
        tracing::info!(sink = %spec.name, trigger = trigger.as_str(), hash = %crate::loader::metrics::config_hash(&spec), "config change applied");
        if let Some(slot) = running.sinks.iter_mut().find(|s| s.name == spec.name) {
            *slot = spec.clone();
        }
        handle.config.send_replace(Arc::new(spec));
    }
}

/// What a valid new config changes in the running loader.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Each sink whose config changed, as it will run: the new config, with every
    /// setting that needs a restart kept as it runs now.
    pub changed: Vec<SinkSpec>,
    /// Sinks in the new config only, and in the running one only.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// The keys of changed settings that wait for a restart (`sinks[orders].spoolDir`).
    pub need_restart: Vec<String>,
}

/// Compares the config a loader runs with a new, valid one. Pure.
pub fn plan(running: &LoaderConfig, new: &LoaderConfig) -> Plan {
    let mut out = Plan::default();
    let loader_keys = [
        ("labelPrefix", running.label_prefix != new.label_prefix),
        (
            "shutdownTimeout",
            running.shutdown_timeout != new.shutdown_timeout,
        ),
        ("drainTimeout", running.drain_timeout != new.drain_timeout),
        ("metricsAddr", running.metrics_addr != new.metrics_addr),
    ];
    out.need_restart = loader_keys
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| (*key).to_owned())
        .collect();
    for sink in &new.sinks {
        match running.sinks.iter().find(|s| s.name == sink.name) {
            None => out.added.push(sink.name.clone()),
            Some(old) if old == sink => {}
            Some(old) => {
                let (runs, keys) = live_part(old, sink);
                let prefix = format!("sinks[{}].", sink.name);
                out.need_restart
                    .extend(keys.iter().map(|k| format!("{prefix}{k}")));
                if &runs != old {
                    out.changed.push(runs);
                }
            }
        }
    }
    out.removed = running
        .sinks
        .iter()
        .filter(|s| !new.sinks.iter().any(|n| n.name == s.name))
        .map(|s| s.name.clone())
        .collect();
    out
}

/// `new` as it can run in place of `old` without a restart, and the keys of the
/// settings kept from `old` because they need one. Every field is named here, so a new
/// field does not compile until it is said whether it can change live.
fn live_part(old: &SinkSpec, new: &SinkSpec) -> (SinkSpec, Vec<&'static str>) {
    let SinkSpec {
        name: _,
        // Live: flush, retry, the StarRocks target and connection, acks and the
        // record limit (for connections opened from now on).
        max_record_bytes: _,
        starrocks: _,
        flush: _,
        retry: _,
        acks: _,
        socket,
        socket_mode,
        max_connections,
        max_unfinished_bytes,
        format,
        column_separator,
        dead_letter_dir,
        spool_dir,
        spool_sync,
        spool_max_bytes,
    } = new;
    let mut runs = new.clone();
    let mut keys = Vec::new();
    let mut keep = |changed: bool, key: &'static str, put_back: &mut dyn FnMut(&mut SinkSpec)| {
        if changed {
            put_back(&mut runs);
            keys.push(key);
        }
    };
    keep(*socket != old.socket, "socket", &mut |r| {
        r.socket = old.socket.clone()
    });
    keep(*socket_mode != old.socket_mode, "socketMode", &mut |r| {
        r.socket_mode = old.socket_mode.clone()
    });
    keep(
        *max_connections != old.max_connections,
        "maxConnections",
        &mut |r| r.max_connections = old.max_connections,
    );
    keep(
        *max_unfinished_bytes != old.max_unfinished_bytes,
        "maxUnfinishedBytes",
        &mut |r| r.max_unfinished_bytes = old.max_unfinished_bytes,
    );
    keep(*format != old.format, "format", &mut |r| {
        r.format = old.format
    });
    keep(
        *column_separator != old.column_separator,
        "columnSeparator",
        &mut |r| r.column_separator = old.column_separator.clone(),
    );
    keep(
        *dead_letter_dir != old.dead_letter_dir,
        "deadLetterDir",
        &mut |r| r.dead_letter_dir = old.dead_letter_dir.clone(),
    );
    keep(*spool_dir != old.spool_dir, "spoolDir", &mut |r| {
        r.spool_dir = old.spool_dir.clone()
    });
    keep(*spool_sync != old.spool_sync, "spoolSync", &mut |r| {
        r.spool_sync = old.spool_sync
    });
    keep(
        *spool_max_bytes != old.spool_max_bytes,
        "spoolMaxBytes",
        &mut |r| r.spool_max_bytes = old.spool_max_bytes,
    );
    // Ids are written as records arrive: a batch half with and half without them, or
    // under two names, would not load. Merge Commit stays as it runs, whole.
    if old.row_id_column() != new.row_id_column() {
        runs.starrocks.merge_commit = old.starrocks.merge_commit.clone();
        keys.push("starrocks.mergeCommit (its rowIdColumn changed)");
    }
    (runs, keys)
}

#[cfg(test)]
mod tests;
