//! Socket ingest: one Unix stream socket per sink, one task per connection. A connection
//! task frames and checks lines and hands whole records to the sink task; it never
//! touches the batch.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::AcceptBackoff;
use crate::api::{Acks, Format, SinkSpec};
use crate::loader::ack::{self, ReadProgress};
use crate::loader::batch::Chunk;
use crate::loader::chunker::{Chunked, Chunker};
use crate::loader::framing::{Line, LineFramer};
use crate::loader::line_budget::{Hold, LineBudget};
use crate::loader::metrics::SinkMetrics;
use crate::loader::record::RejectReason;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket {path} is in use by a live process (a connect to it succeeded); stop that process or choose another `socket` path")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; remove it or choose another `socket` path")]
    NotASocket { path: PathBuf },
    #[error("cannot create socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds a sink's socket. A leftover socket file is replaced only after a connect to it
/// fails; a socket some process still serves is never taken over.
pub async fn bind(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    let err = |source| SocketError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(SocketError::InUse {
                    path: path.to_owned(),
                })
            }
            Err(_) => {
                tracing::info!(socket = %path.display(), "replacing a stale socket file (nothing answered on it)");
                std::fs::remove_file(path).map_err(err)?;
            }
        },
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Everything a connection task needs, shared read-only by a sink's connections.
pub struct Ingest {
    pub format: Format,
    pub max_record: usize,
    pub metrics: Arc<SinkMetrics>,
    pub acks: Acks,
    /// Where connections' ack writers run; the loader waits for them before it exits.
    pub ack_writers: TaskTracker,
    /// The shutdown deadline: ack writers give up at it.
    pub deadline: CancellationToken,
    /// The bound on bytes held in unfinished lines across the sink's connections.
    pub lines: Arc<LineBudget>,
    limit: LogLimit,
}

impl Ingest {
    pub fn new(
        sink: &SinkSpec,
        metrics: Arc<SinkMetrics>,
        ack_writers: TaskTracker,
        deadline: CancellationToken,
    ) -> Self {
        Self {
            format: sink.format,
            max_record: usize::try_from(sink.max_record_bytes()).unwrap_or(usize::MAX),
            metrics: metrics.clone(),
            acks: sink.acks,
            ack_writers,
            deadline,
            lines: LineBudget::new(sink.unfinished_budget(), metrics.unfinished_bytes.clone()),
            limit: LogLimit::default(),
        }
    }

    fn reject(&self, reason: RejectReason, line_no: u64, detail: &str) {
        self.metrics.reject(reason);
        if let Some(suppressed) = self.limit.allow() {
            tracing::warn!(
                sink = %self.metrics.sink,
                reason = reason.as_str(),
                line = line_no,
                suppressed,
                "rejected a line: {detail}"
            );
        }
    }
}

/// How many producer connections may be open: per sink (`maxConnections`) and across
/// the loader ([`crate::accept::connection_budget`]). A connection holds one permit of
/// each while it lasts; without both, the next one waits in the socket's backlog.
pub struct Admission {
    pub sink: Arc<Semaphore>,
    pub loader: Arc<Semaphore>,
}

impl Admission {
    async fn permits(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let sink = self.sink.clone().acquire_owned().await.ok()?;
        let loader = self.loader.clone().acquire_owned().await.ok()?;
        Some((sink, loader))
    }
}

