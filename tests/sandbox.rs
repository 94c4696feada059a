//! The command sandbox: resource limits, environment, descriptors and user of real commands and
//! terminal shells, over TCP, HTTP and the terminal WebSocket.

mod common;

use common::*;
use ferry::core::exec::ExecRequest;
use ferry::core::sandbox::{DEFAULT_ENV, Sandbox};
use ferry::server::ServerConfig;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn argv(a: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: Some(a.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// Runs a command over HTTP (JSON answer) and returns the answer.
async fn http_exec(s: &TestServer, body: Value) -> Value {
    let resp = s
        .web()
        .post(s.url("/api/v1/exec"))
        .json(&body)
        .send()
        .await
        .unwrap();
    resp.json().await.unwrap()
}

/// Runs a command over TCP and returns its stdout, checking it exited with 0.
async fn tcp_stdout(s: &TestServer, req: ExecRequest) -> String {
    let c = s.client().await;
    let (out, err, end) = c.exec_collect(req).await.unwrap();
    let (out, err) = (
        String::from_utf8(out).unwrap(),
        String::from_utf8_lossy(&err),
    );
    assert_eq!(end.exit_code, Some(0), "{out}{err}");
    out
}

/// The soft and hard values of a `/proc/<pid>/limits` line starting with `name`.
fn limit(limits: &str, name: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} in {limits}"));
    let f: Vec<&str> = line[name.len()..].split_whitespace().collect();
    (f[0].to_string(), f[1].to_string())
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The uid of `nobody` as the system reports it.
fn nobody_uid() -> String {
    let out = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_configured_limit_is_in_force_over_tcp_and_http() {
    let s = TestServer::start_with(|cfg| {
        cfg.core.exec.sandbox = Sandbox {
            max_processes: Some(300),
            max_file_size: Some(1 << 20),
            max_cpu_seconds: Some(30),
            max_open_files: Some(256),
            ..Sandbox::default()
        }
    })
    .await;
    let expect = [
        ("Max processes", "300"),
        ("Max file size", "1048576"),
        ("Max cpu time", "30"),
        ("Max open files", "256"),
    ];
    let over_tcp = tcp_stdout(&s, argv(&["/bin/cat", "/proc/self/limits"])).await;
    let v = http_exec(&s, json!({"cmd": "cat /proc/self/limits"})).await;
    let over_http = v["stdout"].as_str().unwrap().to_string();
    for limits in [&over_tcp, &over_http] {
        for (name, value) in expect {
            // Hard as well as soft: the command cannot raise them back.
            assert_eq!(
                limit(limits, name),
                (value.into(), value.into()),
                "{limits}"
            );
        }
    }
    // The shell's own view agrees, and raising a limit is refused.
    let v = http_exec(&s, json!({"cmd": "ulimit -n; ulimit -t; ulimit -n 512"})).await;
    assert_eq!(v["stdout"], "256\n30\n", "{v}");
    assert_ne!(v["exit_code"], 0, "{v}");

    // Defaults: processes and open files limited, file size and CPU time not.
    let d = TestServer::start().await;
    let limits = tcp_stdout(&d, argv(&["/bin/cat", "/proc/self/limits"])).await;
    let def = Sandbox::default();
    let n = |v: Option<u64>| v.unwrap().to_string();
    assert_eq!(limit(&limits, "Max processes").0, n(def.max_processes));
    assert_eq!(limit(&limits, "Max open files").0, n(def.max_open_files));
    assert_eq!(limit(&limits, "Max file size").0, "unlimited");
    s.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_past_max_file_size_fails_and_the_server_goes_on() {
    let s =
        TestServer::start_with(|cfg| cfg.core.exec.sandbox.max_file_size = Some(64 << 10)).await;
    let v = http_exec(
        &s,
        json!({"argv": ["dd", "if=/dev/zero", "of=big", "bs=1024", "count=100"]}),
    )
    .await;
    // SIGXFSZ, after exactly the allowed bytes.
    assert_eq!(
        (&v["signal"], &v["exit_code"]),
        (&json!(25), &Value::Null),
        "{v}"
    );
    assert_eq!(std::fs::metadata(s.path("big")).unwrap().len(), 64 << 10);
    // The limit is the command's, not the server's: a bigger upload still lands whole.
    let body = random_bytes(200 << 10, 7);
    let put = s
        .web()
        .put(s.url("/files/up.bin"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    assert_eq!(std::fs::read(s.path("up.bin")).unwrap(), body);
    let v = http_exec(&s, json!({"cmd": "echo alive"})).await;
    assert_eq!(v["stdout"], "alive\n");
    s.stop().await;
}

/// Process ids in /proc, zombies included.
fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The process whose command line holds `marker`, if one is running.
fn marked(marker: &str) -> Option<i32> {
    pids().into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(marker))
            .unwrap_or(false)
    })
}

/// The process group of `pid`, from `/proc/<pid>/stat` (after the name: state, ppid, pgrp).
fn pgrp(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// The processes of group `pg`, zombies included (they still count against the limit).
fn members(pg: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|p| pgrp(*p) == Some(pg))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_is_contained() {
    const MAX: u64 = 64;
    let root = running_as_root();
    if !root {
        println!("not root: the process limit binds the current user, no user switch tested");
    }
    let s = TestServer::start_with(|cfg: &mut ServerConfig| {
        cfg.core.exec.timeout = Duration::from_secs(3);
        cfg.core.exec.max_output = 64 << 10;
        let sb = &mut cfg.core.exec.sandbox;
        sb.max_processes = Some(MAX);
        // Linux ignores RLIMIT_NPROC for root: run the bomb as nobody.
        sb.user = root.then(|| "nobody".to_string());
    })
    .await;
    // nobody must be able to enter the root (a temp dir is private to its owner).
    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Only with the limit verified in force does the bomb run.
    let v = http_exec(&s, json!({"cmd": "cat /proc/self/limits; id -u"})).await;
    let out = v["stdout"].as_str().unwrap();
    assert_eq!(limit(out, "Max processes").0, MAX.to_string(), "{v}");
    let uid = out.lines().last().unwrap();
    assert_ne!(uid, "0", "the bomb would run unlimited as root: {v}");

    let marker = format!("ferry-bomb-{}", std::process::id());
    let cmd = format!("b(){{ b|b& }}; b; wait; sleep 30 # {marker}");
    let web = s.web();
    let url = s.url("/api/v1/exec");
    let started = Instant::now();
    let bomb = tokio::spawn(async move {
        let r = web.post(url).json(&json!({"cmd": cmd})).send().await;
        r.unwrap().json::<Value>().await.unwrap()
    });
    let (mut most, mut group) = (0, None);
    while !bomb.is_finished() {
        group = group.or_else(|| marked(&marker).and_then(pgrp));
        if let Some(g) = group {
            most = most.max(members(g).len());
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the bomb runs on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = bomb.await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "took {took:?}: {v}");
    assert!(
        v["error"]["code"] == "timeout" || v["exit_code"].is_number(),
        "{v}"
    );
    // The whole user is held to MAX processes, so the group is too (its first shell, forked by
    // the server, is the one that may come on top).
    assert!(most as u64 <= MAX + 1, "{most} processes");
    // (Not root, the user may already be over the limit: then nothing forks at all.)
    assert!(most > 1 || !root, "the bomb never forked: {v}");
    let group = group.expect("the bomb's shell was seen");
    // Nothing of its process group is left, and the server answers at once.
    let left = || -> Vec<i32> {
        let mut m = members(group);
        m.retain(|p| !process_dead(*p));
        m
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !left().is_empty() {
        assert!(Instant::now() < deadline, "left: {:?}", left());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = http_exec(&s, json!({"cmd": "echo alive"})).await;
    assert_eq!(v["stdout"], "alive\n", "{v}");
    println!("fork bomb: {most} processes at most, ended after {took:?}");
    s.stop().await;
}

/// Names of `NAME=value` lines (NUL- or newline-separated).
fn names(env: &str) -> BTreeSet<String> {
    env.split(['\n', '\0'])
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
        .collect()
}

/// The allowlisted variables the test process has, which the server passes on.
fn present(list: &[&str]) -> BTreeSet<String> {
    let list = list.iter().filter(|k| std::env::var_os(k).is_some());
    list.map(|k| k.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_see_only_allowlisted_variables() {
    let s = TestServer::start().await;
    let mut want = present(DEFAULT_ENV);
    want.insert("GREETING".into());
    for prog in [["/usr/bin/env", ""], ["/bin/cat", "/proc/self/environ"]] {
        let mut req = argv(&prog[..if prog[1].is_empty() { 1 } else { 2 }]);
        req.env.insert("GREETING".into(), "hi".into());
        let out = tcp_stdout(&s, req).await;
        assert_eq!(names(&out), want, "{out}");
        assert!(!out.contains(TOKEN), "{out}");
    }
    s.stop().await;

    // A variable of the server's own (not in the default list) is passed when listed, and a
    // default one is dropped when not.
    let extra = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .find(|(k, v)| !DEFAULT_ENV.contains(&k.as_str()) && !v.is_empty() && !v.contains('\n'));
    let Some((extra, value)) = extra else {
        println!("the test process has no variable outside the default list: skipped");
        return;
    };
    let list = vec!["PATH".to_string(), extra.clone()];
    let s = TestServer::start_with(|cfg| cfg.core.exec.sandbox.env = list).await;
    let out = tcp_stdout(&s, argv(&["/usr/bin/env"])).await;
    let want: BTreeSet<String> = present(&["PATH", &extra]);
    assert_eq!(names(&out), want, "{out}");
    assert!(out.contains(&format!("{extra}={value}\n")), "{out}");
    s.stop().await;
}

/// Opens a terminal, types `line`, and returns the output up to `end` (which the typed line
/// itself must not contain).
async fn terminal(s: &TestServer, line: &str, end: &str) -> String {
    let url = s
        .url("/term/ws?cols=200&rows=50")
        .replace("http://", "ws://");
    let mut req = url.into_client_request().unwrap();
    let bearer = format!("Bearer {TOKEN}").parse().unwrap();
    req.headers_mut().insert("authorization", bearer);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let typed = format!("{line}\r").into_bytes();
    ws.send(Message::Binary(typed.into())).await.unwrap();
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(end) {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        match msg.expect("terminal output within 10 s") {
            Some(Ok(Message::Binary(b))) => out.extend_from_slice(&b),
            Some(Ok(_)) => {}
            other => panic!("closed: {other:?}: {}", String::from_utf8_lossy(&out)),
        }
    }
    ws.send(Message::Binary(b"exit\r".to_vec().into()))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn terminal_shells_are_confined_too() {
    let root = running_as_root();
    let s = TestServer::start_with(|cfg| {
        cfg.core.exec.sandbox.max_open_files = Some(200);
        cfg.core.exec.sandbox.max_cpu_seconds = Some(40);
        cfg.core.exec.sandbox.user = root.then(|| "nobody".into());
    })
    .await;
    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Quotes keep the typed (echoed) line from matching the markers.
    let out = terminal(
        &s,
        "echo BE''GIN; cat /proc/$$/limits; echo \"U=$(id -u)\"; \
         env | cut -d= -f1 | sort | tr '\\n' ' '; echo EN''D",
        "END",
    )
    .await;
    let out = out.rsplit("BEGIN").next().unwrap();
    if root {
        assert!(out.contains(&format!("U={}\r\n", nobody_uid())), "{out}");
    }
    assert_eq!(
        limit(out, "Max open files"),
        ("200".into(), "200".into()),
        "{out}"
    );
    assert_eq!(limit(out, "Max cpu time").0, "40", "{out}");
    let env_line = out.lines().find(|l| l.contains("TERM ")).expect(out);
    let env_line = env_line.split("END").next().unwrap();
    let seen: BTreeSet<String> = env_line.split_whitespace().map(String::from).collect();
    let mut allowed = present(DEFAULT_ENV);
    // What bash adds itself.
    allowed.extend(["TERM", "PWD", "SHLVL", "_", "OLDPWD"].map(String::from));
    assert!(seen.is_subset(&allowed), "{seen:?} not within {allowed:?}");
    s.stop().await;
}

/// Descriptors above 2 this test process got from its launcher without close-on-exec: the
/// server passes on what its own launcher leaves open (see docs/security.md), so they are not the
/// server's to close. Everything the server opens itself is close-on-exec.
fn inherited() -> BTreeSet<String> {
    const O_CLOEXEC: u32 = 0o2000000;
    let fds = std::fs::read_dir("/proc/self/fd").unwrap();
    fds.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.parse::<u32>().is_ok_and(|n| n > 2))
        .filter(|n| {
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")).unwrap_or_default();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"));
            flags
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .is_some_and(|f| f & O_CLOEXEC == 0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_server_descriptor_reaches_a_command() {
    let s = TestServer::start().await;
    // Give the server more open descriptors: a client connection, a terminal (a pty master), an
    // upload in progress.
    let busy = s.client().await;
    let url = s.url("/term/ws").replace("http://", "ws://");
    let mut req = url.into_client_request().unwrap();
    let bearer = format!("Bearer {TOKEN}").parse().unwrap();
    req.headers_mut().insert("authorization", bearer);
    let (_ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let created = s
        .web()
        .post(s.url("/files/partial.bin"))
        .header("upload-complete", "?0")
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // ls opens the directory itself: 0, 1, 2 and that one (the lowest free number, 3, unless
    // the test's own launcher left descriptors open without close-on-exec).
    let mut want = inherited();
    if !want.is_empty() {
        println!("descriptors inherited by the test process itself: {want:?}");
    }
    let free = (3..)
        .find(|n: &u32| !want.contains(&n.to_string()))
        .unwrap();
    want.extend(["0", "1", "2"].map(String::from));
    want.insert(free.to_string());
    let out = tcp_stdout(&s, argv(&["/bin/ls", "/proc/self/fd"])).await;
    assert_eq!(
        out.lines().map(String::from).collect::<BTreeSet<_>>(),
        want,
        "{out}"
    );
    let v = http_exec(&s, json!({"argv": ["/bin/ls", "-l", "/proc/self/fd"]})).await;
    let listing = v["stdout"].as_str().unwrap();
    let fds: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split(" -> ").next()?.split_whitespace().last())
        .filter(|n| n.parse::<u32>().is_ok())
        .map(String::from)
        .collect();
    assert_eq!(fds, want, "{listing}");
    drop(busy);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_run_as_the_configured_user() {
    if !running_as_root() {
        println!("not root: running commands as another user needs root; skipped");
        return;
    }
    let s = TestServer::start_with(|cfg| cfg.core.exec.sandbox.user = Some("nobody".into())).await;
    // A root private to root: nobody cannot enter it, and the client is told so.
    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o700)).unwrap();
    let resp = s
        .web()
        .post(s.url("/api/v1/exec"))
        .json(&json!({"cmd": "id -u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "forbidden_path", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{v}"
    );

    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let uid = nobody_uid();
    // Its primary group only: root's supplementary groups are dropped.
    let out = tcp_stdout(&s, argv(&["sh", "-c", "id -u; id -G; touch made"])).await;
    let gid = out.lines().nth(1).unwrap_or_default();
    assert_eq!(out.lines().next(), Some(uid.as_str()), "{out}");
    assert!(!gid.contains(' ') && gid != "0", "{out}");
    assert_eq!(
        std::fs::metadata(s.path("made")).unwrap().uid().to_string(),
        uid
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_user_stops_the_server_at_startup() {
    let (root, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cfg = config(root.path().into(), data.path().into());
    cfg.core.exec.sandbox.user = Some("no-such-user-ferry".into());
    let listeners = ferry::server::Listeners {
        tcp: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let err = ferry::server::start(cfg, listeners, shutdown)
        .await
        .err()
        .expect("startup fails");
    let err = format!("{err:#}");
    assert!(
        err.contains("\"no-such-user-ferry\": no such user"),
        "{err}"
    );
}
