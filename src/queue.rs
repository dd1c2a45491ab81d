//! The durable queue: the `images` table, worked through leases.
//!
//! An image is `pending` until a worker claims it; the claim sets `running`, the worker's id
//! as `lease_owner`, a `lease_expires_at`, and counts the attempt. The worker heartbeats its
//! leases while it works and writes its result only where it still holds the lease, so a
//! result is never recorded twice. Leases that expire (a dead worker) are handed back to
//! `pending`, or failed for good once the attempts are used up (a poison image).
//!
//! Claims interleave jobs: each claim spreads its batch over the ongoing jobs, starting after
//! the job this queue handle served last, so a small job is never stuck behind a large one.
//!
//! This module knows rows, leases and outcomes; it knows nothing of HTTP or of how an image
//! is processed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Row};

use serde_json::{Value, json};

use crate::db::{Backend, Db, DbError, err, jobs, now_ms};
use crate::domain::ErrorKind;

/// An image leased to this worker.
#[derive(Debug, Clone)]
pub struct ClaimedImage {
    pub id: i64,
    pub job_id: i64,
    pub seq: i64,
    pub store_id: String,
    pub url: String,
    /// Including this one.
    pub attempts: i64,
}

/// What became of a claimed image.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded {
        width: i64,
        height: i64,
        perimeter: i64,
    },
    Failed {
        kind: ErrorKind,
        message: String,
    },
    /// Put it back in the queue, to be claimed again no earlier than `after`.
    Retry {
        after: Duration,
        kind: ErrorKind,
        message: String,
    },
}

/// A queue handle for one worker process (one lease owner).
#[derive(Debug)]
pub struct Queue {
    db: Db,
    owner: String,
    lease: Duration,
    max_attempts: i64,
    /// The job served last: the next claim starts after it (round robin across jobs).
    cursor: Mutex<i64>,
    /// The jobs with claimable images (a window after `cursor`), as last read; re-read when
    /// older than [`JOB_LIST_TTL`], when
    /// [`Queue::forget_jobs`] is called (new work announced), or when it yielded nothing.
    jobs: Mutex<Option<(Instant, Vec<i64>)>>,
    /// Recently read "is this job still ongoing?" answers, for [`Queue::may_be_ongoing`].
    job_states: Mutex<HashMap<i64, (Instant, bool)>>,
    /// Images this process claimed and has not yet recorded or let go: the only leases the
    /// heartbeat renews. (Renewing every lease of the owner would keep alive forever an image
    /// whose outcome could not be written during a database outage.)
    held: Mutex<HashSet<i64>>,
}

/// How long the list of ongoing jobs is reused between claims.
const JOB_LIST_TTL: Duration = Duration::from_millis(250);

/// At most this many ongoing jobs are considered by one claim.
const JOBS_PER_CLAIM: i64 = 256;

impl Queue {
    pub fn new(db: Db, owner: String, lease: Duration, max_attempts: u32) -> Self {
        Self {
            db,
            owner,
            lease,
            max_attempts: i64::from(max_attempts),
            cursor: Mutex::new(0),
            jobs: Mutex::new(None),
            job_states: Mutex::new(HashMap::new()),
            held: Mutex::new(HashSet::new()),
        }
    }

    /// Drops the cached list of ongoing jobs, so the next claim sees a job just submitted.
    pub fn forget_jobs(&self) {
        *self.jobs.lock().expect("jobs lock") = None;
    }

    /// Whether `job_id` was still ongoing a moment ago (at most [`JOB_LIST_TTL`]): lets a
    /// worker skip claimed images of a job cancelled while they waited in its buffer, with one
    /// small query per job and interval rather than one per image. True when unsure.
    pub async fn may_be_ongoing(&self, job_id: i64) -> bool {
        if let Some((at, ongoing)) = self.job_states.lock().expect("states lock").get(&job_id)
            && at.elapsed() < JOB_LIST_TTL
        {
            return *ongoing;
        }
        let ongoing = jobs::is_ongoing(&self.db, job_id).await.unwrap_or(true);
        let mut states = self.job_states.lock().expect("states lock");
        if states.len() > 1024 {
            states.retain(|_, (at, _)| at.elapsed() < JOB_LIST_TTL);
        }
        states.insert(job_id, (Instant::now(), ongoing));
        ongoing
    }

