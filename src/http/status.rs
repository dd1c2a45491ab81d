//! `GET /api/status?jobid=N`: the assignment's status shape. Reads the job row only, so it
//! answers in constant time however many images the job holds. Another tenant's job is an
//! unknown one: `400 {}`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{ApiError, AppState, FirstParams};
use crate::auth::Caller;
use crate::db;
use crate::domain::{JobStatus, StoreError};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/status", get(status))
}

/// The assignment's status answer; fields in this order: status, job_id, error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusBody {
    /// ongoing | completed | failed
    #[schema(value_type = String, example = "ongoing")]
    pub status: &'static str,
    /// The job id, as a string (as in the assignment).
    pub job_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Vec<StoreError>>,
}

#[utoipa::path(get, path = "/api/status", tag = "assignment",
    params(("jobid" = i64, Query, description = "The job's id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The job's status; `error` lists failed stores in store order", body = StatusBody),
        (status = 400, description = "jobid missing, not a number, or unknown (or another tenant's): an empty object", body = super::openapi::EmptyBody),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
    ))]
async fn status(
    State(state): State<AppState>,
    caller: Caller,
    FirstParams(query): FirstParams,
) -> Result<Json<StatusBody>, ApiError> {
    let job_id = query
        .get("jobid")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or(ApiError::StatusBadRequest)?;
    let job = db::jobs::get(&state.db, caller.scope(), job_id)
        .await?
        .ok_or(ApiError::StatusBadRequest)?;
    let body = match job.status {
        JobStatus::Ongoing => StatusBody {
            status: "ongoing",
            job_id: job.id.to_string(),
            error: None,
        },
        JobStatus::Completed => StatusBody {
            status: "completed",
            job_id: job.id.to_string(),
            error: None,
        },
        // The assignment knows no "cancelled": a cancelled job reads as failed, with its reason.
        JobStatus::Failed | JobStatus::Cancelled => StatusBody {
            status: "failed",
            job_id: job.id.to_string(),
            error: Some(job.errors),
        },
    };
    Ok(Json(body))
}
