//! Webhook rows: the per-tenant signing secrets, and `webhook_deliveries`, a queue worked like
//! the images (see [`crate::queue`]): a delivery is `pending` until a worker claims it
//! (`running`, with a `lease_owner` and a `lease_expires_at`, the attempt counted), and its
//! result is written only where that worker still holds the lease, so a successful delivery is
//! recorded exactly once. A lease that lapses (a worker that died mid-delivery) makes the row
//! claimable again: delivery is at least once, and receivers deduplicate by `webhook-id`.
//!
//! Every time is the database's clock (`{now}`), never the host's. Claims on PostgreSQL skip
//! rows another worker holds (`FOR UPDATE SKIP LOCKED`); statements that wait for locks take
//! them in id order. The words of an error are the caller's; these functions store facts.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use sqlx::{AnyConnection, AssertSqlSafe};

use super::{Backend, Db, DbError, err};

/// Writes the delivery of a just-finished job's `job.finished` event, if the job asked for one,
/// inside the transaction that finished it: the event exists if and only if the job finished.
/// At most one per job (a unique index), whatever calls this twice.
pub async fn enqueue(db: &Db, conn: &mut AnyConnection, job_id: i64) -> Result<(), DbError> {
    let sql = db.with_clock(
        "INSERT INTO webhook_deliveries (job_id, tenant, url, message_id, status, attempts, \
           available_at, created_at, updated_at) \
         SELECT id, tenant, webhook_url, $2, 'pending', 0, {now}, {now}, {now} FROM jobs \
         WHERE id = $1 AND webhook_url IS NOT NULL AND status <> 'ongoing' \
         ON CONFLICT (job_id) DO NOTHING",
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(job_id)
        .bind(new_message_id())
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    Ok(())
}

/// A Standard Webhooks message id: unique per event, never secret.
fn new_message_id() -> String {
    format!("msg_{:032x}", fastrand::u128(..))
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// The secrets a tenant's deliveries are signed with right now.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecrets {
    pub current: String,
    /// The secret before the last rotation, while it is still within its overlap.
    pub previous: Option<String>,
}

impl std::fmt::Debug for SigningSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log by accident.
        f.debug_struct("SigningSecrets")
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// The tenant's current secret, made from `fresh` (and stored) when it has none yet. Two
/// callers racing to make one both end up with the one that was stored first.
pub async fn secret(db: &Db, tenant: &str, fresh: &str) -> Result<String, DbError> {
    Ok(signing_secrets(db, tenant, fresh).await?.current)
}

/// The secrets to sign a tenant's delivery with; the tenant's secret is made from `fresh`
/// when it has none yet.
pub async fn signing_secrets(
    db: &Db,
    tenant: &str,
    fresh: &str,
) -> Result<SigningSecrets, DbError> {
    let read = db.with_clock(
        "SELECT secret, CASE WHEN previous_expires_at > {now} THEN previous_secret END AS previous \
         FROM webhook_secrets WHERE tenant = $1",
    );
    let found: Option<(String, Option<String>)> = sqlx::query_as(AssertSqlSafe(read.clone()))
        .bind(tenant)
        .fetch_optional(db.pool())
        .await
        .map_err(err)?;
    if let Some((current, previous)) = found {
        return Ok(SigningSecrets { current, previous });
    }
    {
        let _turn = db.write_turn().await;
        sqlx::query(AssertSqlSafe(db.with_clock(
            "INSERT INTO webhook_secrets (tenant, secret, created_at) VALUES ($1, $2, {now}) \
             ON CONFLICT (tenant) DO NOTHING",
        )))
        .bind(tenant)
        .bind(fresh)
        .execute(db.pool())
        .await
        .map_err(err)?;
    }
    let (current, previous): (String, Option<String>) = sqlx::query_as(AssertSqlSafe(read))
        .bind(tenant)
        .fetch_one(db.pool())
        .await
        .map_err(err)?;
    Ok(SigningSecrets { current, previous })
}

/// Makes `fresh` the tenant's secret. The one it replaces keeps signing, beside it, for
/// `overlap`; returns until when (epoch ms), or `None` when the tenant had no secret before.
pub async fn rotate(
    db: &Db,
    tenant: &str,
    fresh: &str,
    overlap: Duration,
) -> Result<Option<i64>, DbError> {
    let _turn = db.write_turn().await;
    let inserted: Option<String> = sqlx::query_scalar(AssertSqlSafe(db.with_clock(
        "INSERT INTO webhook_secrets (tenant, secret, created_at) VALUES ($1, $2, {now}) \
         ON CONFLICT (tenant) DO NOTHING RETURNING tenant",
    )))
    .bind(tenant)
    .bind(fresh)
    .fetch_optional(db.pool())
    .await
    .map_err(err)?;
    if inserted.is_some() {
        return Ok(None);
    }
    let until: i64 = sqlx::query_scalar(AssertSqlSafe(db.with_clock(
        "UPDATE webhook_secrets SET previous_secret = secret, previous_expires_at = {now} + $3, \
           secret = $2, rotated_at = {now} WHERE tenant = $1 RETURNING previous_expires_at",
    )))
    .bind(tenant)
    .bind(fresh)
    .bind(overlap.as_millis() as i64)
    .fetch_one(db.pool())
    .await
    .map_err(err)?;
    Ok(Some(until))
}

// ---------------------------------------------------------------------------------------------
// Deliveries

/// A delivery leased to this worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub job_id: i64,
    pub tenant: String,
    pub url: String,
    /// `webhook-id`: the same on every attempt.
    pub message_id: String,
    /// Including this one.
    pub attempts: i64,
}