/// Accepts connections until `stop`, then removes the socket file. Each connection gets
/// its own task holding a clone of `tx` and its permits; the sink's channel closes when
/// the last ends.
pub async fn accept_loop(
    listener: UnixListener,
    path: PathBuf,
    ingest: Arc<Ingest>,
    tx: mpsc::Sender<Chunk>,
    admission: Admission,
    stop: CancellationToken,
    drain: CancellationToken,
) {
    let mut backoff = AcceptBackoff::new(format!("sink {}", ingest.metrics.sink));
    let serve = |stream, permits| {
        let (ingest, tx, drain) = (ingest.clone(), tx.clone(), drain.clone());
        tokio::spawn(async move {
            connection(stream, ingest, tx, drain).await;
            drop(permits);
        });
    };
    loop {
        let permits = tokio::select! {
            _ = stop.cancelled() => break,
            p = admission.permits() => p,
        };
        let Some(permits) = permits else { break };
        let Some((stream, _)) = backoff.next(&stop, || listener.accept()).await else {
            break;
        };
        serve(stream, permits);
    }
    // Connections a producer already made (still in the backlog) are taken in too: its
    // connect succeeded, so it may have written and closed already. Each waits for its
    // permits until the drain ends.
    loop {
        let permits = tokio::select! {
            _ = drain.cancelled() => break,
            p = admission.permits() => p,
        };
        let Some(permits) = permits else { break };
        tokio::select! {
            biased;
            r = listener.accept() => match r {
                Ok((stream, _)) => serve(stream, permits),
                Err(_) => break,
            },
            _ = std::future::ready(()) => break,
        }
    }
    drop(listener);
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::debug!(socket = %path.display(), error = %e, "could not remove socket file");
    }
}

/// Reads one producer's lines until it closes, or until the shutdown drain ends. With
/// acks on, a writer task answers on the same connection (see [`crate::loader::ack`]).
async fn connection(
    stream: UnixStream,
    ingest: Arc<Ingest>,
    tx: mpsc::Sender<Chunk>,
    drain: CancellationToken,
) {
    let (mut read, write) = stream.into_split();
    let mut acks = None;
    // Without acks the write half is held, untouched, while the connection lasts:
    // dropping it would shut our side down, and a producer such as `socat -` takes that
    // end of file as the end of the session and may stop sending.
    let mut _silent = None;
    if ingest.acks != Acks::None {
        let (ack, progress, writer) =
            ack::channel(ingest.metrics.clone(), write, ingest.deadline.clone());
        ingest.ack_writers.spawn(writer);
        acks = Some((ack, progress));
    } else {
        _silent = Some(write);
    }
    let ack = acks.as_ref().map(|(a, _)| a.clone());
    let publish = |lines: u64, last_record: u64, done: bool| {
        if let Some((_, progress)) = &acks {
            progress.send_replace(ReadProgress {
                lines,
                last_record,
                done,
            });
        }
    };
    let unfinished = |line_no: u64, pending: usize, why: &str| {
        ingest.metrics.received.fetch_add(1, Relaxed);
        ingest.reject(
            RejectReason::Incomplete,
            line_no + 1,
            &format!("{pending} bytes of an unfinished line {why}"),
        );
        if let Some(a) = &ack {
            a.report(line_no + 1, 1, RejectReason::Incomplete.as_str());
        }
    };

    let mut framer = LineFramer::new(ingest.max_record);
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut line_no: u64 = 0;
    let mut last_record: u64 = 0;
    let hold = ingest.lines.join();
    // The line being skipped was dropped for the sink's bound, not for its own length.
    let mut evicted_line = false;
    loop {
        if hold.take_eviction() {
            evicted_line |= drop_unfinished(&ingest, &hold, &mut framer, &mut buf, line_no + 1);
        }
        if buf.capacity() - buf.len() < READ_SIZE / 4 {
            buf.reserve(READ_SIZE);
        }
        // At most READ_SIZE a read, whatever the buffer grew to: a chunk is bounded.
        let mut limited = (&mut buf).limit(READ_SIZE);
        let r = tokio::select! {
            biased;
            _ = drain.cancelled() => {
                let pending = framer.pending(&buf);
                if pending > 0 {
                    unfinished(line_no, pending, "when the shutdown drain ended");
                    line_no += 1;
                }
                publish(line_no, last_record, true);
                return;
            }
            _ = hold.evicted() => continue,
            r = read.read_buf(&mut limited) => r,
        };
        let arrived = Instant::now();
        let eof = match r {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                let pending = framer.pending(&buf);
                if pending > 0 {
                    unfinished(
                        line_no,
                        pending,
                        &format!("when the connection failed: {e}"),
                    );
                    line_no += 1;
                }
                publish(line_no, last_record, true);
                return;
            }
        };
        let before = line_no;
        let mut chunker = Chunker::new(ingest.format, ack.clone(), arrived, buf.len());
        let mut each = |line: Line<'_>| {
            line_no += 1;
            let Some(reason) = chunker.line(line_no, &line) else {
                return;
            };
            let detail = match line {
                Line::TooLong(n) if std::mem::take(&mut evicted_line) => format!(
                    "{n} bytes, dropped unfinished to keep the sink's unfinished lines within maxUnfinishedBytes {}",
                    hold.limit()
                ),
                Line::TooLong(n) => format!("{n} bytes is over maxRecordBytes {}", ingest.max_record),
                Line::Record(r) => preview(r),
            };
            ingest.reject(reason, line_no, &detail);
        };
        framer.drain(&mut buf, &mut each);
        if eof {
            framer.finish(&mut buf, &mut each);
        }
        hold.set(buf.len() as u64);
        let Chunked {
            chunks,
            errs,
            last_record: last,
        } = chunker.finish();
        last_record = last.unwrap_or(last_record);
        if let Some(a) = &ack {
            for run in errs {
                a.report(run.first, run.count, run.reason);
            }
        }
        ingest.metrics.received.fetch_add(line_no - before, Relaxed);
        // Errs first, then progress, then the records: the writer never says `ok` past a
        // refused line before its `err` is queued.
        publish(line_no, last_record, eof);
        for chunk in chunks {
            // Waiting here is the backpressure: a full channel stops this socket's reads.
            // The unfinished line held meanwhile still answers to the sink's bound.
            let mut send = std::pin::pin!(tx.send(chunk));
            let sent = loop {
                tokio::select! {
                    sent = &mut send => break sent,
                    _ = hold.evicted() => {
                        if hold.take_eviction() {
                            evicted_line |=
                                drop_unfinished(&ingest, &hold, &mut framer, &mut buf, line_no + 1);
                        }
                    }
                }
            };
            if sent.is_err() {
                tracing::error!(sink = %ingest.metrics.sink, "sink task is gone; records of this connection are lost");
                return;
            }
        }
        if eof {
            return;
        }
    }
}

