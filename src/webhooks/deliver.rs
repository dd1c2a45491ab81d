//! The delivery loop of one worker process, beside its heartbeat and reaper: claims due
//! deliveries from `webhook_deliveries` (a few at a time), POSTs each event through the image
//! [`Fetcher`] (its address guard, allow-list and timeouts; no redirects followed), and records
//! what came of it under the lease:
//!
//! - a 2xx answer: delivered (recorded once: only the lease holder's update matches);
//! - `410 Gone`, or an address the guard refuses: failed at once;
//! - anything else (timeout, connection error, another status): retried after an exponential
//!   backoff with jitter (`--webhook-retry-base-ms` doubling up to `--webhook-retry-max-secs`,
//!   or the receiver's `Retry-After` up to that cap), until the event is `--webhook-max-age`
//!   old; then failed.
//!
//! A process that dies mid-delivery leaves a lease that lapses (twice the fetch timeout, so a
//! live attempt is never taken over); any worker then claims the delivery again. At shutdown,
//! attempts still in flight after the grace period are handed back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::secrets::SecretsError;
use super::{WebhookConfig, WebhookSecrets};
use crate::db::jobs::{self, Scope};
use crate::db::webhooks::{self as rows, Attempt, Delivery, DeliveryStatus};
use crate::db::{Db, DbError};
use crate::fetch::{FetchError, Fetcher};
use crate::metrics::{DeliveryLabels, Metrics};
use crate::queue::backoff::backoff;

/// Attempts of one delivery before it fails for good, whatever its age: with the default
/// backoff (5 s doubling to 1 h) the age cap (`--webhook-max-age`, 24 h) comes first; this
/// bounds a delivery claimed again and again without an outcome (its worker dies with it) or
/// retried fast at a receiver's `Retry-After`.
pub const MAX_ATTEMPTS: i64 = 50;

/// Deliveries one process attempts at once: a few slow receivers must not hold up the rest.
const IN_FLIGHT: usize = 16;

/// Works the delivery queue for one process (one lease owner).
pub struct Deliverer {
    db: Db,
    fetcher: Fetcher,
    owner: String,
    config: WebhookConfig,
    /// The tenants' signing secrets, opened with this process's secret key.
    secrets: Arc<WebhookSecrets>,
    /// How long a claimed delivery stays this process's: twice the longest a POST can take.
    lease: Duration,
    poll: Duration,
    grace: Duration,
    metrics: Arc<Metrics>,
}

