//! `GET /healthz` (the process answers), `GET /readyz` (the database answers and is migrated)
//! and `GET /metrics` (Prometheus). The first two are always open; `/metrics` needs an admin
//! on the API's address, and is open on a `--metrics-bind` address.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::db::{self, Db, DbError, SchemaFit};
use crate::domain::WorkerState;
use crate::metrics::Snapshot;

/// The endpoints open to anyone: liveness and readiness.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
}

/// What a process answers while it waits for `retail-pulse migrate`, before it serves
/// anything else: alive, not ready (saying why), and 503 for every other path.
pub fn waiting_router() -> Router {
    let why = "waiting for the database schema: run `retail-pulse migrate` (or start one \
               process with --migrate)";
    let unready = move || async move {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unready", "error": why })),
        )
    };
    Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(unready))
        .fallback(move || async move {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": why })),
            )
        })
}

/// `/metrics` for an operations-only address (`--metrics-bind`).
pub fn open_metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(open_metrics))
}

/// `/metrics` on the API's address, for admins only.
pub fn admin_metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = super::openapi::HealthBody)))]
async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Prometheus text exposition. On the API's address it needs an admin key (when keys are
/// needed at all); on a `--metrics-bind` address it is open.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = super::openapi::ErrorBody),
    ))]
async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    if !caller.admin {
        return Err(ApiError::Forbidden(
            "/metrics: needs an admin key (or serve it on its own --metrics-bind address)".into(),
        ));
    }
    open_metrics(State(state)).await
}

async fn open_metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = state.metrics.render(&snapshot(&state.db).await?);
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    ))
}

/// The database counts behind the state gauges.
async fn snapshot(db: &Db) -> Result<Snapshot, DbError> {
    let counts = db::jobs::state_counts(db).await?;
    let now = db.now_ms();
    let workers = db::workers::list(db)
        .await?
        .iter()
        .map(|w| WorkerState::of(w.last_seen_at, w.stopped_at, now))
        .collect();
    Ok(Snapshot {
        jobs: counts.jobs,
        images: counts.images,
        workers,
    })
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The database answers and is migrated", body = super::openapi::HealthBody),
        (status = 503, description = "Not ready, with the reason", body = super::openapi::HealthBody),
    ))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.db.schema_fit().await {
        Ok(SchemaFit::Ready) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Ok(unfit) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unready", "error": unfit.describe() })),
        ),
        Err(error) => {
            // The driver's words stay in the log; the answer says only what is wrong.
            tracing::warn!(%error, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unready", "error": "database unreachable" })),
            )
        }
    }
}
