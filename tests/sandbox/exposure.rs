//! What a command could see of the server: variables, descriptors; and terminal shells.

use super::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

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
        "echo BE''GIN; cat /proc/$$/limits; echo \"U=$(id -u) T=$(stat -c %u $(tty))\"; \
         env | cut -d= -f1 | sort | tr '\\n' ' '; echo EN''D",
        "END",
    )
    .await;
    let out = out.rsplit("BEGIN").next().unwrap();
    if root {
        // The shell's user, and owner of its terminal.
        let uid = nobody_uid();
        assert!(out.contains(&format!("U={uid} T={uid}\r\n")), "{out}");
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
