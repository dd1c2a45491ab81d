//! The JSON API: its router, the gate in front of every route that needs a caller, and
//! [`ApiError`] ([`error`]), where failures become status codes. One file per area: `submit`,
//! `status` (the assignment's two endpoints), `jobs` (the extended API), `export` (results as
//! CSV), `workers` (the worker registry), `webhooks` (the signing secret), `health` and
//! `openapi`. What the API shares with the dashboard (the state, reading bodies, accepting a
//! submit, the job's shape) lives in [`crate::web`]; the dashboard's routes are handed to
//! [`router`] to be mounted beside the API's.
//!
//! Every API route sits behind `require_caller`; only `/healthz`, `/readyz` and
//! `/api/openapi.json` are open (and whatever the dashboard leaves open). Handlers take the
//! [`Caller`] extractor.

mod error;
mod export;
mod health;
pub use health::waiting_router;
mod jobs;
pub(crate) mod openapi;
mod status;
mod submit;
mod webhooks;
mod workers;

pub use error::ApiError;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::Authenticator;
use crate::web::layers;
use crate::web::{AppState, FirstParams};

/// The operations endpoints alone (`/healthz`, `/readyz`, `/metrics`), open to whoever can
/// reach them: what `--metrics-bind` serves (a `worker`'s only listener, or a second one of
/// `serve`), an address meant for the monitoring network.
pub fn ops_router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    layers::with_layers(
        Router::new()
            .merge(health::router())
            .merge(health::open_metrics_router())
            .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
            .with_state(state),
        metrics,
    )
}

/// The whole API, with `beside` (the dashboard's routes, gated by themselves) mounted next to
/// it under the API's answers to an unknown path (404) and a wrong method (405), inside the
/// layers every route has.
pub fn router(state: AppState, beside: Router<AppState>) -> Router {
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
            require_caller,
        ));
    let metrics = state.metrics.clone();
    let routes = Router::new()
        .merge(protected)
        .merge(beside)
        .merge(health::router())
        .merge(openapi::router())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::MethodNotAllowed(format!("method {method} is not allowed here"))
        })
        .with_state(state);
    layers::with_layers(routes, metrics)
}

/// The gate in front of every API route: a request without a valid caller ends here with its
/// 401 (or 503 when the key store is unreachable); otherwise the [`Caller`] goes into the
/// request's extensions for the handler.
async fn require_caller(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let peer = crate::web::peer(&req);
    match auth.caller(req.headers(), peer).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(error) => ApiError::from(error).into_response(),
    }
}
