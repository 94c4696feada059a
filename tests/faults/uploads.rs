//! Uploads cut off at random points (TCP `put`, HTTP `PUT`, resumable `PATCH`): the final name
//! must never show a partial file, and no temp file may stay behind.

use crate::common::{TestServer, random_bytes};
use crate::raw::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TARGETS: [&str; 3] = ["tcp-put.bin", "http-put.bin", "patch.bin"];

/// Writes the first `cut` bytes of `bytes` to a fresh connection, then drops it.
async fn cut_off(addr: &str, bytes: &[u8], cut: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&bytes[..cut]).await;
    // Unread answers in the receive buffer make the close a reset, the harshest kill.
    drop(s);
}

/// What a file under its final name must be: absent, or the last complete upload.
async fn check(srv: &TestServer, web: &reqwest::Client, name: &str, want: Option<&String>) -> bool {
    let on_disk = std::fs::read(srv.path(name)).ok().map(|b| md5_hex(&b));
    let stored = web
        .head(srv.url(&format!("/files/{name}")))
        .send()
        .await
        .unwrap();
    let stored = stored
        .headers()
        .get("x-checksum-md5")
        .map(|v| v.to_str().unwrap().to_string());
    let ok = on_disk.as_ref() == want && (want.is_none() || stored.as_ref() == want);
    if !ok {
        println!("{name}: want {want:?}, on disk {on_disk:?}, stored {stored:?}");
    }
    ok
}

async fn put_whole(srv: &TestServer, web: &reqwest::Client, name: &str, body: Vec<u8>) -> String {
    let md5 = md5_hex(&body);
    let r = web
        .put(srv.url(&format!("/files/{name}")))
        .header("X-Checksum-Md5", &md5)
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    md5
}

/// Creates an empty resumable upload of `md5`; returns its location.
async fn create_upload(srv: &TestServer, web: &reqwest::Client, name: &str, md5: &str) -> String {
    let r = web
        .post(srv.url(&format!("/files/{name}")))
        .header("Upload-Complete", "?0")
        .header("X-Checksum-Md5", md5)
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.headers()["location"].to_str().unwrap().to_string()
}

/// Sends the rest of a cut resumable upload from where the server says it stands.
async fn resume(srv: &TestServer, web: &reqwest::Client, loc: &str, body: &[u8]) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let h = web.head(srv.url(loc)).send().await.unwrap();
        let Some(off) = h.headers().get("upload-offset") else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let off: usize = off.to_str().unwrap().parse().unwrap();
        let r = web
            .patch(srv.url(loc))
            .header("Upload-Offset", off.to_string())
            .header("Upload-Complete", "?1")
            .header("Content-Type", "application/partial-upload")
            .body(body[off..].to_vec())
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            return true;
        }
        // 409: the cut request is still being wound up; ask again.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Kills `n` uploads; returns (partial or corrupt files seen, temp files left).
pub async fn run(n: usize) -> (usize, usize) {
    let srv = TestServer::start().await;
    let web = srv.web();
    let http_addr = srv.http.trim_start_matches("http://").to_string();
    let mut rng = Rng::new("uploads");
    let mut prev: HashMap<&str, String> = HashMap::new();
    let (mut bad, mut pending) = (0, Vec::new());
    for i in 0..n {
        let name = TARGETS[i % 3];
        if rng.below(4) == 0 {
            let body = random_bytes(1 + rng.below(256 * 1024), (i as u64) << 32 | 3);
            prev.insert(name, put_whole(&srv, &web, name, body).await);
        }
        let body = random_bytes(1 + rng.below(512 * 1024), (i as u64) << 32 | 7);
        let md5 = md5_hex(&body);
        match i % 3 {
            0 => {
                let mut bytes = hello_frame(crate::common::TOKEN);
                let req = json!({"op": "put", "path": name, "size": body.len(), "md5": md5});
                bytes.extend(json_frame(REQUEST, 1, &req));
                for c in body.chunks(64 * 1024) {
                    bytes.extend(frame(DATA, 1, c));
                }
                let cut = rng.below(bytes.len());
                cut_off(&srv.addr, &bytes, cut).await;
            }
            1 => {
                let path = format!("/files/{name}");
                let mut bytes = http_head("PUT", &path, body.len(), &[("X-Checksum-Md5", md5)]);
                bytes.extend_from_slice(&body);
                let cut = rng.below(bytes.len());
                cut_off(&http_addr, &bytes, cut).await;
            }
            _ => {
                let loc = create_upload(&srv, &web, name, &md5).await;
                let extra = [
                    ("Upload-Offset", "0".to_string()),
                    ("Upload-Complete", "?1".to_string()),
                    ("Content-Type", "application/partial-upload".to_string()),
                ];
                let mut bytes = http_head("PATCH", &loc, body.len(), &extra);
                bytes.extend_from_slice(&body);
                let cut = rng.below(bytes.len());
                cut_off(&http_addr, &bytes, cut).await;
                if !check(&srv, &web, name, prev.get(name)).await {
                    bad += 1;
                }
                // Half of them are resumed to the end, the others left to be cancelled.
                if rng.below(2) == 0 {
                    if resume(&srv, &web, &loc, &body).await {
                        prev.insert(name, md5);
                    } else {
                        println!("{loc}: could not be resumed");
                        bad += 1;
                    }
                } else {
                    pending.push(loc);
                }
            }
        }
        if !check(&srv, &web, name, prev.get(name)).await {
            bad += 1;
        }
    }
    for loc in pending {
        // A 409 means its cut request is still being wound up.
        let deadline = Instant::now() + WAIT;
        while web.delete(srv.url(&loc)).send().await.unwrap().status() == 409
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Every cut upload is wound up soon: then only the final names are left in the root.
    let deadline = Instant::now() + WAIT;
    let left = loop {
        let left: Vec<String> = std::fs::read_dir(&srv.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| !TARGETS.contains(&f.as_str()))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if !left.is_empty() {
        println!("left in the root: {left:?}");
    }
    srv.stop().await;
    (bad, left.len())
}
