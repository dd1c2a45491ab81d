//! The command line: the service (`serve | worker | migrate | stores import | prune`), API
//! keys (`keys create | list | revoke`) and the client (`submit | status | results`, see
//! [`crate::client`]). Every flag can also be set through the environment variable named beside
//! it (see the README's configuration table).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::app::{self, Roles};
use crate::auth::AuthMode;
use crate::client::DEFAULT_SERVER;
use crate::client::command::{self as client_command, Output, SubmitOptions};
use crate::config::Config;
use crate::db::DEFAULT_URL as DEFAULT_DATABASE_URL;
use crate::db::Db;
use crate::fetch::guard::AllowList;
use crate::worker::DelayRange;
use crate::{shutdown, stores, telemetry};

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
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Manage the store master.
    Stores {
        #[command(subcommand)]
        command: StoresCommand,
    },
    /// Delete finished jobs older than a duration, with their images and webhook deliveries.
    #[command(after_help = PRUNE_HELP)]
    Prune(PruneArgs),
    /// Manage API keys: create (the key is printed once), list, revoke.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Submit a job file to a running server; with --wait, follow it to the end.
    #[command(after_help = SUBMIT_EXIT_CODES)]
    Submit(SubmitArgs),
    /// Show one job of a running server: status, image counts, times, per-store errors.
    #[command(after_help = STATUS_EXIT_CODES)]
    Status(StatusArgs),
    /// Print every image result of one job, in submission order: JSON lines, or CSV.
    #[command(after_help = RESULTS_EXIT_CODES)]
    Results(ResultsArgs),
}

const SUBMIT_EXIT_CODES: &str = "\
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

const PRUNE_HELP: &str = "\
Jobs are deleted in small statements (at most 1000 images each) that never touch an ongoing
job, so the queue keeps working meanwhile. A job whose webhook is still being delivered is
left for a later run. Prints what it removed; exit 0, or 1 on an error (what was removed
before it stays removed). On PostgreSQL it waits while another process is pruning.";

const STATUS_EXIT_CODES: &str = "\
Exit codes:
  0    the job was found (whatever its status)
  2    no such job, or the server cannot be reached";

const RESULTS_EXIT_CODES: &str = "\
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
                | Command::Prune(_),
            ) => telemetry::init_client(),
            _ => telemetry::init(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum StoresCommand {
    /// Load or refresh the store master from a CSV file (AreaCode, StoreName, StoreID).
    Import {
        file: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it, alone, on stdout (shown this once: only its hash is kept).
    Create {
        /// A unique name for the key (who uses it: `field-app`, `partner-x`); never reused.
        #[arg(long)]
        name: String,
        /// The tenant the key acts for (default: the key's name). Keys of one tenant see
        /// the same jobs.
        #[arg(long)]
        tenant: Option<String>,
        /// An admin key sees and acts on every tenant's jobs and reads /metrics.
        #[arg(long)]
        admin: bool,
        /// This tenant's most unfinished images instead of the server's
        /// --tenant-max-unfinished-images (0: unlimited).
        #[arg(long)]
        max_unfinished_images: Option<u64>,
        /// This tenant's submits per minute instead of the server's
        /// --tenant-submits-per-minute (0: unlimited).
        #[arg(long)]
        submits_per_minute: Option<u32>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List keys: name, tenant, admin, created, last used, revoked, limits (never the key).
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a key: servers refuse it within a second or two.
    Revoke {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Args, Clone)]
pub struct PruneArgs {
    /// Delete finished jobs whose finish time is older than this: `30d`, `12h`, `90m`, `0s`.
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Duration,
    /// Before deleting a job, write its results there as gzipped CSV (`job-ID.csv.gz`).
    #[arg(long, env = "RP_ARCHIVE_DIR")]
    pub archive_dir: Option<PathBuf>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args, Clone)]
pub struct DbArgs {
    /// Database URL: `sqlite://FILE?mode=rwc` or `postgres://USER@HOST/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "RP_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Seconds a query waits for a free connection; while the database is away, how long the
    /// API takes to answer 503.
    #[arg(long, env = "RP_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 1.5)]
    pub db_acquire_timeout_secs: f64,
    /// PostgreSQL: seconds a session may sit idle inside a transaction before the server ends
    /// it and frees its locks (0: the server's default).
    #[arg(
        long,
        env = "RP_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECS",
        default_value_t = 10.0
    )]
    pub db_idle_in_transaction_timeout_secs: f64,
    /// PostgreSQL: seconds a statement waits for a row lock before giving up (the queue backs
    /// off and retries; 0: wait forever).
    #[arg(long, env = "RP_DB_LOCK_TIMEOUT_SECS", default_value_t = 5.0)]
    pub db_lock_timeout_secs: f64,
    /// PostgreSQL: seconds any statement may run (0: no limit).
    #[arg(long, env = "RP_DB_STATEMENT_TIMEOUT_SECS", default_value_t = 60.0)]
    pub db_statement_timeout_secs: f64,
    /// PostgreSQL: TCP keepalive idle seconds on both ends; a peer that stopped answering is
    /// declared dead after about twice this (0: the systems' defaults, about 2 h).
    #[arg(long, env = "RP_DB_KEEPALIVE_SECS", default_value_t = 10.0)]
    pub db_keepalive_secs: f64,
    /// Seconds one queue operation (claim, heartbeat, a batch of results) may take before its
    /// connection is dropped and the operation retried (0: no deadline).
    #[arg(long, env = "RP_DB_OPERATION_TIMEOUT_SECS", default_value_t = 20.0)]
    pub db_operation_timeout_secs: f64,
}

