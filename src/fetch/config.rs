//! How image downloads (and webhook POSTs) behave: timeouts, size and redirect caps, the
//! per-origin limit and breaker, and which networks may be reached.

use std::time::Duration;

use super::guard::AllowList;

#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub connect_timeout: Duration,
    /// Whole download, headers and body.
    pub timeout: Duration,
    pub max_bytes: u64,
    pub max_redirects: usize,
    /// Longest wait for the next bytes of a response before the download counts as stalled.
    pub stall_timeout: Duration,
    /// Slowest accepted transfer, in bytes/s averaged over each stall-timeout window (curl's
    /// low-speed limit); 0: off.
    pub min_speed_bytes: u64,
    /// Most downloads in flight per origin (scheme, host, port) in one process; `None`: half
    /// the worker slots (at least 1), so one origin never holds every slot.
    pub max_per_origin: Option<usize>,
    /// Consecutive connect failures or timeouts of one origin that open its circuit breaker
    /// (0: no breaker).
    pub breaker_failures: u32,
    /// How long an open breaker defers the origin's images before a probe is let through.
    pub breaker_cooldown: Duration,
    pub allow_private_networks: bool,
    /// Private hosts and networks reachable even when private networks are not.
    pub allow_hosts: AllowList,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_bytes: 50 * 1024 * 1024,
            max_redirects: 5,
            stall_timeout: Duration::from_secs(10),
            min_speed_bytes: 1024,
            max_per_origin: None,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            allow_private_networks: false,
            allow_hosts: AllowList::default(),
        }
    }
}

impl FetchConfig {
    /// Downloads one origin may have in flight in a process of `slots` worker slots: the
    /// configured number, or half the slots (at least 1).
    pub fn max_per_origin(&self, slots: usize) -> usize {
        self.max_per_origin.unwrap_or((slots / 2).max(1))
    }
}
