//! Accepting a submitted job, the one path every submission takes — the API's
//! `POST /api/submit/` and the dashboard's form alike — so both accept and refuse exactly the
//! same jobs, in the same words: the tenant's submit rate, the body's validation, an
//! idempotent replay, the tenant's unfinished-image quota (checked in the job's own
//! transaction), then the job and its images written at once and the workers woken.

use std::collections::BTreeSet;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::AppState;
use super::body::BodyError;
use crate::auth::Caller;
use crate::db::jobs::{Created, Idempotency, Owner};
use crate::db::{self, DbError};
use crate::domain::{Submission, ValidationError};

/// Why a submit was not accepted. Each message names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The body is not a valid job; the message names the field (400).
    #[error("{0}")]
    Invalid(String),
    /// Over a size limit, or more images than the tenant's quota allows at all (413).
    #[error("{0}")]
    TooLarge(String),
    /// Over the tenant's submit rate or its unfinished-image quota: try again after
    /// `retry_after` (429).
    #[error("{message}")]
    TooMany {
        message: String,
        retry_after: Duration,
    },
    /// The idempotency key was used before with another body (422).
    #[error("{0}")]
    KeyReused(String),
    /// The job names a webhook, but webhooks are off: no secret key was given (503).
    #[error("{0}")]
    WebhooksOff(String),
    /// The body could not be read (413, 408 or 400, as [`BodyError`] says).
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Takes one of the caller's tenant's submit tokens, or says when to come back (429).
pub async fn take_submit_token(state: &AppState, caller: &Caller) -> Result<(), SubmitError> {
    state
        .auth
        .take_submit_token(caller)
        .await?
        .map_err(|retry_after| SubmitError::TooMany {
            message: format!(
                "tenant {}: more than {} submits a minute; retry later",
                caller.tenant,
                caller.limits.submits_per_minute.unwrap_or_default()
            ),
            retry_after,
        })
}

/// Validates a job's body and writes it for `caller`: the one path every submission takes,
/// the API's and the dashboard's form alike, so both accept and refuse exactly the same jobs,
/// in the same words. `key` is the client's idempotency key, if it sent one. (The caller's
/// submit token is taken before, by [`take_submit_token`].)
pub async fn accept(
    state: &AppState,
    caller: &Caller,
    key: Option<&str>,
    bytes: &[u8],
) -> Result<i64, SubmitError> {
    if bytes.len() > state.max_body_bytes {
        return Err(over_limit(state.max_body_bytes));
    }
    let submission = Submission::parse(bytes, &state.limits).map_err(|e| match e {
        ValidationError::Invalid(m) => SubmitError::Invalid(m),
        ValidationError::TooLarge(m) => SubmitError::TooLarge(m),
    })?;
    let store_ids: BTreeSet<&str> = submission
        .visits
        .iter()
        .map(|v| v.store_id.as_str())
        .collect();
    let store_ids: Vec<&str> = store_ids.into_iter().collect();
    let hash = key.map(|_| body_hash(bytes));
    if let (Some(key), Some(hash)) = (key, &hash)
        && let Some(job_id) = replay(state, caller, key, hash).await?
    {
        return Ok(job_id);
    }
    // After a replay, which creates nothing: only a new job needs its webhook signed.
    if submission.webhook.is_some() && state.webhook_secrets.is_none() {
        return Err(SubmitError::WebhooksOff(format!(
            "webhook: webhooks are off on this server: it was started without a secret key ({})",
            crate::webhooks::keys::KEY_SETTINGS
        )));
    }
    let known = db::stores::known(&state.db, &store_ids).await?;
    let idempotency = key
        .zip(hash.as_deref())
        .map(|(key, body_hash)| Idempotency { key, body_hash });
    let owner = Owner {
        tenant: &caller.tenant,
        max_unfinished_images: caller.limits.max_unfinished_images.map(|m| m as i64),
    };
    let created = db::jobs::create(&state.db, owner, &submission, &known, idempotency).await;
    let job_id = match created {
        Ok(Created::Job(id)) => id,
        Ok(Created::OverQuota { unfinished, wanted }) => {
            return Err(over_quota(caller, unfinished, wanted));
        }
        // Another request with the same key won the race: answer as a replay of it.
        Err(DbError::Duplicate(_)) if idempotency.is_some() => {
            let (key, hash) = key.zip(hash.as_deref()).expect("idempotency present");
            return match replay(state, caller, key, hash).await? {
                Some(job_id) => Ok(job_id),
                None => Err(SubmitError::Db(DbError::Encoding(
                    "an idempotency key vanished after its duplicate was refused".into(),
                ))),
            };
        }
        Err(e) => return Err(e.into()),
    };
    state.wake.notify_one();
    tracing::info!(
        job.id = job_id,
        tenant = %caller.tenant,
        images = submission.image_count(),
        "job submitted"
    );
    Ok(job_id)
}

/// The hash a repeat must match: of the body's JSON value, so whitespace and key order do not
/// matter (serde_json objects serialise with sorted keys), falling back to the raw bytes.
pub fn body_hash(bytes: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(bytes)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|_| bytes.to_vec());
    let digest = Sha256::digest(&canonical);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// How fast a tenant's backlog is assumed to drain when telling a client over its quota when
/// to come back: about one worker process at the default settings (32 slots, 0.1–0.4 s of
/// processing each: ~128 images/s), rounded down.
const ASSUMED_DRAIN_PER_SEC: i64 = 100;
/// The longest wait a quota refusal suggests.
const MAX_QUOTA_RETRY_AFTER_SECS: i64 = 300;

/// The answer to a submit over the tenant's unfinished-image quota: 429 with a wait for the
/// excess to drain, or 413 when the job alone is larger than the quota (waiting never helps).
fn over_quota(caller: &Caller, unfinished: i64, wanted: i64) -> SubmitError {
    let max = caller.limits.max_unfinished_images.unwrap_or(u64::MAX) as i64;
    if wanted > max {
        return SubmitError::TooLarge(format!(
            "visits: the job has {wanted} images to process, more than tenant {}'s quota of {max} unfinished images",
            caller.tenant
        ));
    }
    let excess = unfinished + wanted - max;
    let secs = (excess + ASSUMED_DRAIN_PER_SEC - 1) / ASSUMED_DRAIN_PER_SEC;
    SubmitError::TooMany {
        message: format!(
            "tenant {} has {unfinished} unfinished images; this job's {wanted} would exceed its quota of {max}: retry when some have finished",
            caller.tenant
        ),
        retry_after: std::time::Duration::from_secs(
            secs.clamp(1, MAX_QUOTA_RETRY_AFTER_SECS) as u64
        ),
    }
}

/// The job an earlier request of this tenant with this key created, if its body was the same.
pub async fn replay(
    state: &AppState,
    caller: &Caller,
    key: &str,
    hash: &str,
) -> Result<Option<i64>, SubmitError> {
    match db::jobs::find_by_idempotency_key(&state.db, &caller.tenant, key).await? {
        Some((job_id, stored)) if stored == hash => {
            tracing::info!(job.id = job_id, "idempotent replay of a submit");
            Ok(Some(job_id))
        }
        Some((job_id, _)) => Err(SubmitError::KeyReused(format!(
            "Idempotency-Key: already used for job {job_id} with a different body"
        ))),
        None => Ok(None),
    }
}

/// The error of a body over `limit` bytes.
pub fn over_limit(limit: usize) -> SubmitError {
    SubmitError::Body(super::body::too_large("body", limit))
}
