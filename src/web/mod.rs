//! What the two doors — the JSON API ([`crate::http`]) and the dashboard ([`crate::ui`]) —
//! share, so that both accept, refuse and show exactly the same things: the state every
//! handler sees ([`AppState`]), reading a body under its limits ([`body`]), serving
//! connections with read timeouts ([`serve`]), the layers around every route ([`layers`]:
//! request ids, logging, metrics, panics), accepting a submit ([`submit`]), a job as clients
//! read it ([`jobs`]) and its results as a CSV download ([`export`]).
//!
//! Nothing here answers with a door's own error: each function returns its area's error
//! ([`body::BodyError`], [`submit::SubmitError`], [`crate::db::DbError`]), which the API turns
//! into JSON and the dashboard into a page.

pub mod body;
pub mod client;
pub mod export;
pub mod jobs;
pub mod layers;
pub mod serve;
pub mod submit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

use crate::auth::sessions::Sessions;
use crate::auth::{Authenticator, Caller};
use crate::db::Db;
use crate::domain::Limits;
use crate::metrics::Metrics;
use crate::webhooks::WebhookSecrets;

/// Query parameters, the first value of each name winning — one rule for every endpoint
/// (`/api/status?jobid=1&jobid=2` is job 1).
pub struct FirstParams(pub std::collections::HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for FirstParams {
    type Rejection = std::convert::Infallible;

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
    /// The tenants' webhook signing secrets; `None` when webhooks are off (no secret key):
    /// the secret endpoints and submits naming a webhook then answer 503.
    pub webhook_secrets: Option<Arc<WebhookSecrets>>,
    /// Proxies whose `X-Forwarded-For` names the client (for the sign-in throttle).
    pub trusted_proxies: client::TrustedProxies,
    /// The dashboard's sign-in sessions.
    pub sessions: Arc<Sessions>,
}

/// The TCP peer of a request (`None` outside a real connection, as in router tests).
pub fn peer<B>(req: &Request<B>) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// A handler mounted where no gate put a [`Caller`] on the request: refused with a 500,
/// never guessed.
#[derive(Debug)]
pub struct NoCaller;

impl IntoResponse for NoCaller {
    fn into_response(self) -> Response {
        tracing::error!("route has no caller: not behind the API's or the dashboard's gate");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

/// Handlers take the [`Caller`] that the API's gate (a key) or the dashboard's (a key or a
/// sign-in session) put on the request.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = NoCaller;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or(NoCaller)
    }
}
