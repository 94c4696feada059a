//! Unit tests of the sandbox settings, user lookup and program rule.

use super::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
    # a comment\n\
    nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
    1000:x:1001:1002::/home/odd:/bin/sh\n\
    broken line\n";

#[test]
fn users_resolve_by_name_then_uid() {
    let nobody = Ok((65534, 65534, "/nonexistent".to_string()));
    assert_eq!(resolve_user("nobody", PASSWD), nobody);
    assert_eq!(resolve_user("0", PASSWD), Ok((0, 0, "/root".into())));
    assert_eq!(resolve_user("65534", PASSWD), nobody);
    // A name wins over a uid that happens to be spelled the same.
    assert_eq!(
        resolve_user("1000", PASSWD),
        Ok((1001, 1002, "/home/odd".into()))
    );
    let err = resolve_user("ghost", PASSWD).unwrap_err();
    assert!(
        err.contains("\"ghost\"") && err.contains("no such user"),
        "{err}"
    );
    assert!(resolve_user("4242", PASSWD).is_err());
    assert!(resolve_user("", PASSWD).is_err());
}

#[test]
fn settings_are_checked_and_clamped() {
    let bad = Sandbox {
        env: vec!["A=B".into()],
        ..Sandbox::default()
    };
    assert!(bad.prepare().is_err());
    // 0 sets nothing: the server's own limit stays.
    let zero = Sandbox {
        max_processes: Some(0),
        ..Sandbox::default()
    };
    assert_eq!(zero.prepare().unwrap().limits[0], None);
    let ghost = Sandbox {
        user: Some("no-such-user-ferry".into()),
        ..Sandbox::default()
    };
    let err = ghost.prepare().unwrap_err().to_string();
    assert!(err.contains("no-such-user-ferry"), "{err}");
    // Within the server's own hard limit, whatever was asked.
    let huge = Sandbox {
        max_open_files: Some(u64::MAX - 1),
        ..Sandbox::default()
    };
    let c = huge.prepare().unwrap();
    let hard = rustix::process::getrlimit(Resource::Nofile).maximum;
    assert_eq!(
        c.limits[3],
        Some((Resource::Nofile, hard.unwrap_or(u64::MAX - 1)))
    );
    let none = Sandbox {
        env: vec![],
        max_processes: None,
        max_open_files: None,
        ..Sandbox::default()
    };
    let c = none.prepare().unwrap();
    assert!(c.limits.iter().all(Option::is_none) && c.env().next().is_none());
}

#[test]
fn toml_shape_defaults_missing_fields() {
    let s: Sandbox = serde_json::from_str(r#"{"max_processes": 64}"#).unwrap();
    assert_eq!(s.max_processes, Some(64));
    assert_eq!(s.env, DEFAULT_ENV);
    assert_eq!(s.max_open_files, Some(1024));
    assert!(serde_json::from_str::<Sandbox>(r#"{"max_procs": 64}"#).is_err());
}

#[test]
fn plans_look_up_programs_as_execvp_would() {
    let c = Sandbox::default().prepare().unwrap();
    let root = std::path::Path::new("/");
    let names = |p: &Plan| -> Vec<String> {
        p.candidates
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    };
    // The request's PATH, each entry in turn; an empty entry is the working directory.
    let p = c
        .plan("sh", &[], &path("/opt/x::/bin"), root, false)
        .unwrap();
    assert_eq!(names(&p), ["/opt/x/sh", "sh", "/bin/sh"]);
    // A name with a slash is taken as it is.
    let p = c.plan("./run.sh", &[], &path("/bin"), root, false).unwrap();
    assert_eq!(names(&p), ["./run.sh"]);
    // argv[0] is the name as given; the request's variables win over the server's.
    let args = ["-c".to_string(), "true".to_string()];
    let mut env = path("/usr/bin:/bin");
    env.insert("LANG".into(), "C".into());
    let p = c.plan("sh", &args, &env, root, true).unwrap();
    let argv: Vec<_> = p.argv.iter().map(|a| a.to_str().unwrap()).collect();
    assert_eq!(argv, ["sh", "-c", "true"]);
    let vars: Vec<_> = p.envp.iter().map(|a| a.to_str().unwrap()).collect();
    assert!(vars.contains(&"PATH=/usr/bin:/bin") && vars.contains(&"LANG=C"));
    assert_eq!(vars.iter().filter(|v| v.starts_with("LANG=")).count(), 1);
    assert!(p.stdin);
    // The default limits travel with the plan; a NUL byte is a bad request.
    assert!(p.limits.contains(&(Resource::Nofile as i32, 1024)));
    let err = c.plan("a\0b", &[], &env, root, false).err().unwrap();
    assert_eq!(err.code, crate::core::error::Code::BadRequest);
}

#[tokio::test]
async fn spawned_commands_run_confined_and_report_their_end() {
    use tokio::io::AsyncReadExt;
    let c = Sandbox {
        max_cpu_seconds: Some(77),
        ..Sandbox::default()
    }
    .prepare()
    .unwrap();
    let dir = std::env::temp_dir();
    let args = [
        "-c".to_string(),
        "ulimit -t; pwd; echo oops >&2; exit 3".to_string(),
    ];
    let plan = c
        .plan("sh", &args, &path("/usr/bin:/bin"), &dir, false)
        .unwrap();
    let mut child = plan.spawn().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    let pwd = dir.canonicalize().unwrap();
    assert_eq!(out, format!("77\n{}\n", pwd.display()));
    assert_eq!(err, "oops\n");
    assert_eq!(child.wait().await.unwrap().code(), Some(3));
    // Its own process group, and a signal shows as one.
    let args = ["-c".to_string(), "kill -9 $$".to_string()];
    let plan = c.plan("sh", &args, &path("/bin"), &dir, false).unwrap();
    let mut child = plan.spawn().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
    // A program found nowhere: the exec error, with nothing left running.
    let plan = c
        .plan("no-such-program-x", &[], &path("/bin"), &dir, false)
        .unwrap();
    let err = plan.spawn().err().unwrap();
    assert_eq!(err.err.kind(), std::io::ErrorKind::NotFound);
    assert!(!err.in_cwd);
    // A working directory that is gone: told apart from a missing program.
    let gone = dir.join("ferry-no-such-dir");
    let plan = c.plan("true", &[], &path("/bin"), &gone, false).unwrap();
    let err = plan.spawn().err().unwrap();
    assert!(err.in_cwd && err.err.kind() == std::io::ErrorKind::NotFound);
    // Killed before it ends, the whole group goes, and the process is reaped once gone.
    let args = ["-c".to_string(), "sleep 30 & sleep 30".to_string()];
    let plan = c
        .plan("sh", &args, &path("/usr/bin:/bin"), &dir, false)
        .unwrap();
    let child = plan.spawn().unwrap();
    let pgid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    drop(child);
    while rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL).is_ok() {
        tokio::task::yield_now().await;
    }
}

/// A request environment with only `PATH`.
fn path(p: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("PATH".to_string(), p.to_string())])
}
