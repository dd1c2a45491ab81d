//! How long to wait before trying again: the one backoff of every retry in the service (an
//! image's transient failure, a webhook delivery, a claim or a write the database refused).

use std::time::Duration;

/// Exponential backoff with equal jitter: a random wait in [d/2, d], where d doubles per
/// attempt from `base` and is capped at `max`. Half of each wait is fixed, so a retry never
/// comes back much sooner than its attempt number says, while the other half spreads the
/// retries of many failures that happened together.
pub fn backoff(attempt: i64, base: Duration, max: Duration) -> Duration {
    let exp = attempt.clamp(1, 30) as u32 - 1;
    let full = base.saturating_mul(2u32.saturating_pow(exp)).min(max);
    let half = full / 2;
    half + Duration::from_millis(fastrand::u64(0..=(full - half).as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_stays_under_the_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..200 {
            let b1 = backoff(1, base, max);
            assert!(
                b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100),
                "{b1:?}"
            );
            let b3 = backoff(3, base, max);
            assert!(
                b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400),
                "{b3:?}"
            );
            assert!(backoff(20, base, max) <= max);
        }
    }
}
