//! Starting claimed images: each takes a worker slot and, when its origin has room, a
//! permit of the origin's budget; the others wait (parked, or deferred while the origin's
//! breaker is open). An image whose earlier worker died while it ran starts alone, its start
//! recorded first.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::WorkerPool;
use super::process::{count_outcome, run_one};
use super::waiting::Waiting;
use super::writer::Note;
use crate::fetch::origin_of;
use crate::fetch::origins::{Admission, OriginPermit};
use crate::queue::{ClaimedImage, Outcome};

/// The longest a suspect image waits for this worker to be otherwise idle before it starts.
const ALONE_WAIT: Duration = Duration::from_secs(2);

/// How long an image goes back to the queue for when its origin is busy and has more parked
/// here than it will start soon (see [`Waiting::park`]).
const BUSY_DEFERRAL: Duration = Duration::from_secs(5);

impl WorkerPool {
    /// Starts images while slots are free: parked images whose origin has room first, then
    /// the claimed ones in order (parking or deferring those that cannot start). Returns how
    /// many it started.
    pub(super) async fn dispatch(
        &self,
        slots: &Arc<Semaphore>,
        waiting: &mut Waiting,
        tasks: &mut JoinSet<()>,
        results: &mpsc::Sender<Note>,
    ) -> usize {
        let mut started = 0;
        loop {
            if self.solo.load(Ordering::SeqCst) > 0 {
                // A suspect runs alone (see below).
                return started;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                return started;
            };
            let Some((image, origin)) = self.next_startable(waiting, results).await else {
                return started;
            };
            let mut recorded = None;
            if image.crashes > 0 {
                // This image was running when a worker died or hung: it may be what killed it.
                // It runs alone, once what is in flight has finished and been recorded (so
                // that if it brings this worker down too, no other image pays for it), and its
                // start is recorded before it runs (so the attempt is charged to it).
                self.wait_alone(tasks).await;
                if let Err(error) = self.queue.record(&[image.id], &[]).await {
                    tracing::warn!(%error, image.id = image.id, "could not record a start ahead");
                }
            } else if image.expiries > 0 {
                // A worker died while this image was leased, maybe before it could record
                // that the image had started: the start is recorded (with the outcomes queued
                // before it) before the image runs, beside the others.
                let (answer, ahead) = tokio::sync::oneshot::channel();
                let _ = results.send(Note::StartedAhead(image.id, answer)).await;
                recorded = Some(ahead);
            } else {
                // Recorded with the writer's next batch; the outcome counts the attempt
                // itself if it gets there first.
                let _ = results.send(Note::Started(image.id)).await;
            }
            self.start(tasks, image, slot, origin, recorded, results.clone());
            started += 1;
        }
    }

    /// The next image that may start now, with its origin permit (`None`: no origin, the URL
    /// does not parse; it fails at once).
    async fn next_startable(
        &self,
        waiting: &mut Waiting,
        results: &mpsc::Sender<Note>,
    ) -> Option<(ClaimedImage, Option<OriginPermit>)> {
        // Parked images first: they were claimed earlier.
        let origins: Vec<String> = waiting.parked.keys().cloned().collect();
        for origin in origins {
            match self.origins.admit(&origin) {
                Admission::Busy => continue,
                Admission::Go(permit) => {
                    while let Some(image) = waiting.unpark(&origin) {
                        if self.still_wanted(&image).await {
                            return Some((image, Some(permit)));
                        }
                    }
                }
                Admission::Open {
                    retry_in,
                    failed_probes,
                } => {
                    while let Some(image) = waiting.unpark(&origin) {
                        self.defer_for_breaker(image, &origin, retry_in, failed_probes, results)
                            .await;
                    }
                }
            }
        }
        while let Some(image) = waiting.ready.pop_front() {
            if !self.still_wanted(&image).await {
                continue;
            }
            let Some(origin) = origin_of(&image.url) else {
                return Some((image, None));
            };
            match self.origins.admit(&origin) {
                Admission::Go(permit) => return Some((image, Some(permit))),
                Admission::Busy => {
                    self.metrics.fetch_origin_waits.inc();
                    if let Err(image) = waiting.park(origin, image) {
                        self.defer_for_busy(image, results).await;
                    }
                }
                Admission::Open {
                    retry_in,
                    failed_probes,
                } => {
                    self.defer_for_breaker(image, &origin, retry_in, failed_probes, results)
                        .await
                }
            }
        }
        None
    }

