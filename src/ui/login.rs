//! The sign-in page and sign-out (see [`super::session`] for what a session is).
//!
//! `GET /ui/login` shows a form with one password field; `POST /ui/login` (CSRF-checked like
//! every form) starts a session for a live key and returns to the checked `next` path; a
//! wrong key gets the form again with a 401 and the same words whatever was wrong with it.
//! `POST /ui/logout` ends the session. Where no key is needed, both pages send the browser
//! straight on to the dashboard.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::csrf;
use super::frame::{UiError, Viewer, html, small_form};
use super::session::{self, local_return_path, session_id};
use super::views::{Layout, LoginPage};
use crate::auth::AuthError;
use crate::auth::sessions::{MAX_LIFETIME, SignIn};
use crate::web::{AppState, FirstParams};

/// The words of every refused key: they say nothing of whether the key exists.
const REFUSED: &str = "That key was not accepted. Check that you pasted the whole key, or ask \
                       an operator for a new one.";

/// A 303 to `to`.
fn see_other(to: &str) -> Response {
    let mut response = axum::response::Redirect::to(to).into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
}

/// Whether this request needs a key at all (`Ok(false)`: the dashboard is open to it).
async fn key_needed(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<bool, UiError> {
    // Judged as a browser without a key header would be.
    let mut bare = headers.clone();
    bare.remove(axum::http::header::AUTHORIZATION);
    match state.auth.caller(&bare, peer).await {
        Ok(_) => Ok(false),
        Err(AuthError::Db(e)) => Err(e.into()),
        Err(_) => Ok(true),
    }
}

fn words(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 86_400 == 0 => plural(s / 86_400, "day"),
        s if s % 3600 == 0 => plural(s / 3600, "hour"),
        s if s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

fn plural(n: u64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

fn page(
    state: &AppState,
    viewer: &Viewer,
    status: StatusCode,
    next: String,
    error: Option<String>,
) -> Response {
    let page = LoginPage {
        layout: Layout::new("Sign in", "", viewer),
        csrf: viewer.csrf.token.clone(),
        next,
        error,
        idle: words(state.sessions.idle()),
        lifetime: words(MAX_LIFETIME),
    };
    html(status, &page, viewer.cookie())
}

/// `GET /ui/login?next=/ui/jobs`: the form, unless no key is needed or the browser is signed
/// in already (then straight on).
pub async fn form(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    viewer: Viewer,
    headers: HeaderMap,
    FirstParams(params): FirstParams,
) -> Result<Response, UiError> {
    let next = local_return_path(params.get("next").map(String::as_str));
    if !key_needed(&state, &headers, Some(peer)).await? {
        return Ok(see_other(&next));
    }
    if let Some(id) = session_id(&headers)
        && state.sessions.caller(&id).await?.is_some()
    {
        return Ok(see_other(&next));
    }
    Ok(page(&state, &viewer, StatusCode::OK, next, None))
}

/// `POST /ui/login` with `csrf`, `key` and `next`.
pub async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, UiError> {
    let form = small_form(body).await?;
    csrf::check(&headers, form.get(csrf::FIELD).map(String::as_str))
        .map_err(|e| UiError::Forbidden(e.to_string()))?;
    let next = local_return_path(form.get("next").map(String::as_str));
    if !key_needed(&state, &headers, Some(peer)).await? {
        return Ok(see_other(&next));
    }
    let key = form.get("key").map(|k| k.trim()).unwrap_or_default();
    if key.is_empty() {
        return Ok(page(
            &state,
            &viewer,
            StatusCode::BAD_REQUEST,
            next,
            Some("key: paste an API key".into()),
        ));
    }
    let client = state.trusted_proxies.client(peer.ip(), &headers);
    match state.sessions.sign_in(key, Some(client)).await? {
        SignIn::Started { id } => {
            let mut response = see_other(&next);
            let (name, value) = session::cookie(state.sessions.config(), &id, &headers);
            response.headers_mut().append(name, value);
            Ok(response)
        }
        SignIn::Refused => Ok(page(
            &state,
            &viewer,
            StatusCode::UNAUTHORIZED,
            next,
            Some(REFUSED.into()),
        )),
        SignIn::TooMany(wait) => {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = page(
                &state,
                &viewer,
                StatusCode::TOO_MANY_REQUESTS,
                next,
                Some(format!(
                    "Too many refused keys from your address: try again in {}.",
                    words(std::time::Duration::from_secs(secs))
                )),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
            Ok(response)
        }
    }
}

/// `POST /ui/logout` with `csrf`: ends the browser's session and removes its cookie.
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, UiError> {
    let form = small_form(body).await?;
    csrf::check(&headers, form.get(csrf::FIELD).map(String::as_str))
        .map_err(|e| UiError::Forbidden(e.to_string()))?;
    if let Some(id) = session_id(&headers) {
        state.sessions.sign_out(&id).await?;
    }
    let mut response = see_other("/ui/login");
    let (name, value) = session::removal(state.sessions.config(), &headers);
    response.headers_mut().append(name, value);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_read_as_words() {
        assert_eq!(words(std::time::Duration::from_secs(12 * 3600)), "12 hours");
        assert_eq!(words(MAX_LIFETIME), "7 days");
        assert_eq!(words(std::time::Duration::from_secs(90)), "90 seconds");
        assert_eq!(words(std::time::Duration::from_secs(60)), "1 minute");
    }
}
