//! One typed configuration for the whole service, built from the command line (or the
//! environment variables clap reads for each flag) and validated once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Default database: a SQLite file in the working directory, created on first run.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://retail-pulse.db?mode=rwc";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// Everything the service needs to run. Passed down by value; no globals.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub database: DatabaseConfig,
    /// `None`: the sample store master shipped in the binary, loaded only into an empty table.
    pub store_master: Option<PathBuf>,
    pub api: ApiConfig,
    pub worker: WorkerConfig,
    pub fetch: FetchConfig,
    pub webhooks: WebhookConfig,
    pub retention: RetentionConfig,
}

/// Webhook deliveries (made by worker processes) and the signing secrets (rotated through the
/// API).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// How long after a job finished its event is still retried; then the delivery fails.
    pub max_age: Duration,
    /// First wait before retrying a failed delivery; doubles per attempt, with jitter.
    pub retry_base: Duration,
    /// Longest wait between two attempts.
    pub retry_max: Duration,
    /// How long after a rotation the previous secret still signs, beside the new one.
    pub secret_overlap: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(24 * 3600),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            secret_overlap: Duration::from_secs(24 * 3600),
        }
    }
}

/// Periodic pruning of finished jobs (off unless `older_than` is set).
#[derive(Debug, Clone, Default)]
pub struct RetentionConfig {
    /// Finished jobs whose finish time is older than this are deleted; `None`: never.
    pub older_than: Option<Duration>,
    /// Where each pruned job's results are written first (gzipped CSV); `None`: not kept.
    pub archive_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// How long a query waits for a connection (and so how fast an outage answers 503).
    pub acquire_timeout: Duration,
    /// Timeouts and keepalives every session runs under (see [`crate::db::session`]).
    pub session: crate::db::SessionLimits,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_DATABASE_URL.to_string(),
            max_connections: 16,
            acquire_timeout: crate::db::DEFAULT_ACQUIRE_TIMEOUT,
            session: crate::db::SessionLimits::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body in bytes (413 above it).
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers and its body.
    pub read_timeouts: crate::http::serve::ReadTimeouts,
    /// Sizes a submission must respect.
    pub limits: crate::domain::Limits,
    /// When keys are needed, and the per-tenant quota and submit rate.
    pub auth: crate::auth::AuthConfig,
    /// The dashboard's sign-in sessions.
    pub sessions: crate::ui::session::SessionConfig,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Images in flight per process.
    pub concurrency: usize,
    pub processing_delay: DelayRange,
    /// How long a claimed image stays leased without a heartbeat.
    pub lease: Duration,
    /// How many times an image may be claimed before it is failed for good.
    pub max_attempts: u32,
    /// First wait before retrying a transient download failure; doubles per attempt.
    pub retry_base: Duration,
    /// Longest wait between two attempts.
    pub retry_max: Duration,
    /// How often an idle worker looks for work when no notification arrives.
    pub poll_interval: Duration,
    /// How long shutdown waits for in-flight images before releasing them.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub connect_timeout: Duration,
    /// Whole download, headers and body.
    pub timeout: Duration,
    pub max_bytes: u64,
    pub max_redirects: usize,
    /// Longest wait for the next bytes of a response before the download counts as stalled.
    pub stall_timeout: Duration,
    /// Slowest accepted transfer, in bytes/s averaged over each stall-timeout window (curl's
    /// low-speed limit); 0: off.
    pub min_speed_bytes: u64,
    /// Most downloads in flight per origin (scheme, host, port) in one process; `None`: half
    /// the worker slots (at least 1), so one origin never holds every slot.
    pub max_per_origin: Option<usize>,
    /// Consecutive connect failures or timeouts of one origin that open its circuit breaker
    /// (0: no breaker).
    pub breaker_failures: u32,
    /// How long an open breaker defers the origin's images before a probe is let through.
    pub breaker_cooldown: Duration,
    pub allow_private_networks: bool,
    /// Private hosts and networks reachable even when private networks are not.
    pub allow_hosts: crate::fetch::guard::AllowList,
}

/// The simulated GPU time per image: a fixed value or a uniform random range, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayRange {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl DelayRange {
    /// Parses `100-400` (a range), `250` (fixed) or `0` (off).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let number = |s: &str| {
            s.trim().parse::<u64>().map_err(|_| {
                invalid(
                    "processing-delay-ms",
                    format!("`{text}` is not a number of milliseconds or a range like 100-400"),
                )
            })
        };
        let (min_ms, max_ms) = match text.split_once('-') {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => {
                let n = number(text)?;
                (n, n)
            }
        };
        if min_ms > max_ms {
            return Err(invalid(
                "processing-delay-ms",
                format!("range `{text}` has its minimum above its maximum"),
            ));
        }
        Ok(Self { min_ms, max_ms })
    }

    /// A delay drawn uniformly from the range.
    pub fn sample(&self) -> Duration {
        Duration::from_millis(fastrand::u64(self.min_ms..=self.max_ms))
    }

    pub fn is_zero(&self) -> bool {
        self.max_ms == 0
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            database: DatabaseConfig::default(),
            store_master: None,
            api: ApiConfig {
                max_body_bytes: 32 * 1024 * 1024,
                read_timeouts: crate::http::serve::ReadTimeouts::default(),
                limits: crate::domain::Limits::default(),
                auth: crate::auth::AuthConfig::default(),
                sessions: crate::ui::session::SessionConfig::default(),
            },
            worker: WorkerConfig {
                concurrency: 32,
                processing_delay: DelayRange {
                    min_ms: 100,
                    max_ms: 400,
                },
                lease: Duration::from_secs(30),
                max_attempts: 3,
                retry_base: Duration::from_secs(1),
                retry_max: Duration::from_secs(60),
                poll_interval: Duration::from_secs(1),
                shutdown_grace: Duration::from_secs(10),
            },
            fetch: FetchConfig {
                connect_timeout: Duration::from_secs(5),
                timeout: Duration::from_secs(30),
                max_bytes: 50 * 1024 * 1024,
                max_redirects: 5,
                stall_timeout: Duration::from_secs(10),
                min_speed_bytes: 1024,
                max_per_origin: None,
                breaker_failures: 5,
                breaker_cooldown: Duration::from_secs(30),
                allow_private_networks: false,
                allow_hosts: crate::fetch::guard::AllowList::default(),
            },
            webhooks: WebhookConfig::default(),
            retention: RetentionConfig::default(),
        }
    }
}

