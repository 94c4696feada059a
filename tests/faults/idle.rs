//! Many idle connections to a real `ferry serve`: what each costs in resident memory, and that
//! the idle timeout closes every one of them.

use crate::raw::*;
use crate::served::{SERVE_TOKEN, Served};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Returns (connections not closed by the idle timeout, a note with the memory figures).
pub async fn run(n: usize) -> (usize, String) {
    let dir = tempfile::tempdir().unwrap();
    // Long enough to open them all before the first one times out.
    let idle = Duration::from_secs(3.max(n as u64 / 100));
    let max = (n + 64).to_string();
    let flags = [
        "--idle-timeout",
        &idle.as_secs().to_string(),
        "--max-connections",
        &max,
    ];
    let srv = Served::start(&dir.path().join("root"), &dir.path().join("data"), &flags).await;
    // One connection first, so the baseline includes what the first one warms up.
    let warm = hello(&srv.tcp, SERVE_TOKEN).await.unwrap();
    drop(warm);
    let before = rss_kib(srv.pid);
    let t0 = Instant::now();
    let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
    let mut failed = 0;
    for batch in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut set = tokio::task::JoinSet::new();
        for _ in batch {
            let addr = srv.tcp.clone();
            set.spawn(async move { hello(&addr, SERVE_TOKEN).await });
        }
        for r in set.join_all().await {
            match r {
                Ok(s) => conns.push(s),
                Err(e) => {
                    if failed == 0 {
                        println!("connect failed: {e}");
                    }
                    failed += 1;
                }
            }
        }
    }
    let opened = t0.elapsed();
    let during = rss_kib(srv.pid);
    let per_conn = (during.saturating_sub(before)) as f64 / conns.len().max(1) as f64;
    if opened >= idle {
        println!("opening took {opened:?}, longer than the idle timeout {idle:?}");
    }
    // Each one gets its `timeout` error frame, then the end of the stream.
    let mut set = tokio::task::JoinSet::new();
    for mut s in conns {
        set.spawn(async move {
            let limit = idle + Duration::from_secs(30);
            let first = tokio::time::timeout(limit, read_frame(&mut s)).await;
            let ok = matches!(&first, Ok(Some((ERROR, 0, p))) if String::from_utf8_lossy(p).contains("\"timeout\""));
            ok && matches!(tokio::time::timeout(WAIT, read_frame(&mut s)).await, Ok(None))
        });
    }
    let closed = set.join_all().await.into_iter().filter(|&ok| ok).count();
    let took = t0.elapsed();
    // Let the server finish closing sessions before the last figure.
    let deadline = Instant::now() + WAIT;
    let mut after = rss_kib(srv.pid);
    while after > before + (during - before) / 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss_kib(srv.pid);
    }
    srv.terminate();
    let (code, _) = srv.wait(Duration::from_secs(30)).await;
    let bad = n - closed + usize::from(code != Some(0));
    let note = format!(
        "RSS {before} KiB -> {during} KiB with {n} open ({per_conn:.1} KiB/conn, opened in {:.1} s) -> {after} KiB after; \
         {closed} closed by the {} s idle timeout within {:.1} s; {failed} failed to open",
        opened.as_secs_f64(),
        idle.as_secs(),
        took.as_secs_f64()
    );
    (bad, note)
}
