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
fn programs_are_found_as_execvp_would() {
    let sh = find_program("sh", std::ffi::OsStr::new("/nonexistent:/usr/bin:/bin")).unwrap();
    assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
    // A directory is skipped, a missing program is left to execvp, and so is a relative entry.
    assert_eq!(find_program("bin", std::ffi::OsStr::new("/usr:/")), None);
    assert_eq!(
        find_program("no-such-program-x", std::ffi::OsStr::new("/bin")),
        None
    );
    assert_eq!(find_program("sh", std::ffi::OsStr::new("bin:/bin")), None);
    assert_eq!(find_program("sh", std::ffi::OsStr::new(":/bin")), None);
}

#[test]
fn without_limits_or_user_commands_spawn_directly() {
    let off = Sandbox {
        max_processes: Some(0),
        max_open_files: Some(0),
        ..Sandbox::default()
    };
    let c = off.prepare().unwrap();
    assert!(c.spawns_directly());
    let cmd = c.command("sh", &[], &path("/usr/bin:/bin"));
    let std = cmd.as_std();
    assert!(std::path::Path::new(std.get_program()).is_absolute());
    // A limit the server does not have needs code in the child.
    let one = Sandbox {
        max_cpu_seconds: Some(12345),
        ..off
    };
    let c = one.clone().prepare().unwrap();
    assert!(!c.spawns_directly());
    assert_eq!(
        c.command("sh", &[], &path("/bin")).as_std().get_program(),
        "sh"
    );
    // With a launcher, it is the program, given the limits, the path found and argv[0].
    let launched = Sandbox {
        launcher: Some("/opt/ferry".into()),
        launch_above: 0,
        ..one
    };
    let c = launched.prepare().unwrap();
    let args = ["-c".to_string(), "true".to_string()];
    let mut env = path("/usr/bin:/bin");
    env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
    let cmd = c.command("sh", &args, &env);
    let cmd = cmd.as_std();
    assert_eq!(cmd.get_program(), "/opt/ferry");
    let got: Vec<_> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(got[..2], [LAUNCH, "cpu=12345"]);
    assert!(got[2].ends_with("/sh"), "{got:?}");
    let rest = [
        "sh",
        "2",
        "LD_PRELOAD=/tmp/x.so",
        "PATH=/usr/bin:/bin",
        "-c",
        "true",
    ];
    assert_eq!(got[3..], rest);
    // The request's variables reach the command through the launcher, never its environment.
    assert!(cmd.get_envs().all(|(k, _)| k != "LD_PRELOAD"));
    // Not found: left to execvp after a fork, which reports it.
    let cmd = c.command("no-such-program-x", &[], &path("/bin"));
    assert_eq!(cmd.as_std().get_program(), "no-such-program-x");
}

/// A request environment with only `PATH`.
fn path(p: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("PATH".to_string(), p.to_string())])
}
