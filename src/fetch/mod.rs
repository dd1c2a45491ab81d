//! The HTTP client for image downloads: the first 64 KB of an image asked for by `Range` (all a
//! measurement needs), connect and total timeouts, a byte cap enforced on the size a host
//! states and while streaming, a redirect cap with loop detection, and the address guard of
//! [`guard`]. Every
//! failure comes back as a [`FetchError`] whose message is what gets stored for the image.
//!
//! Webhook deliveries go out through the same [`Fetcher`] ([`Fetcher::post`]): the same guard,
//! allow-list and timeouts, but redirects are never followed (a receiver that answers 3xx has
//! not taken the event, and following it would re-send a signed body somewhere else).

mod body;
pub(crate) mod config;
mod error;
pub mod guard;
pub(crate) mod origins;
#[cfg(test)]
mod tests;

pub use config::FetchConfig;
pub use error::FetchError;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Url, redirect};

use error::{RedirectRefused, parse_retry_after};

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

/// Bytes asked for first (`Range`): an image's header is almost always inside them.
pub const FIRST_RANGE: usize = 64 * 1024;

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
pub(super) const DOWNLOAD: &str = "for the whole download";

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
}
