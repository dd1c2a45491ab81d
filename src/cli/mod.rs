//! The command line: the service (`serve | worker`, [`service`]), the database's upkeep
//! (`migrate`, `stores import` [`stores`], `prune` [`prune`]), API keys (`keys create | list |
//! revoke`, [`keys`]), the key that seals webhook secrets (`secrets new-key`, [`secrets`]) and
//! the client (`submit | status | results`, [`client`]). Every flag can
//! also be set through the environment variable named beside it (docs/CONFIGURATION.md); every
//! subcommand that opens the database takes the same flags ([`db::DbArgs`]).

mod client;
mod db;
mod keys;
mod prune;
mod secrets;
mod service;
mod stores;
mod values;

pub use client::{ResultsArgs, ServerArgs, StatusArgs, SubmitArgs};
pub use db::DbArgs;
pub use keys::KeysCommand;
pub use prune::PruneArgs;
pub use secrets::{SecretKeyArgs, SecretsCommand};
pub use service::{ServeArgs, WorkerArgs, WorkerCommandArgs};
pub use stores::StoresCommand;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "retail-pulse",
    version,
    about = "Turns store-visit photos into measurements"
)]
pub struct Cli {
    /// What to run; without one, `serve` with its defaults.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and, unless --no-workers, image workers in one process.
    Serve(ServeArgs),
    /// Run image workers only (no HTTP API); any number may share one PostgreSQL.
    Worker(WorkerCommandArgs),
    /// Apply database migrations and exit. On PostgreSQL the only way the schema changes
    /// (besides `serve`/`worker --migrate`): other processes wait for it.
    Migrate(DbArgs),
    /// Manage the store master.
    Stores {
        #[command(subcommand)]
        command: StoresCommand,
    },
    /// Delete finished jobs older than a duration, with their images and webhook deliveries.
    #[command(after_help = prune::PRUNE_HELP)]
    Prune(PruneArgs),
    /// Manage API keys: create (the key is printed once), list, revoke.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The secret key that seals webhook secrets in the database: new-key prints a fresh one.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Submit a job file to a running server; with --wait, follow it to the end.
    #[command(after_help = client::SUBMIT_EXIT_CODES)]
    Submit(SubmitArgs),
    /// Show one job of a running server: status, image counts, times, per-store errors.
    #[command(after_help = client::STATUS_EXIT_CODES)]
    Status(StatusArgs),
    /// Print every image result of one job, in submission order: JSON lines, or CSV.
    #[command(after_help = client::RESULTS_EXIT_CODES)]
    Results(ResultsArgs),
}

impl Cli {
    /// Starts logging as this command needs it: the service logs to stdout, the client to
    /// stderr and quietly, since its stdout is its result (see [`telemetry`]).
    pub fn init_telemetry(&self) {
        match self.command {
            // `keys create` prints the key alone on stdout: logs go to stderr.
            Some(
                Command::Submit(_)
                | Command::Status(_)
                | Command::Results(_)
                | Command::Keys { .. }
                | Command::Secrets { .. }
                | Command::Prune(_),
            ) => telemetry::init_client(),
            _ => telemetry::init(),
        }
    }
}

/// Runs one parsed command to completion. The service commands fail with an error (exit 1);
/// the client commands report their own errors and choose their exit code (see `--help`).
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        Some(command) => command,
        None => Cli::parse_from(["retail-pulse", "serve"])
            .command
            .expect("serve parses"),
    };
    match command {
        Command::Serve(args) => service::serve(args).await?,
        Command::Worker(args) => service::worker(args).await?,
        Command::Migrate(db) => {
            let db = db.open().await?;
            db.migrate().await?;
            // A schema a newer release moved past this binary: a deploy that runs this
            // `migrate` and then this release's services must stop here, not at their start.
            let fit = db.schema_fit().await;
            db.close().await;
            match fit? {
                too_new @ crate::db::SchemaFit::TooNew { .. } => {
                    anyhow::bail!("{}", too_new.describe())
                }
                _ => tracing::info!(version = db.schema_version(), "migrations applied"),
            }
        }
        Command::Stores { command } => stores::run(command).await?,
        Command::Keys { command } => keys::run(command).await?,
        Command::Secrets { command } => secrets::run(command)?,
        Command::Prune(args) => prune::run(args).await?,
        Command::Submit(args) => return Ok(client::submit(args).await),
        Command::Status(args) => return Ok(client::status(args).await),
        Command::Results(args) => return Ok(client::results(args).await),
    }
    Ok(ExitCode::SUCCESS)
}
