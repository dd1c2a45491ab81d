//! The outcome writer: one task per pool that records, in batches (one transaction each),
//! which images were started and the outcomes of finished ones, retrying while the database
//! is away, up to the lease.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::queue::backoff::backoff;
use crate::queue::{Outcome, Queue};

/// Most notes recorded in one transaction (an image gives two: its start, its outcome).
pub(super) const MAX_WRITE_BATCH: usize = 1024;

/// What the writer records.
#[derive(Debug)]
pub(super) enum Note {
    /// The image was started: its attempt counts from now (a worker that dies now costs it
    /// one).
    Started(i64),
    /// The image was started and will run once its start is recorded (the writer answers,
    /// or drops the answer if it gives up): a suspect's attempt is charged to it even if it
    /// brings the worker down at once, and the outcomes queued before it are recorded first.
    StartedAhead(i64, oneshot::Sender<()>),
    /// The image's outcome.
    Done(i64, Outcome),
}

/// Records outcomes in batches: whatever has arrived while the previous batch was written;
/// up to [`Queue::parallel_writes`] batches in flight while full batches wait. A write that
/// panics takes the writer down with it (the pool then stops claiming).
pub(super) async fn write_outcomes(
    queue: Arc<Queue>,
    mut rx: mpsc::Receiver<Note>,
    lease: Duration,
    metrics: Arc<Metrics>,
) {
    fn ended(write: Option<Result<(), tokio::task::JoinError>>) {
        if let Some(Err(error)) = write
            && error.is_panic()
        {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    let mut writing = JoinSet::new();
    loop {
        // A batch goes out beside one in flight only when a full batch already waits (the
        // writer has fallen behind): otherwise more, smaller transactions would only cost the
        // database more per outcome.
        while !writing.is_empty()
            && (writing.len() >= queue.parallel_writes() || rx.len() < MAX_WRITE_BATCH)
        {
            ended(writing.join_next().await);
        }
        let mut batch = Vec::with_capacity(MAX_WRITE_BATCH);
        if rx.recv_many(&mut batch, MAX_WRITE_BATCH).await == 0 {
            break;
        }
        writing.spawn(write_batch(queue.clone(), batch, lease, metrics.clone()));
    }
    while !writing.is_empty() {
        ended(writing.join_next().await);
    }
}

/// Records one batch, retrying while the database is unavailable, up to the lease: past it
/// the images belong to someone else anyway, so they are let go to be redone.
async fn write_batch(queue: Arc<Queue>, notes: Vec<Note>, lease: Duration, metrics: Arc<Metrics>) {
    let mut starts = Vec::new();
    let mut batch = Vec::with_capacity(notes.len());
    let mut waiting = Vec::new();
    for note in notes {
        match note {
            Note::Started(id) => starts.push(id),
            Note::StartedAhead(id, recorded) => {
                starts.push(id);
                waiting.push(recorded);
            }
            Note::Done(id, outcome) => batch.push((id, outcome)),
        }
    }
    let started = tokio::time::Instant::now();
    let mut failures = 0u32;
    loop {
        match queue.record(&starts, &batch).await {
            Ok(recorded) => {
                queue.outcomes_settled(batch.len());
                for answer in waiting {
                    let _ = answer.send(());
                }
                if recorded < batch.len() {
                    metrics
                        .late_results_refused
                        .inc_by((batch.len() - recorded) as u64);
                    tracing::warn!(
                        lost = batch.len() - recorded,
                        "outcomes not recorded: their lease was taken over or their job cancelled"
                    );
                }
                return;
            }
            Err(error) if started.elapsed() > lease => {
                queue.outcomes_settled(batch.len());
                queue.let_go(batch.iter().map(|(id, _)| *id));
                tracing::error!(%error, dropped = batch.len(), "cannot record outcomes; their images will be retried");
                return;
            }
            Err(error) => {
                failures += 1;
                let wait = backoff(
                    i64::from(failures),
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                );
                tracing::warn!(%error, retry_in = ?wait, "cannot record outcomes yet");
                tokio::time::sleep(wait).await;
            }
        }
    }
}
