//! How one process's worker pool behaves: slots, the simulated GPU time, leases, attempts and
//! retries, polling and shutdown.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Images in flight per process.
    pub concurrency: usize,
    pub processing_delay: DelayRange,
    /// How long a claimed image stays leased without a heartbeat.
    pub lease: Duration,
    /// How many times an image may be started (downloaded and measured) before it is failed
    /// for good.
    pub max_attempts: u32,
    /// How many times an image may be claimed without an outcome (its workers stopped before
    /// finishing it) before it is failed for good; at least `max_attempts`.
    pub max_claims: u32,
    /// First wait before retrying a transient download failure; doubles per attempt.
    pub retry_base: Duration,
    /// Longest wait between two attempts.
    pub retry_max: Duration,
    /// How often an idle worker looks for work when no notification arrives.
    pub poll_interval: Duration,
    /// How long shutdown waits for in-flight images before releasing them.
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            processing_delay: DelayRange {
                min_ms: 100,
                max_ms: 400,
            },
            lease: Duration::from_secs(30),
            max_attempts: 3,
            max_claims: crate::queue::DEFAULT_MAX_CLAIMS,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The simulated GPU time per image: a fixed value or a uniform random range, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayRange {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl DelayRange {
    /// No simulated GPU time at all.
    pub const ZERO: DelayRange = DelayRange {
        min_ms: 0,
        max_ms: 0,
    };

    /// Parses `100-400` (a range), `250` (fixed) or `0` (off).
    pub fn parse(text: &str) -> Result<Self, String> {
        let number = |s: &str| {
            s.trim().parse::<u64>().map_err(|_| {
                format!("`{text}` is not a number of milliseconds or a range like 100-400")
            })
        };
        let (min_ms, max_ms) = match text.split_once('-') {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => {
                let n = number(text)?;
                (n, n)
            }
        };
        if min_ms > max_ms {
            return Err(format!("range `{text}` has its minimum above its maximum"));
        }
        Ok(Self { min_ms, max_ms })
    }

    /// A delay drawn uniformly from the range.
    pub fn sample(&self) -> Duration {
        Duration::from_millis(fastrand::u64(self.min_ms..=self.max_ms))
    }

    pub fn is_zero(&self) -> bool {
        self.max_ms == 0
    }
}

impl std::fmt::Display for DelayRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min_ms == self.max_ms {
            write!(f, "{}", self.min_ms)
        } else {
            write!(f, "{}-{}", self.min_ms, self.max_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_parses_range_fixed_and_zero() {
        assert_eq!(
            DelayRange::parse("100-400").unwrap(),
            DelayRange {
                min_ms: 100,
                max_ms: 400
            }
        );
        assert_eq!(
            DelayRange::parse("250").unwrap(),
            DelayRange {
                min_ms: 250,
                max_ms: 250
            }
        );
        assert!(DelayRange::parse("0").unwrap().is_zero());
    }

    #[test]
    fn delay_rejects_garbage_and_inverted_ranges() {
        assert!(DelayRange::parse("abc").is_err());
        assert!(DelayRange::parse("400-100").is_err());
        assert!(DelayRange::parse("-5").is_err());
    }

    #[test]
    fn delay_samples_stay_in_range() {
        let range = DelayRange::parse("10-20").unwrap();
        for _ in 0..1000 {
            let d = range.sample().as_millis();
            assert!((10..=20).contains(&d));
        }
    }

    #[test]
    fn delay_prints_as_it_parses() {
        for text in ["100-400", "250", "0"] {
            assert_eq!(DelayRange::parse(text).unwrap().to_string(), text);
        }
    }
}
