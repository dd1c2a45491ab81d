//! How a download can fail ([`FetchError`], whose message is what gets stored for the image),
//! what each failure means (final or worth another try, the origin's fault or not), and how
//! a client error is sorted into one.

use std::time::{Duration, Instant};

use thiserror::Error;

use super::{Fetcher, guard};
use crate::domain::ErrorKind;

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("refused: {0}")]
    Blocked(String),
    #[error("HTTP {code} {reason}")]
    Status {
        code: u16,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// `phase` is what ran out of time: "connecting" or "the download".
    #[error("timed out after {} s {phase}", secs(*.after))]
    Timeout {
        phase: &'static str,
        after: Duration,
    },
    #[error("stalled: no data for {} s", secs(*.0))]
    Stalled(Duration),
    /// Bytes arrive, but fewer than `min` per second over a whole `window` (curl's
    /// low-speed limit): a trickling host would otherwise hold a slot until the total timeout.
    #[error("too slow: under {min} bytes/s for {} s", secs(*.window))]
    TooSlow { min: u64, window: Duration },
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("redirect loop at {0}")]
    RedirectLoop(String),
    #[error("connection failed: {0}")]
    Network(String),
    /// The host name does not resolve: retrying will not help.
    #[error("host not found: {0}")]
    HostNotFound(String),
    /// The TLS handshake failed (bad or expired certificate, …): retrying will not help.
    #[error("TLS failed: {0}")]
    Tls(String),
}

/// `30`, `0.5`: seconds as a person writes them.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

impl FetchError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            FetchError::InvalidUrl(_) => ErrorKind::InvalidUrl,
            FetchError::Blocked(_) => ErrorKind::BlockedAddress,
            FetchError::Status { .. } => ErrorKind::HttpStatus,
            FetchError::Timeout { .. } | FetchError::Stalled(_) | FetchError::TooSlow { .. } => {
                ErrorKind::Timeout
            }
            FetchError::TooLarge(_) => ErrorKind::TooLarge,
            FetchError::TooManyRedirects(_) | FetchError::RedirectLoop(_) => {
                ErrorKind::TooManyRedirects
            }
            FetchError::Network(_) | FetchError::HostNotFound(_) | FetchError::Tls(_) => {
                ErrorKind::Network
            }
        }
    }

    /// Transient failures worth another try: timeouts, connection trouble, 408, 429 and 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Timeout { .. }
            | FetchError::Stalled(_)
            | FetchError::TooSlow { .. }
            | FetchError::Network(_) => true,
            FetchError::Status { code, .. } => *code == 408 || *code == 429 || *code >= 500,
            _ => false,
        }
    }

    /// Whether this failure says the origin itself is unreachable or unresponsive (it could
    /// not be connected to, or it stopped sending): what the circuit breaker counts. An
    /// answer of any status, a bad body or a refused address says nothing of the kind.
    pub fn is_origin_failure(&self) -> bool {
        matches!(
            self,
            FetchError::Timeout { .. }
                | FetchError::Stalled(_)
                | FetchError::TooSlow { .. }
                | FetchError::Network(_)
        )
    }

    /// The server's `Retry-After`, when it sent one with a 429 or 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Marker errors a redirect policy returns, recovered from reqwest's error chain.
#[derive(Debug, Error)]
pub(super) enum RedirectRefused {
    #[error("too many redirects")]
    TooMany,
    #[error("redirect loop at {0}")]
    Loop(String),
    #[error("redirect to unsupported scheme {0}")]
    Scheme(String),
}

/// `Retry-After` as seconds (`120`) or as an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`).
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at
        .signed_duration_since(chrono::Utc::now())
        .num_milliseconds()
        .max(0);
    Some(Duration::from_millis(wait as u64))
}

impl Fetcher {
    /// Sorts a client error into a [`FetchError`]; `whole` names what the total timeout cut
    /// short ("for the whole download", "waiting for the answer").
    pub(super) fn classify(
        &self,
        error: reqwest::Error,
        started: Instant,
        whole: &'static str,
    ) -> FetchError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        let mut innermost = error.to_string();
        while let Some(e) = source {
            if let Some(b) = e.downcast_ref::<guard::Blocked>() {
                return FetchError::Blocked(b.0.clone());
            }
            if let Some(r) = e.downcast_ref::<RedirectRefused>() {
                return match r {
                    RedirectRefused::TooMany => {
                        FetchError::TooManyRedirects(self.config.max_redirects)
                    }
                    RedirectRefused::Loop(u) => FetchError::RedirectLoop(u.clone()),
                    RedirectRefused::Scheme(s) => {
                        FetchError::InvalidUrl(format!("redirect to unsupported scheme {s}"))
                    }
                };
            }
            if let Some(u) = e.downcast_ref::<guard::Unresolved>() {
                return FetchError::HostNotFound(u.0.clone());
            }
            if let Some(t) = e.downcast_ref::<rustls::Error>() {
                return FetchError::Tls(t.to_string());
            }
            innermost = e.to_string();
            source = e.source();
        }
        // The system resolver (used when private networks are allowed) says it in words.
        if error.is_connect() && innermost.contains("failed to lookup address") {
            return FetchError::HostNotFound(innermost);
        }
        if error.is_timeout() {
            return if error.is_connect() {
                FetchError::Timeout {
                    phase: "connecting",
                    after: self.config.connect_timeout,
                }
            } else if started.elapsed() + Duration::from_millis(50) >= self.config.timeout {
                FetchError::Timeout {
                    phase: whole,
                    after: self.config.timeout,
                }
            } else {
                FetchError::Stalled(self.config.stall_timeout)
            };
        }
        FetchError::Network(innermost)
    }
}
