//! Bad paths over TCP and HTTP: encodings, backslashes, long names, Unicode forms, symlinks
//! that climb out, and a symlink swapped in while files are read. The expected answers are
//! listed in docs/security.md ("Bad-input suite"); `..`, absolute paths, NUL and symlinks with
//! absolute targets are covered by `path_escapes_are_refused` in tests/files.rs (TCP) and
//! tests/http.rs (HTTP).

mod bad;
mod common;

use bad::*;
use common::*;
use ferry::client::Client;
use ferry::core::checksum::Md5Stream;
use ferry::core::error::Code;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Downloads `path` over TCP.
async fn tcp_get(c: &Client, path: &str) -> Result<Vec<u8>, Option<Code>> {
    c.get(path, 0, Md5Stream::new(), Vec::new(), |_| {})
        .await
        .map(|(bytes, _)| bytes)
        .map_err(|e| e.code())
}

/// Uploads `bytes` to `path` over TCP.
async fn tcp_put(c: &Client, path: &str, bytes: &[u8]) -> Result<(), Option<Code>> {
    let data = bytes.to_vec();
    let n = data.len() as u64;
    c.put(path, std::io::Cursor::new(data), n, None, |_| {})
        .await
        .map(|_| ())
        .map_err(|e| e.code())
}

/// A request with the token, a body and `Connection: close`, sent exactly as written.
async fn http(s: &TestServer, method: &str, target: &str, body: &[u8]) -> HttpAnswer {
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: ferry\r\nAuthorization: {}\r\nConnection: close\r\n",
        bearer()
    )
    .into_bytes();
    if method == "PUT" {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    http_raw(s, &req).await
}

/// `%2e%2e` is a name of its own on both planes. Over HTTP the path is percent-decoded once:
/// `%252e%252e` names the file `%2e%2e`, never `..`.
#[tokio::test(flavor = "multi_thread")]
async fn double_encoding_is_decoded_once() {
    let s = TestServer::start().await;
    std::fs::create_dir(s.path("%2e%2e")).unwrap();
    std::fs::write(s.path("%2e%2e/f"), b"literal").unwrap();
    let c = s.client().await;
    // TCP paths are JSON strings: no percent-decoding at all.
    assert_eq!(tcp_get(&c, "%2e%2e/f").await.unwrap(), b"literal");
    assert_eq!(tcp_get(&c, "%252e%252e/f").await, Err(Some(Code::NotFound)));

    let r = http(&s, "GET", "/files/%252e%252e/f", b"").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"literal"[..]));
    let r = http(&s, "GET", "/api/v1/files?path=%252e%252e", b"").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.body).contains(r#""name":"f""#),
        "{r:?}"
    );
    // Decoded twice this would climb out; decoded once it names nothing.
    for target in [
        "/files/%252e%252e/%252e%252e/etc/passwd",
        "/files/%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    ] {
        let r = http(&s, "GET", target, b"").await;
        assert_eq!((r.status, r.code()), (404, "not_found".into()), "{target}");
    }
    // A PUT makes the literal name.
    let r = http(&s, "PUT", "/files/%252e%252e%252fx", b"mine").await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(std::fs::read(s.path("%2e%2e%2fx")).unwrap(), b"mine");
    s.stop().await;
}

/// `\` is an ordinary byte in a Linux name: `..\evil` is a file in the root, on both planes.
#[tokio::test(flavor = "multi_thread")]
async fn backslashes_are_ordinary_bytes() {
    let s = TestServer::start().await;
    let c = s.client().await;
    tcp_put(&c, "..\\evil", b"tcp").await.unwrap();
    assert_eq!(std::fs::read(s.path("..\\evil")).unwrap(), b"tcp");
    tcp_put(&c, "a\\..\\..\\evil2", b"tcp2").await.unwrap();
    assert_eq!(std::fs::read(s.path("a\\..\\..\\evil2")).unwrap(), b"tcp2");
    let r = http(&s, "PUT", "/files/..%5cevil3", b"http").await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(std::fs::read(s.path("..\\evil3")).unwrap(), b"http");
    let r = http(&s, "GET", "/files/..%5c..%5cevil", b"").await;
    assert_eq!((r.status, r.code()), (404, "not_found".into()));
    // A raw backslash (not a URI character, but taken by hyper) names the same literal file.
    let r = http(&s, "GET", "/files/..\\evil", b"").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"tcp"[..]), "{r:?}");
    let parent = s.root.parent().unwrap();
    for name in ["evil", "evil2", "evil3"] {
        assert!(!parent.join(name).exists(), "{name} escaped the root");
    }
    s.stop().await;
}

/// A name component over 255 bytes, or a path over 4096 bytes, is `bad_request` (400), never
/// a 500; 255 bytes is fine.
#[tokio::test(flavor = "multi_thread")]
async fn overlong_names_are_bad_request() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let ok = "n".repeat(255);
    tcp_put(&c, &ok, b"fits").await.unwrap();
    assert_eq!(tcp_get(&c, &ok).await.unwrap(), b"fits");
    let r = http(&s, "GET", &format!("/files/{ok}"), b"").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"fits"[..]));
    // Its temp file during the upload needs a shorter name than the target: still fine.
    let ok2 = "\u{e9}".repeat(127) + "m";
    let r = http(
        &s,
        "PUT",
        &format!("/files/{}", ok2.replace('\u{e9}', "%C3%A9")),
        b"too",
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(std::fs::read(s.path(&ok2)).unwrap(), b"too");

    let long_name = "n".repeat(256);
    let long_path = vec!["d"; 2100].join("/");
    for path in [
        long_name.as_str(),
        &format!("dir/{long_name}/x"),
        &long_path,
    ] {
        assert_eq!(
            tcp_put(&c, path, b"x").await,
            Err(Some(Code::BadRequest)),
            "put"
        );
        assert_eq!(tcp_get(&c, path).await, Err(Some(Code::BadRequest)), "get");
        let e = c.stat(path).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::BadRequest), "stat: {e}");
        for method in ["GET", "PUT", "DELETE"] {
            let r = http(&s, method, &format!("/files/{path}"), b"x").await;
            assert_eq!(
                (r.status, r.code()),
                (400, "bad_request".into()),
                "{method}"
            );
        }
    }
    assert_eq!(std::fs::read_dir(&s.root).unwrap().count(), 2);
    s.stop().await;
}

