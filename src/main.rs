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
    Inject(Deferred<InjectArgs>),
    /// Shows the whole loader path on this machine, against a local Stream Load endpoint.
    Demo(Deferred<starsink::demo::DemoArgs>),
    /// Prints the StarRocksSink CustomResourceDefinition (what `crds/` holds).
    Crd,
    /// The operator: reconciles StarRocksSinks into loader ConfigMaps and status.
    Controller(Deferred<starsink::operator::ControllerArgs>),
    /// A local Stream Load endpoint that behaves like StarRocks (FE and BE), printing each
    /// load; for trying a loader without a StarRocks, and for the end-to-end suite.
    DevEndpoint(Deferred<starsink::dev_endpoint::command::DevEndpointArgs>),
    /// Lists or loads the batches StarRocks refused (a sink's dead-letter directory).
    #[command(subcommand)]
    DeadLetters(Deferred<starsink::loader::dead_letter::Command>),
}

/// A subcommand's arguments (or its own subcommands), defined only once that subcommand
/// is the one invoked, or its help is asked for: the loader sidecar then never builds the
/// other subcommands' definitions, nor keeps their code paged in while idle.
struct Deferred<T>(T);

impl<T: clap::FromArgMatches> clap::FromArgMatches for Deferred<T> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Deferred)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
}

impl<T: clap::Args> clap::Args for Deferred<T> {
    fn group_id() -> Option<clap::Id> {
        T::group_id()
    }

    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| keeping_about(cmd, T::augment_args))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| keeping_about(cmd, T::augment_args_for_update))
    }
}

impl<T: Subcommand> Subcommand for Deferred<T> {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| keeping_about(cmd, T::augment_subcommands))
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| keeping_about(cmd, T::augment_subcommands_for_update))
    }

    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}

/// `define` run on `cmd`, whose help text (the variant's doc comment, set before a
/// deferred definition runs) stays rather than the arguments type's own.
fn keeping_about(cmd: clap::Command, define: fn(clap::Command) -> clap::Command) -> clap::Command {
    let (about, long) = (cmd.get_about().cloned(), cmd.get_long_about().cloned());
    let mut cmd = define(cmd);
    if let Some(about) = about {
        cmd = cmd.about(about);
    }
    if let Some(long) = long {
        cmd = cmd.long_about(long);
    }
    cmd
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
        Command::Demo(Deferred(args)) => runtime.block_on(starsink::demo::run(args)),
        Command::DevEndpoint(Deferred(args)) => {
            runtime.block_on(starsink::dev_endpoint::command::run(args))
        }
        Command::Controller(Deferred(args)) => {
            let _logs = starsink::init_logging(cli.log_format);
            match runtime.block_on(starsink::operator::run(args)) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e}");
                    EXIT_CONFIG
                }
            }
        }
        Command::Inject(Deferred(args)) => match run_inject(&args) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "error: {e}");
                EXIT_CONFIG
            }
        },
        Command::DeadLetters(Deferred(command)) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_is_well_formed_once_its_deferred_definition_runs() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_deferred_subcommand_parses_and_keeps_its_own_help_text() {
        let cli = Cli::try_parse_from(["starsink", "dead-letters", "list", "/tmp/dl"]).unwrap();
        assert!(matches!(cli.command, Command::DeadLetters(_)));
        let mut cmd = Cli::command();
        cmd.build();
        let inject = cmd.find_subcommand_mut("inject").unwrap();
        let help = inject.render_help().to_string();
        assert!(
            help.starts_with("Prints manifests with the loader injected"),
            "{help}"
        );
        assert!(help.contains("--filename"), "{help}");
    }
}
