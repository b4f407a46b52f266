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
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::accept::AcceptBackoff;
use crate::api::{Format, SinkSpec};
use crate::loader::ack::{AckWriters, ConnAck, ReadProgress};
use crate::loader::batch::Chunk;
use crate::loader::chunker::{Chunked, Chunker};
use crate::loader::framing::{Line, LineFramer};
use crate::loader::line_budget::{Hold, LineBudget};
use crate::loader::metrics::SinkMetrics;
use crate::loader::record::RejectReason;
use crate::loader::row_id::RowIds;

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

/// What a sink's connections share, read-only: the line rules (format, longest record),
/// the sink's metrics and its rate-limited rejection log, where ack writers start, and the
/// bound on unfinished lines. A connection asks it for its framer, its acks and its
/// rejections; it holds nothing of any one connection.
pub struct Ingest {
    format: Format,
    /// `maxRecordBytes`, for connections opened from now on.
    max_record: std::sync::atomic::AtomicUsize,
    metrics: Arc<SinkMetrics>,
    acks: AckWriters,
    lines: Arc<LineBudget>,
    log: LogLimit,
    /// With Merge Commit's `rowIdColumn`: the ids written into records.
    row_ids: Option<Arc<RowIds>>,
}

impl Ingest {
    pub fn new(
        sink: &SinkSpec,
        metrics: Arc<SinkMetrics>,
        acks: AckWriters,
        row_ids: Option<Arc<RowIds>>,
    ) -> Self {
        Self {
            format: sink.format,
            max_record: record_limit(sink).into(),
            lines: LineBudget::new(sink.unfinished_budget(), metrics.unfinished_bytes.clone()),
            metrics,
            acks,
            log: LogLimit::default(),
            row_ids,
        }
    }

    /// Takes a changed config: `maxRecordBytes` and `acks` apply to the connections
    /// opened from now on (an open connection keeps the ones it was accepted with).
    pub fn reconfigure(&self, sink: &SinkSpec) {
        self.max_record
            .store(record_limit(sink), std::sync::atomic::Ordering::Relaxed);
        self.acks.set_mode(sink.acks);
    }

    /// Counts a line that was not accepted and logs it, at most 10 lines a second.
    fn reject(&self, reason: RejectReason, line_no: u64, detail: &str) {
        self.metrics.reject(reason);
        if let Some(suppressed) = self.log.allow() {
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
#[derive(Clone)]
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
    let bound = std::fs::symlink_metadata(&path).ok().map(|m| file_id(&m));
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
    // Only the file this listener was bound to: a sink added or moved since may have
    // bound a new one at the same path.
    let now = std::fs::symlink_metadata(&path).ok().map(|m| file_id(&m));
    if now.is_some() && now == bound {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::debug!(socket = %path.display(), error = %e, "could not remove socket file");
        }
    }
}

/// A file's identity: its device and inode.
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Reads one producer's lines until it closes, or until the shutdown drain ends. With
/// acks on, a writer task answers on the same connection (see [`crate::loader::ack`]).
async fn connection(
    stream: UnixStream,
    ingest: Arc<Ingest>,
    tx: mpsc::Sender<Chunk>,
    drain: CancellationToken,
) {
    let (read, write) = stream.into_split();
    // `_silent` holds the write half until the connection ends (see `AckWriters::start`).
    let (acks, _silent) = match ingest.acks.start(ingest.metrics.clone(), write) {
        Ok(acks) => (Some(acks), None),
        Err(write) => (None, Some(write)),
    };
    let mut reader = Reader::new(ingest, read, acks);
    loop {
        let eof = match reader.read(&drain).await {
            Ok(Some(eof)) => eof,
            Ok(None) => return reader.close("when the shutdown drain ended"),
            Err(e) => return reader.close(&format!("when the connection failed: {e}")),
        };
        let chunks = reader.frame(eof);
        if !reader.send(&tx, chunks).await || eof {
            return;
        }
    }
}

/// One connection's reading side: the socket, the framer and its buffer, where the
/// connection's lines are counted, and its share of the sink's unfinished-line bound.
struct Reader {
    ingest: Arc<Ingest>,
    read: OwnedReadHalf,
    framer: LineFramer,
    buf: BytesMut,
    /// Lines read so far, and the last that was a record.
    line_no: u64,
    last_record: u64,
    hold: Hold,
    /// The line being skipped was dropped for the sink's bound, not for its own length.
    evicted_line: bool,
    acks: Option<(Arc<ConnAck>, watch::Sender<ReadProgress>)>,
    /// The `maxRecordBytes` this connection was accepted with.
    max_record: usize,
}

impl Reader {
    fn new(
        ingest: Arc<Ingest>,
        read: OwnedReadHalf,
        acks: Option<(Arc<ConnAck>, watch::Sender<ReadProgress>)>,
    ) -> Self {
        let max_record = ingest.max_record.load(std::sync::atomic::Ordering::Relaxed);
        Self {
            max_record,
            framer: LineFramer::new(max_record),
            buf: BytesMut::with_capacity(READ_SIZE),
            line_no: 0,
            last_record: 0,
            hold: ingest.lines.join(),
            evicted_line: false,
            acks,
            read,
            ingest,
        }
    }

