//! The HTTP plane over real sockets: auth, downloads with MD5 headers, ranges and conditionals,
//! verified uploads, deletes, confinement, exec (JSON and NDJSON), the JSON API, events,
//! metrics, JSON error forms, and one file seen across the TCP and HTTP transports.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use common::*;
use ferry::core::registry::{RegistryEvent, TransferInfo, TransferState};
use futures_util::{Stream, StreamExt};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

/// Longest wait for something the server does on its own (an event, a process's death).
const PATIENCE: Duration = Duration::from_secs(10);

fn md5_hex(bytes: &[u8]) -> String {
    ferry::core::checksum::hash_reader(bytes).unwrap().0
}

fn b64_md5(bytes: &[u8]) -> String {
    B64.encode(hex::decode(md5_hex(bytes)).unwrap())
}

fn hval<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap()
}

/// Names in a directory that look like in-progress uploads.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ferry-tmp-"))
        .collect()
}

/// The status and error code of a JSON error answer (checking its form on the way).
async fn api_error(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    assert!(
        ct.starts_with("application/json"),
        "{status}: content-type {ct:?}, body {text:?}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["error"]["message"].is_string(), "{text}");
    let code = v["error"]["code"].as_str().expect("error.code").to_string();
    (status, code)
}

/// The body of a JSON answer, after checking its status.
async fn json_ok(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The next transfer event for `path` that is finished (not in progress).
async fn finished_transfer(
    rx: &mut broadcast::Receiver<RegistryEvent>,
    path: &str,
) -> TransferInfo {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match rx.recv().await.unwrap() {
                RegistryEvent::Transfer(t)
                    if &*t.path == path && t.state != TransferState::InProgress =>
                {
                    return t;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no finished transfer of {path}"))
}

/// A response read off a raw socket.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> String {
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{} {:?}",
            self.status,
            self.headers
        );
        let v: Value = serde_json::from_slice(&self.body).unwrap();
        v["error"]["code"].as_str().unwrap().to_string()
    }
}

fn http_addr(s: &TestServer) -> &str {
    s.http.trim_start_matches("http://")
}

/// An HTTP/1.1 connection driven by hand, one request at a time.
struct RawConn {
    sock: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    async fn open(s: &TestServer) -> RawConn {
        let sock = tokio::net::TcpStream::connect(http_addr(s)).await.unwrap();
        RawConn {
            sock,
            buf: Vec::new(),
        }
    }

    /// Sends `method target` exactly as written, with the token; returns the answer and the
    /// numbers of bytes sent and received.
    async fn request(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
        close: bool,
    ) -> (Raw, usize, usize) {
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {TOKEN}\r\n"
        );
        if close {
            head.push_str("Connection: close\r\n");
        }
        if method == "PUT" || !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        self.sock.write_all(head.as_bytes()).await.unwrap();
        self.sock.write_all(body).await.unwrap();
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill().await;
        };
        let text = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let mut raw = Raw {
            status,
            headers,
            body: Vec::new(),
        };
        let len = match raw.header("content-length") {
            _ if method == "HEAD" || status == 204 || status == 304 => Some(0),
            Some(n) => Some(n.parse().unwrap()),
            None => None,
        };
        let total = match len {
            Some(n) => {
                while self.buf.len() < end + 4 + n {
                    self.fill().await;
                }
                end + 4 + n
            }
            None => {
                assert!(close, "a body without a length on a kept connection");
                self.sock.read_to_end(&mut self.buf).await.unwrap();
                self.buf.len()
            }
        };
        raw.body = self.buf[end + 4..total].to_vec();
        self.buf.drain(..total);
        (raw, head.len() + body.len(), total)
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 << 10];
        let n = self.sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends one request exactly as written (reqwest would normalise the path) and reads the answer.
async fn raw(s: &TestServer, method: &str, target: &str) -> Raw {
    raw_with(s, method, target, b"").await
}

async fn raw_with(s: &TestServer, method: &str, target: &str, body: &[u8]) -> Raw {
    RawConn::open(s)
        .await
        .request(method, target, body, true)
        .await
        .0
}

/// Reads a byte stream as lines (NDJSON) or as server-sent events.
struct Reader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Reader {
    fn new(resp: reqwest::Response) -> Reader {
        Reader {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
        }
    }

    /// The next piece ending in `sep`, without it; `None` at the end of the stream.
    async fn until(&mut self, sep: &[u8]) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(sep.len()).position(|w| w == sep) {
                let piece: Vec<u8> = self.buf.drain(..i + sep.len()).collect();
                return Some(String::from_utf8(piece[..i].to_vec()).unwrap());
            }
            let chunk = tokio::time::timeout(PATIENCE, self.body.next())
                .await
                .expect("the stream stalled");
            match chunk {
                Some(c) => self.buf.extend_from_slice(&c.unwrap()),
                None => {
                    assert!(self.buf.is_empty(), "a partial line at the end");
                    return None;
                }
            }
        }
    }

    /// The next NDJSON line.
    async fn line(&mut self) -> Option<Value> {
        let l = self.until(b"\n").await?;
        Some(serde_json::from_str(&l).unwrap())
    }

    /// The next server-sent event (comments and keep-alives skipped) as `(name, data)`.
    async fn event(&mut self) -> (String, Value) {
        loop {
            let block = self.until(b"\n\n").await.expect("the event stream ended");
            let (mut name, mut data) = (String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if !data.is_empty() {
                return (name, serde_json::from_str(&data).unwrap());
            }
        }
    }
}

