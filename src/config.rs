//! One typed configuration for the whole service, assembled from each area's own section
//! (`db::DbConfig`, `fetch::FetchConfig`, `worker::WorkerConfig`, …) and validated once at
//! start-up, where the relations between sections are checked. Only `app` and `cli` read it:
//! every area below takes its own section, by value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::auth::AuthConfig;
use crate::auth::sessions::SessionConfig;
use crate::db::DbConfig;
use crate::domain::Limits;
use crate::fetch::FetchConfig;
use crate::retention::RetentionConfig;
use crate::webhooks::WebhookConfig;
use crate::worker::WorkerConfig;

/// The proxies the API believes, a section of [`ApiConfig`].
pub use crate::web::client::TrustedProxies;
/// The API's read timeouts, a section of [`ApiConfig`].
pub use crate::web::serve::ReadTimeouts;

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
    pub database: DbConfig,
    /// `None`: the sample store master shipped in the binary, loaded only into an empty table.
    pub store_master: Option<PathBuf>,
    pub api: ApiConfig,
    pub worker: WorkerConfig,
    pub fetch: FetchConfig,
    pub webhooks: WebhookConfig,
    pub retention: RetentionConfig,
}

/// What the API and the dashboard need: request limits, keys, sign-in sessions.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body in bytes (413 above it).
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers and its body.
    pub read_timeouts: ReadTimeouts,
    /// Sizes a submission must respect.
    pub limits: Limits,
    /// When keys are needed, and the per-tenant quota and submit rate.
    pub auth: AuthConfig,
    /// The dashboard's sign-in sessions.
    pub sessions: SessionConfig,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            read_timeouts: ReadTimeouts::default(),
            limits: Limits::default(),
            auth: AuthConfig::default(),
            sessions: SessionConfig::default(),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            database: DbConfig::default(),
            store_master: None,
            api: ApiConfig::default(),
            worker: WorkerConfig::default(),
            fetch: FetchConfig::default(),
            webhooks: WebhookConfig::default(),
            retention: RetentionConfig::default(),
        }
    }
}

impl Config {
    /// Checks the relations between settings that the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.worker.concurrency == 0 {
            return Err(invalid("workers", "must be at least 1"));
        }
        if self.worker.max_attempts == 0 {
            return Err(invalid("max-attempts", "must be at least 1"));
        }
        if self.worker.max_claims < self.worker.max_attempts {
            return Err(invalid("max-claims", "must not be below --max-attempts"));
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
        if let Some(problem) = self
            .retention
            .archive_dir
            .as_deref()
            .and_then(crate::retention::archive_dir_problem)
        {
            return Err(invalid("archive-dir", problem));
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
        assert_eq!(c.fetch.max_per_origin(c.worker.concurrency), 16);
        c.worker.concurrency = 1;
        assert_eq!(c.fetch.max_per_origin(c.worker.concurrency), 1);
        c.fetch.max_per_origin = Some(3);
        assert_eq!(c.fetch.max_per_origin(c.worker.concurrency), 3);
        c.fetch.max_per_origin = Some(0);
        assert!(c.validate().is_err());
    }

    #[test]
    fn default_config_is_valid() {
        Config::default().validate().unwrap();
    }
}
