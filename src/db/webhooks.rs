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
//
// A row is written by this version sealed (`secret_sealed`, `previous_sealed`, both by the key
// named in `key_id`) with the clear columns NULL. A version before sealing (migration 16)
// wrote, and during a rolling upgrade may still write, the clear columns (`secret`,
// `previous_secret`): where `secret` is set, it is the newer truth. `crate::webhooks` seals,
// opens and reseals; these functions store what they are handed.

/// A tenant's secrets as stored (sealed, or in clear from an older version).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredSecrets {
    pub tenant: String,
    /// In clear, from a version before sealing.
    pub secret: Option<String>,
    /// In clear, from a version before sealing.
    pub previous_secret: Option<String>,
    pub secret_sealed: Option<String>,
    pub previous_sealed: Option<String>,
    /// The key that sealed `secret_sealed` and `previous_sealed`.
    pub key_id: Option<String>,
    /// Until when (epoch ms) the previous secret still signs.
    pub previous_expires_at: Option<i64>,
    /// Whether the previous secret is still within its overlap (the database's clock).
    pub previous_live: i64,
}

super::from_row!(StoredSecrets {
    tenant: String,
    secret: Option<String>,
    previous_secret: Option<String>,
    secret_sealed: Option<String>,
    previous_sealed: Option<String>,
    key_id: Option<String>,
    previous_expires_at: Option<i64>,
    previous_live: i64,
});

impl std::fmt::Debug for StoredSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Clear secrets never reach a log by accident.
        f.debug_struct("StoredSecrets")
            .field("tenant", &self.tenant)
            .field("in_clear", &self.secret.is_some())
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl StoredSecrets {
    /// Whether the row still holds a secret in clear.
    pub fn in_clear(&self) -> bool {
        self.secret.is_some() || self.previous_secret.is_some()
    }
}

/// A tenant's secrets, sealed, to be written.
#[derive(Clone)]
pub struct Sealed<'a> {
    pub current: &'a str,
    pub previous: Option<&'a str>,
    pub key_id: &'a str,
}

const SECRET_COLUMNS: &str = "tenant, secret, previous_secret, secret_sealed, previous_sealed, \
     key_id, previous_expires_at, \
     CAST(CASE WHEN previous_expires_at > {now} THEN 1 ELSE 0 END AS BIGINT) AS previous_live";

/// The tenant's stored secrets, if it has any yet.
pub async fn stored_secrets(db: &Db, tenant: &str) -> Result<Option<StoredSecrets>, DbError> {
    let sql = db.with_clock(&format!(
        "SELECT {SECRET_COLUMNS} FROM webhook_secrets WHERE tenant = $1"
    ));
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(tenant)
        .fetch_optional(db.pool())
        .await
        .map_err(err)
}

/// The rows that hold a secret in clear, or were sealed by another key than `key_id`: the ones
/// to reseal.
pub async fn secrets_to_reseal(db: &Db, key_id: &str) -> Result<Vec<StoredSecrets>, DbError> {
    let sql = db.with_clock(&format!(
        "SELECT {SECRET_COLUMNS} FROM webhook_secrets \
         WHERE secret IS NOT NULL OR previous_secret IS NOT NULL \
           OR key_id IS DISTINCT FROM $1 ORDER BY tenant"
    ));
    sqlx::query_as(AssertSqlSafe(sql))
        .bind(key_id)
        .fetch_all(db.pool())
        .await
        .map_err(err)
}

/// Stores a tenant's first secret, sealed, unless another caller stored one first. Returns
/// whether this one was stored.
pub async fn insert_sealed(db: &Db, tenant: &str, sealed: &Sealed<'_>) -> Result<bool, DbError> {
    let _turn = db.write_turn().await;
    let inserted: Option<String> = sqlx::query_scalar(AssertSqlSafe(db.with_clock(
        "INSERT INTO webhook_secrets (tenant, secret_sealed, key_id, created_at) \
         VALUES ($1, $2, $3, {now}) ON CONFLICT (tenant) DO NOTHING RETURNING tenant",
    )))
    .bind(tenant)
    .bind(sealed.current)
    .bind(sealed.key_id)
    .fetch_optional(db.pool())
    .await
    .map_err(err)?;
    Ok(inserted.is_some())
}

/// The condition that the row is still as `seen` was read: every change of a secret row
/// (rotation, either version's, a reseal, the end of an overlap) changes one of these.
const UNCHANGED: &str = "tenant = $1 AND secret IS NOT DISTINCT FROM $2 \
     AND secret_sealed IS NOT DISTINCT FROM $3 AND previous_expires_at IS NOT DISTINCT FROM $4";

