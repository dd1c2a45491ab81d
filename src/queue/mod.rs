//! The durable queue: the `images` table, worked through leases.
//!
//! An image is `pending` until a worker claims it; the claim sets `running`, the worker's id
//! as `lease_owner`, a `lease_expires_at`, and counts the claim (`claims`). When the worker
//! starts the image it records so ([`Queue::record`]: `started`, and the attempt counted in
//! `attempts`), in the same transaction as its next outcomes. The worker heartbeats its leases
//! while it works and writes its result only where it still holds the lease, so a result is
//! never recorded twice. Leases that expire (a dead worker) are handed back to `pending`: a
//! dead worker costs an attempt only to the images it had started. An image is failed for good
//! once its attempts are used up (a poison image), or once it has been claimed
//! [`Queue::with_max_claims`] times without an outcome (one that brings its worker down before
//! its start is recorded). A worker that stops hands its unstarted images back at once, their
//! claims refunded ([`Queue::hand_back`]).
//!
//! Which jobs a claim draws from is the [`scheduler`]'s decision (fair shares across tenants,
//! then jobs); a claim then leases the images of all those jobs in **one statement**. Job
//! counters and a job's final status are kept by [`crate::db::jobs`], in the same
//! transaction as the results.
//!
//! Every time is the database's clock (`{now}` in the SQL), never the worker's: lease expiry,
//! heartbeats, retry availability and the reaper's comparisons stay right on a host whose
//! clock is off. Every statement that waits for image-row locks takes them in id order, and
//! image rows before job rows, so two transactions never deadlock.
//!
//! This module knows rows, leases and outcomes; it knows nothing of HTTP or of how an image
//! is processed.

pub(crate) mod backoff;
mod leases;
pub(crate) mod scheduler;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection};

use crate::db::{Backend, Db, DbError, err, jobs};
use crate::domain::ErrorKind;
pub use scheduler::Scheduler;
use scheduler::{Got, Take};

/// An image leased to this worker.
#[derive(Debug, Clone)]
pub struct ClaimedImage {
    pub id: i64,
    pub job_id: i64,
    pub seq: i64,
    pub store_id: String,
    pub url: String,
    /// Attempts, this one included once the image is started.
    pub attempts: i64,
    /// How many of the image's leases expired before (its workers died or hung while it was
    /// leased): above 0, its start is recorded before it runs.
    pub expiries: i64,
    /// How many of those leases expired while it was running (its start was recorded): above
    /// 0, it may be what brought its worker down, and it runs alone.
    pub crashes: i64,
}

crate::db::from_row!(ClaimedImage {
    id: i64,
    job_id: i64,
    seq: i64,
    store_id: String,
    url: String,
    attempts: i64,
    expiries: i64,
    crashes: i64,
});

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
    /// Not tried at all (its host was busy or its circuit breaker open): back to the queue no
    /// earlier than `after`, without spending the attempt its claim counted, its last error
    /// kept.
    Deferred {
        after: Duration,
    },
}

impl Outcome {
    /// The outcome as one named-key JSON row of [`Queue::complete`]'s statement.
    fn row(&self, id: i64) -> Value {
        match self {
            Outcome::Succeeded {
                width,
                height,
                perimeter,
            } => json!({"id": id, "status": "succeeded", "width": width, "height": height,
                        "perimeter": perimeter, "delay_ms": 0, "refund": 0}),
            Outcome::Failed { kind, message } => json!({"id": id, "status": "failed",
                        "error": message, "kind": kind.as_str(), "delay_ms": 0, "refund": 0}),
            Outcome::Retry {
                after,
                kind,
                message,
            } => json!({"id": id, "status": "pending", "error": message, "kind": kind.as_str(),
                        "delay_ms": after.as_millis() as i64, "refund": 0}),
            Outcome::Deferred { after } => json!({"id": id, "status": "pending",
                        "delay_ms": after.as_millis() as i64, "refund": 1}),
        }
    }
}

