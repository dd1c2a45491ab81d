//! Per-tenant counters (`tenant_counts`): unfinished images, images and jobs by outcome, kept
//! in the same transactions that create, finish, cancel and delete jobs. The quota check is one
//! conditional `UPDATE` of them ([`reserve`]), exact however many API processes submit at once;
//! the overview and `/metrics` read them instead of aggregating the jobs table.
//!
//! Every writer updates these rows last in its transaction, in tenant order: the rows are held
//! only until its commit, two writers never wait for each other in opposite orders, and
//! [`recount_unfinished`] (for rows that a version without the counters left behind) can run
//! beside them without losing an update.

use std::collections::BTreeMap;

use serde_json::json;
use sqlx::{AnyConnection, AssertSqlSafe};

use super::{Backend, Db, DbError, err};

/// How one transaction changes one tenant's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub unfinished_images: i64,
    pub images_succeeded: i64,
    pub images_failed: i64,
    pub jobs_ongoing: i64,
    pub jobs_completed: i64,
    pub jobs_failed: i64,
    pub jobs_cancelled: i64,
}

impl Delta {
    /// Adds `other` to this one.
    pub fn add(&mut self, other: Delta) {
        self.unfinished_images += other.unfinished_images;
        self.images_succeeded += other.images_succeeded;
        self.images_failed += other.images_failed;
        self.jobs_ongoing += other.jobs_ongoing;
        self.jobs_completed += other.jobs_completed;
        self.jobs_failed += other.jobs_failed;
        self.jobs_cancelled += other.jobs_cancelled;
    }

    /// A job leaving `ongoing` for `status` (`completed`, `failed` or `cancelled`).
    pub fn job_finished(status: &str) -> Self {
        let mut delta = Delta {
            jobs_ongoing: -1,
            ..Delta::default()
        };
        match status {
            "completed" => delta.jobs_completed = 1,
            "failed" => delta.jobs_failed = 1,
            _ => delta.jobs_cancelled = 1,
        }
        delta
    }

    fn is_zero(&self) -> bool {
        *self == Delta::default()
    }

    fn row(&self, tenant: &str) -> serde_json::Value {
        json!({
            "tenant": tenant,
            "unfinished": self.unfinished_images,
            "succeeded": self.images_succeeded,
            "failed": self.images_failed,
            "ongoing": self.jobs_ongoing,
            "completed": self.jobs_completed,
            "jobs_failed": self.jobs_failed,
            "cancelled": self.jobs_cancelled,
        })
    }
}

/// The counters, summed (one tenant's, or every tenant's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub unfinished_images: i64,
    pub images_succeeded: i64,
    pub images_failed: i64,
    pub jobs_ongoing: i64,
    pub jobs_completed: i64,
    pub jobs_failed: i64,
    pub jobs_cancelled: i64,
}

super::from_row!(Counts {
    unfinished_images: i64,
    images_succeeded: i64,
    images_failed: i64,
    jobs_ongoing: i64,
    jobs_completed: i64,
    jobs_failed: i64,
    jobs_cancelled: i64,
});

const SUMS: &str = "CAST(COALESCE(SUM(unfinished_images), 0) AS BIGINT) AS unfinished_images, \
     CAST(COALESCE(SUM(images_succeeded), 0) AS BIGINT) AS images_succeeded, \
     CAST(COALESCE(SUM(images_failed), 0) AS BIGINT) AS images_failed, \
     CAST(COALESCE(SUM(jobs_ongoing), 0) AS BIGINT) AS jobs_ongoing, \
     CAST(COALESCE(SUM(jobs_completed), 0) AS BIGINT) AS jobs_completed, \
     CAST(COALESCE(SUM(jobs_failed), 0) AS BIGINT) AS jobs_failed, \
     CAST(COALESCE(SUM(jobs_cancelled), 0) AS BIGINT) AS jobs_cancelled";

/// Every tenant's counters summed: one row per tenant read, whatever the number of jobs.
pub async fn totals(db: &Db) -> Result<Counts, DbError> {
    sqlx::query_as(AssertSqlSafe(format!("SELECT {SUMS} FROM tenant_counts")))
        .fetch_one(db.pool())
        .await
        .map_err(err)
}

/// One tenant's counters (zero for a tenant that never submitted).
pub async fn of_tenant(db: &Db, tenant: &str) -> Result<Counts, DbError> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {SUMS} FROM tenant_counts WHERE tenant = $1"
    )))
    .bind(tenant)
    .fetch_one(db.pool())
    .await
    .map_err(err)
}

/// Makes sure each tenant has its row (new rows hold zeros), in tenant order.
async fn ensure_rows(conn: &mut AnyConnection, tenants: &[&str]) -> Result<(), DbError> {
    for tenant in tenants {
        sqlx::query(
            "INSERT INTO tenant_counts (tenant) VALUES ($1) ON CONFLICT (tenant) DO NOTHING",
        )
        .bind(*tenant)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    }
    Ok(())
}

