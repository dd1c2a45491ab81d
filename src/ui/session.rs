//! The browser's side of a dashboard sign-in session: the `rp_session` cookie and the gate in
//! front of every page.
//!
//! Where the API needs a key (see [`crate::auth`]: `required`, or `auto` once a key exists or
//! for a client off loopback), a browser without an `Authorization` header is sent to
//! `/ui/login`, where a person pastes a key once. A key that is live starts a session
//! ([`crate::auth::sessions`]), whose id goes to the browser in the `rp_session` cookie
//! (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure` when the dashboard is reached over
//! HTTPS — see [`secure`]). The key itself is never stored, in the cookie or anywhere else.

use axum::extract::State;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::frame::UiError;
use crate::auth::AuthError;
use crate::auth::sessions::{self, SessionConfig};
use crate::web::AppState;

pub const COOKIE_NAME: &str = "rp_session";

/// Put on a request by [`require_viewer`] when its caller came from a session: pages show
/// the key's name and a sign-out button.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub key_name: String,
}

/// Whether this request reached the dashboard over HTTPS, so its cookies must be
/// `Secure`: the configured public URL is `https://…`, or a proxy in front says so with
/// `X-Forwarded-Proto: https`. The header is believed from anyone: a client that forges
/// it only makes its own cookies stricter (it cannot make a cookie less secure, since a
/// real HTTPS deployment sets the public URL or has a proxy that sends the header).
pub fn secure(config: &SessionConfig, headers: &HeaderMap) -> bool {
    config
        .public_url
        .as_ref()
        .is_some_and(|u| u.scheme() == "https")
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// The `Set-Cookie` that gives the browser its session.
pub fn cookie(config: &SessionConfig, id: &str, headers: &HeaderMap) -> (HeaderName, HeaderValue) {
    set_cookie(config, id, "", headers)
}

/// The `Set-Cookie` that removes the session cookie.
pub fn removal(config: &SessionConfig, headers: &HeaderMap) -> (HeaderName, HeaderValue) {
    set_cookie(config, "", "; Max-Age=0", headers)
}

fn set_cookie(
    config: &SessionConfig,
    value: &str,
    extra: &str,
    headers: &HeaderMap,
) -> (HeaderName, HeaderValue) {
    let secure = if secure(config, headers) {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{COOKIE_NAME}={value}; Path=/ui; HttpOnly; SameSite=Strict{extra}{secure}");
    (
        SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a session cookie is a valid header"),
    )
}

/// The session id in the request's cookies, if any.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE_NAME && sessions::well_formed(value))
        .map(|(_, value)| value.to_string())
}

/// Where to go after signing in: `next` if it is a dashboard path on this server, else the
/// overview. Only `/ui` and paths under `/ui/` pass, without `..` segments, backslashes or
/// control characters, so no value can lead off this site (`//evil.example`,
/// `/\evil.example`, `https://…` all fall back to `/ui/`).
pub fn local_return_path(next: Option<&str>) -> String {
    const HOME: &str = "/ui/";
    let Some(next) = next.map(str::trim).filter(|n| !n.is_empty()) else {
        return HOME.into();
    };
    let path = next.split(['?', '#']).next().unwrap_or_default();
    let acceptable = (path == "/ui" || path.starts_with("/ui/"))
        && !next.bytes().any(|b| b == b'\\' || b.is_ascii_control())
        && !path
            .split('/')
            .any(|segment| segment == ".." || segment == ".")
        && !path.starts_with("/ui/login")
        && !path.contains("//")
        && next.len() <= 2048;
    if acceptable { next.into() } else { HOME.into() }
}

/// The dashboard's gate, in front of every page and the dashboard's JSON: a request with an
/// `Authorization` header, or one that needs no key, is the API's (see
/// [`crate::http`]'s `require_caller`); one that needs a key and has none is taken from its
/// session cookie, or sent to sign in (pages) or refused with a 401 (the JSON).
pub async fn require_viewer(
    State(state): State<AppState>,
    mut req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let peer = crate::web::peer(&req);
    match state.auth.caller(req.headers(), peer).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        // Neither happens with an Authorization header: a page without one needs a session.
        Err(AuthError::Missing | AuthError::LoopbackOnly) => {
            if let Some(id) = session_id(req.headers()) {
                match state.sessions.caller(&id).await {
                    Ok(Some(caller)) => {
                        if let Some(name) = caller.key_name.clone() {
                            req.extensions_mut().insert(SignedIn { key_name: name });
                        }
                        req.extensions_mut().insert(caller);
                        return next.run(req).await;
                    }
                    Ok(None) => {}
                    Err(error) => return UiError::from(error).into_json(),
                }
            }
            sign_in_first(&req)
        }
        Err(error) => UiError::from(error).into_json(),
    }
}

/// The answer to a dashboard request that needs a session and has none: a page is sent to
/// the sign-in page, which brings it back after; the JSON gets a 401.
fn sign_in_first(req: &Request<axum::body::Body>) -> Response {
    let uri = req.uri();
    if uri.path().starts_with("/ui/live/") {
        return UiError::Unauthorized(
            "sign in to the dashboard at /ui/login, or send an API key as \
             `Authorization: Bearer <key>`"
                .into(),
        )
        .into_json();
    }
    let target = if matches!(*req.method(), Method::GET | Method::HEAD) {
        let here = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/ui/");
        let next = local_return_path(Some(here));
        if next == "/ui/" {
            "/ui/login".to_string()
        } else {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("next", &next)
                .finish();
            format!("/ui/login?{query}")
        }
    } else {
        "/ui/login".to_string()
    };
    let mut response = Redirect::to(&target).into_response();
    // A 303 from a POST too: the browser follows with a GET.
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dashboard_paths_on_this_site_are_returned_to() {
        for good in [
            "/ui/",
            "/ui",
            "/ui/jobs?state=failed&after=o1",
            "/ui/jobs/12#images",
        ] {
            assert_eq!(local_return_path(Some(good)), good, "{good}");
        }
        for bad in [
            "//evil.example/ui/",
            "https://evil.example/ui/",
            "/\\evil.example",
            "/ui/\\evil",
            "/ui//evil.example",
            "/ui/../api/jobs",
            "/ui/./x",
            "/api/jobs",
            "/uix",
            "ui/jobs",
            "/ui/login?next=/ui/",
            "/ui/\tjobs",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(local_return_path(Some(bad)), "/ui/", "{bad:?}");
        }
        assert_eq!(local_return_path(None), "/ui/");
    }

    #[test]
    fn session_ids_are_read_from_the_cookie_only_when_well_formed() {
        let id = sessions::new_id();
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            format!("rp_csrf=x; {COOKIE_NAME}={id}").parse().unwrap(),
        );
        assert_eq!(session_id(&headers), Some(id.clone()));
        headers.insert(COOKIE, format!("{COOKIE_NAME}=abc").parse().unwrap());
        assert_eq!(session_id(&headers), None);
    }
}
