//! The extended API: `GET /api/jobs` (the caller's jobs), `GET /api/jobs/{id}` (a job with its
//! progress), `GET /api/jobs/{id}/images?limit=&after=` (per-image results, paginated by an
//! opaque cursor) and `POST /api/jobs/{id}/cancel`. Every query runs in the caller's scope:
//! another tenant's job is a 404, like a missing one. A job submitted with a webhook shows the
//! state of its delivery (`webhook`); without one the member is absent.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, FirstParams};
use crate::auth::Caller;
use crate::db;
use crate::db::jobs::Scope;
use crate::domain::JobStatus;
use crate::domain::wire::JobBody;
use crate::web::jobs::with_webhooks;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/jobs", get(list))
        .route("/api/jobs/{job_id}", get(job))
        .route("/api/jobs/{job_id}/images", get(images))
        .route("/api/jobs/{job_id}/cancel", post(cancel))
}

/// The `{job_id}` path segment. Anything that is not a job id (not a number, not even
/// UTF-8) is simply no job: a JSON 404, never the framework's plain-text rejection.
pub struct JobId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) => raw
                .parse::<i64>()
                .map(JobId)
                .map_err(|_| ApiError::NotFound(format!("no job {raw}"))),
            Err(_) => Err(ApiError::NotFound("no such job".into())),
        }
    }
}

#[utoipa::path(get, path = "/api/jobs/{job_id}", tag = "jobs",
    params(("job_id" = i64, Path, description = "The job's id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The job and its progress", body = JobBody),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or another tenant's)", body = super::openapi::ErrorBody),
    ))]
async fn job(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
) -> Result<Json<JobBody>, ApiError> {
    let job = db::jobs::get(&state.db, caller.scope(), id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    Ok(Json(with_webhooks(&state.db, vec![job]).await?.remove(0)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobBody>,
    /// Pass as `after` for the next (older) page; null on the last page.
    pub next: Option<String>,
}

/// `GET /api/jobs?status=&tenant=&limit=&after=`: the caller's jobs (an admin's: every
/// tenant's, or one tenant's with `tenant=`), newest first, with their progress counts.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs",
    security(("api_key" = [])),
    params(
        ("status" = Option<String>, Query, description = "ongoing | completed | failed | cancelled"),
        ("tenant" = Option<String>, Query, description = "Admin keys: only this tenant's jobs. Other keys see their own tenant's jobs only"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "Jobs, newest first", body = JobList),
        (status = 400, description = "A bad parameter, named", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    FirstParams(query): FirstParams,
) -> Result<Json<JobList>, ApiError> {
    let status = match query.get("status").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(
                "status: must be one of ongoing, completed, failed, cancelled".into(),
            )
        })?),
    };
    let limit = page_limit(&query, 100, 1000)?;
    let before = match query.get("after") {
        None => i64::MAX,
        Some(v) => v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::BadRequest("after: not a cursor returned by this endpoint".into())
        })?,
    };
    let filter = query
        .get("tenant")
        .map(String::as_str)
        .filter(|t| !t.is_empty());
    let scope = match (caller.scope(), filter) {
        (Scope::All, Some(tenant)) => Scope::Tenant(tenant),
        (scope, _) => scope,
    };
    // A non-admin asking for another tenant sees what that is to it: nothing.
    if let (Scope::Tenant(own), Some(asked)) = (caller.scope(), filter)
        && own != asked
    {
        return Ok(Json(JobList {
            jobs: Vec::new(),
            next: None,
        }));
    }
    let mut jobs = db::jobs::list(&state.db, scope, status, before, limit + 1).await?;
    let next = if jobs.len() as i64 > limit {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| j.id.to_string())
    } else {
        None
    };
    Ok(Json(JobList {
        jobs: with_webhooks(&state.db, jobs).await?,
        next,
    }))
}

/// The `limit` query parameter: a page size from 1 to `max`.
fn page_limit(query: &HashMap<String, String>, default: i64, max: i64) -> Result<i64, ApiError> {
    match query.get("limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit: must be an integer from 1 to {max}"))
            }),
    }
}

/// `POST /api/jobs/{id}/cancel`: 200 with the cancelled job; 409 if it had already finished.
#[utoipa::path(post, path = "/api/jobs/{job_id}/cancel", tag = "jobs",
    params(("job_id" = i64, Path, description = "The job's id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The job, now cancelled", body = JobBody),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or another tenant's)", body = super::openapi::ErrorBody),
        (status = 409, description = "The job had already finished", body = super::openapi::ErrorBody),
    ))]
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
) -> Result<Json<JobBody>, ApiError> {
    match db::jobs::cancel(&state.db, caller.scope(), id).await? {
        db::jobs::Cancel::Cancelled(job) => {
            Ok(Json(with_webhooks(&state.db, vec![job]).await?.remove(0)))
        }
        db::jobs::Cancel::Finished(job) => Err(ApiError::Conflict(format!(
            "job {id} has already finished ({}); only an ongoing job can be cancelled",
            job.status.as_str()
        ))),
        db::jobs::Cancel::NotFound => Err(ApiError::NotFound(format!("no job {id}"))),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImagesBody {
    pub job_id: i64,
    pub images: Vec<ImageBody>,
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageBody {
    pub store_id: String,
    pub url: String,
    pub visit_time: String,
    /// pending | succeeded | failed
    #[schema(value_type = String, example = "succeeded")]
    pub status: &'static str,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub perimeter: Option<i64>,
    pub error: Option<String>,
}

pub const DEFAULT_PAGE: i64 = 1000;
pub const MAX_PAGE: i64 = 10_000;

#[utoipa::path(get, path = "/api/jobs/{job_id}/images", tag = "jobs",
    security(("api_key" = [])),
    params(
        ("job_id" = i64, Path, description = "The job's id"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 10000 (default 1000)"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "Per-image results in submission order", body = ImagesBody),
        (status = 400, description = "A bad parameter, named", body = super::openapi::ErrorBody),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or another tenant's)", body = super::openapi::ErrorBody),
    ))]
async fn images(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
    FirstParams(query): FirstParams,
) -> Result<Json<ImagesBody>, ApiError> {
    let limit = page_limit(&query, DEFAULT_PAGE, MAX_PAGE)?;
    // The cursor is the position of the last image returned; opaque to clients.
    let after = match query.get("after") {
        None => -1,
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::BadRequest("after: not a cursor returned by this endpoint".into())
        })?,
    };
    // The scoped lookup is the access check: the images query below is by job id only.
    if db::jobs::get(&state.db, caller.scope(), id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no job {id}")));
    }
    let mut rows = db::images::page(&state.db, id, after, limit + 1).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    let images = rows.into_iter().map(ImageBody::from).collect();
    Ok(Json(ImagesBody {
        job_id: id,
        images,
        next,
    }))
}

/// An image as clients see it, in JSON here and in CSV (`export`).
impl From<db::images::ImageRow> for ImageBody {
    fn from(r: db::images::ImageRow) -> Self {
        ImageBody {
            store_id: r.store_id,
            url: r.url,
            visit_time: r.visit_time,
            status: match r.status {
                // Leased is still unfinished: the contract knows pending, succeeded, failed.
                crate::domain::ImageStatus::Running => "pending",
                other => other.as_str(),
            },
            width: r.width,
            height: r.height,
            perimeter: r.perimeter,
            error: r
                .error
                .filter(|_| r.status == crate::domain::ImageStatus::Failed),
        }
    }
}
