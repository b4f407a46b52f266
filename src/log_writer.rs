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

impl LogGuard {
    /// Waits (at most `within`) until every line queued so far is on stderr, so that the
    /// next lines (the final accounting) find room in the queue.
    pub fn flush(&self, within: Duration) {
        let until = std::time::Instant::now() + within;
        let (done, wait) = sync_channel(1);
        let mut msg = Msg::Flush(done);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if std::time::Instant::now() < until => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = wait.recv_timeout(until.saturating_duration_since(std::time::Instant::now()));
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.flush(FLUSH_AT_EXIT);
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

    /// A stderr that is slow to start reading, keeping what it gets.
    struct Gated {
        go: Option<std::sync::mpsc::Receiver<()>>,
        out: Arc<std::sync::Mutex<Vec<u8>>>,
    }
    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Some(go) = self.go.take() {
                let _ = go.recv();
            }
            self.out.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flush_before_the_last_line_makes_room_for_it_in_a_full_queue() {
        let (go_tx, go) = sync_channel(1);
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let gated = Gated {
            go: Some(go),
            out: out.clone(),
        };
        std::thread::spawn(move || write_lines(rx, gated));
        let make = MakeStderr {
            tx: tx.clone(),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let line = |text: &[u8]| {
            let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&make);
            w.write_all(text).unwrap();
        };
        for _ in 0..QUEUE_LINES + 10 {
            line(b"busy\n");
        }
        assert!(make.dropped() > 0, "the queue is full");
        let guard = LogGuard { tx };
        // stderr starts draining a little later: a line written before then is dropped.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            go_tx.send(())
        });
        guard.flush(Duration::from_secs(10));
        line(b"loader stopped\n");
        drop(guard);
        reader.join().unwrap().unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert!(
            text.ends_with("busy\nloader stopped\n"),
            "{}",
            &text[text.len() - 40..]
        );
    }
}
