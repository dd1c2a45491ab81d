//! Fair sharing of the queue: which jobs a claim takes images from, and how many from each.
//!
//! Two levels of round robin: a claim of `n` images is split evenly over the **tenants** that
//! have claimable work (what one cannot use goes to the others: "water filling"), then each
//! tenant's share goes to its **jobs** in turns of up to [`QUANTUM`] images (deficit round
//! robin): the job whose turn it is gets images until its turn is used up or it has none left,
//! then the next job's turn begins. A turn can span several claims: a worker that frees 8
//! slots at a time serves a 10-image job with 8 and then 2, and only then moves on. So a
//! tenant with 400 queued jobs cannot slow another tenant's 5-image job, within a tenant a
//! small job behind a large one finishes in about its own time (the large one gets 20 images
//! before the small one's turn), and a tenant's visit-sized jobs (1-20 images) finish one
//! after another, each in one turn, instead of all together at the end.
//!
//! Turns of one image each were as fair between jobs but made each of 2,000 ten-image jobs
//! take ten claims and ten counter updates, and every job finished only in the last pass (P7
//! on SQLite: 0.8x of one 20,000-image job's drain rate with turns of one image).
//!
//! The scheduler reads, per tenant, a window of at most [`JOBS_PER_TENANT`] ongoing jobs with
//! claimable images, starting at the job whose turn it is (after that tenant's cursor) and wrapping
//! around, so every job is reached however many there are. The windows are cached for
//! [`WINDOW_TTL`] and re-read sooner when new work is announced or a window runs dry, so a
//! claim usually costs one statement, whatever the number of jobs sharing the queue.
//!
//! Each job also has a **claim cursor** here: the highest `seq` this process has claimed from
//! it. A claim reads a job's pending images after its cursor, so it never walks the job's
//! already-claimed head (on PostgreSQL those are index entries and row versions a claim would
//! otherwise visit one by one: a 100,000-image job slowed down as it progressed). Images put
//! back behind the cursor (a retry, a deferral, a lease taken back) are reached when a claim
//! after the cursor comes up short: the cursor then goes back to the start of the job.
//!
//! It decides; [`super::Queue::claim`] leases. It never writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::{Backend, Db, DbError, err};

/// How long the windows of candidate jobs are reused between claims.
pub const WINDOW_TTL: Duration = Duration::from_millis(250);

/// After new work is announced (a NOTIFY per submit), the windows are read again, but at most
/// once in this interval: a burst of submits costs one read, not one per submit.
pub const REREAD_AFTER_NOTICE: Duration = Duration::from_millis(50);

/// Within a tenant, a job's turn: up to this many images before the next job's turn. The
/// largest visit-sized job (1-20 images) is served in one turn.
pub const QUANTUM: i64 = 20;

/// A claim gives each tenant it serves at least this many images (when it has them): with
/// more tenants than a claim has room for at this share, a claim serves the next few in turn
/// instead of one image to each of many. Fair over a few claims as over one, and a claim of 32
/// across 500 tenants costs about what one across 4 does (per job it leases from, the claim,
/// the record and the finish each pay a row and a lookup).
pub const MIN_SHARE: i64 = 8;

/// At most this many candidate jobs are read per tenant.
pub const JOBS_PER_TENANT: i64 = 256;

/// A job a claim may take images from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub job_id: i64,
    /// Images not yet finished (an upper bound on what can be claimed from it now).
    pub remaining: i64,
    /// Images it was given in its current turn (see [`QUANTUM`]).
    pub used: i64,
}

/// How many images to take from one job, and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    pub job_id: i64,
    pub take: i64,
    /// Only images with a higher `seq` (the job's claim cursor; -1: from the start).
    pub after: i64,
}

/// What one job gave a claim: how many images, and the highest `seq` among them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Got {
    pub count: i64,
    pub max_seq: i64,
}

#[derive(Debug, Default)]
struct State {
    /// Per tenant, in tenant order: its window of candidate jobs, in round-robin order.
    windows: BTreeMap<String, Vec<Candidate>>,
    read_at: Option<Instant>,
    /// New work was announced since `read_at`: read again once [`REREAD_AFTER_NOTICE`] has
    /// passed since it.
    noticed: bool,
    /// Per tenant, the last job it was served from.
    job_cursor: HashMap<String, i64>,
    /// The last tenant served: the next split starts after it.
    tenant_cursor: Option<String>,
    /// Per job, the highest `seq` claimed here (see the module doc).
    claim_cursor: HashMap<i64, i64>,
    /// Per job whose turn is under way, the images it was given in that turn.
    turn_used: HashMap<i64, i64>,
}

