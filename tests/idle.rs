//! Idle timeouts: an idle TCP connection is closed with a `timeout` error frame, one running a
//! command is not; an idle HTTP keep-alive connection is closed, an open event stream is not.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Safety net for every wait: a hang fails the test instead of blocking it.
const WAIT: Duration = Duration::from_secs(10);
/// The idle timeout of every server here.
const IDLE: Duration = Duration::from_secs(1);

const HELLO: u8 = 0x01;
const WELCOME: u8 = 0x02;
const REQUEST: u8 = 0x10;
const END: u8 = 0x12;
const ERROR: u8 = 0x13;
const STDOUT: u8 = 0x21;
const DATA: u8 = 0x20;
const WINDOW: u8 = 0x30;

async fn idle_server() -> TestServer {
    TestServer::start_with(|c| {
        c.tcp.idle_timeout = IDLE;
        c.http.idle_timeout = IDLE;
    })
    .await
}

fn frame(kind: u8, stream: u32, v: &Value) -> Vec<u8> {
    let p = serde_json::to_vec(v).unwrap();
    let mut out = ((5 + p.len()) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&p);
    out
}

/// Reads one frame: (kind, stream, payload), or None at end of stream.
async fn read_frame(s: &mut TcpStream) -> Option<(u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    match tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("no frame in time")
    {
        Ok(_) => {}
        Err(_) => return None,
    }
    let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
    let mut payload = vec![0; len - 5];
    s.read_exact(&mut payload).await.unwrap();
    let stream = u32::from_be_bytes(head[5..9].try_into().unwrap());
    Some((head[4], stream, payload))
}

async fn hello(srv: &TestServer) -> TcpStream {
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    let h = json!({"version": 1, "token": TOKEN, "client": "idle-test"});
    s.write_all(&frame(HELLO, 0, &h)).await.unwrap();
    let (kind, _, _) = read_frame(&mut s).await.expect("welcome");
    assert_eq!(kind, WELCOME);
    s
}

