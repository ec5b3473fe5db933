//! The command line for bulk work: `adgate submit|watch|status|download|jobs`, gRPC clients of a
//! running gateway. This module holds the shared options (target, token, output mode), the
//! connection and the exit codes; each subcommand lives in its own module.

mod csv;
mod download;
mod input;
mod jobs;
mod output;
pub(crate) mod pbjson;
mod progress;
mod rpc_error;
mod status;
mod submit;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::config::Secret;
use crate::pb::gateway_service_client::GatewayServiceClient;

pub use rpc_error::describe_status;

/// Every job ended COMPLETED (or there was nothing to wait for).
pub const EXIT_OK: u8 = 0;
/// The command ran, but a job failed or was cancelled, or a download failed.
pub const EXIT_JOBS_FAILED: u8 = 1;
/// Bad usage or input: an unreadable file, a row that is not a job spec, a spec the gateway
/// refused. Nothing more was sent after it. (clap's own usage errors exit 2 as well.)
pub const EXIT_USAGE: u8 = 2;
/// The gateway could not be reached, or answered an RPC with an error other than bad input.
pub const EXIT_GATEWAY: u8 = 3;

const EXIT_CODES_HELP: &str = "\
EXIT CODES:
  0  every job COMPLETED (submit --watch, watch), or the command succeeded
  1  a job FAILED or was CANCELLED, or a download failed
  2  bad usage or input (unreadable file, invalid row, a spec the gateway refused)
  3  the gateway could not be reached or answered with another error";

/// How to reach the gateway and how to print. Shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The gateway's gRPC address.
    #[arg(long, env = "ADGATE_TARGET", default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Caller token, sent as `authorization: Bearer <token>` (never printed).
    #[arg(long, env = "ADGATE_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<Secret>,
    /// One JSON object per line on stdout, for scripts (no progress bar).
    #[arg(long)]
    pub json: bool,
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    if s.is_empty() {
        return Err("the token is empty".to_owned());
    }
    Ok(Secret::new(s))
}

