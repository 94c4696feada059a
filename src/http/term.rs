//! The browser terminal over WebSocket (`GET /term/ws`) and the recordings API.
//!
//! Binary messages carry raw terminal bytes both ways; text messages carry JSON control
//! messages (see `docs/protocol.md`). Auth is checked at upgrade time by the router's token
//! middleware; the `Origin` check here refuses other sites' pages.

use crate::core::Core;
use crate::core::audit::Actor;
use crate::core::error::{Code, Error, Result};
use crate::core::term::{Attachment, Input, InputSender, TermEvent, TermSize};
use crate::http::ApiError;
use crate::http::conn::ConnState;
use axum::Json;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Origins allowed to open a terminal besides the request's own host.
#[derive(Clone, Default)]
pub struct AllowedOrigins(pub Arc<Vec<String>>);

/// Query of `GET /term/ws`.
#[derive(Deserialize)]
pub struct TermQuery {
    /// A session to resume.
    session: Option<String>,
    /// Output bytes of that session already seen (replay starts here).
    seq: Option<u64>,
    /// Columns of a new session (default 80).
    cols: Option<i64>,
    /// Rows of a new session (default 24).
    rows: Option<i64>,
}

/// A control message from the client.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    Resize { cols: i64, rows: i64 },
}

/// `GET /term/ws`: upgrades to a WebSocket on a new or resumed shell.
pub async fn ws(
    State(core): State<Core>,
    State(allowed): State<AllowedOrigins>,
    axum::Extension(conn): axum::Extension<Arc<ConnState>>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    Query(q): Query<TermQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> std::result::Result<Response, ApiError> {
    if !origin_allowed(&headers, &allowed.0, conn.tls) {
        return Err(ApiError::new(
            Code::ForbiddenOrigin,
            "the Origin of this request may not open a terminal (see --allow-origin)",
        ));
    }
    let who = actor.principal;
    // Refused before anything else is opened for it (a plain GET learns it too).
    core.term.permit(&who)?;
    let Ok(upgrade) = upgrade else {
        let mut resp = ApiError::new(Code::BadRequest, "GET /term/ws needs a WebSocket upgrade")
            .into_response();
        *resp.status_mut() = axum::http::StatusCode::UPGRADE_REQUIRED;
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return Ok(resp);
    };
    let attachment = match q.session {
        Some(id) => core.term.attach(&who, &id, q.seq)?,
        None => {
            let size = TermSize::new(q.cols.unwrap_or(80), q.rows.unwrap_or(24))?;
            let (actor, guard) = core.open_session("ws", conn.peer.to_string(), who).await;
            core.term.open(actor, guard, size).await?
        }
    };
    // Keystrokes and control messages are small; a client cannot make the server hold more.
    // A small read buffer: tungstenite zero-fills its free part before every read, and the
    // socket is polled after every output message.
    Ok(upgrade
        .read_buffer_size(8 << 10)
        .max_message_size(1 << 20)
        .max_frame_size(1 << 20)
        .on_upgrade(move |socket| run(socket, attachment)))
}

/// Whether the request's `Origin` (if any) is its own (`https://` over TLS) or an allowed origin.
fn origin_allowed(headers: &HeaderMap, allowed: &[String], tls: bool) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true; // not a browser
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim().trim_end_matches('/').eq_ignore_ascii_case(&origin))
    {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    super::origin::same_origin(&origin, host, tls)
}

async fn send_json(socket: &mut WebSocket, v: serde_json::Value) -> bool {
    socket.send(json_msg(v)).await.is_ok()
}

async fn close(socket: WebSocket, reason: &'static str) {
    close_with(socket, 1000, reason).await;
}