/// The scheduler of one worker process.
#[derive(Debug)]
pub struct Scheduler {
    db: Db,
    state: Mutex<State>,
    /// Recently read "is this job still ongoing?" answers, for [`Scheduler::may_be_ongoing`].
    job_states: Mutex<HashMap<i64, (Instant, bool)>>,
}

impl Scheduler {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            state: Mutex::new(State::default()),
            job_states: Mutex::new(HashMap::new()),
        }
    }

    /// New work was announced: the next plan from [`REREAD_AFTER_NOTICE`] after the last read
    /// on reads the windows again. Returns how long until then (zero: the next plan does).
    pub fn forget(&self) -> Duration {
        let mut state = self.state.lock().expect("scheduler lock");
        match state.read_at {
            Some(at) if at.elapsed() < REREAD_AFTER_NOTICE => {
                state.noticed = true;
                REREAD_AFTER_NOTICE - at.elapsed()
            }
            _ => {
                state.read_at = None;
                Duration::ZERO
            }
        }
    }

    /// The images to claim, at most `n` in all, fairly split. Re-reads the windows when they
    /// are stale or `fresh` is asked (a plan from the cache found nothing).
    pub async fn plan(&self, n: usize, fresh: bool) -> Result<(Vec<Take>, bool), DbError> {
        let cached = {
            let state = self.state.lock().expect("scheduler lock");
            !fresh
                && state.read_at.is_some_and(|at| {
                    at.elapsed() < WINDOW_TTL
                        && !(state.noticed && at.elapsed() >= REREAD_AFTER_NOTICE)
                })
        };
        if !cached {
            self.read_windows().await?;
        }
        let state = self.state.lock().expect("scheduler lock");
        // Tenants in serving order, starting after the last one served (the first `earlier`
        // come last); only as many as this claim serves are copied, with their turns so far.
        let earlier = state
            .tenant_cursor
            .as_ref()
            .map_or(0, |a| state.windows.range::<String, _>(..=a).count());
        let order: Vec<&Vec<Candidate>> = state
            .windows
            .values()
            .skip(earlier)
            .chain(state.windows.values().take(earlier))
            .collect();
        let serving = takers(
            n as i64,
            order
                .iter()
                .map(|w| w.iter().map(|c| c.remaining.max(0)).sum()),
        );
        let windows: Vec<Vec<Candidate>> = order[..serving]
            .iter()
            .map(|&window| {
                let mut window = window.clone();
                for c in &mut window {
                    c.used = state.turn_used.get(&c.job_id).copied().unwrap_or(0);
                }
                window
            })
            .collect();
        let mut plan = split(n as i64, &windows);
        for take in &mut plan {
            take.after = state.claim_cursor.get(&take.job_id).copied().unwrap_or(-1);
        }
        Ok((plan, cached))
    }

    /// Learns from a claim: a job that gave fewer images than asked after its claim cursor
    /// is asked again from its start (images may have been put back behind the cursor); one
    /// that came up short from its start has none claimable now (it leaves the window until
    /// the next read). The cursors move past the jobs and the tenant that were served.
    /// Returns whether a job is to be asked again from its start.
    pub fn served(&self, plan: &[Take], got: &HashMap<i64, Got>) -> bool {
        {
            // A job that just gave pending images was ongoing a moment ago (a cancel fails
            // its pending images in the transaction that cancels it): no need to ask again
            // before its images start.
            let now = Instant::now();
            let mut states = self.job_states.lock().expect("states lock");
            if states.len() > 4096 {
                states.retain(|_, (at, _)| at.elapsed() < WINDOW_TTL);
            }
            for job in got.keys() {
                states.insert(*job, (now, true));
            }
        }
        let mut state = self.state.lock().expect("scheduler lock");
        let State {
            windows,
            job_cursor,
            tenant_cursor,
            claim_cursor,
            turn_used,
            ..
        } = &mut *state;
        let mut rewound = false;
        // The tenant served last in this plan's order (the order tenants took turns in).
        let mut last_tenant = None;
        for (tenant, window) in windows.iter_mut() {
            // The last job served, and whether its turn has images left.
            let mut last_served: Option<(i64, bool)> = None;
            window.retain_mut(|c| {
                let Some(asked) = plan.iter().position(|t| t.job_id == c.job_id) else {
                    return true;
                };
                let asked_take = plan[asked].take;
                let g = got.get(&c.job_id).copied().unwrap_or_default();
                c.remaining -= g.count;
                let used = turn_used.get(&c.job_id).copied().unwrap_or(0) + g.count;
                if g.count > 0 {
                    if last_tenant.as_ref().is_none_or(|(at, _)| asked > *at) {
                        last_tenant = Some((asked, tenant.clone()));
                    }
                    let cursor = claim_cursor.entry(c.job_id).or_insert(-1);
                    *cursor = (*cursor).max(g.max_seq);
                    last_served = Some((c.job_id, used % QUANTUM != 0 && c.remaining > 0));
                }
                turn_used.insert(c.job_id, used % QUANTUM);
                if g.count >= asked_take {
                    return c.remaining > 0;
                }
                if plan[asked].after >= 0 && c.remaining > 0 {
                    claim_cursor.insert(c.job_id, -1);
                    rewound = true;
                    return true;
                }
                false
            });
            let Some((job, turn_left)) = last_served else {
                continue;
            };
            // Every job served before `job` has had its turn; `job` goes on with its turn in
            // the next claim if it has images left in it, else the next job's turn begins.
            for c in window.iter() {
                if c.job_id == job {
                    break;
                }
                if plan.iter().any(|t| t.job_id == c.job_id) {
                    turn_used.remove(&c.job_id);
                }
            }
            let (next, cursor) = if turn_left && window.iter().any(|c| c.job_id == job) {
                (job, job - 1)
            } else {
                turn_used.remove(&job);
                let next = window
                    .iter()
                    .map(|c| c.job_id)
                    .find(|&id| id > job)
                    .or_else(|| window.first().map(|c| c.job_id))
                    .unwrap_or(job);
                (next, job)
            };
            // The window stays in round-robin order, starting with the job whose turn it is;
            // a re-read starts after `cursor`.
            job_cursor.insert(tenant.clone(), cursor);
            let at = window.iter().position(|c| c.job_id >= next).unwrap_or(0);
            window.rotate_left(at);
        }
        if let Some((_, tenant)) = last_tenant {
            *tenant_cursor = Some(tenant);
        }
        windows.retain(|_, w| !w.is_empty());
        rewound
    }

    /// Reads every tenant's window of candidate jobs in one statement, whatever the number
    /// of tenants: the tenants with ongoing jobs (an index skip-scan, one probe per tenant),
    /// and for each up to [`JOBS_PER_TENANT`] ongoing jobs with an image claimable now, after
    /// its cursor, then (when that falls short) from its first job on: the window wraps
    /// around. Each window comes back as one `id:remaining,…` string, so that both backends
    /// can answer it (SQLite has no `LATERAL`).
    ///
    /// "Has an image due now" is a scalar subquery on purpose: written as `EXISTS`, the
    /// PostgreSQL planner may turn it into a semi-join that scans every pending image (it
    /// did, with statistics a bulk submit had not refreshed yet: 100 ms a read). It looks
    /// after the job's claim cursor (`$1`, job id → seq), in `seq` order: without the cursor
    /// the probe walks every image already claimed, and without the order the planner may
    /// choose to scan the table for the first match (seen: 44 ms a read late in a big job).
    async fn read_windows(&self) -> Result<(), DbError> {
        let (job_cursors, claimed_up_to) = {
            let state = self.state.lock().expect("scheduler lock");
            let claimed: serde_json::Map<String, serde_json::Value> = state
                .claim_cursor
                .iter()
                .map(|(job, seq)| (job.to_string(), (*seq).into()))
                .collect();
            let cursors: Vec<serde_json::Value> = state
                .job_cursor
                .iter()
                .map(|(tenant, job)| serde_json::json!([tenant, job]))
                .collect();
            (
                serde_json::Value::Array(cursors).to_string(),
                serde_json::Value::Object(claimed).to_string(),
            )
        };
        let db = &self.db;
        let agg = match db.backend() {
            Backend::Sqlite => "group_concat(x.id || ':' || x.remaining, ',')",
            Backend::Postgres => {
                "string_agg(CAST(x.id AS TEXT) || ':' || CAST(x.remaining AS TEXT), ',')"
            }
        };
        let jobs = |op: &str| {
            format!(
                "(SELECT {agg} FROM (SELECT j.id, j.total - j.succeeded - j.failed AS remaining \
                   FROM jobs j WHERE j.status = 'ongoing' AND j.tenant = w.tenant AND j.id {op} w.after \
                   AND (SELECT i.id FROM images i WHERE i.job_id = j.id \
                     AND i.seq > COALESCE(CAST({claimed} AS BIGINT), -1) AND i.status = 'pending' \
                     AND i.available_at <= {{now}} ORDER BY i.seq LIMIT 1) IS NOT NULL \
                   ORDER BY j.id LIMIT {JOBS_PER_TENANT}) x)",
                claimed = db.json_key("$1", "CAST(j.id AS TEXT)"),
            )
        };
        let sql = db.with_clock(&format!(
            "WITH RECURSIVE tn(tenant) AS ( \
               SELECT MIN(tenant) FROM jobs WHERE status = 'ongoing' \
               UNION ALL \
               SELECT (SELECT MIN(j.tenant) FROM jobs j WHERE j.status = 'ongoing' AND j.tenant > tn.tenant) \
               FROM tn WHERE tn.tenant IS NOT NULL), \
             cursors AS (SELECT t.value ->> 0 AS tenant, CAST(t.value ->> 1 AS BIGINT) AS after \
               FROM {cursor_rows}), \
             w AS MATERIALIZED (SELECT tn.tenant, COALESCE(c.after, 0) AS after \
               FROM tn LEFT JOIN cursors c ON c.tenant = tn.tenant WHERE tn.tenant IS NOT NULL), \
             a AS MATERIALIZED (SELECT w.tenant, w.after, {after} AS later FROM w) \
             SELECT a.tenant, a.later, \
               CASE WHEN a.after > 0 AND COALESCE(LENGTH(a.later) - LENGTH(REPLACE(a.later, ',', '')) + 1, 0) < {JOBS_PER_TENANT} \
               THEN {wrapped} END AS earlier \
             FROM a",
            cursor_rows = db.json_rows("$2"),
            after = jobs(">"),
            wrapped = jobs("<=").replace("w.tenant", "a.tenant").replace("w.after", "a.after"),
        ));
        let rows: Vec<(String, Option<String>, Option<String>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&claimed_up_to)
                .bind(&job_cursors)
                .fetch_all(db.pool())
                .await
                .map_err(err)?;
        let mut windows = BTreeMap::new();
        for (tenant, later, earlier) in rows {
            let mut window = candidates(later.as_deref())?;
            window.extend(candidates(earlier.as_deref())?);
            window.truncate(JOBS_PER_TENANT as usize);
            if !window.is_empty() {
                windows.insert(tenant, window);
            }
        }
        let mut state = self.state.lock().expect("scheduler lock");
        state.job_cursor.retain(|t, _| windows.contains_key(t));
        let listed: std::collections::HashSet<i64> =
            windows.values().flatten().map(|c| c.job_id).collect();
        state.claim_cursor.retain(|job, _| listed.contains(job));
        state.turn_used.retain(|job, _| listed.contains(job));
        state.windows = windows;
        state.read_at = Some(Instant::now());
        state.noticed = false;
        Ok(())
    }

    /// Whether `job_id` was still ongoing a moment ago (at most [`WINDOW_TTL`]): lets a
    /// worker skip claimed images of a job cancelled while they waited in its buffer, with one
    /// small query per job and interval rather than one per image. True when unsure.
    pub async fn may_be_ongoing(&self, job_id: i64) -> bool {
        if let Some((at, ongoing)) = self.job_states.lock().expect("states lock").get(&job_id)
            && at.elapsed() < WINDOW_TTL
        {
            return *ongoing;
        }
        let ongoing = crate::db::jobs::is_ongoing(&self.db, job_id)
            .await
            .unwrap_or(true);
        let mut states = self.job_states.lock().expect("states lock");
        if states.len() > 1024 {
            states.retain(|_, (at, _)| at.elapsed() < WINDOW_TTL);
        }
        states.insert(job_id, (Instant::now(), ongoing));
        ongoing
    }
}

