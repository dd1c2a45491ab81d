//! The worker registry's writer: this process's row in the `workers` table. A task beside the
//! lease heartbeat registers the process at start, then every
//! [`HEARTBEAT_INTERVAL`] refreshes its row (last seen, busy slots) and adds to its per-minute
//! counts what this process's metrics counted since the beat before (images finished by
//! outcome and error kind, retries) — so the dashboard's chart reads a small table instead of
//! the images. It also prunes rows of workers gone for [`PRUNE_AFTER`] and counts older than
//! [`MINUTES_KEPT`]. At shutdown it flushes the last counts and marks the row stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::db::workers::{self, OutcomeCount, WorkerInfo};
use crate::domain::ErrorKind;
use crate::domain::worker::{HEARTBEAT_INTERVAL, PRUNE_AFTER};
use crate::metrics::{KindLabels, Metrics, OutcomeLabels};

/// How long per-minute counts are kept: the chart shows the last hour.
pub const MINUTES_KEPT: Duration = Duration::from_secs(2 * 3600);

/// Describes this process for the registry.
/// This process as the registry shows it, started at `started_at` (epoch ms).
pub fn this_process(id: &str, slots: usize, started_at: i64) -> WorkerInfo {
    WorkerInfo {
        id: id.to_string(),
        host: host_name(),
        pid: i64::from(std::process::id()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        slots: slots as i64,
    }
}

/// The machine's name from the kernel (no environment variable: the binary reads only those
/// in the README's table).
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Registers the process, heartbeats its row until `stop`, then marks it stopped.
pub async fn run(db: Db, info: WorkerInfo, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut counts = Counts::default();
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        beat(&db, &info, &metrics, &mut counts).await;
    }
    // The last images' counts, then the row says the process is gone.
    beat(&db, &info, &metrics, &mut counts).await;
    if let Err(error) = workers::mark_stopped(&db, &info.id, db.now_ms()).await {
        tracing::warn!(%error, "could not mark this worker stopped in the registry");
    }
}

async fn beat(db: &Db, info: &WorkerInfo, metrics: &Metrics, counts: &mut Counts) {
    let now = db.now_ms();
    let totals = read_totals(metrics);
    let deltas = counts.since_last(&totals);
    let busy = metrics.worker_slots_busy.get().max(0);
    match workers::heartbeat(db, info, busy, now, &deltas).await {
        // Only counts that reached the database are taken as sent; the others go with the
        // next beat.
        Ok(()) => counts.sent = totals,
        Err(error) => {
            tracing::warn!(%error, "worker registry heartbeat failed");
            return;
        }
    }
    let seen_before = now - PRUNE_AFTER.as_millis() as i64;
    let minutes_before = now - MINUTES_KEPT.as_millis() as i64;
    match workers::prune(db, seen_before, minutes_before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(workers = n, "pruned workers gone for an hour"),
        Err(error) => tracing::warn!(%error, "could not prune the worker registry"),
    }
}

type Key = (&'static str, &'static str);

/// The counters' totals already added to the database.
#[derive(Debug, Default)]
struct Counts {
    sent: HashMap<Key, u64>,
}

impl Counts {
    fn since_last(&self, totals: &HashMap<Key, u64>) -> Vec<OutcomeCount> {
        let mut out: Vec<OutcomeCount> = totals
            .iter()
            .filter_map(|(&(outcome, error_kind), &total)| {
                let before = self.sent.get(&(outcome, error_kind)).copied().unwrap_or(0);
                (total > before).then(|| OutcomeCount {
                    outcome,
                    error_kind,
                    images: (total - before) as i64,
                })
            })
            .collect();
        out.sort_by_key(|c| (c.outcome, c.error_kind));
        out
    }
}

/// This process's outcome counters, as counted by the pool (`images_finished`,
/// `image_retries`). Only series that exist are read: none is created here.
fn read_totals(metrics: &Metrics) -> HashMap<Key, u64> {
    let mut totals = HashMap::new();
    let succeeded = OutcomeLabels {
        outcome: "succeeded".into(),
        error_kind: "none".into(),
    };
    if let Some(c) = metrics.images_finished.get(&succeeded) {
        totals.insert(("succeeded", "none"), c.get());
    }
    for kind in ErrorKind::ALL {
        let failed = OutcomeLabels {
            outcome: "failed".into(),
            error_kind: kind.as_str().into(),
        };
        if let Some(c) = metrics.images_finished.get(&failed) {
            totals.insert(("failed", kind.as_str()), c.get());
        }
        let retried = KindLabels {
            error_kind: kind.as_str().into(),
        };
        if let Some(c) = metrics.retries.get(&retried) {
            totals.insert(("retried", kind.as_str()), c.get());
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_send_only_what_grew_since_the_last_accepted_beat() {
        let metrics = Metrics::new();
        let mut counts = Counts::default();
        assert!(counts.since_last(&read_totals(&metrics)).is_empty());
        metrics
            .images_finished
            .get_or_create(&OutcomeLabels {
                outcome: "succeeded".into(),
                error_kind: "none".into(),
            })
            .inc_by(3);
        metrics
            .retries
            .get_or_create(&KindLabels {
                error_kind: "timeout".into(),
            })
            .inc();
        let totals = read_totals(&metrics);
        let first = counts.since_last(&totals);
        assert_eq!(
            first,
            vec![
                OutcomeCount {
                    outcome: "retried",
                    error_kind: "timeout",
                    images: 1
                },
                OutcomeCount {
                    outcome: "succeeded",
                    error_kind: "none",
                    images: 3
                },
            ]
        );
        // Not accepted (the write failed): the next beat sends it again, with what came since.
        metrics
            .images_finished
            .get_or_create(&OutcomeLabels {
                outcome: "succeeded".into(),
                error_kind: "none".into(),
            })
            .inc();
        let totals = read_totals(&metrics);
        assert_eq!(counts.since_last(&totals)[1].images, 4);
        counts.sent = totals;
        assert!(counts.since_last(&read_totals(&metrics)).is_empty());
    }

    #[test]
    fn this_process_names_its_host_pid_and_version() {
        let info = this_process("worker-1-abc", 8, 0);
        assert!(!info.host.is_empty());
        assert_eq!(info.pid, i64::from(std::process::id()));
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.slots, 8);
    }
}
