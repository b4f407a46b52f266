//! The loader's running sinks: started at start, and by a reload that adds one; stopped
//! all together by a shutdown, or one alone by a reload that removes it. A sink's
//! socket can move: the new one is bound before the old one stops taking connections.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::task::TaskTracker;

use super::ack::AckWriters;
use super::batch::Chunk;
use super::metrics::SinkMetrics;
use super::reload::SinkHandle;
use super::shutdown::Phases;
use super::sink_task::{SinkTask, Stopping};
use super::socket::{self, Admission, Ingest};
use super::spool::store::{Replay, Spool};
use super::{open_spool, row_id, LoaderError, CHANNEL_CHUNKS};
use crate::api::config::parse_mode;
use crate::api::SinkSpec;
use crate::stream_load::client::SinkClient;
use crate::stream_load::LabelGen;

/// Every sink's metrics, removed sinks' included: their records are accounted for at
/// exit, and counters never go back.
pub type Registry = Arc<RwLock<Vec<Arc<SinkMetrics>>>>;

/// What starting and stopping a sink takes.
pub struct Sinks {
    prefix: String,
    phases: Phases,
    drain_after: Duration,
    deadline_after: Duration,
    ack_writers: TaskTracker,
    connections: Arc<Semaphore>,
    registry: Registry,
    tasks: TaskTracker,
}

/// A sink's socket side: what another accept loop for it needs.
pub struct Listening {
    ingest: Arc<Ingest>,
    /// Weak: the sink task's input ends once every accept loop and connection is gone.
    tx: mpsc::WeakSender<Chunk>,
    admission: Admission,
    /// The current listener's own stop and drain.
    phases: Phases,
}

