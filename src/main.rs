//! The `adgate` binary: parse the command line, set up logging, run.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use adgate::cli::Subcommand;
use adgate::config::{Cli, Command, LogFormat, Settings};
use adgate::telemetry::{TraceConfig, Tracing};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Logs to stdout as `RUST_LOG` says, and, when traces are on, spans to the OTLP exporter
/// (each output with its own filter, so traces do not depend on the log level and trace-only
/// spans never show in the logs).
fn init_logging(format: Option<LogFormat>, traces: Option<&Tracing>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let fmt = tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal());
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let logs = fmt.with_filter(filter.and(filter_fn(adgate::telemetry::is_log)));
    // A second subscriber can only exist in tests; ignoring the error keeps the first.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces.map(Tracing::layer))
        .try_init();
}

/// Traces as the `OTEL_*` variables ask (`None`: off).
fn start_tracing() -> Result<Option<Tracing>, adgate::telemetry::TraceError> {
    TraceConfig::from_env(&|k| std::env::var(k).ok())?
        .map(|cfg| Tracing::start(&cfg))
        .transpose()
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
            let traces = match start_tracing() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("adgate: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(settings.log_format, traces.as_ref());
            if let Some(t) = &traces {
                tracing::info!(collector = %t.collector(), service = %t.service_name(), "exporting traces over OTLP/gRPC");
            }
            let result = adgate::run(settings).await;
            if let Some(t) = traces {
                // The last spans (the drain's) are still buffered.
                let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
            }
            result
        }
        Command::Sim(args) => {
            init_logging(None, None);
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
