//! `retail-pulse serve` and `retail-pulse worker`: the service's flags, turned into a
//! [`Config`] (every default is the one its area's `Default` gives), and the two roles run
//! until a shutdown signal.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;

use super::db::DbArgs;
use super::secrets::SecretKeyArgs;
use super::values::{
    Span, parse_allow_hosts, parse_delay, parse_public_url, parse_trusted_proxies, secs,
};
use crate::app::{self, Roles};
use crate::auth::sessions::SessionConfig;
use crate::auth::{AuthConfig, AuthMode};
use crate::config::{ApiConfig, Config, TrustedProxies};
use crate::domain::Limits;
use crate::fetch::FetchConfig;
use crate::fetch::guard::AllowList;
use crate::retention::RetentionConfig;
use crate::shutdown;
use crate::web::serve::ReadTimeouts;
use crate::webhooks::WebhookConfig;
use crate::worker::{DelayRange, WorkerConfig};

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "RP_BIND", default_value_t = Config::default().bind)]
    pub bind: std::net::SocketAddr,
    /// Serve the API only; leave the images to `retail-pulse worker` processes.
    #[arg(long, env = "RP_NO_WORKERS", num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub no_workers: bool,
    /// Largest request body in bytes.
    #[arg(long, env = "RP_MAX_BODY_BYTES", default_value_t = ApiConfig::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Seconds a client has to send a request's headers, from the connection's start or the
    /// end of its previous response; past it the connection is closed (0: no limit).
    #[arg(long, env = "RP_HEADER_READ_TIMEOUT_SECS", default_value_t = ReadTimeouts::default().headers.as_secs_f64())]
    pub header_read_timeout_secs: f64,
    /// Seconds a client has to send a request's whole body, from the end of its headers;
    /// past it the request is answered 408 (0: no limit).
    #[arg(long, env = "RP_BODY_READ_TIMEOUT_SECS", default_value_t = ReadTimeouts::default().body.as_secs_f64())]
    pub body_read_timeout_secs: f64,
    /// Most images accepted in one job.
    #[arg(long, env = "RP_MAX_IMAGES_PER_JOB", default_value_t = Limits::default().max_images_per_job)]
    pub max_images_per_job: usize,
    /// Most visits accepted in one job.
    #[arg(long, env = "RP_MAX_VISITS_PER_JOB", default_value_t = Limits::default().max_visits)]
    pub max_visits_per_job: usize,
    /// Most images accepted in one visit.
    #[arg(long, env = "RP_MAX_IMAGES_PER_VISIT", default_value_t = Limits::default().max_images_per_visit)]
    pub max_images_per_visit: usize,
    /// Longest accepted image URL, in bytes.
    #[arg(long, env = "RP_MAX_URL_BYTES", default_value_t = Limits::default().max_url_len)]
    pub max_url_bytes: usize,
    /// Longest accepted store_id, in bytes.
    #[arg(long, env = "RP_MAX_STORE_ID_BYTES", default_value_t = Limits::default().max_store_id_len)]
    pub max_store_id_bytes: usize,
    /// When API requests need a key: `auto` (loopback clients without one until the first
    /// key is created, then always), `required` (always) or `off` (never: a trusted network
    /// only).
    #[arg(long, env = "RP_AUTH", default_value_t = AuthConfig::default().mode)]
    pub auth: AuthMode,
    /// Most unfinished images one tenant may hold; a submit beyond it gets 429 (0: unlimited).
    #[arg(
        long,
        env = "RP_TENANT_MAX_UNFINISHED_IMAGES",
        default_value_t = AuthConfig::default().max_unfinished_images
    )]
    pub tenant_max_unfinished_images: u64,
    /// Submits per minute per tenant, with bursts of as many (0: unlimited).
    #[arg(long, env = "RP_TENANT_SUBMITS_PER_MINUTE", default_value_t = AuthConfig::default().submits_per_minute)]
    pub tenant_submits_per_minute: u32,
    /// Also serve /metrics, /healthz and /readyz, without keys, on this address (for the
    /// monitoring network; the API's own /metrics needs an admin key).
    #[arg(long, env = "RP_METRICS_BIND")]
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// After a webhook secret is rotated, how long the previous one still signs deliveries
    /// beside the new one: `24h`, `90m`, `0s`.
    #[arg(long, env = "RP_WEBHOOK_SECRET_OVERLAP", default_value_t = Span(WebhookConfig::default().secret_overlap))]
    pub webhook_secret_overlap: Span,
    /// The address people use to reach this service, e.g. `https://pulse.example.com`; an
    /// `https://` one makes the dashboard's cookies `Secure`.
    #[arg(long, env = "RP_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
    /// Reverse proxies in front of the API (addresses and CIDRs, comma-separated) whose
    /// `X-Forwarded-For` names the client; from anyone else the header is ignored.
    #[arg(long, env = "RP_TRUSTED_PROXIES", default_value = "", value_parser = parse_trusted_proxies)]
    pub trusted_proxies: TrustedProxies,
    /// A dashboard sign-in session unused for this long ends: `12h`, `30m`.
    #[arg(long, env = "RP_UI_SESSION_IDLE", default_value_t = Span(SessionConfig::default().idle))]
    pub ui_session_idle: Span,
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
    /// PostgreSQL: apply missing migrations at start, as `retail-pulse migrate` does (without
    /// it the process waits for them; on SQLite the schema is always migrated at start).
    #[arg(long, env = "RP_MIGRATE", num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub migrate: bool,
    #[command(flatten)]
    pub secrets: SecretKeyArgs,
    /// Store master CSV loaded at start-up (default: the bundled sample, loaded only into an
    /// empty store table).
    #[arg(long, env = "RP_STORE_MASTER")]
    pub store_master: Option<PathBuf>,
    /// Images in flight per process.
    #[arg(long, env = "RP_WORKERS", default_value_t = WorkerConfig::default().concurrency)]
    pub workers: usize,
    /// Simulated GPU time per image in ms: a range `100-400`, a fixed `250`, or `0` for none.
    #[arg(long, env = "RP_PROCESSING_DELAY_MS", default_value_t = WorkerConfig::default().processing_delay, value_parser = parse_delay)]
    pub processing_delay_ms: DelayRange,
    /// Let image URLs reach loopback, private, link-local and other non-global addresses.
    #[arg(long, env = "RP_ALLOW_PRIVATE_NETWORKS", num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub allow_private_networks: bool,
    /// Seconds to establish a connection to an image host.
    #[arg(long, env = "RP_FETCH_CONNECT_TIMEOUT_SECS", default_value_t = FetchConfig::default().connect_timeout.as_secs_f64())]
    pub fetch_connect_timeout_secs: f64,
    /// Seconds for a whole image download.
    #[arg(long, env = "RP_FETCH_TIMEOUT_SECS", default_value_t = FetchConfig::default().timeout.as_secs_f64())]
    pub fetch_timeout_secs: f64,
    /// Largest image download in bytes.
    #[arg(long, env = "RP_FETCH_MAX_BYTES", default_value_t = FetchConfig::default().max_bytes)]
    pub fetch_max_bytes: u64,
    /// Seconds without a byte from an image host before the download counts as stalled.
    #[arg(long, env = "RP_FETCH_STALL_TIMEOUT_SECS", default_value_t = FetchConfig::default().stall_timeout.as_secs_f64())]
    pub fetch_stall_timeout_secs: f64,
    /// Slowest accepted image download, in bytes/s averaged over each stall-timeout window;
    /// slower fails as "too slow" (and is retried). 0: no limit.
    #[arg(long, env = "RP_FETCH_MIN_SPEED_BYTES", default_value_t = FetchConfig::default().min_speed_bytes)]
    pub fetch_min_speed_bytes: u64,
    /// Most downloads in flight per origin (scheme, host, port) across every worker sharing
    /// the database (each holds a share; set it the same on all); images of a busy origin
    /// wait without holding a slot. Default: half of --workers (at least 1).
    #[arg(long, env = "RP_FETCH_MAX_PER_ORIGIN")]
    pub fetch_max_per_origin: Option<usize>,
    /// Consecutive connect failures or timeouts of one origin, counted across every worker,
    /// after which its images are deferred for the cool-down (its circuit breaker opens).
    /// 0: no breaker.
    #[arg(long, env = "RP_FETCH_BREAKER_FAILURES", default_value_t = FetchConfig::default().breaker_failures)]
    pub fetch_breaker_failures: u32,
    /// Seconds an open breaker defers its origin's images before one probe download is let
    /// through (success closes it, failure opens it again).
    #[arg(long, env = "RP_FETCH_BREAKER_COOLDOWN_SECS", default_value_t = FetchConfig::default().breaker_cooldown.as_secs_f64())]
    pub fetch_breaker_cooldown_secs: f64,
    /// Private hosts and networks image URLs may reach even without --allow-private-networks:
    /// comma-separated host names (`intranet.local`, `*.corp.example`), addresses and CIDRs.
    #[arg(long, env = "RP_ALLOW_HOSTS", default_value = "", value_parser = parse_allow_hosts)]
    pub allow_hosts: AllowList,
    /// Redirects followed per download.
    #[arg(long, env = "RP_FETCH_MAX_REDIRECTS", default_value_t = FetchConfig::default().max_redirects)]
    pub fetch_max_redirects: usize,
    /// Seconds an image stays leased to a worker between heartbeats.
    #[arg(long, env = "RP_LEASE_SECS", default_value_t = WorkerConfig::default().lease.as_secs_f64())]
    pub lease_secs: f64,
    /// Attempts (downloads) of one image before it is failed for good.
    #[arg(long, env = "RP_MAX_ATTEMPTS", default_value_t = WorkerConfig::default().max_attempts)]
    pub max_attempts: u32,
    /// Claims of one image without an outcome (its workers stopped before finishing it)
    /// before it is failed for good; at least --max-attempts.
    #[arg(long, env = "RP_MAX_CLAIMS", default_value_t = WorkerConfig::default().max_claims)]
    pub max_claims: u32,
    /// Milliseconds before the first retry of a transient failure (doubles per attempt).
    #[arg(long, env = "RP_RETRY_BASE_MS", default_value_t = WorkerConfig::default().retry_base.as_millis() as u64)]
    pub retry_base_ms: u64,
    /// Longest wait between two attempts, in seconds.
    #[arg(long, env = "RP_RETRY_MAX_SECS", default_value_t = WorkerConfig::default().retry_max.as_secs_f64())]
    pub retry_max_secs: f64,
    /// Milliseconds between looks for work when idle and no notification arrives.
    #[arg(long, env = "RP_POLL_INTERVAL_MS", default_value_t = WorkerConfig::default().poll_interval.as_millis() as u64)]
    pub poll_interval_ms: u64,
    /// Seconds shutdown waits for in-flight images before handing them back to the queue.
    #[arg(long, env = "RP_SHUTDOWN_GRACE_SECS", default_value_t = WorkerConfig::default().shutdown_grace.as_secs_f64())]
    pub shutdown_grace_secs: f64,
    /// How long after a job finished its webhook event is still retried: `24h`, `90m`.
    #[arg(long, env = "RP_WEBHOOK_MAX_AGE", default_value_t = Span(WebhookConfig::default().max_age))]
    pub webhook_max_age: Span,
    /// Milliseconds before the first retry of a webhook delivery (doubles per attempt).
    #[arg(long, env = "RP_WEBHOOK_RETRY_BASE_MS", default_value_t = WebhookConfig::default().retry_base.as_millis() as u64)]
    pub webhook_retry_base_ms: u64,
    /// Longest wait between two attempts of a webhook delivery, in seconds.
    #[arg(long, env = "RP_WEBHOOK_RETRY_MAX_SECS", default_value_t = WebhookConfig::default().retry_max.as_secs_f64())]
    pub webhook_retry_max_secs: f64,
    /// Delete finished jobs older than this, every so often (`30d`, `12h`); unset: never.
    #[arg(long, env = "RP_RETENTION")]
    pub retention: Option<Span>,
    /// Before retention deletes a job, write its results there as gzipped CSV.
    #[arg(long, env = "RP_ARCHIVE_DIR")]
    pub archive_dir: Option<PathBuf>,
}