/// Polls the audit until `table` has a row where `cond` holds.
async fn wait_for_row(srv: &TestServer, table: &str, cond: &str) {
    let deadline = Instant::now() + WAIT;
    while srv.count(table, cond).await == 0 {
        assert!(Instant::now() < deadline, "no row of {table} where {cond}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the audit until a session of `transport` has ended with `reason`.
async fn wait_for_reason(srv: &TestServer, transport: &str, reason: &str) {
    let cond = format!("transport = '{transport}' AND end_reason = '{reason}'");
    wait_for_row(srv, "sessions", &cond).await;
}

#[tokio::test]
async fn idle_tcp_connection_is_closed_with_a_timeout_frame() {
    let srv = idle_server().await;
    let mut s = hello(&srv).await;
    let t0 = Instant::now();
    let (kind, stream, payload) = read_frame(&mut s).await.expect("an error frame");
    let waited = t0.elapsed();
    assert_eq!((kind, stream), (ERROR, 0));
    let body: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(body["code"], "timeout", "{body}");
    assert!(waited >= IDLE - Duration::from_millis(50), "{waited:?}");
    assert!(read_frame(&mut s).await.is_none(), "closed after the error");
    wait_for_reason(&srv, "tcp", "idle").await;
}

#[tokio::test]
async fn tcp_connection_running_a_command_is_not_idle() {
    let srv = idle_server().await;
    let mut s = hello(&srv).await;
    let req = json!({"op": "exec", "argv": ["sh", "-c", "sleep 2; echo done"]});
    s.write_all(&frame(REQUEST, 1, &req)).await.unwrap();
    let t0 = Instant::now();
    let (kind, stream, out) = read_frame(&mut s).await.expect("output");
    assert_eq!((kind, stream, out.as_slice()), (STDOUT, 1, &b"done\n"[..]));
    let (kind, stream, end) = read_frame(&mut s).await.expect("end");
    assert_eq!(
        (kind, stream),
        (END, 1),
        "{}",
        String::from_utf8_lossy(&end)
    );
    let end: Value = serde_json::from_slice(&end).unwrap();
    assert_eq!(end["exit_code"], 0, "{end}");
    assert!(t0.elapsed() >= Duration::from_secs(2));
    // Once nothing runs, the idle clock starts again.
    let (kind, stream, _) = read_frame(&mut s).await.expect("an error frame");
    assert_eq!((kind, stream), (ERROR, 0));
    assert!(t0.elapsed() >= Duration::from_secs(2) + IDLE - Duration::from_millis(50));
}

#[tokio::test]
async fn frames_keep_a_tcp_connection_open() {
    let srv = idle_server().await;
    let mut s = hello(&srv).await;
    let t0 = Instant::now();
    // A ping every half timeout for two timeouts: never idle.
    for id in 1..=4u32 {
        s.write_all(&frame(REQUEST, id, &json!({"op": "ping"})))
            .await
            .unwrap();
        let (kind, stream, _) = read_frame(&mut s).await.expect("pong");
        assert_eq!((kind, stream), (END, id));
        tokio::time::sleep(IDLE / 2).await;
    }
    assert!(t0.elapsed() >= 2 * IDLE);
    let (kind, _, _) = read_frame(&mut s).await.expect("an error frame");
    assert_eq!(kind, ERROR);
}

/// Sends one keep-alive request and reads its whole response (headers and a small body).
async fn http_get(s: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the response ended");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn idle_http_keep_alive_connection_is_closed() {
    let srv = idle_server().await;
    let mut s = TcpStream::connect(srv.http.trim_start_matches("http://"))
        .await
        .unwrap();
    let r = http_get(&mut s, "/api/v1/sessions").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The connection is reused for a second request...
    let r = http_get(&mut s, "/healthz").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // ...then closed once it has waited a whole timeout for a third.
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("an idle keep-alive connection stays open")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(t0.elapsed() >= IDLE - Duration::from_millis(50));
    wait_for_reason(&srv, "http", "idle").await;
}

#[tokio::test]
async fn open_event_stream_is_not_idle() {
    let srv = idle_server().await;
    let mut events = srv
        .web()
        .get(srv.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    // Past two timeouts, the stream still delivers: a file written now shows up on it.
    tokio::time::sleep(2 * IDLE).await;
    let put = srv
        .web()
        .put(srv.url("/files/after-idle.txt"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let deadline = Instant::now() + WAIT;
    let mut seen = String::new();
    while !seen.contains("after-idle.txt") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, events.chunk())
            .await
            .expect("no event about the upload")
            .expect("the event stream broke")
            .expect("the event stream was closed");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn tcp_peer_that_stops_reading_is_dropped() {
    let srv = idle_server().await;
    let mut s = TcpStream::connect(&srv.addr).await.unwrap();
    // A window of 1 GiB: the server may send all it has, but this client never reads it.
    let h = json!({"version": 1, "token": TOKEN, "window": 1u32 << 30});
    s.write_all(&frame(HELLO, 0, &h)).await.unwrap();
    let req = json!({"op": "exec", "cmd": "head -c 200000000 /dev/zero"});
    s.write_all(&frame(REQUEST, 1, &req)).await.unwrap();
    // Once the socket takes nothing for an idle timeout, the connection and its command end.
    wait_for_reason(&srv, "tcp", "write stalled or failed").await;
    let cond = "exit_code IS NOT NULL OR signal IS NOT NULL";
    let deadline = Instant::now() + WAIT;
    while srv.count("commands", cond).await == 0 {
        assert!(Instant::now() < deadline, "the command still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the audit until an upload of `path` over `transport` is recorded as failed.
async fn wait_for_failed_put(srv: &TestServer, transport: &str, path: &str) {
    let cond = format!(
        "transport = '{transport}' AND path = '{path}' AND direction = 'put' AND result = 'failed'"
    );
    wait_for_row(srv, "transfers", &cond).await;
}

#[tokio::test]
async fn a_silent_tcp_upload_is_dropped() {
    let srv = idle_server().await;
    std::fs::write(srv.path("kept.txt"), b"old").unwrap();
    let mut s = hello(&srv).await;
    let req = json!({"op": "put", "path": "kept.txt", "size": 10});
    s.write_all(&frame(REQUEST, 1, &req)).await.unwrap();
    // Four of the ten bytes, then nothing: the stream is open, so the connection is not idle,
    // but the upload waits for data.
    let mut data = 9u32.to_be_bytes().to_vec();
    data.push(DATA);
    data.extend_from_slice(&1u32.to_be_bytes());
    data.extend_from_slice(b"new!");
    s.write_all(&data).await.unwrap();
    let t0 = Instant::now();
    let (kind, stream, payload) = loop {
        let f = read_frame(&mut s).await.expect("an error frame");
        if f.0 != WINDOW {
            break f; // window grants come first
        }
    };
    assert_eq!(
        (kind, stream),
        (ERROR, 1),
        "{}",
        String::from_utf8_lossy(&payload)
    );
    let body: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(body["code"], "timeout", "{body}");
    assert!(t0.elapsed() >= IDLE - Duration::from_millis(50));
    wait_for_failed_put(&srv, "tcp", "kept.txt").await;
    assert_eq!(std::fs::read(srv.path("kept.txt")).unwrap(), b"old");
    assert_eq!(srv.leftovers("kept.txt"), ["kept.txt"]);
    // The stream is gone, so the connection's own idle clock runs again.
    let (kind, stream, _) = read_frame(&mut s).await.expect("an error frame");
    assert_eq!((kind, stream), (ERROR, 0));
}

#[tokio::test]
async fn a_silent_http_upload_is_dropped() {
    let srv = idle_server().await;
    std::fs::write(srv.path("kept.txt"), b"old").unwrap();
    let mut s = TcpStream::connect(srv.http.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "PUT /files/kept.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 10\r\n\r\nnew!"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("}") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("no answer to a silent upload")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"timeout""#), "{text}");
    assert!(t0.elapsed() >= IDLE - Duration::from_millis(50));
    wait_for_failed_put(&srv, "http", "kept.txt").await;
    assert_eq!(std::fs::read(srv.path("kept.txt")).unwrap(), b"old");
    assert_eq!(srv.leftovers("kept.txt"), ["kept.txt"]);
}
