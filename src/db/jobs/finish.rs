//! Finishing jobs exactly once: adding finished images to their jobs' counters and setting the
//! final status in the same transaction as the results (the job row's lock serialises
//! concurrent finishers), gathering the per-store errors, and cancelling a job.

use std::collections::{BTreeMap, HashMap};

use sqlx::{AnyConnection, AssertSqlSafe};

use super::{Scope, get};
use crate::db::counts::{self, Delta};
use crate::db::{Backend, Db, DbError, err, images};
use crate::domain::{ErrorKind, FirstFailure, Job, JobStatus, StoreError, StoreFailure};

/// What a cancel request found.
#[derive(Debug)]
pub enum Cancel {
    /// The job was ongoing and is now cancelled.
    Cancelled(Job),
    /// The job had already finished; nothing changed.
    Finished(Job),
    NotFound,
}

/// Cancels an ongoing job: its unfinished images become failed (`cancelled`) without being
/// processed, results still in flight are refused (their lease is gone), and the job ends as
/// `cancelled` with an error entry per affected store. Images are locked before the job row,
/// the same order as recording results, so the two never deadlock. A job outside `scope` is
/// `NotFound`, untouched.
pub async fn cancel(db: &Db, scope: Scope<'_>, id: i64) -> Result<Cancel, DbError> {
    let lock = match db.backend() {
        Backend::Postgres => "ORDER BY id FOR UPDATE",
        Backend::Sqlite => "",
    };
    {
        let _turn = db.write_turn().await;
        let mut tx = db.pool().begin().await.map_err(err)?;
        let stop_sql = db.with_clock(&format!(
            "UPDATE images SET status = 'failed', error = $2, error_kind = $3, lease_owner = NULL, \
               lease_expires_at = NULL, updated_at = {{now}} \
             WHERE id IN (SELECT id FROM images WHERE job_id = $1 AND status IN ('pending', 'running') \
               AND EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND status = 'ongoing'{}) {lock})",
            scope.condition(4)
        ));
        let stop = sqlx::query(AssertSqlSafe(stop_sql))
            .bind(id)
            .bind(ErrorKind::Cancelled.unprocessed_message())
            .bind(ErrorKind::Cancelled.as_str());
        let stopped = scope
            .bind(stop)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected() as i64;
        let count_sql = format!(
            "UPDATE jobs SET failed = failed + $2 WHERE id = $1 AND status = 'ongoing'{} \
             RETURNING tenant",
            scope.condition(3)
        );
        let count = sqlx::query(AssertSqlSafe(count_sql)).bind(id).bind(stopped);
        let updated = scope
            .bind(count)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        if let Some(row) = updated {
            let tenant: String = sqlx::Row::try_get(&row, "tenant").map_err(err)?;
            let errors = store_errors(db, &mut tx, id).await?;
            let json =
                serde_json::to_string(&errors).map_err(|e| DbError::Encoding(e.to_string()))?;
            sqlx::query(AssertSqlSafe(db.with_clock(
                "UPDATE jobs SET status = 'cancelled', errors = $2, finished_at = {now} WHERE id = $1",
            )))
            .bind(id)
            .bind(json)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            crate::db::webhooks::enqueue(db, &mut tx, id).await?;
            let mut delta = Delta {
                unfinished_images: -stopped,
                images_failed: stopped,
                ..Delta::default()
            };
            delta.add(Delta::job_finished("cancelled"));
            counts::apply(db, &mut tx, &BTreeMap::from([(tenant, delta)])).await?;
            tx.commit().await.map_err(err)?;
            tracing::info!(job.id = id, images.cancelled = stopped, "job cancelled");
            let job = get(db, scope, id)
                .await?
                .ok_or_else(|| DbError::Encoding("cancelled job vanished".into()))?;
            return Ok(Cancel::Cancelled(job));
        }
        tx.rollback().await.map_err(err)?;
    }
    Ok(match get(db, scope, id).await? {
        Some(job) => Cancel::Finished(job),
        None => Cancel::NotFound,
    })
}

