//! Creating a job: the job row and every image in one transaction, the tenant's quota checked
//! inside it, and the workers told at commit.

use std::collections::HashSet;

use sqlx::AssertSqlSafe;

use super::WORK_CHANNEL;
use super::finish::finalize;
use crate::db::counts::{self, Delta};
use crate::db::{Backend, Db, DbError, err, images};
use crate::domain::Submission;

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
/// With a quota, the tenant's counter of unfinished images is raised by a conditional update,
/// the transaction's last write ([`counts::reserve`]): exact however many processes submit at
/// once, and the tenant's counter row is held only from there to the commit, not while the
/// images are written. A submit that is over the quota already before it starts is refused
/// without writing anything.
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
    let max = owner.max_unfinished_images.filter(|_| wanted > 0);
    if let Some(max) = max {
        let unfinished = counts::of_tenant(db, owner.tenant).await?.unfinished_images;
        if unfinished + wanted > max {
            return Ok(Created::OverQuota { unfinished, wanted });
        }
    }
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await.map_err(err)?;
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
    let mut delta = Delta {
        unfinished_images: wanted,
        images_failed: unknown,
        jobs_ongoing: 1,
        ..Delta::default()
    };
    if unknown == total {
        let status = finalize(db, &mut tx, id, unknown).await?;
        delta.add(Delta::job_finished(status.as_str()));
    } else if db.backend() == Backend::Postgres {
        // Delivered at commit: wakes idle workers in every process.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(WORK_CHANNEL)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
    }
    if let Err(unfinished) = counts::reserve(db, &mut tx, owner.tenant, delta, max).await? {
        tx.rollback().await.map_err(err)?;
        return Ok(Created::OverQuota { unfinished, wanted });
    }
    tx.commit().await.map_err(err)?;
    db.refresh_statistics_after(total as usize);
    Ok(Created::Job(id))
}
