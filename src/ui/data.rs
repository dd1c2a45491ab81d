//! Every read and write the dashboard makes, in one place. Pages get their data only from
//! [`Data`], which runs the API's own queries (the job row, the keyset pages of images, the
//! API's submit and cancel) plus the few read-only views of `db::dashboard` and
//! `db::workers` — all in the scope of the [`Caller`] that the dashboard's gate
//! ([`super::session::require_viewer`]: an API key, or a sign-in session) put on the request:
//! a tenant's key sees its own jobs only, an admin (or the keyless loopback caller) sees every
//! job and the service-wide figures.

use crate::auth::Caller;
use crate::db::dashboard::{self, Direction, ImageView, JobCursor, JobFilter};
use crate::db::jobs::{self, Cancel, Scope};
use crate::db::workers::{self, WorkerRow};
use crate::db::{Db, DbError};
use crate::domain::Job;
use crate::domain::{ImageStatus, JobStatus};
use crate::web::AppState;
use crate::web::submit::{self, SubmitError};

/// The dashboard's view of the database, limited to what its caller may see.
pub struct Data<'a> {
    state: &'a AppState,
    caller: &'a Caller,
}

/// How deep the queue is, in images.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueDepth {
    /// Waiting for their first claim.
    pub pending: i64,
    /// Leased to a worker now.
    pub running: i64,
    /// Back in the queue after an attempt, waiting for the next.
    pub retry_waiting: i64,
}

/// Everything the overview shows.
pub struct Overview {
    pub now: i64,
    /// The caller's jobs by state (every tenant's for an admin).
    pub jobs_by_state: Vec<(JobStatus, i64)>,
    /// The service-wide figures, for admins only.
    pub operations: Option<Operations>,
    /// The latest jobs, ongoing first.
    pub recent: Vec<Job>,
}

/// The queue, the workers and what they did: shared by every tenant, so shown to admins.
pub struct Operations {
    pub queue: QueueDepth,
    pub workers: Vec<WorkerRow>,
    /// (minute, succeeded, failed) since `chart_since`, minutes with activity only.
    pub per_minute: Vec<(i64, i64, i64)>,
    pub chart_since: i64,
    /// (error kind, failed, retried) in the last hour.
    pub failures: Vec<(String, i64, i64)>,
}

/// How far back the overview's chart and failure list look.
pub const OVERVIEW_WINDOW_MS: i64 = 60 * 60 * 1000;

impl<'a> Data<'a> {
    pub fn new(state: &'a AppState, caller: &'a Caller) -> Self {
        Self { state, caller }
    }

    fn db(&self) -> &Db {
        &self.state.db
    }

    fn scope(&self) -> Scope<'a> {
        self.caller.scope()
    }

    pub async fn overview(&self, recent: i64) -> Result<Overview, DbError> {
        let now = self.db().now_ms();
        let (by_state, operations) = match self.scope() {
            Scope::All => {
                let counts = jobs::state_counts(self.db()).await?;
                let operations = self.operations(now, &counts.images).await?;
                (counts.jobs, Some(operations))
            }
            Scope::Tenant(tenant) => (dashboard::tenant_job_states(self.db(), tenant).await?, None),
        };
        let jobs_by_state = [
            JobStatus::Ongoing,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ]
        .into_iter()
        .map(|status| {
            let n = by_state
                .iter()
                .find(|(s, _)| s == status.as_str())
                .map_or(0, |(_, n)| *n);
            (status, n)
        })
        .collect();
        let (recent, _) = self.jobs(&JobFilter::default(), None, recent).await?;
        Ok(Overview {
            now,
            jobs_by_state,
            operations,
            recent,
        })
    }

    async fn operations(&self, now: i64, images: &[(String, i64)]) -> Result<Operations, DbError> {
        let images = |state: &str| {
            images
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n)
        };
        let retry_waiting = dashboard::retry_waiting(self.db()).await?;
        let queue = QueueDepth {
            pending: (images("pending") - retry_waiting).max(0),
            running: images("running"),
            retry_waiting,
        };
        // The chart's first minute is the one an hour before the current one.
        let chart_since = workers::minute_of(now) - OVERVIEW_WINDOW_MS + 60_000;
        Ok(Operations {
            queue,
            workers: workers::list(self.db()).await?,
            per_minute: workers::finished_per_minute(self.db(), chart_since).await?,
            chart_since,
            failures: workers::failures_by_kind(self.db(), now - OVERVIEW_WINDOW_MS).await?,
        })
    }

    /// A page of jobs, ongoing first unless a state is chosen.
    pub async fn jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<JobCursor>,
        limit: i64,
    ) -> Result<(Vec<Job>, Option<JobCursor>), DbError> {
        dashboard::jobs_page(self.db(), self.scope(), filter, cursor, limit).await
    }

    /// One job, if it exists and the caller may see it.
    pub async fn job(&self, id: i64) -> Result<Option<Job>, DbError> {
        jobs::get(self.db(), self.scope(), id).await
    }

    /// A page of a job's images (the job must have been found through [`Data::job`]).
    pub async fn images(
        &self,
        job: &Job,
        status: Option<ImageStatus>,
        direction: Direction,
        limit: i64,
    ) -> Result<Vec<ImageView>, DbError> {
        dashboard::images_page(self.db(), job.id, status, direction, limit).await
    }

    /// The current progress of jobs on a page (those the caller may not see are left out).
    pub async fn progress(&self, ids: &[i64]) -> Result<Vec<Job>, DbError> {
        dashboard::jobs_by_ids(self.db(), self.scope(), ids).await
    }

    /// Cancels a job, as `POST /api/jobs/{id}/cancel` does.
    pub async fn cancel(&self, job: &Job) -> Result<Cancel, DbError> {
        jobs::cancel(self.db(), self.scope(), job.id).await
    }

    /// Submits a job body through the API's own path: the same rate limit and quota, the same
    /// validation, the same errors.
    pub async fn submit(&self, body: &[u8]) -> Result<i64, SubmitError> {
        submit::take_submit_token(self.state, self.caller).await?;
        submit::accept(self.state, self.caller, None, body).await
    }
}