/// The value of the metric line `name{...}` carrying every label in `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_but_healthz_needs_the_token() {
    let s = TestServer::start().await;
    let anon = reqwest::Client::new();
    let health = anon.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(json_ok(health).await["status"], "ok");

    let auth_values = [
        None,
        Some("Bearer wrong-token".to_string()),
        Some("Bearer ".to_string()),
        Some("Bearer".to_string()),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer {TOKEN}x")),
    ];
    let mut tried = 0;
    for (method, path) in ferry::http::ROUTES {
        if ferry::http::PUBLIC.contains(path) {
            continue;
        }
        let url = s.url(&path.replace("{*path}", "some/file.txt"));
        for auth in &auth_values {
            let mut req = anon.request(Method::from_bytes(method.as_bytes()).unwrap(), &url);
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(
                resp.headers()
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer realm=\"ferry\""),
                "{method} {path} with {auth:?}"
            );
            if *method == "HEAD" {
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "HEAD {path}");
            } else {
                let (status, code) = api_error(resp).await;
                assert_eq!(
                    (status, code.as_str()),
                    (StatusCode::UNAUTHORIZED, "unauthorized"),
                    "{method} {path} with {auth:?}"
                );
            }
            tried += 1;
        }
    }
    let public = ferry::http::ROUTES
        .iter()
        .filter(|(_, p)| ferry::http::PUBLIC.contains(p))
        .count();
    assert_eq!(
        tried,
        (ferry::http::ROUTES.len() - public) * auth_values.len()
    );
    assert!(
        s.core.registry.sessions().is_empty(),
        "a refused request opened a session"
    );
    assert!(!s.path("some").exists());
    // The scheme is case-insensitive.
    let ok = anon
        .get(s.url("/api/v1/sessions"))
        .header(header::AUTHORIZATION, format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_connection_is_one_session_listed_with_tcp_ones() {
    let s = TestServer::start().await;
    let tcp = s.client().await;
    let mut rx = s.core.registry.subscribe();
    // By hand: reqwest may open a second connection while its first is being returned to the pool.
    let mut conn = RawConn::open(&s).await;
    let (mut sent, mut received) = (0, 0);
    let mut ids = Vec::new();
    for round in 0..4 {
        let (r, out, inn) = conn.request("GET", "/api/v1/sessions", b"", false).await;
        assert_eq!(r.status, 200);
        sent += out;
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let sessions = v["sessions"].as_array().unwrap();
        // Both transports, in order of start (the same millisecond leaves the order open).
        let mut transports: Vec<_> = sessions.iter().map(|x| &x["transport"]).collect();
        transports.sort_by_key(|t| t.to_string());
        assert_eq!(transports, [&json!("http"), &json!("tcp")], "{v}");
        assert!(sessions[0]["started_at"].as_i64() <= sessions[1]["started_at"].as_i64());
        let http = sessions.iter().find(|x| x["transport"] == "http").unwrap();
        ids.push(http["id"].as_str().unwrap().to_string());
        assert!(http["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        // The session counts every byte of its connection: the request before it opened
        // too, this one whole (it was read before it was answered), the answers so far.
        assert_eq!(
            (http["bytes_in"].as_u64(), http["bytes_out"].as_u64()),
            (Some(sent as u64), Some(received as u64)),
            "round {round}"
        );
        received += inn;
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");

    // Closing the connection closes the session; the TCP one stays.
    drop(conn);
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let RegistryEvent::SessionEnded { id } = rx.recv().await.unwrap() {
                assert_eq!(*id, *ids[0]);
                break;
            }
        }
    })
    .await
    .expect("the HTTP session did not end with its connection");
    let left: Vec<_> = s.core.registry.sessions();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].transport, "tcp");
    assert_eq!(
        s.count(
            "sessions",
            &format!(
                "id = '{}' AND end_reason = 'closed' AND bytes_in = {sent} AND bytes_out = {received}",
                ids[0]
            )
        )
        .await,
        1
    );
    tcp.ping().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn get_and_head_give_the_same_headers() {
    let s = TestServer::start().await;
    let data = random_bytes(100_000, 1);
    std::fs::create_dir(s.path("dir")).unwrap();
    std::fs::write(s.path("dir/data.txt"), &data).unwrap();
    let web = s.web();
    let url = s.url("/files/dir/data.txt");

    let get = web.get(&url).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    let h = get.headers().clone();
    let body = get.bytes().await.unwrap();
    assert_eq!(body.as_ref(), data.as_slice());
    assert_eq!(hval(&h, "content-length"), "100000");
    assert_eq!(hval(&h, "content-type"), "text/plain");
    assert_eq!(hval(&h, "accept-ranges"), "bytes");
    assert_eq!(hval(&h, "x-checksum-md5"), md5sum(&s.path("dir/data.txt")));
    assert_eq!(hval(&h, "repr-digest"), format!("md5=:{}:", b64_md5(&data)));
    assert_eq!(hval(&h, "etag"), format!("\"{}\"", md5_hex(&data)));
    let mtime = std::fs::metadata(s.path("dir/data.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let secs = mtime.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        httpdate::parse_http_date(hval(&h, "last-modified")).unwrap(),
        UNIX_EPOCH + Duration::from_secs(secs)
    );

    let without_date = |mut h: HeaderMap| {
        h.remove(header::DATE);
        h
    };
    for range in [None, Some("bytes=10-19")] {
        let mut g = web.get(&url);
        let mut hd = web.head(&url);
        if let Some(r) = range {
            g = g.header(header::RANGE, r);
            hd = hd.header(header::RANGE, r);
        }
        let g = g.send().await.unwrap();
        let hd = hd.send().await.unwrap();
        assert_eq!(g.status(), hd.status(), "{range:?}");
        let (gh, hh) = (g.headers().clone(), hd.headers().clone());
        assert!(hd.bytes().await.unwrap().is_empty());
        let n = g.bytes().await.unwrap().len();
        assert_eq!(hval(&gh, "content-length"), n.to_string());
        assert_eq!(without_date(gh), without_date(hh), "{range:?}");
    }

    // A directory answers its listing, the root too; HEAD agrees with GET.
    let v = json_ok(web.get(s.url("/files/dir")).send().await.unwrap()).await;
    assert_eq!(v["path"], "dir");
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{v}");
    assert_eq!(
        (
            &entries[0]["name"],
            &entries[0]["kind"],
            &entries[0]["size"]
        ),
        (&json!("data.txt"), &json!("file"), &json!(100_000))
    );
    assert!(entries[0]["mtime"].as_i64().unwrap() > 0);
    let root = web.get(s.url("/files/")).send().await.unwrap();
    let rh = root.headers().clone();
    let v = json_ok(root).await;
    assert_eq!(
        (v["path"].as_str(), v["entries"][0]["name"].as_str()),
        (Some(""), Some("dir"))
    );
    let head = web.head(s.url("/files/")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(without_date(head.headers().clone()), without_date(rh));
    let api = json_ok(
        web.get(s.url("/api/v1/files?path=dir"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(api["entries"][0]["name"], "data.txt");
    assert_eq!(api["path"], "dir");

    // A file uploaded through ferry has its digest listed (stored at write, not re-hashed).
    let put = web
        .put(s.url("/files/dir/up.bin"))
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let api = json_ok(
        web.get(s.url("/api/v1/files?path=dir"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(api["entries"][1]["name"], "up.bin");
    assert_eq!(api["entries"][1]["md5"], md5_hex(b"abc"));

    let missing = web.get(s.url("/files/dir/nope")).send().await.unwrap();
    assert_eq!(
        api_error(missing).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let missing = web.head(s.url("/files/dir/nope")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn range_edge_cases() {
    let s = TestServer::start().await;
    let data = random_bytes(1000, 2);
    std::fs::write(s.path("r.bin"), &data).unwrap();
    std::fs::write(s.path("empty.bin"), b"").unwrap();
    let web = s.web();
    let url = s.url("/files/r.bin");
    let etag = format!("\"{}\"", md5_hex(&data));
    let get = |range: &'static str| web.get(&url).header(header::RANGE, range).send();

    for (range, from, to) in [
        ("bytes=0-0", 0, 0),
        ("bytes=-500", 500, 999),
        ("bytes=-1", 999, 999),
        ("bytes=-5000", 0, 999),
        ("bytes=990-", 990, 999),
        ("bytes=900-5000", 900, 999),
        ("bytes=999-999", 999, 999),
    ] {
        let resp = get(range).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let h = resp.headers().clone();
        assert_eq!(hval(&h, "content-range"), format!("bytes {from}-{to}/1000"));
        assert_eq!(hval(&h, "content-length"), (to - from + 1).to_string());
        // The checksum headers describe the whole file, not the part.
        assert_eq!(hval(&h, "x-checksum-md5"), md5_hex(&data));
        assert_eq!(hval(&h, "repr-digest"), format!("md5=:{}:", b64_md5(&data)));
        assert_eq!(hval(&h, "etag"), etag);
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            &data[from..=to],
            "{range}"
        );
    }

    for range in [
        "bytes=500-100",
        "bytes=1000-",
        "bytes=2000-3000",
        "bytes=x-1",
        "bytes=-0",
        "bytes=",
    ] {
        let resp = get(range).await.unwrap();
        assert_eq!(
            hval(resp.headers(), "content-range"),
            "bytes */1000",
            "{range}"
        );
        assert_eq!(
            api_error(resp).await,
            (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable".into()
            ),
            "{range}"
        );
    }
    let resp = web
        .get(s.url("/files/empty.bin"))
        .header(header::RANGE, "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(hval(resp.headers(), "content-range"), "bytes */0");
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Several ranges, another unit: the whole file.
    for range in ["bytes=0-1,5-6", "items=0-1"] {
        let resp = get(range).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{range}");
        assert!(resp.headers().get(header::CONTENT_RANGE).is_none());
        assert_eq!(resp.bytes().await.unwrap().as_ref(), data.as_slice());
    }

    // If-Range: a current validator keeps the range, a stale one gets the whole file.
    let last_modified = {
        let r = web.head(&url).send().await.unwrap();
        hval(r.headers(), "last-modified").to_string()
    };
    let stale_date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_000_000));
    for (if_range, status, len) in [
        (etag.clone(), StatusCode::PARTIAL_CONTENT, 10),
        (last_modified, StatusCode::PARTIAL_CONTENT, 10),
        (
            "\"0123456789abcdef0123456789abcdef\"".into(),
            StatusCode::OK,
            1000,
        ),
        (stale_date, StatusCode::OK, 1000),
    ] {
        let resp = web
            .get(&url)
            .header(header::RANGE, "bytes=0-9")
            .header(header::IF_RANGE, &if_range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "If-Range {if_range}");
        assert_eq!(resp.bytes().await.unwrap().len(), len);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_gets() {
    let s = TestServer::start().await;
    let data = random_bytes(5000, 3);
    std::fs::write(s.path("c.bin"), &data).unwrap();
    let web = s.web();
    let url = s.url("/files/c.bin");
    let first = web.get(&url).send().await.unwrap();
    let etag = hval(first.headers(), "etag").to_string();
    let last_modified = hval(first.headers(), "last-modified").to_string();
    assert_eq!(first.bytes().await.unwrap().len(), 5000);

    let earlier = httpdate::fmt_http_date(
        httpdate::parse_http_date(&last_modified).unwrap() - Duration::from_secs(3600),
    );
    for (name, value, status) in [
        ("if-none-match", etag.clone(), StatusCode::NOT_MODIFIED),
        (
            "if-none-match",
            format!("\"aa\", {etag}"),
            StatusCode::NOT_MODIFIED,
        ),
        (
            "if-none-match",
            format!("W/{etag}"),
            StatusCode::NOT_MODIFIED,
        ),
        ("if-none-match", "*".into(), StatusCode::NOT_MODIFIED),
        ("if-none-match", "\"other\"".into(), StatusCode::OK),
        (
            "if-modified-since",
            last_modified.clone(),
            StatusCode::NOT_MODIFIED,
        ),
        ("if-modified-since", earlier, StatusCode::OK),
    ] {
        let resp = web.get(&url).header(name, &value).send().await.unwrap();
        assert_eq!(resp.status(), status, "{name}: {value}");
        if status == StatusCode::NOT_MODIFIED {
            assert_eq!(hval(resp.headers(), "etag"), etag);
            assert_eq!(hval(resp.headers(), "x-checksum-md5"), md5_hex(&data));
            assert!(resp.bytes().await.unwrap().is_empty());
        } else {
            assert_eq!(resp.bytes().await.unwrap().as_ref(), data.as_slice());
        }
    }
    // If-None-Match wins over the date.
    let resp = web
        .get(&url)
        .header("if-none-match", "\"other\"")
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn put_creates_replaces_and_verifies_each_md5_form() {
    let s = TestServer::start().await;
    let web = s.web();
    let url = s.url("/files/up/a b.bin");
    let v1 = random_bytes(300_000, 4);

    let resp = web
        .put(&url)
        .header("content-md5", b64_md5(&v1))
        .body(v1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(hval(resp.headers(), "x-checksum-md5"), md5_hex(&v1));
    assert_eq!(hval(resp.headers(), "location"), "/files/up/a%20b.bin");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({"path": "up/a b.bin", "size": 300_000, "md5": md5_hex(&v1)})
    );
    assert_eq!(md5sum(&s.path("up/a b.bin")), md5_hex(&v1));

    // Each header form, and none: 204 for a replaced file.
    // Each form of the header carries the MD5 of `d` (none for `x-none`).
    let form = |name: &str, d: &[u8]| match name {
        "x-checksum-md5" => md5_hex(d).to_uppercase(),
        "repr-digest" => format!("sha-256=:AAAA:, md5=:{}:", b64_md5(d)),
        "content-digest" => format!("md5=:{}:", b64_md5(d)),
        "content-md5" => b64_md5(d),
        _ => String::new(),
    };
    let forms = [
        "x-checksum-md5",
        "repr-digest",
        "content-digest",
        "content-md5",
        "x-none",
    ];
    for (i, name) in forms.into_iter().enumerate() {
        let body = random_bytes(200_000 + i, 10 + i as u64);
        let resp = web
            .put(&url)
            .header(name, form(name, &body))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{name}");
        assert_eq!(hval(resp.headers(), "x-checksum-md5"), md5_hex(&body));
        assert_eq!(std::fs::read(s.path("up/a b.bin")).unwrap(), body, "{name}");
        // The GET that follows shows the digest stored at write time.
        let get = web.head(&url).send().await.unwrap();
        assert_eq!(hval(get.headers(), "x-checksum-md5"), md5_hex(&body));
    }
    let current = std::fs::read(s.path("up/a b.bin")).unwrap();

    // A wrong MD5, disagreeing headers and malformed ones leave the old file as it was.
    let new = b"new bytes that must not land".to_vec();
    let bad: Vec<Vec<(&str, String)>> = vec![
        vec![("x-checksum-md5", md5_hex(b"other"))],
        vec![("content-md5", b64_md5(b"other"))],
        vec![
            ("x-checksum-md5", md5_hex(&new)),
            ("content-md5", b64_md5(b"other")),
        ],
        vec![("x-checksum-md5", "not-hex".into())],
        vec![("content-md5", "AAAA".into())],
        vec![("repr-digest", "md5=:nope:".into())],
    ];
    for (i, headers) in bad.iter().enumerate() {
        let mut req = web.put(&url).body(new.clone());
        for (n, v) in headers {
            req = req.header(*n, v);
        }
        let want = if i < 2 {
            "checksum_mismatch"
        } else {
            "bad_request"
        };
        assert_eq!(
            api_error(req.send().await.unwrap()).await,
            (StatusCode::BAD_REQUEST, want.into()),
            "{headers:?}"
        );
        assert_eq!(std::fs::read(s.path("up/a b.bin")).unwrap(), current);
        assert!(temp_files(&s.path("up")).is_empty());
    }
    let checks = json_ok(web.get(s.url("/api/v1/checks")).send().await.unwrap()).await;
    let checks = checks["checks"].as_array().unwrap();
    let mismatches: Vec<_> = checks
        .iter()
        .filter(|c| c["result"] == "mismatch")
        .collect();
    assert_eq!(mismatches.len(), 2, "{checks:?}");
    assert_eq!(mismatches[0]["expected"], md5_hex(b"other"));
    assert_eq!(mismatches[0]["actual"], md5_hex(&new));
    assert_eq!(mismatches[0]["transport"], "http");
    assert_eq!(mismatches[0]["direction"], "put");
    assert_eq!(mismatches[0]["path"], "up/a b.bin");

    // Not a file name: the root, a directory, a path through a file.
    let root = web.put(s.url("/files/")).body("x").send().await.unwrap();
    assert_eq!(root.status(), StatusCode::METHOD_NOT_ALLOWED);
    let dir = web.put(s.url("/files/up")).body("x").send().await.unwrap();
    assert_eq!(
        api_error(dir).await,
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    assert!(s.path("up").is_dir());
    // An empty body makes an empty file.
    let empty = web.put(s.url("/files/empty")).send().await.unwrap();
    assert_eq!(empty.status(), StatusCode::CREATED);
    assert_eq!(std::fs::metadata(s.path("empty")).unwrap().len(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_put_without_length_is_accepted() {
    let s = TestServer::start().await;
    let data = random_bytes(3 << 20, 5);
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(100_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let resp = s
        .web()
        .put(s.url("/files/chunked.bin"))
        .header("x-checksum-md5", md5_hex(&data))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["size"], 3 << 20);
    assert_eq!(md5sum(&s.path("chunked.bin")), md5_hex(&data));
    s.flush_audit().await;
    assert_eq!(
        s.count(
            "transfers",
            "path = 'chunked.bin' AND transport = 'http' AND result = 'verified'"
        )
        .await,
        1
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_files_links_and_empty_dirs() {
    let s = TestServer::start().await;
    std::fs::write(s.path("f.txt"), b"f").unwrap();
    std::fs::create_dir_all(s.path("full/sub")).unwrap();
    std::fs::create_dir(s.path("empty")).unwrap();
    std::os::unix::fs::symlink("f.txt", s.path("link")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"keep").unwrap();
    std::os::unix::fs::symlink(outside.path(), s.path("out-link")).unwrap();
    let web = s.web();
    let del = |p: &str| web.delete(s.url(p)).send();

    for p in ["link", "out-link", "empty"] {
        assert_eq!(
            del(&format!("/files/{p}")).await.unwrap().status(),
            StatusCode::NO_CONTENT,
            "{p}"
        );
        assert!(
            std::fs::symlink_metadata(s.path(p)).is_err(),
            "{p} still there"
        );
    }
    assert_eq!(
        std::fs::read(s.path("f.txt")).unwrap(),
        b"f",
        "the link's target stays"
    );
    assert_eq!(
        std::fs::read(outside.path().join("precious")).unwrap(),
        b"keep"
    );
    assert_eq!(
        del("/files/f.txt").await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert!(!s.path("f.txt").exists());
    assert_eq!(
        api_error(del("/files/f.txt").await.unwrap()).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    assert_eq!(
        api_error(del("/files/full").await.unwrap()).await,
        (StatusCode::CONFLICT, "conflict".into())
    );
    assert!(s.path("full/sub").is_dir());
    s.flush_audit().await;
    assert_eq!(
        s.count("transfers", "direction = 'delete' AND transport = 'http'")
            .await,
        4
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn path_escapes_are_refused() {
    let s = TestServer::start().await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.path(), s.path("out-link")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), s.path("secret-link")).unwrap();
    std::fs::create_dir(s.path("a")).unwrap();
    std::fs::write(s.path("a/ok.txt"), b"fine").unwrap();

    // reqwest (the url crate, after WHATWG URL) resolves `..` and its encoded forms before
    // sending: a client can never express these paths, so they are sent over a raw socket.
    let u = reqwest::Url::parse(&s.url("/files/%2e%2e/%2E%2E/etc/passwd")).unwrap();
    assert_eq!(u.path(), "/etc/passwd");

    for target in [
        "/files/../etc/passwd",
        "/files/%2e%2e/etc/passwd",
        "/files/%2E%2E/%2e%2e/etc/passwd",
        "/files/..%2f..%2fetc%2fpasswd",
        "/files/a%2f..%2f..%2fx",
        "/files/a/%2e%2e/%2e%2e/x",
        "/files/%2fetc%2fpasswd",
        "/files//etc/passwd",
        "/files/a%00b",
        "/files/a/ok.txt%00.png",
        "/files/out-link/secret",
        "/files/secret-link",
        "/files/out-link",
        "/api/v1/files?path=..",
        "/api/v1/files?path=%2e%2e%2f",
        "/api/v1/files?path=%2Fetc",
        "/api/v1/files?path=out-link",
    ] {
        let r = raw(&s, "GET", target).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "forbidden_path".into()),
            "GET {target}"
        );
        assert!(!String::from_utf8_lossy(&r.body).contains("secret\""));
        if target.starts_with("/files/") {
            let r = raw(&s, "HEAD", target).await;
            assert_eq!(r.status, 403, "HEAD {target}");
        }
    }
    for target in [
        "/files/%2e%2e/evil",
        "/files/..%2fevil",
        "/files/out-link/evil",
        "/files/%2ftmp%2fevil",
    ] {
        let r = raw_with(&s, "PUT", target, b"evil").await;
        assert_eq!(
            (r.status, r.code()),
            (403, "forbidden_path".into()),
            "PUT {target}"
        );
        let r = raw(&s, "DELETE", target).await;
        assert_eq!(r.status, 403, "DELETE {target}");
    }
    assert!(!outside.path().join("evil").exists());
    // A PUT onto a link that points outside replaces the link (rename does not follow it).
    let r = raw_with(&s, "PUT", "/files/secret-link", b"mine").await;
    assert_eq!(r.status, 204);
    assert!(
        std::fs::symlink_metadata(s.path("secret-link"))
            .unwrap()
            .is_file()
    );
    assert_eq!(std::fs::read(s.path("secret-link")).unwrap(), b"mine");
    assert!(!s.root.parent().unwrap().join("evil").exists());
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"secret"
    );
    // An exec cannot start outside either.
    let resp = s
        .web()
        .post(s.url("/api/v1/exec"))
        .json(&json!({"cmd": "pwd", "cwd": "out-link"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api_error(resp).await,
        (StatusCode::FORBIDDEN, "forbidden_path".into())
    );

    // A path that does not decode to UTF-8 is malformed, not missing.
    let r = raw(&s, "GET", "/files/%ff%fe").await;
    assert_eq!((r.status, r.code()), (400, "bad_request".into()));

    // Encoded separators inside the root are just separators; links inside it are followed.
    let r = raw(&s, "GET", "/files/a%2fok.txt").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"fine"[..]));
    std::os::unix::fs::symlink("a/ok.txt", s.path("in-link")).unwrap();
    let r = raw(&s, "GET", "/files/in-link").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"fine"[..]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_off_mid_body_leaves_nothing_under_the_name() {
    let s = TestServer::start().await;
    std::fs::write(s.path("keep.bin"), b"old contents").unwrap();
    let mut rx = s.core.registry.subscribe();
    for name in ["keep.bin", "new.bin"] {
        let mut sock = tokio::net::TcpStream::connect(http_addr(&s)).await.unwrap();
        let head = format!(
            "PUT /files/{name} HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: {}\r\n\r\n",
            4 << 20
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(&random_bytes(1 << 20, 6)).await.unwrap();
        // Wait until the server is writing the upload to disk, then vanish.
        tokio::time::timeout(PATIENCE, async {
            loop {
                let t = s.core.registry.transfers();
                if t.iter().any(|t| &*t.path == name && t.bytes_done > 0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the upload never started");
        assert_eq!(
            temp_files(&s.root).len(),
            1,
            "the upload is not in a temp file"
        );
        drop(sock);
        let t = finished_transfer(&mut rx, name).await;
        assert_eq!(t.state, TransferState::Failed, "{name}: {t:?}");
        assert!(t.bytes_done < 4 << 20);
        assert!(temp_files(&s.root).is_empty(), "{:?}", temp_files(&s.root));
    }
    assert_eq!(std::fs::read(s.path("keep.bin")).unwrap(), b"old contents");
    assert!(!s.path("new.bin").exists());
    let v = json_ok(
        s.web()
            .get(s.url("/api/v1/transfers"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let states: Vec<_> = v["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["path"].as_str().unwrap(), t["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("new.bin", "failed"), ("keep.bin", "failed")]);
    s.flush_audit().await;
    assert_eq!(
        s.count("transfers", "result = 'failed' AND transport = 'http'")
            .await,
        2
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_answers_json() {
    let s = TestServer::start().await;
    let web = s.web();
    let exec = |body: Value| web.post(s.url("/api/v1/exec")).json(&body).send();

    let v = json_ok(
        exec(json!({"cmd": "echo out; echo err >&2; exit 7"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            &v["stdout"],
            &v["stderr"],
            &v["exit_code"],
            &v["signal"],
            &v["truncated"]
        ),
        (
            &json!("out\n"),
            &json!("err\n"),
            &json!(7),
            &Value::Null,
            &json!(false)
        )
    );
    assert!(v["duration_ms"].is_u64());
    assert!(v.get("error").is_none(), "{v}");

    std::fs::create_dir(s.path("sub")).unwrap();
    let v = json_ok(
        exec(
            json!({"argv": ["sh", "-c", "cat; echo \"$GREETING\"; pwd"], "stdin": "in\n",
            "env": {"GREETING": "hi"}, "cwd": "sub"}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        v["stdout"],
        format!("in\nhi\n{}\n", s.path("sub").display())
    );
    assert_eq!(v["exit_code"], 0);

    let v = json_ok(
        exec(json!({"cmd": "sleep 30", "timeout_ms": 200}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (&v["error"]["code"], &v["signal"]),
        (&json!("timeout"), &json!(9)),
        "{v}"
    );

    let missing = exec(json!({"argv": ["no-such-program-ferry"]}))
        .await
        .unwrap();
    assert_eq!(
        api_error(missing).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    for bad in [
        json!({"cmd": "true", "argv": ["true"]}),
        json!({}),
        json!({"cmd": "true", "surprise": 1}),
        json!({"cmd": 5}),
    ] {
        let (status, code) = api_error(exec(bad.clone()).await.unwrap()).await;
        assert!(status.is_client_error(), "{bad}: {status}");
        assert_eq!(code, "bad_request", "{bad}");
    }
    let not_json = web
        .post(s.url("/api/v1/exec"))
        .header(header::CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(api_error(not_json).await.1, "bad_request");
    // Every command that got as far as its audit row, the one that could not start included.
    assert_eq!(s.count("commands", "transport = 'http'").await, 4);
    assert_eq!(s.count("commands", "error = 'timeout'").await, 1);
    s.stop().await;
}

/// Posts a streamed exec; returns the NDJSON reader.
async fn ndjson_exec(s: &TestServer, web: &reqwest::Client, cmd: &str) -> Reader {
    let resp = web
        .post(s.url("/api/v1/exec"))
        .header(header::ACCEPT, "application/x-ndjson")
        .json(&json!({ "cmd": cmd }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(hval(resp.headers(), "content-type"), "application/x-ndjson");
    Reader::new(resp)
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_exec_delivers_its_first_line_before_the_command_ends() {
    let s = TestServer::start().await;
    let gate = s.path("gate");
    let st = std::process::Command::new("mkfifo")
        .arg(&gate)
        .status()
        .unwrap();
    assert!(st.success());
    let web = s.web();
    let mut lines = ndjson_exec(
        &s,
        &web,
        "echo first; read x < gate; echo \"got $x\"; echo oops >&2; exit 3",
    )
    .await;
    // The command cannot end before the gate is written to, and that happens only below.
    assert_eq!(lines.line().await, Some(json!({"stdout": "first\n"})));
    assert_eq!(
        s.count("commands", "transport = 'http' AND ended_at IS NULL")
            .await,
        1,
        "the command should still be running"
    );
    // Opened read-write, a FIFO never blocks; it stays open until the command has read it.
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gate)
        .unwrap();
    std::io::Write::write_all(&mut fifo, b"go\n").unwrap();
    let mut rest = Vec::new();
    while let Some(l) = lines.line().await {
        rest.push(l);
    }
    drop(fifo);
    let exit = rest.pop().unwrap();
    assert_eq!(
        (&exit["exit_code"], &exit["signal"], &exit["truncated"]),
        (&json!(3), &Value::Null, &json!(false)),
        "{exit}"
    );
    rest.sort_by_key(|v| v.to_string());
    assert_eq!(
        rest,
        [json!({"stderr": "oops\n"}), json!({"stdout": "got go\n"})]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_from_a_streamed_exec_gets_its_process_group_killed() {
    let s = TestServer::start().await;
    let web = s.web();
    let mut lines = ndjson_exec(&s, &web, "sleep 300 & echo $!; wait").await;
    let first = lines.line().await.unwrap();
    let pid: i32 = first["stdout"].as_str().unwrap().trim().parse().unwrap();
    assert!(!process_dead(pid));
    drop(lines);
    drop(web);
    assert!(
        wait_dead(pid).await,
        "the backgrounded sleep outlived its client"
    );

    // The same for a client waiting for one JSON answer: it has no line to read the pid from,
    // so the command leaves it in a file.
    let body = json!({"cmd": "sleep 300 & echo $! > pid.txt; wait"}).to_string();
    let mut sock = tokio::net::TcpStream::connect(http_addr(&s)).await.unwrap();
    let head = format!(
        "POST /api/v1/exec HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let pid: i32 = tokio::time::timeout(PATIENCE, async {
        loop {
            match std::fs::read_to_string(s.path("pid.txt")) {
                Ok(t) if t.ends_with('\n') => break t.trim().parse().unwrap(),
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await
    .expect("the command never wrote its pid");
    assert!(!process_dead(pid));
    drop(sock);
    assert!(
        wait_dead(pid).await,
        "the backgrounded sleep outlived its JSON client"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_put_over_tcp_is_fetched_over_http_with_the_same_md5() {
    let s = TestServer::start().await;
    let data = random_bytes(3 << 20, 7);
    let md5 = md5_hex(&data);
    let tcp = s.client().await;
    let done = tcp
        .put(
            "x/cross.bin",
            std::io::Cursor::new(data.clone()),
            data.len() as u64,
            Some(md5.clone()),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(done.md5, md5);

    let web = s.web();
    let resp = web.get(s.url("/files/x/cross.bin")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(hval(resp.headers(), "x-checksum-md5"), md5);
    let body = resp.bytes().await.unwrap();
    assert_eq!(md5_hex(&body), md5);

    // Both transfers and both checks are visible through the API, each with its transport.
    let v = json_ok(web.get(s.url("/api/v1/transfers")).send().await.unwrap()).await;
    let transfers = v["transfers"].as_array().unwrap().clone();
    let mut seen: Vec<_> = transfers
        .iter()
        .map(|t| {
            assert_eq!(t["path"], "x/cross.bin", "{t}");
            assert_eq!(t["md5"], md5.as_str(), "{t}");
            assert_eq!(t["bytes_done"], 3 << 20, "{t}");
            (
                t["transport"].as_str().unwrap().to_string(),
                t["direction"].as_str().unwrap().to_string(),
                t["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let want = |t: &str, d: &str| (t.to_string(), d.to_string(), "verified".to_string());
    assert_eq!(seen, [want("http", "get"), want("tcp", "put")]);

    let v = json_ok(web.get(s.url("/api/v1/checks")).send().await.unwrap()).await;
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{v}");
    // Newest first: the HTTP download, then the TCP upload; each names its transfer.
    for (c, (transport, direction)) in checks.iter().zip([("http", "get"), ("tcp", "put")]) {
        assert_eq!(
            (&c["transport"], &c["direction"], &c["result"]),
            (&json!(transport), &json!(direction), &json!("ok")),
            "{c}"
        );
        assert_eq!((&c["expected"], &c["actual"]), (&json!(md5), &json!(md5)));
        assert_eq!(c["path"], "x/cross.bin");
        let t = transfers
            .iter()
            .find(|t| t["id"] == c["transfer_id"])
            .unwrap_or_else(|| panic!("check of an unknown transfer: {c}"));
        assert_eq!(
            (&t["session_id"], &t["transport"], &t["direction"]),
            (&c["session_id"], &c["transport"], &c["direction"])
        );
    }
    // The TCP upload's session is still live (the HTTP one may not be: a client's pool may
    // drop an idle connection, and with it its session).
    let sessions = json_ok(web.get(s.url("/api/v1/sessions")).send().await.unwrap()).await;
    assert!(
        sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == checks[1]["session_id"] && x["transport"] == "tcp"),
        "{sessions}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifty_megabyte_download_matches_md5sum() {
    let s = TestServer::start().await;
    std::fs::write(s.path("big.bin"), random_bytes(50 << 20, 8)).unwrap();
    let want = md5sum(&s.path("big.bin"));
    let mut rx = s.core.registry.subscribe();
    // A client that stops reading after the first chunk leaves a failed download (50 MB is
    // far more than the socket buffers hold).
    let web = s.web();
    let resp = web.get(s.url("/files/big.bin")).send().await.unwrap();
    let mut body = resp.bytes_stream();
    assert!(!body.next().await.unwrap().unwrap().is_empty());
    drop(body);
    drop(web);
    let t = finished_transfer(&mut rx, "big.bin").await;
    assert_eq!(t.state, TransferState::Failed, "{t:?}");
    assert!(t.bytes_done < 50 << 20);

    let resp = s.web().get(s.url("/files/big.bin")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(hval(resp.headers(), "x-checksum-md5"), want);
    assert_eq!(
        hval(resp.headers(), "content-length"),
        (50 << 20).to_string()
    );
    let local = tempfile::tempdir().unwrap();
    let dst = local.path().join("big.bin");
    let mut out = std::fs::File::create(&dst).unwrap();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        std::io::Write::write_all(&mut out, &chunk.unwrap()).unwrap();
    }
    drop(out);
    assert_eq!(md5sum(&dst), want);
    let t = finished_transfer(&mut rx, "big.bin").await;
    assert_eq!(
        (t.state, t.bytes_done, t.md5.as_deref()),
        (TransferState::Verified, 50 << 20, Some(want.as_str()))
    );

    // A file that changes while it is sent: the server cuts the body short rather than let the
    // client take other bytes for the file whose MD5 the headers announced.
    let resp = s.web().get(s.url("/files/big.bin")).send().await.unwrap();
    let mut body = resp.bytes_stream();
    let mut got = body.next().await.unwrap().unwrap().len();
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .append(true)
            .open(s.path("big.bin"))
            .unwrap(),
        b"more",
    )
    .unwrap();
    let cut = loop {
        match body.next().await {
            Some(Ok(c)) => got += c.len(),
            Some(Err(e)) => break e,
            None => panic!("the changed file was sent whole ({got} bytes)"),
        }
    };
    assert!(got < 50 << 20, "{got} bytes, then {cut}");
    let t = finished_transfer(&mut rx, "big.bin").await;
    assert_eq!(t.state, TransferState::Mismatch, "{t:?}");
    let checks = s.core.registry.checks();
    assert_eq!(
        (checks[0].result, &*checks[0].expected, &checks[0].actual),
        ("mismatch", want.as_str(), &None)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_are_recorded_as_they_ended() {
    let s = TestServer::start().await;
    let data = random_bytes(1 << 20, 9);
    std::fs::write(s.path("d.bin"), &data).unwrap();
    std::fs::write(s.path("empty.bin"), b"").unwrap();
    let web = s.web();
    let mut rx = s.core.registry.subscribe();
    // Whole, ranged and empty downloads end verified; a HEAD moves nothing and records nothing.
    for (path, range, len) in [
        ("d.bin", None, 1 << 20),
        ("d.bin", Some("bytes=100-199"), 100),
        ("empty.bin", None, 0),
    ] {
        web.head(s.url(&format!("/files/{path}")))
            .send()
            .await
            .unwrap();
        let mut req = web.get(s.url(&format!("/files/{path}")));
        if let Some(r) = range {
            req = req.header(header::RANGE, r);
        }
        let body = req.send().await.unwrap().bytes().await.unwrap();
        assert_eq!(body.len(), len);
        let t = finished_transfer(&mut rx, path).await;
        assert_eq!(
            (t.state, t.direction, t.bytes_done, t.bytes_total),
            (TransferState::Verified, "get", len as u64, len as u64),
            "{path} {range:?}"
        );
    }
    let all = s.core.registry.transfers();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.iter().all(|t| t.state == TransferState::Verified));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_show_a_snapshot_then_transfers_and_checks() {
    let s = TestServer::start().await;
    let web = s.web();
    let resp = web.get(s.url("/api/v1/events")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(hval(resp.headers(), "content-type").starts_with("text/event-stream"));
    let mut events = Reader::new(resp);
    let (name, snap) = events.event().await;
    assert_eq!(name, "snapshot");
    // The event stream's own connection is a session already.
    assert_eq!(snap["sessions"].as_array().unwrap().len(), 1, "{snap}");
    assert_eq!(snap["transfers"], json!([]));
    assert_eq!(snap["checks"], json!([]));

    let data = b"seen live".to_vec();
    let put = web
        .put(s.url("/files/live.txt"))
        .header("x-checksum-md5", md5_hex(&data))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let (mut transfer, mut check) = (None, None);
    while transfer.is_none() || check.is_none() {
        let (name, v) = events.event().await;
        match name.as_str() {
            "transfer" if v["state"] != "in_progress" => transfer = Some(v),
            "check" => check = Some(v),
            "transfer" | "session_started" | "progress" => {}
            other => panic!("unexpected event {other}: {v}"),
        }
    }
    let (transfer, check) = (transfer.unwrap(), check.unwrap());
    assert_eq!(
        (
            &transfer["path"],
            &transfer["state"],
            &transfer["transport"]
        ),
        (&json!("live.txt"), &json!("verified"), &json!("http"))
    );
    assert_eq!(
        (
            &check["path"],
            &check["result"],
            &check["expected"],
            &check["transfer_id"]
        ),
        (
            &json!("live.txt"),
            &json!("ok"),
            &json!(md5_hex(&data)),
            &transfer["id"]
        )
    );
    drop(events);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_transfers_and_mismatches() {
    let s = TestServer::start().await;
    let web = s.web();
    let scrape = || async {
        let resp = web.get(s.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.unwrap()
    };
    let before = scrape().await;
    assert!(before.contains("ferry_sessions_total"), "{before}");
    let mismatches = |t: &str| {
        metric(
            t,
            "ferry_checksum_mismatches_total",
            &["transport=\"http\""],
        )
    };
    assert_eq!(mismatches(&before).unwrap_or(0.0), 0.0);

    let ok = web
        .put(s.url("/files/m.txt"))
        .header("x-checksum-md5", md5_hex(b"m"))
        .body("m");
    assert_eq!(ok.send().await.unwrap().status(), StatusCode::CREATED);
    let bad = web
        .put(s.url("/files/m.txt"))
        .header("x-checksum-md5", md5_hex(b"x"))
        .body("m");
    assert_eq!(
        api_error(bad.send().await.unwrap()).await.1,
        "checksum_mismatch"
    );

    let after = scrape().await;
    let transfers = |result: &str| {
        metric(
            &after,
            "ferry_transfers_total",
            &[
                "transport=\"http\"",
                "direction=\"put\"",
                &format!("result=\"{result}\""),
            ],
        )
    };
    assert_eq!(
        (transfers("verified"), transfers("mismatch")),
        (Some(1.0), Some(1.0)),
        "{after}"
    );
    assert_eq!(mismatches(&after), Some(1.0), "{after}");
    assert!(metric(&after, "ferry_sessions_active", &["transport=\"http\""]).is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn router_and_limit_errors_are_json() {
    let s = TestServer::start_with(|cfg| cfg.http.max_body = 64 << 10).await;
    let web = s.web();
    for path in ["/nope", "/api/v1/nope", "/api", "/files"] {
        let resp = web.get(s.url(path)).send().await.unwrap();
        // Without a body to skip, the connection stays open.
        assert!(!resp.headers().contains_key(header::CONNECTION), "{path}");
        assert_eq!(
            api_error(resp).await,
            (StatusCode::NOT_FOUND, "not_found".into()),
            "{path}"
        );
    }
    for (method, path) in [
        (Method::PATCH, "/files/x"),
        (Method::DELETE, "/api/v1/sessions"),
        (Method::GET, "/api/v1/exec"),
        (Method::POST, "/healthz"),
    ] {
        let resp = web
            .request(method.clone(), s.url(path))
            .send()
            .await
            .unwrap();
        assert!(
            resp.headers().contains_key(header::ALLOW),
            "{method} {path}"
        );
        assert_eq!(
            api_error(resp).await,
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into()),
            "{method} {path}"
        );
    }

    // Over the body limit: with a Content-Length, and chunked. The body is left unread, so the
    // answer says the connection closes (else the client's next request on it would fail).
    async fn too_large(resp: reqwest::Response) {
        assert_eq!(hval(resp.headers(), "connection"), "close");
        assert_eq!(
            api_error(resp).await,
            (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
        );
    }
    let big = random_bytes(200 << 10, 10);
    let resp = web
        .put(s.url("/files/big.bin"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    too_large(resp).await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .chunks(16 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let resp = web
        .put(s.url("/files/big.bin"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    too_large(resp).await;
    assert!(!s.path("big.bin").exists());
    assert!(temp_files(&s.root).is_empty());
    let resp = web
        .post(s.url("/api/v1/exec"))
        .json(&json!({"cmd": "true", "stdin": "x".repeat(100 << 10)}))
        .send()
        .await
        .unwrap();
    too_large(resp).await;
    // The same for any refusal that comes before the body is read.
    let resp = reqwest::Client::new()
        .put(s.url("/files/small.bin"))
        .header(header::AUTHORIZATION, "Bearer wrong")
        .body(big[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(hval(resp.headers(), "connection"), "close");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Under the limit is fine.
    let resp = web
        .put(s.url("/files/small.bin"))
        .body(big[..60 << 10].to_vec())
        .send()
        .await
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_pages_with_before() {
    let s = TestServer::start().await;
    let web = s.web();
    for i in 0..4 {
        let put = web
            .put(s.url(&format!("/files/a{i}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::CREATED);
    }
    let exec = web
        .post(s.url("/api/v1/exec"))
        .json(&json!({"cmd": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(exec.status(), StatusCode::OK);
    // Rows that share a millisecond must not be lost at a page boundary: add some by hand.
    s.flush_audit().await;
    for i in 0..5 {
        sqlx::query(
            "INSERT INTO sessions (id, transport, peer, started_at) VALUES (?1, 'tcp', 'old', 1000)",
        )
        .bind(format!("old{i}"))
        .execute(s.core.audit.pool())
        .await
        .unwrap();
    }

    // Read over one kept connection: its session is the last entry to appear (reqwest could
    // open new connections, each a new session, while the pages are read).
    let mut conn = RawConn::open(&s).await;
    let mut audit = async |query: &str| {
        let (r, _, _) = conn
            .request("GET", &format!("/api/v1/audit?{query}"), b"", false)
            .await;
        assert_eq!(r.status, 200);
        serde_json::from_slice::<Value>(&r.body).unwrap()
    };
    let all = audit("limit=1000").await;
    assert_eq!(all["next_before"], Value::Null);
    let all: Vec<Value> = all["entries"].as_array().unwrap().clone();
    let kinds = |kind: &str| all.iter().filter(|e| e["kind"] == kind).count();
    let old = all
        .iter()
        .filter(|e| e["summary"] == "session from old")
        .count();
    assert_eq!(
        (old, kinds("transfer"), kinds("command")),
        (5, 4, 1),
        "{all:?}"
    );
    assert!(kinds("session") > old);
    assert!(
        all.windows(2)
            .all(|w| w[0]["at"].as_i64() >= w[1]["at"].as_i64())
    );
    let cmd = all.iter().find(|e| e["kind"] == "command").unwrap();
    assert_eq!(
        (&cmd["summary"], &cmd["result"], &cmd["transport"]),
        (&json!("true"), &json!("exit 0"), &json!("http"))
    );

    for limit in [1, 2, 3, 4] {
        let mut paged = Vec::new();
        let mut query = format!("limit={limit}");
        loop {
            let page = audit(&query).await;
            let entries = page["entries"].as_array().unwrap();
            // A page never splits a millisecond: it holds more than asked only if all its
            // entries share one.
            assert!(!entries.is_empty());
            assert!(
                entries.len() <= limit || entries.iter().all(|e| e["at"] == entries[0]["at"]),
                "limit {limit}: {entries:?}"
            );
            paged.extend(entries.iter().cloned());
            match page["next_before"].as_i64() {
                Some(b) => query = format!("limit={limit}&before={b}"),
                None => break,
            }
            assert!(paged.len() <= all.len(), "paging does not end");
        }
        let ids = |v: &[Value]| {
            v.iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let (mut got, mut want) = (ids(&paged), ids(&all));
        got.sort();
        want.sort();
        assert_eq!(got, want, "limit {limit}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_and_healthz_answer_json() {
    let s = TestServer::start().await;
    // The document's content is written elsewhere; here only that it is served as JSON.
    let resp = s
        .web()
        .get(s.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(hval(resp.headers(), "content-type"), "application/json");
    json_ok(resp).await;
    let h = json_ok(
        reqwest::Client::new()
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    s.stop().await;
}
