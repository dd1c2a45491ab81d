//! The per-tenant submit rate: one token bucket per tenant, in this process's memory.
//!
//! A tenant allowed N submits a minute has a bucket of N tokens that refills at N per minute;
//! each submit takes one. A quiet tenant can therefore send a burst of N at once, and then N a
//! minute. With several API processes each keeps its own buckets, so the limit is per process.

use std::time::{Duration, Instant};

use crate::ttl_map::TtlMap;

/// Every bucket refills within a minute (its rate is its capacity per minute): one untouched
/// for longer is full, and dropping it changes nothing (keys from client addresses, as the
/// dashboard's sign-in uses, are not bounded by anything an operator made).
const FULL_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets by tenant. The map holds one small entry per tenant that has submitted, and a
/// tenant exists only through a key an operator created, so it stays small.
#[derive(Debug)]
pub struct SubmitRate {
    buckets: TtlMap<String, Bucket>,
}

impl Default for SubmitRate {
    fn default() -> Self {
        Self {
            buckets: TtlMap::new(FULL_AFTER),
        }
    }
}

impl SubmitRate {
    /// Takes one token from `tenant`'s bucket at `now`, for a rate of `per_minute`; when the
    /// bucket is empty, says how long until it holds one again.
    pub fn take(&self, tenant: &str, per_minute: u32, now: Instant) -> Result<(), Duration> {
        self.use_bucket(tenant, per_minute, now, 1.0)
    }

    /// Whether `key`'s bucket holds a token at `now`, without taking it; when empty, how
    /// long until it holds one. (The dashboard's sign-in checks first and takes a token only
    /// for a failed attempt.)
    pub fn check(&self, key: &str, per_minute: u32, now: Instant) -> Result<(), Duration> {
        self.use_bucket(key, per_minute, now, 0.0)
    }

    fn use_bucket(
        &self,
        key: &str,
        per_minute: u32,
        now: Instant,
        cost: f64,
    ) -> Result<(), Duration> {
        let capacity = f64::from(per_minute.max(1));
        let per_second = capacity / 60.0;
        let init = || Bucket {
            tokens: capacity,
            updated: now,
        };
        self.buckets.upsert(key.to_string(), init, |bucket| {
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
            bucket.updated = now.max(bucket.updated);
            if bucket.tokens >= 1.0 {
                bucket.tokens -= cost;
                Ok(())
            } else {
                Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_rate_passes_then_one_token_per_interval() {
        let rate = SubmitRate::default();
        let start = Instant::now();
        for i in 0..6 {
            assert!(rate.take("a", 6, start).is_ok(), "submit {i} of the burst");
        }
        let wait = rate.take("a", 6, start).unwrap_err();
        assert_eq!(wait.as_secs(), 10, "6 a minute: one every 10 s");
        // Half the interval later, still empty, and the wait has halved.
        let wait = rate
            .take("a", 6, start + Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(wait.as_secs(), 5);
        assert!(rate.take("a", 6, start + Duration::from_secs(10)).is_ok());
        assert!(rate.take("a", 6, start + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn a_check_takes_nothing() {
        let rate = SubmitRate::default();
        let now = Instant::now();
        for _ in 0..5 {
            assert!(rate.check("a", 1, now).is_ok());
        }
        assert!(rate.take("a", 1, now).is_ok());
        assert!(rate.check("a", 1, now).is_err());
    }

    #[test]
    fn tenants_have_their_own_buckets() {
        let rate = SubmitRate::default();
        let now = Instant::now();
        assert!(rate.take("a", 1, now).is_ok());
        assert!(rate.take("a", 1, now).is_err());
        assert!(rate.take("b", 1, now).is_ok());
    }

    #[test]
    fn a_quiet_bucket_refills_only_to_its_capacity() {
        let rate = SubmitRate::default();
        let start = Instant::now();
        assert!(rate.take("a", 2, start).is_ok());
        let later = start + Duration::from_secs(3600);
        assert!(rate.take("a", 2, later).is_ok());
        assert!(rate.take("a", 2, later).is_ok());
        assert!(rate.take("a", 2, later).is_err());
    }
}
