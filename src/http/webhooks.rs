//! The caller's webhook signing secret: `GET /api/webhooks/secret` (made on first use) and
//! `POST /api/webhooks/secret/rotate`. Every key of a tenant may read and rotate its tenant's
//! secret, admin or not: whoever submits jobs with a webhook must be able to verify them, and to
//! replace a secret that leaked. After a rotation the previous secret keeps signing, beside the
//! new one, for `--webhook-secret-overlap`, so receivers can switch without losing an event.
//! Without a secret key (PostgreSQL, none given) webhooks are off: both answer 503, naming the
//! setting.

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::domain::time::format_ms;
use crate::webhooks::WebhookSecrets;
use crate::webhooks::keys::KEY_SETTINGS;
use crate::webhooks::secrets::SecretsError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/webhooks/secret", get(secret))
        .route("/api/webhooks/secret/rotate", post(rotate))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretBody {
    /// `whsec_` + base64 of 32 random bytes: the HMAC-SHA256 key is the decoded bytes.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAAAAAAAAAAA=")]
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedBody {
    /// The new secret, signing from now on.
    pub secret: String,
    /// Until when (RFC 3339) deliveries are also signed with the previous secret; null when
    /// there was none.
    pub previous_valid_until: Option<String>,
}

/// The tenants' secrets, or a 503 naming the setting when webhooks are off.
fn secrets(state: &AppState) -> Result<&WebhookSecrets, ApiError> {
    state.webhook_secrets.as_deref().ok_or_else(|| {
        ApiError::NotConfigured(format!(
            "webhooks are off on this server: it was started without a secret key ({KEY_SETTINGS})"
        ))
    })
}

impl From<SecretsError> for ApiError {
    fn from(error: SecretsError) -> Self {
        match error {
            SecretsError::Db(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Secrets are not for caches.
fn no_store(body: impl Serialize) -> Response {
    ([(CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// `GET /api/webhooks/secret`: the secret the caller's tenant's deliveries are signed with.
#[utoipa::path(get, path = "/api/webhooks/secret", tag = "webhooks",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The tenant's signing secret (made now if it had none)", body = SecretBody),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
        (status = 503, description = "Webhooks are off: the server has no secret key", body = super::openapi::ErrorBody),
    ))]
async fn secret(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let secret = secrets(&state)?.current(&caller.tenant).await?;
    Ok(no_store(SecretBody { secret }))
}

/// `POST /api/webhooks/secret/rotate`: a new secret for the caller's tenant.
#[utoipa::path(post, path = "/api/webhooks/secret/rotate", tag = "webhooks",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The new secret; the previous one still signs for a while", body = RotatedBody),
        (status = 401, description = "No valid API key", body = super::openapi::ErrorBody),
        (status = 503, description = "Webhooks are off: the server has no secret key", body = super::openapi::ErrorBody),
    ))]
async fn rotate(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let (secret, until) = secrets(&state)?
        .rotate(&caller.tenant, state.webhook_secret_overlap)
        .await?;
    tracing::info!(tenant = %caller.tenant, key = ?caller.key_name, "webhook secret rotated");
    Ok(no_store(RotatedBody {
        secret,
        previous_valid_until: until.map(format_ms),
    }))
}