impl DbArgs {
    /// The database part of the configuration.
    pub fn to_config(&self) -> anyhow::Result<crate::db::DbConfig> {
        Ok(crate::db::DbConfig {
            url: self.database_url.clone(),
            max_connections: self.db_max_connections,
            acquire_timeout: secs(self.db_acquire_timeout_secs, "db-acquire-timeout-secs")?,
            session: crate::db::SessionLimits {
                idle_in_transaction: secs(
                    self.db_idle_in_transaction_timeout_secs,
                    "db-idle-in-transaction-timeout-secs",
                )?,
                lock_wait: secs(self.db_lock_timeout_secs, "db-lock-timeout-secs")?,
                statement: secs(self.db_statement_timeout_secs, "db-statement-timeout-secs")?,
                keepalive: secs(self.db_keepalive_secs, "db-keepalive-secs")?,
                operation: secs(self.db_operation_timeout_secs, "db-operation-timeout-secs")?,
            },
        })
    }
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "RP_BIND", default_value = "0.0.0.0:8080")]
    pub bind: std::net::SocketAddr,
    /// Serve the API only; leave the images to `retail-pulse worker` processes.
    #[arg(long, env = "RP_NO_WORKERS", num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub no_workers: bool,
    /// Largest request body in bytes.
    #[arg(long, env = "RP_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a client has to send a request's headers, from the connection's start or the
    /// end of its previous response; past it the connection is closed (0: no limit).
    #[arg(long, env = "RP_HEADER_READ_TIMEOUT_SECS", default_value_t = 30.0)]
    pub header_read_timeout_secs: f64,
    /// Seconds a client has to send a request's whole body, from the end of its headers;
    /// past it the request is answered 408 (0: no limit).
    #[arg(long, env = "RP_BODY_READ_TIMEOUT_SECS", default_value_t = 60.0)]
    pub body_read_timeout_secs: f64,
    /// Most images accepted in one job.
    #[arg(long, env = "RP_MAX_IMAGES_PER_JOB", default_value_t = 100_000)]
    pub max_images_per_job: usize,
    /// Most visits accepted in one job.
    #[arg(long, env = "RP_MAX_VISITS_PER_JOB", default_value_t = 100_000)]
    pub max_visits_per_job: usize,
    /// Most images accepted in one visit.
    #[arg(long, env = "RP_MAX_IMAGES_PER_VISIT", default_value_t = 1_000)]
    pub max_images_per_visit: usize,
    /// Longest accepted image URL, in bytes.
    #[arg(long, env = "RP_MAX_URL_BYTES", default_value_t = 2048)]
    pub max_url_bytes: usize,
    /// Longest accepted store_id, in bytes.
    #[arg(long, env = "RP_MAX_STORE_ID_BYTES", default_value_t = 64)]
    pub max_store_id_bytes: usize,
    /// When API requests need a key: `auto` (loopback clients without one until the first
    /// key is created, then always), `required` (always) or `off` (never: a trusted network
    /// only).
    #[arg(long, env = "RP_AUTH", default_value = "auto")]
    pub auth: AuthMode,
    /// Most unfinished images one tenant may hold; a submit beyond it gets 429 (0: unlimited).
    #[arg(
        long,
        env = "RP_TENANT_MAX_UNFINISHED_IMAGES",
        default_value_t = 500_000
    )]
    pub tenant_max_unfinished_images: u64,
    /// Submits per minute per tenant, with bursts of as many (0: unlimited).
    #[arg(long, env = "RP_TENANT_SUBMITS_PER_MINUTE", default_value_t = 600)]
    pub tenant_submits_per_minute: u32,
    /// Also serve /metrics, /healthz and /readyz, without keys, on this address (for the
    /// monitoring network; the API's own /metrics needs an admin key).
    #[arg(long, env = "RP_METRICS_BIND")]
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// After a webhook secret is rotated, how long the previous one still signs deliveries
    /// beside the new one: `24h`, `90m`, `0s`.
    #[arg(long, env = "RP_WEBHOOK_SECRET_OVERLAP", default_value = "24h", value_parser = parse_duration)]
    pub webhook_secret_overlap: Duration,
    /// The address people use to reach this service, e.g. `https://pulse.example.com`; an
    /// `https://` one makes the dashboard's cookies `Secure`.
    #[arg(long, env = "RP_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// A dashboard sign-in session unused for this long ends: `12h`, `30m`.
    #[arg(long, env = "RP_UI_SESSION_IDLE", default_value = "12h", value_parser = parse_duration)]
    pub ui_session_idle: Duration,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

