//! Job rows: creating a job with all its images in one transaction, reading it back, and the
//! bookkeeping that finishes a job exactly once (counters on the job row, which serialise
//! concurrent finishers through the row lock). The transaction that finishes a job also
//! enqueues its webhook delivery, if it asked for one ([`super::webhooks::enqueue`]).

use std::collections::{HashMap, HashSet};

use sqlx::{AnyConnection, AssertSqlSafe};

use super::{Backend, Db, DbError, err, images};
use crate::domain::{
    ErrorKind, FirstFailure, Job, JobStatus, StoreError, StoreFailure, Submission,
};

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

/// A client's idempotency key and the hash of the body it first came with.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub body_hash: &'a str,
}

/// Who a new job belongs to, and the most unfinished images that tenant may hold.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub tenant: &'a str,
    /// `None`: no quota.
    pub max_unfinished_images: Option<i64>,
}

impl<'a> Owner<'a> {
    /// A job of `tenant` with no quota (internal use and tests).
    pub fn unlimited(tenant: &'a str) -> Self {
        Self {
            tenant,
            max_unfinished_images: None,
        }
    }
}

/// What `create` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Job(i64),
    /// Nothing was written: the job's images would take the tenant over its quota.
    OverQuota {
        /// The tenant's unfinished images at the time of the check.
        unfinished: i64,
        /// The images of this job that would be unfinished (its known stores' images).
        wanted: i64,
    },
}

impl Created {
    /// The new job's id; `None` when the quota refused it.
    pub fn job_id(self) -> Option<i64> {
        match self {
            Created::Job(id) => Some(id),
            Created::OverQuota { .. } => None,
        }
    }
}

