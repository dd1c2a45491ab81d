//! `POST /api/submit/` (and without the slash): validate the body, write the job and its
//! images in one transaction, answer `201 {"job_id": n}` once it is committed.
//!
//! The job belongs to the caller's tenant. Before the body is read, the tenant's submit rate
//! is checked (429); the unfinished-image quota is checked in the job's own transaction (429,
//! or 413 for a job that could never fit). The acceptance itself is the dashboard's too
//! ([`crate::web::submit`]); what is the API's own is the `Idempotency-Key` header.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;

use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::web::body;
use crate::web::submit::{accept, body_hash, over_limit, replay, take_submit_token};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/submit/", post(submit))
        .route("/api/submit", post(submit))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    pub job_id: i64,
}

/// Whatever the Content-Type says, the body is read as JSON: the assignment's clients post
/// with curl's default form content type.
///
/// With an `Idempotency-Key` header, a repeat of the same body returns the job the first
/// request created (no second job); the same key with another body is a 422.
#[utoipa::path(post, path = "/api/submit/", tag = "assignment",
    request_body(content = super::openapi::SubmitRequest, description = "Any Content-Type is accepted"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeat-safe submits: same key and body, same job")),
    responses(
        (status = 201, description = "Accepted; also answered at /api/submit", body = Submitted),
        (status = 400, description = "Malformed; the message names the field", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
        (status = 408, description = "The body did not arrive within the body timeout", body = super::openapi::ErrorBody),
        (status = 413, description = "Over a size limit, or more images than the tenant's quota allows at all", body = super::openapi::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another body", body = super::openapi::ErrorBody),
        (status = 429, description = "Over the tenant's submit rate or unfinished-image quota", body = super::openapi::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("api_key" = [])))]
async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let key = idempotency_key(&headers)?;
    // A submit with a key may be a replay: it creates nothing, so it takes no submit token
    // (a client retrying safely gets its job, not a 429); it is looked up once the body is in.
    if key.is_none() {
        take_submit_token(&state, &caller).await?;
    }
    // A declared length over the limit is refused before a byte is read (and before an
    // `Expect: 100-continue` client is invited to send it).
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body_bytes as u64) {
        return Err(over_limit(state.max_body_bytes).into());
    }
    let bytes = body::read(body, state.max_body_bytes, "body").await?;
    if let Some(key) = key {
        if let Some(job_id) = replay(&state, &caller, key, &body_hash(&bytes)).await? {
            return Ok((StatusCode::CREATED, Json(Submitted { job_id })));
        }
        take_submit_token(&state, &caller).await?;
    }
    let job_id = accept(&state, &caller, key, &bytes).await?;
    Ok((StatusCode::CREATED, Json(Submitted { job_id })))
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut all = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(ApiError::BadRequest(
            "Idempotency-Key: given more than once".into(),
        ));
    }
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (b' '..=b'~').contains(&b))
        })
        .ok_or_else(|| {
            ApiError::BadRequest(
                "Idempotency-Key: must be 1 to 255 visible ASCII characters".into(),
            )
        })?;
    Ok(Some(key))
}