#[derive(Debug, Args, Clone)]
pub struct WorkerCommandArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Serve /metrics, /healthz and /readyz on this address (a worker has no API otherwise).
    #[arg(long, env = "RP_METRICS_BIND")]
    pub metrics_bind: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Store master CSV loaded at start-up (default: the bundled sample, loaded only into an
    /// empty store table).
    #[arg(long, env = "RP_STORE_MASTER")]
    pub store_master: Option<PathBuf>,
    /// Images in flight per process.
    #[arg(long, env = "RP_WORKERS", default_value_t = 32)]
    pub workers: usize,
    /// Simulated GPU time per image in ms: a range `100-400`, a fixed `250`, or `0` for none.
    #[arg(long, env = "RP_PROCESSING_DELAY_MS", default_value = "100-400", value_parser = parse_delay)]
    pub processing_delay_ms: DelayRange,
    /// Let image URLs reach loopback, private, link-local and other non-global addresses.
    #[arg(long, env = "RP_ALLOW_PRIVATE_NETWORKS", num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub allow_private_networks: bool,
    /// Seconds to establish a connection to an image host.
    #[arg(long, env = "RP_FETCH_CONNECT_TIMEOUT_SECS", default_value_t = 5.0)]
    pub fetch_connect_timeout_secs: f64,
    /// Seconds for a whole image download.
    #[arg(long, env = "RP_FETCH_TIMEOUT_SECS", default_value_t = 30.0)]
    pub fetch_timeout_secs: f64,
    /// Largest image download in bytes.
    #[arg(long, env = "RP_FETCH_MAX_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub fetch_max_bytes: u64,
    /// Seconds without a byte from an image host before the download counts as stalled.
    #[arg(long, env = "RP_FETCH_STALL_TIMEOUT_SECS", default_value_t = 10.0)]
    pub fetch_stall_timeout_secs: f64,
    /// Slowest accepted image download, in bytes/s averaged over each stall-timeout window;
    /// slower fails as "too slow" (and is retried). 0: no limit.
    #[arg(long, env = "RP_FETCH_MIN_SPEED_BYTES", default_value_t = 1024)]
    pub fetch_min_speed_bytes: u64,
    /// Most downloads in flight per origin (scheme, host, port) in this process; images of a
    /// busy origin wait without holding a slot. Default: half of --workers (at least 1).
    #[arg(long, env = "RP_FETCH_MAX_PER_ORIGIN")]
    pub fetch_max_per_origin: Option<usize>,
    /// Consecutive connect failures or timeouts of one origin after which its images are
    /// deferred for the cool-down (its circuit breaker opens). 0: no breaker.
    #[arg(long, env = "RP_FETCH_BREAKER_FAILURES", default_value_t = 5)]
    pub fetch_breaker_failures: u32,
    /// Seconds an open breaker defers its origin's images before one probe download is let
    /// through (success closes it, failure opens it again).
    #[arg(long, env = "RP_FETCH_BREAKER_COOLDOWN_SECS", default_value_t = 30.0)]
    pub fetch_breaker_cooldown_secs: f64,
    /// Private hosts and networks image URLs may reach even without --allow-private-networks:
    /// comma-separated host names (`intranet.local`, `*.corp.example`), addresses and CIDRs.
    #[arg(long, env = "RP_ALLOW_HOSTS", default_value = "", value_parser = parse_allow_hosts)]
    pub allow_hosts: AllowList,
    /// Redirects followed per download.
    #[arg(long, env = "RP_FETCH_MAX_REDIRECTS", default_value_t = 5)]
    pub fetch_max_redirects: usize,
    /// Seconds an image stays leased to a worker between heartbeats.
    #[arg(long, env = "RP_LEASE_SECS", default_value_t = 30.0)]
    pub lease_secs: f64,
    /// Claims of one image before it is failed for good.
    #[arg(long, env = "RP_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Milliseconds before the first retry of a transient failure (doubles per attempt).
    #[arg(long, env = "RP_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,
    /// Longest wait between two attempts, in seconds.
    #[arg(long, env = "RP_RETRY_MAX_SECS", default_value_t = 60.0)]
    pub retry_max_secs: f64,
    /// Milliseconds between looks for work when idle and no notification arrives.
    #[arg(long, env = "RP_POLL_INTERVAL_MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Seconds shutdown waits for in-flight images before handing them back to the queue.
    #[arg(long, env = "RP_SHUTDOWN_GRACE_SECS", default_value_t = 10.0)]
    pub shutdown_grace_secs: f64,
    /// How long after a job finished its webhook event is still retried: `24h`, `90m`.
    #[arg(long, env = "RP_WEBHOOK_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub webhook_max_age: Duration,
    /// Milliseconds before the first retry of a webhook delivery (doubles per attempt).
    #[arg(long, env = "RP_WEBHOOK_RETRY_BASE_MS", default_value_t = 5000)]
    pub webhook_retry_base_ms: u64,
    /// Longest wait between two attempts of a webhook delivery, in seconds.
    #[arg(long, env = "RP_WEBHOOK_RETRY_MAX_SECS", default_value_t = 3600.0)]
    pub webhook_retry_max_secs: f64,
    /// Delete finished jobs older than this, every so often (`30d`, `12h`); unset: never.
    #[arg(long, env = "RP_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Before retention deletes a job, write its results there as gzipped CSV.
    #[arg(long, env = "RP_ARCHIVE_DIR")]
    pub archive_dir: Option<PathBuf>,
}

