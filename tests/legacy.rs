//! The legacy line protocol: classic Python socket clients (tests/legacy/clients.py, written
//! from the description of those clients) against a server with `--legacy`, on the TCP port
//! that framed clients keep using.

mod common;

use common::{TestServer, md5sum, random_bytes, wait_dead};
use ferry::core::registry::RegistryEvent;
use ferry::legacy::LegacyConfig;
use md5::{Digest, Md5};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::broadcast;

async fn legacy_server(tweak: impl FnOnce(&mut ferry::server::ServerConfig)) -> TestServer {
    TestServer::start_with(|cfg| {
        cfg.tcp.legacy = Some(Arc::new(LegacyConfig::default()));
        tweak(cfg);
    })
    .await
}

fn port(s: &TestServer) -> String {
    s.addr.rsplit(':').next().unwrap().to_string()
}

fn script() -> String {
    format!("{}/tests/legacy/clients.py", env!("CARGO_MANIFEST_DIR"))
}

/// Runs the clients script; its JSON lines, one per answer.
async fn clients(args: &[&str]) -> Vec<Value> {
    let run = Command::new("python3")
        .arg(script())
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the client finishes within 2 minutes")
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits for the registry to report a session's end: the server writes its audit row first.
async fn session_ended(events: &mut broadcast::Receiver<RegistryEvent>) {
    let ended = async {
        loop {
            match events.recv().await {
                Ok(RegistryEvent::SessionEnded { .. }) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("registry events ended: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the legacy session ends within 10 s");
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

/// Several commands on one connection: text, empty output (`0`), 5 MiB of output, a file in
/// the root; each length arrives alone, and the audit shows them all as `legacy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_client_runs_several_commands_on_one_connection() {
    let s = legacy_server(|_| {}).await;
    let mut events = s.core.registry.subscribe();
    std::fs::write(s.path("hello.txt"), "hi from the root\n").unwrap();
    let big = "head -c 5242880 /dev/zero | tr '\\0' x";
    let p = port(&s);
    let got = clients(&[
        "commands",
        &p,
        "ok",
        "echo hello",
        "true",
        big,
        "cat hello.txt",
        "printf 'caf\u{e9} %s' $((6*7))",
    ])
    .await;
    assert_eq!(got.len(), 5);
    assert_eq!(got[0]["text"], "hello\n");
    assert_eq!(got[1]["len"], 0);
    assert_eq!(got[2]["len"], 5 << 20);
    assert_eq!(got[2]["md5"], md5_hex(&vec![b'x'; 5 << 20]));
    assert_eq!(got[3]["text"], "hi from the root\n");
    assert_eq!(got[4]["text"], "caf\u{e9} 42");
    assert_eq!(s.count("sessions", "transport = 'legacy'").await, 1);
    session_ended(&mut events).await;
    assert_eq!(
        s.count(
            "sessions",
            "transport = 'legacy' AND user = 'legacy' AND end_reason = 'closed by peer'"
        )
        .await,
        1
    );
    assert_eq!(
        s.count("commands", "transport = 'legacy' AND exit_code = 0")
            .await,
        5
    );
    // The framed protocol still answers on the same port.
    let c = s.client().await;
    let req = ferry::core::exec::ExecRequest {
        cmd: Some("echo framed".into()),
        ..Default::default()
    };
    let (stdout, _, _) = c.exec_collect(req).await.unwrap();
    assert_eq!(stdout, b"framed\n");
    s.stop().await;
}

/// An older client sends no acknowledgement: after the wait, the output comes anyway, apart
/// from its length, and the empty output needs nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_client_without_acknowledgement() {
    let s = legacy_server(|_| {}).await;
    let got = clients(&["commands", &port(&s), "-", "echo one", "true", "echo two"]).await;
    let texts: Vec<&str> = got.iter().map(|v| v["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["one\n", "", "two\n"]);
    s.stop().await;
}

/// An acknowledgement that arrives joined to the next command is told apart from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_joined_to_the_next_command() {
    let s = legacy_server(|_| {}).await;
    let got = clients(&["joined", &port(&s), "echo a", "echo b", "echo c"]).await;
    let texts: Vec<&str> = got.iter().map(|v| v["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["a\n", "b\n", "c\n"]);
    assert_eq!(s.count("commands", "transport = 'legacy'").await, 3);
    s.stop().await;
}

/// `get` of a 10 MB file: size, bytes, MD5 that matches. A missing file and a directory get
/// an error text the client survives, with an MD5 that matches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_client_gets_10_mb_with_its_md5() {
    let s = legacy_server(|_| {}).await;
    std::fs::write(s.path("big.bin"), random_bytes(10_000_000, 7)).unwrap();
    std::fs::create_dir(s.path("adir")).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let got = clients(&[
        "get",
        &port(&s),
        d,
        "big.bin",
        "missing.bin",
        "adir",
        "../etc/passwd",
    ])
    .await;
    assert_eq!(got[0]["size"], 10_000_000);
    assert_eq!(got[0]["ok"], true);
    assert_eq!(got[0]["md5"], md5sum(&s.path("big.bin")));
    assert_eq!(
        md5sum(&dest.path().join("big.bin")),
        md5sum(&s.path("big.bin"))
    );
    for bad in &got[1..] {
        assert_eq!(bad["ok"], false);
        assert_eq!(bad["sent_md5"], "0".repeat(32));
        assert!(
            bad["text"].as_str().unwrap().starts_with("ferry: "),
            "{bad}"
        );
    }
    assert!(got[1]["text"].as_str().unwrap().contains("not_found"));
    assert!(
        got[3]["text"].as_str().unwrap().contains("forbidden_path"),
        "{}",
        got[3]
    );
    assert_eq!(
        s.count(
            "transfers",
            "transport = 'legacy' AND path = 'big.bin' AND result = 'verified' AND bytes = 10000000"
        )
        .await,
        1
    );
    // The API shows the legacy transfer as any other.
    let v = s.api("/api/v1/transfers").await;
    let list = v["transfers"].as_array().unwrap();
    assert!(
        list.iter()
            .any(|t| t["transport"] == "legacy" && t["path"] == "big.bin"),
        "{list:?}"
    );
    s.stop().await;
}

/// Bad lines get an answer and the connection goes on; commands obey the exec timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_and_timeouts_get_clear_answers() {
    let s = legacy_server(|cfg| cfg.core.exec.timeout = Duration::from_secs(1)).await;
    let long = "x".repeat(2000);
    let got = clients(&[
        "commands",
        &port(&s),
        "ok",
        &long,
        "get",
        "echo start; sleep 30",
        "echo still here",
    ])
    .await;
    assert!(got[0]["text"].as_str().unwrap().contains("over 1024 bytes"));
    assert!(
        got[1]["text"]
            .as_str()
            .unwrap()
            .contains("needs a file name")
    );
    let timed = got[2]["text"].as_str().unwrap();
    assert!(
        timed.starts_with("start\n") && timed.contains("ferry: timeout"),
        "{timed}"
    );
    assert_eq!(got[3]["text"], "still here\n");
    s.stop().await;
}

/// A client that leaves while its command runs: the command's process group is killed and
/// the session ends quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_kills_the_running_command() {
    let s = legacy_server(|_| {}).await;
    let mut events = s.core.registry.subscribe();
    let fifo = s.path("pid.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let mut client = Command::new("python3")
        .arg(script())
        .args(["hangup", &port(&s), "echo $$ > pid.fifo; sleep 60"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The shell writes its pid once it runs: reading the FIFO waits for exactly that.
    let pid: i32 = tokio::task::spawn_blocking(move || std::fs::read_to_string(fifo).unwrap())
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"\n").await.unwrap();
    drop(stdin);
    assert!(client.wait().await.unwrap().success());
    assert!(wait_dead(pid).await, "the command outlived its client");
    session_ended(&mut events).await;
    assert_eq!(
        s.count(
            "sessions",
            "transport = 'legacy' AND end_reason = 'closed by peer'"
        )
        .await,
        1
    );
    s.stop().await;
}

/// What a web page makes a browser send to this port (an HTTP request whose target is a shell
/// line) is never run: the connection is closed. Control characters in a line are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_never_run() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = legacy_server(|_| {}).await;
    let mut events = s.core.registry.subscribe();
    let marker = s.path("pwned");
    let mut sock = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let req = "GET /;touch${IFS}pwned; HTTP/1.1\r\nHost: 127.0.0.1:8888\r\nAccept: */*\r\n\r\n";
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let got = clients(&["commands", &port(&s), "ok", "touch pwned2\necho hi"]).await;
    assert!(
        got[0]["text"]
            .as_str()
            .unwrap()
            .contains("control characters")
    );
    assert!(!marker.exists() && !s.path("pwned2").exists());
    assert_eq!(s.count("commands", "transport = 'legacy'").await, 0);
    // Both connections' sessions: the HTTP request's and the client's.
    session_ended(&mut events).await;
    session_ended(&mut events).await;
    assert_eq!(
        s.count(
            "sessions",
            "transport = 'legacy' AND end_reason = 'http request refused'"
        )
        .await,
        1
    );
    s.stop().await;
}
