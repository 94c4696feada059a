//! A shell line that is one plain command runs without the shell, and behaves as under it.

mod common;

use common::*;
use ferry::core::exec::ExecRequest;
use std::os::unix::fs::PermissionsExt;

fn line(cmd: &str) -> ExecRequest {
    ExecRequest {
        cmd: Some(cmd.into()),
        ..Default::default()
    }
}

/// The parent pid the command saw: the server itself, or a shell between them.
fn parent_of(status: &[u8]) -> u32 {
    let status = String::from_utf8_lossy(status);
    let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"));
    ppid.expect("a PPid line").trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_command_runs_without_the_shell() {
    let s = TestServer::start().await;
    std::fs::create_dir(s.path("sub")).unwrap();
    let c = s.client().await;
    // The server runs in this test's process: a plain line is its child, not a shell's.
    let (out, _, end) = c
        .exec_collect(line("  cat\t/proc/self/status "))
        .await
        .unwrap();
    assert_eq!(end.exit_code, Some(0));
    assert_eq!(parent_of(&out), std::process::id(), "no shell in between");
    // A line with shell syntax still goes through the shell.
    let (out, _, _) = c
        .exec_collect(line("cat /proc/self/status | cat"))
        .await
        .unwrap();
    assert_ne!(parent_of(&out), std::process::id());
    // It sees PWD as it would under the shell: the directory's physical path.
    std::os::unix::fs::symlink("sub", s.path("link")).unwrap();
    let mut req = line("env");
    req.cwd = Some("link".into());
    let (out, _, _) = c.exec_collect(req).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    let pwd = format!("PWD={}", s.path("sub").canonicalize().unwrap().display());
    assert!(out.lines().any(|l| l == pwd), "{pwd} in {out}");
    // A variable the shell would not pass on (its name is no shell name): the shell runs it.
    let mut req = line("cat /proc/self/status");
    req.env.insert("not-a-name".into(), "1".into());
    let (out, _, _) = c.exec_collect(req).await.unwrap();
    assert_ne!(parent_of(&out), std::process::id());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_start_directly_is_left_to_the_shell() {
    let s = TestServer::start().await;
    let c = s.client().await;
    // A missing program: the shell's own answer (exit 127, its message), not an error frame.
    let (_, err, end) = c
        .exec_collect(line("no-such-program-ferry --flag"))
        .await
        .unwrap();
    assert_eq!(end.exit_code, Some(127));
    let err = String::from_utf8(err).unwrap();
    assert!(err.contains("not found"), "{err}");
    // A script with no #! line: exec refuses it, the shell runs it.
    let script = s.path("noshebang");
    std::fs::write(&script, "echo from-script $#\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (out, _, end) = c.exec_collect(line("./noshebang a b")).await.unwrap();
    assert_eq!(
        (out.as_slice(), end.exit_code),
        (&b"from-script 2\n"[..], Some(0))
    );
    s.stop().await;
}