    /// The jobs with claimable images (the window after the cursor), and whether the list
    /// came from the cache.
    async fn ongoing_jobs(&self) -> Result<(Vec<i64>, bool), DbError> {
        if let Some((at, ids)) = &*self.jobs.lock().expect("jobs lock")
            && at.elapsed() < JOB_LIST_TTL
        {
            return Ok((ids.clone(), true));
        }
        let cursor = *self.cursor.lock().expect("cursor lock");
        let ids = jobs::claimable_ids(&self.db, cursor, now_ms(), JOBS_PER_CLAIM).await?;
        *self.jobs.lock().expect("jobs lock") = Some((Instant::now(), ids.clone()));
        Ok((ids, false))
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Leases up to `n` pending images, spread evenly over the ongoing jobs.
    pub async fn claim(&self, n: usize) -> Result<Vec<ClaimedImage>, DbError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let (jobs, cached) = self.ongoing_jobs().await?;
        let claimed = self.claim_over(jobs, n).await?;
        if claimed.is_empty() && cached {
            // The cached list may be stale (its jobs done, new ones missing): look again.
            self.forget_jobs();
            let (jobs, _) = self.ongoing_jobs().await?;
            return self.claim_over(jobs, n).await;
        }
        Ok(claimed)
    }

    async fn claim_over(&self, mut jobs: Vec<i64>, n: usize) -> Result<Vec<ClaimedImage>, DbError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let cursor = *self.cursor.lock().expect("cursor lock");
        let start = jobs.iter().position(|&id| id > cursor).unwrap_or(0);
        jobs.rotate_left(start);

