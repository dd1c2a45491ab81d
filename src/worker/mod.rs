//! The worker pool of one process: claims images from the queue up to `concurrency` in flight
//! (the claim loop, here), keeps the claimed ones that cannot start yet ([`waiting`]), starts
//! each when a slot and its origin allow ([`dispatch`]), processes it in its own task
//! ([`process`]), and hands outcomes to a single writer that records them in batches
//! ([`writer`]). Beside it run the heartbeat (extends this worker's leases), the reaper (takes
//! back images of dead workers) and, on PostgreSQL, a LISTEN that wakes the pool when work
//! arrives ([`upkeep`]), the sync of the shared per-origin budgets and breakers
//! ([`origins_sync`]), the webhook deliveries ([`crate::webhooks::deliver`]) and this
//! process's row in the worker registry ([`registry`]).
//!
//! Shutdown: stop claiming, give in-flight images `shutdown_grace` to finish, record what
//! finished, and hand the rest back to the queue.

pub(crate) mod config;
mod dispatch;
mod origins_sync;
pub(crate) mod process;
pub(crate) mod registry;
mod upkeep;
mod waiting;
mod writer;

#[cfg(test)]
mod tests;

pub use config::{DelayRange, WorkerConfig};

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::db::{Backend, Db};
use crate::fetch::origins::Origins;
use crate::fetch::{FetchConfig, FetchError, Fetcher};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::queue::backoff::backoff;
use crate::webhooks::deliver::Deliverer;
use crate::webhooks::{WebhookConfig, WebhookSecrets};
use process::Processor;
use upkeep::{heartbeat, listen, reaper};
use waiting::{Waiting, fruitless_pause};
use writer::{MAX_WRITE_BATCH, Note, write_outcomes};

/// Most images claimed in one round trip.
const MAX_CLAIM: usize = 256;

/// Why a worker pool stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the task that records outcomes stopped ({0}); no more images can be recorded")]
    WriterStopped(String),
}

pub struct WorkerPool {
    queue: Arc<Queue>,
    processor: Arc<Processor>,
    db: Db,
    concurrency: usize,
    lease: Duration,
    poll_interval: Duration,
    shutdown_grace: Duration,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// `None` when webhooks are off (no secret key): this process claims no deliveries.
    deliverer: Option<Arc<Deliverer>>,
    origins: Arc<Origins>,
    /// Suspects (images whose lease expired before) in flight: while one runs, nothing else
    /// starts.
    solo: Arc<AtomicUsize>,
    /// The longest a download can take (a probe's right outlasts it).
    fetch_timeout: Duration,
    /// Signalled whenever an image task ends (a slot and an origin permit were freed).
    freed: Arc<Notify>,
}