/// Writes the job and every image in one transaction; returns the new job id once committed.
/// Images of stores missing from `known_stores` are stored as failed right away (never
/// downloaded), so a job made only of unknown stores is finished at once.
///
/// With a quota, the tenant's unfinished images are counted in the same transaction; on
/// PostgreSQL a per-tenant advisory lock makes concurrent submits of one tenant take turns
/// there, so two of them cannot both squeeze under the limit (SQLite writers already do).
pub async fn create(
    db: &Db,
    owner: Owner<'_>,
    submission: &Submission,
    known_stores: &HashSet<String>,
    idempotency: Option<Idempotency<'_>>,
) -> Result<Created, DbError> {
    let total = submission.image_count() as i64;
    let unknown: i64 = submission
        .visits
        .iter()
        .filter(|v| !known_stores.contains(&v.store_id))
        .map(|v| v.image_urls.len() as i64)
        .sum();
    let wanted = total - unknown;
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await.map_err(err)?;
    if let Some(max) = owner.max_unfinished_images
        && wanted > 0
        && !db.quota_estimate().clearly_under(owner.tenant, wanted, max)
    {
        let unfinished = unfinished_images(db, &mut tx, owner.tenant).await?;
        db.quota_estimate().counted(owner.tenant, unfinished);
        if unfinished + wanted > max {
            tx.rollback().await.map_err(err)?;
            return Ok(Created::OverQuota { unfinished, wanted });
        }
    }
    let id: i64 = sqlx::query_scalar(
        AssertSqlSafe(db.with_clock(
            "INSERT INTO jobs (status, total, succeeded, failed, created_at, idempotency_key, request_hash, tenant, webhook_url) \
             VALUES ('ongoing', $1, 0, $2, {now}, $3, $4, $5, $6) RETURNING id",
        )),
    )
    .bind(total)
    .bind(unknown)
    .bind(idempotency.map(|i| i.key))
    .bind(idempotency.map(|i| i.body_hash))
    .bind(owner.tenant)
    .bind(submission.webhook.as_deref())
    .fetch_one(&mut *tx)
    .await
    .map_err(err)?;
    images::insert_for_job(db, &mut tx, id, submission, known_stores).await?;
    if unknown == total {
        finalize(db, &mut tx, id, unknown).await?;
    } else if db.backend() == Backend::Postgres {
        // Delivered at commit: wakes idle workers in every process.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(WORK_CHANNEL)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    db.quota_estimate().added(owner.tenant, wanted);
    db.refresh_statistics_after(total as usize);
    Ok(Created::Job(id))
}

/// This process's recent count of each tenant's unfinished images, plus what it has submitted
/// since: a submit clearly below its quota (under 90 % of it by this count) skips counting the
/// tenant's ongoing jobs, which costs a scan of all of them. Near the limit, or when the count
/// is over a second old, the exact count is taken again (under the tenant's lock). Images
/// finishing meanwhile only make the estimate high (safe); other API processes' submits of the
/// last second are the only ones it can miss.
#[derive(Debug, Default)]
pub struct QuotaEstimate {
    counts: std::sync::Mutex<HashMap<String, (std::time::Instant, i64)>>,
}

impl QuotaEstimate {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

    fn clearly_under(&self, tenant: &str, wanted: i64, max: i64) -> bool {
        let counts = self.counts.lock().expect("quota estimate lock");
        counts.get(tenant).is_some_and(|(at, count)| {
            at.elapsed() < Self::FRESH
                && (count + wanted).saturating_mul(10) <= max.saturating_mul(9)
        })
    }

    fn counted(&self, tenant: &str, unfinished: i64) {
        let mut counts = self.counts.lock().expect("quota estimate lock");
        if counts.len() > 10_000 {
            counts.retain(|_, (at, _)| at.elapsed() < Self::FRESH);
        }
        counts.insert(tenant.to_string(), (std::time::Instant::now(), unfinished));
    }

    fn added(&self, tenant: &str, images: i64) {
        if let Some((_, count)) = self
            .counts
            .lock()
            .expect("quota estimate lock")
            .get_mut(tenant)
        {
            *count += images;
        }
    }
}

/// A tenant's images not finished yet, counted from its ongoing jobs' counters (the
/// `jobs_ongoing_by_tenant` index), inside the caller's transaction. On PostgreSQL this first
/// takes the tenant's transaction-scoped advisory lock (see [`create`]).
async fn unfinished_images(
    db: &Db,
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<i64, DbError> {
    if db.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7210551))")
            .bind(tenant)
            .execute(&mut *conn)
            .await
            .map_err(err)?;
    }
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(total - succeeded - failed), 0) AS BIGINT) FROM jobs \
         WHERE tenant = $1 AND status = 'ongoing'",
    )
    .bind(tenant)
    .fetch_one(&mut *conn)
    .await
    .map_err(err)
}

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
            "UPDATE jobs SET failed = failed + $2 WHERE id = $1 AND status = 'ongoing'{} RETURNING id",
            scope.condition(3)
        );
        let count = sqlx::query(AssertSqlSafe(count_sql)).bind(id).bind(stopped);
        let updated = scope
            .bind(count)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        if updated.is_some() {
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
            super::webhooks::enqueue(db, &mut tx, id).await?;
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

/// Counts jobs and images by state without scanning the images table: finished images are
/// summed from the job counters, leased ones come from the small `running` partial index, and
/// the rest of the ongoing jobs' images are pending.
pub async fn state_counts(db: &Db) -> Result<StateCounts, DbError> {
    let mut counts = StateCounts::default();
    let mut by_status: HashMap<String, i64> = ["ongoing", "completed", "failed", "cancelled"]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    struct Totals {
        status: String,
        jobs: i64,
        succeeded: Option<i64>,
        failed: Option<i64>,
        open: Option<i64>,
    }
    super::from_row!(Totals {
        status: String,
        jobs: i64,
        succeeded: Option<i64>,
        failed: Option<i64>,
        open: Option<i64>,
    });
    let rows: Vec<Totals> = sqlx::query_as(
        "SELECT status, CAST(COUNT(*) AS BIGINT) AS jobs, CAST(SUM(succeeded) AS BIGINT) AS succeeded, \
         CAST(SUM(failed) AS BIGINT) AS failed, CAST(SUM(total - succeeded - failed) AS BIGINT) AS open \
         FROM jobs GROUP BY status",
    )
    .fetch_all(db.pool())
    .await
    .map_err(err)?;
    let (mut succeeded, mut failed, mut unfinished) = (0i64, 0i64, 0i64);
    for t in rows {
        by_status.insert(t.status, t.jobs);
        succeeded += t.succeeded.unwrap_or(0);
        failed += t.failed.unwrap_or(0);
        unfinished += t.open.unwrap_or(0);
    }
    let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE status = 'running'")
        .fetch_one(db.pool())
        .await
        .map_err(err)?;
    counts.jobs = by_status.into_iter().collect();
    counts.jobs.sort();
    counts.images = vec![
        ("pending".into(), (unfinished - running).max(0)),
        ("running".into(), running),
        ("succeeded".into(), succeeded),
        ("failed".into(), failed),
    ];
    Ok(counts)
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

/// Images of one job that a transaction has just finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finished {
    pub succeeded: i64,
    pub failed: i64,
}

/// Adds finished images to their jobs' counters and, for each job this finishes, sets its
/// final status. Runs inside the caller's transaction, after its image rows: the job rows
/// are locked in id order (PostgreSQL), so when two workers finish a job's last images at
/// once, the second sees the first's counts and exactly one of them finalizes, and two
/// writers never lock the same jobs in opposite orders. One statement for all the jobs.
pub async fn record_finished(
    db: &Db,
    conn: &mut AnyConnection,
    per_job: &std::collections::BTreeMap<i64, Finished>,
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
        "WITH v AS MATERIALIZED (SELECT CAST(t.value ->> 'id' AS BIGINT) AS id, \
             CAST(t.value ->> 'succeeded' AS BIGINT) AS succeeded, \
             CAST(t.value ->> 'failed' AS BIGINT) AS failed FROM {rows}), \
         locked AS {fence}(SELECT id FROM jobs WHERE {ours} {lock}) \
         UPDATE jobs SET succeeded = jobs.succeeded + v.succeeded, failed = jobs.failed + v.failed, \
           status = CASE WHEN {completes} THEN 'completed' ELSE jobs.status END, \
           finished_at = CASE WHEN {completes} THEN {{now}} ELSE jobs.finished_at END \
         FROM v WHERE jobs.id = v.id AND jobs.id IN (SELECT id FROM locked) \
         RETURNING jobs.id, jobs.status, jobs.total, jobs.succeeded, jobs.failed, \
           CAST(CASE WHEN jobs.webhook_url IS NULL THEN 0 ELSE 1 END AS BIGINT) AS hooked",
        rows = db.json_rows("$1"),
        ours = db.any_of("id", "SELECT id FROM v"),
        completes = "jobs.status = 'ongoing' AND jobs.failed + v.failed = 0 \
           AND jobs.succeeded + v.succeeded >= jobs.total"
    ));
    let updated: Vec<(i64, String, i64, i64, i64, i64)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(serde_json::Value::Array(rows).to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(err)?;
    let mut failed_jobs: Vec<(i64, i64)> = Vec::new();
    for (id, status, total, succeeded, failed, hooked) in updated {
        let all_in = succeeded + failed >= total;
        if status == JobStatus::Ongoing.as_str() && all_in {
            failed_jobs.push((id, failed));
            continue;
        }
        // Completed here, by this statement (not before: its counters were short until now).
        let added = per_job.get(&id).map_or(0, |f| f.succeeded + f.failed);
        if status == JobStatus::Completed.as_str() && all_in && succeeded + failed - added < total {
            if hooked == 1 {
                super::webhooks::enqueue(db, conn, id).await?;
            }
            tracing::info!(job.id = id, status = status.as_str(), "job finished");
        }
    }
    failed_jobs.sort_unstable();
    for (job_id, failed) in failed_jobs {
        finalize(db, conn, job_id, failed).await?;
    }
    Ok(())
}