/// The candidates of one part of a window, `id:remaining,…` in id order (the order of the
/// aggregate is not promised, so it is sorted here).
fn candidates(list: Option<&str>) -> Result<Vec<Candidate>, DbError> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(Vec::new());
    };
    let mut out = list
        .split(',')
        .map(|item| {
            let (id, remaining) = item.split_once(':')?;
            Some(Candidate {
                job_id: id.parse().ok()?,
                remaining: remaining.parse().ok()?,
                used: 0,
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| DbError::Encoding(format!("a window of candidate jobs: {list:?}")))?;
    out.sort_unstable_by_key(|c| c.job_id);
    Ok(out)
}

/// How many of the tenants (their claimable images in serving order: `capacities`) a claim of
/// `n` serves: the first `n / MIN_SHARE` (at least one) that have images, and more while
/// those cannot use all `n`.
pub fn takers(n: i64, capacities: impl Iterator<Item = i64>) -> usize {
    let wanted = (n / MIN_SHARE).max(1);
    let (mut count, mut with_work, mut room) = (0, 0, 0);
    for capacity in capacities {
        count += 1;
        if capacity > 0 {
            with_work += 1;
            room += capacity;
        }
        if with_work >= wanted && room >= n {
            break;
        }
    }
    count
}

/// Splits `n` over the first tenants ([`takers`]: evenly, then what one cannot use to the
/// others), then each tenant's share over its jobs in turns ([`turns`]). `tenants` are in
/// serving order; each tenant's jobs too, the one whose turn it is first. Earlier tenants get
/// the remainder of an uneven split.
pub fn split(n: i64, tenants: &[Vec<Candidate>]) -> Vec<Take> {
    let capacity: Vec<i64> = tenants
        .iter()
        .map(|jobs| jobs.iter().map(|c| c.remaining.max(0)).sum())
        .collect();
    let tenants = &tenants[..takers(n, capacity.iter().copied())];
    let capacity = &capacity[..tenants.len()];
    let shares = water_fill(n, capacity);
    let mut plan = Vec::new();
    for (jobs, share) in tenants.iter().zip(shares) {
        for (job, take) in jobs.iter().zip(turns(share, jobs)) {
            if take > 0 {
                plan.push(Take {
                    job_id: job.job_id,
                    take,
                    after: -1,
                });
            }
        }
    }
    plan
}

/// Deficit round robin over one tenant's jobs: the first job gets what is left of its turn
/// (`QUANTUM - used`), each next one a whole turn, round after round, until `share` is given
/// or no job has images left.
fn turns(mut share: i64, jobs: &[Candidate]) -> Vec<i64> {
    let mut given = vec![0i64; jobs.len()];
    let mut round = 0;
    while share > 0 {
        let before = share;
        for (i, job) in jobs.iter().enumerate() {
            let turn = if round == 0 {
                QUANTUM - job.used.clamp(0, QUANTUM - 1)
            } else {
                QUANTUM
            };
            let take = turn.min(job.remaining.max(0) - given[i]).min(share).max(0);
            given[i] += take;
            share -= take;
            if share == 0 {
                break;
            }
        }
        if share == before {
            break;
        }
        round += 1;
    }
    given
}

/// Divides `n` into equal shares capped by `caps`, giving what a capped one cannot use to the
/// others; when `n` does not divide evenly, the first ones get one more.
fn water_fill(mut n: i64, caps: &[i64]) -> Vec<i64> {
    let mut given = vec![0i64; caps.len()];
    let mut open: Vec<usize> = (0..caps.len()).filter(|&i| caps[i] > 0).collect();
    while n > 0 && !open.is_empty() {
        let share = n / open.len() as i64;
        if share == 0 {
            // Fewer images than takers: one each to the first `n`.
            for &i in open.iter().take(n as usize) {
                given[i] += 1;
            }
            break;
        }
        let mut still_open = Vec::with_capacity(open.len());
        for &i in &open {
            let take = share.min(caps[i] - given[i]);
            given[i] += take;
            n -= take;
            if given[i] < caps[i] {
                still_open.push(i);
            }
        }
        open = still_open;
    }
    given
}

#[cfg(test)]
mod tests;
