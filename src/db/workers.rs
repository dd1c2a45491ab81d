//! The worker registry: one row per worker process (who, where, since when, how busy), kept
//! fresh by that process's heartbeat, and the per-worker per-minute counts of finished images
//! it adds on each beat. Both tables are small and bounded (rows are pruned), so everything
//! read from here is cheap whatever the size of the queue.

use serde_json::{Value, json};
use sqlx::AssertSqlSafe;

use super::{Db, DbError, err};

/// What a worker process says about itself when it registers.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at: i64,
    pub slots: i64,
}

/// A registry row as stored.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at: i64,
    pub last_seen_at: i64,
    pub slots: i64,
    pub busy: i64,
    /// Set when the process shut down gracefully.
    pub stopped_at: Option<i64>,
}

super::from_row!(WorkerRow {
    id: String,
    host: String,
    pid: i64,
    version: String,
    started_at: i64,
    last_seen_at: i64,
    slots: i64,
    busy: i64,
    stopped_at: Option<i64>,
});

/// Images a worker finished (or put back for a retry) since its previous heartbeat, for one
/// outcome and error kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeCount {
    /// succeeded | failed | retried
    pub outcome: &'static str,
    /// An error kind, or `none`.
    pub error_kind: &'static str,
    pub images: i64,
}

/// The minute (epoch ms of its start) a time falls in.
pub fn minute_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

/// Registers or refreshes a worker's row (clearing any earlier stop) and adds `counts` to
/// its row for the current minute, in one transaction.
pub async fn heartbeat(
    db: &Db,
    info: &WorkerInfo,
    busy: i64,
    now: i64,
    counts: &[OutcomeCount],
) -> Result<(), DbError> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await.map_err(err)?;
    sqlx::query(
        "INSERT INTO workers (id, host, pid, version, started_at, last_seen_at, slots, busy, stopped_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL) \
         ON CONFLICT (id) DO UPDATE SET last_seen_at = excluded.last_seen_at, \
         slots = excluded.slots, busy = excluded.busy, stopped_at = NULL",
    )
    .bind(&info.id)
    .bind(&info.host)
    .bind(info.pid)
    .bind(&info.version)
    .bind(info.started_at)
    .bind(now)
    .bind(info.slots)
    .bind(busy)
    .execute(&mut *tx)
    .await
    .map_err(err)?;
    let rows: Vec<Value> = counts
        .iter()
        .filter(|c| c.images > 0)
        .map(|c| json!({"outcome": c.outcome, "kind": c.error_kind, "n": c.images}))
        .collect();
    if !rows.is_empty() {
        // `WHERE true`: SQLite needs it to read ON CONFLICT after INSERT … SELECT.
        let sql = format!(
            "INSERT INTO worker_minutes (minute, worker_id, outcome, error_kind, images) \
             SELECT $1, $2, t.value ->> 'outcome', t.value ->> 'kind', CAST(t.value ->> 'n' AS BIGINT) \
             FROM {} WHERE true \
             ON CONFLICT (minute, worker_id, outcome, error_kind) \
             DO UPDATE SET images = worker_minutes.images + excluded.images",
            db.json_rows("$3")
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(minute_of(now))
            .bind(&info.id)
            .bind(Value::Array(rows).to_string())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(())
}

/// Marks a worker as gone after a graceful shutdown: nothing busy, and when it stopped.
pub async fn mark_stopped(db: &Db, id: &str, now: i64) -> Result<(), DbError> {
    let _turn = db.write_turn().await;
    sqlx::query("UPDATE workers SET busy = 0, stopped_at = $2, last_seen_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(db.pool())
        .await
        .map_err(err)?;
    Ok(())
}

/// Deletes workers not seen since `seen_before` and minute counts older than
/// `minutes_before`; returns how many workers went.
pub async fn prune(db: &Db, seen_before: i64, minutes_before: i64) -> Result<u64, DbError> {
    let _turn = db.write_turn().await;
    let workers = sqlx::query("DELETE FROM workers WHERE last_seen_at < $1")
        .bind(seen_before)
        .execute(db.pool())
        .await
        .map_err(err)?
        .rows_affected();
    sqlx::query("DELETE FROM worker_minutes WHERE minute < $1")
        .bind(minutes_before)
        .execute(db.pool())
        .await
        .map_err(err)?;
    Ok(workers)
}

/// Every registered worker, most recently started first (the table holds at most an hour's
/// worth of processes).
pub async fn list(db: &Db) -> Result<Vec<WorkerRow>, DbError> {
    sqlx::query_as(
        "SELECT id, host, pid, version, started_at, last_seen_at, slots, busy, stopped_at \
         FROM workers ORDER BY started_at DESC, id",
    )
    .fetch_all(db.pool())
    .await
    .map_err(err)
}

/// Finished images per minute from `since` on, summed over workers: (minute, succeeded,
/// failed), only minutes with something in them, oldest first.
pub async fn finished_per_minute(db: &Db, since: i64) -> Result<Vec<(i64, i64, i64)>, DbError> {
    sqlx::query_as(
        "SELECT minute, \
         CAST(SUM(CASE WHEN outcome = 'succeeded' THEN images ELSE 0 END) AS BIGINT) AS ok, \
         CAST(SUM(CASE WHEN outcome = 'failed' THEN images ELSE 0 END) AS BIGINT) AS bad \
         FROM worker_minutes WHERE minute >= $1 GROUP BY minute ORDER BY minute",
    )
    .bind(since)
    .fetch_all(db.pool())
    .await
    .map_err(err)
}

/// Failures since `since` by error kind: (kind, failed for good, put back for a retry), the
/// most frequent first.
pub async fn failures_by_kind(db: &Db, since: i64) -> Result<Vec<(String, i64, i64)>, DbError> {
    sqlx::query_as(
        "SELECT error_kind, \
         CAST(SUM(CASE WHEN outcome = 'failed' THEN images ELSE 0 END) AS BIGINT) AS failed, \
         CAST(SUM(CASE WHEN outcome = 'retried' THEN images ELSE 0 END) AS BIGINT) AS retried \
         FROM worker_minutes WHERE minute >= $1 AND outcome <> 'succeeded' \
         GROUP BY error_kind ORDER BY 2 DESC, 3 DESC, error_kind",
    )
    .bind(since)
    .fetch_all(db.pool())
    .await
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_of_rounds_down_to_the_minute() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(59_999), 0);
        assert_eq!(minute_of(60_000), 60_000);
        assert_eq!(minute_of(1_700_000_123_456), 1_700_000_100_000);
    }
}
