//! [`ApiError`], the one place where the API's failures become status codes and JSON bodies,
//! and the conversions from every area's error below it.

use std::time::Duration;

use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::db::DbError;
use crate::web::body::BodyError;
use crate::web::submit::SubmitError;

/// Errors a handler can return. Each variant's doc says its status and body.
#[derive(Debug)]
pub enum ApiError {
    /// 400 `{"error": message}`: the request is malformed; the message names the field.
    BadRequest(String),
    /// 400 `{}`: the assignment's answer for a missing, malformed or unknown `jobid`.
    StatusBadRequest,
    /// 401 `{"error": message}` with `WWW-Authenticate: Bearer`: no valid API key.
    Unauthorized(String),
    /// 403 `{"error": message}`: a valid key that may not do this (a non-admin on `/metrics`).
    Forbidden(String),
    /// 404 `{"error": message}`.
    NotFound(String),
    /// 405 `{"error": message}`: the path exists, the method does not (with an `Allow` header).
    MethodNotAllowed(String),
    /// 409 `{"error": message}`: the request conflicts with the resource's state.
    Conflict(String),
    /// 408 `{"error": message}`: the body did not arrive within the body timeout.
    RequestTimeout(String),
    /// 413 `{"error": message}`: the body or the job is over a configured limit.
    TooLarge(String),
    /// 422 `{"error": message}`: well-formed, but cannot be done (idempotency key reused
    /// with another body).
    Unprocessable(String),
    /// 429 `{"error": message}` with `Retry-After: seconds`: over the tenant's submit rate
    /// or unfinished-image quota.
    TooManyRequests {
        message: String,
        retry_after: Duration,
    },
    /// 503 `{"error": ...}`: the database cannot be reached right now; retry shortly.
    Unavailable,
    /// 503 `{"error": message}`: this server is not set up for the request (webhooks without
    /// a secret key); the message names the setting. Retrying does not help until it is set.
    NotConfigured(String),
    /// 500 `{"error": "internal error"}`: logged here with its cause, never shown.
    Internal(String),
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        if error.is_transient() {
            tracing::warn!(%error, "database unavailable");
            ApiError::Unavailable
        } else {
            ApiError::Internal(error.to_string())
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge(m) => ApiError::TooLarge(m),
            BodyError::TimedOut(m) => ApiError::RequestTimeout(m),
            BodyError::Broken(m) => ApiError::BadRequest(m),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Invalid(m) => ApiError::BadRequest(m),
            SubmitError::TooLarge(m) => ApiError::TooLarge(m),
            SubmitError::TooMany {
                message,
                retry_after,
            } => ApiError::TooManyRequests {
                message,
                retry_after,
            },
            SubmitError::KeyReused(m) => ApiError::Unprocessable(m),
            SubmitError::WebhooksOff(m) => ApiError::NotConfigured(m),
            SubmitError::Body(e) => e.into(),
            SubmitError::Db(e) => e.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Db(e) => e.into(),
            other => ApiError::Unauthorized(other.message().unwrap_or("unauthorized").into()),
        }
    }
}

/// A header some answers carry beside their body.
type ExtraHeader = Option<(HeaderName, axum::http::HeaderValue)>;

impl ApiError {
    /// The status, JSON body and extra header this error answers with (a 500 is logged here,
    /// with its cause, and answered without it).
    fn parts(self) -> (StatusCode, serde_json::Value, ExtraHeader) {
        use axum::http::{HeaderValue, header};
        let mut extra: ExtraHeader = None;
        let (status, body) = match self {
            ApiError::Unauthorized(m) => {
                extra = Some((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
                (StatusCode::UNAUTHORIZED, json!({ "error": m }))
            }
            ApiError::TooManyRequests {
                message,
                retry_after,
            } => {
                // Whole seconds, rounded up and at least 1: a client that waits as told is
                // never early.
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                extra = Some((header::RETRY_AFTER, HeaderValue::from(secs)));
                (StatusCode::TOO_MANY_REQUESTS, json!({ "error": message }))
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, json!({ "error": m })),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({ "error": m })),
            ApiError::StatusBadRequest => (StatusCode::BAD_REQUEST, json!({})),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({ "error": m })),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, json!({ "error": m })),
            ApiError::MethodNotAllowed(m) => {
                (StatusCode::METHOD_NOT_ALLOWED, json!({ "error": m }))
            }
            ApiError::RequestTimeout(m) => (StatusCode::REQUEST_TIMEOUT, json!({ "error": m })),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": m })),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, json!({ "error": m })),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "the database is unavailable; retry shortly" }),
            ),
            ApiError::NotConfigured(m) => (StatusCode::SERVICE_UNAVAILABLE, json!({ "error": m })),
            ApiError::Internal(cause) => {
                // Logged here, inside the request's span (which carries the request id); the
                // client gets only the id, added by `internal_errors_name_the_request`.
                tracing::error!(error = %cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({ "error": "internal error" }),
                )
            }
        };
        (status, body, extra)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body, extra) = self.parts();
        let mut response = (status, axum::Json(body)).into_response();
        if let Some((name, value)) = extra {
            response.headers_mut().insert(name, value);
        }
        response
    }
}
