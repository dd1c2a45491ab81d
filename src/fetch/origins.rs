//! Per-origin limits and circuit breakers for image downloads. An origin is scheme, host and
//! port ([`super::origin_of`]).
//!
//! - **Limit**: at most `limit` downloads of one origin are in flight in this process, so a
//!   host that hangs can hold at most that many worker slots, never all of them.
//! - **Breaker**: after `failures` consecutive connect failures or timeouts of an origin (see
//!   [`super::FetchError::is_origin_failure`]), the breaker opens: for `cooldown` the origin's
//!   images are not downloaded but deferred (the worker hands them back to the queue, no
//!   attempt spent). Then one probe download is let through: success closes the breaker,
//!   failure opens it for another cool-down. From then on the origin counts as down, not
//!   merely struggling ([`Admission::Open`]'s `failed_probes`): the worker then spends an
//!   attempt on each deferral, so a host that never comes back fails its images in a few
//!   cool-downs however many there are, instead of deferring them one probe at a time.
//!
//! [`Origins::admit`] answers "may this image start now?"; the [`OriginPermit`] it hands out
//! is held for the download and told how it went ([`OriginPermit::report`]). This module only
//! counts and decides; waiting (parking or deferring an image) is the worker's business.
//!
//! **Shared** ([`Origins::shared`]): when several worker processes share one database, the
//! limit is the budget of the origin across all of them, and the breaker is opened once for
//! all. Each process then holds a share of each busy origin's budget and may start only that
//! many downloads; it reports what it wants and what it saw ([`Origins::take_demand`]) and
//! takes its share, the breaker's state and the right to probe from what the database says
//! ([`Origins::apply`]; the worker's sync does the talking). A share is trusted only for a
//! while: a process that cannot reach the database stops starting downloads once its share
//! would have lapsed for the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// How long other images of an origin are deferred while its probe download is under way.
const WHILE_PROBING: Duration = Duration::from_secs(2);

/// An origin no image has asked for in this long is forgotten, even with failures counted or
/// a breaker that opened: the map holds the origins in use, not every host ever seen.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The decision for one image.
#[derive(Debug)]
pub enum Admission {
    /// Start it, holding this permit until the download ends.
    Go(OriginPermit),
    /// The origin has `limit` downloads in flight: wait for one to end.
    Busy,
    /// The origin's breaker is open: try again in `retry_in`. `failed_probes`: probes failed
    /// since the origin last answered (0 while a probe is out: the host is not known down).
    Open {
        retry_in: Duration,
        failed_probes: u32,
    },
}

#[derive(Debug, Default)]
struct Origin {
    in_flight: usize,
    /// Shared mode: this process's share of the origin's budget.
    permits: usize,
    /// Shared mode: an image waited for a permit, or for the probe, since the last sync.
    starved: bool,
    /// Shared mode: what downloads found since the last sync (reachable, was the probe).
    events: Vec<(bool, bool)>,
    /// Shared mode: this process may send the probe once the cool-down is over.
    probe_granted: bool,
    /// Consecutive origin failures (reset by any answer).
    failures: u32,
    /// Set while the breaker is open (after that instant a probe may go).
    open_until: Option<Instant>,
    probing: bool,
    /// Probes that failed since the origin last answered.
    failed_probes: u32,
    /// When an image last asked for it or a download of it ended.
    touched: Option<Instant>,
}

impl Origin {
    fn idle(&self) -> bool {
        self.in_flight == 0
            && self.failures == 0
            && self.open_until.is_none()
            && self.permits == 0
            && !self.starved
            && self.events.is_empty()
    }

    /// Nothing of it is under way, and nothing asked for it in [`FORGET_AFTER`] (its breaker,
    /// if it opened, has cooled down): what it counted no longer matters.
    fn stale(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.permits == 0
            && !self.starved
            && self.events.is_empty()
            && !self.probing
            && self
                .touched
                .is_none_or(|t| now.duration_since(t) >= FORGET_AFTER)
            && self.open_until.is_none_or(|until| until <= now)
    }
}

/// What one origin's entry asks of the shared state (see [`Origins::take_demand`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub origin: String,
    pub in_flight: usize,
    pub permits: usize,
    /// More downloads would start if the share allowed (or a probe is due).
    pub starved: bool,
    /// What downloads found since the last sync, in order: (reachable, was the probe).
    pub events: Vec<(bool, bool)>,
}

/// What the shared state grants one origin's entry (see [`Origins::apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub origin: String,
    pub permits: usize,
    /// The breaker is open for this much longer (`None`: closed).
    pub open_for: Option<Duration>,
    pub failed_probes: u32,
    /// This process sends the probe when the cool-down is over.
    pub probe: bool,
    /// Only the share is known this time; the breaker stays as this process sees it.
    pub stale: bool,
}

