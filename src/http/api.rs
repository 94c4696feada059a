//! The JSON API: listings, live sessions, transfers and checks, the audit log, events, metrics.

use crate::core::Core;
use crate::core::audit::Actor;
use crate::core::auth::Action;
use crate::core::registry::{RegistryEvent, TransferState};
use crate::http::files::Listing;
use crate::http::{ApiError, Shutdown};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// The OpenAPI 3 document of the REST plane.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /healthz`: liveness, without auth.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// `GET /metrics`: Prometheus text (not for the anonymous reader of public read).
pub async fn metrics(State(core): State<Core>, axum::Extension(a): Who) -> Response {
    if let Err(e) = a.require(Action::Browse) {
        return ApiError(e).into_response();
    }
    let mut resp = core.registry.metrics().render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// `GET /api/v1/openapi.json` (not for the anonymous reader of public read).
pub async fn openapi(axum::Extension(a): Who) -> Response {
    if let Err(e) = a.require(Action::Browse) {
        return ApiError(e).into_response();
    }
    let mut resp = OPENAPI.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Query of `/api/v1/files`.
#[derive(Deserialize)]
pub struct PathQuery {
    /// Directory under the root (the root if absent).
    #[serde(default)]
    pub path: String,
}

/// `GET /api/v1/files?path=DIR`: a directory's entries with sizes, mtimes and MD5s.
pub async fn list(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    Query(q): Query<PathQuery>,
) -> Result<Json<Listing>, ApiError> {
    let entries = core.files.list(&actor, &q.path).await?;
    Ok(Json(Listing {
        path: q.path.trim_matches('/').to_string(),
        entries,
    }))
}

/// The caller's token: what the registry views are filtered by.
type Who = axum::Extension<Actor>;

/// `GET /api/v1/sessions`: live sessions of every transport (an admin's view; others see their
/// own token's).
pub async fn sessions(State(core): State<Core>, axum::Extension(a): Who) -> ApiResult {
    Ok(Json(
        json!({ "sessions": core.registry.sessions_for(&a.principal)? }),
    ))
}

/// `GET /api/v1/transfers`: active transfers, then recent ones.
pub async fn transfers(State(core): State<Core>, axum::Extension(a): Who) -> ApiResult {
    Ok(Json(
        json!({ "transfers": core.registry.transfers_for(&a.principal)? }),
    ))
}

/// `GET /api/v1/checks`: recent MD5 checks, newest first.
pub async fn checks(State(core): State<Core>, axum::Extension(a): Who) -> ApiResult {
    Ok(Json(
        json!({ "checks": core.registry.checks_for(&a.principal)? }),
    ))
}

/// A JSON answer or an error.
type ApiResult = Result<Json<serde_json::Value>, ApiError>;

/// Query of `/api/v1/audit`.
#[derive(Deserialize)]
pub struct AuditQuery {
    /// Most entries (default 100, at most 1000); a page never splits a millisecond, so it may
    /// hold fewer, or more when that many entries share one.
    pub limit: Option<u32>,
    /// Only entries strictly older than this, unix ms (the `next_before` of the previous page).
    pub before: Option<i64>,
}

/// Most entries of one page when they all share a millisecond.
const MAX_PAGE: u32 = 1000;

/// `GET /api/v1/audit?limit=&before=`: the audit log, newest first, paged; `next_before` is
/// null on the last page.
pub async fn audit(
    State(core): State<Core>,
    axum::Extension(actor): Who,
    Query(q): Query<AuditQuery>,
) -> ApiResult {
    let who = &actor.principal;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE) as usize;
    // Entries still in the writer's queue are part of the log: flush them first.
    core.audit.flush().await;
    // One more than asked shows whether there is a next page.
    let mut entries = core.audit.recent(who, limit as u32 + 1, q.before).await?;
    let mut next_before = None;
    if entries.len() > limit {
        entries.truncate(limit);
        let last = entries[limit - 1].at;
        // The cursor is a time, so entries sharing the page's last millisecond could not be
        // split between pages without losing some: leave that millisecond to the next page.
        let keep = entries.iter().position(|e| e.at == last).unwrap_or(limit);
        if keep > 0 {
            entries.truncate(keep);
            next_before = Some(last + 1);
        } else {
            // The whole page is one millisecond: it all goes on this page (up to MAX_PAGE).
            entries = core.audit.recent(who, MAX_PAGE + 1, q.before).await?;
            let tied = entries.iter().take_while(|e| e.at == last).count();
            let more = tied < entries.len() || tied > MAX_PAGE as usize;
            entries.truncate(tied.min(MAX_PAGE as usize));
            next_before = more.then_some(last);
        }
    }
    Ok(Json(
        json!({ "entries": entries, "next_before": next_before }),
    ))
}

/// `GET /api/v1/events`: server-sent events. First a `snapshot` of sessions, transfers and
/// checks; then `session_started`, `session_ended`, `transfer` and `check` as they happen, and
/// `progress` (the active transfers) every second while any is moving.
pub async fn events(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    State(Shutdown(stop)): State<Shutdown>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let rx = core.registry.subscribe();
    let who = actor.principal.clone();
    let snapshot = json!({
        "sessions": core.registry.sessions_for(&who)?,
        "transfers": core.registry.transfers_for(&who)?,
        "checks": core.registry.checks_for(&who)?,
    });
    let first = Event::default()
        .event("snapshot")
        .data(snapshot.to_string());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (core, rx, tick, Some(first), stop, who);
    let stream = futures_util::stream::unfold(
        state,
        |(core, mut rx, mut tick, first, stop, who)| async move {
            if let Some(ev) = first {
                return Some((Ok(ev), (core, rx, tick, None, stop, who)));
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    r = rx.recv() => {
                        let ev = match r {
                            Ok(ev) if !ev.visible_to(&who) => continue,
                            Ok(ev) => event_of(&ev),
                            Err(RecvError::Lagged(n)) => Event::default()
                                .event("lagged")
                                .data(json!({ "missed": n }).to_string()),
                            Err(RecvError::Closed) => return None,
                        };
                        return Some((Ok(ev), (core, rx, tick, None, stop, who)));
                    }
                    _ = tick.tick() => {
                        let active: Vec<_> = core
                            .registry
                            .transfers_for(&who)
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|t| t.state == TransferState::InProgress)
                            .collect();
                        if !active.is_empty() {
                            let ev = Event::default()
                                .event("progress")
                                .data(json!({ "transfers": active }).to_string());
                            return Some((Ok(ev), (core, rx, tick, None, stop, who)));
                        }
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn event_of(ev: &RegistryEvent) -> Event {
    let name = match ev {
        RegistryEvent::SessionStarted(_) => "session_started",
        RegistryEvent::SessionEnded { .. } => "session_ended",
        RegistryEvent::Transfer(_) => "transfer",
        RegistryEvent::Check(_) => "check",
    };
    let data = serde_json::to_value(ev).unwrap_or_default();
    Event::default().event(name).data(data.to_string())
}