/// `adgate submit FILE`.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct SubmitArgs {
    /// JSON Lines of JobSpec (the proto JSON mapping, one spec per line), or CSV (`.csv`)
    /// whose header names are JobSpec JSON paths (`client_ref`, `labels.campaign`,
    /// `staticadslab.brand_id`, `pictify.variables.title`). Empty CSV cells are left unset.
    pub file: PathBuf,
    /// Input format; by default `.csv` files are CSV and everything else JSON Lines.
    #[arg(long, value_enum)]
    pub format: Option<input::Format>,
    /// Map a CSV header to a JobSpec path (repeatable): `--column brand=staticadslab.brand_id`.
    /// `--column notes=` ignores a column.
    #[arg(long = "column", value_name = "CSV=PATH", value_parser = input::parse_column)]
    pub columns: Vec<(String, String)>,
    /// Jobs per Submit call. Each chunk is one batch at the gateway, with a request id derived
    /// from its content and position, so re-running the same command never creates its jobs
    /// twice.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub chunk: u32,
    /// Order among your own queued jobs (the gateway's default is normal).
    #[arg(long, value_enum)]
    pub priority: Option<Priority>,
    /// Have each created batch's events (job.completed, job.failed, job.cancelled,
    /// batch.completed) posted to this URL as signed Standard Webhooks.
    #[arg(long, value_name = "URL")]
    pub notify_url: Option<String>,
    /// Follow the created batches until every job is terminal (as `adgate watch`).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: write one JSON line per job (client_ref, job id, state, outputs, error).
    #[arg(long, value_name = "PATH", requires = "watch")]
    pub results: Option<PathBuf>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `SubmitRequest.priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Priority {
    /// A person is waiting: sent before your other jobs.
    Interactive,
    Normal,
    /// Background work: sent after your other jobs.
    Bulk,
}

impl Priority {
    pub fn proto(self) -> crate::pb::Priority {
        match self {
            Self::Interactive => crate::pb::Priority::Interactive,
            Self::Normal => crate::pb::Priority::Normal,
            Self::Bulk => crate::pb::Priority::Bulk,
        }
    }
}

/// `adgate watch BATCH…`.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct WatchArgs {
    /// Batch ids (`bat_…`) to follow until every job is terminal.
    #[arg(required = true)]
    pub batches: Vec<String>,
    /// Write one JSON line per job (client_ref, job id, state, outputs, error) at the end.
    #[arg(long, value_name = "PATH")]
    pub results: Option<PathBuf>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `adgate status ID…`.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct StatusArgs {
    /// Batch ids (`bat_…`) or job ids (`job_…`).
    #[arg(required = true)]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `adgate jobs`.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct JobsArgs {
    /// AIP-160 filter, e.g. `state = FAILED AND labels.campaign = "spring"` (fields: state,
    /// provider, batch_id, caller, client_ref, labels.KEY, create_time).
    #[arg(long, default_value = "")]
    pub filter: String,
    /// Most jobs shown, newest first (0 = all).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[command(flatten)]
    pub conn: Conn,
}

/// `adgate download BATCH --dir DIR`.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub struct DownloadArgs {
    /// Batch ids (`bat_…`) whose outputs to fetch.
    #[arg(required = true)]
    pub batches: Vec<String>,
    /// Directory to write into (created if missing). Files are named by client_ref (the job
    /// id when empty), with `-1`, `-2` … when a job has several outputs.
    #[arg(long)]
    pub dir: PathBuf,
    /// Longest time one file may take.
    #[arg(long, default_value = "60", value_name = "SECS")]
    pub timeout_secs: u64,
    /// Files fetched at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    #[command(flatten)]
    pub conn: Conn,
}

/// A subcommand's failure: the exit code and what to print on stderr (one or more lines).
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    pub fn gateway(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_GATEWAY,
            message: message.into(),
        }
    }

    /// A failed RPC: bad input is a usage error, anything else a gateway error.
    pub fn rpc(what: &str, status: &Status) -> Self {
        let code = match status.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::AlreadyExists
            | tonic::Code::FailedPrecondition => EXIT_USAGE,
            _ => EXIT_GATEWAY,
        };
        Self {
            code,
            message: format!("{what}: {}", describe_status(status)),
        }
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = GatewayServiceClient<InterceptedService<Channel, Auth>>;

/// Largest gateway answer accepted (a BatchStatus of 10,000 jobs with outputs).
const MAX_RESPONSE_BYTES: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the gateway at `conn.target`. The connection is made lazily, so a gateway that
/// is down surfaces as the first call's UNAVAILABLE, with the target named.
pub fn client(conn: &Conn) -> Result<Client, Failure> {
    let endpoint = Endpoint::from_shared(conn.target.clone())
        .map_err(|e| Failure::usage(format!("invalid --target {:?}: {e}", conn.target)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let auth = match &conn.token {
        Some(t) => Some(
            MetadataValue::try_from(format!("Bearer {}", t.expose()))
                // The token is not repeated: it is a secret.
                .map_err(|_| Failure::usage("the token has characters not allowed in metadata"))?,
        ),
        None => None,
    };
    let channel = endpoint.connect_lazy();
    Ok(GatewayServiceClient::with_interceptor(channel, Auth(auth))
        .max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// The process's tokio runtime runs this for every client subcommand.
pub async fn run(cmd: Subcommand) -> ExitCode {
    let result = match cmd {
        Subcommand::Submit(a) => submit::run(a).await,
        Subcommand::Watch(a) => watch::run_cmd(a).await,
        Subcommand::Status(a) => status::run(a).await,
        Subcommand::Download(a) => download::run(a).await,
        Subcommand::Jobs(a) => jobs::run(a).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("adgate: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// The client subcommands, as wired into the binary's `Command`.
#[derive(Debug)]
pub enum Subcommand {
    Submit(SubmitArgs),
    Watch(WatchArgs),
    Status(StatusArgs),
    Download(DownloadArgs),
    Jobs(JobsArgs),
}
