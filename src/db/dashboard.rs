//! The dashboard's read-only queries beyond the API's: jobs listed ongoing first with state and
//! date filters, a page of a job's images filtered by status, the progress of a few jobs at
//! once, and the count of images waiting for a retry. Every one is a keyset page or walks a
//! small index; none scans the images table.

use serde_json::{Value, json};
use sqlx::AssertSqlSafe;

use super::jobs::{JOB_COLUMNS, Scope, job_from_row};
use super::{Db, DbError, err};
use crate::domain::Job;
use crate::domain::{ImageStatus, JobStatus};

/// Which jobs a list shows. Times are epoch ms; `created_to` is exclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
}

/// Where a job list goes on: unfiltered lists show the ongoing jobs first, then the rest,
/// each part newest first, so the position is the part and the last id shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCursor {
    pub ongoing_part: bool,
    pub before_id: i64,
}

impl JobCursor {
    /// `o123` in the ongoing part, `f123` after it.
    pub fn encode(&self) -> String {
        format!(
            "{}{}",
            if self.ongoing_part { 'o' } else { 'f' },
            self.before_id
        )
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (part, id) = text.split_at_checked(1)?;
        let before_id = id.parse::<i64>().ok().filter(|n| *n > 0)?;
        let ongoing_part = match part {
            "o" => true,
            "f" => false,
            _ => return None,
        };
        Some(Self {
            ongoing_part,
            before_id,
        })
    }
}

/// Up to `limit` of the jobs in `scope` matching `filter` from `cursor` on: with no status
/// filter the ongoing jobs come first. Returns the jobs and the cursor of the next page, if
/// any. Each part is a keyset walk down the primary key (the ongoing part down the
/// `jobs_ongoing` index).
pub async fn jobs_page(
    db: &Db,
    scope: Scope<'_>,
    filter: &JobFilter,
    cursor: Option<JobCursor>,
    limit: i64,
) -> Result<(Vec<Job>, Option<JobCursor>), DbError> {
    let mut cursor = cursor.unwrap_or(JobCursor {
        ongoing_part: filter.status.is_none(),
        before_id: i64::MAX,
    });
    let mut jobs = Vec::new();
    loop {
        // The state is one of a fixed set of words, so it can be written into the SQL: a
        // literal lets both planners use the partial index of ongoing jobs.
        let state = match (filter.status, cursor.ongoing_part) {
            (Some(status), _) => format!("status = '{}'", status.as_str()),
            (None, true) => "status = 'ongoing'".to_string(),
            (None, false) => "status <> 'ongoing'".to_string(),
        };
        let want = limit + 1 - jobs.len() as i64;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE {state} AND id < $1 \
             AND created_at >= $2 AND created_at < $3{} ORDER BY id DESC LIMIT $4",
            scope.condition(5)
        );
        let query = sqlx::query(AssertSqlSafe(sql))
            .bind(cursor.before_id)
            .bind(filter.created_from.unwrap_or(i64::MIN))
            .bind(filter.created_to.unwrap_or(i64::MAX))
            .bind(want);
        let rows = scope.bind(query).fetch_all(db.pool()).await.map_err(err)?;
        let got = rows.len() as i64;
        for row in &rows {
            jobs.push(job_from_row(row)?);
        }
        if jobs.len() as i64 > limit {
            jobs.truncate(limit as usize);
            let last = jobs.last().expect("a full page has a last job");
            let next = JobCursor {
                ongoing_part: cursor.ongoing_part && last.status == JobStatus::Ongoing,
                before_id: last.id,
            };
            // The page ended exactly at the end of the ongoing part: go on with the rest.
            return Ok((jobs, Some(next)));
        }
        if got < want && filter.status.is_none() && cursor.ongoing_part {
            cursor = JobCursor {
                ongoing_part: false,
                before_id: i64::MAX,
            };
            continue;
        }
        return Ok((jobs, None));
    }
}