super::from_row!(Delivery {
    id: i64,
    job_id: i64,
    tenant: String,
    url: String,
    message_id: String,
    attempts: i64,
});

/// Whether any delivery is due: pending and available, or leased by a worker whose lease
/// lapsed. A read, so an idle worker polling for deliveries never takes SQLite's write lock.
pub async fn any_due(db: &Db) -> Result<bool, DbError> {
    let sql = db.with_clock(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM ( \
           SELECT id FROM (SELECT id FROM webhook_deliveries WHERE status = 'pending' \
             AND available_at <= {now} LIMIT 1) AS due \
           UNION ALL \
           SELECT id FROM (SELECT id FROM webhook_deliveries WHERE status = 'running' \
             AND lease_expires_at < {now} LIMIT 1) AS lapsed) AS t",
    );
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(db.pool())
        .await
        .map_err(err)?;
    Ok(n > 0)
}

/// Leases up to `n` due deliveries to `owner` for `lease` (and up to `n` more whose lease
/// lapsed), counting the attempt. PostgreSQL: rows another worker is claiming are skipped, not
/// waited for. SQLite: one writer at a time makes the statement atomic.
pub async fn claim(
    db: &Db,
    owner: &str,
    lease: Duration,
    n: usize,
) -> Result<Vec<Delivery>, DbError> {
    let sql = db.with_clock(match db.backend() {
        Backend::Postgres => {
            "WITH due AS MATERIALIZED (SELECT id FROM webhook_deliveries \
               WHERE status = 'pending' AND available_at <= {now} \
               ORDER BY available_at, id LIMIT $3 FOR UPDATE SKIP LOCKED), \
             lapsed AS MATERIALIZED (SELECT id FROM webhook_deliveries \
               WHERE status = 'running' AND lease_expires_at < {now} \
               ORDER BY lease_expires_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE webhook_deliveries SET status = 'running', lease_owner = $1, \
               lease_expires_at = {now} + $2, attempts = attempts + 1, updated_at = {now} \
             WHERE id IN (SELECT id FROM due UNION ALL SELECT id FROM lapsed) \
             RETURNING id, job_id, tenant, url, message_id, attempts"
        }
        Backend::Sqlite => {
            "UPDATE webhook_deliveries SET status = 'running', lease_owner = $1, \
               lease_expires_at = {now} + $2, attempts = attempts + 1, updated_at = {now} \
             WHERE id IN ( \
               SELECT * FROM (SELECT id FROM webhook_deliveries WHERE status = 'pending' \
                 AND available_at <= {now} ORDER BY available_at, id LIMIT $3) \
               UNION ALL \
               SELECT * FROM (SELECT id FROM webhook_deliveries WHERE status = 'running' \
                 AND lease_expires_at < {now} ORDER BY lease_expires_at, id LIMIT $3)) \
             RETURNING id, job_id, tenant, url, message_id, attempts"
        }
    });
    let _turn = db.write_turn().await;
    db.timed(async |conn| {
        sqlx::query_as::<_, Delivery>(AssertSqlSafe(sql))
            .bind(owner)
            .bind(lease.as_millis() as i64)
            .bind(n as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(err)
    })
    .await
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered,
    /// Retrying cannot help (410 Gone, a refused address): failed now, with this error.
    Failed(String),
    /// Try again after `after`, unless that is past the delivery's `max_age` (counted from
    /// when the job finished): then it fails, with this error as its last.
    Retry {
        after: Duration,
        max_age: Duration,
        error: String,
    },
}

/// A delivery's state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not delivered yet: waiting for its first attempt or a retry, or being attempted.
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    fn from_stored(text: &str) -> Result<Self, DbError> {
        match text {
            "pending" | "running" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "failed" => Ok(DeliveryStatus::Failed),
            other => Err(DbError::Encoding(format!("delivery status `{other}`"))),
        }
    }
}

