//! The frame every page shares: [`UiError`], the dashboard's own error (a page with its status,
//! or JSON for the dashboard's live endpoints), the headers of every page ([`html`]), the
//! compiled-in assets, the page layout and who is looking ([`Viewer`]).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use askama::Template;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::views::{ErrorPage, Layout};
use super::{csrf, session};
use crate::auth::AuthError;
use crate::db::DbError;
use crate::web::AppState;
use crate::web::body::{self, BodyError};
use crate::web::submit::SubmitError;

/// Largest form body besides a job (a cancel form, a sign-in).
const SMALL_FORM_BYTES: usize = 16 * 1024;

/// Why the dashboard could not do what was asked. Each variant's status is beside it; every
/// message is shown to the person as it is (a 500's cause is logged, never shown).
#[derive(Debug)]
pub enum UiError {
    /// 400.
    BadRequest(String),
    /// 401: a key or a sign-in is needed.
    Unauthorized(String),
    /// 403: a form without its CSRF token, or from another site.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 408: a form that did not arrive in time.
    TimedOut(String),
    /// 413: a form or a job over a limit.
    TooLarge(String),
    /// 422: well-formed, but cannot be done.
    Unprocessable(String),
    /// 429: over the tenant's submit rate or quota.
    TooMany {
        message: String,
        retry_after: Duration,
    },
    /// 503: the database cannot be reached right now.
    Unavailable,
    /// 503: the server is not set up for this (webhooks without a secret key).
    NotConfigured(String),
    /// 500: logged with its cause.
    Internal(String),
}

impl From<DbError> for UiError {
    fn from(error: DbError) -> Self {
        if error.is_transient() {
            tracing::warn!(%error, "database unavailable");
            UiError::Unavailable
        } else {
            UiError::Internal(error.to_string())
        }
    }
}

impl From<BodyError> for UiError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge(m) => UiError::TooLarge(m),
            BodyError::TimedOut(m) => UiError::TimedOut(m),
            BodyError::Broken(m) => UiError::BadRequest(m),
        }
    }
}

impl From<SubmitError> for UiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Invalid(m) => UiError::BadRequest(m),
            SubmitError::TooLarge(m) => UiError::TooLarge(m),
            SubmitError::TooMany {
                message,
                retry_after,
            } => UiError::TooMany {
                message,
                retry_after,
            },
            SubmitError::KeyReused(m) => UiError::Unprocessable(m),
            SubmitError::WebhooksOff(m) => UiError::NotConfigured(m),
            SubmitError::Body(e) => e.into(),
            SubmitError::Db(e) => e.into(),
        }
    }
}

impl From<AuthError> for UiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Db(e) => e.into(),
            other => UiError::Unauthorized(other.message().unwrap_or("unauthorized").into()),
        }
    }
}

