//! The HTTP client for image downloads: the first 64 KB of an image asked for by `Range` (all a
//! measurement needs), connect and total timeouts, a byte cap enforced on the size a host
//! states and while streaming, a redirect cap with loop detection, and the address guard of
//! [`guard`]. Every
//! failure comes back as a [`FetchError`] whose message is what gets stored for the image.
//!
//! Webhook deliveries go out through the same [`Fetcher`] ([`Fetcher::post`]): the same guard,
//! allow-list and timeouts, but redirects are never followed (a receiver that answers 3xx has
//! not taken the event, and following it would re-send a signed body somewhere else).

pub mod config;
pub mod guard;
pub mod origins;

pub use config::FetchConfig;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::{Url, redirect};
use thiserror::Error;

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

/// A completed download: the kept beginning of the body, and the body's full size.
#[derive(Debug, Clone)]
pub struct Download {
    pub head: Bytes,
    pub total_bytes: u64,
    /// The body went on past [`HEAD_CAP`] without `enough` being satisfied.
    pub head_capped: bool,
}

/// Most bytes of a body kept while looking for an image header. Camera JPEGs carry their size
/// well inside the first 100 KB, even behind large EXIF blocks.
pub const HEAD_CAP: usize = 1024 * 1024;

/// The first prefix of a body offered to a download's `enough` (see [`Fetcher::download`]).
const FIRST_LOOK: usize = 4 * 1024;

/// Bytes asked for first (`Range`): an image's header is almost always inside them.
pub const FIRST_RANGE: usize = 64 * 1024;

/// A body read by [`Fetcher::download`]: its kept beginning, and what was seen of it.
struct Body {
    head: Bytes,
    /// Bytes received.
    read: u64,
    /// `enough` said the kept beginning suffices.
    satisfied: bool,
    /// The body went on past [`HEAD_CAP`] without `enough` being satisfied.
    head_capped: bool,
}

/// The full size of a body a `206 Partial Content` answer states (`Content-Range: bytes
/// 0-65535/2400000`), when it states one.
fn stated_size(response: &reqwest::Response) -> Option<u64> {
    let range = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let (unit, rest) = range.trim().split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    rest.rsplit_once('/')?.1.trim().parse().ok()
}