/// Records an attempt's result, only where `owner` still holds the delivery's lease. Returns
/// the status it left, or `None` when the lease was no longer this worker's (another worker
/// has taken the delivery over, and its result is the one that counts).
pub async fn record(
    db: &Db,
    owner: &str,
    id: i64,
    attempt: &Attempt,
) -> Result<Option<DeliveryStatus>, DbError> {
    const DONE: &str = "lease_owner = NULL, lease_expires_at = NULL, updated_at = {now} \
         WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING status";
    let set = match attempt {
        Attempt::Delivered => "status = 'delivered', delivered_at = {now}, last_error = NULL",
        Attempt::Failed(_) => "status = 'failed', last_error = $3",
        // The age limit is checked on the database's clock, like every other time.
        Attempt::Retry { .. } => {
            "status = CASE WHEN created_at + $5 < {now} + $4 THEN 'failed' ELSE 'pending' END, \
             available_at = {now} + $4, last_error = $3"
        }
    };
    let sql = db.with_clock(&format!("UPDATE webhook_deliveries SET {set}, {DONE}"));
    let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
        .bind(id)
        .bind(owner);
    match attempt {
        Attempt::Delivered => {}
        Attempt::Failed(error) => query = query.bind(error.clone()),
        Attempt::Retry {
            after,
            max_age,
            error,
        } => {
            query = query
                .bind(error.clone())
                .bind(after.as_millis() as i64)
                .bind(max_age.as_millis() as i64)
        }
    }
    let _turn = db.write_turn().await;
    let status: Option<String> = db
        .timed(async |conn| query.fetch_optional(&mut *conn).await.map_err(err))
        .await?;
    status
        .as_deref()
        .map(DeliveryStatus::from_stored)
        .transpose()
}

/// Hands back deliveries this worker holds (at shutdown, for attempts it stopped waiting for):
/// due again at once, their attempts still counted (the receiver may have seen them).
pub async fn release(db: &Db, owner: &str, ids: &[i64]) -> Result<u64, DbError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let lock = match db.backend() {
        Backend::Postgres => "ORDER BY id FOR UPDATE",
        Backend::Sqlite => "",
    };
    let sql = db.with_clock(&format!(
        "UPDATE webhook_deliveries SET status = 'pending', available_at = {{now}}, \
           lease_owner = NULL, lease_expires_at = NULL, updated_at = {{now}} \
         WHERE id IN (SELECT id FROM webhook_deliveries WHERE lease_owner = $1 \
           AND status = 'running' AND id IN (SELECT CAST(t.value AS BIGINT) FROM {rows}) {lock})",
        rows = db.json_rows("$2")
    ));
    let _turn = db.write_turn().await;
    let done = db
        .timed(async |conn| {
            sqlx::query(AssertSqlSafe(sql))
                .bind(owner)
                .bind(json!(ids).to_string())
                .execute(&mut *conn)
                .await
                .map_err(err)
        })
        .await?;
    Ok(done.rows_affected())
}

/// A job's delivery as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// The delivery of each of these jobs that has one (a job still ongoing has none yet).
pub async fn states(db: &Db, job_ids: &[i64]) -> Result<HashMap<i64, DeliveryState>, DbError> {
    if job_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT job_id, status, attempts, last_error FROM webhook_deliveries \
         WHERE job_id IN (SELECT CAST(t.value AS BIGINT) FROM {})",
        db.json_rows("$1")
    );
    let rows: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(json!(job_ids).to_string())
        .fetch_all(db.pool())
        .await
        .map_err(err)?;
    rows.into_iter()
        .map(|(job_id, status, attempts, last_error)| {
            Ok((
                job_id,
                DeliveryState {
                    status: DeliveryStatus::from_stored(&status)?,
                    attempts,
                    last_error,
                },
            ))
        })
        .collect()
}
