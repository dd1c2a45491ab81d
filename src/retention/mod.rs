//! Retention: deleting finished jobs whose finish time is older than a cut-off, with their
//! images and webhook deliveries — by hand (`retail-pulse prune --older-than 30d`) or every
//! so often inside `serve` and `worker` (`--retention 30d`; off by default: a system of record
//! deletes nothing unless told to).
//!
//! A job is removed in small statements that never touch an ongoing job's rows (see
//! [`crate::db::retention`]): first, with `--archive-dir`, its results are written as gzipped
//! CSV ([`archive`]); then its images, at most [`IMAGES_PER_STATEMENT`] per statement; then its
//! delivery and its row. From then on the API knows it no more (404, and `400 {}` on
//! `/api/status`). A job whose webhook is still being delivered waits for a later pass.
//!
//! One process prunes at a time: on PostgreSQL a pass runs under an advisory lock that the
//! others then skip; SQLite lives on one host, where each process runs one pruner, and two
//! processes pruning the same file at once only repeat each other's idempotent deletes
//! (archives are never overwritten).

pub(crate) mod archive;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::db::retention::{self as rows, PruneLock};
use crate::db::{Db, DbError};
use crate::metrics::{Metrics, TableLabels};

/// Most images deleted by one statement: a short transaction, whatever the job's size.
pub const IMAGES_PER_STATEMENT: i64 = 1000;
/// Jobs looked up per query.
const JOBS_PER_QUERY: i64 = 100;
/// The periodic pass runs at least this often, and at most this rarely.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Periodic pruning of finished jobs (off unless `older_than` is set).
#[derive(Debug, Clone, Default)]
pub struct RetentionConfig {
    /// Finished jobs whose finish time is older than this are deleted; `None`: never.
    pub older_than: Option<Duration>,
    /// Where each pruned job's results are written first (gzipped CSV); `None`: not kept.
    pub archive_dir: Option<PathBuf>,
}

/// Why `dir` cannot take archives, when that shows before any is written: it exists and is
/// not a directory (a missing one is made at the first archive).
pub fn archive_dir_problem(dir: &std::path::Path) -> Option<String> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Some(format!("{} is not a directory", dir.display())),
        _ => None,
    }
}

#[derive(Debug, Error)]
pub enum PruneError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The job's archive could not be written; the job was left as it was.
    #[error("cannot archive job {job_id} to {path}: {source}")]
    Archive {
        job_id: i64,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub images: u64,
    pub deliveries: u64,
    /// Archive files written.
    pub archived: u64,
    /// Jobs left in place because their archive could not be written (each logged with its
    /// error); the pass went on with the others, and a later one tries them again.
    pub skipped: u64,
}

/// Deletes finished jobs older than `older_than` (and archives them first, when asked).
#[derive(Debug, Clone)]
pub struct Pruner {
    db: Db,
    older_than: Duration,
    archive_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
}

impl Pruner {
    pub fn new(
        db: Db,
        older_than: Duration,
        archive_dir: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            older_than,
            archive_dir,
            metrics,
        }
    }

    /// How often the periodic pass runs: half the retention, from a second to an hour.
    pub fn interval(&self) -> Duration {
        (self.older_than / 2).clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    /// One pass over every expired job, unless another process is pruning (`None`). Stops
    /// between two jobs when `stop` is cancelled.
    pub async fn prune(&self, stop: &CancellationToken) -> Result<Option<Pruned>, PruneError> {
        let Some(lock) = PruneLock::try_take(&self.db).await? else {
            return Ok(None);
        };
        let result = self.prune_all(stop).await;
        lock.release().await;
        result.map(Some)
    }

    async fn prune_all(&self, stop: &CancellationToken) -> Result<Pruned, PruneError> {
        let mut total = Pruned::default();
        let mut seen: Option<rows::Expired> = None;
        loop {
            let expired =
                rows::expired(&self.db, self.older_than, seen.as_ref(), JOBS_PER_QUERY).await?;
            let Some(last) = expired.last().cloned() else {
                return Ok(total);
            };
            for job in &expired {
                if stop.is_cancelled() {
                    return Ok(total);
                }
                match self.prune_job(job.id, &mut total).await {
                    Ok(_) => {}
                    // One job whose archive cannot be written (a full disk, a bad file) must
                    // not hold back every other job's retention: left as it is, said, skipped.
                    Err(error @ PruneError::Archive { .. }) => {
                        tracing::error!(%error, job_id = job.id, "job not pruned: its archive failed");
                        total.skipped += 1;
                    }
                    Err(error) => return Err(error),
                }
            }
            seen = Some(last);
        }
    }

    /// Archives (when asked), then deletes one job; returns the job rows deleted (0 or 1).
    async fn prune_job(&self, job_id: i64, total: &mut Pruned) -> Result<u64, PruneError> {
        if let Some(dir) = &self.archive_dir {
            let wrote = archive::write(&self.db, dir, job_id)
                .await
                .map_err(|e| match e {
                    archive::ArchiveError::Db(e) => PruneError::Db(e),
                    archive::ArchiveError::Io { path, source } => PruneError::Archive {
                        job_id,
                        path,
                        source,
                    },
                })?;
            if wrote {
                total.archived += 1;
            }
        }
        loop {
            let images = rows::delete_images(&self.db, job_id, IMAGES_PER_STATEMENT).await?;
            total.images += images;
            self.count("images", images);
            if images < IMAGES_PER_STATEMENT as u64 {
                break;
            }
            // Let the queue's writers in between two batches.
            tokio::task::yield_now().await;
        }
        let (jobs, deliveries) = rows::delete_job(&self.db, job_id).await?;
        total.jobs += jobs;
        total.deliveries += deliveries;
        self.count("jobs", jobs);
        self.count("webhook_deliveries", deliveries);
        Ok(jobs)
    }

    fn count(&self, table: &str, n: u64) {
        if n > 0 {
            self.metrics
                .pruned
                .get_or_create(&TableLabels {
                    table: table.to_string(),
                })
                .inc_by(n);
        }
    }

    /// Prunes now and then every [`Pruner::interval`] until `stop`.
    pub async fn run_periodically(self, stop: CancellationToken) {
        tracing::info!(older_than = ?self.older_than, every = ?self.interval(), "retention on");
        loop {
            match self.prune(&stop).await {
                Ok(Some(pruned)) if pruned.jobs > 0 || pruned.skipped > 0 => tracing::info!(
                    jobs = pruned.jobs,
                    images = pruned.images,
                    webhook_deliveries = pruned.deliveries,
                    archived = pruned.archived,
                    skipped = pruned.skipped,
                    "pruned finished jobs"
                ),
                Ok(Some(_)) => {}
                Ok(None) => tracing::debug!("another process is pruning"),
                Err(error) => tracing::warn!(%error, "pruning failed; will try again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval()) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
