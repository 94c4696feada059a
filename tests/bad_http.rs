//! Bad HTTP requests: range floods, oversized and slow headers, a cross-site form aimed at
//! exec, and tokens in the query string. The expected answers are listed in docs/security.md
//! ("Bad-input suite"); wrong methods and bearer-token shapes are covered by tests/http.rs.

mod bad;
mod common;

use bad::*;
use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A GET of `/files/r.bin` with a `Range` header.
async fn ranged(s: &TestServer, range: &str) -> HttpAnswer {
    let req = format!(
        "GET /files/r.bin HTTP/1.1\r\nHost: ferry\r\nAuthorization: {}\r\nRange: {range}\r\nConnection: close\r\n\r\n",
        bearer()
    );
    http_raw(s, req.as_bytes()).await
}

/// Several ranges, overlapping or not, 1000 of them included, get the whole file once (200,
/// no multipart body, no `Content-Range`); a malformed one among them gets 416.
#[tokio::test(flavor = "multi_thread")]
async fn many_and_overlapping_ranges_get_the_whole_file() {
    let s = TestServer::start().await;
    let data = random_bytes(4000, 3);
    std::fs::write(s.path("r.bin"), &data).unwrap();
    let thousand = (0..1000)
        .map(|i| format!("{}-{}", i * 3, i * 3))
        .collect::<Vec<_>>();
    let same = vec!["0-3999"; 1000];
    for range in [
        format!("bytes={}", thousand.join(",")),
        format!("bytes={}", same.join(",")),
        "bytes=0-10,5-15".to_string(),
        "bytes=0-,0-".to_string(),
    ] {
        let started = Instant::now();
        let r = ranged(&s, &range).await;
        assert_eq!(r.status, 200, "{}...", &range[..40.min(range.len())]);
        assert!(r.header("content-range").is_none());
        assert_eq!(r.header("content-length"), Some("4000"));
        assert_eq!(r.body, data, "the whole file, once");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let r = ranged(&s, "bytes=0-1,x-2").await;
    assert_eq!((r.status, r.code()), (416, "range_not_satisfiable".into()));
    s.stop().await;
}

/// 64 KiB of headers is refused by hyper before ferry sees the request: `431 Request Header
/// Fields Too Large`, an empty body (not JSON: hyper writes it) and a close. Hyper reads a
/// request head into a 64 KiB buffer and allows 100 headers: 1024 headers of 64 bytes, 101
/// tiny ones, or one header of 128 KiB are all 431. (One header of exactly 64 KiB sits on the
/// limit: it passes when the head is complete by the time the buffer fills.)
#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_kib_of_headers_get_431() {
    let s = TestServer::start().await;
    let one = format!(
        "GET /healthz HTTP/1.1\r\nHost: ferry\r\nX-Big: {}\r\n\r\n",
        "a".repeat(128 * 1024)
    );
    let many: String = (0..1024)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(58)))
        .collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: ferry\r\n{many}\r\n");
    assert!(many.len() >= 64 * 1024);
    // Just under the buffer, but over hyper's 100 headers.
    let count: String = (0..101).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let count = format!("GET /healthz HTTP/1.1\r\nHost: ferry\r\n{count}\r\n");
    for req in [one, many, count] {
        let r = http_raw(&s, req.as_bytes()).await;
        assert_eq!(r.status, 431, "{r:?}");
        assert_eq!(r.header("connection"), Some("close"));
        assert!(r.body.is_empty());
    }
    let r = http_get(&s, "/healthz", None).await;
    assert_eq!(r.status, 200);
    s.stop().await;
}

/// Headers sent one byte at a time are cut off when the header timeout has passed since the
/// request began, however steadily the bytes come.
#[tokio::test(flavor = "multi_thread")]
async fn a_header_slowloris_is_cut_at_the_header_timeout() {
    let s = TestServer::start_with(|c| c.http.header_timeout = Duration::from_millis(800)).await;
    let mut sock = tokio::net::TcpStream::connect(http_addr(&s)).await.unwrap();
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: ferry\r\nX-Slow: {}\r\n\r\n",
        "z".repeat(100)
    );
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut sent = 0;
    loop {
        if sent < req.len()
            && sock
                .write_all(&req.as_bytes()[sent..sent + 1])
                .await
                .is_ok()
        {
            sent += 1;
        }
        let mut chunk = [0u8; 1024];
        // Pacing only: a byte every 100 ms (the whole request would take 13 s).
        tokio::select! {
            n = sock.read(&mut chunk) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        assert!(
            started.elapsed() < WAIT,
            "still open after {:?}",
            started.elapsed()
        );
    }
    let waited = started.elapsed();
    assert!(sent < req.len(), "the whole request went out");
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "closed after {waited:?} with an 800 ms header timeout"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    s.stop().await;
}