/// Parses a duration written as a whole number and a unit: `45s`, `90m`, `12h`, `30d` (`0s`,
/// or a bare `0`, is zero).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let problem = || format!("`{text}` is not a duration like 45s, 90m, 12h or 30d");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(problem)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| problem())?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(problem()),
    };
    number
        .checked_mul(unit_secs)
        .filter(|secs| *secs <= 100 * 365 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is longer than a hundred years"))
}

impl Config {
    /// Downloads one origin may have in flight in this process: the configured number, or
    /// half the worker slots (at least 1).
    pub fn max_per_origin(&self) -> usize {
        self.fetch
            .max_per_origin
            .unwrap_or((self.worker.concurrency / 2).max(1))
    }

    /// Checks the relations between settings that the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.worker.concurrency == 0 {
            return Err(invalid("workers", "must be at least 1"));
        }
        if self.worker.max_attempts == 0 {
            return Err(invalid("max-attempts", "must be at least 1"));
        }
        if self.worker.lease < Duration::from_secs(1) {
            return Err(invalid("lease-secs", "must be at least 1 second"));
        }
        if self.database.max_connections < 2 {
            return Err(invalid("db-max-connections", "must be at least 2"));
        }
        if self.api.sessions.idle < Duration::from_secs(1) {
            return Err(invalid("ui-session-idle", "must be at least 1 second"));
        }
        if let Some(url) = &self.api.sessions.public_url
            && !matches!(url.scheme(), "http" | "https")
        {
            return Err(invalid("public-url", "must start with http:// or https://"));
        }
        if self.webhooks.retry_base.is_zero() {
            return Err(invalid("webhook-retry-base-ms", "must be above 0"));
        }
        if self.webhooks.retry_max < self.webhooks.retry_base {
            return Err(invalid(
                "webhook-retry-max-secs",
                "must not be below --webhook-retry-base-ms",
            ));
        }
        if self.fetch.max_per_origin == Some(0) {
            return Err(invalid("fetch-max-per-origin", "must be at least 1"));
        }
        if self.fetch.breaker_failures > 0 && self.fetch.breaker_cooldown.is_zero() {
            return Err(invalid("fetch-breaker-cooldown-secs", "must be above 0"));
        }
        if self.fetch.max_bytes == 0 {
            return Err(invalid("fetch-max-bytes", "must be above 0"));
        }
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database-url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_parses_range_fixed_and_zero() {
        assert_eq!(
            DelayRange::parse("100-400").unwrap(),
            DelayRange {
                min_ms: 100,
                max_ms: 400
            }
        );
        assert_eq!(
            DelayRange::parse("250").unwrap(),
            DelayRange {
                min_ms: 250,
                max_ms: 250
            }
        );
        assert!(DelayRange::parse("0").unwrap().is_zero());
    }

    #[test]
    fn delay_rejects_garbage_and_inverted_ranges() {
        assert!(DelayRange::parse("abc").is_err());
        assert!(DelayRange::parse("400-100").is_err());
        assert!(DelayRange::parse("-5").is_err());
    }

    #[test]
    fn delay_samples_stay_in_range() {
        let range = DelayRange::parse("10-20").unwrap();
        for _ in 0..1000 {
            let d = range.sample().as_millis();
            assert!((10..=20).contains(&d));
        }
    }

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration(" 45s ").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in [
            "",
            "12",
            "h",
            "1.5h",
            "-1d",
            "3w",
            "1h30m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_trickling_host_ends_within_a_minute_retries_included_by_default() {
        let c = Config::default();
        assert!(c.fetch.min_speed_bytes > 0);
        // Each attempt ends one speed window (the stall timeout) after the answer's headers;
        // between attempts, the longest backoff of each retry.
        let attempts = c.worker.max_attempts;
        let mut worst = c.fetch.stall_timeout * attempts;
        for retry in 1..attempts {
            worst += (c.worker.retry_base * 2u32.pow(retry - 1)).min(c.worker.retry_max);
        }
        assert!(worst < Duration::from_secs(60), "{worst:?}");
    }

    #[test]
    fn one_origin_gets_half_the_slots_unless_told_otherwise() {
        let mut c = Config::default();
        c.worker.concurrency = 32;
        assert_eq!(c.max_per_origin(), 16);
        c.worker.concurrency = 1;
        assert_eq!(c.max_per_origin(), 1);
        c.fetch.max_per_origin = Some(3);
        assert_eq!(c.max_per_origin(), 3);
        c.fetch.max_per_origin = Some(0);
        assert!(c.validate().is_err());
    }

    #[test]
    fn default_config_is_valid() {
        Config::default().validate().unwrap();
    }
}
