//! What happens to one image: download, measure, the simulated GPU time, and the decision
//! whether a failure is final or worth another try.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use super::config::{DelayRange, WorkerConfig};
use crate::domain::ErrorKind;
use crate::fetch::origins::OriginPermit;
use crate::fetch::{FetchError, Fetcher};
use crate::measure;
use crate::metrics::{KindLabels, Metrics, OutcomeLabels};
use crate::queue::backoff::backoff;
use crate::queue::{ClaimedImage, Outcome};

/// Longest wait a host's `Retry-After` may impose on one retry.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Processor {
    fetcher: Fetcher,
    delay: DelayRange,
    max_attempts: i64,
    retry_base: Duration,
    retry_max: Duration,
    metrics: Arc<Metrics>,
}

impl Processor {
    pub fn new(fetcher: Fetcher, config: &WorkerConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            fetcher,
            delay: config.processing_delay,
            max_attempts: i64::from(config.max_attempts),
            retry_base: config.retry_base,
            retry_max: config.retry_max,
            metrics,
        }
    }

    /// Processes `image`, telling its origin's breaker (through `origin`, when the image has
    /// one) whether the host could be reached.
    /// The origin's permit is given back as soon as the download ends: the limit is on
    /// downloads in flight, not on images being processed.
    pub async fn process(&self, image: &ClaimedImage, origin: Option<OriginPermit>) -> Outcome {
        let started = std::time::Instant::now();
        let downloaded = self
            .fetcher
            .download(&image.url, measure::is_readable)
            .await;
        if let Some(origin) = origin {
            origin.report(match &downloaded {
                Ok(_) => true,
                Err(error) => !error.is_origin_failure(),
            });
            drop(origin);
        }
        let download = match downloaded {
            Ok(download) => {
                self.metrics
                    .download_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .download_bytes
                    .observe(download.total_bytes as f64);
                download
            }
            Err(error) => return self.fetch_failed(image, error),
        };
        let dims = match measure::measure(&download.head) {
            Ok(d) => d,
            Err(error) => {
                let message = match error {
                    measure::MeasureError::Corrupt(format) if download.head_capped => format!(
                        "not an image: no readable {format} size in the first {} bytes",
                        crate::fetch::HEAD_CAP
                    ),
                    other => other.to_string(),
                };
                return Outcome::Failed {
                    kind: ErrorKind::NotAnImage,
                    message,
                };
            }
        };
        // The body's kept head is not needed any more: freed before the (long) GPU time, so
        // memory per slot is the task alone while it waits.
        drop(download);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay.sample()).await;
        }
        Outcome::Succeeded {
            width: dims.width as i64,
            height: dims.height as i64,
            perimeter: dims.perimeter() as i64,
        }
    }

    /// What becomes of an image whose origin's circuit breaker is open: deferred by `after`
    /// without spending an attempt while the origin is merely struggling; once a probe after a
    /// cool-down has failed too (`failed_probes > 0`), the host counts as down and the
    /// deferral spends the attempt its claim counted, so the image fails after its attempts
    /// rather than waiting for the host indefinitely.
    pub fn breaker_open(
        &self,
        image: &ClaimedImage,
        origin: &str,
        after: Duration,
        failed_probes: u32,
    ) -> Outcome {
        if failed_probes == 0 {
            return Outcome::Deferred { after };
        }
        let why = format!(
            "host not answering: {origin} failed repeatedly, and again after a cool-down \
             (circuit breaker open)"
        );
        let retry = image.attempts < self.max_attempts;
        self.retry_or_fail(image, retry.then_some(after), ErrorKind::Network, why)
    }

    fn fetch_failed(&self, image: &ClaimedImage, error: FetchError) -> Outcome {
        let after =
            (error.is_transient() && image.attempts < self.max_attempts).then(|| {
                match error.retry_after() {
                    Some(wait) => wait.min(RETRY_AFTER_CAP),
                    None => backoff(image.attempts, self.retry_base, self.retry_max),
                }
            });
        self.retry_or_fail(image, after, error.kind(), error.to_string())
    }

    /// Another try in `after` (`None`: a final failure), the cause worded with the attempts.
    fn retry_or_fail(
        &self,
        image: &ClaimedImage,
        after: Option<Duration>,
        kind: ErrorKind,
        cause: String,
    ) -> Outcome {
        match after {
            Some(after) => Outcome::Retry {
                after,
                kind,
                message: format!(
                    "{cause} (attempt {} of {}, retrying)",
                    image.attempts, self.max_attempts
                ),
            },
            None if image.attempts > 1 => Outcome::Failed {
                kind,
                message: format!("{cause} (after {} attempts)", image.attempts),
            },
            None => Outcome::Failed {
                kind,
                message: cause,
            },
        }
    }
}

