//! The console's sign-in when caller tokens are configured.
//!
//! A browser cannot attach `authorization: Bearer …` to a navigation, so the token is typed
//! once into a form (a POST: never in a URL, where history and proxy logs would keep it) and
//! the answer sets an `HttpOnly`, `SameSite=Strict` cookie scoped to `/ui`. The cookie holds
//! HMAC-SHA256(token, fixed label), not the token: it opens the console only, not the gRPC
//! API, and rotating the token out of `ADGATE_AUTH_TOKENS` ends every session made with it.
//! Nothing here logs the token or the cookie.

use axum::Form;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::ConsoleState;
use super::pages;
use crate::auth::Caller;

/// Name of the session cookie.
pub const COOKIE: &str = "adgate_console";

/// What the session value is derived for; a new label would end every session.
const LABEL: &[u8] = b"adgate console session v1";

/// The cookie value that a sign-in with `token` sets.
fn session_value(token: &[u8]) -> String {
    // HMAC accepts keys of any length; the error arm cannot happen but must not panic.
    match Hmac::<Sha256>::new_from_slice(token) {
        Ok(mut mac) => {
            mac.update(LABEL);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Who the request is signed in as: anonymous when auth is off, the caller of the session's
/// token otherwise, `None` without a valid session.
pub fn session_caller(state: &ConsoleState, headers: &HeaderMap) -> Option<Caller> {
    if !state.tokens.enabled() {
        return Some(Caller::anonymous());
    }
    let presented = cookie(headers, COOKIE)?.as_bytes();
    state
        .tokens
        .caller_where(|t| session_value(t).as_bytes().ct_eq(presented))
}

/// Middleware for every console route but sign-in: the caller goes into the request's
/// extensions (what it may see is decided per route); without a session, pages redirect to
/// the form and the JSON API answers 401.
pub async fn require(State(state): State<ConsoleState>, mut req: Request, next: Next) -> Response {
    if let Some(caller) = session_caller(&state, req.headers()) {
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    let path = req.uri().path();
    if path.starts_with("/ui/api/") {
        let body = serde_json::json!({"error": {"code": 401, "reason": "UNAUTHENTICATED",
            "message": "sign in at /ui/login"}});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    let next = if safe_next(path) { path } else { "/ui" };
    Redirect::to(&format!("/ui/login?next={}", percent_encode(next))).into_response()
}

/// Only console paths are followed after sign-in (no open redirect to another site).
fn safe_next(path: &str) -> bool {
    (path == "/ui" || path.starts_with("/ui/"))
        && !path.contains("//")
        && !path.contains('\\')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b))
}

/// Enough for the paths [`safe_next`] admits (which need none) and anything else it rejects.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/_-.".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// `GET /ui/login`: the form (or straight to the console when auth is off).
pub async fn login_form(
    State(state): State<ConsoleState>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    if !state.tokens.enabled() {
        return Redirect::to("/ui").into_response();
    }
    pages::login(&q.next, None, StatusCode::OK)
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginForm")
            .field("token", &"<redacted>")
            .field("next", &self.next)
            .finish()
    }
}

/// `POST /ui/login`: check the token, set the session cookie, go where the user was going.
pub async fn login(State(state): State<ConsoleState>, Form(form): Form<LoginForm>) -> Response {
    if !state.tokens.enabled() {
        return Redirect::to("/ui").into_response();
    }
    let token = form.token.trim().as_bytes();
    if token.is_empty() || !state.tokens.matches(token) {
        return pages::login(
            &form.next,
            Some("That token is not one of the gateway's caller tokens."),
            StatusCode::UNAUTHORIZED,
        );
    }
    let to = if safe_next(&form.next) {
        form.next.as_str()
    } else {
        "/ui"
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict",
        session_value(token)
    );
    let mut resp = Redirect::to(to).into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            resp.headers_mut().insert(header::SET_COOKIE, v);
            resp
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `POST /ui/logout`: forget the cookie.
pub async fn logout() -> Response {
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("adgate_console=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_value_is_not_the_token_and_depends_on_it() {
        let a = session_value(b"s3cret-token");
        assert_eq!(a.len(), 64);
        assert!(!a.contains("s3cret"));
        assert_ne!(a, session_value(b"other-token"));
        assert_eq!(a, session_value(b"s3cret-token"));
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; adgate_console=abc; y=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "z"), None);
    }

    #[test]
    fn next_only_follows_console_paths() {
        assert!(safe_next("/ui"));
        assert!(safe_next("/ui/batches/bat_0123abc"));
        for bad in [
            "https://evil.example/ui",
            "//evil.example",
            "/ui//evil",
            "/uix",
            "/metrics",
            "/ui/\\evil",
            "/ui/a?b",
            "",
        ] {
            assert!(!safe_next(bad), "{bad}");
        }
    }
}
