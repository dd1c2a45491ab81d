//! `GET /api/workers`: the worker registry — every worker process seen in the last hour, with
//! its slots and whether it is alive, stale (not seen for three heartbeats) or stopped. Workers
//! serve every tenant, so, like `/metrics`, this needs an admin key (when keys are needed).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::db;
use crate::db::workers::WorkerRow;
use crate::domain::WorkerState;
use crate::domain::time::format_ms;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/workers", get(list))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerBody {
    #[schema(example = "worker-4242-0a1b2c3d")]
    pub id: String,
    pub host: String,
    pub pid: i64,
    /// The version of the binary it runs.
    pub version: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub last_seen_at: String,
    /// Images it may have in flight.
    pub slots: i64,
    /// Images it had in flight at its last heartbeat.
    pub busy: i64,
    /// alive | stale | stopped
    #[schema(value_type = String, example = "alive")]
    pub state: &'static str,
    /// When it shut down gracefully (stopped only).
    pub stopped_at: Option<String>,
}

impl WorkerBody {
    pub fn new(row: WorkerRow, now: i64) -> Self {
        WorkerBody {
            state: WorkerState::of(row.last_seen_at, row.stopped_at, now).as_str(),
            id: row.id,
            host: row.host,
            pid: row.pid,
            version: row.version,
            started_at: format_ms(row.started_at),
            last_seen_at: format_ms(row.last_seen_at),
            slots: row.slots,
            busy: row.busy,
            stopped_at: row.stopped_at.map(format_ms),
        }
    }
}

/// Workers seen in the last hour, most recently started first. One not seen for three
/// heartbeats (15 s) is `stale`; one not seen for an hour is pruned by the live workers.
#[utoipa::path(get, path = "/api/workers", tag = "operations",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The worker registry", body = WorkerList),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = super::openapi::ErrorBody),
    ))]
async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<WorkerList>, ApiError> {
    if !caller.admin {
        return Err(ApiError::Forbidden(
            "/api/workers: needs an admin key".into(),
        ));
    }
    let now = state.db.now_ms();
    let rows = db::workers::list(&state.db).await?;
    Ok(Json(WorkerList {
        workers: rows.into_iter().map(|r| WorkerBody::new(r, now)).collect(),
    }))
}
