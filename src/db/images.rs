//! Image rows as records: the bulk insert at submission and the paginated results.
//! (Their life as queue entries — claim, lease, complete — is in `crate::queue`.)

use std::collections::HashSet;

use serde_json::{Value, json};
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{Db, DbError, err};
use crate::domain::{ErrorKind, ImageStatus, Submission};

/// Rows per INSERT statement (one JSON parameter each), to bound a statement's memory.
const INSERT_CHUNK: usize = 10_000;

/// Inserts every image of a submission, in submission order (`seq` = 0, 1, …).
pub async fn insert_for_job(
    db: &Db,
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
    let sql = format!(
        "INSERT INTO images (job_id, seq, store_id, url, visit_time, visit_at, status, error, error_kind, \
         created_at, updated_at, available_at) \
         SELECT $1, CAST(t.value ->> 0 AS BIGINT), t.value ->> 1, t.value ->> 2, t.value ->> 3, \
         CAST(t.value ->> 4 AS BIGINT), t.value ->> 5, t.value ->> 6, t.value ->> 7, $2, $2, $2 FROM {}",
        db.json_rows("$3")
    );
    for (chunk_no, chunk) in rows.chunks(INSERT_CHUNK).enumerate() {
        let rows: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let seq = chunk_no * INSERT_CHUNK + i;
                let (status, error, kind) = if img.known {
                    (ImageStatus::Pending, None, None)
                } else {
                    (
                        ImageStatus::Failed,
                        Some(unknown_error),
                        Some(ErrorKind::UnknownStore.as_str()),
                    )
                };
                json!([
                    seq,
                    img.store_id,
                    img.url,
                    img.visit_time,
                    img.visit_at,
                    status.as_str(),
                    error,
                    kind
                ])
            })
            .collect();
        sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(job_id)
            .bind(now)
            .bind(Value::Array(rows).to_string())
            .execute(&mut *conn)
            .await
            .map_err(err)?;
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
    db: &Db,
    conn: &mut AnyConnection,
    job_id: i64,
    seqs: &[i64],
) -> Result<Vec<Failure>, DbError> {
    let sql = format!(
        "SELECT seq, url, error, error_kind FROM images WHERE job_id = $1 \
         AND seq IN (SELECT CAST(t.value ->> 0 AS BIGINT) FROM {})",
        db.json_rows("$2")
    );
    let list: Vec<Value> = seqs.iter().map(|s| json!([s])).collect();
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(job_id)
        .bind(Value::Array(list).to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
    rows.iter()
        .map(|row| {
            Ok(Failure {
                seq: row.try_get("seq").map_err(err)?,
                url: row.try_get("url").map_err(err)?,
                error: row.try_get("error").map_err(err)?,
                kind: row.try_get("error_kind").map_err(err)?,
            })
        })
        .collect()
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
