//! A job's per-image results as a CSV download (the API's `GET /api/jobs/{id}/results.csv` and
//! the dashboard's link): RFC 4180, a header row, then one row per image in submission order,
//! CRLF line ends (written by [`crate::domain::results_csv`]), streamed page by page with the
//! same keyset query as `/api/jobs/{id}/images`, so a 100,000-image job costs one page of
//! memory at a time.

use axum::body::{Body, Bytes};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use crate::auth::Caller;
use crate::db::images::ImageRow;
use crate::db::{self, Db, DbError};
use crate::domain::results_csv::ResultsCsv;

/// The CSV of job `id` as a download; `None` when `caller` may not see the job (or there is
/// no such job: to a caller, the same).
pub async fn csv_download(db: &Db, caller: &Caller, id: i64) -> Result<Option<Response>, DbError> {
    if db::jobs::get(db, caller.scope(), id).await?.is_none() {
        return Ok(None);
    }
    let body = Body::from_stream(pages(db.clone(), id));
    Ok(Some(
        (
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
            .into_response(),
    ))
}

/// Images read per database round trip.
const PAGE: i64 = 1000;

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
