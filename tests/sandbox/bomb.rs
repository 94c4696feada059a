//! A fork bomb stays within its process limit and leaves nothing behind.

use super::*;
use ferry::server::ServerConfig;

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

/// The processes (zombies included) whose real uid is `uid`.
fn owned_by(uid: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let real = status.lines().find_map(|l| l.strip_prefix("Uid:"));
            real.and_then(|r| r.split_whitespace().next()) == Some(uid)
        })
        .collect()
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
    // The processes of an earlier bomb (a previous run) are reaped by init, not by ferry: while
    // they linger as zombies they still count against the user's limit.
    if root {
        let deadline = Instant::now() + Duration::from_secs(30);
        while owned_by(uid).len() as u64 > MAX / 2 {
            assert!(
                Instant::now() < deadline,
                "nobody keeps {} processes",
                owned_by(uid).len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let marker = format!("ferry-bomb-{}", std::process::id());
    // bash, not dash: where a fork fails, bash waits and retries, so the bomb stays at its
    // limit until the timeout (dash gives up at once, too fast to watch).
    let script = format!(":(){{ :|:& }}; :; wait; sleep 30 # {marker}");
    let body = json!({"argv": ["/bin/bash", "--norc", "--noprofile", "-c", script]});
    let web = s.web();
    let url = s.url("/api/v1/exec");
    let started = Instant::now();
    let bomb = tokio::spawn(async move {
        let r = web.post(url).json(&body).send().await;
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
