//! The HTTP API: the router, the shared state handlers see, and [`ApiError`], the one place
//! where failures become status codes. One file per area: `submit`, `status` (the assignment's
//! two endpoints), `jobs` (the extended API), `export` (results as CSV), `workers` (the worker
//! registry), `webhooks` (the signing secret) and `health`. The dashboard's pages
//! ([`crate::ui`]) are mounted here too.
//!
//! Every API route sits behind [`crate::auth::require_caller`], every dashboard page behind
//! [`crate::ui::session::require_viewer`] (the same check, or a sign-in session); only
//! `/healthz`, `/readyz`, `/api/openapi.json`, the dashboard's sign-in page and static assets
//! and the `/` redirect are open. Handlers take the [`crate::auth::Caller`] extractor.

pub mod body;
pub(crate) mod export;
mod health;
pub(crate) mod jobs;
pub mod openapi;
pub mod serve;
mod status;
pub(crate) mod submit;
mod webhooks;
mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::Notify;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::auth::{AuthError, Authenticator};
use crate::db::{Db, DbError};
use crate::domain::Limits;
use crate::metrics::{HttpLabels, Metrics, RouteLabels};

/// Query parameters, the first value of each name winning — one rule for every endpoint
/// (`/api/status?jobid=1&jobid=2` is job 1).
pub struct FirstParams(pub std::collections::HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for FirstParams {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let mut params = std::collections::HashMap::new();
        if let Some(query) = parts.uri.query() {
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                params
                    .entry(k.into_owned())
                    .or_insert_with(|| v.into_owned());
            }
        }
        Ok(FirstParams(params))
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Wakes this process's workers when a job is submitted.
    pub wake: Arc<Notify>,
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    /// Keys, tenants and their limits.
    pub auth: Arc<Authenticator>,
    /// How long a rotated-out webhook secret keeps signing beside the new one.
    pub webhook_secret_overlap: Duration,
    /// The dashboard's sign-in sessions.
    pub sessions: Arc<crate::ui::session::Sessions>,
}

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
    /// with its cause, and answered without it). The dashboard shows the same words in a page.
    pub(crate) fn parts(self) -> (StatusCode, serde_json::Value, ExtraHeader) {
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

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: a per-process random prefix and a counter — unique without coordination.
#[derive(Clone)]
struct NextRequestId {
    prefix: u32,
    counter: Arc<AtomicU64>,
}

impl MakeRequestId for NextRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n}", self.prefix)
            .parse()
            .ok()
            .map(RequestId::new)
    }
}

/// Every 500 — a handler's error or a caught panic — leaves with one generic body naming the
/// request id, so a client can report it and an operator find the logged cause; nothing of
/// the cause itself reaches the client.
async fn internal_errors_name_the_request(req: Request<axum::body::Body>, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let response = next.run(req).await;
    if response.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = axum::Json(json!({ "error": format!("internal error; request id {id}") }));
    let mut fresh = body.into_response();
    *fresh.status_mut() = parts.status;
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
}

/// Counts and times every request that matched a route, labelled by the route's pattern
/// (`/api/jobs/{job_id}`), never by the concrete path.
async fn record_request(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // Methods are a fixed set: an invented one must not become a new time series.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => m,
        _ => "other",
    }
    .to_string();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    metrics
        .http_duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method: method.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The operations endpoints alone (`/healthz`, `/readyz`, `/metrics`), open to whoever can
/// reach them: what `--metrics-bind` serves (a `worker`'s only listener, or a second one of
/// `serve`), an address meant for the monitoring network.
pub fn ops_router(state: AppState) -> Router {
    with_layers(
        Router::new()
            .merge(health::router())
            .merge(health::open_metrics_router())
            .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
            .with_state(state),
    )
}

pub fn router(state: AppState) -> Router {
    // Every route merged here needs a caller; the ones merged after stay open.
    let protected = Router::new()
        .merge(submit::router())
        .merge(status::router())
        .merge(jobs::router())
        .merge(export::router())
        .merge(workers::router())
        .merge(webhooks::router())
        .merge(health::admin_metrics_router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            crate::auth::require_caller,
        ));
    // The dashboard's pages take their caller from a key or from a sign-in session.
    let dashboard = crate::ui::pages().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        crate::ui::session::require_viewer,
    ));
    let routes = Router::new()
        .merge(protected)
        .merge(dashboard)
        .merge(health::router())
        .merge(openapi::router())
        .merge(crate::ui::open_routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            record_request,
        ))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::MethodNotAllowed(format!("method {method} is not allowed here"))
        })
        .with_state(state);
    with_layers(routes)
}

/// The layers around every route: request ids (set, traced, echoed), panics caught and turned
/// into a 500, and every 500 reduced to a request id.
fn with_layers(routes: Router) -> Router {
    let ids = NextRequestId {
        prefix: fastrand::u32(..),
        counter: Arc::new(AtomicU64::new(1)),
    };
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request<_>| {
            let id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", request.id = %id, method = %req.method(), path = %req.uri().path())
        })
        .on_request(())
        .on_response(|res: &Response, latency: Duration, _span: &tracing::Span| {
            tracing::debug!(status = res.status().as_u16(), ?latency, "response");
        });
    routes
        .layer(DefaultBodyLimit::disable())
        .layer(CatchPanicLayer::custom(
            |panic: Box<dyn std::any::Any + Send>| {
                let what = crate::telemetry::panic_message(panic.as_ref());
                ApiError::Internal(format!("handler panicked: {what}")).into_response()
            },
        ))
        .layer(axum::middleware::from_fn(internal_errors_name_the_request))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID, ids))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_only_a_request_id() {
        let app = with_layers(Router::new().route(
            "/boom",
            get(|| async {
                panic!("secret detail");
                #[allow(unreachable_code)]
                ""
            }),
        ));
        let res = app
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({ "error": format!("internal error; request id {id}") })
        );
    }
}
