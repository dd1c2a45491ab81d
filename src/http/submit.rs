//! `POST /api/submit/` (and without the slash): validate the body, write the job and its
//! images in one transaction, answer `201 {"job_id": n}` once it is committed.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;

use super::{ApiError, AppState};
use crate::db;
use crate::domain::{Submission, ValidationError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/submit/", post(submit))
        .route("/api/submit", post(submit))
}

#[derive(Debug, Serialize)]
pub struct Submitted {
    pub job_id: i64,
}

/// Whatever the Content-Type says, the body is read as JSON: the assignment's clients post
/// with curl's default form content type.
async fn submit(
    State(state): State<AppState>,
    body: Body,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let bytes = axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|e| body_error(e, state.max_body_bytes))?;
    let submission = Submission::parse(&bytes, &state.limits).map_err(|e| match e {
        ValidationError::Invalid(m) => ApiError::BadRequest(m),
        ValidationError::TooLarge(m) => ApiError::TooLarge(m),
    })?;
    let store_ids: BTreeSet<&str> = submission
        .visits
        .iter()
        .map(|v| v.store_id.as_str())
        .collect();
    let store_ids: Vec<&str> = store_ids.into_iter().collect();
    let known = db::stores::known(&state.db, &store_ids).await?;
    let job_id = db::jobs::create(&state.db, &submission, &known).await?;
    state.wake.notify_one();
    tracing::info!(
        job.id = job_id,
        images = submission.image_count(),
        "job submitted"
    );
    Ok((StatusCode::CREATED, Json(Submitted { job_id })))
}

fn body_error(error: axum::Error, limit: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return ApiError::TooLarge(format!("body: larger than the limit of {limit} bytes"));
        }
        source = e.source();
    }
    ApiError::BadRequest(format!("body: could not be read: {error}"))
}
