//! Token buckets in `rate_buckets`, shared by every process, timed by the database's clock.

use sqlx::AssertSqlSafe;

use super::{Backend, Db, DbError, err};

/// Takes `cost` tokens (0: only looks) from the bucket `key`, of `capacity` tokens refilled at
/// `per_ms` tokens a millisecond, at `now` (epoch ms; `None`: the database's clock). A missing
/// bucket is full. `Ok(None)` when there was at least one token (the cost is then taken);
/// `Ok(Some(ms))` when the bucket is empty: how long until it holds one again.
pub async fn take(
    db: &Db,
    key: &str,
    capacity: f64,
    per_ms: f64,
    cost: f64,
    now: Option<i64>,
) -> Result<Option<i64>, DbError> {
    let least = match db.backend() {
        Backend::Postgres => "LEAST",
        Backend::Sqlite => "MIN",
    };
    let greatest = match db.backend() {
        Backend::Postgres => "GREATEST",
        Backend::Sqlite => "MAX",
    };
    // The bucket as it stands at `now`: its tokens plus the refill since it was last used
    // (`$capacity`, `$per_ms`, `$now`: the parameters' numbers in each statement).
    let level = |capacity: u8, per_ms: u8, now: u8| {
        format!(
            "{least}(CAST(${capacity} AS DOUBLE PRECISION), rate_buckets.tokens \
               + {greatest}(0, COALESCE(${now}, {{now}}) - rate_buckets.updated_at) * ${per_ms})"
        )
    };
    // `WHERE true` keeps SQLite from reading ON CONFLICT as a join constraint.
    let sql = db.with_clock(&format!(
        "INSERT INTO rate_buckets (key, tokens, updated_at) \
         SELECT $1, CAST($2 AS DOUBLE PRECISION) - $4, COALESCE($5, {{now}}) WHERE true \
         ON CONFLICT (key) DO UPDATE SET tokens = {level} - $4, \
           updated_at = {greatest}(rate_buckets.updated_at, COALESCE($5, {{now}})) \
         WHERE {level} >= 1 RETURNING tokens",
        level = level(2, 3, 5)
    ));
    let _turn = db.write_turn().await;
    let taken: Option<f64> = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(key)
        .bind(capacity)
        .bind(per_ms)
        .bind(cost)
        .bind(now)
        .fetch_optional(db.pool())
        .await
        .map_err(err)?;
    if taken.is_some() {
        return Ok(None);
    }
    let level: f64 = sqlx::query_scalar(AssertSqlSafe(db.with_clock(&format!(
        "SELECT {} FROM rate_buckets WHERE key = $1",
        level(2, 3, 4)
    ))))
    .bind(key)
    .bind(capacity)
    .bind(per_ms)
    .bind(now)
    .fetch_one(db.pool())
    .await
    .map_err(err)?;
    Ok(Some(((1.0 - level) / per_ms).ceil().max(1.0) as i64))
}

/// Buckets untouched this long are full again (no rate is slower than one a minute): sweeping
/// them loses nothing.
const IDLE_MS: i64 = 3_600_000;

/// Deletes buckets untouched for an hour.
pub async fn sweep(db: &Db) -> Result<u64, DbError> {
    let _turn = db.write_turn().await;
    let done = sqlx::query(AssertSqlSafe(
        db.with_clock("DELETE FROM rate_buckets WHERE updated_at < {now} - $1"),
    ))
    .bind(IDLE_MS)
    .execute(db.pool())
    .await
    .map_err(err)?;
    Ok(done.rows_affected())
}