/// A worker id unique per process start (not the host name: several workers may share one).
pub fn new_worker_id() -> String {
    format!("worker-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

impl WorkerPool {
    /// A pool working `w`'s settings, downloading as `fetch` says and delivering webhooks as
    /// `webhooks` says, signed with `secrets` (`None`: webhooks are off, none delivered).
    pub fn new(
        db: Db,
        w: &WorkerConfig,
        fetch: &FetchConfig,
        webhooks: &WebhookConfig,
        secrets: Option<Arc<WebhookSecrets>>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, FetchError> {
        let fetcher = Fetcher::new(fetch)?;
        let queue = Queue::new(db.clone(), new_worker_id(), w.lease, w.max_attempts)
            .with_max_claims(w.max_claims);
        metrics.worker_slots.set(w.concurrency as i64);
        let deliverer = secrets.map(|secrets| {
            Arc::new(Deliverer::new(
                db.clone(),
                fetcher.clone(),
                queue.owner().to_string(),
                webhooks,
                secrets,
                w.poll_interval,
                w.shutdown_grace,
                metrics.clone(),
            ))
        });
        // The budget of each origin holds across every worker sharing the database.
        let origins = Arc::new(Origins::shared(
            fetch.max_per_origin(w.concurrency),
            fetch.breaker_failures,
            fetch.breaker_cooldown,
            metrics.clone(),
        ));
        Ok(Self {
            origins,
            freed: Arc::new(Notify::new()),
            deliverer,
            queue: Arc::new(queue),
            processor: Arc::new(Processor::new(fetcher, w, metrics.clone())),
            metrics,
            db,
            concurrency: w.concurrency,
            lease: w.lease,
            poll_interval: w.poll_interval,
            shutdown_grace: w.shutdown_grace,
            fetch_timeout: fetch.timeout,
            solo: Arc::new(AtomicUsize::new(0)),
            wake,
        })
    }

    pub fn id(&self) -> &str {
        self.queue.owner()
    }

    /// Runs until `shutdown`, then drains. Fails (the process should exit non-zero) if the
    /// task that records outcomes stops on its own: claiming stops at once, the leases of
    /// unrecorded images are no longer renewed and are handed back, so other workers redo
    /// them.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        self.run_with_writer(shutdown, write_outcomes).await
    }

    async fn run_with_writer<W, F>(
        self,
        shutdown: CancellationToken,
        writer: W,
    ) -> Result<(), WorkerError>
    where
        W: FnOnce(Arc<Queue>, mpsc::Receiver<Note>, Duration, Arc<Metrics>) -> F,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        tracing::info!(
            worker.id = self.id(),
            concurrency = self.concurrency,
            max_per_origin = self.origins.limit(),
            "worker pool started"
        );
        let background = CancellationToken::new();
        let mut helpers = JoinSet::new();
        helpers.spawn(heartbeat(
            self.queue.clone(),
            self.lease / 3,
            background.clone(),
        ));
        helpers.spawn(reaper(
            self.queue.clone(),
            self.db.clone(),
            self.lease / 2,
            background.clone(),
        ));
        // This process's row in the worker registry; marked stopped when `background` ends.
        helpers.spawn(registry::run(
            self.db.clone(),
            registry::this_process(self.id(), self.concurrency, self.db.now_ms()),
            self.metrics.clone(),
            background.clone(),
        ));
        if self.db.backend() == Backend::Postgres {
            helpers.spawn(listen(
                self.db.url().to_string(),
                self.wake.clone(),
                background.clone(),
            ));
        }
        // Room for each slot's start and outcome, twice over, and a batch.
        let (results, results_rx) = mpsc::channel(self.concurrency * 4 + MAX_WRITE_BATCH);
        // The writer ends when every sender is gone (after the drain); ending sooner, or a
        // panic, means outcomes are no longer recorded: stop claiming at once.
        let writer_down = CancellationToken::new();
        let stop_claiming = CancellationToken::new();
        let writer = {
            let down = writer_down.clone();
            let writing = writer(
                self.queue.clone(),
                results_rx,
                self.lease,
                self.metrics.clone(),
            );
            tokio::spawn(async move {
                let ended = AssertUnwindSafe(writing).catch_unwind().await;
                down.cancel();
                ended
            })
        };
        // This process's shares of the origins' budgets and the shared breakers; kept until
        // the drain is over (the last downloads still report).
        helpers.spawn(origins_sync::run(
            self.db.clone(),
            self.id().to_string(),
            self.origins.clone(),
            self.fetch_timeout,
            background.clone(),
        ));
        // Deliveries stop being claimed when images do, and drain beside them.
        if let Some(deliverer) = &self.deliverer {
            helpers.spawn(deliverer.clone().run(stop_claiming.clone()));
        }
        {
            let (stop, down, shutdown) =
                (stop_claiming.clone(), writer_down.clone(), shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = down.cancelled() => {}
                }
                stop.cancel();
            });
        }

        let (in_flight, waiting) = self.claim_loop(&stop_claiming, &results).await;
        // Claimed and never started: back to the queue before the drain, claims refunded, so
        // other workers take them up while this one finishes what it started.
        let unstarted = waiting.into_ids();
        match self.queue.hand_back(&unstarted).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(handed_back = n, "handed unstarted images back to the queue"),
            Err(error) => {
                tracing::warn!(%error, "could not hand unstarted images back; released after the drain")
            }
        }
        // `results` is still alive here, so a writer that has ended did not end normally.
        let writer_failed = writer_down.is_cancelled();
        drop(results);
        let failure = if writer_failed {
            // Nothing will be recorded: stop renewing every lease and hand the images back.
            self.queue.let_go_all();
            drop(in_flight);
            let ended = writer.await;
            let cause = match ended {
                Ok(Err(panic)) => crate::telemetry::panic_message(panic.as_ref()),
                _ => "it stopped".to_string(),
            };
            tracing::error!(cause = %cause, "the outcome writer stopped; this worker stops claiming and exits");
            Some(WorkerError::WriterStopped(cause))
        } else {
            self.drain(in_flight).await;
            // Every sender is gone once the tasks are: the writer records the last outcomes and ends.
            match writer.await {
                Ok(Ok(())) => None,
                Ok(Err(panic)) => {
                    let cause = crate::telemetry::panic_message(panic.as_ref());
                    tracing::error!(cause = %cause, "the outcome writer failed");
                    Some(WorkerError::WriterStopped(cause))
                }
                Err(error) => Some(WorkerError::WriterStopped(error.to_string())),
            }
        };
        background.cancel();
        while helpers.join_next().await.is_some() {}
        match self.queue.release_all().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "handed unfinished images back to the queue"),
            Err(error) => tracing::warn!(%error, "could not release leases; they will expire"),
        }
        tracing::info!(worker.id = self.id(), "worker pool stopped");
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Claims and starts images until shutdown; returns the tasks still running and the images
    /// claimed but not started.
    ///
    /// Claimed images wait in a small local buffer (at most two rounds of `concurrency`, and
    /// a claim when it is down to one) so that a slot freed by a finished image starts the
    /// next one at once, while the claim round trip for the following batch overlaps with
    /// work. (Two rounds, not one: a claim has a fixed cost on the PostgreSQL server besides
    /// its rows; half as many claims took its CPU per image of one big job from 77 to 70 µs.) Buffered images are leased and
    /// heartbeated like running ones, and handed back at shutdown.
    ///
    /// An image whose origin already has its most downloads in flight does not take a slot:
    /// it is parked (leased and heartbeated; no more is claimed while 4 × `concurrency` are
    /// parked) and starts when that origin frees up, round robin over its jobs, while
    /// images of other origins go ahead. When the origin's breaker is open, it is handed back
    /// to the queue with a delay, its attempt not spent ([`Outcome::Deferred`]).
    async fn claim_loop(
        &self,
        shutdown: &CancellationToken,
        results: &mpsc::Sender<Note>,
    ) -> (JoinSet<()>, Waiting) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let target = (2 * self.concurrency).min(MAX_CLAIM);
        let mut waiting = Waiting::new(target, self.concurrency);
        let mut tasks = JoinSet::new();
        let mut failures = 0u32;
        // Claims in a row none of whose images could start (all of busy or broken origins).
        let mut fruitless = 0u32;
        // After a claim that found nothing or failed, the next waits for this moment (or for
        // new work to be announced), instead of asking again at every freed slot.
        let mut next_claim = tokio::time::Instant::now();
        loop {
            while tasks.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
            if self.wake.notified().now_or_never().is_some() {
                next_claim =
                    next_claim.min(tokio::time::Instant::now() + self.queue.scheduler().forget());
            }
            let mut claimed_now = 0;
            if waiting.wants_more(target, &slots) && tokio::time::Instant::now() >= next_claim {
                match self.queue.claim(target - waiting.ready.len()).await {
                    Ok(claimed) => {
                        failures = 0;
                        if claimed.is_empty() {
                            next_claim = tokio::time::Instant::now() + self.poll_interval;
                        }
                        claimed_now = claimed.len();
                        waiting.ready.extend(claimed);
                    }
                    Err(error) => {
                        failures += 1;
                        let wait = backoff(
                            i64::from(failures),
                            Duration::from_millis(200),
                            Duration::from_secs(10),
                        );
                        next_claim = tokio::time::Instant::now() + wait;
                        tracing::warn!(%error, retry_in = ?wait, "cannot claim images");
                    }
                }
            }
            let started = self
                .dispatch(&slots, &mut waiting, &mut tasks, results)
                .await;
            if claimed_now > 0 {
                if started == 0 && waiting.ready.is_empty() {
                    // Everything claimed waits for a busy origin or was deferred: look further
                    // down the queue for other origins, a few times at once, then more slowly.
                    fruitless += 1;
                    next_claim = tokio::time::Instant::now() + fruitless_pause(fruitless);
                } else {
                    fruitless = 0;
                }
            } else if fruitless > 0 && waiting.is_empty() {
                // What the pause waited for has started: the origin has room again, so the
                // next claim need not wait (pausing on would cap a worker whose images are all
                // of one origin at one claim a second).
                fruitless = 0;
                next_claim = tokio::time::Instant::now();
            }
            for image in waiting.overstayed() {
                self.defer_for_busy(image, results).await;
            }
            let claim_due = waiting.wants_more(target, &slots);
            let until = next_claim.max(tokio::time::Instant::now() + Duration::from_millis(1));
            tokio::select! {
                _ = self.wake.notified() => {
                    next_claim = next_claim.min(tokio::time::Instant::now() + self.queue.scheduler().forget());
                }
                _ = tokio::time::sleep_until(until), if claim_due => {}
                _ = self.freed.notified() => {}
                _ = self.origins.released().notified() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        (tasks, waiting)
    }

    /// Waits up to the grace period for in-flight images, then abandons the rest (their
    /// leases are released by `run`).
    async fn drain(&self, mut tasks: JoinSet<()>) {
        if tasks.is_empty() {
            return;
        }
        tracing::info!(in_flight = tasks.len(), grace = ?self.shutdown_grace, "waiting for in-flight images");
        let finished = tokio::time::timeout(self.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                "grace period over; handing the rest back"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
}
