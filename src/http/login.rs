//! Browser logins: `POST /login` trades the token for a random session cookie, `POST /logout`
//! forgets it. The cookie never holds the token; its id lives in memory only, with an expiry.

use crate::core::Core;
use crate::core::auth::Principal;
use crate::core::error::{Code, Error};
use crate::http::ApiError;
use crate::http::conn::ConnState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "ferry_session";

/// How long a browser login lasts.
pub const LOGIN_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most browser logins alive at once; a new one past this evicts the one closest to expiry.
const MAX_LOGINS: usize = 4096;

/// Largest login request body.
const MAX_LOGIN_BODY: usize = 8 * 1024;

/// One login: its expiry and who logged in.
type Login = (Instant, Arc<Principal>);

/// The live browser logins: random cookie id to expiry and principal. Cheap to clone.
#[derive(Clone)]
pub struct Logins {
    inner: Arc<Mutex<HashMap<String, Login>>>,
    ttl: Duration,
    /// Whether cookies say `Secure` (only when served over TLS).
    secure: bool,
}

impl Logins {
    /// An empty table; `secure` adds the `Secure` attribute to cookies.
    pub fn new(ttl: Duration, secure: bool) -> Self {
        Logins {
            inner: Arc::default(),
            ttl,
            secure,
        }
    }

    /// Starts a login of `who` and returns its cookie id (32 random bytes as hex).
    pub fn create(&self, who: Arc<Principal>) -> String {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).expect("the OS random source works");
        let id = hex::encode(b);
        let now = Instant::now();
        let mut map = self.inner.lock().unwrap();
        map.retain(|_, (exp, _)| *exp > now);
        if map.len() >= MAX_LOGINS
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| e.0).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), (now + self.ttl, who));
        id
    }

    /// Who is logged in as `id`, if it is a live login.
    pub fn principal(&self, id: &str) -> Option<Arc<Principal>> {
        let mut map = self.inner.lock().unwrap();
        match map.get(id) {
            Some((exp, who)) if *exp > Instant::now() => Some(who.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends the login `id`, if any.
    pub fn remove(&self, id: &str) {
        self.inner.lock().unwrap().remove(id);
    }

    /// The `Set-Cookie` value that sets `id`.
    fn set_cookie(&self, id: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            self.ttl.as_secs()
        )
    }

    /// The `Set-Cookie` value that clears the cookie.
    fn clear_cookie(&self) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
    }
}

/// The login id in a request's `Cookie` headers, if any.
pub fn cookie_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Who is logged in by the request's cookie, if anyone.
pub fn logged_in(logins: &Logins, headers: &HeaderMap) -> Option<Arc<Principal>> {
    cookie_id(headers).and_then(|id| logins.principal(id))
}

/// Whether the request body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// The `token` field of a login body: JSON `{"token": ...}` or a urlencoded form.
fn token_of(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    if is_json(headers) {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        return v.get("token")?.as_str().map(str::to_string);
    }
    form_field(body, "token")
}

/// A field of a urlencoded form.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// `POST /login`: checks the token (form field or JSON `token`) and sets the session cookie.
/// A form is answered with a redirect (to `/`, or back to the form on a wrong token); JSON with
/// 204 or a 401 error.
pub async fn login(
    State(core): State<Core>,
    State(logins): State<Logins>,
    axum::Extension(conn): axum::Extension<Arc<ConnState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let json = is_json(&headers);
    let body = match axum::body::to_bytes(body, MAX_LOGIN_BODY).await {
        Ok(b) => b,
        Err(_) => return ApiError::new(Code::TooLarge, "login body too large").into_response(),
    };
    let token = token_of(&headers, &body);
    // Only the terminal page is a destination besides the UI: no open redirect.
    let to_term = !json && form_field(&body, "next").as_deref() == Some("term");
    let token = token.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let who = match token {
        Some(t) => core.auth.authenticate(conn.peer.ip(), Some(t)),
        None => Err(Error::new(Code::Unauthorized, "missing token")),
    };
    let who = match who {
        Ok(who) => who,
        Err(e) if json => return ApiError(e).into_response(),
        Err(e) if e.code == Code::RateLimited => {
            return Redirect::to(if to_term {
                "/login?limited=1&next=term"
            } else {
                "/login?limited=1"
            })
            .into_response();
        }
        Err(_) if to_term => return Redirect::to("/login?failed=1&next=term").into_response(),
        Err(_) => return Redirect::to("/login?failed=1").into_response(),
    };
    let id = logins.create(who);
    let mut resp = if json {
        StatusCode::NO_CONTENT.into_response()
    } else if to_term {
        Redirect::to("/term").into_response()
    } else {
        Redirect::to("/").into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&logins.set_cookie(&id)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `POST /logout`: forgets the login and clears the cookie; redirects to the login page.
pub async fn logout(State(logins): State<Logins>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie_id(&headers) {
        logins.remove(id);
    }
    let mut resp = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&logins.clear_cookie()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ferry_session=abc ; b=2"),
        );
        assert_eq!(cookie_id(&h), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("ferry_sessionx=1"));
        assert_eq!(cookie_id(&h), None);
    }

    #[test]
    fn logins_expire_and_end() {
        let who = Arc::new(Principal::admin("a"));
        let l = Logins::new(Duration::from_secs(60), false);
        let id = l.create(who.clone());
        assert_eq!(id.len(), 64);
        assert_eq!(l.principal(&id), Some(who.clone()));
        assert!(l.principal("nope").is_none());
        l.remove(&id);
        assert!(l.principal(&id).is_none());
        let short = Logins::new(Duration::ZERO, false);
        let id = short.create(who);
        assert!(short.principal(&id).is_none());
        assert!(!l.set_cookie("x").contains("Secure"));
        assert!(
            Logins::new(LOGIN_TTL, true)
                .set_cookie("x")
                .ends_with("; Secure")
        );
    }

    #[test]
    fn login_bodies() {
        let form = HeaderMap::new();
        assert_eq!(
            token_of(&form, b"token=a%2Bb+c&x=1").as_deref(),
            Some("a+b c")
        );
        let mut json = HeaderMap::new();
        json.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert_eq!(token_of(&json, br#"{"token":"t"}"#).as_deref(), Some("t"));
        assert_eq!(token_of(&json, b"token=t"), None);
    }
}