    /// False (and the image let go) when its job was cancelled while the image waited here:
    /// its row is already failed and its lease gone, so there is nothing to do or record.
    async fn still_wanted(&self, image: &ClaimedImage) -> bool {
        if self.queue.scheduler().may_be_ongoing(image.job_id).await {
            return true;
        }
        tracing::debug!(
            image.id = image.id,
            job.id = image.job_id,
            "skipping an image of a finished job"
        );
        self.queue.let_go([image.id]);
        false
    }

    async fn defer_for_breaker(
        &self,
        image: ClaimedImage,
        origin: &str,
        retry_in: Duration,
        failed_probes: u32,
        results: &mpsc::Sender<Note>,
    ) {
        self.metrics.fetch_breaker_deferrals.inc();
        // A little jitter, so the deferred images do not all come back in the same instant.
        let after = retry_in + Duration::from_millis(fastrand::u64(0..=500));
        let outcome = self
            .processor
            .breaker_open(&image, origin, after, failed_probes);
        self.queue.outcome_queued();
        let _ = results.send(Note::Done(image.id, outcome)).await;
    }

    /// Back to the queue for a while, its claim refunded: the claims go on past it meanwhile.
    pub(super) async fn defer_for_busy(&self, image: ClaimedImage, results: &mpsc::Sender<Note>) {
        let after = BUSY_DEFERRAL + Duration::from_millis(fastrand::u64(0..=1000));
        self.queue.outcome_queued();
        let _ = results
            .send(Note::Done(image.id, Outcome::Deferred { after }))
            .await;
    }

    /// Waits until nothing of this worker is in flight and every outcome queued is recorded,
    /// at most [`ALONE_WAIT`].
    async fn wait_alone(&self, tasks: &mut JoinSet<()>) {
        let deadline = tokio::time::Instant::now() + ALONE_WAIT;
        loop {
            while tasks.try_join_next().is_some() {}
            if (tasks.is_empty() && self.queue.unrecorded() == 0)
                || tokio::time::Instant::now() >= deadline
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn start(
        &self,
        tasks: &mut JoinSet<()>,
        image: ClaimedImage,
        permit: OwnedSemaphorePermit,
        origin: Option<OriginPermit>,
        recorded: Option<tokio::sync::oneshot::Receiver<()>>,
        results: mpsc::Sender<Note>,
    ) {
        let processor = self.processor.clone();
        let metrics = self.metrics.clone();
        let freed = self.freed.clone();
        let queue = self.queue.clone();
        let solo = (image.crashes > 0).then(|| self.solo.clone());
        if let Some(solo) = &solo {
            solo.fetch_add(1, Ordering::SeqCst);
        }
        let span = tracing::info_span!("image", image.id = image.id, job.id = image.job_id, store.id = %image.store_id);
        tasks.spawn(
            async move {
                if let Some(recorded) = recorded {
                    // Dropped unanswered only if the writer gave up: it runs all the same.
                    let _ = recorded.await;
                }
                metrics.worker_slots_busy.inc();
                let started = std::time::Instant::now();
                let outcome = run_one(&processor, &image, origin).await;
                metrics
                    .processing_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.worker_slots_busy.dec();
                count_outcome(&metrics, &outcome);
                // The slot is given back only once the outcome is queued for the writer: when
                // the writer falls behind, claiming slows with it, instead of leasing ever more
                // images whose outcomes wait (and whose leases must be renewed) unbounded.
                // The writer only stops after every sender is dropped, so this succeeds.
                queue.outcome_queued();
                let _ = results.send(Note::Done(image.id, outcome)).await;
                drop(permit);
                if let Some(solo) = solo {
                    solo.fetch_sub(1, Ordering::SeqCst);
                }
                freed.notify_one();
            }
            .instrument(span),
        );
    }
}
