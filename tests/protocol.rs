//! The TCP protocol over raw sockets: the hello, malformed and oversized frames, stream ids,
//! flow control, and that a misbehaving peer never disturbs the server for anyone else.
//!
//! Frames are written and read by hand (no `FrameCodec`), so these tests check the wire format
//! itself: `len:u32be | kind:u8 | stream:u32be | payload`, `len` counting kind, stream and payload.

mod common;

use common::*;
use serde_json::{Value, json};
use std::fmt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Safety net for every read: a hang fails the test instead of blocking it.
const WAIT: Duration = Duration::from_secs(10);
/// The server's largest frame (length field value) in the test configuration.
const MAX_FRAME: usize = 1 << 20;

// Kind bytes, spelled out so a change of the wire values is caught here.
const HELLO: u8 = 0x01;
const WELCOME: u8 = 0x02;
const REQUEST: u8 = 0x10;
const END: u8 = 0x12;
const ERROR: u8 = 0x13;
const DATA: u8 = 0x20;
const EOF: u8 = 0x23;
const WINDOW: u8 = 0x30;

/// Encodes one frame.
fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(5 + payload.len()).unwrap();
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Encodes a frame with a JSON payload.
fn json_frame(kind: u8, stream: u32, v: &Value) -> Vec<u8> {
    frame(kind, stream, &serde_json::to_vec(v).unwrap())
}

/// A hello with the test token.
fn good_hello() -> Vec<u8> {
    json_frame(
        HELLO,
        0,
        &json!({"version": 1, "token": TOKEN, "client": "protocol-test"}),
    )
}

/// A ping request on `stream`.
fn ping(stream: u32) -> Vec<u8> {
    json_frame(REQUEST, stream, &json!({"op": "ping"}))
}

/// A frame as received.
struct RawFrame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl RawFrame {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{self:?}: payload is not JSON: {e}"))
    }
}

impl fmt::Debug for RawFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.payload[..self.payload.len().min(200)];
        write!(
            f,
            "frame kind 0x{:02x} stream {} payload {:?} ({} bytes)",
            self.kind,
            self.stream,
            String::from_utf8_lossy(shown),
            self.payload.len()
        )
    }
}

