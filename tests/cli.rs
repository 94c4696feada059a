//! The `ferry` binary as a user runs it: exec, get/put/ls, shell, errors, and `ferry serve`
//! as a real process. Each test talks to its own in-process `TestServer` (or a spawned server).

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// The binary under test.
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// The longest any single CLI run may take before the test calls it hung (a safety net only).
const HANG: Duration = Duration::from_secs(60);

/// What a finished `ferry` run left behind.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A `ferry` command with a hermetic environment: no FERRY_* variable leaks in from outside,
/// and the current directory is `cwd`.
fn ferry_cmd(cwd: &Path) -> Command {
    let mut c = Command::new(FERRY);
    for v in [
        "FERRY_ADDR",
        "FERRY_TOKEN",
        "FERRY_DATA_DIR",
        "FERRY_ROOT",
        "FERRY_TCP_ADDR",
        "FERRY_LOG",
        "FERRY_CONFIG",
        "FERRY_PUBLIC_READ",
        "FERRY_TLS",
        "FERRY_CA",
        "FERRY_TLS_CERT",
        "FERRY_TLS_KEY",
    ] {
        c.env_remove(v);
    }
    c.current_dir(cwd).kill_on_drop(true);
    c
}

/// A client subcommand `sub` against `addr`, with the test token in FERRY_TOKEN.
fn client_cmd(sub: &str, addr: &str, cwd: &Path) -> Command {
    let mut c = ferry_cmd(cwd);
    c.env("FERRY_TOKEN", TOKEN).args([sub, "--addr", addr]);
    c
}