        let mut claimed = Vec::with_capacity(n);
        let mut candidates = jobs;
        // Each pass gives every candidate job an equal share of what is left; jobs that could
        // not fill their share drop out, so the rest of the batch goes to those that can.
        while claimed.len() < n && !candidates.is_empty() {
            let share = (n - claimed.len()).div_ceil(candidates.len());
            let mut still_full = Vec::new();
            for &job_id in &candidates {
                let want = share.min(n - claimed.len());
                if want == 0 {
                    break;
                }
                let got = self.claim_from_job(job_id, want).await?;
                if !got.is_empty() {
                    *self.cursor.lock().expect("cursor lock") = job_id;
                }
                if got.len() == want {
                    still_full.push(job_id);
                }
                claimed.extend(got);
            }
            candidates = still_full;
        }
        Ok(claimed)
    }

    async fn claim_from_job(&self, job_id: i64, n: usize) -> Result<Vec<ClaimedImage>, DbError> {
        let now = now_ms();
        let sql = match self.db.backend() {
            // SKIP LOCKED lets concurrent workers claim disjoint rows without waiting; the
            // MATERIALIZED fence keeps the planner from re-running the LIMITed select.
            // A claim need not wait for its WAL flush: one lost in a PostgreSQL crash leaves the
            // image pending, and the worker's result is then refused for want of the lease, so
            // `async_commit` turns synchronous_commit off for this statement's transaction only.
            Backend::Postgres => {
                "WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true)), \
                 picked AS MATERIALIZED (\
                   SELECT id FROM images WHERE job_id = $1 AND status = 'pending' AND available_at <= $2 \
                   ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 UPDATE images SET status = 'running', lease_owner = $4, lease_expires_at = $5, \
                   attempts = attempts + 1, updated_at = $2 \
                 FROM picked, async_commit WHERE images.id = picked.id \
                 RETURNING images.id, images.job_id, images.seq, images.store_id, images.url, images.attempts"
            }
            // SQLite has one writer at a time: the single statement is atomic.
            Backend::Sqlite => {
                "UPDATE images SET status = 'running', lease_owner = $4, lease_expires_at = $5, \
                   attempts = attempts + 1, updated_at = $2 \
                 WHERE id IN (SELECT id FROM images WHERE job_id = $1 AND status = 'pending' \
                   AND available_at <= $2 ORDER BY seq LIMIT $3) \
                 RETURNING id, job_id, seq, store_id, url, attempts"
            }
        };
        let _turn = self.db.write_turn().await;
        let rows = sqlx::query(sql)
            .bind(job_id)
            .bind(now)
            .bind(n as i64)
            .bind(&self.owner)
            .bind(now + self.lease_ms())
            .fetch_all(self.db.pool())
            .await
            .map_err(err)?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                Ok(ClaimedImage {
                    id: r.try_get("id").map_err(err)?,
                    job_id: r.try_get("job_id").map_err(err)?,
                    seq: r.try_get("seq").map_err(err)?,
                    store_id: r.try_get("store_id").map_err(err)?,
                    url: r.try_get("url").map_err(err)?,
                    attempts: r.try_get("attempts").map_err(err)?,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        claimed.sort_by_key(|c| c.seq);
        self.held
            .lock()
            .expect("held lock")
            .extend(claimed.iter().map(|c| c.id));
        Ok(claimed)
    }

    /// Stops renewing the leases of these images (their outcome will not be recorded by this
    /// process): they expire and another worker takes them.
    pub fn let_go(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.held.lock().expect("held lock");
        for id in ids {
            held.remove(&id);
        }
    }

    /// Extends the leases of the images this process still holds. Returns how many it renewed.
    pub async fn heartbeat(&self) -> Result<u64, DbError> {
        let ids: Vec<_> = self
            .held
            .lock()
            .expect("held lock")
            .iter()
            .map(|id| json!([id]))
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE images SET lease_expires_at = $1 WHERE lease_owner = $2 AND status = 'running' \
             AND id IN (SELECT CAST(t.value ->> 0 AS BIGINT) FROM {})",
            self.db.json_rows("$3")
        );
        let now = now_ms();
        let _turn = self.db.write_turn().await;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(now + self.lease_ms())
            .bind(&self.owner)
            .bind(Value::Array(ids).to_string())
            .execute(self.db.pool())
            .await
            .map_err(err)?;
        Ok(done.rows_affected())
    }

    /// Records outcomes in one transaction, each only where this worker still holds the
    /// image's lease, then advances the counters of the jobs they belong to (finishing a job
    /// when its last image is in). Returns how many outcomes were recorded.
    pub async fn complete(&self, outcomes: &[(i64, Outcome)]) -> Result<usize, DbError> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let _turn = self.db.write_turn().await;
        let mut tx = self.db.pool().begin().await.map_err(err)?;
        let mut per_job: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        let mut recorded = 0;
        let sql = format!(
            "UPDATE images SET status = v.status, width = v.width, height = v.height, \
               perimeter = v.perimeter, error = v.error, error_kind = v.error_kind, \
               available_at = v.available_at, lease_owner = NULL, lease_expires_at = NULL, updated_at = $1, \
               processed_by = $2 \
             FROM (SELECT CAST(t.value ->> 0 AS BIGINT) AS id, t.value ->> 1 AS status, \
                     CAST(t.value ->> 2 AS BIGINT) AS width, CAST(t.value ->> 3 AS BIGINT) AS height, \
                     CAST(t.value ->> 4 AS BIGINT) AS perimeter, t.value ->> 5 AS error, \
                     t.value ->> 6 AS error_kind, CAST(t.value ->> 7 AS BIGINT) AS available_at \
                   FROM {}) AS v \
             WHERE images.id = v.id AND images.lease_owner = $2 AND images.status = 'running' \
             RETURNING images.job_id, images.status",
            self.db.json_rows("$3")
        );
        let rows: Vec<Value> = outcomes
            .iter()
            .map(|(id, outcome)| match outcome {
                Outcome::Succeeded {
                    width,
                    height,
                    perimeter,
                } => {
                    json!([id, "succeeded", width, height, perimeter, null, null, now])
                }
                Outcome::Failed { kind, message } => {
                    json!([id, "failed", null, null, null, message, kind.as_str(), now])
                }
                Outcome::Retry {
                    after,
                    kind,
                    message,
                } => {
                    let at = now + after.as_millis() as i64;
                    json!([id, "pending", null, null, null, message, kind.as_str(), at])
                }
            })
            .collect();
        let updated = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(&self.owner)
            .bind(Value::Array(rows).to_string())
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        for row in updated {
            recorded += 1;
            let job_id: i64 = row.try_get("job_id").map_err(err)?;
            let status: String = row.try_get("status").map_err(err)?;
            let entry = per_job.entry(job_id).or_default();
            match status.as_str() {
                "succeeded" => entry.0 += 1,
                "failed" => entry.1 += 1,
                _ => {}
            }
        }
        // Jobs in id order, so two workers never lock the same two job rows in opposite order.
        for (job_id, (succeeded, failed)) in per_job {
            if succeeded + failed > 0 {
                jobs::record_finished(&self.db, &mut tx, job_id, succeeded, failed, now).await?;
            }
        }
        tx.commit().await.map_err(err)?;
        self.let_go(outcomes.iter().map(|(id, _)| *id));
        Ok(recorded)
    }

    /// Hands back every image this worker still holds (used at shutdown): they become
    /// pending again and the interrupted attempt is not counted.
    pub async fn release_all(&self) -> Result<u64, DbError> {
        self.held.lock().expect("held lock").clear();
        let _turn = self.db.write_turn().await;
        let done = sqlx::query(
            "UPDATE images SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
             attempts = attempts - 1, updated_at = $1 WHERE lease_owner = $2 AND status = 'running'",
        )
        .bind(now_ms())
        .bind(&self.owner)
        .execute(self.db.pool())
        .await
        .map_err(err)?;
        Ok(done.rows_affected())
    }

    /// Takes back images whose lease expired (their worker died or hung): back to pending,
    /// or failed once their attempts are used up. Safe to run from every worker at once.
    pub async fn reap_expired(&self) -> Result<u64, DbError> {
        let now = now_ms();
        let expired_ids = match self.db.backend() {
            Backend::Postgres => {
                "SELECT id FROM images WHERE status = 'running' AND lease_expires_at < $1 \
                 ORDER BY lease_expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED"
            }
            Backend::Sqlite => {
                "SELECT id FROM images WHERE status = 'running' AND lease_expires_at < $1 \
                 ORDER BY lease_expires_at LIMIT 1000"
            }
        };
        let _turn = self.db.write_turn().await;
        let mut tx = self.db.pool().begin().await.map_err(err)?;
        // Write first: on SQLite this takes the write lock at once instead of upgrading a read.
        let failed = sqlx::query(AssertSqlSafe(format!(
            "UPDATE images SET status = 'failed', lease_owner = NULL, lease_expires_at = NULL, \
               error = 'abandoned after ' || CAST(attempts AS TEXT) || ' attempts: its worker stopped or stalled while processing it' \
                 || COALESCE('; earlier: ' || error, ''), \
               error_kind = $2, updated_at = $1 \
             WHERE id IN ({expired_ids}) AND attempts >= $3 RETURNING job_id"
        )))
        .bind(now)
        .bind(ErrorKind::LeaseExpired.as_str())
        .bind(self.max_attempts)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        let requeued = sqlx::query(AssertSqlSafe(format!(
            "UPDATE images SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
               updated_at = $1 WHERE id IN ({expired_ids})"
        )))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        let mut per_job: BTreeMap<i64, i64> = BTreeMap::new();
        for row in &failed {
            *per_job
                .entry(row.try_get("job_id").map_err(err)?)
                .or_default() += 1;
        }
        for (job_id, n) in per_job {
            jobs::record_finished(&self.db, &mut tx, job_id, 0, n, now).await?;
        }
        tx.commit().await.map_err(err)?;
        let total = failed.len() as u64 + requeued.rows_affected();
        if total > 0 {
            tracing::warn!(
                requeued = requeued.rows_affected(),
                failed = failed.len(),
                "took back images whose lease expired"
            );
        }
        Ok(total)
    }
}