/// A hand-driven connection.
struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(server: &TestServer) -> Raw {
        let sock = TcpStream::connect(&server.addr).await.unwrap();
        sock.set_nodelay(true).unwrap();
        Raw {
            sock,
            buf: Vec::new(),
        }
    }

    /// A connection that has sent a good hello and read its welcome; returns the welcome.
    async fn authenticated(server: &TestServer) -> (Raw, Value) {
        let mut raw = Raw::connect(server).await;
        raw.send(&good_hello()).await;
        let welcome = raw.expect_welcome().await;
        (raw, welcome)
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.sock.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write failed");
    }

    /// The next frame, or `None` on a clean EOF. A reset, a timeout or an EOF inside a frame fail.
    async fn next(&mut self) -> Option<RawFrame> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                assert!(
                    (5..=MAX_FRAME).contains(&len),
                    "the server sent a frame length of {len}"
                );
                if self.buf.len() >= 4 + len {
                    let rest = self.buf.split_off(4 + len);
                    let whole = std::mem::replace(&mut self.buf, rest);
                    return Some(RawFrame {
                        kind: whole[4],
                        stream: u32::from_be_bytes(whole[5..9].try_into().unwrap()),
                        payload: whole[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, self.sock.read(&mut chunk))
                .await
                .expect("no frame and no EOF from the server within 10 s")
                .unwrap_or_else(|e| panic!("read failed (expected a frame or a clean EOF): {e}"));
            if n == 0 {
                assert!(
                    self.buf.is_empty(),
                    "EOF inside a frame: {} bytes pending",
                    self.buf.len()
                );
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame; the connection must not close first.
    async fn frame(&mut self) -> RawFrame {
        self.next()
            .await
            .expect("the server closed the connection; expected a frame")
    }

    async fn expect_welcome(&mut self) -> Value {
        let f = self.frame().await;
        assert_eq!(
            (f.kind, f.stream),
            (WELCOME, 0),
            "expected a welcome: {f:?}"
        );
        let w = f.json();
        assert_eq!(w["version"], 1, "{w}");
        assert!(w["session"].as_str().is_some_and(|s| !s.is_empty()), "{w}");
        assert_eq!(w["limits"]["max_frame"], MAX_FRAME, "{w}");
        assert!(w["limits"]["window"].as_u64().is_some_and(|n| n > 0), "{w}");
        assert_eq!(w["features"], serde_json::json!(["md5_trailer"]), "{w}");
        w
    }

    /// Expects an `End` with `{}` on `stream` (the answer to a ping).
    async fn expect_pong(&mut self, stream: u32) {
        let f = self.frame().await;
        assert_eq!((f.kind, f.stream), (END, stream), "expected End: {f:?}");
        assert_eq!(f.json(), json!({}), "{f:?}");
    }

    /// Expects an `Error` on stream 0 with `code`, then reads to EOF; returns what came after the
    /// error (nothing, for a server that ends the connection with it).
    async fn expect_conn_error(&mut self, code: &str) -> Vec<RawFrame> {
        let f = self.next().await.unwrap_or_else(|| {
            panic!("the server closed the connection without an Error frame (expected {code})")
        });
        assert_eq!(
            (f.kind, f.stream),
            (ERROR, 0),
            "expected a connection Error {code}: {f:?}"
        );
        let body = f.json();
        assert_eq!(body["code"], code, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "the error has no message: {body}"
        );
        let mut after = Vec::new();
        while let Some(f) = self.next().await {
            after.push(f);
        }
        after
    }

    /// Expects an `Error` on stream 0 with `code` as the last frame, then a clean EOF.
    async fn expect_error_then_close(&mut self, code: &str) {
        let after = self.expect_conn_error(code).await;
        assert!(
            after.is_empty(),
            "frames after the connection error {code}, which should have been the last: {after:?}"
        );
    }
}

/// The server still serves: a fresh client and the long-lived one both ping.
async fn assert_healthy(server: &TestServer, keeper: &ferry::client::Client) {
    let fresh = server.client().await;
    tokio::time::timeout(WAIT, fresh.ping())
        .await
        .expect("a fresh client's ping timed out")
        .expect("a fresh client's ping failed");
    tokio::time::timeout(WAIT, keeper.ping())
        .await
        .expect("the long-lived client's ping timed out")
        .expect("the long-lived client's ping failed");
}

/// Sends `bytes` as the very first bytes of a connection and expects `code` then close.
async fn refused_before_hello(server: &TestServer, bytes: &[u8], code: &str) {
    let mut raw = Raw::connect(server).await;
    raw.send(bytes).await;
    raw.expect_error_then_close(code).await;
}

/// Sends `bytes` after a good hello and expects `code` then close.
async fn refused_after_hello(server: &TestServer, bytes: &[u8], code: &str) {
    let (mut raw, _) = Raw::authenticated(server).await;
    raw.send(bytes).await;
    raw.expect_error_then_close(code).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_over_raw_frames() {
    let s = TestServer::start().await;
    let keeper = s.client().await;
    let (mut raw, _) = Raw::authenticated(&s).await;
    raw.send(&ping(1)).await;
    raw.expect_pong(1).await;
    // Any odd or even id works; a request may also come with no fields beyond `op`.
    raw.send(&ping(0xffff_fffe)).await;
    raw.expect_pong(0xffff_fffe).await;
    // A clean close by the client is answered by a clean close.
    raw.sock.shutdown().await.unwrap();
    assert!(
        raw.next().await.is_none(),
        "expected EOF after our shutdown"
    );
    assert_healthy(&s, &keeper).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_hello_within_the_timeout() {
    let s = TestServer::start_with(|cfg| cfg.tcp.hello_timeout = Duration::from_millis(300)).await;
    let keeper = s.client().await;
    let started = Instant::now();
    let mut raw = Raw::connect(&s).await;
    raw.expect_error_then_close("timeout").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "refused after {waited:?}, before the 300 ms hello timeout"
    );
    // A partial hello does not extend the deadline either.
    let mut raw = Raw::connect(&s).await;
    raw.send(&good_hello()[..6]).await;
    raw.expect_error_then_close("timeout").await;
    assert_healthy(&s, &keeper).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn first_frame_must_be_a_hello() {
    let s = TestServer::start().await;
    let keeper = s.client().await;
    refused_before_hello(&s, &ping(1), "bad_request").await;
    assert_healthy(&s, &keeper).await;
    // A hello on a stream other than 0.
    let hello = json_frame(HELLO, 5, &json!({"version": 1, "token": TOKEN}));
    refused_before_hello(&s, &hello, "bad_request").await;
    assert_healthy(&s, &keeper).await;
    // A hello that is not JSON.
    refused_before_hello(&s, &frame(HELLO, 0, b"{version: 1"), "bad_request").await;
    assert_healthy(&s, &keeper).await;
    // A hello without a version.
    let hello = json_frame(HELLO, 0, &json!({"token": TOKEN}));
    refused_before_hello(&s, &hello, "bad_request").await;
    assert_healthy(&s, &keeper).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_token_and_version() {
    let s = TestServer::start().await;
    let keeper = s.client().await;
    let wrong = format!("{TOKEN}x");
    for hello in [
        json!({"version": 1, "token": wrong}),
        json!({"version": 1, "token": &TOKEN[..TOKEN.len() - 1]}),
        json!({"version": 1}),
        json!({"version": 1, "token": null}),
        json!({"version": 1, "token": ""}),
    ] {
        let mut raw = Raw::connect(&s).await;
        raw.send(&json_frame(HELLO, 0, &hello)).await;
        raw.expect_error_then_close("unauthorized").await;
        assert_healthy(&s, &keeper).await;
    }
    for version in [0, 2] {
        let hello = json!({"version": version, "token": TOKEN});
        refused_before_hello(&s, &json_frame(HELLO, 0, &hello), "bad_request").await;
        assert_healthy(&s, &keeper).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_frames() {
    let s = TestServer::start().await;
    let keeper = s.client().await;

    // Before the hello: a huge length is refused at once, without waiting for its bytes.
    let mut huge = 0x7fff_ffffu32.to_be_bytes().to_vec();
    huge.extend_from_slice(&[HELLO, 0, 0, 0, 0]);
    refused_before_hello(&s, &huge, "too_large").await;
    assert_healthy(&s, &keeper).await;

    // After the hello: one byte over the maximum.
    let mut over = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    over.extend_from_slice(&[DATA, 0, 0, 0, 9]);
    refused_after_hello(&s, &over, "too_large").await;
    assert_healthy(&s, &keeper).await;

    // Exactly the maximum is accepted: data on a stream that is not open is dropped,
    // and the connection goes on.
    let (mut raw, _) = Raw::authenticated(&s).await;
    // Length field 1048576: kind, stream and 1048571 bytes of payload.
    raw.send(&frame(DATA, 9, &vec![0x5a; MAX_FRAME - 5])).await;
    raw.send(&ping(1)).await;
    raw.expect_pong(1).await;
    assert_healthy(&s, &keeper).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_shorter_than_their_header() {
    let s = TestServer::start().await;
    let keeper = s.client().await;
    // Length 0: not even a kind byte. Length 3: kind and two bytes of the stream id.
    refused_before_hello(&s, &[0, 0, 0, 0], "bad_request").await;
    assert_healthy(&s, &keeper).await;
    refused_before_hello(&s, &[0, 0, 0, 3, HELLO, 0, 0], "bad_request").await;
    assert_healthy(&s, &keeper).await;
    refused_after_hello(&s, &[0, 0, 0, 0], "bad_request").await;
    assert_healthy(&s, &keeper).await;
    refused_after_hello(&s, &[0, 0, 0, 3, DATA, 0, 0], "bad_request").await;
    assert_healthy(&s, &keeper).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_server_only_kinds() {
    let s = TestServer::start().await;
    let keeper = s.client().await;
    refused_before_hello(&s, &frame(0x7e, 0, b"{}"), "bad_request").await;
    assert_healthy(&s, &keeper).await;
    refused_after_hello(&s, &frame(0x7e, 1, b"{}"), "bad_request").await;
    assert_healthy(&s, &keeper).await;
    refused_after_hello(&s, &frame(0x00, 0, b""), "bad_request").await;
    assert_healthy(&s, &keeper).await;
    // Kinds only a server sends.
    for kind in [WELCOME, END, ERROR] {
        refused_after_hello(&s, &frame(kind, 1, b"{}"), "bad_request").await;
        assert_healthy(&s, &keeper).await;
    }
    // A second hello.
    refused_after_hello(&s, &good_hello(), "bad_request").await;
    assert_healthy(&s, &keeper).await;
    s.stop().await;
}

/// Reads to EOF after the client shut down its write half mid-frame. The server may say why
/// (an Error on stream 0, `bad_request`) or just close; it must not send anything else or hang.
async fn close_after_truncation(raw: &mut Raw) {
    raw.sock.shutdown().await.unwrap();
    if let Some(f) = raw.next().await {
        assert_eq!((f.kind, f.stream), (ERROR, 0), "{f:?}");
        assert_eq!(f.json()["code"], "bad_request", "{f:?}");
        assert!(raw.next().await.is_none(), "expected EOF after the error");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_frame_then_eof() {
    let s = TestServer::start().await;
    let keeper = s.client().await;

    // Before the hello: a length promising more than comes.
    let hello = good_hello();
    let mut raw = Raw::connect(&s).await;
    raw.send(&hello[..hello.len() - 3]).await;
    close_after_truncation(&mut raw).await;
    assert_healthy(&s, &keeper).await;

    // Before the hello: half a length field.
    let mut raw = Raw::connect(&s).await;
    raw.send(&[0, 0]).await;
    close_after_truncation(&mut raw).await;
    assert_healthy(&s, &keeper).await;

    // After the hello: a request cut in its payload, then a data frame cut in its header.
    for cut in [ping(1)[..12].to_vec(), frame(DATA, 1, b"abc")[..6].to_vec()] {
        let (mut raw, _) = Raw::authenticated(&s).await;
        raw.send(&cut).await;
        close_after_truncation(&mut raw).await;
        assert_healthy(&s, &keeper).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_instead_of_a_hello() {
    let s = TestServer::start().await;
    let keeper = s.client().await;
    // "GET " read as a length is 0x47455420, far over the maximum.
    refused_before_hello(&s, b"GET / HTTP/1.1\r\n\r\n", "too_large").await;
    assert_healthy(&s, &keeper).await;
    // A TLS ClientHello starts 16 03 01 LL: a length of about 369 MB.
    refused_before_hello(&s, &[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00], "too_large").await;
    assert_healthy(&s, &keeper).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_one_byte_at_a_time() {
    let s = TestServer::start().await;
    let keeper = s.client().await;
    let mut raw = Raw::connect(&s).await;
    for b in good_hello() {
        raw.send(&[b]).await;
        raw.sock.flush().await.unwrap();
    }
    raw.expect_welcome().await;
    // And a request split the same way, header and payload.
    for b in ping(7) {
        raw.send(&[b]).await;
        raw.sock.flush().await.unwrap();
    }
    raw.expect_pong(7).await;
    assert_healthy(&s, &keeper).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn several_frames_in_one_write() {
    let s = TestServer::start().await;
    let keeper = s.client().await;
    let mut raw = Raw::connect(&s).await;
    let mut glued = good_hello();
    glued.extend_from_slice(&ping(1));
    raw.send(&glued).await;
    raw.expect_welcome().await;
    raw.expect_pong(1).await;

    // Two requests and half of a third in one write, the rest in another.
    let mut glued = ping(3);
    glued.extend_from_slice(&ping(5));
    let third = ping(7);
    glued.extend_from_slice(&third[..7]);
    raw.send(&glued).await;
    raw.send(&third[7..]).await;
    let mut answered = Vec::new();
    for _ in 0..3 {
        let f = raw.frame().await;
        assert_eq!(f.kind, END, "{f:?}");
        assert_eq!(f.json(), json!({}), "{f:?}");
        answered.push(f.stream);
    }
    answered.sort_unstable();
    assert_eq!(answered, [3, 5, 7]);
    assert_healthy(&s, &keeper).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn request_stream_ids() {
    let s = TestServer::start().await;
    let keeper = s.client().await;

    // Stream 0 is the connection itself.
    refused_after_hello(&s, &ping(0), "bad_request").await;
    assert_healthy(&s, &keeper).await;

    // An id still in use: an upload waiting for its bytes keeps stream 1 open.
    let (mut raw, _) = Raw::authenticated(&s).await;
    let put = json!({"op": "put", "path": "open.bin", "size": 10});
    let mut bytes = json_frame(REQUEST, 1, &put);
    bytes.extend_from_slice(&ping(1));
    raw.send(&bytes).await;
    let after = raw.expect_conn_error("bad_request").await;
    // The server has closed: the abandoned upload left nothing behind.
    assert_eq!(s.leftovers("open.bin"), Vec::<String>::new());
    assert_healthy(&s, &keeper).await;
    assert!(
        after.is_empty(),
        "frames after the connection error, which should have been the last: {after:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn put_beyond_the_window() {
    // A window smaller than a frame, so the excess can be sent in one frame: the check cannot
    // then race with the server granting more as it writes.
    let s = TestServer::start_with(|cfg| cfg.tcp.window = 64 * 1024).await;
    let keeper = s.client().await;
    let (mut raw, welcome) = Raw::authenticated(&s).await;
    let window = welcome["limits"]["window"].as_u64().unwrap() as usize;
    assert_eq!(window, 64 * 1024, "{welcome}");
    let put = json!({"op": "put", "path": "over.bin", "size": window + 1});
    let mut bytes = json_frame(REQUEST, 1, &put);
    bytes.extend_from_slice(&frame(DATA, 1, &random_bytes(window + 1, 7)));
    raw.send(&bytes).await;
    let after = raw.expect_conn_error("bad_request").await;
    assert_eq!(s.leftovers("over.bin"), Vec::<String>::new());
    assert_healthy(&s, &keeper).await;

    // The same upload within the window succeeds (so the refusal above is about the window).
    let (mut ok, _) = Raw::authenticated(&s).await;
    let put = json!({"op": "put", "path": "fits.bin", "size": window});
    let mut bytes = json_frame(REQUEST, 1, &put);
    bytes.extend_from_slice(&frame(DATA, 1, &random_bytes(window, 7)));
    ok.send(&bytes).await;
    let end = loop {
        let f = ok.frame().await;
        assert_eq!(f.stream, 1, "{f:?}");
        match f.kind {
            WINDOW => continue,
            END => break f.json(),
            _ => panic!("unexpected {f:?}"),
        }
    };
    assert_eq!(end["size"], window, "{end}");
    assert_eq!(
        std::fs::read(s.path("fits.bin")).unwrap(),
        random_bytes(window, 7)
    );

    assert!(
        after.is_empty(),
        "frames after the connection error, which should have been the last: {after:?}"
    );
    s.stop().await;
}

/// Sends a whole put on `stream` (request, data, then an `Eof` with `eof` as its payload) and
/// returns the stream's last frame (its `End` or `Error`), past the window grants.
async fn put_then_eof(
    raw: &mut Raw,
    stream: u32,
    req: &Value,
    data: &[u8],
    eof: &[u8],
) -> RawFrame {
    let mut bytes = json_frame(REQUEST, stream, req);
    bytes.extend_from_slice(&frame(DATA, stream, data));
    bytes.extend_from_slice(&frame(EOF, stream, eof));
    raw.send(&bytes).await;
    loop {
        let f = raw.frame().await;
        assert_eq!(f.stream, stream, "{f:?}");
        if f.kind != WINDOW {
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn put_with_a_trailing_md5() {
    let s = TestServer::start().await;
    let (mut raw, _) = Raw::authenticated(&s).await;
    let old = random_bytes(1000, 1);
    std::fs::write(s.path("t.bin"), &old).unwrap();
    let new = random_bytes(100_000, 2);
    std::fs::write(s.data.join("new.bin"), &new).unwrap();
    let md5 = md5sum(&s.data.join("new.bin"));
    let req = json!({"op": "put", "path": "t.bin", "size": new.len(), "md5_trailer": true});
    let untouched = |s: &TestServer| {
        assert_eq!(std::fs::read(s.path("t.bin")).unwrap(), old);
        assert_eq!(s.leftovers("t.bin"), ["t.bin"]);
    };

    // A wrong MD5 after the bytes: refused, and the old file stays as it was.
    let wrong = json!({"md5": "0123456789abcdef0123456789abcdef"}).to_string();
    let f = put_then_eof(&mut raw, 1, &req, &new, wrong.as_bytes()).await;
    assert_eq!(
        (f.kind, f.json()["code"].as_str()),
        (ERROR, Some("checksum_mismatch")),
        "{f:?}"
    );
    untouched(&s);

    // No MD5 at all after the bytes, or one that is not hex: nothing verified, nothing stored.
    for (stream, eof) in [(3, b"".as_slice()), (5, br#"{"md5": "xyz"}"#.as_slice())] {
        let f = put_then_eof(&mut raw, stream, &req, &new, eof).await;
        assert_eq!(
            (f.kind, f.json()["code"].as_str()),
            (ERROR, Some("bad_request")),
            "{f:?}"
        );
        untouched(&s);
    }

    // An MD5 both up front and after: refused before any byte is taken.
    let both = json!({"op": "put", "path": "t.bin", "size": 1, "md5": md5, "md5_trailer": true});
    raw.send(&json_frame(REQUEST, 7, &both)).await;
    let f = raw.frame().await;
    assert_eq!(
        (f.stream, f.kind, f.json()["code"].as_str()),
        (7, ERROR, Some("bad_request")),
        "{f:?}"
    );
    untouched(&s);

    // The right MD5 after the bytes: stored, and the End names it.
    let right = json!({"md5": md5}).to_string();
    let f = put_then_eof(&mut raw, 9, &req, &new, right.as_bytes()).await;
    assert_eq!(f.kind, END, "{f:?}");
    assert_eq!(f.json()["md5"], md5.as_str(), "{f:?}");
    assert_eq!(std::fs::read(s.path("t.bin")).unwrap(), new);
    assert_eq!(s.leftovers("t.bin"), ["t.bin"]);
    s.stop().await;
}

/// One misbehaving connection of each kind at once, while a good client keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_peers_at_once_do_not_disturb_others() {
    let s = std::sync::Arc::new(
        TestServer::start_with(|cfg| cfg.tcp.hello_timeout = Duration::from_millis(300)).await,
    );
    let keeper = s.client().await;
    let before: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "timeout"),
        (ping(1), "bad_request"),
        (
            json_frame(HELLO, 0, &json!({"version": 1, "token": "nope"})),
            "unauthorized",
        ),
        (
            json_frame(HELLO, 0, &json!({"version": 2, "token": TOKEN})),
            "bad_request",
        ),
        (0x7fff_ffffu32.to_be_bytes().to_vec(), "too_large"),
        (vec![0, 0, 0, 0], "bad_request"),
        (frame(0x7e, 0, b""), "bad_request"),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "too_large"),
    ];
    let after: Vec<(Vec<u8>, &str)> = vec![
        (((MAX_FRAME + 1) as u32).to_be_bytes().to_vec(), "too_large"),
        (vec![0, 0, 0, 3, DATA, 0, 0], "bad_request"),
        (frame(0x7e, 1, b""), "bad_request"),
        (ping(0), "bad_request"),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..3 {
        for (bytes, code) in before.iter().cloned() {
            let s = s.clone();
            tasks.spawn(async move {
                let mut raw = Raw::connect(&s).await;
                if !bytes.is_empty() {
                    raw.send(&bytes).await;
                }
                raw.expect_error_then_close(code).await;
            });
        }
        for (bytes, code) in after.iter().cloned() {
            let s = s.clone();
            tasks.spawn(async move { refused_after_hello(&s, &bytes, code).await });
        }
        let s2 = s.clone();
        tasks.spawn(async move {
            let (mut raw, _) = Raw::authenticated(&s2).await;
            raw.send(&ping(round + 1)).await;
            raw.expect_pong(round + 1).await;
        });
        keeper.ping().await.unwrap();
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_healthy(&s, &keeper).await;
    let Ok(s) = std::sync::Arc::try_unwrap(s) else {
        panic!("a task still holds the server")
    };
    s.stop().await;
}

/// Before it authenticates, a peer may announce no more than a small hello: a length that is
/// fine after the hello (64 KiB) is refused before it, and nothing is buffered for it.
#[tokio::test(flavor = "multi_thread")]
async fn big_frames_are_refused_before_the_hello() {
    let s = TestServer::start().await;
    let mut raw = Raw::connect(&s).await;
    raw.send(&(64u32 * 1024).to_be_bytes()).await;
    raw.expect_conn_error("too_large").await;
    s.client().await.ping().await.unwrap();
    s.stop().await;
}
