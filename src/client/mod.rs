//! The command-line client: `retail-pulse submit`, `status` and `results` talk to a running
//! service over its public HTTP API, exactly as any other client would — no database access,
//! so the same binary can drive a server on another machine. With `--api-key` (`RP_API_KEY`)
//! every request carries the key.
//!
//! [`ApiClient`] is the HTTP boundary and its one error enum, [`ClientError`]; [`command`]
//! runs the commands and decides their exit codes; [`progress`] draws the live line of
//! `submit --wait`; [`report`] renders a job for people.

pub(crate) mod command;
pub(crate) mod progress;
pub(crate) mod report;

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::domain::{JobStatus, StoreError};

/// The server a client command talks to unless `--server` or `RP_SERVER` says otherwise.
pub const DEFAULT_SERVER: &str = "http://localhost:8080";

/// Everything that can go wrong between the client and the server. Every variant means the
/// command could not do its work (exit code 2), as opposed to a job that ran and failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid server URL `{0}`: expected http://HOST:PORT")]
    InvalidServer(String),
    #[error(
        "invalid API key: it must be printable ASCII (as `retail-pulse keys create` prints it)"
    )]
    InvalidApiKey,
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered 4xx: the request itself is wrong (or the job does not exist).
    #[error("the server refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("no job {0} on this server")]
    NotFound(i64),
    /// The server answered 5xx: it is up but cannot serve the request right now.
    #[error("the server failed (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse { url: String, reason: String },
}

impl ClientError {
    /// Worth asking again while waiting on a job: the server may be restarting or its
    /// database briefly unreachable. A 4xx will not change by asking again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Server { .. }
        )
    }
}

/// `POST /api/submit/`'s answer.
#[derive(Debug, Deserialize)]
struct Submitted {
    job_id: i64,
}

/// `GET /api/jobs/{id}`, as far as the client needs to understand it. The server's own
/// `http::jobs::JobBody` holds `&'static str`s and cannot be deserialized, and the client
/// should not break when the server adds a field, so this is its own small type.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub job_id: i64,
    pub status: JobStatus,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub images: Counts,
    #[serde(default)]
    pub error: Vec<StoreError>,
}

/// A job's image counts: `succeeded + failed + pending = total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub pending: u64,
}

impl Counts {
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// A job as the server sent it: typed for the client's decisions, and the raw document for
/// `--json`, so scripts see every field the server has, including ones this client predates.
#[derive(Debug, Clone)]
pub struct JobDocument {
    pub job: Job,
    pub raw: Value,
}

/// A small client for the service's public API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// Always ends with `/`, so joining `api/...` keeps any path prefix (a reverse proxy's).
    base: Url,
}

impl ApiClient {
    /// A client for `server`; with `api_key`, every request carries
    /// `Authorization: Bearer <key>`.
    pub fn new(server: &str, api_key: Option<&str>) -> Result<Self, ClientError> {
        let invalid = || ClientError::InvalidServer(server.to_string());
        let mut base = Url::parse(server).map_err(|_| invalid())?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid());
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        // reqwest is built without a crypto provider of its own (see `fetch`).
        crate::fetch::install_crypto_provider();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = api_key.map(str::trim).filter(|k| !k.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| ClientError::InvalidApiKey)?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("retail-pulse-cli/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            // A 100,000-image body takes a while to upload and to write in one transaction.
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: server.to_string(),
                reason: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Self { http, base })
    }

    /// The server's base URL, as given (with a trailing slash).
    pub fn server(&self) -> &str {
        self.base.as_str()
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("relative API path joins")
    }

    /// Posts a job file's bytes as they are, so the server validates exactly what the user
    /// wrote, and returns the new job's id.
    pub async fn submit(&self, body: Vec<u8>) -> Result<i64, ClientError> {
        let url = self.url("api/submit/");
        let res = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        let value = read_json(&url, res, None).await?;
        let submitted: Submitted =
            serde_json::from_value(value).map_err(|e| bad_response(&url, e))?;
        Ok(submitted.job_id)
    }

    /// `GET /api/jobs/{id}`: the job with its progress counts and per-store errors.
    pub async fn job(&self, job_id: i64) -> Result<JobDocument, ClientError> {
        let url = self.url(&format!("api/jobs/{job_id}"));
        let res = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        let raw = read_json(&url, res, Some(job_id)).await?;
        let job = serde_json::from_value(raw.clone()).map_err(|e| bad_response(&url, e))?;
        Ok(JobDocument { job, raw })
    }
}

