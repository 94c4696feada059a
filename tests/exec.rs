//! Commands over TCP: output, exit codes, limits, process groups, concurrency, audit.

mod common;

use common::*;
use ferry::client::ClientError;
use ferry::core::error::Code;
use ferry::core::exec::ExecRequest;
use ferry::tcp::codec::Kind;
use ferry::tcp::messages::Request;
use std::time::{Duration, Instant};

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest {
        cmd: Some(cmd.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn output_order_and_exit_codes() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let (out, err, end) = c
        .exec_collect(sh(
            "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 7",
        ))
        .await
        .unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "out1\nout2\nout3\n");
    assert_eq!(String::from_utf8(err).unwrap(), "err1\nerr2\nerr3\n");
    assert_eq!(
        (end.exit_code, end.signal, end.truncated),
        (Some(7), None, false)
    );

    let (_, _, end) = c.exec_collect(sh("kill -9 $$")).await.unwrap();
    assert_eq!((end.exit_code, end.signal), (None, Some(9)));

    // argv mode: shell metacharacters stay literal.
    let req = ExecRequest {
        argv: Some(vec!["echo".into(), "$HOME;|`x`".into()]),
        ..Default::default()
    };
    let (out, _, end) = c.exec_collect(req).await.unwrap();
    assert_eq!(
        (out.as_slice(), end.exit_code),
        (&b"$HOME;|`x`\n"[..], Some(0))
    );

    let missing = ExecRequest {
        argv: Some(vec!["no-such-program-ferry".into()]),
        ..Default::default()
    };
    let err = c.exec_collect(missing).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_is_cleared_and_cwd_confined() {
    let s = TestServer::start().await;
    std::fs::create_dir(s.path("sub")).unwrap();
    let c = s.client().await;
    let mut req = sh("env; pwd");
    req.cwd = Some("sub".into());
    req.env.insert("GREETING".into(), "hi there".into());
    let (out, _, _) = c.exec_collect(req).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("GREETING=hi there"), "{out}");
    assert!(
        out.contains(&format!("{}\n", s.path("sub").display())),
        "{out}"
    );
    for line in out.lines().filter(|l| l.contains('=')) {
        let name = line.split('=').next().unwrap();
        assert!(
            [
                "PATH", "HOME", "LANG", "TERM", "GREETING", "PWD", "SHLVL", "_", "OLDPWD"
            ]
            .contains(&name),
            "unexpected variable leaked into the command: {line}"
        );
    }
    for bad in ["..", "/tmp", "missing-dir"] {
        let mut req = sh("true");
        req.cwd = Some(bad.into());
        let err = c.exec_collect(req).await.unwrap_err();
        assert!(
            matches!(err.code(), Some(Code::ForbiddenPath | Code::NotFound)),
            "{bad}: {err}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_megabytes_of_output_arrive_whole() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let n = 50 * 1024 * 1024;
    let (out, _, end) = c
        .exec_collect(sh(&format!("yes 0123456789abcdef | head -c {n}")))
        .await
        .unwrap();
    assert_eq!(end.exit_code, Some(0));
    assert!(!end.truncated);
    assert_eq!(out.len(), n);
    assert!(
        out.chunks(17)
            .all(|l| l == b"0123456789abcdef\n" || l.len() < 17)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn output_cap_truncates_and_stops_the_command() {
    let s = TestServer::start_with(|cfg| cfg.core.exec.max_output = 1 << 20).await;
    let c = s.client().await;
    let started = Instant::now();
    let (out, _, end) = c.exec_collect(sh("yes")).await.unwrap();
    assert!(end.truncated);
    assert_eq!(out.len(), 1 << 20);
    assert_eq!(end.signal, Some(9));
    assert!(started.elapsed() < Duration::from_secs(30));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_streams_to_the_command() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let input = random_bytes(3 << 20, 5);
    let mut out = Vec::new();
    let end = c
        .exec(
            sh("md5sum"),
            Some(std::io::Cursor::new(input.clone())),
            |k, b| {
                if k == Kind::Stdout {
                    out.extend_from_slice(&b)
                }
                std::ops::ControlFlow::Continue(())
            },
        )
        .await
        .unwrap();
    assert_eq!(end.exit_code, Some(0));
    let want = ferry::core::checksum::hash_reader(&input[..]).unwrap().0;
    assert_eq!(
        String::from_utf8(out).unwrap().split_whitespace().next(),
        Some(want.as_str())
    );
    s.stop().await;
}

/// Starts `sleep 300` in the background of a command that waits for it; returns its pid.
async fn sleeper(c: &ferry::client::Client) -> (ferry::client::StreamHandle, i32) {
    let mut st = c
        .open(&Request::Exec(sh("sleep 300 & echo $!; wait")))
        .await
        .unwrap();
    let pid = first_line_pid(&mut st).await;
    (st, pid)
}

async fn first_line_pid(stream: &mut ferry::client::StreamHandle) -> i32 {
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') {
        let f = stream.recv().await.unwrap();
        assert_eq!(f.kind, Kind::Stdout);
        buf.extend_from_slice(&f.payload);
    }
    String::from_utf8(buf).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_the_whole_group_grandchildren_too() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let mut req = sh("sleep 300 & echo $!; wait");
    req.timeout_ms = Some(500);
    let mut st = c.open(&Request::Exec(req)).await.unwrap();
    let grandchild = first_line_pid(&mut st).await;
    let err = loop {
        match st.recv().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Some(Code::Timeout), "{err}");
    assert!(
        wait_dead(grandchild).await,
        "the backgrounded sleep survived the timeout"
    );
    assert_eq!(s.count("commands", "error = 'timeout'").await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_disconnect_kill_the_group() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let (mut st, pid) = sleeper(&c).await;
    st.cancel().await.unwrap();
    let err = st.recv().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Cancelled), "{err}");
    assert!(wait_dead(pid).await, "cancel left the grandchild running");

    // A client that vanishes mid-command, without a word: its commands die with it.
    use ferry::tcp::codec::{Frame, FrameCodec};
    use futures_util::{SinkExt, StreamExt};
    let sock = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let mut framed = tokio_util::codec::Framed::new(sock, FrameCodec::new(1 << 20));
    let hello = serde_json::json!({"version": 1, "token": TOKEN});
    framed
        .send(Frame::json(Kind::Hello, 0, &hello))
        .await
        .unwrap();
    assert_eq!(framed.next().await.unwrap().unwrap().kind, Kind::Welcome);
    let req = Request::Exec(sh("sleep 300 & echo $!; wait"));
    framed
        .send(Frame::json(Kind::Request, 1, &req))
        .await
        .unwrap();
    let mut line = Vec::new();
    while !line.contains(&b'\n') {
        let f = framed.next().await.unwrap().unwrap();
        assert_eq!(f.kind, Kind::Stdout);
        line.extend_from_slice(&f.payload);
    }
    let pid: i32 = String::from_utf8(line).unwrap().trim().parse().unwrap();
    drop(framed);
    assert!(
        wait_dead(pid).await,
        "disconnect left the grandchild running"
    );
    // The other connection is unaffected.
    c.ping().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_streams_on_one_connection() {
    let s = TestServer::start().await;
    std::fs::write(s.path("big.bin"), random_bytes(20 << 20, 9)).unwrap();
    let c = s.client().await;
    // A command blocked on its stdin and a big download share the connection with quick commands.
    let (mut feed, stdin) = tokio::io::duplex(64);
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            c.exec(sh("read line; echo got $line"), Some(stdin), |_, b| {
                out.extend_from_slice(&b);
                std::ops::ControlFlow::Continue(())
            })
            .await
            .unwrap();
            out
        })
    };
    let big = {
        let c = c.clone();
        tokio::spawn(async move {
            let (v, out) = c
                .get("big.bin", 0, Default::default(), Vec::new(), |_| {})
                .await
                .unwrap();
            (v.len(), out.header.size)
        })
    };
    let mut quick = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        quick.push(tokio::spawn(async move {
            let (out, _, end) = c.exec_collect(sh(&format!("echo {i}"))).await.unwrap();
            assert_eq!(end.exit_code, Some(0));
            assert_eq!(String::from_utf8(out).unwrap(), format!("{i}\n"));
        }));
    }
    for q in quick {
        q.await.unwrap();
    }
    // The quick ones did not wait behind the blocked one, which still waits for its line.
    assert!(!slow.is_finished());
    use tokio::io::AsyncWriteExt;
    feed.write_all(b"go\n").await.unwrap();
    drop(feed);
    assert_eq!(slow.await.unwrap(), b"got go\n");
    let (got, size) = big.await.unwrap();
    assert_eq!(got as u64, size);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_clients() {
    let s = TestServer::start().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = s.addr.clone();
        tasks.push(tokio::spawn(async move {
            let c = ferry::client::Client::connect(&addr, TOKEN).await?;
            let (out, _, end) = c.exec_collect(sh(&format!("echo client-{i}"))).await?;
            assert_eq!(end.exit_code, Some(0));
            assert_eq!(String::from_utf8(out).unwrap(), format!("client-{i}\n"));
            Ok::<_, ClientError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        s.count("commands", "command LIKE 'echo client-%' AND exit_code = 0")
            .await,
        200
    );
    assert!(s.count("sessions", "transport = 'tcp'").await >= 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_rows_and_registry() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let sessions = s.core.registry.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].transport, "tcp");
    assert_eq!(*sessions[0].id, *c.welcome.session);
    c.exec_collect(sh("echo audited")).await.unwrap();
    s.flush_audit().await;
    let row: (String, String, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT session_id, transport, exit_code, bytes_out FROM commands WHERE command = 'echo audited'",
    )
    .fetch_one(s.core.audit.pool())
    .await
    .unwrap();
    assert_eq!(
        row,
        (c.welcome.session.clone(), "tcp".into(), Some(0), Some(8))
    );
    let c_session = c.welcome.session.clone();
    drop(c);
    // The session's end is recorded once the server has seen the close.
    let mut events = s.core.registry.subscribe();
    while !s.core.registry.sessions().is_empty() {
        let _ = events.recv().await;
    }
    let ended =
        format!("id = '{c_session}' AND ended_at IS NOT NULL AND end_reason = 'closed by peer'");
    assert_eq!(s.count("sessions", &ended).await, 1);
    let entries = s
        .core
        .audit
        .recent(&ferry::core::auth::Principal::admin("t"), 10, None)
        .await
        .unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.kind == "command" && e.summary == "echo audited")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_cancels_commands_and_finishes() {
    let mut s = TestServer::start().await;
    let c = s.client().await;
    let (mut st, pid) = sleeper(&c).await;
    let running = s.take_running();
    s.shutdown_token().cancel();
    let err = st.recv().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Cancelled), "{err}");
    assert!(wait_dead(pid).await);
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the server shuts down within its grace period");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_left_the_group_cannot_hold_the_command_open() {
    let s = TestServer::start().await;
    let c = s.client().await;
    // `setsid` escapes the process group and keeps stdout open; the command still ends.
    let mut req = sh("setsid sleep 30 & echo $!; echo started");
    req.timeout_ms = Some(20_000);
    let started = Instant::now();
    let (out, _, end) = c.exec_collect(req).await.unwrap();
    assert_eq!(end.exit_code, Some(0));
    assert!(String::from_utf8_lossy(&out).contains("started"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "held open for {:?}",
        started.elapsed()
    );
    let pid: i32 = String::from_utf8(out)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_per_connection_are_capped() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let mut open = Vec::new();
    for i in 0..64 {
        let req = Request::Put {
            path: format!("p{i}"),
            size: 1,
            md5: None,
            md5_trailer: false,
        };
        open.push(c.open(&req).await.unwrap());
    }
    let mut extra = c.open(&Request::Ping {}).await.unwrap();
    let err = extra.recv().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Busy), "{err}");
    // Finishing one frees a slot.
    let mut first = open.remove(0);
    first
        .send_data(bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    loop {
        let f = first.recv().await.unwrap();
        if f.kind == Kind::End {
            break;
        }
    }
    drop(open);
    c.ping().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_stream_is_cancelled_on_a_live_connection() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let (st, pid) = sleeper(&c).await;
    drop(st);
    assert!(
        wait_dead(pid).await,
        "the command of a dropped stream kept running"
    );
    c.ping().await.unwrap();
    s.stop().await;
}