/// Sets the final status of a job whose images are all finished. With no failure that is one
/// row update; otherwise the per-store errors are gathered from its failed images.
async fn finalize(
    db: &Db,
    conn: &mut AnyConnection,
    job_id: i64,
    failed: i64,
) -> Result<(), DbError> {
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
    super::webhooks::enqueue(db, conn, job_id).await?;
    tracing::info!(job.id = job_id, status = status.as_str(), "job finished");
    Ok(())
}

/// One error per store with a failed image, in the order stores first appear in the job.
/// Two queries whatever the job's size: an aggregate per store, then the first failed image
/// of each failed store by its position. The words are [`StoreError::describe`]'s.
async fn store_errors(
    db: &Db,
    conn: &mut AnyConnection,
    job_id: i64,
) -> Result<Vec<StoreError>, DbError> {
    // Per store: its size, its failures, how many of those a cancel caused, and the position
    // of its first failure that a cancel did not cause.
    let groups: Vec<(String, i64, i64, i64, i64, Option<i64>)> = sqlx::query_as(
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
    let seqs: Vec<i64> = groups.iter().filter_map(|g| g.5).collect();
    let firsts = images::failures_at(db, conn, job_id, &seqs).await?;
    let mut by_seq: HashMap<i64, images::Failure> =
        firsts.into_iter().map(|f| (f.seq, f)).collect();
    Ok(groups
        .into_iter()
        .map(|(store_id, _, total, failed, cancelled, first_failed)| {
            StoreError::describe(StoreFailure {
                store_id,
                total,
                failed,
                cancelled,
                first: first_failed
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