fn parse_allow_hosts(text: &str) -> Result<AllowList, String> {
    AllowList::parse(text)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
}

fn parse_delay(text: &str) -> Result<DelayRange, String> {
    DelayRange::parse(text)
}

fn secs(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{flag}: `{value}` is not a duration"))
}

impl WorkerArgs {
    fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        config.database = self.db.to_config()?;
        config.store_master = self.store_master.clone();
        let w = &mut config.worker;
        w.concurrency = self.workers;
        w.processing_delay = self.processing_delay_ms;
        w.lease = secs(self.lease_secs, "lease-secs")?;
        w.max_attempts = self.max_attempts;
        w.retry_base = Duration::from_millis(self.retry_base_ms);
        w.retry_max = secs(self.retry_max_secs, "retry-max-secs")?;
        w.poll_interval = Duration::from_millis(self.poll_interval_ms.max(1));
        w.shutdown_grace = secs(self.shutdown_grace_secs, "shutdown-grace-secs")?;
        let f = &mut config.fetch;
        f.connect_timeout = secs(
            self.fetch_connect_timeout_secs,
            "fetch-connect-timeout-secs",
        )?;
        f.timeout = secs(self.fetch_timeout_secs, "fetch-timeout-secs")?;
        f.max_bytes = self.fetch_max_bytes;
        f.max_redirects = self.fetch_max_redirects;
        f.allow_private_networks = self.allow_private_networks;
        f.allow_hosts = self.allow_hosts.clone();
        f.stall_timeout = secs(self.fetch_stall_timeout_secs, "fetch-stall-timeout-secs")?;
        f.min_speed_bytes = self.fetch_min_speed_bytes;
        f.max_per_origin = self.fetch_max_per_origin;
        f.breaker_failures = self.fetch_breaker_failures;
        f.breaker_cooldown = secs(
            self.fetch_breaker_cooldown_secs,
            "fetch-breaker-cooldown-secs",
        )?;
        let h = &mut config.webhooks;
        h.max_age = self.webhook_max_age;
        h.retry_base = Duration::from_millis(self.webhook_retry_base_ms);
        h.retry_max = secs(self.webhook_retry_max_secs, "webhook-retry-max-secs")?;
        config.retention = crate::retention::RetentionConfig {
            older_than: self.retention,
            archive_dir: self.archive_dir.clone(),
        };
        Ok(())
    }
}