    /// Reads at most [`READ_SIZE`] more bytes (so a chunk is bounded, whatever the buffer
    /// grew to): `Some(eof)`, or `None` when the drain ended first. Drops the unfinished
    /// line if the sink's bound says so.
    async fn read(&mut self, drain: &CancellationToken) -> std::io::Result<Option<bool>> {
        loop {
            if self.hold.take_eviction() {
                self.drop_unfinished();
            }
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
                self.buf.reserve(READ_SIZE);
            }
            let mut limited = (&mut self.buf).limit(READ_SIZE);
            tokio::select! {
                biased;
                _ = drain.cancelled() => return Ok(None),
                _ = self.hold.evicted() => continue,
                r = self.read.read_buf(&mut limited) => return r.map(|n| Some(n == 0)),
            }
        }
    }

    /// Frames what was read into chunks; reports the rejected lines (counted, logged, and
    /// with acks an `err` each, queued before the progress that covers them).
    fn frame(&mut self, eof: bool) -> Vec<Chunk> {
        let arrived = Instant::now();
        let before = self.line_no;
        let ack = self.acks.as_ref().map(|(a, _)| a.clone());
        let mut chunker = Chunker::new(self.ingest.format, ack.clone(), arrived, self.buf.len())
            .with_row_ids(self.ingest.row_ids.clone());
        let (ingest, hold, max_record) = (&self.ingest, &self.hold, self.max_record);
        let (line_no, evicted_line) = (&mut self.line_no, &mut self.evicted_line);
        let mut each = |line: Line<'_>, span| {
            *line_no += 1;
            let Some(reason) = chunker.line(*line_no, &line, span) else {
                return;
            };
            let detail = match line {
                Line::TooLong(n) if std::mem::take(evicted_line) => format!(
                    "{n} bytes, dropped unfinished to keep the sink's unfinished lines within maxUnfinishedBytes {}",
                    hold.limit()
                ),
                Line::TooLong(n) => format!("{n} bytes is over maxRecordBytes {max_record}"),
                Line::Record(r) => preview(r),
            };
            ingest.reject(reason, *line_no, &detail);
        };
        let framed = self.framer.drain(&mut self.buf, &mut each);
        if eof {
            self.framer.finish(&mut self.buf, &mut each);
        }
        self.hold.set(self.buf.len() as u64);
        let Chunked {
            chunks,
            errs,
            last_record,
        } = chunker.finish(framed);
        self.last_record = last_record.unwrap_or(self.last_record);
        if let Some(a) = &ack {
            for run in errs {
                a.report(run.first, run.count, run.reason);
            }
        }
        let read_now = self.line_no - before;
        self.ingest.metrics.received.fetch_add(read_now, Relaxed);
        // Errs first, then progress, then the records: the writer never says `ok` past a
        // refused line before its `err` is queued.
        self.publish(eof);
        chunks
    }

    /// Hands the chunks to the sink task; false if it is gone. Waiting here is the
    /// backpressure: a full channel stops this socket's reads. The unfinished line held
    /// meanwhile still answers to the sink's bound.
    async fn send(&mut self, tx: &mpsc::Sender<Chunk>, chunks: Vec<Chunk>) -> bool {
        for chunk in chunks {
            let mut send = std::pin::pin!(tx.send(chunk));
            let sent = loop {
                tokio::select! {
                    sent = &mut send => break sent,
                    _ = self.hold.evicted() => {
                        if self.hold.take_eviction() {
                            self.drop_unfinished();
                        }
                    }
                }
            };
            if sent.is_err() {
                tracing::error!(sink = %self.ingest.metrics.sink, "sink task is gone; records of this connection are lost");
                return false;
            }
        }
        true
    }

    /// The connection ends before end of file: an unfinished line is rejected as
    /// `incomplete`, and the producer hears that nothing more will be read.
    fn close(&mut self, why: &str) {
        let pending = self.framer.pending(&self.buf);
        if pending > 0 {
            self.line_no += 1;
            self.ingest.metrics.received.fetch_add(1, Relaxed);
            let reason = RejectReason::Incomplete;
            let detail = format!("{pending} bytes of an unfinished line {why}");
            self.ingest.reject(reason, self.line_no, &detail);
            if let Some((a, _)) = &self.acks {
                a.report(self.line_no, 1, reason.as_str());
            }
        }
        self.publish(true);
    }

    fn publish(&self, done: bool) {
        if let Some((_, progress)) = &self.acks {
            progress.send_replace(ReadProgress {
                lines: self.line_no,
                last_record: self.last_record,
                done,
            });
        }
    }

    /// Drops this connection's unfinished line, told to by the sink's [`LineBudget`], and
    /// gives back the buffer it grew to.
    fn drop_unfinished(&mut self) {
        let dropped = self.framer.abandon(&mut self.buf);
        if self.buf.capacity() > 2 * READ_SIZE {
            self.buf = BytesMut::with_capacity(READ_SIZE);
        }
        self.hold.set(0);
        if dropped > 0 {
            self.evicted_line = true;
            let (ingest, line) = (&self.ingest, self.line_no + 1);
            if let Some(suppressed) = ingest.log.allow() {
                tracing::warn!(sink = %ingest.metrics.sink, line, bytes = dropped, limit = self.hold.limit(), suppressed, "unfinished lines hold more than maxUnfinishedBytes; dropping the longest (it will be rejected as too_long)");
            }
        }
    }
}

/// A sink's `maxRecordBytes` as a length.
fn record_limit(sink: &SinkSpec) -> usize {
    usize::try_from(sink.max_record_bytes()).unwrap_or(usize::MAX)
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