/// The limits and breakers of every origin this process downloads from.
#[derive(Debug)]
pub struct Origins {
    limit: usize,
    breaker_failures: u32,
    cooldown: Duration,
    state: Mutex<HashMap<String, Origin>>,
    metrics: Arc<Metrics>,
    /// Signalled whenever a download ends, so images parked for its origin may start.
    released: tokio::sync::Notify,
    /// Shared mode: until when the last shares are good (`None`: not shared; the limit is
    /// this process's own).
    shares_valid_until: Mutex<Option<Instant>>,
    /// Shared mode: signalled when an image waited for a share, so the sync asks at once.
    starving: tokio::sync::Notify,
}

impl Origins {
    /// `breaker_failures == 0` turns the breaker off.
    pub fn new(
        limit: usize,
        breaker_failures: u32,
        cooldown: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            limit: limit.max(1),
            breaker_failures,
            cooldown,
            state: Mutex::new(HashMap::new()),
            metrics,
            released: tokio::sync::Notify::new(),
            shares_valid_until: Mutex::new(None),
            starving: tokio::sync::Notify::new(),
        }
    }

    /// As [`Origins::new`], with `limit` the origin's budget across every process sharing the
    /// database, held through shares the worker's sync gets ([`Origins::apply`]): until the
    /// first sync, nothing may start.
    pub fn shared(
        limit: usize,
        breaker_failures: u32,
        cooldown: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let origins = Self::new(limit, breaker_failures, cooldown, metrics);
        *origins.shares_valid_until.lock().expect("origins lock") = Some(Instant::now());
        origins
    }

    pub fn breaker_failures(&self) -> u32 {
        self.breaker_failures
    }

    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// Notified when an image waited for a share (the sync should ask now).
    pub fn starving(&self) -> &tokio::sync::Notify {
        &self.starving
    }

    /// This process's share of `entry`'s budget now (its own limit when not shared).
    fn allowed(&self, entry: &Origin) -> Option<usize> {
        match *self.shares_valid_until.lock().expect("origins lock") {
            None => None,
            Some(until) if Instant::now() < until => Some(entry.permits.min(self.limit)),
            Some(_) => Some(0),
        }
    }

    /// Every origin's demand since the last call (events drained, `starved` reset).
    pub fn take_demand(&self) -> Vec<Demand> {
        let mut state = self.state.lock().expect("origins lock");
        let demand = state
            .iter_mut()
            .map(|(origin, entry)| Demand {
                origin: origin.clone(),
                in_flight: entry.in_flight,
                permits: entry.permits,
                starved: std::mem::take(&mut entry.starved),
                events: std::mem::take(&mut entry.events),
            })
            .collect();
        self.sweep(&mut state);
        demand
    }

    /// Takes the shared state: each origin's share and breaker, good for `valid_for`.
    pub fn apply(&self, grants: Vec<Grant>, valid_for: Duration) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("origins lock");
        for grant in grants {
            let entry = state.entry(grant.origin.clone()).or_default();
            entry.permits = grant.permits;
            if grant.stale {
                continue;
            }
            entry.failed_probes = grant.failed_probes;
            entry.probe_granted = grant.probe;
            let was_open = entry.open_until.is_some();
            entry.open_until = grant.open_for.map(|d| now + d);
            match (was_open, entry.open_until.is_some()) {
                (false, true) => {
                    self.metrics.fetch_breakers_open.inc();
                    tracing::warn!(
                        origin = grant.origin,
                        "circuit breaker open (shared): the origin's images are deferred"
                    );
                }
                (true, false) => {
                    self.metrics.fetch_breakers_open.dec();
                    entry.failures = 0;
                }
                _ => {}
            }
        }
        self.sweep(&mut state);
        drop(state);
        *self.shares_valid_until.lock().expect("origins lock") = Some(now + valid_for);
        self.released.notify_waiters();
        self.released.notify_one();
    }

    /// Notified when a download of some origin ends (a permit was dropped).
    pub fn released(&self) -> &tokio::sync::Notify {
        &self.released
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// May a download of `origin` start now?
    pub fn admit(self: &Arc<Self>, origin: &str) -> Admission {
        let mut state = self.state.lock().expect("origins lock");
        let entry = state.entry(origin.to_string()).or_default();
        entry.touched = Some(Instant::now());
        let mut probe = false;
        if let Some(until) = entry.open_until {
            let now = Instant::now();
            if now < until {
                return Admission::Open {
                    retry_in: until - now,
                    failed_probes: entry.failed_probes,
                };
            }
            let shared = self.allowed(entry).is_some();
            if entry.probing || (shared && !entry.probe_granted) {
                // Shared: another process may be probing; this one asks for the probe.
                entry.starved |= shared;
                if shared {
                    self.starving.notify_one();
                }
                // Until the probe ends the host is not known to be down: waiting spends no
                // attempt, or `WHILE_PROBING` deferrals would use them up before a slow probe.
                return Admission::Open {
                    retry_in: WHILE_PROBING.min(self.cooldown),
                    failed_probes: 0,
                };
            }
            // Cool-down over: this image is the probe, whatever else is in flight.
            probe = true;
            entry.probing = true;
            entry.probe_granted = false;
        } else if entry.in_flight >= self.allowed(entry).unwrap_or(self.limit) {
            if self.allowed(entry).is_some() {
                entry.starved = true;
                self.starving.notify_one();
            }
            return Admission::Busy;
        }
        entry.in_flight += 1;
        Admission::Go(OriginPermit {
            origins: self.clone(),
            origin: origin.to_string(),
            probe,
        })
    }

    /// Drops the entries of idle origins, and of stale ones ([`Origin::stale`]).
    fn sweep(&self, state: &mut HashMap<String, Origin>) {
        let now = Instant::now();
        state.retain(|_, entry| {
            if entry.idle() {
                return false;
            }
            if !entry.stale(now) {
                return true;
            }
            if entry.open_until.is_some() {
                self.metrics.fetch_breakers_open.dec();
            }
            false
        });
    }

    /// How many breakers are open right now.
    #[cfg(test)]
    fn open_breakers(&self) -> usize {
        let state = self.state.lock().expect("origins lock");
        state.values().filter(|o| o.open_until.is_some()).count()
    }

    fn report(&self, origin: &str, probe: bool, reachable: bool) {
        let mut state = self.state.lock().expect("origins lock");
        let Some(entry) = state.get_mut(origin) else {
            return;
        };
        entry.touched = Some(Instant::now());
        if probe {
            entry.probing = false;
        }
        if self.allowed(entry).is_some() {
            entry.events.push((reachable, probe));
        }
        if reachable {
            entry.failures = 0;
            entry.failed_probes = 0;
            if entry.open_until.take().is_some() {
                self.metrics.fetch_breakers_open.dec();
                tracing::info!(origin, "circuit breaker closed: the origin answers again");
            }
            return;
        }
        entry.failures = entry.failures.saturating_add(1);
        if self.breaker_failures == 0 {
            return;
        }
        let opens = if entry.open_until.is_some() {
            // A failed probe opens it again; a download started before it opened changes nothing.
            if probe {
                entry.failed_probes = entry.failed_probes.saturating_add(1);
            }
            probe
        } else {
            entry.failures >= self.breaker_failures
        };
        if opens {
            if entry.open_until.is_none() {
                self.metrics.fetch_breakers_open.inc();
            }
            entry.open_until = Some(Instant::now() + self.cooldown);
            self.metrics.fetch_breaker_opened.inc();
            tracing::warn!(
                origin,
                failures = entry.failures,
                cooldown = ?self.cooldown,
                "circuit breaker open: the origin's images are deferred"
            );
        }
    }

    fn release(&self, origin: &str, probe: bool) {
        let mut state = self.state.lock().expect("origins lock");
        if let Some(entry) = state.get_mut(origin) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if probe {
                // A probe that ended without a report (its task was aborted) lets the next go.
                entry.probing = false;
            }
            if entry.idle() {
                state.remove(origin);
            }
        }
        drop(state);
        self.released.notify_one();
    }
}

