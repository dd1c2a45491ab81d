//! Signing in to the dashboard with an API key, and the session that keeps a browser signed in.
//!
//! Where the API needs a key (see [`crate::auth`]: `required`, or `auto` once a key exists or
//! for a client off loopback), a browser without an `Authorization` header is sent to
//! `/ui/login`, where a person pastes a key once. A key that is live starts a session: 32
//! random bytes, sent to the browser in the `rp_session` cookie (`HttpOnly`,
//! `SameSite=Strict`, `Path=/ui`, `Secure` when the dashboard is reached over HTTPS — see
//! [`Sessions::secure`]) and stored only as their SHA-256 in `ui_sessions`, beside the key's
//! id. The key itself is never stored, in the cookie or anywhere else.
//!
//! A session acts for its key, so for the key's tenant (an admin key's session sees every
//! tenant). It ends when the person signs out, when it has been idle for
//! [`SessionConfig::idle`] (12 h by default), [`MAX_LIFETIME`] after sign-in, or as soon as
//! its key is revoked (the lookup requires a live key; lookups are cached for at most
//! [`crate::auth::CACHE_TTL`], as key lookups are). Failed sign-ins are limited per client
//! address ([`FAILURES_PER_MINUTE`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use crate::auth::rate::SubmitRate;
use crate::auth::{AuthError, Authenticator, CACHE_TTL, Caller, LAST_USED_RESOLUTION};
use crate::db::{self, Db, DbError};
use crate::http::{ApiError, AppState};

pub const COOKIE_NAME: &str = "rp_session";
/// The longest a session lasts, however busy.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 86_400);
/// Failed sign-ins one client address may make per minute (in bursts of as many).
pub const FAILURES_PER_MINUTE: u32 = 10;
/// Hex characters of a session id (32 random bytes).
const ID_LEN: usize = 64;
/// Cache entries above this are swept of stale ones.
const CACHE_SWEEP_AT: usize = 10_000;

/// How the dashboard's sessions behave.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// A session unused for this long ends.
    pub idle: Duration,
    /// The address people use to reach the service (`--public-url`); `https://…` makes every
    /// cookie `Secure`.
    pub public_url: Option<url::Url>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(12 * 3600),
            public_url: None,
        }
    }
}

/// Put on a request by [`require_viewer`] when its caller came from a session: pages show
/// the key's name and a sign-out button.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub key_name: String,
}

/// What a sign-in attempt came to.
#[derive(Debug)]
pub enum SignIn {
    /// A new session: the id goes into the cookie.
    Started { id: String },
    /// The key is malformed, unknown or revoked (which of these is not said).
    Refused,
    /// Too many failed attempts from this address: try again after this long.
    TooMany(Duration),
}

struct Cached {
    caller: Option<Caller>,
    fetched: Instant,
}

/// The dashboard's sessions: sign-in, the lookup behind every page, sign-out. One per API
/// process, shared behind an `Arc`.
pub struct Sessions {
    db: Db,
    auth: Arc<Authenticator>,
    config: SessionConfig,
    /// Session lookups by id hash, each trusted for [`CACHE_TTL`].
    cache: Mutex<HashMap<String, Cached>>,
    /// Failed sign-ins by client address.
    failures: SubmitRate,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new(db: Db, auth: Arc<Authenticator>, config: SessionConfig) -> Self {
        Self {
            db,
            auth,
            config,
            cache: Mutex::new(HashMap::new()),
            failures: SubmitRate::default(),
        }
    }

    /// Whether this request reached the dashboard over HTTPS, so its cookies must be
    /// `Secure`: the configured public URL is `https://…`, or a proxy in front says so with
    /// `X-Forwarded-Proto: https`. The header is believed from anyone: a client that forges
    /// it only makes its own cookies stricter (it cannot make a cookie less secure, since a
    /// real HTTPS deployment sets the public URL or has a proxy that sends the header).
    pub fn secure(&self, headers: &HeaderMap) -> bool {
        self.config
            .public_url
            .as_ref()
            .is_some_and(|u| u.scheme() == "https")
            || headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    }

    /// How long an unused session lasts.
    pub fn idle(&self) -> Duration {
        self.config.idle
    }

    fn idle_ms(&self) -> i64 {
        self.config.idle.as_millis().min(i64::MAX as u128) as i64
    }

    /// How stale `last seen` may be: a minute, or a quarter of the idle time if shorter.
    fn touch_resolution_ms(&self) -> i64 {
        (LAST_USED_RESOLUTION.as_millis() as i64).min(self.idle_ms() / 4)
    }