impl Deliverer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Db,
        fetcher: Fetcher,
        owner: String,
        config: &WebhookConfig,
        secrets: Arc<WebhookSecrets>,
        poll: Duration,
        grace: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let lease = (fetcher.timeout() * 2).max(Duration::from_secs(2));
        Self {
            db,
            fetcher,
            owner,
            config: config.clone(),
            secrets,
            lease,
            poll,
            grace,
            metrics,
        }
    }

    /// Claims and attempts deliveries until `stop`; then waits up to the grace period for the
    /// attempts in flight and hands back the rest.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let this = self;
        let mut tasks: JoinSet<()> = JoinSet::new();
        // Which delivery each task attempts, to hand back the ones shutdown cuts short.
        let mut in_flight: HashMap<tokio::task::Id, i64> = HashMap::new();
        let mut failures = 0u32;
        let mut next_claim = tokio::time::Instant::now();
        loop {
            while let Some(done) = tasks.try_join_next_with_id() {
                finished(&mut in_flight, done);
            }
            if stop.is_cancelled() {
                break;
            }
            let room = IN_FLIGHT - tasks.len();
            if room > 0 && tokio::time::Instant::now() >= next_claim {
                match this.claim(room).await {
                    Ok(claimed) => {
                        failures = 0;
                        // A full batch may have left more behind: claim again when a slot frees.
                        next_claim = if claimed.len() == room {
                            tokio::time::Instant::now()
                        } else {
                            tokio::time::Instant::now() + this.poll
                        };
                        for delivery in claimed {
                            let id = delivery.id;
                            let span = tracing::info_span!(
                                "webhook",
                                delivery.id = id,
                                job.id = delivery.job_id,
                                webhook.attempt = delivery.attempts
                            );
                            let worker = this.clone();
                            let handle = tasks.spawn(
                                async move { worker.attempt(delivery).await }.instrument(span),
                            );
                            in_flight.insert(handle.id(), id);
                        }
                    }
                    Err(error) => {
                        failures += 1;
                        let wait = backoff(
                            i64::from(failures),
                            Duration::from_millis(200),
                            Duration::from_secs(10),
                        );
                        tracing::warn!(%error, retry_in = ?wait, "cannot claim webhook deliveries");
                        next_claim = tokio::time::Instant::now() + wait;
                    }
                }
            }
            let can_claim = tasks.len() < IN_FLIGHT;
            tokio::select! {
                _ = tokio::time::sleep_until(next_claim), if can_claim => {}
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    finished(&mut in_flight, done);
                }
                _ = stop.cancelled() => break,
            }
        }
        if tasks.is_empty() {
            return;
        }
        let drained = tokio::time::timeout(this.grace, async {
            while let Some(done) = tasks.join_next_with_id().await {
                finished(&mut in_flight, done);
            }
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            let ids: Vec<i64> = in_flight.into_values().collect();
            match rows::release(&this.db, &this.owner, &ids).await {
                Ok(n) => tracing::info!(released = n, "handed unfinished webhook deliveries back"),
                Err(error) => {
                    tracing::warn!(%error, "could not hand webhook deliveries back; their leases will lapse")
                }
            }
        }
    }

    /// Leases up to `n` due deliveries; an idle queue costs one read, never a write.
    async fn claim(&self, n: usize) -> Result<Vec<Delivery>, DbError> {
        if !rows::any_due(&self.db).await? {
            return Ok(Vec::new());
        }
        rows::claim(&self.db, &self.owner, self.lease, n).await
    }

    /// One attempt of one delivery, from building the signed event to recording the result.
    async fn attempt(&self, delivery: Delivery) {
        let result = if delivery.attempts > MAX_ATTEMPTS {
            // Claimed that often without a recorded outcome (each claim counts): a delivery
            // that kills or stalls its worker ends here.
            Attempt::Failed(format!("gave up after {MAX_ATTEMPTS} attempts"))
        } else {
            match self.send(&delivery).await {
                Ok(Some(result)) => result,
                // The job is gone (pruned): its delivery went with it.
                Ok(None) => return,
                Err(error) if error.is_transient() => {
                    // The database is away: the lease lapses and the delivery is claimed again.
                    tracing::warn!(%error, "cannot prepare a webhook delivery; it will be retried");
                    return;
                }
                // What cannot be prepared now is retried with backoff like a failed send, and
                // fails for good at the caps: never reclaimed forever.
                Err(error) => self.retry_or_fail(
                    format!("cannot prepare the delivery: {error}"),
                    delivery.attempts,
                    None,
                ),
            }
        };
        let recorded = self.record(&delivery, &result).await;
        let outcome = match (&result, recorded) {
            (_, Err(error)) => {
                tracing::error!(%error, "cannot record a webhook attempt; it will be made again");
                return;
            }
            (_, Ok(None)) => {
                tracing::warn!(
                    "webhook attempt not recorded: another worker took the delivery over"
                );
                return;
            }
            (_, Ok(Some(DeliveryStatus::Delivered))) => {
                tracing::info!("webhook delivered");
                "delivered"
            }
            (Attempt::Retry { after, error, .. }, Ok(Some(DeliveryStatus::Pending))) => {
                tracing::info!(%error, retry_in = ?after, "webhook not delivered; will retry");
                "retried"
            }
            (attempt, Ok(Some(_))) => {
                let error = match attempt {
                    Attempt::Failed(error) | Attempt::Retry { error, .. } => error.as_str(),
                    Attempt::Delivered => "",
                };
                tracing::warn!(%error, "webhook delivery failed for good");
                "failed"
            }
        };
        self.metrics
            .webhook_deliveries
            .get_or_create(&DeliveryLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Builds, signs and POSTs the event; `None` when the job no longer exists.
    async fn send(&self, delivery: &Delivery) -> Result<Option<Attempt>, SecretsError> {
        let Some(job) = jobs::get(&self.db, Scope::All, delivery.job_id).await? else {
            return Ok(None);
        };
        let secrets = self.secrets.signing(&delivery.tenant).await?;
        let body = super::event_body(job);
        // The database's clock, as every other time of the service (receivers check it).
        let timestamp = self.db.now_ms().div_euclid(1000);
        let signature =
            match super::signature_header(&secrets, &delivery.message_id, timestamp, &body) {
                Ok(signature) => signature,
                Err(error) => return Ok(Some(Attempt::Failed(format!("cannot sign: {error}")))),
            };
        let headers = [
            ("webhook-id", delivery.message_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ];
        let sent = self
            .fetcher
            .post(&delivery.url, &headers, Bytes::from(body))
            .await;
        Ok(Some(match sent {
            Ok(()) => Attempt::Delivered,
            Err(error) => self.judge(error, delivery.attempts),
        }))
    }

    /// Whether a failed attempt is worth another, and when.
    fn judge(&self, error: FetchError, attempts: i64) -> Attempt {
        match &error {
            FetchError::Status { code: 410, .. } => Attempt::Failed(format!(
                "{error}: the receiver asked for no more deliveries"
            )),
            // The guard will refuse the same address tomorrow; a URL that does not parse never
            // will.
            FetchError::Blocked(_) | FetchError::InvalidUrl(_) => {
                Attempt::Failed(error.to_string())
            }
            _ => self.retry_or_fail(error.to_string(), attempts, error.retry_after()),
        }
    }

    /// Another attempt later, with backoff (or after the receiver's `Retry-After`), unless
    /// this was the last of [`MAX_ATTEMPTS`]; past `max_age` the record fails it instead.
    fn retry_or_fail(&self, error: String, attempts: i64, asked: Option<Duration>) -> Attempt {
        if attempts >= MAX_ATTEMPTS {
            return Attempt::Failed(format!("{error} (gave up after {attempts} attempts)"));
        }
        Attempt::Retry {
            // A receiver's `Retry-After` is honoured, but never below the first backoff
            // (`Retry-After: 0` must not turn into a tight loop) nor above the longest.
            after: match asked {
                Some(wait) => wait.clamp(self.config.retry_base, self.config.retry_max),
                None => backoff(attempts, self.config.retry_base, self.config.retry_max),
            },
            max_age: self.config.max_age,
            error,
        }
    }

    /// Records an attempt, retrying a database that is briefly away for as long as the lease
    /// lasts (past it, another worker owns the delivery anyway).
    async fn record(
        &self,
        delivery: &Delivery,
        attempt: &Attempt,
    ) -> Result<Option<DeliveryStatus>, DbError> {
        let started = tokio::time::Instant::now();
        let mut failures = 0u32;
        loop {
            match rows::record(&self.db, &self.owner, delivery.id, attempt).await {
                Err(error) if error.is_transient() && started.elapsed() < self.lease / 2 => {
                    failures += 1;
                    let wait = backoff(
                        i64::from(failures),
                        Duration::from_millis(100),
                        Duration::from_secs(2),
                    );
                    tracing::warn!(%error, retry_in = ?wait, "cannot record a webhook attempt yet");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }
}

/// Forgets a finished task's delivery; a task that panicked is logged (its lease lapses and the
/// delivery is attempted again).
fn finished(
    in_flight: &mut HashMap<tokio::task::Id, i64>,
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    match done {
        Ok((id, ())) => {
            in_flight.remove(&id);
        }
        Err(error) => {
            let delivery = in_flight.remove(&error.id());
            if error.is_panic() {
                tracing::error!(delivery.id = delivery, "a webhook attempt panicked");
            }
        }
    }
}