/// One download of an origin in flight; released on drop.
#[derive(Debug)]
pub struct OriginPermit {
    origins: Arc<Origins>,
    origin: String,
    probe: bool,
}

impl OriginPermit {
    /// How the download went: `reachable` unless it failed as an origin failure.
    pub fn report(&self, reachable: bool) {
        self.origins.report(&self.origin, self.probe, reachable);
    }
}

impl Drop for OriginPermit {
    fn drop(&mut self) {
        self.origins.release(&self.origin, self.probe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(limit: usize, failures: u32, cooldown: Duration) -> Arc<Origins> {
        Arc::new(Origins::new(
            limit,
            failures,
            cooldown,
            Arc::new(Metrics::new()),
        ))
    }

    fn go(a: Admission) -> OriginPermit {
        match a {
            Admission::Go(p) => p,
            other => panic!("expected Go, got {other:?}"),
        }
    }

    #[test]
    fn an_origin_no_image_asked_for_in_a_while_is_forgotten_with_its_failures() {
        let o = origins(10, 2, Duration::from_millis(10));
        for _ in 0..2 {
            go(o.admit("http://gone:80")).report(false);
        }
        go(o.admit("http://flaky:80")).report(false);
        assert_eq!(o.open_breakers(), 1);
        assert_eq!(o.metrics.fetch_breakers_open.get(), 1);
        std::thread::sleep(Duration::from_millis(20));
        // Recently asked for: kept, failures and all.
        o.take_demand();
        assert_eq!(o.state.lock().unwrap().len(), 2);
        {
            let long_ago = Instant::now() - FORGET_AFTER;
            let mut state = o.state.lock().unwrap();
            state.get_mut("http://gone:80").unwrap().touched = Some(long_ago);
        }
        o.take_demand();
        let state = o.state.lock().unwrap();
        assert_eq!(state.keys().collect::<Vec<_>>(), ["http://flaky:80"]);
        assert_eq!(
            o.metrics.fetch_breakers_open.get(),
            0,
            "the open gauge follows"
        );
    }

    #[test]
    fn an_origin_gets_at_most_its_limit_and_others_are_not_held_up() {
        let o = origins(2, 0, Duration::from_secs(1));
        let a1 = go(o.admit("http://a:80"));
        let _a2 = go(o.admit("http://a:80"));
        assert!(matches!(o.admit("http://a:80"), Admission::Busy));
        let _b = go(o.admit("http://b:80"));
        drop(a1);
        let _a3 = go(o.admit("http://a:80"));
    }

    #[test]
    fn consecutive_failures_open_the_breaker_and_a_probe_closes_it() {
        let o = origins(10, 3, Duration::from_millis(200));
        for _ in 0..2 {
            go(o.admit("http://a:80")).report(false);
        }
        // An answer in between resets the count.
        go(o.admit("http://a:80")).report(true);
        for _ in 0..3 {
            go(o.admit("http://a:80")).report(false);
        }
        assert_eq!(o.open_breakers(), 1);
        assert_eq!(o.metrics.fetch_breaker_opened.get(), 1);
        assert!(
            matches!(o.admit("http://a:80"), Admission::Open { retry_in, failed_probes: 0 } if retry_in <= Duration::from_millis(200))
        );
        // Other origins are not affected.
        go(o.admit("http://b:80")).report(false);
        std::thread::sleep(Duration::from_millis(250));
        let probe = go(o.admit("http://a:80"));
        // Only one probe at a time.
        assert!(matches!(o.admit("http://a:80"), Admission::Open { .. }));
        probe.report(false);
        drop(probe);
        assert_eq!(
            o.metrics.fetch_breaker_opened.get(),
            2,
            "a failed probe reopens"
        );
        assert!(matches!(
            o.admit("http://a:80"),
            Admission::Open {
                failed_probes: 1,
                ..
            }
        ));
        std::thread::sleep(Duration::from_millis(250));
        let probe = go(o.admit("http://a:80"));
        // While the next probe is out, a host whose last probe failed is not known to be down:
        // waiting for the probe is free.
        assert!(matches!(
            o.admit("http://a:80"),
            Admission::Open {
                failed_probes: 0,
                ..
            }
        ));
        probe.report(true);
        drop(probe);
        assert_eq!(o.open_breakers(), 0);
        // An answer forgets the failed probes: the next opening defers for free again.
        for _ in 0..3 {
            go(o.admit("http://a:80")).report(false);
        }
        assert!(matches!(
            o.admit("http://a:80"),
            Admission::Open {
                failed_probes: 0,
                ..
            }
        ));
        std::thread::sleep(Duration::from_millis(250));
        let probe = go(o.admit("http://a:80"));
        probe.report(true);
        drop(probe);
        assert_eq!(o.metrics.fetch_breakers_open.get(), 0);
        let _again = go(o.admit("http://a:80"));
    }

    #[test]
    fn an_aborted_probe_lets_the_next_one_go() {
        let o = origins(10, 1, Duration::from_millis(50));
        go(o.admit("http://a:80")).report(false);
        std::thread::sleep(Duration::from_millis(80));
        drop(go(o.admit("http://a:80")));
        let _next = go(o.admit("http://a:80"));
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    #[test]
    fn a_shared_origin_starts_only_what_its_share_allows() {
        let o = Arc::new(Origins::shared(
            8,
            5,
            Duration::from_secs(1),
            Arc::new(Metrics::new()),
        ));
        assert!(
            matches!(o.admit("http://a:80"), Admission::Busy),
            "no share before a sync"
        );
        let demand = o.take_demand();
        assert_eq!(demand.len(), 1);
        assert!(demand[0].starved);
        o.apply(
            vec![Grant {
                origin: "http://a:80".into(),
                permits: 2,
                open_for: None,
                failed_probes: 0,
                probe: false,
                stale: false,
            }],
            Duration::from_secs(2),
        );
        let _a = match o.admit("http://a:80") {
            Admission::Go(p) => p,
            other => panic!("{other:?}"),
        };
        let _b = match o.admit("http://a:80") {
            Admission::Go(p) => p,
            other => panic!("{other:?}"),
        };
        assert!(matches!(o.admit("http://a:80"), Admission::Busy));
    }
}
