//! What runs beside a pool's claim loop: the heartbeat that extends this worker's leases, the
//! reaper that takes back images of dead workers, and (PostgreSQL) the LISTEN that wakes the
//! pool when any process commits new work.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::jobs::WORK_CHANNEL;
use crate::db::{Db, counts, origins, rates, webhooks};
use crate::queue::Queue;
use crate::queue::backoff::backoff;

pub(super) async fn heartbeat(queue: Arc<Queue>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(error) = queue.heartbeat().await {
            tracing::warn!(%error, "heartbeat failed");
        }
    }
}

/// Takes back expired leases every `every` (with jitter) and erases the previous webhook
/// secrets whose overlap is over (one read when there are none), and about once a minute
/// recounts the tenants' unfinished images (see [`counts::recount_unfinished`]) and sweeps idle
/// rate buckets.
pub(super) async fn reaper(queue: Arc<Queue>, db: Db, every: Duration, stop: CancellationToken) {
    let mut last_recount = tokio::time::Instant::now();
    loop {
        // Jitter keeps many workers from reaping in lockstep.
        let wait = every.mul_f64(0.75 + fastrand::f64() * 0.5);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        if let Err(error) = queue.reap_expired().await {
            tracing::warn!(%error, "reaping expired leases failed");
        }
        // Past its overlap a previous secret no longer signs; it is erased, not just ignored,
        // so that the database holds no secret longer than it is of use.
        match webhooks::erase_expired_previous(&db).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                tenants = n,
                "erased previous webhook secrets past their overlap"
            ),
            Err(error) => tracing::warn!(%error, "erasing expired webhook secrets failed"),
        }
        if last_recount.elapsed() >= RECOUNT_EVERY {
            last_recount = tokio::time::Instant::now();
            match counts::recount_unfinished(&db).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(tenants = n, "corrected tenants' unfinished-image counts"),
                Err(error) => tracing::warn!(%error, "recounting unfinished images failed"),
            }
            if let Err(error) = rates::sweep(&db).await {
                tracing::warn!(%error, "sweeping idle rate buckets failed");
            }
            if let Err(error) = origins::sweep(&db).await {
                tracing::warn!(%error, "sweeping idle origin state failed");
            }
        }
    }
}

/// How often one worker recounts the tenants' unfinished images.
const RECOUNT_EVERY: Duration = Duration::from_secs(60);

/// Wakes the claim loop when any process commits new work (PostgreSQL NOTIFY).
pub(super) async fn listen(url: String, wake: Arc<Notify>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let attempt = async {
            let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
            listener.listen(WORK_CHANNEL).await?;
            loop {
                listener.recv().await?;
                wake.notify_one();
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            result = attempt => {
                if let Err(error) = result {
                    failures += 1;
                    tracing::warn!(%error, "work notifications interrupted; polling meanwhile");
                }
            }
            _ = stop.cancelled() => return,
        }
        let wait = backoff(
            i64::from(failures.max(1)),
            Duration::from_millis(500),
            Duration::from_secs(15),
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}
