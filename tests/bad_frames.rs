//! Bad framing on the TCP plane: absurd lengths, truncation, slow peers, random bytes and
//! floods of tiny frames. The expected answers are listed in docs/security.md ("Bad-input
//! suite"); the cases already covered by tests/protocol.rs are cited there, not repeated here.

mod bad;
mod common;

use bad::*;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest length field there is, before and after the hello: `too_large` at once.
#[tokio::test(flavor = "multi_thread")]
async fn the_largest_u32_length_is_too_large() {
    let s = TestServer::start().await;
    let mut raw = Raw::connect(&s).await;
    raw.send(&u32::MAX.to_be_bytes()).await;
    raw.expect_conn_error("too_large").await;
    let mut raw = Raw::authenticated(&s).await;
    raw.send(&u32::MAX.to_be_bytes()).await;
    raw.expect_conn_error("too_large").await;
    assert_serving(&s).await;
    s.stop().await;
}

/// A frame cut off by the peer's close: the server closes quietly (at most a `bad_request`)
/// and the session leaves the registry.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_frame_ends_the_session() {
    let s = TestServer::start().await;
    for cut in [&ping(1)[..12], &frame(DATA, 1, b"abc")[..3]] {
        let mut raw = Raw::authenticated(&s).await;
        assert_eq!(s.core.registry.sessions().len(), 1);
        raw.send(cut).await;
        raw.sock.shutdown().await.unwrap();
        match raw.next().await {
            Next::Closed => {}
            Next::Frame(f) => {
                assert_eq!((f.kind, f.stream), (ERROR, 0), "{f:?}");
                assert_eq!(f.json()["code"], "bad_request", "{f:?}");
                assert!(matches!(raw.next().await, Next::Closed));
            }
            Next::Broken(e) => panic!("not a quiet close: {e}"),
        }
        assert!(
            eventually(WAIT, || s.core.registry.sessions().is_empty()).await,
            "the session outlived its connection: {:?}",
            s.core.registry.sessions()
        );
    }
    assert_serving(&s).await;
    s.stop().await;
}

/// A hello sent one byte at a time, slower than the hello timeout allows, is cut off with
/// `timeout` once the timeout has passed since the connection opened.
#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_hello_is_cut_at_the_hello_timeout() {
    let s = TestServer::start_with(|c| c.tcp.hello_timeout = Duration::from_secs(1)).await;
    let mut raw = Raw::connect(&s).await;
    let started = Instant::now();
    let hello = good_hello();
    let mut sent = 0;
    let answer = loop {
        if sent < hello.len() && raw.try_send(&hello[sent..sent + 1]).await.is_ok() {
            sent += 1;
        }
        // Pacing only: one byte every 250 ms (the whole hello would take over 10 s).
        tokio::select! {
            n = raw.next() => break n,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    };
    let waited = started.elapsed();
    let Next::Frame(f) = answer else {
        panic!("expected a timeout error, got {answer:?}")
    };
    assert_eq!((f.kind, f.stream), (ERROR, 0), "{f:?}");
    assert_eq!(f.json()["code"], "timeout", "{f:?}");
    assert!(sent < hello.len(), "the whole hello went out: {sent} bytes");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "cut after {waited:?} with a 1 s hello timeout"
    );
    assert!(s.core.registry.sessions().is_empty());
    assert_serving(&s).await;
    s.stop().await;
}

