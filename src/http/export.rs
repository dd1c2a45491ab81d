//! `GET /api/jobs/{id}/results.csv`: a job's per-image results as RFC 4180 CSV (a header row,
//! then one row per image in submission order, CRLF line ends; written by
//! [`crate::domain::results_csv`]), streamed page by page with the same keyset query as
//! `/api/jobs/{id}/images`, so a 100,000-image job costs one page of memory at a time.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::jobs::JobId;
use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::db::images::ImageRow;
use crate::db::{self, Db};
use crate::domain::results_csv::ResultsCsv;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/jobs/{job_id}/results.csv", get(results_csv))
}

/// Images read per database round trip.
const PAGE: i64 = 1000;

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
    csv_download(&state, &caller, id).await
}

/// The CSV of job `id` as a download, if `caller` may see the job (the API's endpoint, and
/// the dashboard's link, which a signed-in browser can follow without a key).
pub(crate) async fn csv_download(
    state: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<Response, ApiError> {
    if db::jobs::get(&state.db, caller.scope(), id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no job {id}")));
    }
    let body = Body::from_stream(pages(state.db.clone(), id));
    Ok((
        [
            (
                CONTENT_TYPE,
                "text/csv; charset=utf-8; header=present".to_string(),
            ),
            (
                CONTENT_DISPOSITION,
                format!("attachment; filename=\"job-{id}-results.csv\""),
            ),
            (CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response())
}

/// Where the stream is: the header is still to come, or the rows after a position, or done.
enum Next {
    Header,
    After(i64),
    Done,
}

/// The CSV as a stream of chunks: the header, then one chunk per page of images. A database
/// error mid-way ends the stream with an error, so the client sees a broken download rather
/// than a short file that looks complete.
fn pages(
    db: Db,
    job_id: i64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(Next::Header, move |next| {
        let db = db.clone();
        async move {
            match next {
                Next::Header => Some((header(), Next::After(-1))),
                Next::After(after) => {
                    let rows = match db::images::page(&db, job_id, after, PAGE).await {
                        Ok(rows) => rows,
                        Err(error) => {
                            tracing::warn!(%error, job.id = job_id, "CSV export cut short");
                            return Some((Err(std::io::Error::other(error)), Next::Done));
                        }
                    };
                    let last = rows.last().map(|r| r.seq);
                    let full = rows.len() as i64 == PAGE;
                    if rows.is_empty() {
                        return None;
                    }
                    let chunk = write_rows(&rows);
                    let next = match (full, last) {
                        (true, Some(seq)) => Next::After(seq),
                        _ => Next::Done,
                    };
                    Some((chunk, next))
                }
                Next::Done => None,
            }
        }
    })
}

/// The header row (the stream's first chunk).
fn header() -> Result<Bytes, std::io::Error> {
    let mut out = ResultsCsv::new(Vec::new());
    out.header()?;
    out.into_inner().map(Bytes::from)
}

/// One page of images as CSV rows.
fn write_rows(rows: &[ImageRow]) -> Result<Bytes, std::io::Error> {
    let mut out = ResultsCsv::new(Vec::new());
    for row in rows {
        out.row(&row.result())?;
    }
    out.into_inner().map(Bytes::from)
}