/// Drops this connection's unfinished line, told to by the sink's [`LineBudget`], and
/// gives back the buffer it grew to. True if a line was dropped.
fn drop_unfinished(
    ingest: &Ingest,
    hold: &Hold,
    framer: &mut LineFramer,
    buf: &mut BytesMut,
    line: u64,
) -> bool {
    let dropped = framer.abandon(buf);
    if buf.capacity() > 2 * READ_SIZE {
        *buf = BytesMut::with_capacity(READ_SIZE);
    }
    hold.set(0);
    if dropped > 0 {
        if let Some(suppressed) = ingest.limit.allow() {
            tracing::warn!(sink = %ingest.metrics.sink, line, bytes = dropped, limit = hold.limit(), suppressed, "unfinished lines hold more than maxUnfinishedBytes; dropping the longest (it will be rejected as too_long)");
        }
    }
    dropped > 0
}

fn preview(line: &[u8]) -> String {
    let cut = &line[..line.len().min(80)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if line.len() > 80 {
        s.push('…');
    }
    format!("{s:?}")
}

/// Lets through at most 10 log lines a second and counts the rest.
#[derive(Default)]
struct LogLimit {
    second: AtomicU64,
    in_second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    /// `Some(suppressed since the last line logged)` when this one may be logged.
    fn allow(&self) -> Option<u64> {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs();
        if self.second.swap(now, Relaxed) != now {
            self.in_second.store(0, Relaxed);
        }
        if self.in_second.fetch_add(1, Relaxed) < 10 {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}
