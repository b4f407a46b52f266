//! Process signals, the same way for every role: SIGTERM or SIGINT ask it to stop, and
//! SIGHUP (whose default action would kill the process) is logged and ignored, or, in
//! the loader, reloads its config.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The stop signals (SIGTERM, SIGINT) as they arrive. Installing it also makes SIGHUP
/// harmless: each one is logged with `on_hangup`.
pub struct Terminations {
    term: Signal,
    int: Signal,
}

impl Terminations {
    pub fn install(on_hangup: &'static str) -> std::io::Result<Self> {
        Self::install_with(move || {
            tracing::warn!(signal = "SIGHUP", "SIGHUP ignored: {on_hangup}");
        })
    }

    /// The same, with each SIGHUP handed to `on_hangup`.
    pub fn install_with(mut on_hangup: impl FnMut() + Send + 'static) -> std::io::Result<Self> {
        let term = signal(SignalKind::terminate())?;
        let int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                on_hangup();
            }
        });
        Ok(Self { term, int })
    }

    /// Waits for the next SIGTERM or SIGINT; returns its name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
