//! Resumable uploads over HTTP (draft-ietf-httpbis-resumable-upload): creation, offset
//! retrieval, appends that survive a cut, MD5 over the whole file, cancellation, expiry.

mod common;

use common::*;
use ferry::core::checksum::hash_reader;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn md5_of(bytes: &[u8]) -> String {
    hash_reader(bytes).unwrap().0
}

/// Names in a directory that look like in-progress uploads.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ferry-tmp-"))
        .collect()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .unwrap()
}

fn offset_of(h: &HeaderMap) -> u64 {
    header(h, "upload-offset").parse().unwrap()
}

/// Starts an upload of `path` with `first` as its first part.
async fn create(
    s: &TestServer,
    path: &str,
    first: Vec<u8>,
    complete: bool,
    extra: &[(&str, String)],
) -> reqwest::Response {
    let mut req = s
        .web()
        .post(s.url(&format!("/files/{path}")))
        .header("upload-complete", if complete { "?1" } else { "?0" })
        .body(first);
    for (k, v) in extra {
        req = req.header(*k, v);
    }
    req.send().await.unwrap()
}

/// Creates an incomplete upload and returns its URL path (`/uploads/{id}`).
async fn create_open(
    s: &TestServer,
    path: &str,
    first: Vec<u8>,
    extra: &[(&str, String)],
) -> String {
    let r = create(s, path, first, false, extra).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = header(r.headers(), "location").to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["location"], location.as_str());
    location
}

async fn patch(
    s: &TestServer,
    location: &str,
    offset: u64,
    part: Vec<u8>,
    complete: bool,
    extra: &[(&str, String)],
) -> reqwest::Response {
    let mut req = s
        .web()
        .patch(s.url(location))
        .header("upload-offset", offset.to_string())
        .header("upload-complete", if complete { "?1" } else { "?0" })
        .header("content-type", "application/partial-upload")
        .body(part);
    for (k, v) in extra {
        req = req.header(*k, v);
    }
    req.send().await.unwrap()
}

async fn head(s: &TestServer, location: &str) -> reqwest::Response {
    s.web().head(s.url(location)).send().await.unwrap()
}

async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["error"]["code"].as_str().unwrap().to_string()
}

/// Opens a raw connection and sends a PATCH head announcing `content_length` bytes.
async fn raw_patch(
    s: &TestServer,
    location: &str,
    offset: u64,
    content_length: usize,
    expect: bool,
) -> TcpStream {
    let mut sock = TcpStream::connect(s.http.trim_start_matches("http://"))
        .await
        .unwrap();
    let expect = if expect {
        "Expect: 100-continue\r\n"
    } else {
        ""
    };
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {TOKEN}\r\n\
         Upload-Offset: {offset}\r\nUpload-Complete: ?0\r\n\
         Content-Type: application/partial-upload\r\nContent-Length: {content_length}\r\n{expect}\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock
}

/// Reads one response head (status and headers) from a raw socket.
async fn read_head(sock: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = sock.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "connection closed before a response head: {buf:?}");
        buf.push(byte[0]);
    }
    let text = String::from_utf8(buf).unwrap();
    let status = text[9..12].parse().unwrap();
    (status, text.to_ascii_lowercase())
}

