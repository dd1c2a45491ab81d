//! `GET /api/jobs/{id}/results.csv`: a job's per-image results as CSV (see
//! [`crate::web::export`], which the dashboard's link shares).

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;

use super::ApiError;
use super::jobs::JobId;
use crate::auth::Caller;
use crate::web::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/jobs/{job_id}/results.csv", get(results_csv))
}

#[utoipa::path(get, path = "/api/jobs/{job_id}/results.csv", tag = "jobs",
    security(("api_key" = [])),
    params(("job_id" = i64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "RFC 4180 CSV with a header row: store_id,url,visit_time,status,width,height,perimeter,error; one row per image in submission order (status as in /images; width, height, perimeter empty unless succeeded, error empty unless failed)", content_type = "text/csv", body = String),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
        (status = 404, description = "No such job (or another tenant's)", body = super::openapi::ErrorBody),
    ))]
async fn results_csv(
    State(state): State<AppState>,
    caller: Caller,
    JobId(id): JobId,
) -> Result<Response, ApiError> {
    crate::web::export::csv_download(&state.db, &caller, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}
