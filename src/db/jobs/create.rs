//! Creating a job: the job row and every image in one transaction, the tenant's quota checked
//! inside it, and the workers told at commit.

use std::collections::HashSet;

use sqlx::{AnyConnection, AssertSqlSafe};

use super::WORK_CHANNEL;
use super::finish::finalize;
use crate::db::{Backend, Db, DbError, err, images};
use crate::domain::Submission;
use crate::ttl_map::TtlMap;

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
#[derive(Debug)]
pub struct QuotaEstimate {
    counts: TtlMap<String, i64>,
}

impl Default for QuotaEstimate {
    fn default() -> Self {
        Self {
            counts: TtlMap::new(Self::FRESH),
        }
    }
}

impl QuotaEstimate {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

    fn clearly_under(&self, tenant: &str, wanted: i64, max: i64) -> bool {
        self.counts
            .get(tenant)
            .is_some_and(|count| (count + wanted).saturating_mul(10) <= max.saturating_mul(9))
    }

    fn counted(&self, tenant: &str, unfinished: i64) {
        self.counts.insert(tenant.to_string(), unfinished);
    }

    fn added(&self, tenant: &str, images: i64) {
        self.counts.modify(tenant, |count| *count += images);
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
