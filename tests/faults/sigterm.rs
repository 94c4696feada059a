//! SIGTERM to a real `ferry serve` while 20 uploads are in flight: each upload completes with
//! its MD5 or leaves nothing under its name, the server exits 0 within its grace, and its
//! database passes `PRAGMA integrity_check`.

use crate::common::random_bytes;
use crate::raw::*;
use crate::served::{SERVE_TOKEN, Served};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const SIZE: usize = 2 << 20;
const CHUNK: usize = 64 << 10;

/// What one upload was told: true completed, false refused or cut off.
type Outcome = bool;

/// Sends `body` in chunks, `pause` apart; says `started` after the first one.
async fn paced(
    s: &mut TcpStream,
    pieces: Vec<Vec<u8>>,
    pause: Duration,
    started: mpsc::Sender<()>,
) -> bool {
    for (i, p) in pieces.into_iter().enumerate() {
        if s.write_all(&p).await.is_err() {
            let _ = started.send(()).await;
            return false;
        }
        if i == 1 {
            let _ = started.send(()).await;
        }
        tokio::time::sleep(pause).await;
    }
    true
}

async fn tcp_put(
    addr: String,
    name: String,
    body: Vec<u8>,
    pause: Duration,
    started: mpsc::Sender<()>,
) -> Outcome {
    let Ok(mut s) = hello(&addr, SERVE_TOKEN).await else {
        let _ = started.send(()).await;
        return false;
    };
    let req = json!({"op": "put", "path": name, "size": body.len(), "md5": md5_hex(&body)});
    let mut pieces = vec![json_frame(REQUEST, 1, &req)];
    pieces.extend(body.chunks(CHUNK).map(|c| frame(DATA, 1, c)));
    paced(&mut s, pieces, pause, started).await;
    // Window grants come first; the stream ends with End (0x12) or Error.
    loop {
        match tokio::time::timeout(WAIT, read_frame(&mut s)).await {
            Ok(Some((0x12, 1, _))) => return true,
            Ok(Some((ERROR, _, _))) | Ok(None) | Err(_) => return false,
            Ok(Some(_)) => {}
        }
    }
}

async fn http_put(
    addr: String,
    name: String,
    body: Vec<u8>,
    pause: Duration,
    started: mpsc::Sender<()>,
) -> Outcome {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        let _ = started.send(()).await;
        return false;
    };
    let head = http_head(
        "PUT",
        &format!("/files/{name}"),
        body.len(),
        &[
            ("X-Checksum-Md5", md5_hex(&body)),
            ("Authorization", format!("Bearer {SERVE_TOKEN}")),
        ],
    );
    let mut pieces = vec![head];
    pieces.extend(body.chunks(CHUNK).map(|c| c.to_vec()));
    paced(&mut s, pieces, pause, started).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    if !got.is_empty() && !got.starts_with(b"HTTP/1.1 2") {
        println!("{name}: answered {:?}", String::from_utf8_lossy(&got));
    }
    got.starts_with(b"HTTP/1.1 2")
}

async fn integrity(data: &Path) -> String {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data.join("ferry.db"))
        .read_only(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    let r: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    r
}

/// Returns (bad outcomes, a note with the counts).
pub async fn run(n: usize, grace: u64) -> (usize, String) {
    let dir = tempfile::tempdir().unwrap();
    let (root, data): (PathBuf, PathBuf) = (dir.path().join("root"), dir.path().join("data"));
    let srv = Served::start(&root, &data, &["--shutdown-grace", &grace.to_string()]).await;
    let mut rng = Rng::new("sigterm");
    let pieces = (SIZE / CHUNK) as u64;
    // Each upload takes from a second to twice the grace: some can finish in time, some not.
    let plan: Vec<(String, Vec<u8>, Duration)> = (0..n)
        .map(|i| {
            let ms = 1000 + rng.below(2000 * grace as usize) as u64;
            let body = random_bytes(SIZE, 1000 + 2 * i as u64);
            (
                format!("up-{i}.bin"),
                body,
                Duration::from_millis(ms / pieces),
            )
        })
        .collect();
    let (tx, mut rx) = mpsc::channel(n);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (name, body, pause)) in plan.iter().cloned().enumerate() {
        let t = tx.clone();
        let (tcp, http) = (srv.tcp.clone(), srv.http.clone());
        tasks.spawn(async move {
            let ok = if i % 2 == 0 {
                tcp_put(tcp, name, body, pause, t).await
            } else {
                http_put(http, name, body, pause, t).await
            };
            (i, ok)
        });
    }
    for _ in 0..n {
        rx.recv().await.unwrap();
    }
    srv.terminate();
    let t0 = Instant::now();
    let (code, log) = srv.wait(Duration::from_secs(grace + 10)).await;
    let took = t0.elapsed();
    let mut told = vec![false; n];
    for (i, ok) in tasks.join_all().await {
        told[i] = ok;
    }
    let (mut bad, mut done, mut cut) = (0, 0, 0);
    for (i, (name, body, pause)) in plan.iter().enumerate() {
        let file = std::fs::read(root.join(name)).ok().map(|b| md5_hex(&b));
        let whole = file.as_ref() == Some(&md5_hex(body));
        // Sent in full well inside the grace: the server owed it a finish.
        let in_time =
            *pause * pieces as u32 + Duration::from_millis(500) < Duration::from_secs(grace);
        let ok = match (told[i], &file) {
            (true, _) => whole,
            (false, None) => !in_time,
            // Committed as the connection was cut: whole, or partial (bad).
            (false, Some(_)) => whole,
        };
        if std::env::var_os("FERRY_SOAK_VERBOSE").is_some() || !ok {
            let kind = if i % 2 == 0 { "tcp" } else { "http" };
            let ms = pause.as_millis() as u64 * pieces;
            println!(
                "{name} ({kind}, {ms} ms): told {}, file {file:?}, whole {whole}",
                told[i]
            );
        }
        bad += usize::from(!ok);
        if whole { done += 1 } else { cut += 1 }
    }
    let temps = std::fs::read_dir(&root)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count()
        })
        .unwrap_or(0);
    if code != Some(0) || took > Duration::from_secs(grace + 2) {
        println!("exit {code:?} after {took:?} (grace {grace} s)\n{log}");
        bad += 1;
    }
    let check = integrity(&data).await;
    if check != "ok" {
        println!("integrity_check: {check}");
        bad += 1;
    }
    let note = format!(
        "{done} completed with their MD5, {cut} cut cleanly, exit {code:?} {:.1} s after SIGTERM (grace {grace} s), integrity_check {check}, {temps} temp files left",
        took.as_secs_f64()
    );
    (bad, note)
}
