//! Job rows: creating a job with all its images in one transaction ([`create`]), reading it
//! back (here), and the bookkeeping that finishes a job exactly once ([`finish`]: counters on
//! the job row, which serialise concurrent finishers through the row lock). The transaction
//! that finishes a job also enqueues its webhook delivery, if it asked for one
//! ([`super::webhooks::enqueue`]).

mod create;
mod finish;

pub use create::{Created, Idempotency, Owner, create};
pub use finish::{Cancel, Finished, cancel, record_finished};

use sqlx::AssertSqlSafe;

use super::{Db, DbError, err};
use crate::domain::{Job, JobStatus, StoreError};

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Which jobs a query may see. Every function that reads or changes a job by id takes one,
/// and the tenant filter is part of its SQL: a handler cannot forget the check, and another
/// tenant's job is, to the caller, exactly a missing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every tenant's jobs: admin keys and the service's own bookkeeping.
    All,
    /// One tenant's jobs only.
    Tenant(&'a str),
}

impl Scope<'_> {
    /// The SQL condition this scope adds, with its tenant as parameter `$n`.
    pub(super) fn condition(&self, n: usize) -> String {
        match self {
            Scope::All => String::new(),
            Scope::Tenant(_) => format!(" AND tenant = ${n}"),
        }
    }

    /// Binds the tenant for [`Scope::condition`], if there is one.
    pub(super) fn bind<'q>(&self, query: AnyQuery<'q>) -> AnyQuery<'q> {
        match *self {
            Scope::All => query,
            Scope::Tenant(tenant) => query.bind(tenant),
        }
    }
}

/// The notification channel workers listen on (PostgreSQL only).
pub const WORK_CHANNEL: &str = "retail_pulse_work";

pub(super) const JOB_COLUMNS: &str =
    "id, tenant, status, total, succeeded, failed, errors, created_at, finished_at, webhook_url";

super::from_row!(Job {
    id: i64,
    tenant: String,
    status: JobStatus as String,
    total: i64,
    succeeded: i64,
    failed: i64,
    errors: Vec<StoreError> as Option<String> => decode_store_errors,
    created_at: i64,
    finished_at: Option<i64>,
    webhook_url: Option<String>,
});

/// The stored per-store error list (JSON; NULL while there is none).
fn decode_store_errors(stored: Option<String>) -> Result<Vec<StoreError>, String> {
    match stored {
        Some(text) => serde_json::from_str(&text).map_err(|e| format!("job errors: {e}")),
        None => Ok(Vec::new()),
    }
}

/// A job row read by a query of its own (`SELECT {JOB_COLUMNS} …`).
pub(super) fn job_from_row(row: &sqlx::any::AnyRow) -> Result<Job, DbError> {
    <Job as sqlx::FromRow<'_, sqlx::any::AnyRow>>::from_row(row).map_err(err)
}

/// The job a tenant created with an idempotency key, and the hash of the body it was created
/// from. Keys are per tenant: another tenant's use of the same key is not seen.
pub async fn find_by_idempotency_key(
    db: &Db,
    tenant: &str,
    key: &str,
) -> Result<Option<(i64, String)>, DbError> {
    let row: Option<(i64, Option<String>)> = sqlx::query_as(
        "SELECT id, request_hash FROM jobs WHERE tenant = $1 AND idempotency_key = $2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_optional(db.pool())
    .await
    .map_err(err)?;
    Ok(row.map(|(id, hash)| (id, hash.unwrap_or_default())))
}

/// One job by id, reading only the job row (constant time, however many images it has).
/// `None` when there is no such job in `scope`.
pub async fn get(db: &Db, scope: Scope<'_>, id: i64) -> Result<Option<Job>, DbError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1{}",
        scope.condition(2)
    );
    let row = scope
        .bind(sqlx::query(AssertSqlSafe(sql)).bind(id))
        .fetch_optional(db.pool())
        .await
        .map_err(err)?;
    row.as_ref().map(job_from_row).transpose()
}

/// Up to `limit` jobs of `scope` with ids below `before`, newest first, optionally of one
/// status.
pub async fn list(
    db: &Db,
    scope: Scope<'_>,
    status: Option<JobStatus>,
    before: i64,
    limit: i64,
) -> Result<Vec<Job>, DbError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id < $1 AND ($2 = '' OR status = $2){} \
         ORDER BY id DESC LIMIT $3",
        scope.condition(4)
    );
    let query = sqlx::query(AssertSqlSafe(sql))
        .bind(before)
        .bind(status.map(JobStatus::as_str).unwrap_or(""))
        .bind(limit);
    let rows = scope.bind(query).fetch_all(db.pool()).await.map_err(err)?;
    rows.iter().map(job_from_row).collect()
}

/// Jobs and images by state, for metrics.
#[derive(Debug, Default)]
pub struct StateCounts {
    pub jobs: Vec<(String, i64)>,
    pub images: Vec<(String, i64)>,
}

/// Counts jobs and images by state from the tenants' counters ([`super::counts`]: one row per
/// tenant, however many jobs): leased images come from the small `running` partial index, and
/// the rest of the unfinished images are pending.
pub async fn state_counts(db: &Db) -> Result<StateCounts, DbError> {
    let totals = super::counts::totals(db).await?;
    let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE status = 'running'")
        .fetch_one(db.pool())
        .await
        .map_err(err)?;
    Ok(StateCounts {
        jobs: job_states(&totals),
        images: vec![
            (
                "pending".into(),
                (totals.unfinished_images - running).max(0),
            ),
            ("running".into(), running),
            ("succeeded".into(), totals.images_succeeded),
            ("failed".into(), totals.images_failed),
        ],
    })
}

/// Jobs by state word, from counters.
pub fn job_states(counts: &super::counts::Counts) -> Vec<(String, i64)> {
    vec![
        ("cancelled".into(), counts.jobs_cancelled),
        ("completed".into(), counts.jobs_completed),
        ("failed".into(), counts.jobs_failed),
        ("ongoing".into(), counts.jobs_ongoing),
    ]
}

/// Whether a job is still ongoing (false also when it does not exist).
pub async fn is_ongoing(db: &Db, id: i64) -> Result<bool, DbError> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await
        .map_err(err)?;
    Ok(status.as_deref() == Some(JobStatus::Ongoing.as_str()))
}
