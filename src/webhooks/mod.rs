//! Webhooks: telling a client that its job finished, signed the Standard Webhooks 1.0 way.
//!
//! A job submitted with `"webhook": "<http(s) URL>"` gets exactly one event when it finishes
//! (completed, failed or cancelled): the transaction that finishes the job writes a row to
//! `webhook_deliveries` ([`crate::db::webhooks::enqueue`]), and worker processes work that
//! table as a queue ([`deliver`]): a POST of
//! `{"type": "job.finished", "timestamp": "<finish time>", "data": <the job>}` with the headers
//! `webhook-id` (the same on every attempt), `webhook-timestamp` (unix seconds when sent) and
//! `webhook-signature` (`v1,` + base64 of HMAC-SHA256 over `id.timestamp.body`, keyed by the
//! tenant's secret; two, space-separated, for a while after a rotation).
//!
//! Secrets are per tenant, `whsec_` + base64 of 32 random bytes, made on first use (reading
//! it through the API, or the first delivery); this module makes and uses them ([`secrets`]),
//! the database keeps them ([`crate::db::webhooks`]) sealed by a secret key only the processes
//! hold ([`sealing`]; which key, and where it comes from: [`keys`]).

pub(crate) mod deliver;
pub use deliver::MAX_ATTEMPTS;
pub mod keys;
pub mod sealing;
pub mod secrets;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::time::Duration;

use crate::domain::Job;
use crate::domain::time::format_ms;
use crate::domain::wire::JobBody;
use sealing::KeyRing;
pub use secrets::{SigningSecrets, WebhookSecrets};

/// Webhook deliveries (made by worker processes) and the signing secrets (rotated through the
/// API).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// How long after a job finished its event is still retried; then the delivery fails.
    pub max_age: Duration,
    /// First wait before retrying a failed delivery; doubles per attempt, with jitter.
    pub retry_base: Duration,
    /// Longest wait between two attempts.
    pub retry_max: Duration,
    /// How long after a rotation the previous secret still signs, beside the new one.
    pub secret_overlap: Duration,
    /// The keys that seal the signing secrets in the database, the sealing one first; `None`:
    /// not given, decided at start-up ([`keys::keys_at_start`]).
    pub secret_keys: Option<KeyRing>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(24 * 3600),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            secret_overlap: Duration::from_secs(24 * 3600),
            secret_keys: None,
        }
    }
}

/// What every secret starts with (the Standard Webhooks convention).
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a new secret: 256 bits, like an API key (the convention asks for 24 to 64).
const SECRET_BYTES: usize = 32;
/// The one event type.
pub const EVENT_TYPE: &str = "job.finished";

/// A secret that cannot be used to sign.
#[derive(Debug, thiserror::Error)]
#[error("a webhook secret must be `whsec_` followed by base64 of at least 24 bytes")]
pub struct MalformedSecret;

/// A new secret from the operating system's cryptographic random source.
pub fn generate_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", BASE64.encode(bytes)))
}

/// The key a secret stands for: the bytes its base64 part decodes to.
fn key(secret: &str) -> Result<Vec<u8>, MalformedSecret> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or(MalformedSecret)?;
    let key = BASE64.decode(encoded).map_err(|_| MalformedSecret)?;
    if key.len() < 24 {
        return Err(MalformedSecret);
    }
    Ok(key)
}

/// One Standard Webhooks signature: `v1,` + base64 of HMAC-SHA256 over `id.timestamp.body`,
/// keyed by the secret's decoded bytes.
pub fn sign(
    secret: &str,
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, MalformedSecret> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key(secret)?).map_err(|_| MalformedSecret)?;
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

/// The `webhook-signature` header: a signature with the current secret and, while the previous
/// one is within its overlap after a rotation, one with it too, separated by a space (a
/// receiver accepts the message when any of them verifies).
pub fn signature_header(
    secrets: &SigningSecrets,
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, MalformedSecret> {
    let mut header = sign(&secrets.current, message_id, timestamp, body)?;
    if let Some(previous) = &secrets.previous {
        header.push(' ');
        header.push_str(&sign(previous, message_id, timestamp, body)?);
    }
    Ok(header)
}

#[derive(Serialize)]
struct Event<'a> {
    r#type: &'a str,
    /// When the job finished (RFC 3339): the event's time, the same on every attempt.
    timestamp: String,
    data: JobBody,
}

/// The body of a finished job's event: the job as `GET /api/jobs/{id}` shows it, without its
/// `webhook` member (the state of this very delivery). The job is finished, so the body is the
/// same on every attempt.
pub fn event_body(job: Job) -> Vec<u8> {
    let timestamp = format_ms(job.finished_at.unwrap_or(job.created_at));
    let event = Event {
        r#type: EVENT_TYPE,
        timestamp,
        data: JobBody::without_webhook(job),
    };
    serde_json::to_vec(&event).expect("a job serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_secrets_have_the_standard_shape_and_differ() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert!(a.starts_with(SECRET_PREFIX), "{a}");
        assert_eq!(key(&a).unwrap().len(), SECRET_BYTES);
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_secrets_do_not_sign() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
        ] {
            assert!(sign(bad, "msg_1", 1, b"{}").is_err(), "{bad}");
        }
    }

    #[test]
    fn both_secrets_sign_during_the_overlap() {
        let secrets = SigningSecrets {
            current: generate_secret().unwrap(),
            previous: Some(generate_secret().unwrap()),
        };
        let header = signature_header(&secrets, "msg_1", 1_700_000_000, b"{}").unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert_eq!(
            parts[0],
            sign(&secrets.current, "msg_1", 1_700_000_000, b"{}").unwrap()
        );
        assert_eq!(
            parts[1],
            sign(
                secrets.previous.as_deref().unwrap(),
                "msg_1",
                1_700_000_000,
                b"{}"
            )
            .unwrap()
        );
    }
}