/// After the hello there is no read deadline: a request trickling in one byte at a time, and
/// an idle gap, both longer than the hello timeout, are served (docs/protocol.md section 9:
/// an authenticated idle connection is kept open).
#[tokio::test(flavor = "multi_thread")]
async fn after_the_hello_a_slow_peer_is_not_timed_out() {
    let s = TestServer::start_with(|c| c.tcp.hello_timeout = Duration::from_millis(300)).await;
    let mut raw = Raw::authenticated(&s).await;
    let started = Instant::now();
    for b in ping(1) {
        raw.send(&[b]).await;
        // Pacing only: the request takes about 1.3 s to arrive.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    raw.expect_pong(1).await;
    assert!(started.elapsed() > Duration::from_millis(600));
    tokio::time::sleep(Duration::from_millis(700)).await;
    raw.send(&ping(3)).await;
    raw.expect_pong(3).await;
    s.stop().await;
}

/// Reads what the server sends after the client stopped writing: frames a server may send,
/// then a close. Returns the connection error's code, if there was one.
async fn drain_after_garbage(raw: &mut Raw, what: &str) -> Option<String> {
    let _ = raw.sock.shutdown().await;
    let mut conn_error = None;
    loop {
        match raw.next().await {
            Next::Closed => return conn_error,
            // The server may close with our bytes unread, which the kernel turns into a reset.
            Next::Broken(e) if e.contains("reset") => return conn_error,
            Next::Broken(e) => panic!("{what}: {e}"),
            Next::Frame(f) => {
                assert!(
                    conn_error.is_none(),
                    "{what}: a frame after the connection error: {f:?}"
                );
                assert!(
                    [WELCOME, HEADER, END, ERROR, WINDOW, STDOUT, STDERR, DATA].contains(&f.kind),
                    "{what}: {f:?}"
                );
                if f.kind == ERROR {
                    let code = f.json()["code"].as_str().unwrap().to_string();
                    assert!(
                        [
                            "bad_request",
                            "too_large",
                            "not_found",
                            "forbidden_path",
                            "busy"
                        ]
                        .contains(&code.as_str()),
                        "{what}: {f:?}"
                    );
                    if f.stream == 0 {
                        conn_error = Some(code);
                    }
                }
            }
        }
    }
}

/// Random frames: plausible lengths, any kind byte (mostly valid ones), streams 0 to 3.
fn random_frames(len: usize, seed: u64) -> Vec<u8> {
    let r = random_bytes(len, seed);
    let kinds = [
        HELLO, WELCOME, REQUEST, HEADER, END, ERROR, DATA, STDOUT, STDERR, EOF, WINDOW, CANCEL,
    ];
    let mut out = Vec::new();
    let mut i = 0;
    while i + 3 < r.len() && out.len() < len {
        let kind = if r[i] < 240 {
            kinds[r[i] as usize % kinds.len()]
        } else {
            r[i]
        };
        let stream = u32::from(r[i + 1] % 4);
        let n = (r[i + 2] % 24) as usize;
        let payload = match r[i + 3] % 4 {
            0 => br#"{"op":"ping"}"#.to_vec(),
            1 => br#"{"op":"stat","path":"x"}"#.to_vec(),
            _ => r[i..(i + n).min(r.len())].to_vec(),
        };
        out.extend_from_slice(&frame(kind, stream, &payload));
        i += 4 + n;
    }
    out
}

/// Random bytes before the hello and after it, raw or shaped as frames: every seed gets
/// frames a server may send and a close (with `bad_request` or `too_large` on stream 0, or a
/// quiet close at the client's EOF); the server keeps serving new connections.
#[tokio::test(flavor = "multi_thread")]
async fn random_bytes_get_an_error_or_a_close() {
    let s = TestServer::start().await;
    for seed in 1..=6u64 {
        let mut raw = Raw::connect(&s).await;
        let _ = raw.try_send(&random_bytes(4096, seed)).await;
        let code = drain_after_garbage(&mut raw, &format!("seed {seed} before hello")).await;
        assert!(
            code.is_some(),
            "seed {seed}: random bytes before the hello got no error"
        );

        let mut raw = Raw::authenticated(&s).await;
        let _ = raw.try_send(&random_bytes(4096, seed + 100)).await;
        drain_after_garbage(&mut raw, &format!("seed {seed} after hello")).await;

        let mut raw = Raw::authenticated(&s).await;
        let _ = raw.try_send(&random_frames(4096, seed + 200)).await;
        drain_after_garbage(&mut raw, &format!("seed {seed} frames after hello")).await;

        assert_serving(&s).await;
    }
    assert!(
        eventually(WAIT, || s.core.registry.sessions().is_empty()).await,
        "sessions left behind: {:?}",
        s.core.registry.sessions()
    );
    s.stop().await;
}

/// 100 000 one-byte `Data` frames into a command's stdin, interleaved with 100 000 empty
/// `Cancel` frames on stream 0 (ignored) and pings: every byte arrives, every ping is answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_thousand_tiny_frames_are_served() {
    const N: usize = 100_000;
    let s = TestServer::start().await;
    let raw = Raw::authenticated(&s).await;
    let (mut rd, mut wr) = raw.sock.into_split();
    let exec = json!({"op": "exec", "cmd": "wc -c", "stdin": true});
    let writer = tokio::spawn(async move {
        wr.write_all(&json_frame(REQUEST, 1, &exec)).await.unwrap();
        let mut batch = Vec::new();
        for i in 0..N {
            batch.extend_from_slice(&frame(DATA, 1, b"x"));
            batch.extend_from_slice(&frame(CANCEL, 0, b""));
            if i % 10_000 == 9_999 {
                batch.extend_from_slice(&ping(1000 + i as u32));
                wr.write_all(&batch).await.unwrap();
                batch.clear();
            }
        }
        wr.write_all(&frame(EOF, 1, b"")).await.unwrap();
        wr
    });
    let mut buf = Vec::new();
    let (mut pongs, mut granted, mut stdout) = (0, 0u64, Vec::new());
    let end = loop {
        while buf.len() < 4
            || buf.len() < 4 + u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize
        {
            let mut chunk = [0u8; 64 * 1024];
            let n = tokio::time::timeout(WAIT, rd.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "the server closed mid-flood");
            buf.extend_from_slice(&chunk[..n]);
        }
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        let f: Vec<u8> = buf.drain(..4 + len).collect();
        let (kind, stream, payload) = (
            f[4],
            u32::from_be_bytes(f[5..9].try_into().unwrap()),
            &f[9..],
        );
        match (kind, stream) {
            (END, 1) => break serde_json::from_slice::<serde_json::Value>(payload).unwrap(),
            (END, _) => pongs += 1,
            (WINDOW, 1) => granted += u64::from(u32::from_be_bytes(payload.try_into().unwrap())),
            (STDOUT, 1) => stdout.extend_from_slice(payload),
            other => panic!(
                "unexpected frame {other:?}: {:?}",
                String::from_utf8_lossy(payload)
            ),
        }
    };
    let _wr = writer.await.unwrap();
    assert_eq!(String::from_utf8_lossy(&stdout).trim(), N.to_string());
    assert_eq!(end["exit_code"], 0, "{end}");
    assert_eq!(pongs, N / 10_000);
    assert_eq!(granted, N as u64, "each consumed byte is granted back");
    assert_serving(&s).await;
    s.stop().await;
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Frames that carry nothing (empty `Data`, repeated `Eof`) towards a command that does not
/// read its stdin cost no window, so the window cannot bound them: the server must not queue
/// them. 1.2 million of them (11 MB on the wire) leave the server's memory about where it was.
#[tokio::test(flavor = "multi_thread")]
async fn frames_that_carry_nothing_do_not_pile_up() {
    const N: usize = 600_000;
    let s = TestServer::start().await;
    let raw = Raw::authenticated(&s).await;
    let (mut rd, mut wr) = raw.sock.into_split();
    // Fill the command's stdin pipe so that the server's stdin writer is stuck.
    let mut start = json_frame(
        REQUEST,
        1,
        &json!({"op": "exec", "cmd": "sleep 60", "stdin": true}),
    );
    for _ in 0..8 {
        start.extend_from_slice(&frame(DATA, 1, &[b'y'; 32 * 1024]));
    }
    wr.write_all(&start).await.unwrap();
    // Reading answers on its own task, so the server's writes never block on us.
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = rd.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 4
                && buf.len() >= 4 + u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize
            {
                let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                let f: Vec<u8> = buf.drain(..4 + len).collect();
                if f[4] == END && u32::from_be_bytes(f[5..9].try_into().unwrap()) >= 2 {
                    let _ = pong_tx.send(());
                }
            }
        }
    });
    let mut pinged = 2;
    let mut round = async |w: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8]| {
        w.write_all(bytes).await.unwrap();
        w.write_all(&ping(pinged)).await.unwrap();
        pinged += 1;
        // The pong follows every frame sent before it through the server's demultiplexer.
        tokio::time::timeout(WAIT, pong_rx.recv())
            .await
            .expect("no pong")
            .unwrap();
    };
    round(&mut wr, b"").await;
    let before = rss();
    let empty_data = frame(DATA, 1, b"").repeat(N / 10);
    let eof = frame(EOF, 1, b"").repeat(N / 10);
    for _ in 0..10 {
        round(&mut wr, &empty_data).await;
    }
    for _ in 0..10 {
        round(&mut wr, &eof).await;
    }
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 24 << 20,
        "the server's memory grew by {} MiB for {} frames that carry nothing",
        grown >> 20,
        2 * N
    );
    drop(wr);
    reader.await.unwrap();
    assert_serving(&s).await;
    s.stop().await;
}