impl UiError {
    pub fn status(&self) -> StatusCode {
        match self {
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            UiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            UiError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            UiError::Unavailable | UiError::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            UiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How long to wait before trying again, for a refusal that says so (429).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UiError::TooMany { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Adds the `Retry-After` of `wait` (whole seconds, rounded up, at least 1) to `response`.
    pub fn tell_when(response: &mut Response, wait: Option<Duration>) {
        if let Some(wait) = wait {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }

    /// What the person is told (a 500's cause is logged here instead).
    pub fn message(self) -> String {
        match self {
            UiError::BadRequest(m)
            | UiError::Unauthorized(m)
            | UiError::Forbidden(m)
            | UiError::NotFound(m)
            | UiError::TimedOut(m)
            | UiError::TooLarge(m)
            | UiError::Unprocessable(m)
            | UiError::NotConfigured(m)
            | UiError::TooMany { message: m, .. } => m,
            UiError::Unavailable => "the database is unavailable; retry shortly".into(),
            UiError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                "internal error".into()
            }
        }
    }

    /// The answer of the dashboard's JSON endpoints: `{"error": message}` with the status.
    pub fn into_json(self) -> Response {
        let status = self.status();
        let wait = self.retry_after();
        let mut response = (status, axum::Json(json!({ "error": self.message() }))).into_response();
        UiError::tell_when(&mut response, wait);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let wait = self.retry_after();
        let message = self.message();
        let title = status.canonical_reason().unwrap_or("Error").to_string();
        let mut response = html(
            status,
            &ErrorPage {
                layout: Layout::bare(title),
                status: status.as_u16(),
                message,
            },
            None,
        );
        UiError::tell_when(&mut response, wait);
        response
    }
}

/// Renders a page with the headers every page carries: no caching (pages hold live numbers
/// and form tokens), a content security policy that allows only this server's own script and
/// stylesheet, and no framing.
pub(super) fn html(
    status: StatusCode,
    page: &impl Template,
    cookie: Option<(HeaderName, HeaderValue)>,
) -> Response {
    let body = match page.render() {
        Ok(body) => body,
        Err(error) => {
            return UiError::Internal(format!("template failed: {error}")).into_response();
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if let Some((name, value)) = cookie {
        headers.append(name, value);
    }
    response
}

/// A compiled-in asset, served under a URL that names its content hash (so it can be cached
/// for long: a new build changes the URL).
pub(super) struct Asset {
    body: &'static str,
    content_type: &'static str,
    url: String,
}

pub(super) static CSS: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("assets/app.css"), "text/css", "app.css"));
pub(super) static JS: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("assets/app.js"), "text/javascript", "app.js"));

impl Asset {
    fn new(body: &'static str, content_type: &'static str, name: &str) -> Self {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(body.as_bytes());
        let tag: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Asset {
            body,
            content_type,
            url: format!("/ui/assets/{name}?v={tag}"),
        }
    }
}

pub(super) fn asset(asset: &Asset) -> Response {
    (
        [
            (
                CONTENT_TYPE,
                format!("{}; charset=utf-8", asset.content_type),
            ),
            (CACHE_CONTROL, "public, max-age=86400".into()),
        ],
        asset.body,
    )
        .into_response()
}

impl Layout {
    pub(super) fn new(title: impl Into<String>, active: &'static str, viewer: &Viewer) -> Self {
        Layout {
            title: title.into(),
            active,
            css: CSS.url.clone(),
            js: JS.url.clone(),
            signed_in: viewer.signed_in.clone(),
            csrf: viewer.csrf.token.clone(),
        }
    }

    /// The frame of a page shown without a viewer (an error): no sign-out button.
    pub(super) fn bare(title: impl Into<String>) -> Self {
        Layout {
            title: title.into(),
            active: "",
            css: CSS.url.clone(),
            js: JS.url.clone(),
            signed_in: None,
            csrf: String::new(),
        }
    }
}

/// Who is looking, as every page needs it: the key a sign-in session acts for (shown, with a
/// sign-out button), and the CSRF token the page's forms carry (with its cookie if the
/// browser has none yet).
pub(super) struct Viewer {
    signed_in: Option<String>,
    pub(super) csrf: csrf::Csrf,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let secure = session::secure(state.sessions.config(), &parts.headers);
        Ok(Viewer {
            signed_in: parts
                .extensions
                .get::<session::SignedIn>()
                .map(|s| s.key_name.clone()),
            csrf: csrf::issue(&parts.headers, secure),
        })
    }
}

impl Viewer {
    /// The `Set-Cookie` of the CSRF token, if the page must send one.
    pub(super) fn cookie(&self) -> Option<(HeaderName, HeaderValue)> {
        self.csrf.set_cookie.clone()
    }
}

/// The `{job_id}` of a dashboard path: anything else is no job (an HTML 404).
pub(super) struct UiJobId(pub(super) i64);

impl<S: Send + Sync> FromRequestParts<S> for UiJobId {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(raw)| raw)
            .unwrap_or_default();
        raw.parse::<i64>()
            .map(UiJobId)
            .map_err(|_| UiError::NotFound("There is no such job.".into()))
    }
}

/// A query string from pairs, leaving out empty values.
pub(super) fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.append_pair(k, v);
    }
    let q = out.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

/// Reads a small urlencoded form body.
pub(super) async fn small_form(body: Body) -> Result<HashMap<String, String>, UiError> {
    let bytes = body::read(body, SMALL_FORM_BYTES, "form").await?;
    Ok(url::form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_named_by_their_content() {
        assert!(CSS.url.starts_with("/ui/assets/app.css?v="));
        assert!(JS.url.starts_with("/ui/assets/app.js?v="));
        assert_ne!(CSS.url, JS.url);
    }
}
