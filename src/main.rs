//! The `adgate` binary: parse the command line, set up logging, run.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use adgate::cli::Subcommand;
use adgate::config::{Cli, Command, LogFormat, Settings};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logging(format: Option<LogFormat>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    // A second subscriber can only exist in tests; ignoring the error keeps the first.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// How long exit waits for stray blocking tasks once the gateway has drained and closed the
/// store (nothing durable is left to finish by then).
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("adgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    code
}

async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => {
            let settings = match Settings::load(&args, &|k| std::env::var(k).ok()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("adgate: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(settings.log_format);
            adgate::run(settings).await
        }
        Command::Sim(args) => {
            init_logging(None);
            adgate::run_sims(args).await
        }
        Command::Submit(a) => return adgate::cli::run(Subcommand::Submit(a)).await,
        Command::Watch(a) => return adgate::cli::run(Subcommand::Watch(a)).await,
        Command::Status(a) => return adgate::cli::run(Subcommand::Status(a)).await,
        Command::Download(a) => return adgate::cli::run(Subcommand::Download(a)).await,
        Command::Jobs(a) => return adgate::cli::run(Subcommand::Jobs(a)).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A start-up refusal to fix in the configuration, like an invalid setting.
        Err(e @ adgate::StartError::ReplicaIdInUse(_)) => {
            tracing::error!(error = %e, "adgate failed");
            eprintln!("adgate: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = %e, "adgate failed");
            eprintln!("adgate: {e}");
            ExitCode::FAILURE
        }
    }
}