impl WorkerArgs {
    fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        config.database = self.db.to_config()?;
        config.database.migrate_at_start = self.migrate;
        config.store_master = self.store_master.clone();
        let w = &mut config.worker;
        w.concurrency = self.workers;
        w.processing_delay = self.processing_delay_ms;
        w.lease = secs(self.lease_secs, "lease-secs")?;
        w.max_attempts = self.max_attempts;
        w.max_claims = self.max_claims;
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
        h.max_age = self.webhook_max_age.0;
        h.retry_base = Duration::from_millis(self.webhook_retry_base_ms);
        h.retry_max = secs(self.webhook_retry_max_secs, "webhook-retry-max-secs")?;
        h.secret_keys = self.secrets.to_keys()?;
        config.retention = RetentionConfig {
            older_than: self.retention.map(|s| s.0),
            archive_dir: self.archive_dir.clone(),
        };
        Ok(())
    }
}

impl ServeArgs {
    pub fn to_config(&self) -> anyhow::Result<Config> {
        let mut config = Config::default();
        self.worker.apply(&mut config)?;
        config.bind = self.bind;
        config.webhooks.secret_overlap = self.webhook_secret_overlap.0;
        config.api.max_body_bytes = self.max_body_bytes;
        config.api.read_timeouts = ReadTimeouts {
            headers: secs(self.header_read_timeout_secs, "header-read-timeout-secs")?,
            body: secs(self.body_read_timeout_secs, "body-read-timeout-secs")?,
        };
        let limits = &mut config.api.limits;
        limits.max_images_per_job = self.max_images_per_job;
        limits.max_visits = self.max_visits_per_job;
        limits.max_images_per_visit = self.max_images_per_visit;
        limits.max_url_len = self.max_url_bytes;
        limits.max_store_id_len = self.max_store_id_bytes;
        config.api.auth = AuthConfig {
            mode: self.auth,
            max_unfinished_images: self.tenant_max_unfinished_images,
            submits_per_minute: self.tenant_submits_per_minute,
            behind_proxy: false,
        };
        config.api.trusted_proxies = self.trusted_proxies.clone();
        config.api.sessions = SessionConfig {
            idle: self.ui_session_idle.0,
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

/// Binds `addr`, saying which address could not be bound.
async fn listen(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// `retail-pulse serve`: the API and, unless `--no-workers`, the workers, in one process.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let listener = listen(config.bind).await?;
    let roles = if args.no_workers {
        Roles::api_only()
    } else {
        Roles::all()
    };
    let mut app = app::build(config, Some(listener), roles).await?;
    if let Some(addr) = args.metrics_bind {
        app = app.with_ops_listener(listen(addr).await?);
    }
    app.run(shutdown::signal()).await?;
    Ok(())
}

/// `retail-pulse worker`: workers only, with the operations endpoints on `--metrics-bind`.
pub async fn worker(args: WorkerCommandArgs) -> anyhow::Result<()> {
    let config = args.worker.to_config()?;
    let listener = match args.metrics_bind {
        Some(addr) => Some(listen(addr).await?),
        None => None,
    };
    let app = app::build(config, listener, Roles::workers_only()).await?;
    app.run(shutdown::signal()).await?;
    Ok(())
}
