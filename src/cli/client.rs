//! `retail-pulse submit | status | results`: the client of a running server (see
//! [`crate::client`]); these commands choose their own exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::client::DEFAULT_SERVER;
use crate::client::command::{self as client_command, Output, SubmitOptions};

pub const SUBMIT_EXIT_CODES: &str = "\
Exit codes:
  0    submitted (without --wait); the job completed (with --wait)
  1    the job failed or was cancelled (with --wait)
  2    not submitted: the file cannot be read or is not JSON, the server cannot be
       reached, or it refused the job (its message is printed on stderr); also when
       the job cannot be followed (server gone for 30 s while waiting)
  130  interrupted while waiting; the job goes on on the server

Output: on a terminal, sentences and (with --wait) a live progress line; piped, no
progress line, and without --wait only the job id; with --json, one JSON document:
{\"job_id\": N}, or with --wait the job as GET /api/jobs/{id} returns it.";

pub const STATUS_EXIT_CODES: &str = "\
Exit codes:
  0    the job was found (whatever its status)
  2    no such job, or the server cannot be reached";

pub const RESULTS_EXIT_CODES: &str = "\
Output: without --csv, one JSON object per line per image, as GET /api/jobs/{id}/images
gives them; with --csv, the server's CSV (GET /api/jobs/{id}/results.csv: a header row,
then store_id,url,visit_time,status,width,height,perimeter,error). Both stream, so a
100,000-image job starts printing at once.

Exit codes:
  0    the results were printed (whatever the job's status)
  2    no such job, the server cannot be reached, or the stream broke off";

#[derive(Debug, Args, Clone)]
pub struct ResultsArgs {
    /// The job id `submit` printed.
    pub job_id: i64,
    /// Print CSV (with a header row) instead of JSON lines.
    #[arg(long)]
    pub csv: bool,
    /// Base URL of the Retail Pulse server.
    #[arg(long, env = "RP_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// API key, sent as `Authorization: Bearer KEY` (from `retail-pulse keys create`).
    #[arg(long, env = "RP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// Base URL of the Retail Pulse server.
    #[arg(long, env = "RP_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// API key, sent as `Authorization: Bearer KEY` (from `retail-pulse keys create`).
    #[arg(long, env = "RP_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print one JSON document (the server's own) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct SubmitArgs {
    /// The job: a JSON file of the submit API's shape ({"count", "visits": [...]}); `-` reads
    /// standard input.
    pub file: PathBuf,
    /// Follow the job until it finishes: progress on a terminal, then the result and the
    /// per-store errors; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    /// The job id `submit` printed.
    pub job_id: i64,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub async fn submit(args: SubmitArgs) -> ExitCode {
    let output = Output::detect(args.server.json);
    let options = SubmitOptions {
        file: args.file,
        server: args.server.server,
        api_key: args.server.api_key,
        wait: args.wait,
    };
    client_command::submit(options, output).await.into()
}

pub async fn status(args: StatusArgs) -> ExitCode {
    let output = Output::detect(args.server.json);
    let server = &args.server;
    client_command::status(
        &server.server,
        server.api_key.as_deref(),
        args.job_id,
        output,
    )
    .await
    .into()
}

pub async fn results(args: ResultsArgs) -> ExitCode {
    client_command::results(&args.server, args.api_key.as_deref(), args.job_id, args.csv)
        .await
        .into()
}