/// Images of one job that a transaction has just finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finished {
    pub succeeded: i64,
    pub failed: i64,
}

/// Adds finished images to their jobs' counters and, for each job this finishes, sets its
/// final status; then the tenants' counters ([`counts`]). Runs inside the caller's
/// transaction, after its image rows: the job rows are locked in id order (PostgreSQL), so
/// when two workers finish a job's last images at once, the second sees the first's counts
/// and exactly one of them finalizes, and two writers never lock the same jobs in opposite
/// orders. One statement for all the jobs.
pub async fn record_finished(
    db: &Db,
    conn: &mut AnyConnection,
    per_job: &BTreeMap<i64, Finished>,
) -> Result<(), DbError> {
    if per_job.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = per_job
        .iter()
        .map(|(id, f)| serde_json::json!({"id": id, "succeeded": f.succeeded, "failed": f.failed}))
        .collect();
    let (fence, lock) = match db.backend() {
        Backend::Postgres => ("MATERIALIZED ", "ORDER BY id FOR UPDATE"),
        Backend::Sqlite => ("", ""),
    };
    // A job whose last image is in and none failed is completed by this same statement: one
    // row update per job whatever its size, and no second statement for each of thousands of
    // small jobs. One with failures is finished by `finalize` (its per-store errors).
    let sql = db.with_clock(&format!(
        "WITH v AS MATERIALIZED (SELECT t.id, t.succeeded, t.failed FROM {rows}), \
         locked AS {fence}(SELECT id FROM jobs WHERE {ours} {lock}) \
         UPDATE jobs SET succeeded = jobs.succeeded + v.succeeded, failed = jobs.failed + v.failed, \
           status = CASE WHEN {completes} THEN 'completed' ELSE jobs.status END, \
           finished_at = CASE WHEN {completes} THEN {{now}} ELSE jobs.finished_at END \
         FROM v WHERE jobs.id = v.id AND jobs.id IN (SELECT id FROM locked) \
         RETURNING jobs.id, jobs.tenant, jobs.status, jobs.total, jobs.succeeded, jobs.failed, \
           CAST(CASE WHEN jobs.webhook_url IS NULL THEN 0 ELSE 1 END AS BIGINT) AS hooked",
        rows = db.json_records(
            "$1",
            &[("id", "BIGINT"), ("succeeded", "BIGINT"), ("failed", "BIGINT")]
        ),
        ours = db.any_of("id", "SELECT id FROM v"),
        completes = "jobs.status = 'ongoing' AND jobs.failed + v.failed = 0 \
           AND jobs.succeeded + v.succeeded >= jobs.total"
    ));
    let updated: Vec<Counted> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(serde_json::Value::Array(rows).to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
    let mut deltas: BTreeMap<String, Delta> = BTreeMap::new();
    let mut failed_jobs: Vec<(i64, i64, String)> = Vec::new();
    for job in updated {
        let added = per_job.get(&job.id).copied().unwrap_or_default();
        deltas.entry(job.tenant.clone()).or_default().add(Delta {
            unfinished_images: -(added.succeeded + added.failed),
            images_succeeded: added.succeeded,
            images_failed: added.failed,
            ..Delta::default()
        });
        let all_in = job.succeeded + job.failed >= job.total;
        if job.status == JobStatus::Ongoing.as_str() && all_in {
            failed_jobs.push((job.id, job.failed, job.tenant));
            continue;
        }
        // Completed here, by this statement (not before: its counters were short until now).
        let before = job.succeeded + job.failed - added.succeeded - added.failed;
        if job.status == JobStatus::Completed.as_str() && all_in && before < job.total {
            if job.hooked == 1 {
                crate::db::webhooks::enqueue(db, conn, job.id).await?;
            }
            deltas
                .entry(job.tenant)
                .or_default()
                .add(Delta::job_finished(&job.status));
            tracing::info!(
                job.id = job.id,
                status = job.status.as_str(),
                "job finished"
            );
        }
    }
    failed_jobs.sort_unstable();
    for (job_id, failed, tenant) in failed_jobs {
        let status = finalize(db, conn, job_id, failed).await?;
        deltas
            .entry(tenant)
            .or_default()
            .add(Delta::job_finished(status.as_str()));
    }
    counts::apply(db, conn, &deltas).await
}

/// A job row as [`record_finished`] left it.
struct Counted {
    id: i64,
    tenant: String,
    status: String,
    total: i64,
    succeeded: i64,
    failed: i64,
    /// 1 when the job has a webhook.
    hooked: i64,
}

crate::db::from_row!(Counted {
    id: i64,
    tenant: String,
    status: String,
    total: i64,
    succeeded: i64,
    failed: i64,
    hooked: i64,
});

/// Sets the final status of a job whose images are all finished, and returns it (the caller
/// counts the job as finished). With no failure that is one row update; otherwise the
/// per-store errors are gathered from its failed images.
pub(super) async fn finalize(
    db: &Db,
    conn: &mut AnyConnection,
    job_id: i64,
    failed: i64,
) -> Result<JobStatus, DbError> {
    let (status, errors_json) = if failed == 0 {
        (JobStatus::Completed, None)
    } else {
        let errors = store_errors(db, conn, job_id).await?;
        let json = serde_json::to_string(&errors).map_err(|e| DbError::Encoding(e.to_string()))?;
        (JobStatus::Failed, Some(json))
    };
    sqlx::query(AssertSqlSafe(db.with_clock(
        "UPDATE jobs SET status = $1, errors = $2, finished_at = {now} \
         WHERE id = $3 AND status = 'ongoing'",
    )))
    .bind(status.as_str())
    .bind(errors_json)
    .bind(job_id)
    .execute(&mut *conn)
    .await
    .map_err(err)?;
    crate::db::webhooks::enqueue(db, conn, job_id).await?;
    tracing::info!(job.id = job_id, status = status.as_str(), "job finished");
    Ok(status)
}

/// One error per store with a failed image, in the order stores first appear in the job.
/// Two queries whatever the job's size: an aggregate per store, then the first failed image
/// of each failed store by its position. The words are [`StoreError::describe`]'s.
/// One store of a job with a failed image: its size, its failures, how many of those a cancel
/// caused, and the position of its first failure that a cancel did not cause.
struct StoreGroup {
    store_id: String,
    total: i64,
    failed: i64,
    cancelled: i64,
    first_failed: Option<i64>,
}

crate::db::from_row!(StoreGroup {
    store_id: String,
    total: i64,
    failed: i64,
    cancelled: i64,
    first_failed: Option<i64>,
});

async fn store_errors(
    db: &Db,
    conn: &mut AnyConnection,
    job_id: i64,
) -> Result<Vec<StoreError>, DbError> {
    let groups: Vec<StoreGroup> = sqlx::query_as(
        "SELECT store_id, MIN(seq) AS first_seq, CAST(COUNT(*) AS BIGINT) AS total, \
         CAST(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failed, \
         CAST(SUM(CASE WHEN status = 'failed' AND error_kind = 'cancelled' THEN 1 ELSE 0 END) AS BIGINT) AS cancelled, \
         MIN(CASE WHEN status = 'failed' AND (error_kind IS NULL OR error_kind <> 'cancelled') THEN seq END) AS first_failed \
         FROM images WHERE job_id = $1 GROUP BY store_id \
         HAVING SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) > 0 ORDER BY first_seq",
    )
    .bind(job_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = groups.iter().filter_map(|g| g.first_failed).collect();
    let firsts = images::failures_at(db, conn, job_id, &seqs).await?;
    let mut by_seq: HashMap<i64, images::Failure> =
        firsts.into_iter().map(|f| (f.seq, f)).collect();
    Ok(groups
        .into_iter()
        .map(|g| {
            StoreError::describe(StoreFailure {
                store_id: g.store_id,
                total: g.total,
                failed: g.failed,
                cancelled: g.cancelled,
                first: g
                    .first_failed
                    .and_then(|seq| by_seq.remove(&seq))
                    .map(|f| FirstFailure {
                        url: f.url,
                        error: f.error,
                        kind: f.error_kind,
                    }),
            })
        })
        .collect())
}
