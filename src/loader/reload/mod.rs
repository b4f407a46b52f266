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
use crate::loader::shutdown::Phases;
use crate::loader::sinks::{Listening, Sinks};

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
    /// Its socket side: the record limit and acks of new connections, the listener.
    pub listening: Listening,
    pub metrics: Arc<SinkMetrics>,
    /// Its own stop, drain and deadline (a shutdown's, or its removal's).
    pub phases: Phases,
}

/// Reads the config again on each trigger until `stop`, and applies what changed.
pub async fn run(
    source: ConfigSource,
    mut running: LoaderConfig,
    sinks: Arc<Sinks>,
    mut handles: Vec<SinkHandle>,
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
        let mut sinks = Running {
            config: &mut running,
            sinks: &sinks,
            handles: &mut handles,
        };
        if !sinks.apply(plan, trigger).await {
            // Tried again on the next trigger, even with the same files.
            seen = sinks.config.clone();
        }
    }
}

/// The loader's sinks as a reload changes them.
struct Running<'a> {
    /// The config in effect.
    config: &'a mut LoaderConfig,
    sinks: &'a Sinks,
    handles: &'a mut Vec<SinkHandle>,
}

impl Running<'_> {
    /// Applies a plan: removed sinks stop, changed ones take their new config (a moved
    /// socket is bound first), added ones start; what needs a restart is logged as such.
    /// False if some of it failed (a socket or spool that cannot be had yet).
    async fn apply(&mut self, plan: Plan, trigger: Trigger) -> bool {
        for key in &plan.need_restart {
            tracing::warn!(setting = %key, "changed, but takes effect only after a restart (roll the pods); the rest of the config is applied");
        }
        for name in &plan.removed {
            if let Some(i) = self.handles.iter().position(|h| &h.metrics.sink == name) {
                self.sinks.remove(self.handles.remove(i));
                self.config.sinks.retain(|s| &s.name != name);
                tracing::info!(sink = %name, trigger = trigger.as_str(), "sink removed: it takes no new connection and stops as a shutdown would stop it");
            }
        }
        let mut done = true;
        for spec in plan.changed {
            done &= self.change(spec, trigger).await;
        }
        for spec in plan.added {
            match self.sinks.add(&spec).await {
                Ok(handle) => {
                    tracing::info!(sink = %spec.name, trigger = trigger.as_str(), hash = %crate::loader::metrics::config_hash(&spec), "sink added");
                    self.handles.push(handle);
                    self.config.sinks.push(spec);
                }
                Err(e) => {
                    done = false;
                    tracing::error!(sink = %spec.name, error = %e, "the added sink cannot start; it is tried again at the next change or SIGHUP");
                }
            }
        }
        done
    }

    /// One sink's new config. False if its socket could not move (it stays).
    async fn change(&mut self, mut spec: SinkSpec, trigger: Trigger) -> bool {
        let Some(handle) = self
            .handles
            .iter_mut()
            .find(|h| h.metrics.sink == spec.name)
        else {
            return true;
        };
        let Some(slot) = self.config.sinks.iter_mut().find(|s| s.name == spec.name) else {
            return true;
        };
        let mut done = true;
        if spec.socket != slot.socket {
            match self.sinks.move_socket(handle, &spec).await {
                Ok(()) => {
                    tracing::info!(sink = %spec.name, from = %slot.socket.display(), to = %spec.socket.display(), "socket moved: the old one takes no new connection and its open ones are read until the drain ends")
                }
                Err(e) => {
                    done = false;
                    tracing::error!(sink = %spec.name, error = %e, "the socket cannot move; it stays where it is (tried again at the next change or SIGHUP)");
                    spec.socket = slot.socket.clone();
                    spec.socket_mode = slot.socket_mode.clone();
                }
            }
        }
        handle.listening.ingest().reconfigure(&spec);
        handle.metrics.set_config(&spec);
        let hash = crate::loader::metrics::config_hash(&spec);
        *slot = spec.clone();
        handle.config.send_replace(Arc::new(spec));
        // Logged once the sink task has been handed the change: a record read after this
        // line is put in a batch of the new config (the task takes changes before records).
        tracing::info!(sink = %slot.name, trigger = trigger.as_str(), hash = %hash, "config change applied");
        done
    }
}

/// What a valid new config changes in the running loader.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Each sink whose config changed, as it will run: the new config, with every
    /// setting that needs a restart kept as it runs now.
    pub changed: Vec<SinkSpec>,
    /// Sinks in the new config only, and in the running one only.
    pub added: Vec<SinkSpec>,
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
            None => out.added.push(sink.clone()),
            Some(old) if old == sink => {}
            Some(old) => {
                let (runs, keys) = live_part(old, sink);
                let prefix = format!("sinks[{}]", sink.name);
                // What runs must be valid too: a live setting may need one that waits
                // for the restart (`acks: spooled` with a new `spoolDir`). Then the
                // whole change of the sink waits.
                let problems = crate::api::validate_sink(&runs, &prefix);
                if !problems.is_empty() && !keys.is_empty() {
                    let why: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    out.need_restart.push(format!(
                        "{prefix} (all of its change: without {} it would run with {})",
                        keys.join(", "),
                        why.join("; ")
                    ));
                    continue;
                }
                out.need_restart
                    .extend(keys.iter().map(|k| format!("{prefix}.{k}")));
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
        // record limit (for connections opened from now on), the socket (it moves).
        max_record_bytes: _,
        socket: _,
        starrocks: _,
        flush: _,
        retry: _,
        acks: _,
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
    // A mode is set as a socket is bound: with a move, it comes along.
    let same_socket = new.socket == old.socket;
    keep(
        same_socket && *socket_mode != old.socket_mode,
        "socketMode",
        &mut |r| r.socket_mode = old.socket_mode.clone(),
    );
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