/// A queue handle for one worker process (one lease owner).
#[derive(Debug)]
pub struct Queue {
    db: Db,
    owner: String,
    lease: Duration,
    max_attempts: i64,
    max_claims: i64,
    scheduler: Scheduler,
    /// Images this process claimed and has not yet recorded or let go: the only leases the
    /// heartbeat renews. (Renewing every lease of the owner would keep alive forever an image
    /// whose outcome could not be written during a database outage.)
    held: Mutex<HashSet<i64>>,
    /// Outcomes this process has queued for recording and not yet recorded (or given up on).
    unrecorded: std::sync::atomic::AtomicUsize,
}

/// Most statements one claim issues: a first split, and passes that hand what some jobs
/// could not use to the jobs that filled their share.
const CLAIM_PASSES: usize = 3;

/// Claims of one image without an outcome after which it is failed, unless told otherwise.
pub const DEFAULT_MAX_CLAIMS: u32 = 10;

impl Queue {
    pub fn new(db: Db, owner: String, lease: Duration, max_attempts: u32) -> Self {
        Self {
            scheduler: Scheduler::new(db.clone()),
            db,
            owner,
            lease,
            max_attempts: i64::from(max_attempts),
            max_claims: i64::from(DEFAULT_MAX_CLAIMS.max(max_attempts)),
            held: Mutex::new(HashSet::new()),
            unrecorded: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// An outcome is on its way to [`Queue::record`] (the worker's writer).
    pub fn outcome_queued(&self) {
        self.unrecorded
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// `n` queued outcomes were recorded, or given up on.
    pub fn outcomes_settled(&self, n: usize) {
        let _ = self.unrecorded.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |left| Some(left.saturating_sub(n)),
        );
    }

    /// Outcomes queued and not yet recorded.
    pub fn unrecorded(&self) -> usize {
        self.unrecorded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fails an image for good once it has been claimed `max_claims` times without an outcome
    /// (at least the attempts: every attempt is a claim).
    pub fn with_max_claims(mut self, max_claims: u32) -> Self {
        self.max_claims = i64::from(max_claims).max(self.max_attempts);
        self
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The scheduler behind the claims (new work announced: [`Scheduler::forget`]; skipping
    /// images of a cancelled job: [`Scheduler::may_be_ongoing`]).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// How many [`Queue::complete`] transactions of this process may usefully run at once.
    /// On PostgreSQL a batch spends most of its time waiting (for the CPU, the job row's lock,
    /// the commit's flush), so two overlap; they lock disjoint images and then job rows in
    /// id order, as the writers of several processes always have. SQLite has one writer.
    pub fn parallel_writes(&self) -> usize {
        match self.db.backend() {
            Backend::Postgres => 2,
            Backend::Sqlite => 1,
        }
    }

    fn lease_ms(&self) -> i64 {
        self.lease.as_millis() as i64
    }

    /// Leases up to `n` pending images, shared fairly across tenants and then jobs (see
    /// [`scheduler`]), in the order they should start: round robin over the jobs.
    pub async fn claim(&self, n: usize) -> Result<Vec<ClaimedImage>, DbError> {
        let mut claimed: Vec<ClaimedImage> = Vec::with_capacity(n);
        let mut fresh = false;
        for _ in 0..CLAIM_PASSES {
            let wanted = n - claimed.len();
            if wanted == 0 {
                break;
            }
            let (plan, cached) = self.scheduler.plan(wanted, fresh).await?;
            if plan.is_empty() {
                if cached && claimed.is_empty() && !fresh {
                    // The cached windows may be stale (their jobs done, new ones missing).
                    fresh = true;
                    continue;
                }
                break;
            }
            let got = self.lease(&plan).await?;
            let mut per_job: HashMap<i64, Got> = HashMap::new();
            for image in &got {
                let g = per_job.entry(image.job_id).or_default();
                g.count += 1;
                g.max_seq = g.max_seq.max(image.seq);
            }
            let rewound = self.scheduler.served(&plan, &per_job);
            let full = plan
                .iter()
                .any(|t| per_job.get(&t.job_id).is_some_and(|g| g.count >= t.take));
            let empty = got.is_empty();
            claimed.extend(got);
            if rewound {
                // A job came up short after its claim cursor: ask it again from its start.
                continue;
            }
            if empty && cached && !fresh {
                fresh = true;
                continue;
            }
            if !full {
                break;
            }
        }
        interleave(&mut claimed);
        self.held
            .lock()
            .expect("held lock")
            .extend(claimed.iter().map(|c| c.id));
        Ok(claimed)
    }

    /// One statement: leases up to `take` pending images of each planned job, lowest `seq`
    /// first. PostgreSQL: `SKIP LOCKED` lets concurrent workers take disjoint rows without
    /// waiting, behind a `MATERIALIZED` fence so the planner cannot re-run the `LIMIT`ed
    /// selects. SQLite: one writer at a time makes the single statement atomic.
    async fn lease(&self, plan: &[Take]) -> Result<Vec<ClaimedImage>, DbError> {
        let sql = match self.db.backend() {
            // A claim need not wait for its WAL flush: one lost in a PostgreSQL crash leaves the
            // image pending, and the worker's result is then refused for want of the lease, so
            // `async_commit` turns synchronous_commit off for this statement's transaction only.
            // The planner cannot know how many rows the LATERAL LIMITs give (it guesses
            // thousands and would hash-join the whole table): `= ANY(ARRAY(…))` makes the update
            // a primary-key lookup of exactly the rows picked.
            Backend::Postgres => self.db.with_clock(&format!(
                "WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true)), \
                 plan AS (SELECT t.job AS job_id, t.take, t.after FROM {rows}), \
                 picked AS MATERIALIZED ( \
                   SELECT i.id FROM plan CROSS JOIN LATERAL ( \
                     SELECT id FROM images WHERE job_id = plan.job_id AND seq > plan.after \
                       AND status = 'pending' \
                       AND available_at <= {{now}} ORDER BY seq LIMIT plan.take \
                     FOR UPDATE SKIP LOCKED) AS i) \
                 UPDATE images SET status = 'running', lease_owner = $2, \
                   lease_expires_at = {{now}} + $3, claims = claims + 1, started = 0, \
                   updated_at = {{now}} \
                 FROM async_commit WHERE images.id = ANY(ARRAY(SELECT id FROM picked)) \
                 RETURNING images.id, images.job_id, images.seq, images.store_id, images.url, \
                   images.attempts + 1 AS attempts, images.expiries, images.crashes",
                rows = self.db.json_records(
                    "$1",
                    &[("job", "BIGINT"), ("take", "BIGINT"), ("after", "BIGINT")]
                )
            )),
            // SQLite has no LATERAL: one LIMITed select per job, joined by UNION ALL. The
            // number of selects is rounded up to a power of two (unused ones take nothing), so
            // a handful of statement texts serve every plan and stay prepared. The limits are
            // `CAST(? AS BIGINT)`, not a bare `?`: SQLite (3.4x+) recompiles a statement
            // whenever the value bound to a bare `LIMIT ?` changes, and the takes change with
            // every claim (measured: recompiling a 32-select claim was 29% of the SQLite
            // thread's time draining 2,000 jobs x 10 images).
            Backend::Sqlite => {
                let slots = plan.len().next_power_of_two();
                let selects: Vec<String> = (0..slots)
                    .map(|i| {
                        format!(
                            "SELECT * FROM (SELECT id FROM images WHERE job_id = ${} \
                             AND seq > ${} AND status = 'pending' AND available_at <= {{now}} \
                             ORDER BY seq LIMIT CAST(${} AS BIGINT))",
                            4 + 3 * i,
                            5 + 3 * i,
                            6 + 3 * i
                        )
                    })
                    .collect();
                self.db.with_clock(&format!(
                    "UPDATE images SET status = 'running', lease_owner = $2, \
                       lease_expires_at = {{now}} + $3, claims = claims + 1, started = 0, \
                       updated_at = {{now}} \
                     WHERE $1 = $1 AND id IN ({}) \
                     RETURNING id, job_id, seq, store_id, url, attempts + 1 AS attempts, expiries, crashes",
                    selects.join(" UNION ALL ")
                ))
            }
        };
        let plan_json = Value::Array(
            plan.iter()
                .map(|t| json!({"job": t.job_id, "take": t.take, "after": t.after}))
                .collect(),
        )
        .to_string();
        let padded: Vec<Take> = match self.db.backend() {
            Backend::Sqlite => {
                let mut all = plan.to_vec();
                all.resize(
                    plan.len().next_power_of_two(),
                    Take {
                        job_id: -1,
                        take: 0,
                        after: -1,
                    },
                );
                all
            }
            Backend::Postgres => Vec::new(),
        };
        let _turn = self.db.write_turn().await;
        self.db
            .timed(async |conn| {
                let mut query = sqlx::query_as::<_, ClaimedImage>(AssertSqlSafe(sql))
                    .bind(plan_json)
                    .bind(&self.owner)
                    .bind(self.lease_ms());
                for t in &padded {
                    query = query.bind(t.job_id).bind(t.after).bind(t.take);
                }
                query.fetch_all(&mut *conn).await.map_err(err)
            })
            .await
    }

    /// Records outcomes (see [`Queue::record`]).
    pub async fn complete(&self, outcomes: &[(i64, Outcome)]) -> Result<usize, DbError> {
        self.record(&[], outcomes).await
    }

    /// Records, in one transaction and each only where this worker still holds the image's
    /// lease: that the images `started` were started (their attempt counted), then the
    /// outcomes, then advances the counters of the jobs they belong to (finishing a job when
    /// its last image is in). An outcome of an image whose start was not recorded counts its
    /// attempt itself, so the count is right whichever comes first. Returns how many outcomes
    /// were recorded.
    pub async fn record(
        &self,
        started: &[i64],
        outcomes: &[(i64, Outcome)],
    ) -> Result<usize, DbError> {
        if outcomes.is_empty() && started.is_empty() {
            return Ok(0);
        }
        // An image whose outcome is in this batch too needs no start of its own: the outcome
        // counts the attempt of an image not marked started (one update per image, not two;
        // with short work most starts arrive with their outcomes).
        // (A deferral refunds its claim and counts no attempt: a start beside one still counts.)
        let finished: std::collections::HashSet<i64> = outcomes
            .iter()
            .filter(|(_, o)| !matches!(o, Outcome::Deferred { .. }))
            .map(|(id, _)| *id)
            .collect();
        let mut started: Vec<i64> = started
            .iter()
            .copied()
            .filter(|id| !finished.contains(id))
            .collect();
        started.sort_unstable();
        let start_sql = self.db.with_clock(&format!(
            "UPDATE images SET started = 1, attempts = attempts + 1 WHERE id IN ( \
               SELECT id FROM images WHERE {held} AND started = 0 AND {ours} {lock})",
            held = self.db.held_by("$1"),
            ours = self.db.any_of("id", &self.db.json_ids("$2")),
            lock = match self.db.backend() {
                Backend::Postgres => "ORDER BY id FOR UPDATE",
                Backend::Sqlite => "",
            },
        ));
        let started = json!(started).to_string();
        let mut rows: Vec<(i64, Value)> =
            outcomes.iter().map(|(id, o)| (*id, o.row(*id))).collect();
        rows.sort_unstable_by_key(|(id, _)| *id);
        let rows = Value::Array(rows.into_iter().map(|(_, row)| row).collect()).to_string();
        let (fence, lock) = match self.db.backend() {
            // Lock the rows first, in id order (see the module doc), in a CTE of its own.
            // `v` is MATERIALIZED on both: SQLite would otherwise flatten it into the join and
            // parse the whole JSON parameter again for every row (measured: 145 ms instead of
            // 6 ms for 274 outcomes beside 4,000 leased images).
            Backend::Postgres => ("MATERIALIZED ", "ORDER BY id FOR UPDATE"),
            Backend::Sqlite => ("", ""),
        };
        let sql = self.db.with_clock(&format!(
            "WITH v AS MATERIALIZED (SELECT t.id, t.status, t.width, t.height, t.perimeter, t.error, \
                 t.kind AS error_kind, t.delay_ms, t.refund FROM {rows}), \
             mine AS {fence}(SELECT id FROM images WHERE {held} AND {ours} {lock}) \
             UPDATE images SET status = v.status, width = v.width, height = v.height, \
               perimeter = v.perimeter, \
               attempts = images.attempts + (1 - images.started) * (1 - v.refund), \
               claims = images.claims - v.refund, started = 0, \
               error = CASE WHEN v.refund = 1 THEN images.error ELSE v.error END, \
               error_kind = CASE WHEN v.refund = 1 THEN images.error_kind ELSE v.error_kind END, \
               available_at = {{now}} + v.delay_ms, lease_owner = NULL, lease_expires_at = NULL, \
               updated_at = {{now}}, \
               processed_by = CASE WHEN v.refund = 1 THEN images.processed_by ELSE $1 END \
             FROM v WHERE images.id = v.id AND images.id IN (SELECT id FROM mine) \
             RETURNING images.job_id, images.status",
            rows = self.db.json_records(
                "$2",
                &[
                    ("id", "BIGINT"),
                    ("status", "TEXT"),
                    ("width", "BIGINT"),
                    ("height", "BIGINT"),
                    ("perimeter", "BIGINT"),
                    ("error", "TEXT"),
                    ("kind", "TEXT"),
                    ("delay_ms", "BIGINT"),
                    ("refund", "BIGINT"),
                ]
            ),
            held = self.db.held_by("$1"),
            ours = self.db.any_of("id", "SELECT id FROM v")
        ));
        let _turn = self.db.write_turn().await;
        let recorded = self
            .db
            .timed(async |conn| {
                let mut tx = conn.begin().await.map_err(err)?;
                if started != "[]" {
                    sqlx::query(AssertSqlSafe(start_sql))
                        .bind(&self.owner)
                        .bind(started)
                        .execute(&mut *tx)
                        .await
                        .map_err(err)?;
                }
                let updated: Vec<(i64, String)> = if outcomes.is_empty() {
                    Vec::new()
                } else {
                    sqlx::query_as(AssertSqlSafe(sql))
                        .bind(&self.owner)
                        .bind(rows)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(err)?
                };
                let mut per_job: BTreeMap<i64, jobs::Finished> = BTreeMap::new();
                for (job_id, status) in &updated {
                    let counts = per_job.entry(*job_id).or_default();
                    match status.as_str() {
                        "succeeded" => counts.succeeded += 1,
                        "failed" => counts.failed += 1,
                        _ => {}
                    }
                }
                per_job.retain(|_, c| c.succeeded + c.failed > 0);
                jobs::record_finished(&self.db, &mut tx, &per_job).await?;
                tx.commit().await.map_err(err)?;
                Ok(updated.len())
            })
            .await?;
        self.let_go(outcomes.iter().map(|(id, _)| *id));
        Ok(recorded)
    }
}

/// Orders claimed images round robin over their jobs (each job's images by `seq`), keeping the
/// order in which jobs first appear: a small job's images start beside a large job's, not
/// after them.
fn interleave(images: &mut Vec<ClaimedImage>) {
    let mut first_seen: HashMap<i64, usize> = HashMap::new();
    for (i, image) in images.iter().enumerate() {
        first_seen.entry(image.job_id).or_insert(i);
    }
    images.sort_by_key(|c| (c.job_id, c.seq));
    let mut rank_in_job = Vec::with_capacity(images.len());
    let mut previous = None;
    let mut rank = 0usize;
    for image in images.iter() {
        if previous != Some(image.job_id) {
            rank = 0;
            previous = Some(image.job_id);
        }
        rank_in_job.push(rank);
        rank += 1;
    }
    let mut keyed: Vec<(usize, usize, ClaimedImage)> = images
        .drain(..)
        .zip(rank_in_job)
        .map(|(image, rank)| (rank, first_seen[&image.job_id], image))
        .collect();
    keyed.sort_by_key(|(rank, job_order, _)| (*rank, *job_order));
    images.extend(keyed.into_iter().map(|(_, _, image)| image));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: i64, job_id: i64, seq: i64) -> ClaimedImage {
        ClaimedImage {
            id,
            job_id,
            seq,
            store_id: "S".into(),
            url: "u".into(),
            attempts: 1,
            expiries: 0,
            crashes: 0,
        }
    }

    #[test]
    fn claimed_images_start_round_robin_over_their_jobs() {
        let mut images = vec![
            image(1, 7, 0),
            image(2, 7, 1),
            image(3, 7, 2),
            image(9, 3, 0),
            image(10, 3, 1),
        ];
        interleave(&mut images);
        let order: Vec<(i64, i64)> = images.iter().map(|c| (c.job_id, c.seq)).collect();
        assert_eq!(order, vec![(7, 0), (3, 0), (7, 1), (3, 1), (7, 2)]);
    }
}
