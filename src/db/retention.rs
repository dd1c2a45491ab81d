//! Deleting finished jobs: finding the ones older than a cut-off, then removing each in small
//! statements — its images a batch at a time, then its webhook delivery, then the job row — so
//! the queue's writers are never kept waiting behind a large delete. Only finished jobs' rows
//! are touched, and no worker holds those: no statement here waits on the queue's locks.

use std::collections::BTreeMap;

use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::counts::{self, Delta};
use super::{Backend, Db, DbError, err};

/// A finished job that retention may delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub id: i64,
    pub finished_at: i64,
}

/// Up to `limit` finished jobs whose finish time is more than `older_than` ago (on the
/// database's clock), oldest first, from after `after` (a job a pass has already seen: the
/// pass goes on past one it had to skip). A job whose webhook event is still being delivered is left
/// for a later pass: pruning never loses an event.
pub async fn expired(
    db: &Db,
    older_than: Duration,
    after: Option<&Expired>,
    limit: i64,
) -> Result<Vec<Expired>, DbError> {
    let sql = db.with_clock(
        "SELECT id, finished_at FROM jobs WHERE status <> 'ongoing' AND finished_at < {now} - $1 \
           AND (finished_at > $3 OR (finished_at = $3 AND id > $4)) \
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = jobs.id \
             AND d.status IN ('pending', 'running')) \
         ORDER BY finished_at, id LIMIT $2",
    );
    let rows: Vec<(i64, i64)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(older_than.as_millis() as i64)
        .bind(limit)
        .bind(after.map_or(i64::MIN, |e| e.finished_at))
        .bind(after.map_or(i64::MIN, |e| e.id))
        .fetch_all(db.pool())
        .await
        .map_err(err)?;
    Ok(rows
        .into_iter()
        .map(|(id, finished_at)| Expired { id, finished_at })
        .collect())
}

/// Deletes up to `batch` images of a finished job, in submission order; returns how many.
/// Zero means the job has none left.
pub async fn delete_images(db: &Db, job_id: i64, batch: i64) -> Result<u64, DbError> {
    let _turn = db.write_turn().await;
    let done = sqlx::query(
        "DELETE FROM images WHERE id IN (SELECT i.id FROM images i JOIN jobs j ON j.id = i.job_id \
           WHERE i.job_id = $1 AND j.status <> 'ongoing' ORDER BY i.seq LIMIT $2)",
    )
    .bind(job_id)
    .bind(batch)
    .execute(db.pool())
    .await
    .map_err(err)?;
    Ok(done.rows_affected())
}

/// Deletes a finished job's row and its webhook delivery in one transaction (its images must
/// be gone already, so the cascade has nothing left to do); returns (jobs, deliveries) deleted.
pub async fn delete_job(db: &Db, job_id: i64) -> Result<(u64, u64), DbError> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await.map_err(err)?;
    let lock = match db.backend() {
        // The job row first, so a delivery cannot be written for it meanwhile (none can: it is
        // finished; the lock makes that plain).
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let finished: Option<(String, String, i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT tenant, status, succeeded, failed FROM jobs WHERE id = $1 AND status <> 'ongoing'{lock}"
    )))
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(err)?;
    let Some((tenant, status, succeeded, failed)) = finished else {
        tx.rollback().await.map_err(err)?;
        return Ok((0, 0));
    };
    let deliveries = sqlx::query("DELETE FROM webhook_deliveries WHERE job_id = $1")
        .bind(job_id)
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected();
    let jobs = sqlx::query("DELETE FROM jobs WHERE id = $1")
        .bind(job_id)
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected();
    // The job leaves the tenant's counts with its images (the reverse of finishing it).
    let finished = Delta::job_finished(&status);
    let gone = Delta {
        images_succeeded: -succeeded,
        images_failed: -failed,
        jobs_completed: -finished.jobs_completed,
        jobs_failed: -finished.jobs_failed,
        jobs_cancelled: -finished.jobs_cancelled,
        ..Delta::default()
    };
    counts::apply(db, &mut tx, &BTreeMap::from([(tenant, gone)])).await?;
    tx.commit().await.map_err(err)?;
    Ok((jobs, deliveries))
}

/// The advisory lock that lets one process at a time prune a PostgreSQL database.
pub const PRUNE_LOCK: i64 = 7_210_552;

/// Held while this process prunes a PostgreSQL database: a session-level advisory lock on one
/// pooled connection. `None` from [`PruneLock::try_take`] means another process holds it. If
/// the process dies, the session ends and the lock with it. SQLite is one host: the lock is
/// then a no-op, and a process prunes alone by running one pruner.
pub struct PruneLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
}

impl PruneLock {
    pub async fn try_take(db: &Db) -> Result<Option<Self>, DbError> {
        if db.backend() == Backend::Sqlite {
            return Ok(Some(Self { conn: None }));
        }
        let mut conn = db.pool().acquire().await.map_err(err)?;
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(PRUNE_LOCK)
            .fetch_one(&mut *conn)
            .await
            .map_err(err)?;
        Ok(taken.then_some(Self { conn: Some(conn) }))
    }

    /// Gives the lock back; a connection that cannot say so is closed, which does it too.
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(PRUNE_LOCK)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                drop(conn.detach());
            }
        }
    }
}

impl Drop for PruneLock {
    fn drop(&mut self) {
        // Dropped without `release` (a pass cut short): close the session rather than return a
        // connection that still holds the lock to the pool.
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
