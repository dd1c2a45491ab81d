//! Image rows as records: the bulk insert at submission and the paginated results.
//! (Their life as queue entries — claim, lease, complete — is in `crate::queue`.)

use std::collections::HashSet;

use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{Db, DbError, err, values_list};
use crate::domain::{ErrorKind, ImageStatus, Submission};

/// Rows per INSERT statement: 8 parameters each keeps well under both backends' limits.
const INSERT_CHUNK: usize = 2000;

/// Inserts every image of a submission, in submission order (`seq` = 0, 1, …).
pub async fn insert_for_job(
    conn: &mut AnyConnection,
    job_id: i64,
    submission: &Submission,
    known_stores: &HashSet<String>,
    now: i64,
) -> Result<(), DbError> {
    struct NewImage<'a> {
        store_id: &'a str,
        url: &'a str,
        visit_time: &'a str,
        visit_at: Option<i64>,
        known: bool,
    }
    let rows: Vec<NewImage> = submission
        .visits
        .iter()
        .flat_map(|v| {
            let known = known_stores.contains(&v.store_id);
            v.image_urls.iter().map(move |url| NewImage {
                store_id: &v.store_id,
                url,
                visit_time: &v.visit_time,
                visit_at: v.visit_at,
                known,
            })
        })
        .collect();
    let unknown_error = "store_id is not in the store master; image not downloaded";
    for (chunk_no, chunk) in rows.chunks(INSERT_CHUNK).enumerate() {
        let sql = format!(
            "INSERT INTO images (seq, store_id, url, visit_time, visit_at, status, error, error_kind, \
             job_id, created_at, updated_at, available_at) VALUES {}",
            values_list(chunk.len(), &[""; 8], 3, "$1, $2, $2, $2")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(job_id).bind(now);
        for (i, img) in chunk.iter().enumerate() {
            let seq = (chunk_no * INSERT_CHUNK + i) as i64;
            let (status, error, kind) = if img.known {
                (ImageStatus::Pending, None, None)
            } else {
                (
                    ImageStatus::Failed,
                    Some(unknown_error),
                    Some(ErrorKind::UnknownStore.as_str()),
                )
            };
            q = q
                .bind(seq)
                .bind(img.store_id)
                .bind(img.url)
                .bind(img.visit_time)
                .bind(img.visit_at)
                .bind(status.as_str())
                .bind(error)
                .bind(kind);
        }
        q.execute(&mut *conn).await.map_err(err)?;
    }
    Ok(())
}

/// The stored failure of one image.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seq: i64,
    pub url: String,
    pub error: Option<String>,
    pub kind: Option<String>,
}

/// The failures at the given positions of a job.
pub async fn failures_at(
    conn: &mut AnyConnection,
    job_id: i64,
    seqs: &[i64],
) -> Result<Vec<Failure>, DbError> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(500) {
        let list = (0..chunk.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT seq, url, error, error_kind FROM images WHERE job_id = $1 AND seq IN ({list})"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(job_id);
        for s in chunk {
            q = q.bind(*s);
        }
        for row in q.fetch_all(&mut *conn).await.map_err(err)? {
            out.push(Failure {
                seq: row.try_get("seq").map_err(err)?,
                url: row.try_get("url").map_err(err)?,
                error: row.try_get("error").map_err(err)?,
                kind: row.try_get("error_kind").map_err(err)?,
            });
        }
    }
    Ok(out)
}

/// One image as the results endpoint shows it.
#[derive(Debug, Clone)]
pub struct ImageRow {
    pub seq: i64,
    pub store_id: String,
    pub url: String,
    pub visit_time: String,
    pub status: ImageStatus,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub perimeter: Option<i64>,
    pub error: Option<String>,
}

/// Up to `limit` images of a job after position `after`, in submission order. Keyset
/// pagination on (job_id, seq): the last page costs what the first does.
pub async fn page(db: &Db, job_id: i64, after: i64, limit: i64) -> Result<Vec<ImageRow>, DbError> {
    let rows = sqlx::query(
        "SELECT seq, store_id, url, visit_time, status, width, height, perimeter, error \
         FROM images WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(job_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db.pool())
    .await
    .map_err(err)?;
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status").map_err(err)?;
            Ok(ImageRow {
                seq: row.try_get("seq").map_err(err)?,
                store_id: row.try_get("store_id").map_err(err)?,
                url: row.try_get("url").map_err(err)?,
                visit_time: row.try_get("visit_time").map_err(err)?,
                status: ImageStatus::parse(&status)
                    .ok_or_else(|| DbError::Corrupt(format!("image status `{status}`")))?,
                width: row.try_get("width").map_err(err)?,
                height: row.try_get("height").map_err(err)?,
                perimeter: row.try_get("perimeter").map_err(err)?,
                error: row.try_get("error").map_err(err)?,
            })
        })
        .collect()
}