fn raw_header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_in_three_parts_appears_only_when_complete_with_the_right_md5() {
    let s = TestServer::start().await;
    let data = random_bytes((3 << 20) + 17, 1);
    let md5 = md5_of(&data);
    let total = data.len() as u64;
    let mib = 1 << 20;
    let r = create(
        &s,
        "dir/big.bin",
        data[..mib].to_vec(),
        false,
        &[
            ("upload-length", total.to_string()),
            ("x-checksum-md5", md5.clone()),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let h = r.headers().clone();
    let location = header(&h, "location").to_string();
    assert!(location.starts_with("/uploads/"), "{location}");
    assert_eq!(offset_of(&h), mib as u64);
    assert_eq!(header(&h, "upload-complete"), "?0");
    assert!(header(&h, "upload-limit").starts_with("max-age="));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["path"], "dir/big.bin");
    assert_eq!(body["offset"], mib);
    assert_eq!(body["length"], total);
    assert!(!s.path("dir/big.bin").exists(), "visible before completion");
    assert_eq!(temp_files(&s.path("dir")).len(), 1);

    let r = head(&s, &location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let h = r.headers();
    assert_eq!(offset_of(h), mib as u64);
    assert_eq!(header(h, "upload-length"), total.to_string());
    assert_eq!(header(h, "upload-complete"), "?0");
    assert_eq!(header(h, "cache-control"), "no-store");
    assert!(header(h, "upload-limit").starts_with("max-age="));

    let r = patch(
        &s,
        &location,
        mib as u64,
        data[mib..2 * mib].to_vec(),
        false,
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset_of(r.headers()), 2 * mib as u64);
    assert_eq!(header(r.headers(), "upload-complete"), "?0");
    assert!(!s.path("dir/big.bin").exists(), "visible before completion");

    // A stale offset is refused with the current one.
    let r = patch(&s, &location, mib as u64, data[mib..].to_vec(), true, &[]).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(offset_of(r.headers()), 2 * mib as u64);
    assert_eq!(error_code(r).await, "conflict");
    assert!(!s.path("dir/big.bin").exists());

    let r = patch(
        &s,
        &location,
        2 * mib as u64,
        data[2 * mib..].to_vec(),
        true,
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let h = r.headers().clone();
    assert_eq!(header(&h, "upload-complete"), "?1");
    assert_eq!(offset_of(&h), total);
    assert_eq!(header(&h, "x-checksum-md5"), md5);
    assert_eq!(header(&h, "etag"), format!("\"{md5}\""));
    assert_eq!(header(&h, "location"), "/files/dir/big.bin");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["md5"], md5.as_str());
    assert_eq!(body["size"], total);
    assert_eq!(md5sum(&s.path("dir/big.bin")), md5);
    assert!(temp_files(&s.path("dir")).is_empty());

    // The completed upload still answers, so a client that missed the answer learns the end.
    let r = head(&s, &location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(r.headers(), "upload-complete"), "?1");
    assert_eq!(offset_of(r.headers()), total);
    assert_eq!(header(r.headers(), "x-checksum-md5"), md5);
    let r = patch(&s, &location, total, Vec::new(), true, &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The digest was stored at write time, and the transfer recorded once, verified.
    let r = s
        .web()
        .head(s.url("/files/dir/big.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(r.headers(), "x-checksum-md5"), md5);
    let cond = "path = 'dir/big.bin' AND direction = 'put'";
    assert_eq!(s.count("transfers", cond).await, 1);
    assert_eq!(
        s.count("transfers", &format!("{cond} AND result = 'verified'"))
            .await,
        1
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_cut_off_mid_body_keeps_what_arrived_and_the_resumed_upload_verifies() {
    let s = TestServer::start().await;
    let data = random_bytes(1 << 20, 2);
    let md5 = md5_of(&data);
    let total = data.len();
    let digest = {
        use base64::Engine;
        let raw = hex::decode(&md5).unwrap();
        format!(
            "md5=:{}:",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    };
    // Careful creation: an empty first part, so the upload's URL is known before any data.
    let location = create_open(&s, "cut.bin", Vec::new(), &[("repr-digest", digest)]).await;

    // First cut: the client stops sending but still reads; the answer names what was kept.
    let first = 300_000;
    let mut sock = raw_patch(&s, &location, 0, total, false).await;
    sock.write_all(&data[..first]).await.unwrap();
    sock.shutdown().await.unwrap();
    let (status, resp) = read_head(&mut sock).await;
    assert_eq!(status, 409, "{resp}");
    assert_eq!(
        raw_header(&resp, "upload-offset").as_deref(),
        Some("300000")
    );
    drop(sock);
    let r = head(&s, &location).await;
    assert_eq!(offset_of(r.headers()), first as u64);
    assert!(!s.path("cut.bin").exists());

    // Second cut: the client vanishes. `100 Continue` shows the append is running (else this
    // late request could still start after the HEAD below). Offset retrieval ends the append if
    // it still runs, so the offset it reports is settled: no more than was sent, and accepted
    // by the next PATCH.
    let mut sock = raw_patch(&s, &location, first as u64, total - first, true).await;
    assert_eq!(read_head(&mut sock).await.0, 100);
    sock.write_all(&data[first..2 * first]).await.unwrap();
    drop(sock);
    let r = head(&s, &location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let offset = offset_of(r.headers()) as usize;
    assert!(
        (first..=2 * first).contains(&offset),
        "offset {offset} outside {first}..={}",
        2 * first
    );
    assert!(!s.path("cut.bin").exists());

    let r = patch(
        &s,
        &location,
        offset as u64,
        data[offset..].to_vec(),
        true,
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(r.headers(), "x-checksum-md5"), md5);
    assert_eq!(md5sum(&s.path("cut.bin")), md5);
    assert!(temp_files(&s.root).is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_creation_cut_off_mid_body_leaves_nothing_under_the_name() {
    use ferry::core::registry::{RegistryEvent, TransferState};
    let s = TestServer::start().await;
    let mut events = s.core.registry.subscribe();
    let mut sock = TcpStream::connect(s.http.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /files/gone.bin HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {TOKEN}\r\n\
         Upload-Complete: ?1\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&random_bytes(200_000, 3)).await.unwrap();
    drop(sock);
    let ended = loop {
        match events.recv().await.unwrap() {
            RegistryEvent::Transfer(t) if t.state != TransferState::InProgress => break t,
            _ => {}
        }
    };
    assert_eq!(&*ended.path, "gone.bin");
    assert_eq!(ended.state, TransferState::Cancelled);
    assert!(!s.path("gone.bin").exists());
    assert!(temp_files(&s.root).is_empty(), "{:?}", temp_files(&s.root));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_final_md5_keeps_the_old_file_and_drops_the_upload() {
    let s = TestServer::start().await;
    let old = b"the old content\n".to_vec();
    let r = s
        .web()
        .put(s.url("/files/keep.txt"))
        .body(old.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let data = random_bytes(100_000, 4);
    let wrong = md5_of(b"something else");
    let location = create_open(
        &s,
        "keep.txt",
        data[..50_000].to_vec(),
        &[("x-checksum-md5", wrong.clone())],
    )
    .await;
    let r = patch(&s, &location, 50_000, data[50_000..].to_vec(), true, &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get("upload-offset").is_none());
    assert_eq!(error_code(r).await, "checksum_mismatch");
    assert_eq!(std::fs::read(s.path("keep.txt")).unwrap(), old);
    assert!(temp_files(&s.root).is_empty(), "{:?}", temp_files(&s.root));
    assert_eq!(head(&s, &location).await.status(), StatusCode::NOT_FOUND);
    let check = &s.core.registry.checks()[0];
    assert_eq!(check.result, "mismatch");
    assert_eq!(*check.expected, *wrong);
    assert_eq!(check.actual.as_deref(), Some(md5_of(&data).as_str()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_cancels_the_upload_and_removes_its_temp_file() {
    let s = TestServer::start().await;
    let location = create_open(&s, "sub/c.bin", random_bytes(10_000, 5), &[]).await;
    assert_eq!(temp_files(&s.path("sub")).len(), 1);
    let r = s.web().delete(s.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(temp_files(&s.path("sub")).is_empty());
    assert!(!s.path("sub/c.bin").exists());
    let r = head(&s, &location).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = patch(&s, &location, 10_000, vec![1], true, &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "not_found");
    let cond = "path = 'sub/c.bin' AND result = 'cancelled'";
    assert_eq!(s.count("transfers", cond).await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_append_while_one_runs_is_refused() {
    let s = TestServer::start().await;
    let data = random_bytes(100_000, 6);
    let location = create_open(&s, "busy.bin", Vec::new(), &[]).await;
    // `100 Continue` comes once the server reads the body: the first append is running.
    let mut sock = raw_patch(&s, &location, 0, data.len(), true).await;
    let (status, _) = read_head(&mut sock).await;
    assert_eq!(status, 100);
    let r = patch(&s, &location, 0, data.clone(), true, &[]).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.headers().get("upload-offset").is_some());
    assert_eq!(error_code(r).await, "conflict");
    sock.write_all(&data).await.unwrap();
    let (status, resp) = read_head(&mut sock).await;
    assert_eq!(status, 204, "{resp}");
    assert_eq!(
        raw_header(&resp, "upload-offset").as_deref(),
        Some("100000")
    );
    let r = patch(&s, &location, 100_000, Vec::new(), true, &[]).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(md5sum(&s.path("busy.bin")), md5_of(&data));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn put_with_upload_complete_stores_the_file_in_one_request() {
    let s = TestServer::start().await;
    let data = random_bytes(200_000, 7);
    let md5 = md5_of(&data);
    let r = s
        .web()
        .put(s.url("/files/one.bin"))
        .header("upload-complete", "?1")
        .header("x-checksum-md5", md5.clone())
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(r.headers(), "upload-complete"), "?1");
    assert_eq!(header(r.headers(), "x-checksum-md5"), md5);
    assert_eq!(md5sum(&s.path("one.bin")), md5);
    // POST without Upload-Complete is not an upload.
    let r = s
        .web()
        .post(s.url("/files/two.bin"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(!s.path("two.bin").exists());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_requests_without_the_token_are_refused() {
    let s = TestServer::start().await;
    let location = create_open(&s, "auth.bin", vec![7; 10], &[]).await;
    let anon = reqwest::Client::new();
    let r = anon.head(s.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = anon
        .patch(s.url(&location))
        .header("upload-offset", "10")
        .header("upload-complete", "?1")
        .body(vec![8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = anon.delete(s.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = anon
        .post(s.url("/files/anon.bin"))
        .header("upload-complete", "?1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!s.path("anon.bin").exists());
    // The upload is untouched.
    let r = head(&s, &location).await;
    assert_eq!(offset_of(r.headers()), 10);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_cannot_leave_the_root() {
    let s = TestServer::start().await;
    let outside = tempfile::tempdir().unwrap();
    let r = create(&s, "a%2F..%2F..%2Fescape.bin", b"x".to_vec(), true, &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "forbidden_path");
    std::os::unix::fs::symlink(outside.path(), s.path("out")).unwrap();
    let r = create(&s, "out/x.bin", b"x".to_vec(), false, &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    let r = create(&s, "", b"x".to_vec(), true, &[]).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    std::fs::create_dir(s.path("adir")).unwrap();
    let r = create(&s, "adir", b"x".to_vec(), true, &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(temp_files(&s.root).is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lengths_and_part_digests_are_enforced() {
    let s = TestServer::start().await;
    // A part whose Content-Digest does not match is not kept; the upload goes on.
    let location = create_open(
        &s,
        "d.bin",
        b"abcd".to_vec(),
        &[("upload-length", "10".into())],
    )
    .await;
    let bad = (
        "content-digest",
        "md5=:AAAAAAAAAAAAAAAAAAAAAA==:".to_string(),
    );
    let r = patch(&s, &location, 4, b"efg".to_vec(), false, &[bad]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(offset_of(r.headers()), 4);
    assert_eq!(error_code(r).await, "checksum_mismatch");
    let good = {
        use base64::Engine;
        let raw = hex::decode(md5_of(b"efg")).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        ("content-digest", format!("md5=:{b64}:"))
    };
    let r = patch(&s, &location, 4, b"efg".to_vec(), false, &[good]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset_of(r.headers()), 7);
    // A different length than the one stated is refused and changes nothing.
    let r = patch(
        &s,
        &location,
        7,
        Vec::new(),
        false,
        &[("upload-length", "11".into())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(offset_of(r.headers()), 7);
    // Completing with a Content-Length short of the length is refused before any byte is kept.
    let r = patch(&s, &location, 7, b"h".to_vec(), true, &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(offset_of(r.headers()), 7);
    // Without a Content-Length it shows only at the end, and the upload is dropped.
    let chunked = futures_util::stream::iter([Ok::<_, std::io::Error>(b"h".to_vec())]);
    let r = s
        .web()
        .patch(s.url(&location))
        .header("upload-offset", "7")
        .header("upload-complete", "?1")
        .body(reqwest::Body::wrap_stream(chunked))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(head(&s, &location).await.status(), StatusCode::NOT_FOUND);
    // Data past the length drops the upload too.
    let location = create_open(
        &s,
        "e.bin",
        b"abcd".to_vec(),
        &[("upload-length", "6".into())],
    )
    .await;
    let r = patch(&s, &location, 4, b"efgh".to_vec(), false, &[]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(head(&s, &location).await.status(), StatusCode::NOT_FOUND);
    assert!(!s.path("d.bin").exists() && !s.path("e.bin").exists());
    assert!(temp_files(&s.root).is_empty());
    // Missing headers.
    let location = create_open(&s, "f.bin", Vec::new(), &[]).await;
    let r = s
        .web()
        .patch(s.url(&location))
        .header("upload-complete", "?1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s
        .web()
        .patch(s.url(&location))
        .header("upload-offset", "0")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_uploads_expire_with_their_temp_files() {
    let s = TestServer::start().await;
    let location = create_open(&s, "old.bin", random_bytes(1000, 8), &[]).await;
    assert_eq!(temp_files(&s.root).len(), 1);
    // Nothing has been idle for an hour yet.
    assert_eq!(
        s.core.uploads.expire_idle(Duration::from_secs(3600)).await,
        0
    );
    assert_eq!(s.core.uploads.expire_idle(Duration::ZERO).await, 1);
    assert!(temp_files(&s.root).is_empty());
    assert_eq!(head(&s, &location).await.status(), StatusCode::NOT_FOUND);
    let cond = "path = 'old.bin' AND result = 'failed'";
    assert_eq!(s.count("transfers", cond).await, 1);
    s.stop().await;
}

/// A refused upload is answered even while its client is still sending the body: the server
/// reads the rest before it answers instead of closing the connection under the client (which
/// then sees a broken pipe, not the error).
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upload_is_answered_not_reset() {
    let s = TestServer::start().await;
    let body = random_bytes(8 << 20, 7);
    // A hang fails the test rather than blocking it.
    let wait = Duration::from_secs(30);
    for round in 0..3 {
        // No token: refused before the handler runs.
        let r = reqwest::Client::new()
            .put(s.url("/files/refused.bin"))
            .timeout(wait)
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: no answer without a token: {e:?}"));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(r).await, "unauthorized");
        // An offset that is not the upload's: refused by the handler before it reads.
        let location = create_open(&s, &format!("part{round}.bin"), vec![1; 10], &[]).await;
        let r = s
            .web()
            .patch(s.url(&location))
            .timeout(wait)
            .header("upload-offset", "5")
            .header("upload-complete", "?1")
            .header("content-type", "application/partial-upload")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: no answer to a stale offset: {e:?}"));
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(error_code(r).await, "conflict");
    }
    assert!(!s.path("refused.bin").exists());
    s.stop().await;
}
