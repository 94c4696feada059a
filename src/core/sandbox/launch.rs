//! The launcher: ferry started as `ferry __sandbox-launch LIMITS PATH ARGV0 N VARS... ARGS...`
//! (N request variables as `NAME=VALUE`) sets the sandbox's limits in a process that
//! `posix_spawn` started, then execs the command with those variables added.

use rustix::process::{Resource, Rlimit};

/// Resident memory above which forking the server costs more than launching through ferry.
/// A fork copies the page tables of everything resident and then takes a copy-on-write fault
/// for each page the server writes before the child has exec'd: measured on a 2-core VM, about
/// 0.05 ms per MB on the spawning thread, while an exec of the launcher costs a fixed 2 ms or
/// so (the dynamic loader and page faults of a big binary), in the child.
pub(super) const FORK_RSS: u64 = 40 << 20;

/// The server's resident memory in bytes (0 if unknown).
pub(super) fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) << 10
}

/// The first argument that makes `ferry` the [`launch`]er.
pub const LAUNCH: &str = "__sandbox-launch";

/// The name of a limit on the launcher's command line.
pub(super) fn resource_name(res: Resource) -> &'static str {
    match res {
        Resource::Nproc => "nproc",
        Resource::Fsize => "fsize",
        Resource::Cpu => "cpu",
        Resource::Nofile => "nofile",
        _ => "other",
    }
}

/// When ferry was started as the launcher (`ferry __sandbox-launch LIMITS PATH ARGV0 N VARS...
/// ARGS...`,
/// spawned by [`Confinement::command`] with the command's environment, directory, process group
/// and stdio already in place): sets each limit, soft and hard, then execs the command. It
/// returns only on failure, with the exit code to end with; None when not the launcher.
pub fn launch() -> Option<i32> {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os().skip(1);
    if args.next()? != LAUNCH {
        return None;
    }
    let fail = |msg: String| {
        eprintln!("ferry: {msg}");
        Some(126)
    };
    let (Some(spec), Some(path), Some(argv0)) = (args.next(), args.next(), args.next()) else {
        return fail("the launcher needs LIMITS PATH ARGV0".into());
    };
    for item in spec.to_string_lossy().split(',').filter(|s| !s.is_empty()) {
        let parsed = item.split_once('=').and_then(|(name, v)| {
            let res = match name {
                "nproc" => Resource::Nproc,
                "fsize" => Resource::Fsize,
                "cpu" => Resource::Cpu,
                "nofile" => Resource::Nofile,
                _ => return None,
            };
            Some((res, v.parse::<u64>().ok()?))
        });
        let Some((res, v)) = parsed else {
            return fail(format!("the launcher got a bad limit {item:?}"));
        };
        let lim = Rlimit {
            current: Some(v),
            maximum: Some(v),
        };
        if let Err(e) = rustix::process::setrlimit(res, lim) {
            return fail(format!("setting the limit {item}: {e}"));
        }
    }
    let mut cmd = std::process::Command::new(&path);
    cmd.arg0(&argv0);
    let count = args.next().and_then(|n| n.to_str()?.parse::<usize>().ok());
    let Some(count) = count else {
        return fail("the launcher needs the number of variables".into());
    };
    for _ in 0..count {
        let var = args.next().unwrap_or_default();
        let var = var.to_string_lossy();
        let Some((k, v)) = var.split_once('=') else {
            return fail(format!("the launcher got a bad variable {var:?}"));
        };
        cmd.env(k, v);
    }
    // std's exec resets SIGPIPE (ignored by the Rust runtime) to its default first.
    let err = cmd.args(args).exec();
    eprintln!("ferry: {}: {err}", argv0.to_string_lossy());
    Some(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// The first executable `program` in the directories of `path`, as `execvp` would find it; None
/// when `path` has a relative entry (relative to the command's directory: left to `execvp`) or
/// nothing matches (`execvp` then reports the error).
pub(super) fn find_program(program: &str, path: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    for dir in path.as_bytes().split(|b| *b == b':') {
        let dir = std::path::Path::new(std::ffi::OsStr::from_bytes(dir));
        if !dir.is_absolute() {
            return None;
        }
        let full = dir.join(program);
        let Ok(meta) = std::fs::metadata(&full) else {
            continue;
        };
        if meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
            && rustix::fs::access(&full, rustix::fs::Access::EXEC_OK).is_ok()
        {
            return Some(full);
        }
    }
    None
}