/// `--public-url`: an absolute http(s) URL (kept as text: a parsed URL would make every
/// command's arguments larger).
fn parse_public_url(text: &str) -> Result<String, String> {
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(text.to_string())
        }
        Ok(_) => Err(format!("`{text}`: must start with http:// or https://")),
        Err(e) => Err(format!("`{text}`: not a URL: {e}")),
    }
}

impl ServeArgs {
    pub fn to_config(&self) -> anyhow::Result<Config> {
        let mut config = Config::default();
        self.worker.apply(&mut config)?;
        config.bind = self.bind;
        config.webhooks.secret_overlap = self.webhook_secret_overlap;
        config.api.max_body_bytes = self.max_body_bytes;
        config.api.read_timeouts = crate::http::serve::ReadTimeouts {
            headers: secs(self.header_read_timeout_secs, "header-read-timeout-secs")?,
            body: secs(self.body_read_timeout_secs, "body-read-timeout-secs")?,
        };
        let limits = &mut config.api.limits;
        limits.max_images_per_job = self.max_images_per_job;
        limits.max_visits = self.max_visits_per_job;
        limits.max_images_per_visit = self.max_images_per_visit;
        limits.max_url_len = self.max_url_bytes;
        limits.max_store_id_len = self.max_store_id_bytes;
        config.api.auth = crate::auth::AuthConfig {
            mode: self.auth,
            max_unfinished_images: self.tenant_max_unfinished_images,
            submits_per_minute: self.tenant_submits_per_minute,
        };
        config.api.sessions = crate::ui::session::SessionConfig {
            idle: self.ui_session_idle,
            public_url: self
                .public_url
                .as_deref()
                .map(|u| url::Url::parse(u).expect("checked by parse_public_url")),
        };
        config.validate()?;
        Ok(config)
    }
}

