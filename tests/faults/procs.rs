//! Commands run to their end and commands whose client disconnects mid-run: afterwards no
//! process of their groups may live on (orphans) and none may wait unreaped (zombies).

use crate::common::{TOKEN, TestServer};
use crate::raw::*;
use ferry::core::exec::ExecRequest;
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Runs `sh -c 'echo $$'` `n` times over 4 connections; returns the process groups.
async fn execs(srv: &TestServer, n: usize, groups: &Arc<Mutex<HashSet<u32>>>) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (client, groups) = (srv.client().await, groups.clone());
        tasks.spawn(async move {
            let mut failed = 0;
            for _ in (w..n).step_by(4) {
                let req = ExecRequest {
                    cmd: Some("echo $$".into()),
                    ..ExecRequest::default()
                };
                match client.exec_collect(req).await {
                    Ok((out, _, _)) => {
                        let pid = String::from_utf8_lossy(&out).trim().parse().unwrap();
                        groups.lock().unwrap().insert(pid);
                    }
                    Err(e) => {
                        println!("exec failed: {e}");
                        failed += 1;
                    }
                }
            }
            failed
        });
    }
    tasks.join_all().await.into_iter().sum()
}

/// Starts a command that leaves a grandchild behind it, waits for its pid, and disconnects.
async fn disconnect_mid_command(addr: String) -> Option<u32> {
    let mut s = hello(&addr, TOKEN).await.ok()?;
    let req = json!({"op": "exec", "cmd": "sleep 100 & echo $$; sleep 100"});
    s.write_all(&json_frame(REQUEST, 1, &req)).await.ok()?;
    loop {
        match tokio::time::timeout(WAIT, read_frame(&mut s)).await.ok()? {
            Some((STDOUT, 1, out)) => return String::from_utf8_lossy(&out).trim().parse().ok(),
            Some(_) => continue,
            None => return None,
        }
    }
}

/// Processes left of `groups`, and unreaped children of this process (the server's).
fn leftovers(groups: &HashSet<u32>) -> Vec<String> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let (state, ppid, pgrp) = proc_stat(pid)?;
            // The test's own `ferry serve` children are not the server's commands.
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let zombie_child = state == 'Z' && ppid == me && comm.trim() != "ferry";
            (groups.contains(&pgrp) || zombie_child)
                .then(|| format!("pid {pid} state {state} ppid {ppid} pgrp {pgrp}"))
        })
        .collect()
}

/// Returns (processes left over, operations that failed).
pub async fn run(n_exec: usize, n_disconnect: usize) -> (usize, usize) {
    let srv = TestServer::start().await;
    let groups = Arc::new(Mutex::new(HashSet::new()));
    let mut failed = execs(&srv, n_exec, &groups).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n_disconnect {
        tasks.spawn(disconnect_mid_command(srv.addr.clone()));
        // At most 8 at once: the default limit of concurrent commands is 64.
        if i % 8 == 7 {
            while !tasks.is_empty() {
                collect(tasks.join_next().await, &groups, &mut failed);
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        collect(Some(r), &groups, &mut failed);
    }
    let groups = groups.lock().unwrap().clone();
    let deadline = Instant::now() + WAIT;
    let left = loop {
        let left = leftovers(&groups);
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for l in &left {
        println!("left over: {l}");
    }
    srv.stop().await;
    (left.len(), failed)
}

fn collect(
    r: Option<Result<Option<u32>, tokio::task::JoinError>>,
    groups: &Arc<Mutex<HashSet<u32>>>,
    failed: &mut usize,
) {
    match r {
        Some(Ok(Some(pid))) => {
            groups.lock().unwrap().insert(pid);
        }
        Some(_) => *failed += 1,
        None => {}
    }
}
