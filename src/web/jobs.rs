//! A job as clients read it ([`JobBody`]), with the state of its webhook delivery: what the
//! API's job endpoints and the dashboard's live progress both answer.

use crate::db::{self, Db, DbError};
use crate::domain::Job;
use crate::domain::wire::{JobBody, WebhookBody};

/// The jobs as clients see them, each with the state of its webhook, if it has one (one
/// query for all of them, and none when no job has a webhook).
pub async fn with_webhooks(db: &Db, jobs: Vec<Job>) -> Result<Vec<JobBody>, DbError> {
    let finished: Vec<i64> = jobs
        .iter()
        .filter(|j| j.webhook_url.is_some() && j.finished_at.is_some())
        .map(|j| j.id)
        .collect();
    let mut deliveries = db::webhooks::states(db, &finished).await?;
    Ok(jobs
        .into_iter()
        .map(|job| {
            let delivery = deliveries.remove(&job.id);
            let webhook = job.webhook_url.clone().map(|url| match delivery {
                Some(d) => WebhookBody {
                    url,
                    state: d.status.as_str(),
                    attempts: d.attempts,
                    last_error: d.last_error,
                },
                None => WebhookBody {
                    url,
                    state: db::webhooks::DeliveryStatus::Pending.as_str(),
                    attempts: 0,
                    last_error: None,
                },
            });
            JobBody {
                webhook,
                ..JobBody::without_webhook(job)
            }
        })
        .collect())
}