/// Names are bytes: the NFC and NFD spellings of "café" are two files, on both planes.
#[tokio::test(flavor = "multi_thread")]
async fn names_are_bytes_without_unicode_normalisation() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let (nfc, nfd) = ("caf\u{e9}", "cafe\u{301}");
    tcp_put(&c, nfc, b"nfc").await.unwrap();
    tcp_put(&c, nfd, b"nfd").await.unwrap();
    let names: Vec<String> = c
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, [nfd, nfc], "byte order: 'e' (0x65) before 0xc3");
    assert_eq!(tcp_get(&c, nfc).await.unwrap(), b"nfc");
    assert_eq!(tcp_get(&c, nfd).await.unwrap(), b"nfd");
    let r = http(&s, "GET", "/files/caf%C3%A9", b"").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"nfc"[..]));
    let r = http(&s, "GET", "/files/cafe%CC%81", b"").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"nfd"[..]));
    s.stop().await;
}

/// Relative symlinks that climb out of the root are refused as a last or a middle component;
/// relative links that stay inside (even through `..`) are followed.
#[tokio::test(flavor = "multi_thread")]
async fn relative_symlinks_that_climb_out_are_refused() {
    let s = TestServer::start().await;
    let outside = s.root.parent().unwrap().join(format!(
        "ferry-outside-{}",
        s.root.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"SECRET").unwrap();
    let out_name = outside.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::create_dir(s.path("sub")).unwrap();
    std::fs::write(s.path("a.txt"), b"inside").unwrap();
    std::os::unix::fs::symlink(format!("../{out_name}"), s.path("up")).unwrap();
    std::os::unix::fs::symlink(format!("../../{out_name}/secret"), s.path("sub/sneak")).unwrap();
    std::os::unix::fs::symlink("../a.txt", s.path("sub/back")).unwrap();
    std::os::unix::fs::symlink("sub/../a.txt", s.path("via")).unwrap();
    let c = s.client().await;
    for path in ["up/secret", "sub/sneak"] {
        assert_eq!(
            tcp_get(&c, path).await,
            Err(Some(Code::ForbiddenPath)),
            "{path}"
        );
        let r = http(&s, "GET", &format!("/files/{path}"), b"").await;
        assert_eq!(
            (r.status, r.code()),
            (403, "forbidden_path".into()),
            "{path}"
        );
        assert!(!String::from_utf8_lossy(&r.body).contains("SECRET"));
    }
    assert_eq!(
        tcp_put(&c, "up/new", b"x").await,
        Err(Some(Code::ForbiddenPath))
    );
    assert!(!outside.join("new").exists());
    for path in ["sub/back", "via"] {
        assert_eq!(tcp_get(&c, path).await.unwrap(), b"inside", "{path}");
        let r = http(&s, "GET", &format!("/files/{path}"), b"").await;
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"inside"[..]),
            "{path}"
        );
    }
    std::fs::remove_dir_all(&outside).unwrap();
    s.stop().await;
}

/// A directory and a symlink to outside the root swap places (atomically, in a loop) while
/// clients read a file under that name over TCP and HTTP: each read gets the inside file or a
/// refusal, never the outside one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_swapped_symlink_never_serves_outside_content() {
    let s = TestServer::start().await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("f"), b"SECRET-OUTSIDE").unwrap();
    std::fs::create_dir(s.path("d")).unwrap();
    std::fs::write(s.path("d/f"), b"inside").unwrap();
    std::os::unix::fs::symlink(outside.path(), s.path("l")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let flipper = {
        let (stop, swaps, root) = (stop.clone(), swaps.clone(), s.root.clone());
        std::thread::spawn(move || {
            let (d, l) = (root.join("d"), root.join("l"));
            while !stop.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &d,
                    rustix::fs::CWD,
                    &l,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let c = s.client().await;
    let web = s.web();
    let (mut served, mut refused) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        match tcp_get(&c, "d/f").await {
            Ok(b) => {
                assert_eq!(b, b"inside", "TCP served outside content");
                served += 1;
            }
            Err(code) => {
                assert!(
                    matches!(code, Some(Code::ForbiddenPath | Code::NotFound)),
                    "{code:?}"
                );
                refused += 1;
            }
        }
        let r = web.get(s.url("/files/d/f")).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        match status {
            200 => {
                assert_eq!(body.as_ref(), b"inside", "HTTP served outside content");
                served += 1;
            }
            403 | 404 => refused += 1,
            other => panic!("HTTP {other}: {body:?}"),
        }
        let list = c.list("d").await;
        if let Ok(entries) = list {
            assert!(
                entries.iter().all(|e| e.name == "f" && e.size == 6),
                "{entries:?}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    let swaps = swaps.load(Ordering::Relaxed);
    assert!(
        served > 0 && refused > 0 && swaps > 100,
        "the race was not exercised: {served} served, {refused} refused, {swaps} swaps"
    );
    s.stop().await;
}