async fn close_with(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// Closes a socket whose last read failed: 1009 for a message over the limit (the error type
/// is tungstenite's, which axum does not export, so it is known by its text), else 1002.
async fn close_after_error(socket: WebSocket, e: &axum::Error) {
    let text = e.to_string();
    if text.contains("Space limit exceeded") || text.contains("Message too long") {
        close_with(socket, 1009, "message over 1 MiB").await;
    } else {
        close_with(socket, 1002, "protocol error").await;
    }
}

/// Pumps one WebSocket: output out (taken only as fast as the socket sends it), input in.
async fn run(mut socket: WebSocket, mut att: Attachment) {
    let hello = json!({"type": "session", "id": att.id(), "seq": att.seq()});
    if !send_json(&mut socket, hello).await {
        return;
    }
    if let Some((from, to)) = att.lost()
        && !send_json(&mut socket, json!({"type": "lost", "from": from, "to": to})).await
    {
        return;
    }
    let input = att.input();
    // Input the shell has not taken yet: output keeps flowing while it waits, and no further
    // message is read (the client's socket then backs up, not the server's memory).
    let mut pending: Option<Input> = None;
    // Flow control for browsers, whose WebSocket drains the socket whatever the page keeps up
    // with: a client that acknowledges (`{"type":"ack","seq":N}`, N = output bytes it has
    // shown) gets at most ACK_WINDOW bytes ahead of its last ack, and the PTY waits meanwhile.
    let mut sent = att.seq();
    let mut acked: Option<u64> = None;
    loop {
        // While input waits for the shell, acks behind it on the socket cannot be read: do not
        // wait for them then (backpressure alone bounds the output), or both sides would stall.
        let may_send =
            pending.is_some() || acked.is_none_or(|a| sent.saturating_sub(a) < ACK_WINDOW);
        tokio::select! {
            ev = att.next(), if may_send => {
                let msg = match ev {
                    TermEvent::Output(bytes) => {
                        sent += bytes.len() as u64;
                        Message::Binary(bytes.into())
                    }
                    TermEvent::Lost { from, to } => {
                        sent = to;
                        json_msg(json!({"type": "lost", "from": from, "to": to}))
                    }
                    TermEvent::Exit(exit) => {
                        let msg = json!({"type": "exit", "code": exit.code, "signal": exit.signal});
                        if socket.send(json_msg(msg)).await.is_ok() {
                            close(socket, "shell exited").await;
                        }
                        return;
                    }
                    TermEvent::Taken => {
                        let msg = json!({"type": "taken", "message": "another client resumed this session"});
                        if socket.send(json_msg(msg)).await.is_ok() {
                            close(socket, "taken over").await;
                        }
                        return;
                    }
                };
                if socket.send(msg).await.is_err() {
                    return;
                }
            }
            r = feed(&input, pending.clone()) => match r {
                // Keystrokes the terminal did not take yet wait for their turn.
                Ok(n) => pending = match pending.take() {
                    Some(Input::Bytes(b)) if n < b.len() => Some(Input::Bytes(b.slice(n..))),
                    _ => None,
                },
                Err(e) => {
                    pending = None;
                    if e.code == Code::BadRequest && socket.send(error_msg(&e)).await.is_err() {
                        return;
                    }
                    // Otherwise the shell is gone and its exit message follows from `next`.
                }
            },
            msg = socket.recv(), if pending.is_none() => match msg {
                Some(Ok(Message::Binary(bytes))) => pending = Some(Input::Bytes(bytes)),
                Some(Ok(Message::Text(text))) if ack_of(&text).is_some() => {
                    let seq = ack_of(&text).unwrap_or(0).min(sent);
                    acked = Some(acked.map_or(seq, |a| a.max(seq)));
                }
                Some(Ok(Message::Text(text))) => match control(&text) {
                    Ok(i) => pending = Some(i),
                    Err(e) => {
                        if socket.send(error_msg(&e)).await.is_err() {
                            return;
                        }
                    }
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Err(e)) => {
                    close_after_error(socket, &e).await;
                    return;
                }
                Some(Ok(Message::Close(_))) | None => return,
            },
        }
    }
}

/// How far output may run ahead of a client's last acknowledgement.
const ACK_WINDOW: u64 = 512 * 1024;

/// The `seq` of an acknowledgement message, if `text` is one.
pub fn ack_of(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Ack {
        r#type: String,
        seq: u64,
    }
    serde_json::from_str::<Ack>(text)
        .ok()
        .filter(|a| a.r#type == "ack")
        .map(|a| a.seq)
}

/// Writes `input` to the shell (the bytes it took, 0 for a resize); with nothing to write,
/// never completes. Cancel-safe.
async fn feed(sender: &InputSender, input: Option<Input>) -> Result<usize> {
    match input {
        Some(Input::Bytes(b)) => sender.write(&b).await,
        Some(Input::Resize(size)) => sender.resize(size).map(|()| 0),
        None => std::future::pending().await,
    }
}

/// Parses a control message from the client (`{"type":"resize","cols":C,"rows":R}`).
pub fn control(text: &str) -> Result<Input> {
    match serde_json::from_str::<Control>(text) {
        Ok(Control::Resize { cols, rows }) => Ok(Input::Resize(TermSize::new(cols, rows)?)),
        Err(e) => Err(Error::bad_request(format!("unknown control message: {e}"))),
    }
}

fn json_msg(v: serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

fn error_msg(e: &Error) -> Message {
    json_msg(json!({"type": "error", "code": e.code.as_str(), "message": e.message}))
}

/// `GET /api/v1/recordings`: every terminal recording.
pub async fn recordings(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> std::result::Result<Json<serde_json::Value>, ApiError> {
    let list = core.term.recordings(&actor.principal).await?;
    Ok(Json(json!({ "recordings": list })))
}

/// `GET /api/v1/recordings/{id}`: one recording as an asciicast v2 file.
pub async fn recording(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
) -> std::result::Result<Response, ApiError> {
    let path = core.term.recording_path(&actor.principal, &id).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::io(e, &id))?;
    let len = file.metadata().await.map_err(|e| Error::io(e, &id))?.len();
    // Streamed in chunks: a recording may be large. A live session's file grows meanwhile:
    // the answer is the file as long as it was when asked.
    use tokio::io::AsyncReadExt;
    let chunks = futures_util::stream::unfold(file.take(len), |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut resp = axum::body::Body::from_stream(chunks).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-asciicast"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    // Shell output is anyone's text: never let a browser run it as a page.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;
    use axum::http::HeaderMap;

    fn h(origin: &str, host: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("origin", origin.parse().unwrap());
        m.insert("host", host.parse().unwrap());
        m
    }

    #[test]
    fn same_origin_and_allowed_origins_pass() {
        let ok = |o, host, allowed: &[String], tls| origin_allowed(&h(o, host), allowed, tls);
        assert!(ok("http://127.0.0.1:8080", "127.0.0.1:8080", &[], false));
        assert!(ok("https://ferry.example", "ferry.example:443", &[], false));
        assert!(!ok("http://evil.example", "127.0.0.1:8080", &[], false));
        assert!(!ok("null", "127.0.0.1:8080", &[], false));
        let allowed = vec!["http://ui.example/".to_string()];
        assert!(ok("http://UI.example", "127.0.0.1:8080", &allowed, false));
        assert!(origin_allowed(&HeaderMap::new(), &[], false));
        // Over TLS the server's own pages are https; an allowed origin stays allowed.
        assert!(ok("https://127.0.0.1:8443", "127.0.0.1:8443", &[], true));
        assert!(!ok("http://127.0.0.1:8443", "127.0.0.1:8443", &[], true));
        assert!(ok("http://UI.example", "127.0.0.1:8443", &allowed, true));
    }
}