impl ApiClient {
    /// `GET /api/jobs/{id}/images`: one page of results and the cursor of the next.
    pub async fn images_page(
        &self,
        job_id: i64,
        after: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ClientError> {
        let mut url = self.url(&format!("api/jobs/{job_id}/images"));
        url.query_pairs_mut().append_pair("limit", "1000");
        if let Some(after) = after {
            url.query_pairs_mut().append_pair("after", after);
        }
        let res = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        let mut page = read_json(&url, res, Some(job_id)).await?;
        let images = match page.get_mut("images").map(Value::take) {
            Some(Value::Array(images)) => images,
            _ => {
                return Err(ClientError::BadResponse {
                    url: url.to_string(),
                    reason: "no `images` array".into(),
                });
            }
        };
        let next = page.get("next").and_then(Value::as_str).map(String::from);
        Ok((images, next))
    }

    /// `GET /api/jobs/{id}/results.csv`, written to `out` chunk by chunk as it arrives.
    pub async fn results_csv(
        &self,
        job_id: i64,
        out: &mut impl std::io::Write,
    ) -> Result<(), ResultsError> {
        let url = self.url(&format!("api/jobs/{job_id}/results.csv"));
        let mut res = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        if !res.status().is_success() {
            // An error status: read_json turns it into the server's error.
            let error = read_json(&url, res, Some(job_id)).await.err();
            return Err(error
                .unwrap_or_else(|| ClientError::BadResponse {
                    url: url.to_string(),
                    reason: "an error status with a success body".into(),
                })
                .into());
        }
        while let Some(chunk) = res.chunk().await.map_err(|e| unreachable(&url, &e))? {
            out.write_all(&chunk).map_err(ResultsError::Output)?;
        }
        out.flush().map_err(ResultsError::Output)
    }
}

/// Why `results` stopped: the server's side, or the output's (a closed pipe).
#[derive(Debug, Error)]
pub enum ResultsError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write the results: {0}")]
    Output(std::io::Error),
}

/// Reads a JSON answer; turns an error status into its [`ClientError`], carrying the
/// server's own `{"error": "..."}` message, which names the offending field.
async fn read_json(
    url: &Url,
    res: reqwest::Response,
    job_id: Option<i64>,
) -> Result<Value, ClientError> {
    let status = res.status();
    let bytes = res.bytes().await.map_err(|e| unreachable(url, &e))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| bad_response(url, e));
    }
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim();
            if text.is_empty() || text == "{}" {
                status
                    .canonical_reason()
                    .unwrap_or("no reason given")
                    .to_string()
            } else {
                text.chars().take(500).collect()
            }
        });
    Err(match (status, job_id) {
        (StatusCode::NOT_FOUND, Some(id)) => ClientError::NotFound(id),
        (s, _) if s.is_server_error() => ClientError::Server {
            status: s.as_u16(),
            message,
        },
        (s, _) => ClientError::Rejected {
            status: s.as_u16(),
            message,
        },
    })
}

/// reqwest's own message ("error sending request for url") hides the cause; the cause
/// ("Connection refused") is what a user can act on, so the whole chain is shown.
fn unreachable(url: &Url, error: &reqwest::Error) -> ClientError {
    let mut reason = if error.is_timeout() {
        "timed out".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.ends_with(&text) {
            reason = format!("{reason}: {text}");
        }
        source = cause.source();
    }
    ClientError::Unreachable {
        url: url.to_string(),
        reason,
    }
}

fn bad_response(url: &Url, error: serde_json::Error) -> ClientError {
    ClientError::BadResponse {
        url: url.to_string(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_url_keeps_a_path_prefix() {
        let client = ApiClient::new("http://example.test/rp", None).unwrap();
        assert_eq!(
            client.url("api/jobs/3").as_str(),
            "http://example.test/rp/api/jobs/3"
        );
        let client = ApiClient::new("http://example.test:8080/", None).unwrap();
        assert_eq!(
            client.url("api/submit/").as_str(),
            "http://example.test:8080/api/submit/"
        );
    }

    #[test]
    fn server_url_must_be_http() {
        for bad in ["localhost:8080", "ftp://example.test", "not a url"] {
            assert!(
                matches!(
                    ApiClient::new(bad, None),
                    Err(ClientError::InvalidServer(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn job_body_parses_and_ignores_unknown_fields() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "job_id": 4, "status": "failed", "created_at": "2026-11-28T10:00:00.000Z",
            "finished_at": null, "future_field": true,
            "images": {"total": 3, "succeeded": 1, "failed": 2, "pending": 0},
            "error": [{"store_id": "S1", "error": "unknown store_id"}]
        }))
        .unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.images.finished(), 3);
        assert_eq!(job.error[0].store_id, "S1");
    }
}