/// `Retry-After` as seconds (`120`) or as an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`).
fn parse_retry_after(value: &str) -> Option<Duration> {
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

/// The low-speed limit of one download: the bytes received in consecutive windows of the
/// stall timeout's length; a window that ends with fewer than `min × window` bytes fails the
/// download as [`FetchError::TooSlow`] (or [`FetchError::Stalled`] when nothing came at all).
struct SpeedCheck {
    min: u64,
    window: Duration,
    needed: u64,
    started: Instant,
    bytes: u64,
}

impl SpeedCheck {
    fn new(min: u64, window: Duration) -> Self {
        Self {
            min,
            window,
            needed: (min as f64 * window.as_secs_f64()).ceil() as u64,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// When the current window ends; `None` when the limit is off.
    fn window_end(&self) -> Option<Instant> {
        (self.min > 0 && !self.window.is_zero()).then(|| self.started + self.window)
    }

    /// Counts `bytes` just received; at the end of a window, judges it and starts the next.
    fn check(&mut self, bytes: u64) -> Result<(), FetchError> {
        let Some(end) = self.window_end() else {
            return Ok(());
        };
        self.bytes += bytes;
        let now = Instant::now();
        if now < end {
            return Ok(());
        }
        if self.bytes == 0 {
            return Err(FetchError::Stalled(self.window));
        }
        if self.bytes < self.needed {
            return Err(FetchError::TooSlow {
                min: self.min,
                window: self.window,
            });
        }
        self.started = now;
        self.bytes = 0;
        Ok(())
    }
}

/// The origin of a URL as the per-origin limits see it: scheme, host and port (the scheme's
/// default port written out), lower-cased; `None` for a URL that does not parse or has no host
/// (it fails at once anyway).
pub fn origin_of(url: &str) -> Option<String> {
    let parsed = Url::parse(url.trim()).ok()?;
    let host = parsed.host_str()?;
    let port = parsed.port_or_known_default()?;
    Some(format!(
        "{}://{}:{port}",
        parsed.scheme(),
        host.to_ascii_lowercase()
    ))
}

/// reqwest is built without a bundled crypto provider; this installs ring (already in the
/// tree for the database driver) as the process default. Any later call is a no-op. Call it
/// before building any other reqwest client in the process.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Downloads images and posts webhook events. Cheap to clone (the connection pools are shared).
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    /// The same configuration, but no redirect is followed: for webhook deliveries.
    poster: reqwest::Client,
    config: FetchConfig,
    policy: Arc<guard::Policy>,
}

/// What the total timeout of a download cuts short.
const DOWNLOAD: &str = "for the whole download";

/// Marker errors a redirect policy returns, recovered from reqwest's error chain.
#[derive(Debug, Error)]
enum RedirectRefused {
    #[error("too many redirects")]
    TooMany,
    #[error("redirect loop at {0}")]
    Loop(String),
    #[error("redirect to unsupported scheme {0}")]
    Scheme(String),
}

/// Idle connections kept per host (see [`Fetcher::client`]).
const IDLE_CONNECTIONS_PER_HOST: usize = 256;

impl Fetcher {
    pub fn new(config: &FetchConfig) -> Result<Self, FetchError> {
        install_crypto_provider();
        let policy = Arc::new(guard::Policy {
            allow_private: config.allow_private_networks,
            allow: config.allow_hosts.clone(),
        });
        let max_redirects = config.max_redirects;
        let redirect_policy = policy.clone();
        let redirects = redirect::Policy::custom(move |attempt| {
            let url = attempt.url().clone();
            if !matches!(url.scheme(), "http" | "https") {
                return attempt.error(RedirectRefused::Scheme(url.scheme().to_string()));
            }
            if attempt.previous().iter().any(|u| u == &url) {
                return attempt.error(RedirectRefused::Loop(url.to_string()));
            }
            if attempt.previous().len() > max_redirects {
                return attempt.error(RedirectRefused::TooMany);
            }
            // Names are checked again by the resolver when the redirect connects.
            if let Err(blocked) = redirect_policy.check_literal(&url) {
                return attempt.error(blocked);
            }
            attempt.follow()
        });
        Ok(Self {
            client: Self::client(config, &policy, redirects)?,
            poster: Self::client(config, &policy, redirect::Policy::none())?,
            config: config.clone(),
            policy,
        })
    }

    /// One client configuration for every request the service makes to a client-chosen URL:
    /// timeouts, no proxy, and the guarded resolver; only the redirect policy differs.
    fn client(
        config: &FetchConfig,
        policy: &Arc<guard::Policy>,
        redirects: redirect::Policy,
    ) -> Result<reqwest::Client, FetchError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("retail-pulse/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .read_timeout(config.stall_timeout)
            // An idle pooled connection keeps the read buffer its last body grew (up to
            // ~400 KB in hyper): with thousands of slots resting between downloads, an
            // unbounded pool held most of a process's memory. Past this many per host, a
            // finished connection is closed instead of kept. Too few, and every burst of
            // downloads opens new connections whose buffers grow again (at 64, connecting
            // and regrowing took a sixth of P8's CPU: 0.58x of 8,000 images/s, against 0.74x
            // at 256, for ~50 MB more at its peak).
            .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
            // Proxy variables in the environment would send requests through a proxy that
            // resolves and connects on our behalf, out of the guard's sight.
            .no_proxy()
            .redirect(redirects);
        if !config.allow_private_networks {
            builder = builder.dns_resolver(guard::GuardedResolver(policy.clone()));
        }
        builder
            .build()
            .map_err(|e| FetchError::Network(format!("cannot build HTTP client: {e}")))
    }

    /// The longest a request can take (connecting, sending and the answer's headers).
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// A client-chosen URL, parsed and checked: http(s), a host, and an IP literal only where
    /// the guard permits it (names are checked by the resolver when connecting).
    fn checked_url(&self, url: &str) -> Result<Url, FetchError> {
        let parsed = Url::parse(url.trim()).map_err(|e| FetchError::InvalidUrl(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(FetchError::InvalidUrl(format!(
                "scheme {} is not supported (only http and https)",
                parsed.scheme()
            )));
        }
        if parsed.host().is_none() {
            return Err(FetchError::InvalidUrl("no host".into()));
        }
        self.policy
            .check_literal(&parsed)
            .map_err(|b| FetchError::Blocked(b.0))?;
        Ok(parsed)
    }

    /// POSTs `body` as JSON with `headers` to a client-chosen URL, following no redirect.
    /// `Ok` only for a 2xx answer; any other answer is [`FetchError::Status`] (a 3xx says that
    /// redirects are not followed). The answer's body is not read. (No span names the URL:
    /// a webhook URL may carry credentials.)
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<(), FetchError> {
        let parsed = self.checked_url(url)?;
        let mut request = self
            .poster
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let started = Instant::now();
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| self.classify(e, started, "waiting for the answer"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let reason = status.canonical_reason().unwrap_or("").to_string();
        Err(FetchError::Status {
            code: status.as_u16(),
            reason: if status.is_redirection() {
                format!("{reason} (redirects are not followed)")
            } else {
                reason
            },
            retry_after: response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
        })
    }

    /// Fetches the beginning of `url` that `enough` needs (for an image, until its header can
    /// be read), and learns the body's size.
    ///
    /// It first asks for the first [`FIRST_RANGE`] bytes only (`Range`). A host that honours
    /// that (S3, CDNs, nginx, most file servers) sends just those, and states the full size in
    /// `Content-Range`, to which the size cap applies: a photo of several MB costs its first
    /// 64 KB of transfer, copying and CPU. When the header lies further in, or the host ignores
    /// `Range` and sends everything (200), or refuses the range (416, e.g. for an empty body),
    /// the whole body is read as below.
    ///
    /// Reading a whole body keeps bytes only until `enough` is satisfied, and never more than
    /// [`HEAD_CAP`]: memory per download is then the header, not the photo. The rest is still
    /// read (the download completes and the cap applies) but not stored.
    #[tracing::instrument(level = "debug", skip_all, fields(url = %url))]
    pub async fn download(
        &self,
        url: &str,
        enough: impl Fn(&[u8]) -> bool,
    ) -> Result<Download, FetchError> {
        let parsed = self.checked_url(url)?;
        let started = Instant::now();
        let response = self.get(parsed.clone(), true, started).await?;
        let max = self.config.max_bytes;
        let (response, cap) = match response.status() {
            reqwest::StatusCode::PARTIAL_CONTENT => {
                let stated = stated_size(&response);
                if stated.is_some_and(|size| size > max) {
                    return Err(FetchError::TooLarge(max));
                }
                let part = self.read(response, &enough, started, max).await?;
                // A stated size below what came is no size at all (`bytes 0-65535/0`).
                let stated = stated.filter(|&size| size >= part.read);
                if part.satisfied || stated == Some(part.read) {
                    return Ok(Download {
                        total_bytes: stated.unwrap_or(part.read),
                        head: part.head,
                        head_capped: false,
                    });
                }
                // The header lies past the first range: read the whole body instead, within
                // what is left of the size cap and of the time for the whole download.
                let whole = self.get(parsed, false, started).await?;
                (whole, max.saturating_sub(part.read))
            }
            reqwest::StatusCode::RANGE_NOT_SATISFIABLE => {
                (self.get(parsed, false, started).await?, max)
            }
            _ => (response, max),
        };
        let body = self.read(response, &enough, started, cap).await?;
        Ok(Download {
            head: body.head,
            total_bytes: body.read,
            head_capped: body.head_capped,
        })
    }

    /// Sends a GET of `url` (of its first [`FIRST_RANGE`] bytes when `ranged`), with what is
    /// left since `started` of the time for the whole download; any answer but a success, or
    /// a 416 to a ranged request, is an error.
    async fn get(
        &self,
        url: Url,
        ranged: bool,
        started: Instant,
    ) -> Result<reqwest::Response, FetchError> {
        let left = self.config.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(FetchError::Timeout {
                phase: DOWNLOAD,
                after: self.config.timeout,
            });
        }
        let mut request = self.client.get(url).timeout(left);
        if ranged {
            request = request.header(
                reqwest::header::RANGE,
                format!("bytes=0-{}", FIRST_RANGE - 1),
            );
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.classify(e, started, DOWNLOAD))?;
        let status = response.status();
        if status.is_success() || (ranged && status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE) {
            if response
                .content_length()
                .is_some_and(|len| len > self.config.max_bytes)
            {
                return Err(FetchError::TooLarge(self.config.max_bytes));
            }
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Err(FetchError::Status {
            code: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_string(),
            retry_after,
        })
    }

    /// Reads a response's body to its end (more than `cap` bytes: too large), keeping its beginning until
    /// `enough` says the prefix is sufficient, never more than [`HEAD_CAP`]. The prefix is
    /// copied in steps that double from FIRST_LOOK (`enough` is asked after each), so an image
    /// whose header sits in its first few KB costs a few KB of copying and memory, whatever
    /// size of chunk the connection hands over, and a body that never yields a header costs
    /// O(n log n), not O(n²).
    async fn read(
        &self,
        mut response: reqwest::Response,
        enough: &impl Fn(&[u8]) -> bool,
        started: Instant,
        cap: u64,
    ) -> Result<Body, FetchError> {
        let mut head = BytesMut::new();
        let mut keeping = true;
        let mut satisfied = false;
        let mut want = FIRST_LOOK;
        let mut head_capped = false;
        let mut total: u64 = 0;
        let mut speed = SpeedCheck::new(self.config.min_speed_bytes, self.config.stall_timeout);
        // One timer per speed window, not one per chunk (a photo arrives in dozens of chunks,
        // and registering a timer for each cost a third of the download path's throughput).
        let mut window_end = speed.window_end();
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut deadline =
            std::pin::pin!(tokio::time::sleep_until(window_end.unwrap_or(far).into()));
        loop {
            // Reading waits no longer than the end of the current speed window, so a host that
            // sends nothing at all is judged there too (reqwest's `chunk` is cancel-safe).
            let next = tokio::select! {
                biased;
                next = response.chunk() => next,
                _ = &mut deadline, if window_end.is_some() => {
                    speed.check(0)?;
                    window_end = speed.window_end();
                    deadline.as_mut().reset(window_end.unwrap_or(far).into());
                    continue;
                }
            };
            let Some(chunk) = next.map_err(|e| self.classify(e, started, DOWNLOAD))? else {
                break;
            };
            speed.check(chunk.len() as u64)?;
            if speed.window_end() != window_end {
                window_end = speed.window_end();
                deadline.as_mut().reset(window_end.unwrap_or(far).into());
            }
            total += chunk.len() as u64;
            if total > cap {
                return Err(FetchError::TooLarge(self.config.max_bytes));
            }
            let mut rest: &[u8] = &chunk;
            while keeping && !rest.is_empty() {
                let take = rest.len().min(want - head.len());
                head.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if head.len() < want {
                    break;
                }
                satisfied = enough(&head);
                keeping = !satisfied;
                if keeping && head.len() == HEAD_CAP {
                    keeping = false;
                    head_capped = true;
                }
                want = (want * 2).min(HEAD_CAP);
            }
        }
        // A body that ended inside a step is asked about what it gave.
        if keeping && !head.is_empty() {
            satisfied = enough(&head);
        }
        Ok(Body {
            head: head.freeze(),
            read: total,
            satisfied,
            head_capped,
        })
    }

    /// Sorts a client error into a [`FetchError`]; `whole` names what the total timeout cut
    /// short ("for the whole download", "waiting for the answer").
    fn classify(&self, error: reqwest::Error, started: Instant, whole: &'static str) -> FetchError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `body` once per connection, in one write, on 127.0.0.1, ignoring `Range`;
    /// returns its URL.
    async fn serve_once(body: Vec<u8>) -> String {
        serve(body, false, None, 0).await.0
    }

    /// As [`serve_once`], honouring `Range: bytes=A-B` when `ranges` (206 with
    /// `Content-Range`, or 416 for a body too short for it, as nginx), stating `total` as the
    /// full size when given (a lying host) and the true size otherwise, each answer after
    /// `pause_ms`. Also returns the
    /// `Range` of each request received ("" for none).
    async fn serve(
        body: Vec<u8>,
        ranges: bool,
        total: Option<&'static str>,
        pause_ms: u64,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (body, log) = (body.clone(), log.clone());
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let n = socket.read(&mut request).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&request[..n]).to_lowercase();
                    let range = request
                        .lines()
                        .find_map(|l| l.strip_prefix("range: bytes="))
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    log.lock().unwrap().push(range.clone());
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    let asked = range
                        .split_once('-')
                        .filter(|_| ranges)
                        .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
                    let (status, extra, part) = match asked {
                        None => ("200 OK", String::new(), &body[..]),
                        Some((from, _)) if from >= body.len() => (
                            "416 Range Not Satisfiable",
                            format!("content-range: bytes */{}\r\n", body.len()),
                            &body[..0],
                        ),
                        Some((from, to)) => {
                            let to = to.min(body.len() - 1);
                            let size = total.map_or(body.len().to_string(), str::to_string);
                            (
                                "206 Partial Content",
                                format!("content-range: bytes {from}-{to}/{size}\r\n"),
                                &body[from..=to],
                            )
                        }
                    };
                    let mut answer = format!(
                        "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
                        part.len()
                    )
                    .into_bytes();
                    answer.extend_from_slice(part);
                    let _ = socket.write_all(&answer).await;
                });
            }
        });
        (format!("http://{addr}/image.png"), seen)
    }

    fn fetcher() -> Fetcher {
        fetcher_with(|_| {})
    }

    /// A fetcher that may reach 127.0.0.1, with `set` applied to its settings.
    /// Downloads `url` with the default test fetcher, which must succeed.
    async fn download_ok(url: &str) -> Download {
        fetcher()
            .download(url, crate::measure::is_readable)
            .await
            .unwrap()
    }

    fn fetcher_with(set: impl FnOnce(&mut FetchConfig)) -> Fetcher {
        let mut config = FetchConfig {
            allow_private_networks: true,
            ..FetchConfig::default()
        };
        set(&mut config);
        Fetcher::new(&config).unwrap()
    }

    /// A PNG header (IHDR with the given size) and no pixels.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        v.extend_from_slice(&width.to_be_bytes());
        v.extend_from_slice(&height.to_be_bytes());
        v.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        v
    }

    #[tokio::test]
    async fn a_download_keeps_a_few_kb_of_a_large_body_whose_header_comes_first() {
        let mut body = png_header(640, 480);
        body.resize(3 * 1024 * 1024, 0x55);
        let url = serve_once(body).await;
        let download = download_ok(&url).await;
        assert_eq!(
            download.total_bytes,
            3 * 1024 * 1024,
            "the whole body is read"
        );
        assert!(
            download.head.len() <= FIRST_LOOK,
            "kept {} bytes of a body whose header is in its first 33",
            download.head.len()
        );
        assert!(!download.head_capped);
        let dims = crate::measure::measure(&download.head).unwrap();
        assert_eq!((dims.width, dims.height), (640, 480));
    }

    #[tokio::test]
    async fn a_body_that_never_yields_a_header_is_kept_up_to_the_cap_only() {
        // Starts like a PNG (so more bytes could help) but its header never comes.
        let mut body = b"\x89PNG\r\n\x1a\n".to_vec();
        body.resize(HEAD_CAP + 512 * 1024, 0);
        let url = serve_once(body).await;
        let download = fetcher().download(&url, |_| false).await.unwrap();
        assert_eq!(download.head.len(), HEAD_CAP);
        assert!(download.head_capped);
        assert_eq!(download.total_bytes, (HEAD_CAP + 512 * 1024) as u64);
    }

    #[tokio::test]
    async fn a_host_that_honours_ranges_sends_the_first_range_only_and_states_the_size() {
        let mut body = png_header(640, 480);
        body.resize(3 * 1024 * 1024, 0x55);
        let (url, seen) = serve(body, true, None, 0).await;
        let download = download_ok(&url).await;
        assert_eq!(
            *seen.lock().unwrap(),
            vec![format!("0-{}", FIRST_RANGE - 1)]
        );
        assert_eq!(download.total_bytes, 3 * 1024 * 1024, "the size stated");
        assert!(download.head.len() <= FIRST_LOOK);
        let dims = crate::measure::measure(&download.head).unwrap();
        assert_eq!((dims.width, dims.height), (640, 480));
    }

    #[tokio::test]
    async fn the_size_cap_applies_to_the_size_a_ranged_answer_states() {
        let mut body = png_header(640, 480);
        body.resize(3 * 1024 * 1024, 0x55);
        let (url, _) = serve(body, true, None, 0).await;
        let error = fetcher_with(|c| c.max_bytes = 1024 * 1024)
            .download(&url, crate::measure::is_readable)
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::TooLarge(_)), "{error:?}");
    }

    /// A 640×480 JPEG whose size (SOF0) comes after two full-size APP1 segments, ~128 KB in.
    fn jpeg_with_late_size() -> Vec<u8> {
        let mut body = vec![0xFF, 0xD8];
        for _ in 0..2 {
            body.extend_from_slice(&[0xFF, 0xE1, 0xFF, 0xFF]);
            body.resize(body.len() + 0xFFFF - 2, 0);
        }
        body.extend_from_slice(&[0xFF, 0xC0, 0, 17, 8, 0x01, 0xE0, 0x02, 0x80, 3]);
        body.extend_from_slice(&[1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        body.resize(body.len() + 4096, 0);
        body
    }

    #[tokio::test]
    async fn a_header_past_the_first_range_is_found_in_the_whole_body() {
        let body = jpeg_with_late_size();
        let size = body.len() as u64;
        let (url, seen) = serve(body, true, None, 0).await;
        let download = download_ok(&url).await;
        assert_eq!(
            *seen.lock().unwrap(),
            vec![format!("0-{}", FIRST_RANGE - 1), String::new()],
            "a ranged request, then one for the whole body"
        );
        assert_eq!(download.total_bytes, size);
        let dims = crate::measure::measure(&download.head).unwrap();
        assert_eq!((dims.width, dims.height), (640, 480));
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_range_is_taken_whole_and_an_empty_one_asked_again() {
        let (url, seen) = serve(png_header(20, 10), true, None, 0).await;
        let download = download_ok(&url).await;
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "one request for a small image"
        );
        assert_eq!(download.total_bytes, png_header(20, 10).len() as u64);
        // An empty body cannot satisfy any range (416): it is fetched without one.
        let (url, seen) = serve(Vec::new(), true, None, 0).await;
        let download = download_ok(&url).await;
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert!(download.head.is_empty());
        assert_eq!(download.total_bytes, 0);
    }

    #[tokio::test]
    async fn a_stated_size_below_what_came_is_no_size() {
        // `bytes 0-65535/0`: taken at its word, the part would be the whole file.
        let (url, seen) = serve(jpeg_with_late_size(), true, Some("0"), 0).await;
        let download = download_ok(&url).await;
        assert_eq!(
            seen.lock().unwrap().len(),
            2,
            "asked again for the whole body"
        );
        let dims = crate::measure::measure(&download.head).unwrap();
        assert_eq!((dims.width, dims.height), (640, 480));
    }

    #[tokio::test]
    async fn the_size_cap_counts_both_requests_of_a_download() {
        // No stated size: the first 64 KB, then the whole body (~135 KB): ~200 KB in all.
        let (url, seen) = serve(jpeg_with_late_size(), true, Some("*"), 0).await;
        let error = fetcher_with(|c| c.max_bytes = 150 * 1024)
            .download(&url, crate::measure::is_readable)
            .await
            .unwrap_err();
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert!(matches!(error, FetchError::TooLarge(_)), "{error:?}");
    }

    #[tokio::test]
    async fn the_time_for_a_whole_download_counts_both_requests() {
        // Each answer takes 700 ms: either fits in the 1 s for the whole download, both do not.
        let (url, seen) = serve(jpeg_with_late_size(), true, None, 700).await;
        let error = fetcher_with(|c| c.timeout = Duration::from_secs(1))
            .download(&url, crate::measure::is_readable)
            .await
            .unwrap_err();
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert!(
            matches!(
                error,
                FetchError::Timeout {
                    phase: DOWNLOAD,
                    ..
                }
            ),
            "{error:?}"
        );
    }
}