/// Runs a command to its end, feeding `stdin` (or /dev/null) and collecting its output.
async fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Out {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ferry");
    let feeder = stdin.map(|data| {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        tokio::spawn(async move {
            // The command may exit without reading everything; that is its business.
            let _ = w.write_all(&data).await;
            drop(w);
        })
    });
    let out = tokio::time::timeout(HANG, child.wait_with_output())
        .await
        .expect("ferry hung")
        .expect("wait for ferry");
    if let Some(f) = feeder {
        f.await.unwrap();
    }
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("ferry itself was killed: {:?}", out.status));
    Out {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ferry exec --addr ADDR [flags] -- COMMAND...` from a scratch directory.
async fn exec(s: &TestServer, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let cwd = tempfile::tempdir().unwrap();
    let mut c = client_cmd("exec", &s.addr, cwd.path());
    c.args(args);
    run(c, stdin).await
}

/// The MD5 of bytes, via the system's `md5sum` on a temp file (independent of ferry's code).
fn md5_of(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, bytes).unwrap();
    md5sum(&p)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- exec

#[tokio::test(flavor = "multi_thread")]
async fn exec_prints_output_and_exits_zero() {
    let s = TestServer::start().await;
    let o = exec(&s, &["--", "echo", "hello"], None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "hello\n", "{o:?}");
    assert_eq!(s.count("commands", "command = 'echo hello'").await, 1);
    assert_eq!(
        s.count("commands", "command = 'echo hello' AND exit_code = 0")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_passes_exit_code_and_splits_stderr() {
    let s = TestServer::start().await;
    let o = exec(&s, &["--", "echo out; echo err >&2; exit 7"], None).await;
    assert_eq!(o.code, 7, "{o:?}");
    assert_eq!(o.stdout, "out\n", "{o:?}");
    assert!(o.stderr.contains("err"), "{o:?}");
    assert!(!o.stdout.contains("err"), "{o:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_killed_by_signal_exits_128_plus_signal() {
    let s = TestServer::start().await;
    let o = exec(&s, &["--", "kill -9 $$"], None).await;
    assert_eq!(o.code, 137, "{o:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_argv_is_not_interpreted_by_a_shell() {
    let s = TestServer::start().await;
    let o = exec(&s, &["--argv", "--", "echo", "$HOME;|x"], None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "$HOME;|x\n", "{o:?}");
    // The same words as a shell line are interpreted: the contrast shows --argv matters.
    let o = exec(&s, &["--", "echo", "'$HOME;|x'"], None).await;
    assert_eq!(o.stdout, "$HOME;|x\n", "{o:?}");
    let o = exec(&s, &["--", "echo", "a;", "echo", "b"], None).await;
    assert_eq!(o.stdout, "a\nb\n", "{o:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_cwd_and_env() {
    let s = TestServer::start().await;
    std::fs::create_dir(s.path("sub")).unwrap();
    let o = exec(&s, &["--cwd", "sub", "--", "pwd -P"], None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, format!("{}\n", s.path("sub").display()), "{o:?}");
    // Without --cwd, the command runs in the root.
    let o = exec(&s, &["--", "pwd -P"], None).await;
    assert_eq!(o.stdout, format!("{}\n", s.root.display()), "{o:?}");

    let o = exec(
        &s,
        &[
            "-e",
            "FERRY_T1=v a=l",
            "--env",
            "FERRY_T2=two",
            "--",
            "echo \"$FERRY_T1|$FERRY_T2\"",
        ],
        None,
    )
    .await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "v a=l|two\n", "{o:?}");

    let o = exec(&s, &["-e", "NOEQUALS", "--", "true"], None).await;
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("NAME=VALUE"), "{o:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_streams_piped_stdin() {
    let s = TestServer::start().await;
    let o = exec(&s, &["--", "tr", "a-z", "A-Z"], Some(b"abc\n")).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "ABC\n", "{o:?}");
    // A larger input arrives whole.
    let big: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let o = exec(&s, &["--", "wc -c"], Some(&big)).await;
    assert_eq!(o.stdout.trim(), big.len().to_string(), "{o:?}");
    // -n keeps local stdin to itself.
    let o = exec(&s, &["-n", "--", "cat"], Some(b"secret\n")).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "", "{o:?}");
}

/// A script's stdin is often a pipe that stays open without data (`slow-producer | ferry exec ...`,
/// a CI runner). `ferry exec` must end when the command ends, not when its own stdin closes.
#[tokio::test(flavor = "multi_thread")]
async fn exec_ends_with_the_command_while_stdin_stays_open() {
    let s = TestServer::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let mut c = client_cmd("exec", &s.addr, cwd.path());
    c.args(["--", "echo", "done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let held_open = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(HANG, stdout.next_line())
        .await
        .expect("no output")
        .unwrap();
    assert_eq!(first.as_deref(), Some("done"));
    // The command has ended (its output is complete); ferry must follow promptly. The timeout
    // is a safety net only: the exit takes milliseconds when ferry does not wait for stdin.
    let exited = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    drop(held_open);
    let status = exited
        .expect("ferry exec kept running after the command ended, waiting for its stdin to close")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `ferry exec -- CMD | head -1`: once the local reader is gone, ferry must stop the command
/// rather than keep pulling its output until the server's output cap cuts it.
#[tokio::test(flavor = "multi_thread")]
async fn exec_stops_when_local_stdout_is_closed() {
    let max_output = 48u64 << 20;
    let s = TestServer::start_with(|c| c.core.exec.max_output = max_output).await;
    let cwd = tempfile::tempdir().unwrap();
    let mut c = client_cmd("exec", &s.addr, cwd.path());
    c.args(["--", "yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(HANG, stdout.next_line())
        .await
        .expect("no output")
        .unwrap();
    assert_eq!(first.as_deref(), Some("y"));
    drop(stdout); // as `head -1` does
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    tokio::time::timeout(HANG, child.wait())
        .await
        .expect("ferry exec did not end")
        .unwrap();
    assert!(
        !stderr.contains("cut at the server's limit"),
        "ferry pulled the whole capped output into a closed pipe: {stderr}"
    );
    // The command's row is complete once its session has left the registry.
    let mut events = s.core.registry.subscribe();
    while !s.core.registry.sessions().is_empty() {
        let _ = events.recv().await;
    }
    assert_eq!(
        s.count("commands", "command = 'yes' AND truncated = 0")
            .await,
        1,
        "the command should end because its reader left, not at the {max_output}-byte cap"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_timeout_exits_124() {
    let s = TestServer::start().await;
    let t = Instant::now();
    let o = exec(&s, &["--timeout", "1", "--", "sleep 30"], None).await;
    assert_eq!(o.code, 124, "{o:?}");
    assert!(o.stderr.contains("timeout"), "{o:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        s.count("commands", "command = 'sleep 30' AND error = 'timeout'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_token_flag() {
    let s = TestServer::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let mut c = ferry_cmd(cwd.path());
    c.args([
        "exec", "--addr", &s.addr, "--token", TOKEN, "--", "echo", "flag",
    ]);
    let o = run(c, None).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "flag\n"), "{o:?}");
    // The flag wins over a wrong FERRY_TOKEN.
    let mut c = ferry_cmd(cwd.path());
    c.env("FERRY_TOKEN", "wrong").args([
        "exec", "--addr", &s.addr, "--token", TOKEN, "--", "echo", "flag",
    ]);
    let o = run(c, None).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "flag\n"), "{o:?}");
    // FERRY_ADDR works in place of --addr.
    let mut c = ferry_cmd(cwd.path());
    c.env("FERRY_ADDR", &s.addr)
        .env("FERRY_TOKEN", TOKEN)
        .args(["exec", "--", "echo", "env"]);
    let o = run(c, None).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "env\n"), "{o:?}");
}

// ---------------------------------------------------------------- files

/// 40 MiB: past the 32 MiB at which both sides start flushing to disk in the background.
#[tokio::test(flavor = "multi_thread")]
async fn put_get_round_trip_of_40mib() {
    let s = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("big.bin");
    let data = random_bytes(40 << 20, 0xfe77);
    std::fs::write(&local, &data).unwrap();
    let md5 = md5sum(&local);

    let mut c = client_cmd("put", &s.addr, work.path());
    c.arg(&local);
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains(&md5), "put must show the MD5: {o:?}");
    assert_eq!(md5sum(&s.path("big.bin")), md5);

    let out = work.path().join("back.bin");
    let mut c = client_cmd("get", &s.addr, work.path());
    c.args(["big.bin", "-o"]).arg(&out);
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains(&md5), "get must show the MD5: {o:?}");
    assert_eq!(md5sum(&out), md5);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), data.len() as u64);
    assert!(!work.path().join("back.bin.part").exists());

    // Without -o, the file lands under its own name in the current directory.
    let here = tempfile::tempdir().unwrap();
    let mut c = client_cmd("get", &s.addr, here.path());
    c.arg("big.bin");
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(names_in(here.path()), ["big.bin"]);
    assert_eq!(md5sum(&here.path().join("big.bin")), md5);

    assert_eq!(
        s.count(
            "transfers",
            &format!("direction = 'put' AND result = 'verified' AND md5 = '{md5}'")
        )
        .await,
        1
    );
    assert_eq!(
        s.count(
            "transfers",
            &format!("direction = 'get' AND result = 'verified' AND md5 = '{md5}'")
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_to_stdout() {
    let s = TestServer::start().await;
    std::fs::write(s.path("note.txt"), "note body\n").unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut c = client_cmd("get", &s.addr, work.path());
    c.args(["note.txt", "-o", "-"]);
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "note body\n", "{o:?}");
    assert!(o.stderr.contains(&md5_of(b"note body\n")), "{o:?}");
    assert!(
        names_in(work.path()).is_empty(),
        "{:?}",
        names_in(work.path())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn put_into_a_directory_and_ls() {
    let s = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("data.bin");
    let data = random_bytes(123_457, 7);
    std::fs::write(&local, &data).unwrap();
    let md5 = md5sum(&local);

    let mut c = client_cmd("put", &s.addr, work.path());
    c.arg(&local).arg("dir/sub/");
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains(&md5), "{o:?}");
    let remote = s.path("dir/sub/data.bin");
    assert!(remote.is_file(), "{o:?}");
    assert_eq!(md5sum(&remote), md5);

    // Table listing of the directory: size, md5, name on one line.
    let mut c = client_cmd("ls", &s.addr, work.path());
    c.arg("dir/sub");
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    let line = o
        .stdout
        .lines()
        .find(|l| l.ends_with("data.bin"))
        .unwrap_or_else(|| panic!("no data.bin in ls: {o:?}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields,
        [data.len().to_string().as_str(), md5.as_str(), "data.bin"],
        "{line:?}"
    );

    // The root shows the directory.
    let o = run(client_cmd("ls", &s.addr, work.path()), None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.lines().any(|l| l.ends_with(" dir/")), "{o:?}");

    // JSON listing.
    let mut c = client_cmd("ls", &s.addr, work.path());
    c.args(["--json", "dir/sub"]);
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("ls --json is JSON");
    let entries = v.as_array().expect("an array");
    let e = entries
        .iter()
        .find(|e| e["name"] == "data.bin")
        .unwrap_or_else(|| panic!("no data.bin in {v}"));
    assert_eq!(e["kind"], "file", "{e}");
    assert_eq!(e["size"], data.len() as u64, "{e}");
    assert_eq!(e["md5"], md5.as_str(), "{e}");

    // A put to an explicit name replaces what is there.
    let small = work.path().join("small.txt");
    std::fs::write(&small, "replaced\n").unwrap();
    let mut c = client_cmd("put", &s.addr, work.path());
    c.arg(&small).arg("dir/sub/data.bin");
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("replaced"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&remote).unwrap(), "replaced\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_continue_resumes_a_partial_download() {
    let s = TestServer::start().await;
    let data = random_bytes(3 << 20, 99);
    std::fs::write(s.path("r.bin"), &data).unwrap();
    let md5 = md5sum(&s.path("r.bin"));
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("r.out");
    let part = work.path().join("r.out.part");
    let n = 1_000_003usize;
    std::fs::write(&part, &data[..n]).unwrap();

    let mut c = client_cmd("get", &s.addr, work.path());
    c.args(["r.bin", "--continue", "-o"]).arg(&out);
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains(&format!("resumed at {n}")), "{o:?}");
    assert!(o.stderr.contains(&md5), "{o:?}");
    assert_eq!(md5sum(&out), md5);
    assert!(!part.exists());
    assert_eq!(names_in(work.path()), ["r.out"]);
    // Only the missing bytes crossed the wire.
    assert_eq!(
        s.count(
            "transfers",
            &format!("direction = 'get' AND bytes = {}", data.len() - n)
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_continue_with_wrong_partial_bytes_fails_the_checksum() {
    let s = TestServer::start().await;
    let data = random_bytes(2 << 20, 5);
    std::fs::write(s.path("r.bin"), &data).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("r.out");
    let part = work.path().join("r.out.part");
    let mut wrong = data[..500_000].to_vec();
    wrong[1234] ^= 0xff;
    std::fs::write(&part, &wrong).unwrap();

    let mut c = client_cmd("get", &s.addr, work.path());
    c.args(["r.bin", "-c", "-o"]).arg(&out);
    let o = run(c, None).await;
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("checksum_mismatch"), "{o:?}");
    assert!(!out.exists(), "a corrupt download must not look complete");
    assert!(!part.exists(), "the corrupt partial file is dropped");
}

/// `--continue` on an existing complete `-o` file: it is treated as the partial data, verified and
/// kept; and a failed `get --continue` (nothing transferred) leaves the local file as it was.
#[tokio::test(flavor = "multi_thread")]
async fn get_continue_over_an_existing_output_file() {
    let s = TestServer::start().await;
    let data = random_bytes(300_000, 3);
    std::fs::write(s.path("r.bin"), &data).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("r.out");
    std::fs::write(&out, &data).unwrap();

    let mut c = client_cmd("get", &s.addr, work.path());
    c.args(["r.bin", "--continue", "-o"]).arg(&out);
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("MD5 verified"), "{o:?}");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(names_in(work.path()), ["r.out"]);

    let mut c = client_cmd("get", &s.addr, work.path());
    c.args(["missing.bin", "--continue", "-o"]).arg(&out);
    let o = run(c, None).await;
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("not_found"), "{o:?}");
    assert_eq!(
        names_in(work.path()),
        ["r.out"],
        "a get that transferred nothing must not move the local file away: {o:?}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_errors_leave_no_file_behind() {
    let s = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let mut c = client_cmd("get", &s.addr, work.path());
    c.arg("missing.txt");
    let o = run(c, None).await;
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("not_found"), "{o:?}");
    assert!(
        names_in(work.path()).is_empty(),
        "{:?}",
        names_in(work.path())
    );

    let mut c = client_cmd("get", &s.addr, work.path());
    c.arg("../etc/passwd");
    let o = run(c, None).await;
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("forbidden_path"), "{o:?}");
    assert!(
        names_in(work.path()).is_empty(),
        "{:?}",
        names_in(work.path())
    );

    // A put outside the root is refused too, and writes nothing.
    let local = work.path().join("x.txt");
    std::fs::write(&local, "x").unwrap();
    let mut c = client_cmd("put", &s.addr, work.path());
    c.arg(&local).arg("../escape.txt");
    let o = run(c, None).await;
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("forbidden_path"), "{o:?}");
    assert!(!s.root.parent().unwrap().join("escape.txt").exists());

    // A put of a local file that does not exist names it.
    let mut c = client_cmd("put", &s.addr, work.path());
    c.arg("no-such-local-file");
    let o = run(c, None).await;
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("no-such-local-file"), "{o:?}");
}

// ---------------------------------------------------------------- shell

#[tokio::test(flavor = "multi_thread")]
async fn shell_runs_each_line() {
    let s = TestServer::start().await;
    let cwd = tempfile::tempdir().unwrap();
    let c = client_cmd("shell", &s.addr, cwd.path());
    let o = run(c, Some(b"echo one\nfalse\n\necho two\n")).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "one\ntwo\n", "{o:?}");
    let statuses: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("[exit "))
        .collect();
    assert_eq!(statuses, ["[exit 0]", "[exit 1]", "[exit 0]"], "{o:?}");

    // `exit` ends the session; the last status is the exit code.
    let c = client_cmd("shell", &s.addr, cwd.path());
    let o = run(c, Some(b"sh -c 'exit 3'\nexit\necho never\n")).await;
    assert_eq!(o.code, 3, "{o:?}");
    assert!(!o.stdout.contains("never"), "{o:?}");
}

// ---------------------------------------------------------------- connection errors

#[tokio::test(flavor = "multi_thread")]
async fn wrong_token_is_unauthorized() {
    let s = TestServer::start().await;
    let cwd = tempfile::tempdir().unwrap();
    for sub in [&["exec", "--", "true"][..], &["ls"], &["get", "x"]] {
        let mut c = ferry_cmd(cwd.path());
        c.env("FERRY_TOKEN", "not-the-token")
            .arg(sub[0])
            .args(["--addr", &s.addr])
            .args(&sub[1..]);
        let o = run(c, None).await;
        assert_ne!(o.code, 0, "{sub:?}: {o:?}");
        assert!(o.stderr.contains("unauthorized"), "{sub:?}: {o:?}");
        assert_eq!(o.stdout, "", "{sub:?}: {o:?}");
    }
    assert!(names_in(cwd.path()).is_empty());
    assert_eq!(s.count("commands", "1 = 1").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_server_cannot_reach() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let cwd = tempfile::tempdir().unwrap();
    for sub in [&["exec", "--", "true"][..], &["ls"]] {
        let mut c = client_cmd(sub[0], &addr, cwd.path());
        c.args(&sub[1..]);
        let o = run(c, None).await;
        assert_ne!(o.code, 0, "{sub:?}: {o:?}");
        assert!(o.stderr.contains("cannot reach"), "{sub:?}: {o:?}");
        assert!(o.stderr.contains(&addr), "{sub:?}: {o:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_says_how_to_pass_one() {
    let s = TestServer::start().await;
    let cwd = tempfile::tempdir().unwrap();
    for sub in [&["exec", "--", "true"][..], &["ls"], &["shell"]] {
        let mut c = ferry_cmd(cwd.path());
        c.arg(sub[0]).args(["--addr", &s.addr]).args(&sub[1..]);
        let o = run(c, None).await;
        assert_ne!(o.code, 0, "{sub:?}: {o:?}");
        assert!(o.stderr.contains("--token"), "{sub:?}: {o:?}");
        assert!(o.stderr.contains("FERRY_TOKEN"), "{sub:?}: {o:?}");
    }
    assert!(names_in(cwd.path()).is_empty());

    // Next to a server's data dir, the CLI reads `ferry-data/token`.
    std::fs::create_dir(cwd.path().join("ferry-data")).unwrap();
    std::fs::write(cwd.path().join("ferry-data/token"), format!("{TOKEN}\n")).unwrap();
    let mut c = ferry_cmd(cwd.path());
    c.args(["exec", "--addr", &s.addr, "--", "echo", "local"]);
    let o = run(c, None).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "local\n"), "{o:?}");
}

// ---------------------------------------------------------------- audit

#[tokio::test(flavor = "multi_thread")]
async fn cli_actions_are_audited() {
    let s = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    assert_eq!(exec(&s, &["--", "echo hello"], None).await.code, 0);
    assert_eq!(
        exec(&s, &["--cwd", ".", "--", "exit 5"], None).await.code,
        5
    );
    let local = work.path().join("audited.txt");
    std::fs::write(&local, "audit me\n").unwrap();
    let md5 = md5sum(&local);
    let mut c = client_cmd("put", &s.addr, work.path());
    c.arg(&local);
    assert_eq!(run(c, None).await.code, 0);

    assert_eq!(
        s.count(
            "commands",
            "command = 'echo hello' AND exit_code = 0 AND transport = 'tcp'"
        )
        .await,
        1
    );
    assert_eq!(
        s.count("commands", "command = 'exit 5' AND exit_code = 5")
            .await,
        1
    );
    assert_eq!(
        s.count(
            "transfers",
            &format!(
                "direction = 'put' AND path LIKE '%audited.txt' AND md5 = '{md5}' \
                 AND expected_md5 = '{md5}' AND result = 'verified' AND size = 9"
            )
        )
        .await,
        1
    );
    // Each CLI run is a session of its own.
    assert!(s.count("sessions", "transport = 'tcp'").await >= 3);
}

// ---------------------------------------------------------------- ferry serve

/// A `ferry serve` process and its stdout, read line by line.
struct Served {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Served {
    fn spawn(mut cmd: Command) -> Served {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ferry serve");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Drain the log so a full pipe never stalls the server.
        let mut err = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        Served {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Reads stdout until a line starts with `prefix`; returns the rest of that line, trimmed.
    async fn until(&mut self, prefix: &str) -> String {
        loop {
            let line = tokio::time::timeout(HANG, self.lines.next_line())
                .await
                .expect("ferry serve printed nothing more")
                .expect("read stdout")
                .unwrap_or_else(|| {
                    panic!(
                        "ferry serve ended stdout before {prefix:?}: {:?}",
                        self.seen
                    )
                });
            self.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    /// Sends SIGTERM, waits for the exit, and returns its code and all the stdout lines.
    async fn terminate(mut self) -> (i32, Vec<String>, String) {
        let pid = self.child.id().expect("still running") as i32;
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let status = tokio::time::timeout(HANG, self.child.wait())
            .await
            .expect("ferry serve did not stop on SIGTERM")
            .unwrap();
        while let Some(l) = self.lines.next_line().await.unwrap() {
            self.seen.push(l);
        }
        let log = self.stderr.await.unwrap();
        let code = status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {status:?}\n{log}"));
        (code, self.seen, log)
    }
}

fn serve_cmd(cwd: &Path, root: &Path, data: &Path) -> Command {
    let mut c = ferry_cmd(cwd);
    c.arg("serve")
        .args([
            "--tcp-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--root",
        ])
        .arg(root)
        .arg("--data-dir")
        .arg(data);
    c
}

async fn exec_with(addr: &str, token: &str, line: &str) -> Out {
    let cwd = tempfile::tempdir().unwrap();
    let mut c = ferry_cmd(cwd.path());
    c.env("FERRY_TOKEN", token)
        .args(["exec", "--addr", addr, "--", line]);
    run(c, None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_as_a_process_generates_and_keeps_its_token() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let data = base.path().join("data");
    // The root is created when missing.
    let mut srv = Served::spawn(serve_cmd(base.path(), &root, &data));
    let addr = srv.until("tcp ").await;
    let token = srv.until("token ").await;
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    let serving = srv.seen[0].clone();
    assert!(serving.starts_with("ferry "), "{:?}", srv.seen);

    let token_file = data.join("token");
    let meta = std::fs::metadata(&token_file).expect("data/token exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);

    let o = exec_with(&addr, &token, "pwd -P; echo hi > made.txt").await;
    assert_eq!(o.code, 0, "{o:?}");
    let root_c = root.canonicalize().unwrap();
    assert_eq!(o.stdout, format!("{}\n", root_c.display()), "{o:?}");
    assert_eq!(
        std::fs::read_to_string(root.join("made.txt")).unwrap(),
        "hi\n"
    );
    let o = exec_with(&addr, "wrong-token", "true").await;
    assert!(o.code != 0 && o.stderr.contains("unauthorized"), "{o:?}");

    let (code, _, log) = srv.terminate().await;
    assert_eq!(code, 0, "{log}");
    // The port is released: a client now cannot reach it.
    let o = exec_with(&addr, &token, "true").await;
    assert!(o.code != 0 && o.stderr.contains("cannot reach"), "{o:?}");

    // Again with the same data dir: the kept token, not printed again.
    let mut srv = Served::spawn(serve_cmd(base.path(), &root, &data));
    let addr2 = srv.until("tcp ").await;
    let o = exec_with(&addr2, &token, "cat made.txt").await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "hi\n"), "{o:?}");
    let (code, lines, log) = srv.terminate().await;
    assert_eq!(code, 0, "{log}");
    assert!(
        !lines.iter().any(|l| l.starts_with("token")),
        "the token is printed only when generated: {lines:?}"
    );
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_reads_its_settings_from_the_environment() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("env-root");
    std::fs::create_dir(&root).unwrap();
    let data = base.path().join("env-data");
    let mut c = ferry_cmd(base.path());
    c.env("FERRY_ROOT", &root)
        .env("FERRY_TCP_ADDR", "127.0.0.1:0")
        .env("FERRY_HTTP_ADDR", "127.0.0.1:0")
        .env("FERRY_DATA_DIR", &data)
        .env("FERRY_TOKEN", "env-given-token")
        .arg("serve");
    let mut srv = Served::spawn(c);
    let addr = srv.until("tcp ").await;
    assert!(!addr.ends_with(":8888") && !addr.ends_with(":0"), "{addr}");
    let o = exec_with(&addr, "env-given-token", "pwd -P").await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        o.stdout,
        format!("{}\n", root.canonicalize().unwrap().display())
    );
    let (code, lines, log) = srv.terminate().await;
    assert_eq!(code, 0, "{log}");
    // A given token is neither printed nor stored; the defaults' directories were not used.
    assert!(!lines.iter().any(|l| l.starts_with("token")), "{lines:?}");
    assert!(!data.join("token").exists());
    let mut left: Vec<PathBuf> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [data.clone(), root.clone()],
        "nothing else made in the cwd"
    );
}

/// Runs `ferry token new` and returns the token and its config line.
async fn token_new(cwd: &Path, role: &str, name: &str) -> (String, String) {
    let mut c = ferry_cmd(cwd);
    c.args(["token", "new", "--role", role, "--name", name]);
    let o = run(c, None).await;
    assert_eq!(o.code, 0, "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 2, "{o:?}");
    (lines[0].to_string(), lines[1].to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn token_new_lines_make_a_config_file_that_serve_enforces() {
    let base = tempfile::tempdir().unwrap();
    let (admin, admin_line) = token_new(base.path(), "admin", "ops").await;
    let (viewer, viewer_line) = token_new(base.path(), "read", "viewer").await;
    assert_eq!(admin.len(), 64, "{admin}");
    assert!(
        admin_line.starts_with("ops = { role = \"admin\", sha256 = \""),
        "{admin_line}"
    );
    // The file holds hashes only.
    assert!(!admin_line.contains(&admin) && !viewer_line.contains(&viewer));
    let mut c = ferry_cmd(base.path());
    c.args(["token", "new", "--role", "root"]);
    let o = run(c, None).await;
    assert!(
        o.code != 0 && o.stderr.contains("read, write, exec or admin"),
        "{o:?}"
    );

    let cfg = base.path().join("ferry.toml");
    std::fs::write(&cfg, format!("[tokens]\n{admin_line}\n{viewer_line}\n")).unwrap();
    let (root, data) = (base.path().join("root"), base.path().join("data"));
    let mut cmd = serve_cmd(base.path(), &root, &data);
    cmd.arg("--config").arg(&cfg);
    let mut srv = Served::spawn(cmd);
    let addr = srv.until("tcp ").await;
    let o = exec_with(&addr, &admin, "echo hi").await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "hi\n"), "{o:?}");
    let o = exec_with(&addr, &viewer, "echo hi").await;
    assert!(o.code != 0 && o.stderr.contains("forbidden"), "{o:?}");
    let mut ls = ferry_cmd(base.path());
    ls.env("FERRY_TOKEN", &viewer).args(["ls", "--addr", &addr]);
    assert_eq!(run(ls, None).await.code, 0);
    let (code, _, log) = srv.terminate().await;
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("user=viewer") && log.contains("role=read"),
        "{log}"
    );
    // With a config file, no token is generated.
    assert!(!data.join("token").exists());

    // A token written in clear is refused at startup, with the file named.
    std::fs::write(
        &cfg,
        "[tokens]\nx = { role = \"read\", token = \"secret\" }\n",
    )
    .unwrap();
    let mut cmd = serve_cmd(base.path(), &root, &data);
    cmd.arg("--config").arg(&cfg);
    let o = run(cmd, None).await;
    assert!(o.code != 0, "{o:?}");
    assert!(
        o.stderr.contains("ferry.toml") && o.stderr.contains("token"),
        "{o:?}"
    );
}

/// `ferry serve --legacy` as a process: the flag turns the line protocol on (the startup lines
/// say so), a classic client is answered on the TCP port, framed clients still are; with TLS the
/// server refuses to start.
#[tokio::test(flavor = "multi_thread")]
async fn serve_legacy_flag() {
    let base = tempfile::tempdir().unwrap();
    let (root, data) = (base.path().join("root"), base.path().join("data"));
    let mut c = serve_cmd(base.path(), &root, &data);
    c.args([
        "--legacy",
        "--legacy-ack-wait",
        "200",
        "--legacy-allow",
        "10.0.0.0/8",
    ]);
    let mut srv = Served::spawn(c);
    let addr = srv.until("tcp ").await;
    let said = srv.until("legacy ").await;
    let token = srv.until("token ").await;
    assert!(said.contains("from loopback and 10.0.0.0/8"), "{said}");
    let (s, out) = legacy_exchange(&addr, "echo classic").await;
    assert_eq!(out, b"classic\n");
    drop(s);
    let o = exec_with(&addr, &token, "echo framed").await;
    assert_eq!(o.stdout, "framed\n", "{o:?}");
    let (code, _, log) = srv.terminate().await;
    assert_eq!(code, 0, "{log}");

    let mut c = serve_cmd(base.path(), &root, &data);
    c.args(["--legacy", "--tls-cert", "cert.pem", "--tls-key", "key.pem"]);
    let o = run(c, None).await;
    assert!(
        o.code != 0
            && o.stderr
                .contains("--legacy and --tls-cert do not go together"),
        "{o:?}"
    );
}
