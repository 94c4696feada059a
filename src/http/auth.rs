//! Authentication of every HTTP request but `/healthz` and the login pages: a bearer token, or
//! a browser login cookie (with a CSRF rule for requests that change state).

use crate::core::Core;
use crate::core::auth::Principal;
use crate::core::error::{Code, Error};
use crate::http::ApiError;
use crate::http::conn::ConnState;
use crate::http::login::{Logins, logged_in};
use crate::http::origin::same_origin;
use axum::http::{HeaderMap, Method, Request, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either, Ready, ready};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The header a browser page sends on requests that change state, proving it is same-origin:
/// a cross-site page cannot set it without a CORS preflight, which ferry never grants.
pub const X_FERRY: &str = "x-ferry";

/// The token presented in `Authorization: Bearer <token>`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Who sent a request: its bearer token (a wrong one is refused even with a valid cookie),
/// else its login cookie (with the CSRF rule for writes), else the anonymous reader when
/// public read is on. Tokens in the query string are never read.
pub fn principal_of(
    core: &Core,
    logins: &Logins,
    conn: &ConnState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Arc<Principal>, Error> {
    let peer = conn.peer.ip();
    if headers.contains_key(header::AUTHORIZATION) {
        let Some(token) = bearer(headers) else {
            return Err(Error::new(
                Code::Unauthorized,
                "unreadable Authorization header: send Authorization: Bearer <token>",
            ));
        };
        return core.auth.authenticate_on(peer, token, &conn.proven);
    }
    if let Some(who) = logged_in(logins, headers) {
        if !csrf_ok(method, headers, conn.tls) {
            return Err(Error::new(
                Code::ForbiddenOrigin,
                "cross-site request refused: send X-Ferry: 1 (or a JSON body) from the same origin",
            ));
        }
        return Ok(who);
    }
    core.auth.anonymous().ok_or_else(|| {
        Error::new(
            Code::Unauthorized,
            "missing token: send Authorization: Bearer <token>, or log in at /login",
        )
    })
}

/// Whether a cookie-authenticated request may change state: a GET or HEAD always may; other
/// methods must not come from another origin, and must show they were sent by script (an
/// `X-Ferry` header or a JSON body) or by a same-origin page (an `Origin` equal to the host,
/// `https://` only when the connection is `tls`).
pub fn csrf_ok(method: &Method, headers: &HeaderMap, tls: bool) -> bool {
    if *method == Method::GET || *method == Method::HEAD {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let same_origin = match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => None,
        Some(Ok(origin)) => Some(host.is_some_and(|host| same_origin(origin, host, tls))),
        Some(Err(_)) => Some(false),
    };
    if same_origin == Some(false) {
        return false;
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    same_origin == Some(true) || json || headers.contains_key(X_FERRY)
}

/// Wraps the router in [`RequireToken`].
#[derive(Clone)]
pub struct RequireTokenLayer {
    core: Core,
    logins: Logins,
}

impl RequireTokenLayer {
    /// Checks requests against `core`'s tokens and the browser `logins`.
    pub fn new(core: Core, logins: Logins) -> RequireTokenLayer {
        RequireTokenLayer { core, logins }
    }
}

impl<S> Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> RequireToken<S> {
        RequireToken {
            inner,
            core: self.core.clone(),
            logins: self.logins.clone(),
        }
    }
}

/// Authenticates every request but those for the public paths (see
/// [`is_public`](crate::http::routes::is_public) and [`principal_of`]); on success the request
/// carries the connection's session [`Actor`](crate::core::audit::Actor) acting as the
/// request's principal. Only a connection's first request, which opens its session, waits.
#[derive(Clone)]
pub struct RequireToken<S> {
    inner: S,
    core: Core,
    logins: Logins,
}

type Answer = Result<Response, Infallible>;

impl<S, B> Service<Request<B>> for RequireToken<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Either<Ready<Answer>, S::Future>, BoxFuture<'static, Answer>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if crate::http::routes::is_public(req.uri().path()) {
            return Either::Left(Either::Right(self.inner.call(req)));
        }
        let refuse = |e: Error| Either::Left(Either::Left(ready(Ok(ApiError(e).into_response()))));
        let Some(conn) = req.extensions().get::<Arc<ConnState>>().cloned() else {
            return refuse(Error::new(Code::Internal, "request without a connection"));
        };
        let who = match principal_of(&self.core, &self.logins, &conn, req.method(), req.headers()) {
            Ok(who) => who,
            Err(e) => return refuse(e),
        };
        if let Some(actor) = conn.opened_session(&who) {
            req.extensions_mut().insert(actor);
            return Either::Left(Either::Right(self.inner.call(req)));
        }
        // The service made ready goes with this request; its clone waits for the next one.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let core = self.core.clone();
        Either::Right(Box::pin(async move {
            let actor = conn.session(&core, who).await;
            req.extensions_mut().insert(actor);
            ready.call(req).await
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn csrf_ok(method: &Method, headers: &HeaderMap) -> bool {
        super::csrf_ok(method, headers, false)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn csrf_rule() {
        assert!(csrf_ok(&Method::GET, &headers(&[])));
        assert!(!csrf_ok(&Method::POST, &headers(&[])));
        assert!(!csrf_ok(
            &Method::POST,
            &headers(&[("content-type", "text/plain")])
        ));
        assert!(csrf_ok(&Method::PUT, &headers(&[("x-ferry", "1")])));
        assert!(csrf_ok(
            &Method::POST,
            &headers(&[("content-type", "application/json")])
        ));
        assert!(csrf_ok(
            &Method::DELETE,
            &headers(&[("origin", "http://127.0.0.1:8080")])
        ));
        assert!(!csrf_ok(
            &Method::DELETE,
            &headers(&[("origin", "http://evil.example"), ("x-ferry", "1")])
        ));
        assert!(!csrf_ok(
            &Method::POST,
            &headers(&[("origin", "null"), ("content-type", "application/json")])
        ));
        // Over TLS only the https origin is the server's own.
        let plain_page = headers(&[("origin", "http://127.0.0.1:8080")]);
        assert!(!super::csrf_ok(&Method::DELETE, &plain_page, true));
        let tls_page = headers(&[("origin", "https://127.0.0.1:8080")]);
        assert!(super::csrf_ok(&Method::DELETE, &tls_page, true));
    }
}