/// Processes one image; a panic becomes a failed image instead of a dead worker.
pub(super) async fn run_one(
    processor: &Processor,
    image: &ClaimedImage,
    origin: Option<OriginPermit>,
) -> Outcome {
    let outcome = contain_panics(processor.process(image, origin)).await;
    match &outcome {
        Outcome::Succeeded { perimeter, .. } => tracing::debug!(perimeter, "image measured"),
        Outcome::Failed { kind, message } => {
            tracing::info!(error.kind = kind.as_str(), error = %message, "image failed")
        }
        Outcome::Retry { after, message, .. } => {
            tracing::info!(retry_in = ?after, error = %message, "image will be retried")
        }
        Outcome::Deferred { .. } => {}
    }
    outcome
}

/// Counts an outcome in this process's metrics (recording it is the writer's job).
pub(super) fn count_outcome(metrics: &Metrics, outcome: &Outcome) {
    match outcome {
        Outcome::Succeeded { .. } => metrics
            .images_finished
            .get_or_create(&OutcomeLabels {
                outcome: "succeeded".into(),
                error_kind: "none".into(),
            })
            .inc(),
        Outcome::Failed { kind, .. } => metrics
            .images_finished
            .get_or_create(&OutcomeLabels {
                outcome: "failed".into(),
                error_kind: kind.as_str().into(),
            })
            .inc(),
        Outcome::Retry { kind, .. } => metrics
            .retries
            .get_or_create(&KindLabels {
                error_kind: kind.as_str().into(),
            })
            .inc(),
        // Not tried: nothing to count here (the wait was counted where it was decided).
        Outcome::Deferred { .. } => 0,
    };
}

/// Runs an image's processing; a panic in it becomes a failed image (logged with its message)
/// instead of a dead worker task whose lease would only expire.
async fn contain_panics(processing: impl std::future::Future<Output = Outcome>) -> Outcome {
    match AssertUnwindSafe(processing).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = crate::telemetry::panic_message(panic.as_ref());
            tracing::error!(panic = %what, "image processing panicked");
            Outcome::Failed {
                kind: ErrorKind::Internal,
                message: "internal error while processing the image".into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(attempts: i64) -> ClaimedImage {
        ClaimedImage {
            id: 1,
            job_id: 1,
            seq: 0,
            store_id: "S".into(),
            url: "http://a/1.png".into(),
            attempts,
            expiries: 0,
            crashes: 0,
        }
    }

    #[test]
    fn an_open_breaker_defers_for_free_until_a_probe_fails_then_spends_attempts() {
        let config = WorkerConfig::default();
        let fetcher = Fetcher::new(&crate::fetch::FetchConfig::default()).unwrap();
        let p = Processor::new(fetcher, &config, Arc::new(Metrics::new()));
        let after = Duration::from_secs(30);
        assert_eq!(
            p.breaker_open(&image(1), "http://a:80", after, 0),
            Outcome::Deferred { after }
        );
        assert!(matches!(
            p.breaker_open(&image(1), "http://a:80", after, 1),
            Outcome::Retry { after: a, .. } if a == after
        ));
        let last = i64::from(config.max_attempts);
        match p.breaker_open(&image(last), "http://a:80", after, 2) {
            Outcome::Failed { message, .. } => {
                assert!(message.contains("http://a:80"), "{message}");
                assert!(message.contains("circuit breaker open"), "{message}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_panic_while_processing_fails_the_image_and_nothing_else() {
        let outcome = contain_panics(async {
            panic!("decoder exploded");
            #[allow(unreachable_code)]
            Outcome::Succeeded {
                width: 1,
                height: 1,
                perimeter: 4,
            }
        })
        .await;
        assert_eq!(
            outcome,
            Outcome::Failed {
                kind: ErrorKind::Internal,
                message: "internal error while processing the image".into()
            }
        );
    }
}
