//! `POST /api/submit/` (and without the slash): validate the body, write the job and its
//! images in one transaction, answer `201 {"job_id": n}` once it is committed.
//!
//! The job belongs to the caller's tenant. Before the body is read, the tenant's submit rate
//! is checked (429); the unfinished-image quota is checked in the job's own transaction (429,
//! or 413 for a job that could never fit).

use std::collections::BTreeSet;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::db::jobs::{Created, Idempotency, Owner};
use crate::db::{self, DbError};
use crate::domain::{Submission, ValidationError};

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
        take_submit_token(&state, &caller)?;
    }
    // A declared length over the limit is refused before a byte is read (and before an
    // `Expect: 100-continue` client is invited to send it).
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body_bytes as u64) {
        return Err(over_limit(state.max_body_bytes));
    }
    let bytes = super::body::read(body, state.max_body_bytes, "body").await?;
    if let Some(key) = key {
        if let Some(job_id) = replay(&state, &caller, key, &body_hash(&bytes)).await? {
            return Ok((StatusCode::CREATED, Json(Submitted { job_id })));
        }
        take_submit_token(&state, &caller)?;
    }
    let job_id = accept(&state, &caller, key, &bytes).await?;
    Ok((StatusCode::CREATED, Json(Submitted { job_id })))
}

/// Takes one of the caller's tenant's submit tokens, or says when to come back (429).
pub(crate) fn take_submit_token(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    state
        .auth
        .take_submit_token(caller)
        .map_err(|retry_after| ApiError::TooManyRequests {
            message: format!(
                "tenant {}: more than {} submits a minute; retry later",
                caller.tenant,
                caller.limits.submits_per_minute.unwrap_or_default()
            ),
            retry_after,
        })
}

/// Validates a job's body and writes it for `caller`: the one path every submission takes,
/// the API's and the dashboard's form alike, so both accept and refuse exactly the same jobs,
/// in the same words. `key` is the client's idempotency key, if it sent one. (The caller's
/// submit token is taken before, by [`take_submit_token`].)
pub(crate) async fn accept(
    state: &AppState,
    caller: &Caller,
    key: Option<&str>,
    bytes: &[u8],
) -> Result<i64, ApiError> {
    if bytes.len() > state.max_body_bytes {
        return Err(over_limit(state.max_body_bytes));
    }
    let submission = Submission::parse(bytes, &state.limits).map_err(|e| match e {
        ValidationError::Invalid(m) => ApiError::BadRequest(m),
        ValidationError::TooLarge(m) => ApiError::TooLarge(m),
    })?;
    let store_ids: BTreeSet<&str> = submission
        .visits
        .iter()
        .map(|v| v.store_id.as_str())
        .collect();
    let store_ids: Vec<&str> = store_ids.into_iter().collect();
    let hash = key.map(|_| body_hash(bytes));
    if let (Some(key), Some(hash)) = (key, &hash)
        && let Some(job_id) = replay(state, caller, key, hash).await?
    {
        return Ok(job_id);
    }
    let known = db::stores::known(&state.db, &store_ids).await?;
    let idempotency = key
        .zip(hash.as_deref())
        .map(|(key, body_hash)| Idempotency { key, body_hash });
    let owner = Owner {
        tenant: &caller.tenant,
        max_unfinished_images: caller.limits.max_unfinished_images.map(|m| m as i64),
    };
    let created = db::jobs::create(&state.db, owner, &submission, &known, idempotency).await;
    let job_id = match created {
        Ok(Created::Job(id)) => id,
        Ok(Created::OverQuota { unfinished, wanted }) => {
            return Err(over_quota(caller, unfinished, wanted));
        }
        // Another request with the same key won the race: answer as a replay of it.
        Err(DbError::Duplicate(_)) if idempotency.is_some() => {
            let (key, hash) = key.zip(hash.as_deref()).expect("idempotency present");
            return match replay(state, caller, key, hash).await? {
                Some(job_id) => Ok(job_id),
                None => Err(ApiError::Internal("idempotency key vanished".into())),
            };
        }
        Err(e) => return Err(e.into()),
    };
    state.wake.notify_one();
    tracing::info!(
        job.id = job_id,
        tenant = %caller.tenant,
        images = submission.image_count(),
        "job submitted"
    );
    Ok(job_id)
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

/// The hash a repeat must match: of the body's JSON value, so whitespace and key order do not
/// matter (serde_json objects serialise with sorted keys), falling back to the raw bytes.
fn body_hash(bytes: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(bytes)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|_| bytes.to_vec());
    let digest = Sha256::digest(&canonical);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// How fast a tenant's backlog is assumed to drain when telling a client over its quota when
/// to come back: about one worker process at the default settings (32 slots, 0.1–0.4 s of
/// processing each: ~128 images/s), rounded down.
const ASSUMED_DRAIN_PER_SEC: i64 = 100;
/// The longest wait a quota refusal suggests.
const MAX_QUOTA_RETRY_AFTER_SECS: i64 = 300;

/// The answer to a submit over the tenant's unfinished-image quota: 429 with a wait for the
/// excess to drain, or 413 when the job alone is larger than the quota (waiting never helps).
fn over_quota(caller: &Caller, unfinished: i64, wanted: i64) -> ApiError {
    let max = caller.limits.max_unfinished_images.unwrap_or(u64::MAX) as i64;
    if wanted > max {
        return ApiError::TooLarge(format!(
            "visits: the job has {wanted} images to process, more than tenant {}'s quota of {max} unfinished images",
            caller.tenant
        ));
    }
    let excess = unfinished + wanted - max;
    let secs = (excess + ASSUMED_DRAIN_PER_SEC - 1) / ASSUMED_DRAIN_PER_SEC;
    ApiError::TooManyRequests {
        message: format!(
            "tenant {} has {unfinished} unfinished images; this job's {wanted} would exceed its quota of {max}: retry when some have finished",
            caller.tenant
        ),
        retry_after: std::time::Duration::from_secs(
            secs.clamp(1, MAX_QUOTA_RETRY_AFTER_SECS) as u64
        ),
    }
}

/// The job an earlier request of this tenant with this key created, if its body was the same.
async fn replay(
    state: &AppState,
    caller: &Caller,
    key: &str,
    hash: &str,
) -> Result<Option<i64>, ApiError> {
    match db::jobs::find_by_idempotency_key(&state.db, &caller.tenant, key).await? {
        Some((job_id, stored)) if stored == hash => {
            tracing::info!(job.id = job_id, "idempotent replay of a submit");
            Ok(Some(job_id))
        }
        Some((job_id, _)) => Err(ApiError::Unprocessable(format!(
            "Idempotency-Key: already used for job {job_id} with a different body"
        ))),
        None => Ok(None),
    }
}

/// The 413 of a body over `limit` bytes.
pub(crate) fn over_limit(limit: usize) -> ApiError {
    super::body::too_large("body", limit)
}