/// Replaces the secrets of a row with the same ones sealed anew (by another key, or sealed at
/// last), erasing the clear columns, only where the row is still as `seen` (a process that
/// lost the race to another one resealing it changes nothing). A previous secret the caller
/// drops (its overlap is over) is erased with its expiry. Returns whether the row was written.
pub async fn reseal(db: &Db, seen: &StoredSecrets, sealed: &Sealed<'_>) -> Result<bool, DbError> {
    let sql = db.with_clock(&format!(
        "UPDATE webhook_secrets SET secret = NULL, previous_secret = NULL, \
           secret_sealed = $5, previous_sealed = $6, key_id = $7, \
           previous_expires_at = CASE WHEN $6 IS NULL THEN NULL ELSE previous_expires_at END \
         WHERE {UNCHANGED} RETURNING CAST(1 AS BIGINT)"
    ));
    Ok(write_unchanged(db, sql, seen, sealed, None)
        .await?
        .is_some())
}

/// Rotates a row: `sealed.current` is the new secret and `sealed.previous` the one it replaces,
/// signing beside it for `overlap`, only where the row is still as `seen`. Returns until when
/// the previous secret signs (epoch ms), or `None` when the row changed meanwhile (read it
/// again and retry).
pub async fn rotate_sealed(
    db: &Db,
    seen: &StoredSecrets,
    sealed: &Sealed<'_>,
    overlap: Duration,
) -> Result<Option<i64>, DbError> {
    let sql = db.with_clock(&format!(
        "UPDATE webhook_secrets SET secret = NULL, previous_secret = NULL, \
           secret_sealed = $5, previous_sealed = $6, key_id = $7, \
           previous_expires_at = {{now}} + $8, rotated_at = {{now}} \
         WHERE {UNCHANGED} RETURNING previous_expires_at"
    ));
    write_unchanged(db, sql, seen, sealed, Some(overlap.as_millis() as i64)).await
}

/// Runs one of the writes of sealed secrets ([`reseal`], [`rotate_sealed`]): `$1`–`$4` the row
/// as `seen` ([`UNCHANGED`]), `$5`–`$7` what `sealed` holds, `$8` the `extra` value when given.
/// What the statement returns, or `None` when the row changed meanwhile.
async fn write_unchanged(
    db: &Db,
    sql: String,
    seen: &StoredSecrets,
    sealed: &Sealed<'_>,
    extra: Option<i64>,
) -> Result<Option<i64>, DbError> {
    let _turn = db.write_turn().await;
    let mut query = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(&seen.tenant)
        .bind(seen.secret.as_deref())
        .bind(seen.secret_sealed.as_deref())
        .bind(seen.previous_expires_at)
        .bind(sealed.current)
        .bind(sealed.previous)
        .bind(sealed.key_id);
    if let Some(extra) = extra {
        query = query.bind(extra);
    }
    query.fetch_optional(db.pool()).await.map_err(err)
}

/// Erases every previous secret whose overlap is over (both forms, and its expiry). One read
/// when there is none, so the workers' periodic pass never takes SQLite's write lock for
/// nothing. Returns how many rows it erased.
pub async fn erase_expired_previous(db: &Db) -> Result<u64, DbError> {
    const EXPIRED: &str = "previous_expires_at <= {now} \
         OR (previous_expires_at IS NULL AND (previous_sealed IS NOT NULL OR previous_secret IS NOT NULL))";
    let any: Option<String> = sqlx::query_scalar(AssertSqlSafe(db.with_clock(&format!(
        "SELECT tenant FROM webhook_secrets WHERE {EXPIRED} LIMIT 1"
    ))))
    .fetch_optional(db.pool())
    .await
    .map_err(err)?;
    if any.is_none() {
        return Ok(0);
    }
    let _turn = db.write_turn().await;
    let done = sqlx::query(AssertSqlSafe(db.with_clock(&format!(
        "UPDATE webhook_secrets SET previous_secret = NULL, previous_sealed = NULL, \
           previous_expires_at = NULL WHERE {EXPIRED}"
    ))))
    .execute(db.pool())
    .await
    .map_err(err)?;
    Ok(done.rows_affected())
}

/// How many tenants have a secret, and how many deliveries are not yet delivered or failed:
/// what a process without a secret key would leave unusable.
pub async fn webhook_state(db: &Db) -> Result<(i64, i64), DbError> {
    let secrets: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM webhook_secrets")
        .fetch_one(db.pool())
        .await
        .map_err(err)?;
    let undelivered: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM webhook_deliveries \
         WHERE status IN ('pending', 'running')",
    )
    .fetch_one(db.pool())
    .await
    .map_err(err)?;
    Ok((secrets, undelivered))
}

/// The keys that sealed the stored secrets, each once.
pub async fn sealing_key_ids(db: &Db) -> Result<Vec<String>, DbError> {
    sqlx::query_scalar(
        "SELECT DISTINCT key_id FROM webhook_secrets WHERE key_id IS NOT NULL ORDER BY key_id",
    )
    .fetch_all(db.pool())
    .await
    .map_err(err)
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
