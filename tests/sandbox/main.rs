//! The command sandbox: resource limits, environment, descriptors and user of real commands and
//! terminal shells, over TCP, HTTP and the terminal WebSocket.

mod bomb;
#[path = "../common/mod.rs"]
mod common;
mod exposure;

use common::*;
use ferry::core::exec::ExecRequest;
use ferry::core::sandbox::{DEFAULT_ENV, Sandbox};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

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
    let out = tcp_stdout(
        &s,
        argv(&["sh", "-c", "id -u; id -G; touch made; echo \"$HOME\""]),
    )
    .await;
    let gid = out.lines().nth(1).unwrap_or_default();
    assert_eq!(out.lines().next(), Some(uid.as_str()), "{out}");
    assert!(!gid.contains(' ') && gid != "0", "{out}");
    // HOME is nobody's own (when HOME passes at all).
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let home = passwd
        .lines()
        .find_map(|l| l.strip_prefix("nobody:"))
        .unwrap();
    let home = home.split(':').nth(4).unwrap();
    if std::env::var_os("HOME").is_some() {
        assert_eq!(out.lines().nth(2), Some(home), "{out}");
    }
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

/// With limits to set or none, a command gets the same argv[0], `PATH` lookup and errors, and
/// the limits asked for.
#[tokio::test(flavor = "multi_thread")]
async fn limited_and_unlimited_commands_are_alike() {
    let limited = TestServer::start().await;
    let direct = TestServer::start_with(|cfg| {
        cfg.core.exec.sandbox.max_processes = Some(0);
        cfg.core.exec.sandbox.max_open_files = Some(0);
    })
    .await;
    let mut limits = Vec::new();
    for s in [&limited, &direct] {
        let all = tcp_stdout(s, argv(&["cat", "/proc/self/limits"])).await;
        limits.push(limit(&all, "Max open files"));
        let cmdline = tcp_stdout(s, argv(&["cat", "/proc/self/cmdline"])).await;
        assert_eq!(cmdline, "cat\0/proc/self/cmdline\0");
        // A program found in the request's own PATH, with the request's variables.
        let bin = s.root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("hello"), "#!/bin/sh\necho $GREETING\n").unwrap();
        std::fs::set_permissions(bin.join("hello"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let env = json!({"PATH": path, "GREETING": "hi"});
        let v = http_exec(s, json!({"argv": ["hello"], "env": env})).await;
        assert_eq!(v["stdout"], "hi\n", "{v}");
        let v = http_exec(s, json!({"argv": ["no-such-program-here"]})).await;
        assert_eq!(v["error"]["code"], "not_found", "{v}");
        // A file in PATH that is not executable is skipped, as execvp does; if nothing else
        // matches, the answer is permission denied.
        std::fs::write(bin.join("plain"), "echo no\n").unwrap();
        let env = json!({"PATH": format!("{}:/usr/bin:/bin", bin.display())});
        let v = http_exec(s, json!({"argv": ["plain"], "env": env})).await;
        assert_eq!(v["error"]["code"], "forbidden_path", "{v}");
        // A missing working directory is refused before anything runs.
        let v = http_exec(s, json!({"argv": ["true"], "cwd": "no-such-dir"})).await;
        assert_eq!(v["error"]["code"], "not_found", "{v}");
    }
    let def = Sandbox::default().max_open_files.unwrap().to_string();
    assert_eq!(limits[0], (def.clone(), def.clone()));
    // Limits off: the server's own (the test process's).
    let own = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let n = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
    assert_eq!(limits[1], (n(own.current), n(own.maximum)));
    for s in [limited, direct] {
        s.stop().await;
    }
}
