//! Reading the rest of a refused request's body before answering, so that a client still
//! sending it gets the answer rather than a connection reset (nginx's lingering close).

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

/// Longest time spent reading a refused request's body.
const LINGER_FOR: Duration = Duration::from_secs(2);
/// Most bytes read from a refused request's body.
const LINGER_BYTES: u64 = 64 << 20;

/// A request body that the middleware takes back once the handler is done with it.
struct Lent(Arc<Mutex<Option<Body>>>);

impl HttpBody for Lent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let mut body = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let body = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let body = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        body.as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

/// Runs the request; when the answer is an error and the body was left unread (a refused
/// upload: no token, a stale offset), reads and discards the rest of it first, for at most
/// [`LINGER_FOR`] and [`LINGER_BYTES`]. A request without a body costs nothing more.
pub async fn linger(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let lent = Arc::new(Mutex::new(Some(body)));
    let resp = next
        .run(Request::from_parts(parts, Body::new(Lent(lent.clone()))))
        .await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    // Only a body no one holds any more: an answer still streaming may be reading it.
    let left = Arc::into_inner(lent)
        .and_then(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
        .filter(|b| !b.is_end_stream());
    if let Some(body) = left {
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
    resp
}