impl Sinks {
    pub fn new(
        prefix: String,
        phases: Phases,
        (drain_after, deadline_after): (Duration, Duration),
        connections: Arc<Semaphore>,
    ) -> Self {
        Self {
            prefix,
            phases,
            drain_after,
            deadline_after,
            ack_writers: TaskTracker::new(),
            connections,
            registry: Registry::default(),
            tasks: TaskTracker::new(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn ack_writers(&self) -> &TaskTracker {
        &self.ack_writers
    }

    /// Opens the sink's spool off the async workers, then starts it: a sink a reload added.
    pub async fn add(&self, sink: &SinkSpec) -> Result<SinkHandle, LoaderError> {
        let opening = sink.clone();
        let spool = tokio::task::spawn_blocking(move || open_spool(&opening))
            .await
            .map_err(|e| LoaderError::Client {
                sink: sink.name.clone(),
                message: format!("opening the spool failed: {e}"),
            })??;
        self.start(sink, spool).await
    }

    /// Binds the sink's socket and starts its sink task and accept loop. Its labels and
    /// row ids get a start id of their own, so a sink removed and added again in one
    /// process never reuses one; it counts on in the metrics of its earlier instance.
    pub async fn start(
        &self,
        sink: &SinkSpec,
        spool: Option<(Spool, Replay)>,
    ) -> Result<SinkHandle, LoaderError> {
        let earlier = self
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|m| m.sink == sink.name)
            .cloned();
        let metrics = earlier
            .clone()
            .unwrap_or_else(|| Arc::new(SinkMetrics::new(&sink.name)));
        metrics.set_config(sink);
        let spool_max = spool.as_ref().map_or(0, |_| sink.spool_max_bytes.0);
        metrics.spool_max_bytes.store(spool_max, Ordering::Relaxed);
        if let Some((_, replay)) = &spool {
            for (_, damage) in &replay.damage {
                metrics.damaged(damage.kind());
            }
        }
        let listener = bind(sink).await?;
        let client = SinkClient::new(sink).map_err(|message| LoaderError::Client {
            sink: sink.name.clone(),
            message,
        })?;
        let phases = self.phases.child();
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let start_id = crate::stream_load::label::start_id();
        let labels = LabelGen::new(&self.prefix, &sink.name, &start_id);
        let row_ids = sink.row_id_column().map(|column| {
            let ids = row_id::RowIds::new(labels.base(), column, sink.format, sink.csv_separator());
            Arc::new(ids)
        });
        let (config, config_rx) = watch::channel(Arc::new(sink.clone()));
        let mut task =
            SinkTask::new(sink, labels, client, rx, metrics.clone()).with_config(config_rx);
        if let Some((spool, replay)) = spool {
            task = task.with_spool(spool, replay);
        }
        let stopping = Stopping {
            stop: phases.stop.clone(),
            deadline: phases.deadline.clone(),
        };
        let (stopped, name) = (phases.stop.clone(), sink.name.clone());
        self.tasks.spawn(async move {
            task.run(stopping).await;
            if !stopped.is_cancelled() {
                // Only a failed load or dead-letter task ends a sink task that was not
                // stopped: the loader stops as on SIGTERM (and exits non-zero, saying
                // what was lost), so that it is restarted rather than left half dead.
                tracing::error!(sink = %name, "the sink stopped working; stopping the loader");
                // SAFETY: kill(2) on this process with a signal it handles.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
            }
        });
        let acks = AckWriters::new(sink.acks, self.ack_writers.clone(), phases.deadline.clone());
        let listening = Listening {
            ingest: Arc::new(Ingest::new(sink, metrics.clone(), acks, row_ids)),
            tx: tx.downgrade(),
            admission: Admission {
                sink: Arc::new(Semaphore::new(sink.max_connections)),
                loader: self.connections.clone(),
            },
            phases: phases.child(),
        };
        listening.serve(listener, sink, tx);
        if earlier.is_none() {
            self.registry
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(metrics.clone());
        }
        tracing::info!(sink = %sink.name, socket = %sink.socket.display(), max_connections = sink.max_connections, format = sink.format.as_str(), table = %format!("{}.{}", sink.starrocks.database, sink.starrocks.table), "listening");
        Ok(SinkHandle {
            config,
            listening,
            metrics,
            phases,
        })
    }

    /// Moves a sink's socket to `sink.socket`: binds it, then stops the old listener as a
    /// shutdown would (no new connections; open ones read until the drain ends).
    pub async fn move_socket(
        &self,
        handle: &mut SinkHandle,
        sink: &SinkSpec,
    ) -> Result<(), LoaderError> {
        // The old accept loop still holds the sink's input open.
        let Some(tx) = handle.listening.tx.upgrade() else {
            return Ok(());
        };
        let listener = bind(sink).await?;
        let old = std::mem::replace(&mut handle.listening.phases, handle.phases.child());
        handle.listening.serve(listener, sink, tx);
        self.wind_down(old);
        Ok(())
    }

    /// Stops one sink as a shutdown stops them all: its socket takes no new connection,
    /// open ones are read until the drain ends, and what it holds is flushed and retried
    /// until the deadline (kept in its spool past it).
    pub fn remove(&self, handle: SinkHandle) {
        handle.metrics.set_removed();
        self.wind_down(handle.phases);
    }

    fn wind_down(&self, phases: Phases) {
        phases.stop.cancel();
        let (drain, deadline) = (self.drain_after, self.deadline_after);
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            phases.drain.cancel();
            tokio::time::sleep(deadline.saturating_sub(drain)).await;
            phases.deadline.cancel();
        });
    }

    /// Waits until every sink task has ended, which they do once a shutdown stops them.
    pub async fn wait(&self) {
        self.phases.stop.cancelled().await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Listening {
    /// Starts an accept loop on `listener`, sending into `tx`, stopped by this
    /// listener's phases.
    fn serve(&self, listener: tokio::net::UnixListener, sink: &SinkSpec, tx: mpsc::Sender<Chunk>) {
        tokio::spawn(socket::accept_loop(
            listener,
            sink.socket.clone(),
            self.ingest.clone(),
            tx,
            self.admission.clone(),
            self.phases.stop.clone(),
            self.phases.drain.clone(),
        ));
    }

    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }
}

async fn bind(sink: &SinkSpec) -> Result<tokio::net::UnixListener, LoaderError> {
    let mode = parse_mode(&sink.socket_mode).unwrap_or(0o660);
    socket::bind(Path::new(&sink.socket), mode)
        .await
        .map_err(|source| LoaderError::Socket {
            sink: sink.name.clone(),
            source,
        })
}
