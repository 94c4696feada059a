//! The CLI's output into pipes nobody reads: it stops quietly, with an exit code that says why,
//! where the standard library's `println!` and `eprintln!` panic (exit code 101).

mod common;

use common::*;
use std::process::{Command, Stdio};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A pipe whose read end is already closed: every write to it fails with EPIPE.
fn unread_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer.into()
}

/// Runs `ferry ARGS` with the test token, stdout or stderr into an unread pipe; its exit code.
async fn exit_code(args: Vec<String>, stdout_unread: bool) -> i32 {
    tokio::task::spawn_blocking(move || {
        let mut c = Command::new(FERRY);
        c.args(&args).env("FERRY_TOKEN", TOKEN).stdin(Stdio::null());
        if stdout_unread {
            c.stdout(unread_pipe()).stderr(Stdio::null());
        } else {
            c.stdout(Stdio::null()).stderr(unread_pipe());
        }
        c.status().unwrap().code().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ls_into_a_closed_pipe_stops_as_if_by_sigpipe() {
    let s = TestServer::start().await;
    std::fs::write(s.path("a.txt"), "a").unwrap();
    for json in [false, true] {
        let mut args = vec!["ls".to_string(), "--addr".into(), s.addr.clone()];
        if json {
            args.push("--json".into());
        }
        assert_eq!(exit_code(args, true).await, 128 + 13, "json: {json}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_message_into_a_closed_pipe_keeps_the_exit_code() {
    // Nothing listens on port 1: `ferry exec` says so on stderr and exits 255, as ssh does.
    let args = ["exec", "--addr", "127.0.0.1:1", "--", "true"].map(String::from);
    assert_eq!(exit_code(args.to_vec(), false).await, 255);
    // A failure reported by main (a missing local file to put): exit code 1.
    let args = ["put", "--addr", "127.0.0.1:1", "/no/such/file-ferry"].map(String::from);
    assert_eq!(exit_code(args.to_vec(), false).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_token_into_a_closed_pipe_stops_as_if_by_sigpipe() {
    let args = ["token", "new", "--role", "read"].map(String::from);
    assert_eq!(exit_code(args.to_vec(), true).await, 128 + 13);
    // Into a pipe that is read, the same command prints the token and exits 0.
    let out = Command::new(FERRY)
        .args(["token", "new", "--role", "read"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 4);
}
