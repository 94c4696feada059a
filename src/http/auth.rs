//! Bearer-token authentication of every HTTP request but `/healthz`.

use crate::core::Core;
use crate::core::error::Code;
use crate::http::ApiError;
use crate::http::conn::ConnState;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The token presented in `Authorization: Bearer <token>`, if any.
pub fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks the token; on success the request carries the connection's session [`Actor`](crate::core::audit::Actor).
pub async fn require_token(State(core): State<Core>, mut req: Request, next: Next) -> Response {
    if !core.auth.check(bearer(&req)) {
        let message = if req.headers().contains_key(header::AUTHORIZATION) {
            "wrong token"
        } else {
            "missing token: send Authorization: Bearer <token>"
        };
        return ApiError::new(Code::Unauthorized, message).into_response();
    }
    let Some(conn) = req.extensions().get::<Arc<ConnState>>().cloned() else {
        return ApiError::new(Code::Internal, "request without a connection").into_response();
    };
    let actor = conn.session(&core).await;
    req.extensions_mut().insert(actor);
    next.run(req).await
}
