//! Cross-site request forgery protection for the dashboard's forms, with no server state and
//! nothing to do with who the user is (so API keys can come later without touching it).
//!
//! Double-submit: a page with a form makes sure the browser holds a random token in a cookie
//! (`HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure` behind HTTPS) and puts the same token in
//! a hidden field. A POST is accepted only when the field equals the cookie: another site can
//! make a browser send the cookie (not even that, with `SameSite=Strict`), but cannot read it
//! to fill in the field. An `Origin` header, when the browser sends one, must also name this
//! host.

use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};

pub const COOKIE_NAME: &str = "rp_csrf";
/// The name of the hidden form field.
pub const FIELD: &str = "csrf";

/// Hex characters of a token (32 random bytes).
const TOKEN_LEN: usize = 64;

/// The token a page's forms carry, and the cookie to set if the browser had none.
#[derive(Debug, Clone)]
pub struct Csrf {
    pub token: String,
    pub set_cookie: Option<(axum::http::HeaderName, HeaderValue)>,
}

/// Why a form post was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error(
        "the form has expired or did not come from this dashboard: reload the page and try again"
    )]
    Mismatch,
    #[error("the form was sent from another site")]
    CrossOrigin,
}

/// The browser's token if it has a well-formed one, else a new one with its cookie (`Secure`
/// when `secure`: the dashboard is reached over HTTPS, see
/// [`super::session::Sessions::secure`]).
pub fn issue(headers: &HeaderMap, secure: bool) -> Csrf {
    if let Some(token) = cookie_token(headers) {
        return Csrf {
            token,
            set_cookie: None,
        };
    }
    let token = new_token();
    let cookie = format!(
        "{COOKIE_NAME}={token}; Path=/ui; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    Csrf {
        token,
        set_cookie: Some((
            SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("a token cookie is a valid header"),
        )),
    }
}

/// Accepts a form post whose `field` matches the browser's cookie and whose origin, if given,
/// is this host.
pub fn check(headers: &HeaderMap, field: Option<&str>) -> Result<(), CsrfError> {
    if let Some(origin) = headers.get(ORIGIN) {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| url::Url::parse(o).ok())
            .map(|u| match u.port() {
                Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_string(),
            });
        if host.is_none() || origin_host.as_deref() != host {
            return Err(CsrfError::CrossOrigin);
        }
    }
    match (cookie_token(headers), field) {
        (Some(cookie), Some(field)) if same(cookie.as_bytes(), field.as_bytes()) => Ok(()),
        _ => Err(CsrfError::Mismatch),
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_string())
        .filter(|t| t.len() == TOKEN_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_LEN / 2];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares in time that does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn a_new_browser_gets_a_strict_http_only_cookie_and_keeps_it() {
        let first = issue(&HeaderMap::new(), false);
        assert_eq!(first.token.len(), 64);
        let (_, cookie) = first.set_cookie.expect("a cookie is set");
        let cookie = cookie.to_str().unwrap();
        assert!(cookie.starts_with(&format!("rp_csrf={}", first.token)));
        for attribute in ["Path=/ui", "HttpOnly", "SameSite=Strict"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        assert!(!cookie.contains("Secure"), "{cookie}");
        let again = issue(
            &headers(&[("cookie", &format!("other=1; rp_csrf={}", first.token))]),
            false,
        );
        assert_eq!(again.token, first.token);
        assert!(again.set_cookie.is_none());
        assert_ne!(issue(&HeaderMap::new(), false).token, first.token);
    }

    #[test]
    fn behind_https_the_cookie_is_secure() {
        let csrf = issue(&HeaderMap::new(), true);
        let (_, cookie) = csrf.set_cookie.unwrap();
        assert!(cookie.to_str().unwrap().ends_with("; Secure"));
    }

    #[test]
    fn a_post_needs_the_cookie_and_the_same_token_in_the_form() {
        let token = "ab".repeat(32);
        let with_cookie = headers(&[("cookie", &format!("rp_csrf={token}"))]);
        assert_eq!(check(&with_cookie, Some(&token)), Ok(()));
        assert_eq!(
            check(&with_cookie, Some(&"cd".repeat(32))),
            Err(CsrfError::Mismatch)
        );
        assert_eq!(check(&with_cookie, None), Err(CsrfError::Mismatch));
        assert_eq!(
            check(&HeaderMap::new(), Some(&token)),
            Err(CsrfError::Mismatch)
        );
        // A malformed cookie is no token at all.
        let short = headers(&[("cookie", "rp_csrf=abc")]);
        assert_eq!(check(&short, Some("abc")), Err(CsrfError::Mismatch));
    }

    #[test]
    fn a_post_from_another_origin_is_refused() {
        let token = "ab".repeat(32);
        let cookie = format!("rp_csrf={token}");
        let same_site = headers(&[
            ("cookie", &cookie),
            ("host", "dash.example:8080"),
            ("origin", "http://dash.example:8080"),
        ]);
        assert_eq!(check(&same_site, Some(&token)), Ok(()));
        let other = headers(&[
            ("cookie", &cookie),
            ("host", "dash.example:8080"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(check(&other, Some(&token)), Err(CsrfError::CrossOrigin));
        let opaque = headers(&[
            ("cookie", &cookie),
            ("host", "dash.example"),
            ("origin", "null"),
        ]);
        assert_eq!(check(&opaque, Some(&token)), Err(CsrfError::CrossOrigin));
    }
}