    /// The caller of a live session with this id (the cookie's value).
    pub async fn caller(&self, id: &str) -> Result<Option<Caller>, DbError> {
        if !well_formed(id) {
            return Ok(None);
        }
        let hash = hash(id);
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.get(&hash)
                && hit.fetched.elapsed() < CACHE_TTL
            {
                return Ok(hit.caller.clone());
            }
        }
        let now = db::now_ms();
        let caller =
            match db::ui_sessions::find_live(&self.db, &hash, now, now - self.idle_ms()).await? {
                None => None,
                Some(session) => {
                    let resolution = self.touch_resolution_ms();
                    if now - session.last_seen_at >= resolution {
                        let db = self.db.clone();
                        let hash = hash.clone();
                        tokio::spawn(async move {
                            if let Err(error) =
                                db::ui_sessions::touch(&db, &hash, now, now - resolution).await
                            {
                                tracing::debug!(%error, "could not record a session's last use");
                            }
                        });
                    }
                    Some(self.auth.caller_for(session.key).await?)
                }
            };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_SWEEP_AT {
            cache.retain(|_, v| v.fetched.elapsed() < CACHE_TTL);
        }
        cache.insert(
            hash,
            Cached {
                caller: caller.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(caller)
    }

    /// Signs in with `key` from `client`: a new session if the key is live.
    pub async fn sign_in(&self, key: &str, client: Option<IpAddr>) -> Result<SignIn, DbError> {
        let bucket = client.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
        let now = Instant::now();
        if let Err(wait) = self.failures.check(&bucket, FAILURES_PER_MINUTE, now) {
            return Ok(SignIn::TooMany(wait));
        }
        let Some(row) = self.auth.live_key(key.trim()).await? else {
            let _ = self.failures.take(&bucket, FAILURES_PER_MINUTE, now);
            return Ok(SignIn::Refused);
        };
        let at = db::now_ms();
        // Sessions that can no longer be used go when a new one comes: the table holds about
        // the live ones.
        let idle_since = at - self.idle_ms();
        if let Err(error) = db::ui_sessions::prune(&self.db, at, idle_since).await {
            tracing::debug!(%error, "could not prune ended sessions");
        }
        let id = new_id();
        let expires_at = at + MAX_LIFETIME.as_millis() as i64;
        db::ui_sessions::insert(&self.db, &hash(&id), row.id, at, expires_at).await?;
        tracing::info!(key.name = %row.name, tenant = %row.tenant, "dashboard sign-in");
        Ok(SignIn::Started { id })
    }

    /// Ends the session with this id, here at once (other API processes within
    /// [`CACHE_TTL`]).
    pub async fn sign_out(&self, id: &str) -> Result<(), DbError> {
        if !well_formed(id) {
            return Ok(());
        }
        let hash = hash(id);
        db::ui_sessions::delete(&self.db, &hash).await?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash);
        Ok(())
    }

    /// The `Set-Cookie` that gives the browser its session.
    pub fn cookie(&self, id: &str, headers: &HeaderMap) -> (HeaderName, HeaderValue) {
        self.set_cookie(id, "", headers)
    }

    /// The `Set-Cookie` that removes the session cookie.
    pub fn removal(&self, headers: &HeaderMap) -> (HeaderName, HeaderValue) {
        self.set_cookie("", "; Max-Age=0", headers)
    }

    fn set_cookie(
        &self,
        value: &str,
        extra: &str,
        headers: &HeaderMap,
    ) -> (HeaderName, HeaderValue) {
        let secure = if self.secure(headers) { "; Secure" } else { "" };
        let cookie =
            format!("{COOKIE_NAME}={value}; Path=/ui; HttpOnly; SameSite=Strict{extra}{secure}");
        (
            SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("a session cookie is a valid header"),
        )
    }
}

/// The session id in the request's cookies, if any.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE_NAME && well_formed(value))
        .map(|(_, value)| value.to_string())
}

fn well_formed(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn new_id() -> String {
    let mut bytes = [0u8; ID_LEN / 2];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(id: &str) -> String {
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
/// [`crate::auth::require_caller`]); one that needs a key and has none is taken from its
/// session cookie, or sent to sign in (pages) or refused with a 401 (the JSON).
pub async fn require_viewer(
    State(state): State<AppState>,
    mut req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
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
                    Err(error) => return ApiError::from(error).into_response(),
                }
            }
            sign_in_first(&req)
        }
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// The answer to a dashboard request that needs a session and has none: a page is sent to
/// the sign-in page, which brings it back after; the JSON gets a 401.
fn sign_in_first(req: &Request<axum::body::Body>) -> Response {
    let uri = req.uri();
    if uri.path().starts_with("/ui/live/") {
        return ApiError::Unauthorized(
            "sign in to the dashboard at /ui/login, or send an API key as \
             `Authorization: Bearer <key>`"
                .into(),
        )
        .into_response();
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
        let id = new_id();
        assert!(well_formed(&id));
        assert_ne!(new_id(), id);
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            format!("rp_csrf=x; {COOKIE_NAME}={id}").parse().unwrap(),
        );
        assert_eq!(session_id(&headers), Some(id.clone()));
        headers.insert(COOKIE, format!("{COOKIE_NAME}=abc").parse().unwrap());
        assert_eq!(session_id(&headers), None);
        assert_eq!(hash(&id).len(), 64);
        assert_ne!(hash(&id), id);
    }
}