/// Applies `deltas` inside the caller's transaction, as its last writes (see the module doc).
pub async fn apply(
    db: &Db,
    conn: &mut AnyConnection,
    deltas: &BTreeMap<String, Delta>,
) -> Result<(), DbError> {
    let changed: Vec<(&String, &Delta)> = deltas.iter().filter(|(_, d)| !d.is_zero()).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = changed.iter().map(|(t, _)| t.as_str()).collect();
    ensure_rows(conn, &tenants).await?;
    let rows = serde_json::Value::Array(changed.iter().map(|(t, d)| d.row(t)).collect());
    let (fence, lock) = match db.backend() {
        Backend::Postgres => ("MATERIALIZED ", "ORDER BY tenant FOR UPDATE"),
        Backend::Sqlite => ("", ""),
    };
    let sql = format!(
        "WITH v AS MATERIALIZED (SELECT t.tenant, t.unfinished, t.succeeded, t.failed, t.ongoing, \
             t.completed, t.jobs_failed, t.cancelled FROM {rows}), \
         locked AS {fence}(SELECT tenant FROM tenant_counts \
             WHERE tenant IN (SELECT tenant FROM v) {lock}) \
         UPDATE tenant_counts SET \
           unfinished_images = tenant_counts.unfinished_images + v.unfinished, \
           images_succeeded = tenant_counts.images_succeeded + v.succeeded, \
           images_failed = tenant_counts.images_failed + v.failed, \
           jobs_ongoing = tenant_counts.jobs_ongoing + v.ongoing, \
           jobs_completed = tenant_counts.jobs_completed + v.completed, \
           jobs_failed = tenant_counts.jobs_failed + v.jobs_failed, \
           jobs_cancelled = tenant_counts.jobs_cancelled + v.cancelled \
         FROM v WHERE tenant_counts.tenant = v.tenant \
           AND tenant_counts.tenant IN (SELECT tenant FROM locked)",
        rows = db.json_records(
            "$1",
            &[
                ("tenant", "TEXT"),
                ("unfinished", "BIGINT"),
                ("succeeded", "BIGINT"),
                ("failed", "BIGINT"),
                ("ongoing", "BIGINT"),
                ("completed", "BIGINT"),
                ("jobs_failed", "BIGINT"),
                ("cancelled", "BIGINT"),
            ]
        )
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(rows.to_string())
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    Ok(())
}

/// Applies a new job's `delta` to `tenant`'s counters if its unfinished images stay within
/// `max` (no limit: `None`), as the last write of the submit's transaction. `Err(unfinished)`
/// (nothing changed) when they would not: the tenant's unfinished images, as they stand.
pub async fn reserve(
    db: &Db,
    conn: &mut AnyConnection,
    tenant: &str,
    delta: Delta,
    max: Option<i64>,
) -> Result<Result<(), i64>, DbError> {
    let Some(max) = max else {
        apply(db, conn, &BTreeMap::from([(tenant.to_string(), delta)])).await?;
        return Ok(Ok(()));
    };
    ensure_rows(conn, &[tenant]).await?;
    let reserved: Option<i64> = sqlx::query_scalar(
        "UPDATE tenant_counts SET unfinished_images = unfinished_images + $2, \
           images_failed = images_failed + $3, jobs_ongoing = jobs_ongoing + $4, \
           jobs_failed = jobs_failed + $5 \
         WHERE tenant = $1 AND unfinished_images + $2 <= $6 RETURNING unfinished_images",
    )
    .bind(tenant)
    .bind(delta.unfinished_images)
    .bind(delta.images_failed)
    .bind(delta.jobs_ongoing)
    .bind(delta.jobs_failed)
    .bind(max)
    .fetch_optional(&mut *conn)
    .await
    .map_err(err)?;
    if reserved.is_some() {
        return Ok(Ok(()));
    }
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT CAST(unfinished_images AS BIGINT) FROM tenant_counts WHERE tenant = $1",
    )
    .bind(tenant)
    .fetch_one(&mut *conn)
    .await
    .map_err(err)?;
    Ok(Err(unfinished))
}

/// Sets each tenant's unfinished images and ongoing jobs from its ongoing jobs' counters
/// (`jobs_ongoing_by_tenant`), one tenant per short transaction that locks its counter row
/// first: a writer that has changed its jobs but not yet the counters waits, and then applies
/// its delta to the recounted value, so nothing is counted twice or lost. Corrects what a
/// version that did not keep the counters left (a rolling upgrade); changes nothing
/// otherwise. Returns how many tenants' rows it corrected.
pub async fn recount_unfinished(db: &Db) -> Result<u64, DbError> {
    let tenants: Vec<String> = sqlx::query_scalar(
        "SELECT tenant FROM tenant_counts WHERE unfinished_images <> 0 OR jobs_ongoing <> 0 \
         UNION SELECT DISTINCT tenant FROM jobs WHERE status = 'ongoing'",
    )
    .fetch_all(db.pool())
    .await
    .map_err(err)?;
    let lock = match db.backend() {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let mut corrected = 0;
    for tenant in tenants {
        let _turn = db.write_turn().await;
        let mut tx = db.pool().begin().await.map_err(err)?;
        ensure_rows(&mut tx, &[&tenant]).await?;
        sqlx::query(AssertSqlSafe(format!(
            "SELECT tenant FROM tenant_counts WHERE tenant = $1{lock}"
        )))
        .bind(&tenant)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        let fixed = sqlx::query(
            "UPDATE tenant_counts SET \
               unfinished_images = (SELECT CAST(COALESCE(SUM(total - succeeded - failed), 0) AS BIGINT) \
                 FROM jobs WHERE tenant = $1 AND status = 'ongoing'), \
               jobs_ongoing = (SELECT CAST(COUNT(*) AS BIGINT) FROM jobs \
                 WHERE tenant = $1 AND status = 'ongoing') \
             WHERE tenant = $1 AND (unfinished_images <> (SELECT CAST(COALESCE(SUM(total - succeeded - failed), 0) AS BIGINT) \
                 FROM jobs WHERE tenant = $1 AND status = 'ongoing') \
               OR jobs_ongoing <> (SELECT CAST(COUNT(*) AS BIGINT) FROM jobs \
                 WHERE tenant = $1 AND status = 'ongoing'))",
        )
        .bind(&tenant)
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected();
        tx.commit().await.map_err(err)?;
        corrected += fixed;
    }
    Ok(corrected)
}