/// The jobs in `scope` with these ids (at most a page of them): for the live progress of a
/// list.
pub async fn jobs_by_ids(db: &Db, scope: Scope<'_>, ids: &[i64]) -> Result<Vec<Job>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id IN \
         (SELECT CAST(t.value ->> 0 AS BIGINT) FROM {}){} ORDER BY id DESC",
        db.json_rows("$1"),
        scope.condition(2)
    );
    let list: Vec<Value> = ids.iter().map(|id| json!([id])).collect();
    let query = sqlx::query(AssertSqlSafe(sql)).bind(Value::Array(list).to_string());
    let rows = scope.bind(query).fetch_all(db.pool()).await.map_err(err)?;
    rows.iter().map(job_from_row).collect()
}

/// A tenant's jobs by state: its job rows only (no image is read).
pub async fn tenant_job_states(db: &Db, tenant: &str) -> Result<Vec<(String, i64)>, DbError> {
    let counts = super::counts::of_tenant(db, tenant).await?;
    Ok(super::jobs::job_states(&counts))
}

/// Images back in the queue after an attempt (a transient failure or a dead worker's lease),
/// whether or not their retry is due yet: pending with a claim that counted (every claim that
/// counts no attempt is refunded). Counted from the small `images_retry_claimed` index.
pub async fn retry_waiting(db: &Db) -> Result<i64, DbError> {
    sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE status = 'pending' AND claims > 0")
        .fetch_one(db.pool())
        .await
        .map_err(err)
}

/// One image as the job page shows it: the API's fields, the real queue state (`running`
/// included) and how many attempts it took.
#[derive(Debug, Clone)]
pub struct ImageView {
    pub seq: i64,
    pub store_id: String,
    pub url: String,
    pub visit_time: String,
    pub status: ImageStatus,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub perimeter: Option<i64>,
    pub error: Option<String>,
    pub attempts: i64,
}

super::from_row!(ImageView {
    seq: i64,
    store_id: String,
    url: String,
    visit_time: String,
    status: ImageStatus as String,
    width: Option<i64>,
    height: Option<i64>,
    perimeter: Option<i64>,
    error: Option<String>,
    attempts: i64,
});

/// Which way a page of images goes from its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Positions above `seq`, ascending.
    After(i64),
    /// Positions below `seq`: the page before, still returned ascending.
    Before(i64),
}

/// Up to `limit` images of a job in submission order, optionally of one status. A keyset
/// page on (job_id, seq); the pending and failed filters walk their partial indexes.
pub async fn images_page(
    db: &Db,
    job_id: i64,
    status: Option<ImageStatus>,
    direction: Direction,
    limit: i64,
) -> Result<Vec<ImageView>, DbError> {
    // A fixed word, written as a literal so that the partial indexes apply.
    let state = status
        .map(|s| format!("AND status = '{}'", s.as_str()))
        .unwrap_or_default();
    let (position, order, seq) = match direction {
        Direction::After(seq) => ("seq > $2", "ASC", seq),
        Direction::Before(seq) => ("seq < $2", "DESC", seq),
    };
    let sql = format!(
        "SELECT seq, store_id, url, visit_time, status, width, height, perimeter, error, attempts \
         FROM images WHERE job_id = $1 AND {position} {state} ORDER BY seq {order} LIMIT $3"
    );
    let mut images: Vec<ImageView> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(job_id)
        .bind(seq)
        .bind(limit)
        .fetch_all(db.pool())
        .await
        .map_err(err)?;
    if matches!(direction, Direction::Before(_)) {
        images.reverse();
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_cursor_round_trips_and_refuses_garbage() {
        for cursor in [
            JobCursor {
                ongoing_part: true,
                before_id: 42,
            },
            JobCursor {
                ongoing_part: false,
                before_id: 7,
            },
        ] {
            assert_eq!(JobCursor::decode(&cursor.encode()), Some(cursor));
        }
        for bad in ["", "o", "x12", "f-1", "f0", "o1.5", "é1"] {
            assert_eq!(JobCursor::decode(bad), None, "{bad}");
        }
    }
}
