//! Worker processes as the registry sees them: how often they report, and when one that
//! stopped reporting counts as stale or is forgotten.

use std::time::Duration;

/// How often a worker process refreshes its registry row.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// A worker not seen for three heartbeats is stale: probably dead (killed, crashed, cut off),
/// though one slow beat is not enough to say so.
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// A worker not seen for an hour is removed from the registry: long enough to see after the
/// fact that a process died, short enough that restarts do not pile up.
pub const PRUNE_AFTER: Duration = Duration::from_secs(3600);

/// Where a registered worker process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Heartbeating.
    Alive,
    /// Not seen for [`STALE_AFTER`], and it never said it stopped.
    Stale,
    /// Shut down gracefully.
    Stopped,
}

impl WorkerState {
    pub const ALL: [WorkerState; 3] =
        [WorkerState::Alive, WorkerState::Stale, WorkerState::Stopped];

    /// The state of a worker last seen at `last_seen_ms` (and stopped at `stopped_at`, if it
    /// said so), at `now_ms`.
    pub fn of(last_seen_ms: i64, stopped_at: Option<i64>, now_ms: i64) -> Self {
        if stopped_at.is_some() {
            WorkerState::Stopped
        } else if now_ms - last_seen_ms > STALE_AFTER.as_millis() as i64 {
            WorkerState::Stale
        } else {
            WorkerState::Alive
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Alive => "alive",
            WorkerState::Stale => "stale",
            WorkerState::Stopped => "stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_stale_after_three_missed_heartbeats_and_stopped_when_it_said_so() {
        let now = 1_000_000;
        assert_eq!(WorkerState::of(now - 1_000, None, now), WorkerState::Alive);
        assert_eq!(WorkerState::of(now - 15_000, None, now), WorkerState::Alive);
        assert_eq!(WorkerState::of(now - 15_001, None, now), WorkerState::Stale);
        assert_eq!(
            WorkerState::of(now - 1_000, Some(now - 1_000), now),
            WorkerState::Stopped
        );
        assert_eq!(STALE_AFTER, HEARTBEAT_INTERVAL * 3);
    }
}
