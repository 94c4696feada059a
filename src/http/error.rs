//! The HTTP form of the core's errors: `{"error": {"code", "message"}}` with a status per code.

use crate::core::error::{Code, Error};
use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use axum::response::IntoResponse;
use futures_util::TryFutureExt;
use futures_util::future::{BoxFuture, Either, OrElse, Ready, ready};
use std::convert::Infallible;
use std::task::{Context, Poll};

/// An error as the HTTP plane answers it.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError(Error::new(code, message))
    }
}

/// The one mapping from error codes to HTTP statuses.
pub fn status_of(code: Code) -> StatusCode {
    match code {
        Code::Unauthorized => StatusCode::UNAUTHORIZED,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ForbiddenPath | Code::ForbiddenOrigin | Code::Forbidden => StatusCode::FORBIDDEN,
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::ChecksumMismatch | Code::BadRequest => StatusCode::BAD_REQUEST,
        Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Timeout => StatusCode::REQUEST_TIMEOUT,
        Code::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Code::Cancelled | Code::Conflict => StatusCode::CONFLICT,
        Code::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The code for a status that did not come from ferry's own handlers (router, limits, extractors).
fn code_of(status: StatusCode) -> Code {
    match status {
        StatusCode::UNAUTHORIZED => Code::Unauthorized,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::FORBIDDEN => Code::ForbiddenPath,
        StatusCode::PAYLOAD_TOO_LARGE => Code::TooLarge,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => Code::Timeout,
        StatusCode::SERVICE_UNAVAILABLE => Code::Busy,
        StatusCode::TOO_MANY_REQUESTS => Code::RateLimited,
        StatusCode::METHOD_NOT_ALLOWED => Code::MethodNotAllowed,
        StatusCode::CONFLICT => Code::Conflict,
        StatusCode::RANGE_NOT_SATISFIABLE => Code::RangeNotSatisfiable,
        s if s.is_server_error() => Code::Internal,
        _ => Code::BadRequest,
    }
}

/// The JSON body of an error.
pub fn error_body(code: Code, message: &str) -> String {
    serde_json::json!({ "error": { "code": code.as_str(), "message": message } }).to_string()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status = status_of(self.0.code);
        let mut resp = Response::new(Body::from(error_body(self.0.code, &self.0.message)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ferry\""),
            );
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::core::auth::REFILL.as_secs()),
            );
        }
        resp
    }
}

/// What [`json_errors`] gives back: the answer as it is, at once, or its JSON rewrite.
pub type JsonErrors = Either<
    std::future::Ready<Result<axum::response::Response, Infallible>>,
    BoxFuture<'static, Result<axum::response::Response, Infallible>>,
>;

/// Rewrites error answers that did not come from ferry's handlers (an unknown route, a wrong
/// method, a body over the limit, a rejected JSON body, a timeout) into the JSON error form;
/// every other answer passes at once, with no future of its own to allocate.
pub fn json_errors<B>(resp: axum::http::Response<B>) -> JsonErrors
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let resp = resp.map(axum::body::Body::new);
    if !needs_rewrite(&resp) {
        return Either::Left(std::future::ready(Ok(resp)));
    }
    Either::Right(Box::pin(async move { Ok(rewrite(resp).await) }))
}

/// Whether an answer says the request failed (a 4xx or 5xx status).
pub fn is_error(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// An error answer whose body is not JSON yet.
fn needs_rewrite(resp: &axum::response::Response) -> bool {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    is_error(status) && !is_json
}

async fn rewrite(resp: axum::response::Response) -> axum::response::Response {
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.to_string(),
    };
    let mut out = ApiError::new(code_of(status), message).into_response();
    *out.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Wraps a load shedder in [`Busy`].
#[derive(Clone, Copy, Default)]
pub struct BusyLayer;

impl<S> tower::Layer<S> for BusyLayer {
    type Service = Busy<S>;

    fn layer(&self, inner: S) -> Busy<S> {
        Busy {
            inner,
            refused: false,
        }
    }
}

/// Answers 503 `busy` where the service below it (a load shedder, whose only errors are its
/// refusals) refuses a request, in `poll_ready` or in its answer; nothing is boxed.
#[derive(Clone)]
pub struct Busy<S> {
    inner: S,
    refused: bool,
}

type Answer = Result<axum::response::Response, Infallible>;

fn busy(_: axum::BoxError) -> Ready<Answer> {
    ready(Ok(ApiError::new(
        Code::Busy,
        "too many requests at once; retry shortly",
    )
    .into_response()))
}

impl<S> tower::Service<axum::extract::Request> for Busy<S>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = axum::BoxError,
        >,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Either<
        Ready<Answer>,
        OrElse<S::Future, Ready<Answer>, fn(axum::BoxError) -> Ready<Answer>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx).map(|r| {
            self.refused = r.is_err();
            Ok(())
        })
    }

    fn call(&mut self, req: axum::extract::Request) -> Self::Future {
        if std::mem::take(&mut self.refused) {
            return Either::Left(busy("refused".into()));
        }
        Either::Right(self.inner.call(req).or_else(busy as fn(_) -> _))
    }
}
