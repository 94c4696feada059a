//! Downloads handed straight to their handler, ahead of the route table.
//!
//! `GET /files/{path}` is most of what a file server answers. Through axum's router each one
//! was matched against the table, had its path parameter stored in the request's extensions
//! and its route's stack boxed: about 4,000 instructions of a 1 KiB download's 33,500 on the
//! async worker. The route stays in the table (and the OpenAPI document); this only takes the
//! plain cases to the same handler with the same arguments.

use crate::core::Core;
use crate::core::audit::Actor;
use crate::http::files;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use std::convert::Infallible;
use std::task::{Context, Poll};
use tower::Service;

/// The route table, with `GET` and `HEAD` of `/files/{path}` sent to [`files::get_file`]
/// directly, as the table would route them.
#[derive(Clone)]
pub struct Downloads<R> {
    core: Core,
    router: R,
}

impl<R> Downloads<R> {
    /// `router`, with downloads answered from `core` without it.
    pub fn new(core: Core, router: R) -> Self {
        Downloads { core, router }
    }
}

impl<R, B> Service<axum::http::Request<B>> for Downloads<R>
where
    R: Service<axum::http::Request<B>, Response = Response, Error = Infallible>,
    B: axum::body::HttpBody<Data = bytes::Bytes, Error: Into<axum::BoxError>> + Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, R::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.router.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let Some((path, actor)) = download(&req) else {
            return Either::Right(self.router.call(req));
        };
        let core = self.core.clone();
        let head = req.method() == Method::HEAD;
        // The body as the router hands it to a handler.
        let req = req.map(axum::body::Body::new);
        Either::Left(Box::pin(async move {
            let answer = files::get_file(State(core), Extension(actor), Path(path), req).await;
            Ok(as_routed(answer.into_response(), head))
        }))
    }
}

/// What axum's router does to a route's answer on its way out: a `Content-Length` from the
/// body's exact size when the handler set none (a listing, an error), and no body for `HEAD`.
fn as_routed(mut resp: Response, head: bool) -> Response {
    if !resp.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(size) = axum::body::HttpBody::size_hint(resp.body()).exact()
    {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    if head {
        *resp.body_mut() = axum::body::Body::empty();
    }
    resp
}

/// The handler's path argument and actor when `req` is a plain download: `GET` or `HEAD` of
/// `/files/` and a path that percent-decodes to UTF-8, as the router's `{*path}` gives it,
/// from an authenticated request. Anything else is left to the router, errors included.
fn download<B>(req: &axum::http::Request<B>) -> Option<(String, Actor)> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let raw = req.uri().path().strip_prefix("/files/")?;
    if raw.is_empty() {
        return None;
    }
    let path = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?
        .into_owned();
    let actor = req.extensions().get::<Actor>()?.clone();
    Some((path, actor))
}

#[cfg(test)]
mod tests {
    use super::download;
    use crate::core::audit::Actor;
    use axum::extract::Request;

    fn request(method: &str, uri: &str, actor: bool) -> Request {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        if actor {
            req.extensions_mut().insert(Actor {
                session_id: "s1".into(),
                transport: "http",
                peer: "test".into(),
                principal: std::sync::Arc::new(crate::core::auth::Principal::admin("test")),
            });
        }
        req
    }

    /// Plain downloads take the shortcut with the path the router would give; the rest go to
    /// the router.
    #[test]
    fn only_plain_downloads_take_the_shortcut() {
        let path = |m, u, a| download(&request(m, u, a)).map(|(p, _)| p);
        assert_eq!(
            path("GET", "/files/a/b.txt", true).as_deref(),
            Some("a/b.txt")
        );
        assert_eq!(path("HEAD", "/files/a%20b", true).as_deref(), Some("a b"));
        assert_eq!(path("GET", "/files//x?q=1", true).as_deref(), Some("/x"));
        assert_eq!(
            path("GET", "/files/../etc", true).as_deref(),
            Some("../etc")
        );
        assert_eq!(path("GET", "/files/", true), None, "the root's listing");
        assert_eq!(path("GET", "/files", true), None);
        assert_eq!(path("PUT", "/files/a", true), None);
        assert_eq!(path("DELETE", "/files/a", true), None);
        assert_eq!(path("GET", "/files/%ff", true), None, "not UTF-8");
        assert_eq!(path("GET", "/filesx/a", true), None);
        assert_eq!(path("GET", "/files/a", false), None, "no actor");
    }

    /// An answer leaves as the router would let it: with its length, and empty for `HEAD`.
    #[tokio::test]
    async fn answers_leave_as_routed() {
        use axum::response::IntoResponse;
        let listing = || axum::Json(serde_json::json!({"entries": []})).into_response();
        let get = super::as_routed(listing(), false);
        assert_eq!(get.headers()["content-length"], "14");
        let body = axum::body::to_bytes(get.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], br#"{"entries":[]}"#);
        let head = super::as_routed(listing(), true);
        assert_eq!(head.headers()["content-length"], "14");
        let body = axum::body::to_bytes(head.into_body(), 1024).await.unwrap();
        assert!(body.is_empty());
    }
}
