use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use starsink::loader::reload::ConfigSource;
use starsink::loader::shutdown::EXIT_CONFIG;
use starsink::LogFormat;

/// Gets records from Kubernetes pods into StarRocks, without losing or duplicating them.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log as human-readable lines or as JSON objects.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// The sidecar: reads records from Unix sockets and loads them with Stream Load.
    /// Reads its config again when the files change, and on SIGHUP.
    #[command(group(
        clap::ArgGroup::new("source")
            .required(true)
            .multiple(true)
            .args(["config", "sink_files"])
    ))]
    Loader {
        /// The loader's YAML configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One sink's settings (the `sink.yaml` the controller renders); repeatable. Added
        /// to the config file's sinks.
        #[arg(long = "sink-file")]
        sink_files: Vec<PathBuf>,
        /// Overrides `shutdownTimeout` (the injector sets it from the pod's grace period).
        #[arg(long)]
        shutdown_timeout: Option<starsink::api::HumanDuration>,
        /// Overrides `metricsAddr`.
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Prints manifests with the loader injected into their pods, as the webhook would.
    Inject(InjectArgs),
    /// Shows the whole loader path on this machine, against a local Stream Load endpoint.
    Demo(starsink::demo::DemoArgs),
    /// Prints the StarRocksSink CustomResourceDefinition (what `crds/` holds).
    Crd,
    /// The operator: reconciles StarRocksSinks into loader ConfigMaps and status.
    Controller(starsink::operator::ControllerArgs),
    /// A local Stream Load endpoint that behaves like StarRocks (FE and BE), printing each
    /// load; for trying a loader without a StarRocks, and for the end-to-end suite.
    DevEndpoint(starsink::dev_endpoint::command::DevEndpointArgs),
    /// Lists or loads the batches StarRocks refused (a sink's dead-letter directory).
    #[command(subcommand)]
    DeadLetters(starsink::loader::dead_letter::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    let status = match cli.command {
        Command::Loader {
            config,
            sink_files,
            shutdown_timeout,
            metrics_addr,
        } => {
            let logs = starsink::init_logging(cli.log_format);
            let source = ConfigSource {
                config,
                sink_files,
                shutdown_timeout,
                metrics_addr,
            };
            run_loader(&runtime, logs.as_ref(), source)
        }
        Command::Demo(args) => runtime.block_on(starsink::demo::run(args)),
        Command::DevEndpoint(args) => runtime.block_on(starsink::dev_endpoint::command::run(args)),
        Command::Controller(args) => {
            let _logs = starsink::init_logging(cli.log_format);
            match runtime.block_on(starsink::operator::run(args)) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e}");
                    EXIT_CONFIG
                }
            }
        }
        Command::Inject(args) => match run_inject(&args) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "error: {e}");
                EXIT_CONFIG
            }
        },
        Command::DeadLetters(command) => {
            let _logs = starsink::init_logging(cli.log_format);
            runtime.block_on(starsink::loader::dead_letter::run(command))
        }
        Command::Crd => {
            print!("{}", starsink::api::resource::crd_yaml());
            0
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code(status)
}

/// `starsink loader`: the loader on `config` until it stops; the exit code accounts for
/// every record.
fn run_loader(
    runtime: &tokio::runtime::Runtime,
    logs: Option<&starsink::log_writer::LogGuard>,
    source: ConfigSource,
) -> i32 {
    let config = match source.read() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_CONFIG;
        }
    };
    match runtime.block_on(starsink::loader::run(config, source)) {
        Ok(accounting) => {
            // Room in the log queue for the line that accounts for every record.
            if let Some(logs) = logs {
                logs.flush(std::time::Duration::from_millis(500));
            }
            accounting.log();
            accounting.exit_code()
        }
        Err(e) => {
            tracing::error!("cannot start: {e}");
            EXIT_CONFIG
        }
    }
}

/// `starsink inject -f MANIFEST --sink SINK.yaml ...`
#[derive(clap::Args)]
struct InjectArgs {
    /// The manifests (multi-document YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// A file of StarRocksSink resources the pods may name; repeatable.
    #[arg(long = "sink", required = true)]
    sinks: Vec<PathBuf>,
    /// The target cluster's Kubernetes version: native sidecars need 1.29.
    #[arg(long, default_value = "1.29")]
    kube_version: String,
    /// The loader image (default: this release's).
    #[arg(long)]
    image: Option<String>,
}

fn run_inject(args: &InjectArgs) -> Result<String, String> {
    use starsink::operator::{inject::InjectSettings, manifests};
    let read = |p: &PathBuf| -> Result<String, String> {
        if p.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))
        } else {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        }
    };
    let mut sinks = Vec::new();
    for file in &args.sinks {
        sinks.extend(
            manifests::read_sinks(&read(file)?, &file.display().to_string())
                .map_err(|e| e.to_string())?,
        );
    }
    let mut settings = InjectSettings {
        kube_version: manifests::parse_kube_version(&args.kube_version)
            .map_err(|e| format!("--kube-version: {e}"))?,
        ..InjectSettings::default()
    };
    if let Some(image) = &args.image {
        settings.image = image.clone();
    }
    manifests::inject_manifests(&read(&args.file)?, &sinks, &settings)
        .map_err(|e| format!("{}: {e}", args.file.display()))
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}
