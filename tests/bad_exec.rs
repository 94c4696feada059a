//! Hostile commands: shell metacharacters in argv mode, an output flood, a command that never
//! ends, and a grandchild left behind by a client that vanishes. The expected answers are
//! listed in docs/security.md ("Bad-input suite"); the fork bomb and secrets in the
//! environment belong to tests/sandbox.rs.

mod bad;
mod common;

use bad::*;
use common::*;
use ferry::core::error::Code;
use ferry::core::exec::ExecRequest;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The words of the brief's argv, each a shell metacharacter or construct.
const WORDS: [&str; 6] = ["echo", "$(id)", ";", "|", "&&", "`x`"];

/// In argv mode nothing is interpreted: `echo` prints each word as given, over TCP and HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn argv_metacharacters_stay_literal() {
    let s = TestServer::start().await;
    let expected = "$(id) ; | && `x`\n";
    let argv: Vec<String> = WORDS.iter().map(|w| w.to_string()).collect();
    let c = s.client().await;
    let req = ExecRequest {
        argv: Some(argv.clone()),
        ..Default::default()
    };
    let (out, err, end) = c.exec_collect(req).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out), expected);
    assert!(err.is_empty());
    assert_eq!(end.exit_code, Some(0));
    // One argument holding a whole command line is one argument too.
    let req = ExecRequest {
        argv: Some(vec!["echo".into(), "x; touch pwned && touch pwned2".into()]),
        ..Default::default()
    };
    let (out, _, _) = c.exec_collect(req).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "x; touch pwned && touch pwned2\n"
    );

    let resp = s
        .web()
        .post(s.url("/api/v1/exec"))
        .json(&json!({"argv": argv}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["stdout"].as_str(), v["exit_code"].as_i64()),
        (Some(expected), Some(0)),
        "{v}"
    );
    assert!(!s.path("pwned").exists() && !s.path("pwned2").exists());
    s.stop().await;
}

/// `yes` over HTTP: the JSON answer and the NDJSON stream are both cut at the output cap
/// exactly, `truncated`, the command killed (signal 9). (TCP: tests/exec.rs
/// `output_cap_truncates_and_stops_the_command`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_yes_flood_is_cut_at_the_cap_over_http() {
    let cap = 256 * 1024;
    let s = TestServer::start_with(|c| c.core.exec.max_output = cap).await;
    let started = Instant::now();
    let resp = s
        .web()
        .post(s.url("/api/v1/exec"))
        .json(&json!({"cmd": "yes"}))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["stdout"].as_str().unwrap().len() as u64,
        cap,
        "the cap, exactly"
    );
    assert_eq!(
        (v["truncated"].as_bool(), v["signal"].as_i64()),
        (Some(true), Some(9)),
        "{}",
        v["signal"]
    );
    let resp = s
        .web()
        .post(s.url("/api/v1/exec"))
        .header("accept", "application/x-ndjson")
        .json(&json!({"cmd": "yes"}))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(
        (last["truncated"].as_bool(), last["signal"].as_i64()),
        (Some(true), Some(9)),
        "{last}"
    );
    let total: usize = lines
        .iter()
        .filter_map(|l| l["stdout"].as_str())
        .map(str::len)
        .sum();
    assert_eq!(total as u64, cap, "the cap, exactly");
    assert!(started.elapsed() < Duration::from_secs(20));
    s.stop().await;
}

/// `sleep infinity` ends at the request's timeout, and without one at the server's limit:
/// `timeout` over TCP, 200 with `error.code = timeout` over HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn sleep_infinity_ends_at_the_timeout() {
    let s = TestServer::start_with(|c| c.core.exec.timeout = Duration::from_secs(1)).await;
    let c = s.client().await;
    for timeout_ms in [Some(300), None, Some(3_600_000)] {
        let started = Instant::now();
        let req = ExecRequest {
            cmd: Some("sleep infinity".into()),
            timeout_ms,
            ..Default::default()
        };
        let err = c.exec_collect(req).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Timeout), "{timeout_ms:?}: {err}");
        let took = started.elapsed();
        let limit = Duration::from_millis(timeout_ms.unwrap_or(1000).min(1000));
        assert!(
            took >= limit && took < limit + Duration::from_secs(3),
            "{timeout_ms:?}: {took:?}"
        );
    }
    let started = Instant::now();
    let resp = s
        .web()
        .post(s.url("/api/v1/exec"))
        .json(&json!({"argv": ["sleep", "infinity"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "timeout", "{v}");
    assert!(started.elapsed() < Duration::from_secs(4));
    s.stop().await;
}

/// A command leaves a grandchild behind (its parent exits, `nohup`, output to /dev/null), and
/// the client's TCP connection drops mid-command: the grandchild is gone soon after.
#[tokio::test(flavor = "multi_thread")]
async fn a_backgrounded_grandchild_dies_on_disconnect() {
    let s = TestServer::start().await;
    let mut raw = Raw::authenticated(&s).await;
    let cmd = "sh -c 'nohup sleep 300 >/dev/null 2>&1 & echo $!'; sleep 300";
    raw.send(&json_frame(REQUEST, 1, &json!({"op": "exec", "cmd": cmd})))
        .await;
    let mut line = Vec::new();
    while !line.contains(&b'\n') {
        let f = raw.frame().await;
        assert_eq!((f.kind, f.stream), (STDOUT, 1), "{f:?}");
        line.extend_from_slice(&f.payload);
    }
    let pid: i32 = String::from_utf8(line).unwrap().trim().parse().unwrap();
    assert!(!process_dead(pid), "the grandchild should be running");
    drop(raw);
    assert!(
        eventually(Duration::from_secs(5), || process_dead(pid)).await,
        "the grandchild {pid} outlived the dropped connection"
    );
    assert!(
        eventually(WAIT, || s.core.registry.sessions().is_empty()).await,
        "the session outlived its connection"
    );
    assert_serving(&s).await;
    s.stop().await;
}
