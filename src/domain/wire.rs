//! The JSON shape of a job that clients read: the API's `GET /api/jobs/{id}` and job lists,
//! the dashboard's live progress, and the `data` of a webhook's `job.finished` event. One
//! shape, built in one place, so the three can never disagree.

use serde::Serialize;
use utoipa::ToSchema;

use super::time::format_ms;
use super::{Job, StoreError};

#[derive(Debug, Serialize, ToSchema)]
pub struct JobBody {
    pub job_id: i64,
    /// The tenant whose key submitted the job (`default` without a key).
    pub tenant: String,
    /// ongoing | completed | failed | cancelled
    #[schema(value_type = String, example = "completed")]
    pub status: &'static str,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub finished_at: Option<String>,
    pub images: Progress,
    pub error: Vec<StoreError>,
    /// Only for a job submitted with a `webhook`: the state of its `job.finished` event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookBody>,
}

/// The delivery of a job's `job.finished` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookBody {
    pub url: String,
    /// pending (the job is ongoing, or the event is waiting for an attempt or a retry) |
    /// delivered | failed (410 Gone, a refused address, or still failing after the retry period)
    #[schema(value_type = String, example = "delivered")]
    pub state: &'static str,
    /// Attempts made so far.
    pub attempts: i64,
    /// Why the last attempt failed; null after a success or before any attempt.
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    pub total: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub pending: i64,
}

impl JobBody {
    /// The job without the state of its webhook: the `data` of its `job.finished` event,
    /// which cannot describe its own delivery.
    pub fn without_webhook(job: Job) -> Self {
        let pending = job.pending();
        JobBody {
            job_id: job.id,
            tenant: job.tenant,
            status: job.status.as_str(),
            created_at: format_ms(job.created_at),
            finished_at: job.finished_at.map(format_ms),
            images: Progress {
                total: job.total,
                succeeded: job.succeeded,
                failed: job.failed,
                pending,
            },
            error: job.errors,
            webhook: None,
        }
    }
}
