//! Many idle connections to a real `ferry serve`: what each costs in resident memory, and that
//! the idle timeout closes every one of them. In rounds: memory a round leaves behind should be
//! reused by the next, not added to.

use crate::raw::*;
use crate::served::{SERVE_TOKEN, Served};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Opens `n` connections (200 at a time); returns them and how many failed.
async fn open(addr: &str, n: usize) -> (Vec<TcpStream>, usize) {
    let (mut conns, mut failed) = (Vec::with_capacity(n), 0);
    for batch in (0..n).collect::<Vec<_>>().chunks(200) {
        let mut set = tokio::task::JoinSet::new();
        for _ in batch {
            let addr = addr.to_string();
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
    (conns, failed)
}

/// Waits for each connection's `timeout` error frame and then its end; returns how many did.
async fn closed_by_idle(conns: Vec<TcpStream>, idle: Duration) -> usize {
    let mut set = tokio::task::JoinSet::new();
    for mut s in conns {
        set.spawn(async move {
            let first = tokio::time::timeout(idle + Duration::from_secs(30), read_frame(&mut s)).await;
            let ok = matches!(&first, Ok(Some((ERROR, 0, p))) if String::from_utf8_lossy(p).contains("\"timeout\""));
            ok && matches!(tokio::time::timeout(WAIT, read_frame(&mut s)).await, Ok(None))
        });
    }
    set.join_all().await.into_iter().filter(|&ok| ok).count()
}

/// Returns (connections not closed by the idle timeout, a note with the memory figures).
pub async fn run(n: usize, rounds_wanted: usize) -> (usize, String) {
    let dir = tempfile::tempdir().unwrap();
    // Long enough to open them all before the first one times out.
    let idle = Duration::from_secs(3.max(n as u64 / 300));
    let max = (n + 64).to_string();
    let flags = [
        "--idle-timeout",
        &idle.as_secs().to_string(),
        "--max-connections",
        &max,
    ];
    let srv = Served::start(&dir.path().join("root"), &dir.path().join("data"), &flags).await;
    // One connection first, so the baseline includes what the first one warms up.
    drop(hello(&srv.tcp, SERVE_TOKEN).await.unwrap());
    let before = rss_kib(srv.pid);
    let (mut bad, mut rounds) = (0, Vec::new());
    for round in 1..=rounds_wanted {
        let t0 = Instant::now();
        let (conns, failed) = open(&srv.tcp, n).await;
        let opened = t0.elapsed();
        let during = rss_kib(srv.pid);
        if opened >= idle {
            println!("opening took {opened:?}, longer than the idle timeout {idle:?}");
        }
        let closed = closed_by_idle(conns, idle).await;
        let took = t0.elapsed();
        // Sessions are closed (and their audit rows written) just after the sockets.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(srv.pid);
        bad += n - closed;
        println!("idle round {round}: {during} KiB open, {after} KiB closed");
        let per_conn = during.saturating_sub(before) as f64 / (n - failed).max(1) as f64;
        rounds.push(format!(
            "round {round}: {during} KiB with {n} open ({per_conn:.1} KiB/conn over the baseline, opened in {:.1} s), \
             {closed} closed by the idle timeout within {:.1} s, then {after} KiB; {failed} failed to open",
            opened.as_secs_f64(),
            took.as_secs_f64()
        ));
    }
    srv.terminate();
    let (code, _) = srv.wait(Duration::from_secs(30)).await;
    bad += usize::from(code != Some(0));
    let note = format!(
        "idle timeout {} s, baseline RSS {before} KiB; {}",
        idle.as_secs(),
        rounds.join("; ")
    );
    (bad, note)
}
