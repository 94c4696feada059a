//! Reading the rest of a refused request's body before answering, so that a client still
//! sending it gets the answer rather than a connection reset (as nginx's lingering close does,
//! though nginx answers first and reads after).

use crate::http::error::is_error;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, Either};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// Longest time spent reading a refused request's body.
const LINGER_FOR: Duration = Duration::from_secs(2);
/// Most bytes read from a refused request's body.
const LINGER_BYTES: u64 = 64 << 20;

/// The body while the handler has it, and what became of it.
#[derive(Default)]
struct Held {
    body: Option<Body>,
    /// The handler asked for data (with `Expect: 100-continue`, the client then sends it).
    read: bool,
    /// The body ended in an error (cut off, too large, no data for the idle timeout).
    failed: bool,
}

/// A request body that the middleware takes back once the handler is done with it.
struct Lent(Arc<Mutex<Held>>);

impl Lent {
    fn held(&self) -> MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HttpBody for Lent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let mut held = self.held();
        held.read = true;
        let Some(body) = held.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &frame {
            held.failed = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.held()
            .body
            .as_ref()
            .is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let held = self.held();
        held.body
            .as_ref()
            .map(HttpBody::size_hint)
            .unwrap_or_default()
    }
}

/// Wraps a service in [`Linger`].
#[derive(Clone, Copy, Default)]
pub struct LingerLayer;

impl<S> Layer<S> for LingerLayer {
    type Service = Linger<S>;

    fn layer(&self, inner: S) -> Linger<S> {
        Linger(inner)
    }
}

/// Runs the request; when the answer is an error and the body was left unread (a refused
/// upload: no token, a stale offset), reads and discards the rest of it first, for at most
/// [`LINGER_FOR`] and [`LINGER_BYTES`]. Not after a timeout, when the client waits for
/// `100 Continue` before it sends, when the body is bigger than that, or when the body itself
/// failed. A request that announces no body goes straight through: no boxed future, no clone.
///
/// An error answer to a request that announced a body also says `Connection: close`: the body
/// may still be partly unread, and hyper then closes the connection right after the answer.
/// Without the header a client keeps the connection for its next request, which fails.
#[derive(Clone)]
pub struct Linger<S>(S);

impl<S> Service<Request> for Linger<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if !announces_body(req.headers()) {
            return Either::Left(self.0.call(req));
        }
        // The service made ready goes with this request; its clone waits for the next one.
        let clone = self.0.clone();
        let ready = std::mem::replace(&mut self.0, clone);
        Either::Right(Box::pin(async move {
            let mut resp = drain_refused(req, ready).await;
            if is_error(resp.status()) {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        }))
    }
}

/// Whether a request announced a body: a `Content-Length` above zero, or a transfer coding.
fn announces_body(h: &HeaderMap) -> bool {
    let sized = h
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes().iter().any(|b| *b != b'0'));
    sized || h.contains_key(header::TRANSFER_ENCODING)
}

/// The answer of a service, made ready already, that cannot fail.
async fn run<S>(mut inner: S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match inner.call(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

async fn drain_refused<S>(req: Request, inner: S) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    if req.body().is_end_stream() || req.body().size_hint().lower() > LINGER_BYTES {
        return run(inner, req).await;
    }
    let waits_to_send = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let lent = Arc::new(Mutex::new(Held {
        body: Some(body),
        ..Held::default()
    }));
    let resp = run(
        inner,
        Request::from_parts(parts, Body::new(Lent(lent.clone()))),
    )
    .await;
    let status = resp.status();
    if !is_error(status) || status == StatusCode::REQUEST_TIMEOUT {
        return resp;
    }
    // Only a body no one holds any more: an answer still streaming may be reading it.
    let Some(held) =
        Arc::into_inner(lent).map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
    else {
        return resp;
    };
    let unsent = waits_to_send && !held.read;
    match held.body {
        Some(body) if !held.failed && !unsent && !body.is_end_stream() => {
            let mut data = body.into_data_stream();
            let mut read = 0u64;
            let _ = tokio::time::timeout(LINGER_FOR, async {
                while let Some(Ok(chunk)) = data.next().await {
                    read += chunk.len() as u64;
                    if read > LINGER_BYTES {
                        break;
                    }
                }
            })
            .await;
        }
        _ => {}
    }
    resp
}
