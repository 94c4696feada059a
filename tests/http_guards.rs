//! HTTP guards: reserved upload names, limits shared across routes and requests, headers that
//! keep served files inert, and which downloads count as MD5 checks.

mod common;

use common::TestServer;
use reqwest::StatusCode;

async fn code(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// The temp file of an upload in progress cannot be read, replaced or removed by name.
#[tokio::test(flavor = "multi_thread")]
async fn upload_temp_names_are_reserved() {
    let s = TestServer::start().await;
    let web = s.web();
    let resp = web
        .post(s.url("/files/secret.bin"))
        .header("Upload-Complete", "?0")
        .body(vec![7u8; 500])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let temp = std::fs::read_dir(&s.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.contains(".ferry-tmp-"))
        .expect("the upload has a temp file");
    let url = s.url(&format!("/files/{temp}"));
    for req in [web.get(&url), web.delete(&url), web.put(&url).body("x")] {
        assert_eq!(
            code(req.send().await.unwrap()).await,
            (StatusCode::FORBIDDEN, "forbidden_path".into())
        );
    }
    // The upload itself is unharmed and completes.
    let resp = web
        .patch(s.url(&location))
        .header("Upload-Offset", "500")
        .header("Upload-Complete", "?1")
        .header("Content-Type", "application/partial-upload")
        .body(vec![7u8; 500])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    assert_eq!(
        std::fs::read(s.path("secret.bin")).unwrap(),
        vec![7u8; 1000]
    );
}

/// `--max-body` bounds a resumable upload as a whole, not each of its requests.
#[tokio::test(flavor = "multi_thread")]
async fn resumable_uploads_cannot_outgrow_the_body_limit() {
    let s = TestServer::start_with(|c| {
        c.http.max_body = 1000;
        c.core.max_upload = 1000;
    })
    .await;
    let web = s.web();
    let announced = web
        .post(s.url("/files/big.bin"))
        .header("Upload-Complete", "?0")
        .header("Upload-Length", "5000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(announced).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
    );
    let resp = web
        .post(s.url("/files/big.bin"))
        .header("Upload-Complete", "?0")
        .body(vec![1u8; 900])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = web
        .patch(s.url(&location))
        .header("Upload-Offset", "900")
        .header("Upload-Complete", "?0")
        .header("Content-Type", "application/partial-upload")
        .body(vec![1u8; 900])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!s.path("big.bin").exists());
    let left: Vec<_> = std::fs::read_dir(&s.root).unwrap().collect();
    assert!(left.is_empty(), "no temp file is left: {left:?}");
}

/// `--max-requests` is one budget for the whole plane: a request in flight on one route makes
/// another route answer 503 `busy`.
#[tokio::test(flavor = "multi_thread")]
async fn the_request_limit_is_shared_by_all_routes() {
    let s = TestServer::start_with(|c| c.http.max_requests = 1).await;
    let fifo = s.path("gate");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let web = s.web();
    let exec = tokio::spawn({
        let (web, url) = (web.clone(), s.url("/api/v1/exec"));
        async move {
            let resp = web.post(url).body(r#"{"cmd":"cat gate"}"#).send().await;
            resp.unwrap().json::<serde_json::Value>().await.unwrap()
        }
    });
    // Opening the FIFO for writing waits until `cat` opens it: the exec is then in flight.
    let writer =
        tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(fifo))
            .await
            .unwrap()
            .unwrap();
    let resp = web.get(s.url("/api/v1/sessions")).send().await.unwrap();
    assert_eq!(
        code(resp).await,
        (StatusCode::SERVICE_UNAVAILABLE, "busy".into())
    );
    // Refused with its body unread, an upload's answer also closes the connection, so that the
    // client does not send its next request after the rest of this body.
    let resp = web
        .put(s.url("/files/while-busy.txt"))
        .body("some data")
        .send()
        .await
        .unwrap();
    let connection = resp.headers().get("connection").cloned();
    assert_eq!(
        code(resp).await,
        (StatusCode::SERVICE_UNAVAILABLE, "busy".into())
    );
    assert_eq!(
        connection.as_ref().and_then(|v| v.to_str().ok()),
        Some("close")
    );
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut w = writer;
        w.write_all(b"let go\n")
    })
    .await
    .unwrap()
    .unwrap();
    let done = exec.await.unwrap();
    assert_eq!(done["stdout"], "let go\n");
    let resp = web.get(s.url("/api/v1/sessions")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// Served files never run as pages of ferry's origin, and only a whole-file download is an
/// MD5 check.
#[tokio::test(flavor = "multi_thread")]
async fn served_files_are_inert_and_ranges_are_no_check() {
    let s = TestServer::start().await;
    std::fs::write(s.path("page.html"), b"<script>alert(1)</script>").unwrap();
    let web = s.web();
    let resp = web.get(s.url("/files/page.html")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["content-security-policy"], "sandbox");
    let md5 = resp.headers()["x-checksum-md5"]
        .to_str()
        .unwrap()
        .to_string();
    resp.bytes().await.unwrap();
    let part = web
        .get(s.url("/files/page.html"))
        .header("Range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), b"<scr");
    let checks: serde_json::Value = web
        .get(s.url("/api/v1/checks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let checks = checks["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "only the whole download: {checks:?}");
    assert_eq!(checks[0]["expected"], md5.as_str());
    assert_eq!(checks[0]["result"], "ok");
    let transfers = s.core.registry.transfers();
    assert_eq!(transfers.len(), 2, "{transfers:?}");
}

/// A client that never finishes its request headers is cut off after the header timeout.
#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s =
        TestServer::start_with(|c| c.http.header_timeout = std::time::Duration::from_millis(300))
            .await;
    let addr = s.http.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        sock.read_to_end(&mut rest),
    )
    .await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(250),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}
