//! Helpers of the bad-input suite (`tests/bad_*.rs`): raw TCP frames, raw HTTP requests and
//! condition polls. Each frame and request is written by hand, so the tests see the wire.
#![allow(dead_code)]

use crate::common::{TOKEN, TestServer};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Safety net for every read: a hang fails the test instead of blocking it.
pub const WAIT: Duration = Duration::from_secs(10);

pub use crate::common::raw::*;

/// A hello with the test token.
pub fn good_hello() -> Vec<u8> {
    json_frame(HELLO, 0, &json!({"version": 1, "token": TOKEN}))
}

/// A ping request on `stream`.
pub fn ping(stream: u32) -> Vec<u8> {
    json_frame(REQUEST, stream, &json!({"op": "ping"}))
}

/// A frame as received.
#[derive(Debug)]
pub struct RawFrame {
    /// Kind byte.
    pub kind: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The payload as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{self:?}: payload is not JSON: {e}"))
    }
}

/// What the server did next on a connection.
#[derive(Debug)]
pub enum Next {
    /// A whole frame.
    Frame(RawFrame),
    /// A clean close (EOF between frames).
    Closed,
    /// A reset, or a close inside a frame.
    Broken(String),
}

/// A hand-driven TCP connection.
pub struct Raw {
    /// The socket.
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects to the TCP plane.
    pub async fn connect(s: &TestServer) -> Raw {
        Self::connect_to(&s.addr).await
    }

    /// Connects to `addr`.
    pub async fn connect_to(addr: &str) -> Raw {
        let sock = TcpStream::connect(addr).await.unwrap();
        sock.set_nodelay(true).unwrap();
        Raw {
            sock,
            buf: Vec::new(),
        }
    }

    /// A connection that said hello and got its welcome.
    pub async fn authenticated(s: &TestServer) -> Raw {
        Self::authenticated_to(&s.addr).await
    }

    /// A connection to `addr` that said hello and got its welcome.
    pub async fn authenticated_to(addr: &str) -> Raw {
        let mut raw = Self::connect_to(addr).await;
        raw.send(&good_hello()).await;
        let f = raw.frame().await;
        assert_eq!(
            (f.kind, f.stream),
            (WELCOME, 0),
            "expected a welcome: {f:?}"
        );
        raw
    }

    /// Writes `bytes`; a write error is returned, not a panic (the server may have closed).
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(WAIT, self.sock.write_all(bytes))
            .await
            .map_err(|_| std::io::Error::other("write timed out"))?
    }

    /// Writes `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("write failed");
    }

    /// What comes next, within `WAIT`.
    pub async fn next(&mut self) -> Next {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                assert!(len >= 5, "the server sent a frame length of {len}");
                if self.buf.len() >= 4 + len {
                    let rest = self.buf.split_off(4 + len);
                    let whole = std::mem::replace(&mut self.buf, rest);
                    return Next::Frame(RawFrame {
                        kind: whole[4],
                        stream: u32::from_be_bytes(whole[5..9].try_into().unwrap()),
                        payload: whole[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, self.sock.read(&mut chunk))
                .await
                .expect("no frame and no close from the server within 10 s");
            match n {
                Err(e) => return Next::Broken(e.to_string()),
                Ok(0) if self.buf.is_empty() => return Next::Closed,
                Ok(0) => {
                    return Next::Broken(format!("EOF inside a frame ({} bytes)", self.buf.len()));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame; anything else fails.
    pub async fn frame(&mut self) -> RawFrame {
        match self.next().await {
            Next::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Expects an Error on stream 0 with `code`, then a clean close.
    pub async fn expect_conn_error(&mut self, code: &str) {
        let f = self.frame().await;
        assert_eq!(
            (f.kind, f.stream),
            (ERROR, 0),
            "expected a connection error: {f:?}"
        );
        assert_eq!(f.json()["code"], code, "{f:?}");
        assert!(f.json()["message"].as_str().is_some_and(|m| !m.is_empty()));
        match self.next().await {
            Next::Closed => {}
            other => panic!("expected a close after the error, got {other:?}"),
        }
    }

    /// Expects the End `{}` of a ping on `stream`.
    pub async fn expect_pong(&mut self, stream: u32) {
        let f = self.frame().await;
        assert_eq!((f.kind, f.stream), (END, stream), "expected End: {f:?}");
        assert_eq!(f.json(), json!({}), "{f:?}");
    }
}

/// A fresh connection still says hello and pings: the server is fine.
pub async fn assert_serving(s: &TestServer) {
    let mut raw = Raw::authenticated(s).await;
    raw.send(&ping(1)).await;
    raw.expect_pong(1).await;
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; true if it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP answer read off a raw socket.
#[derive(Debug)]
pub struct HttpAnswer {
    /// Status code (0 when the server closed without answering).
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body as sent (not de-chunked).
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `error.code` of a JSON error body.
    pub fn code(&self) -> String {
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "not JSON: {self:?}"
        );
        let v: Value = serde_json::from_slice(&self.body).unwrap();
        v["error"]["code"].as_str().unwrap().to_string()
    }
}

/// The `host:port` of the HTTP plane.
pub fn http_addr(s: &TestServer) -> String {
    s.http.trim_start_matches("http://").to_string()
}

/// Sends `request` as written on a new connection and reads the answer to EOF (the request
/// should say `Connection: close`).
pub async fn http_raw(s: &TestServer, request: &[u8]) -> HttpAnswer {
    let mut sock = TcpStream::connect(http_addr(s)).await.unwrap();
    // The server may answer and close before it has read everything (a refused head).
    let _ = sock.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, sock.read_to_end(&mut buf))
        .await
        .expect("the server neither answered nor closed");
    parse_answer(&buf)
}

/// Parses one HTTP/1.1 answer; status 0 for no answer at all.
pub fn parse_answer(buf: &[u8]) -> HttpAnswer {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return HttpAnswer {
            status: 0,
            headers: Vec::new(),
            body: buf.to_vec(),
        };
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpAnswer {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

/// A GET of `target` with the token (or `auth` as the Authorization value), `Connection: close`.
pub async fn http_get(s: &TestServer, target: &str, auth: Option<&str>) -> HttpAnswer {
    let auth = match auth {
        Some(a) => format!("Authorization: {a}\r\n"),
        None => String::new(),
    };
    let req = format!("GET {target} HTTP/1.1\r\nHost: ferry\r\n{auth}Connection: close\r\n\r\n");
    http_raw(s, req.as_bytes()).await
}

/// The bearer header value of the test token.
pub fn bearer() -> String {
    format!("Bearer {TOKEN}")
}
