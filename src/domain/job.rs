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
}

/// One entry of a failed job's `error` list: a store and what went wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoreError {
    pub store_id: String,
    pub error: String,
}
