//! The browser UI: pages and static assets from `web/`, embedded in the binary.

use crate::core::Core;
use crate::core::auth::Role;
use crate::core::error::Code;
use crate::http::ApiError;
use crate::http::auth::principal_of;
use crate::http::conn::ConnState;
use crate::http::login::Logins;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;

/// One embedded file: its path under `/assets/`, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $ct:expr) => {
        Asset {
            path: $path,
            content_type: $ct,
            body: include_bytes!(concat!("../../web/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file under `/assets/`.
static ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("lib.js", JS),
    asset!("dashboard.js", JS),
    asset!("files.js", JS),
    asset!("terminal.js", JS),
    asset!("recordings.js", JS),
    asset!("term-page.js", JS),
    asset!("login.js", JS),
    asset!("style.css", CSS),
    asset!("vendor/xterm.js", JS),
    asset!("vendor/xterm.css", CSS),
    asset!("vendor/addon-fit.js", JS),
    asset!("vendor/spark-md5.min.js", JS),
];

const INDEX: &str = include_str!("../../web/index.html");
const LOGIN: &str = include_str!("../../web/login.html");
const TERM: &str = include_str!("../../web/term.html");

/// Scripts only from ferry itself; xterm.js sets inline styles.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'self'";

fn page(html: &'static str) -> Response {
    let mut resp = axum::response::Html(html).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// Whether the request is authenticated by a login cookie or a bearer token (the anonymous
/// reader of public read does not get the UI).
fn authenticated(core: &Core, logins: &Logins, conn: &ConnState, headers: &HeaderMap) -> bool {
    principal_of(core, logins, conn, &Method::GET, headers).is_ok_and(|p| p.role != Role::Anonymous)
}

/// The extractors a page needs to tell whether its visitor is logged in.
type Visitor = (
    State<Core>,
    State<Logins>,
    axum::Extension<Arc<ConnState>>,
    HeaderMap,
);

/// `body` for a logged-in visitor, else a redirect to `login`.
fn gated(v: Visitor, body: &'static str, login: &'static str) -> Response {
    let (State(core), State(logins), axum::Extension(conn), headers) = v;
    if !authenticated(&core, &logins, &conn, &headers) {
        return Redirect::to(login).into_response();
    }
    page(body)
}

/// `GET /`: the UI, or a redirect to the login page.
pub async fn index(
    core: State<Core>,
    logins: State<Logins>,
    conn: axum::Extension<Arc<ConnState>>,
    headers: HeaderMap,
) -> Response {
    gated((core, logins, conn, headers), INDEX, "/login")
}

/// `GET /term`: a full-window terminal, or a redirect to the login page.
pub async fn term(
    core: State<Core>,
    logins: State<Logins>,
    conn: axum::Extension<Arc<ConnState>>,
    headers: HeaderMap,
) -> Response {
    gated((core, logins, conn, headers), TERM, "/login?next=term")
}

/// `GET /login`: the login form.
pub async fn login_page() -> Response {
    page(LOGIN)
}

/// `GET /assets/{*path}`: an embedded file. Vendored libraries are cached for a day; ferry's
/// own files are revalidated on every load so an upgrade shows at once.
pub async fn asset(Path(path): Path<String>) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.path == path) else {
        return ApiError::new(Code::NotFound, "no such asset").into_response();
    };
    let cache = if a.path.starts_with("vendor/") {
        "public, max-age=86400"
    } else {
        "no-cache"
    };
    let mut resp = a.body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_have_types_and_bodies() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{}", a.path);
            let want = if a.path.ends_with(".css") { CSS } else { JS };
            assert_eq!(a.content_type, want, "{}", a.path);
        }
    }
}
