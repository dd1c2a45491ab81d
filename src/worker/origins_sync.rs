//! Keeps this process's per-origin limits and breakers in step with every other worker's,
//! through the database ([`crate::db::origins`]): every [`EVERY`], or at once when an image
//! waits for a share, it reports what each origin's downloads found and what it wants, and
//! takes back its share of each origin's budget, the breakers' state and the right to probe.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::db::origins::{self, Rules, Want};
use crate::fetch::origins::{Grant, Origins};

/// How often the shares are renewed and the breakers read.
const EVERY: Duration = Duration::from_millis(200);
/// How long a share lasts in the database without a renewal (a dead process's lapses).
const LEASE: Duration = Duration::from_secs(3);
/// The shortest time between two syncs asked for by waiting images.
const STARVED_PAUSE: Duration = Duration::from_millis(50);
/// How long this process trusts its shares without a sync that worked: well inside the lease,
/// so it stops starting downloads before the others may take its share.
const TRUSTED: Duration = Duration::from_secs(2);

pub(super) async fn run(
    db: Db,
    owner: String,
    origins: Arc<Origins>,
    probe_time: Duration,
    stop: CancellationToken,
) {
    let rules = Rules {
        budget: origins.limit() as i64,
        breaker_failures: i64::from(origins.breaker_failures()),
        cooldown_ms: origins.cooldown().as_millis() as i64,
        lease_ms: LEASE.as_millis() as i64,
        // The probe's right outlasts the longest download it can be.
        probe_ms: (probe_time * 2).as_millis() as i64,
    };
    let mut failures = 0u32;
    loop {
        let demand = origins.take_demand();
        let wants: Vec<Want> = demand
            .iter()
            .map(|d| Want {
                origin: d.origin.clone(),
                in_flight: d.in_flight as i64,
                permits: d.permits as i64,
                starved: d.starved,
                events: d.events.clone(),
            })
            .collect();
        match origins::sync(&db, &owner, rules, &wants).await {
            Ok(granted) => {
                failures = 0;
                let grants = granted
                    .into_iter()
                    .map(|g| Grant {
                        origin: g.origin,
                        permits: g.permits.max(0) as usize,
                        open_for: g.open_for_ms.map(|ms| Duration::from_millis(ms as u64)),
                        failed_probes: g.failed_probes.clamp(0, i64::from(u32::MAX)) as u32,
                        probe: g.probe,
                        stale: g.stale,
                    })
                    .collect();
                origins.apply(grants, TRUSTED);
            }
            Err(error) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    tracing::warn!(%error, "cannot share the per-origin limits; new downloads wait");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = origins.starving().notified() => {
                // A burst of waiting images is one sync, not one each (and the database's
                // writer is left to the outcomes in between).
                tokio::time::sleep(STARVED_PAUSE).await;
            }
            _ = stop.cancelled() => break,
        }
    }
    // Stopped after the drain: nothing of this process downloads any more.
    if let Err(error) = origins::release(&db, &owner).await {
        tracing::warn!(%error, "could not give back the origins' shares; they lapse in {LEASE:?}");
    }
}
