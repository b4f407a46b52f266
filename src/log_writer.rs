//! Logging that never decides whether data is flushed: log lines go to stderr from a
//! thread of their own, through a bounded queue. A stderr that is closed, broken or not
//! read (a full pipe) costs log lines, never a panic and never a blocked task; when the
//! queue is full, lines are dropped and counted.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Lines waiting for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 4096;
/// How long exit waits for queued lines to reach stderr.
const FLUSH_AT_EXIT: Duration = Duration::from_millis(500);

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// Hands out one writer per log event (a `tracing_subscriber` `MakeWriter`).
#[derive(Clone)]
pub struct MakeStderr {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

/// Flushes what is queued (for at most [`FLUSH_AT_EXIT`]) when dropped: hold it for the
/// process's life.
pub struct LogGuard {
    tx: SyncSender<Msg>,
}

/// Starts the writer thread; `None` if no thread can be started.
pub fn stderr() -> Option<(MakeStderr, LogGuard)> {
    let (tx, rx) = sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_lines(rx, std::io::stderr()))
        .ok()?;
    let make = MakeStderr {
        tx: tx.clone(),
        dropped: Arc::new(AtomicU64::new(0)),
    };
    Some((make, LogGuard { tx }))
}

fn write_lines(rx: Receiver<Msg>, mut out: impl Write) {
    for msg in rx {
        match msg {
            // Errors are ignored: there is nowhere left to report them.
            Msg::Line(line) => {
                let _ = out.write_all(&line);
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
}

impl MakeStderr {
    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let (done, wait) = sync_channel(1);
        if self.tx.try_send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(FLUSH_AT_EXIT);
        }
    }
}

/// One event's bytes, queued whole when the event is written.
pub struct EventWriter {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Line(line))
        {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeStderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that never finishes a write, like a pipe nobody reads.
    struct Stuck;
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stderr_that_never_drains_drops_lines_instead_of_blocking() {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        std::thread::spawn(move || write_lines(rx, Stuck));
        let make = MakeStderr {
            tx: tx.clone(),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        for _ in 0..QUEUE_LINES + 100 {
            let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&make);
            w.write_all(b"a line\n").unwrap();
        }
        assert!(make.dropped() >= 99, "dropped {}", make.dropped());
        let started = std::time::Instant::now();
        drop(LogGuard { tx });
        assert!(started.elapsed() < FLUSH_AT_EXIT * 4, "exit is not held up");
    }
}
