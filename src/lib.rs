//! starsink: gets records from Kubernetes pods into StarRocks with Stream Load, without
//! losing or duplicating them.

pub mod api;
pub mod demo;
pub mod dev_endpoint;
pub mod http1;
pub mod loader;
pub mod operator;
pub mod stream_load;
pub mod telemetry;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Sets up `tracing` on stderr. `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
