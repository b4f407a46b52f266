use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use starsink::api::LoaderConfig;
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

#[derive(Subcommand)]
enum Command {
    /// The sidecar: reads records from Unix sockets and loads them with Stream Load.
    Loader {
        /// The loader's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Shows the whole loader path on this machine, against a local Stream Load endpoint.
    Demo(starsink::demo::DemoArgs),
    /// Prints the StarRocksSink CustomResourceDefinition (what `crds/` holds).
    Crd,
    /// The operator: reconciles StarRocksSinks into loader ConfigMaps and status.
    Controller(starsink::operator::ControllerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = match cli.command {
        Command::Loader { config } => {
            starsink::init_logging(cli.log_format);
            let config = match LoaderConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("{e}");
                    return code(EXIT_CONFIG);
                }
            };
            match runtime.block_on(starsink::loader::run(config)) {
                Ok(accounting) => {
                    accounting.log();
                    accounting.exit_code()
                }
                Err(e) => {
                    tracing::error!("cannot start: {e}");
                    EXIT_CONFIG
                }
            }
        }
        Command::Demo(args) => runtime.block_on(starsink::demo::run(args)),
        Command::Controller(args) => {
            starsink::init_logging(cli.log_format);
            match runtime.block_on(starsink::operator::run(args)) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e}");
                    EXIT_CONFIG
                }
            }
        }
        Command::Crd => {
            print!("{}", starsink::api::resource::crd_yaml());
            0
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    code(status)
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}
