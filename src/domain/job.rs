//! States of jobs and images, and the kinds of failure an image can end with.

use serde::{Deserialize, Serialize};

/// A job's state. `Cancelled` is shown as `failed` by the assignment's `/api/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Ongoing,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Ongoing => "ongoing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ongoing" => JobStatus::Ongoing,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            _ => return None,
        })
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text).ok_or_else(|| format!("unknown job status `{text}`"))
    }
}

/// An image's state in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// Waiting to be claimed (also while a retry waits for its time).
    Pending,
    /// Leased to a worker.
    Running,
    Succeeded,
    Failed,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Pending => "pending",
            ImageStatus::Running => "running",
            ImageStatus::Succeeded => "succeeded",
            ImageStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => ImageStatus::Pending,
            "running" => ImageStatus::Running,
            "succeeded" => ImageStatus::Succeeded,
            "failed" => ImageStatus::Failed,
            _ => return None,
        })
    }
}

impl std::str::FromStr for ImageStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text).ok_or_else(|| format!("unknown image status `{text}`"))
    }
}

/// Why an image failed: a small, fixed set, so it can label metrics and drive retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    UnknownStore,
    InvalidUrl,
    BlockedAddress,
    HttpStatus,
    Timeout,
    TooLarge,
    Network,
    TooManyRedirects,
    NotAnImage,
    LeaseExpired,
    Cancelled,
    Internal,
}

impl ErrorKind {
    /// Every kind, for walking the per-kind counters.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::UnknownStore,
        ErrorKind::InvalidUrl,
        ErrorKind::BlockedAddress,
        ErrorKind::HttpStatus,
        ErrorKind::Timeout,
        ErrorKind::TooLarge,
        ErrorKind::Network,
        ErrorKind::TooManyRedirects,
        ErrorKind::NotAnImage,
        ErrorKind::LeaseExpired,
        ErrorKind::Cancelled,
        ErrorKind::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UnknownStore => "unknown_store",
            ErrorKind::InvalidUrl => "invalid_url",
            ErrorKind::BlockedAddress => "blocked_address",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Timeout => "timeout",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Network => "network",
            ErrorKind::TooManyRedirects => "too_many_redirects",
            ErrorKind::NotAnImage => "not_an_image",
            ErrorKind::LeaseExpired => "lease_expired",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }

    /// The error recorded on an image that failed without being processed, for the kinds
    /// that happen that way.
    pub fn unprocessed_message(self) -> &'static str {
        match self {
            ErrorKind::UnknownStore => "store_id is not in the store master; image not downloaded",
            ErrorKind::Cancelled => "job cancelled before this image was processed",
            _ => "not processed",
        }
    }
}

/// One entry of a failed job's `error` list: a store and what went wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoreError {
    pub store_id: String,
    pub error: String,
}

/// What the database knows of one store of a job that has failed images; worded for people by
/// [`StoreError::describe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailure {
    pub store_id: String,
    /// Images of this store in the job.
    pub total: i64,
    /// Of those, failed (including cancelled).
    pub failed: i64,
    /// Of the failed, those a cancel stopped.
    pub cancelled: i64,
    /// The first failure that a cancel did not cause, in submission order.
    pub first: Option<FirstFailure>,
}

/// An image's failure, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstFailure {
    pub url: String,
    pub error: Option<String>,
    pub kind: Option<String>,
}

impl StoreError {
    /// The entry of the status `error` list for one failed store, e.g. `2 of 3 images failed;
    /// first: https://…/2.jpg: HTTP 404 Not Found`.
    pub fn describe(failure: StoreFailure) -> StoreError {
        let StoreFailure {
            store_id,
            total,
            failed,
            cancelled,
            first,
        } = failure;
        let real = failed - cancelled;
        let mut error = match first {
            None => format!("job cancelled: {cancelled} of {total} images not processed"),
            Some(f) if f.kind.as_deref() == Some(ErrorKind::UnknownStore.as_str()) => format!(
                "unknown store_id: not in the store master ({real} of {total} images not processed)"
            ),
            Some(f) => format!(
                "{real} of {total} images failed; first: {}: {}",
                f.url,
                f.error.unwrap_or_else(|| "unknown error".into())
            ),
        };
        if real > 0 && cancelled > 0 {
            error.push_str(&format!("; {cancelled} more not processed: job cancelled"));
        }
        StoreError { store_id, error }
    }
}

/// A job as the service keeps it: whose it is, its state, its progress counters and times
/// (epoch milliseconds), and where its webhook goes.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    /// The tenant whose key submitted the job (`default` without a key).
    pub tenant: String,
    pub status: JobStatus,
    pub total: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// One entry per failed store, in store order; empty unless the job ended with failures.
    pub errors: Vec<StoreError>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// Where the job's `job.finished` event goes, if anywhere.
    pub webhook_url: Option<String>,
}

impl Job {
    /// Images neither succeeded nor failed yet.
    pub fn pending(&self) -> i64 {
        (self.total - self.succeeded - self.failed).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(kind: Option<&str>, failed: i64, cancelled: i64) -> StoreFailure {
        StoreFailure {
            store_id: "S1".into(),
            total: 3,
            failed,
            cancelled,
            first: kind.map(|k| FirstFailure {
                url: "http://h/1.jpg".into(),
                error: Some("HTTP 404 Not Found".into()),
                kind: Some(k.into()),
            }),
        }
    }

    #[test]
    fn store_errors_say_how_many_failed_and_the_first_cause() {
        assert_eq!(
            StoreError::describe(failure(Some("http_status"), 2, 0)).error,
            "2 of 3 images failed; first: http://h/1.jpg: HTTP 404 Not Found"
        );
        assert_eq!(
            StoreError::describe(failure(Some("unknown_store"), 3, 0)).error,
            "unknown store_id: not in the store master (3 of 3 images not processed)"
        );
        assert_eq!(
            StoreError::describe(failure(None, 2, 2)).error,
            "job cancelled: 2 of 3 images not processed"
        );
        assert_eq!(
            StoreError::describe(failure(Some("http_status"), 3, 2)).error,
            "1 of 3 images failed; first: http://h/1.jpg: HTTP 404 Not Found; 2 more not processed: job cancelled"
        );
    }
}
