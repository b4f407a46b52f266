//! starsink: gets records from Kubernetes pods into StarRocks with Stream Load, without
//! losing or duplicating them.

pub mod accept;
pub mod api;
pub mod demo;
pub mod dev_endpoint;
pub mod http1;
pub mod loader;
pub mod log_writer;
pub mod operator;
pub mod signals;
pub mod stream_load;
pub mod telemetry;

/// `pow` for the whole process, from the `libm` crate (a port of musl's, within one ulp).
/// tokio's scheduler (the weight of its poll-time average) is the binary's only user of
/// the C math library; with this definition the linker needs nothing from `libm.so`, so
/// the process does not load it: relocating it and running its ifunc resolvers at start
/// kept about 0.5 MiB of it resident in every idle loader.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Sets up `tracing` on stderr, best-effort (see [`log_writer`]): a broken or unread
/// stderr costs log lines, never a panic or a blocked task. `RUST_LOG` overrides the
/// default level (`info`). Hold the guard until exit: dropping it flushes what is queued.
pub fn init_logging(format: LogFormat) -> Option<log_writer::LogGuard> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = match log_writer::stderr() {
        Some((w, g)) => (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(w),
            Some(g),
        ),
        None => (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            None,
        ),
    };
    // A failed write is not reported on stderr: that is where it just failed (and
    // reporting it there with eprintln! panics).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