/// A page of another site posts a form to exec with the browser's login cookie: refused with
/// 403 `forbidden_origin` before anything runs, whatever the body says.
#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_form_post_to_exec_is_refused() {
    let s = TestServer::start().await;
    let login = format!(
        "POST /login HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\ntoken={TOKEN}",
        TOKEN.len() + 6
    );
    let r = http_raw(&s, login.as_bytes()).await;
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let host = http_addr(&s);
    for (ctype, origin, body) in [
        (
            "application/x-www-form-urlencoded",
            "https://evil.example",
            "cmd=touch+pwned".to_string(),
        ),
        // A form can shape its body as JSON (exec reads JSON whatever the Content-Type).
        (
            "application/x-www-form-urlencoded",
            "https://evil.example",
            r#"{"cmd":"touch pwned","x":"="}"#.to_string(),
        ),
        (
            "text/plain",
            "https://evil.example",
            r#"{"cmd":"touch pwned"}"#.to_string(),
        ),
        (
            "application/x-www-form-urlencoded",
            "null",
            r#"{"cmd":"touch pwned"}"#.to_string(),
        ),
        // Same host name, other scheme-less spelling or port: not the same origin.
        (
            "application/x-www-form-urlencoded",
            "http://ferry.evil.example",
            r#"{"cmd":"touch pwned"}"#.to_string(),
        ),
    ] {
        let req = format!(
            "POST /api/v1/exec HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: {origin}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let r = http_raw(&s, req.as_bytes()).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "forbidden_origin".into()),
            "{ctype} {origin} {body}"
        );
    }
    // The cookie itself is good: a same-origin JSON request runs (so the refusals are the rule).
    let body = r#"{"cmd":"echo ok"}"#;
    let req = format!(
        "POST /api/v1/exec HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: http://{host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(http_raw(&s, req.as_bytes()).await.status, 200);
    assert!(!s.path("pwned").exists(), "a cross-site form ran a command");
    assert_eq!(s.count("commands", "command LIKE '%pwned%'").await, 0);
    s.stop().await;
}

/// The API takes its token from `Authorization` only: `?token=` and `?access_token=` with the
/// right token are 401 `unauthorized`, on reads, downloads, uploads and exec.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_in_the_query_string_are_not_accepted() {
    let s = TestServer::start().await;
    std::fs::write(s.path("f.txt"), b"x").unwrap();
    for param in ["token", "access_token", "bearer", "auth"] {
        for (method, path) in [
            ("GET", "/api/v1/sessions"),
            ("GET", "/files/f.txt"),
            ("PUT", "/files/new.txt"),
            ("POST", "/api/v1/exec"),
            ("GET", "/metrics"),
        ] {
            let body = r#"{"cmd":"touch pwned"}"#;
            let req = format!(
                "{method} {path}?{param}={TOKEN} HTTP/1.1\r\nHost: ferry\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let r = http_raw(&s, req.as_bytes()).await;
            assert_eq!(
                (r.status, r.code()),
                (401, "unauthorized".into()),
                "{method} {path}?{param}="
            );
        }
    }
    assert!(!s.path("pwned").exists() && !s.path("new.txt").exists());
    assert!(
        s.core.registry.sessions().is_empty(),
        "a refused request opened a session"
    );
    s.stop().await;
}

/// Only the public paths answer without a token. Dots under a public prefix stay literal (the
/// router does not resolve them), so `/assets/../api/v1/sessions` is an unknown asset, and an
/// unknown path or method asks for a token before it is named as unknown.
#[tokio::test(flavor = "multi_thread")]
async fn dots_under_a_public_prefix_reach_nothing_private() {
    let s = TestServer::start().await;
    std::fs::write(s.path("f.txt"), b"x").unwrap();
    for (target, want) in [
        ("GET /assets/../api/v1/sessions", (404, "not_found")),
        ("GET /assets/../files/f.txt", (404, "not_found")),
        ("GET /healthz/../files/f.txt", (401, "unauthorized")),
        ("GET /no/such/path", (401, "unauthorized")),
        ("DELETE /healthz", (405, "method_not_allowed")),
        ("DELETE /api/v1/sessions", (401, "unauthorized")),
    ] {
        let req = format!("{target} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n");
        let r = http_raw(&s, req.as_bytes()).await;
        assert_eq!((r.status, r.code()), (want.0, want.1.into()), "{target}");
    }
    assert!(s.core.registry.sessions().is_empty());
    s.stop().await;
}