impl WorkerArgs {
    pub fn to_config(&self) -> anyhow::Result<Config> {
        let mut config = Config::default();
        self.apply(&mut config)?;
        config.validate()?;
        Ok(config)
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
        Command::Serve(args) => {
            let config = args.to_config()?;
            let listener = TcpListener::bind(config.bind)
                .await
                .with_context(|| format!("cannot listen on {}", config.bind))?;
            let roles = if args.no_workers {
                Roles::api_only()
            } else {
                Roles::all()
            };
            let mut app = app::build(config, Some(listener), roles).await?;
            if let Some(addr) = args.metrics_bind {
                let ops = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                app = app.with_ops_listener(ops);
            }
            app.run(shutdown::signal()).await?;
        }
        Command::Worker(args) => {
            let config = args.worker.to_config()?;
            let listener = match args.metrics_bind {
                Some(addr) => Some(
                    TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on {addr}"))?,
                ),
                None => None,
            };
            let app = app::build(config, listener, Roles::workers_only()).await?;
            app.run(shutdown::signal()).await?;
        }
        Command::Migrate(db) => {
            let db = Db::connect_with(&db.to_config()?).await?;
            db.migrate().await?;
            tracing::info!("migrations applied");
        }
        Command::Stores {
            command: StoresCommand::Import { file, db },
        } => {
            let db = Db::connect_with(&db.to_config()?).await?;
            db.migrate().await?;
            let list = stores::load_file(&file)?;
            let count = crate::db::stores::upsert(&db, &list).await?;
            println!("imported {count} stores from {}", file.display());
        }
        Command::Keys { command } => crate::auth::command::run(command).await?,
        Command::Prune(args) => prune(args).await?,
        Command::Submit(args) => {
            let output = Output::detect(args.server.json);
            let options = SubmitOptions {
                file: args.file,
                server: args.server.server,
                api_key: args.server.api_key,
                wait: args.wait,
            };
            return Ok(client_command::submit(options, output).await.into());
        }
        Command::Status(args) => {
            let output = Output::detect(args.server.json);
            let server = &args.server;
            let exit = client_command::status(
                &server.server,
                server.api_key.as_deref(),
                args.job_id,
                output,
            )
            .await;
            return Ok(exit.into());
        }
        Command::Results(args) => {
            let exit = client_command::results(
                &args.server,
                args.api_key.as_deref(),
                args.job_id,
                args.csv,
            )
            .await;
            return Ok(exit.into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `retail-pulse prune`: one pass, then what it removed on stdout.
async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    use crate::retention::Pruner;
    let db = Db::connect_with(&args.db.to_config()?).await?;
    db.migrate().await?;
    let cutoff = db.now().await? - args.older_than.as_millis() as i64;
    let pruner = Pruner::new(
        db.clone(),
        args.older_than,
        args.archive_dir.clone(),
        std::sync::Arc::new(crate::metrics::Metrics::new()),
    );
    let never = tokio_util::sync::CancellationToken::new();
    let mut told = false;
    let pruned = loop {
        if let Some(pruned) = pruner.prune(&never).await? {
            break pruned;
        }
        if !told {
            eprintln!("another process is pruning this database; waiting for it to finish");
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    println!(
        "pruned {} finished before {} ({}, {})",
        plural(pruned.jobs, "job", "jobs"),
        crate::domain::time::format_ms(cutoff),
        plural(pruned.images, "image", "images"),
        plural(pruned.deliveries, "webhook delivery", "webhook deliveries"),
    );
    if let Some(dir) = &args.archive_dir {
        println!(
            "archived {} to {}",
            plural(pruned.archived, "job", "jobs"),
            dir.display()
        );
    }
    db.close().await;
    Ok(())
}
