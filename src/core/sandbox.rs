//! The command sandbox: what a command (TCP or HTTP exec) or a terminal shell may see and use.
//!
//! - The environment is cleared to an allowlist of the server's variables (plus, for exec, the
//!   request's own variables).
//! - Resource limits (processes, file size, CPU time, open files) are set in the child before it
//!   execs the command ([`spawn`]: a `vfork`-style start, no copy of the server), so nothing the
//!   command starts can outrun them. Soft and hard limits are both set, so the command cannot
//!   raise them back.
//! - A server running as root can run commands as another user (with its primary group and no
//!   supplementary groups).
//! - No descriptor of the server reaches a command: everything ferry opens is close-on-exec. The
//!   one exception, a pty master that `pty-process` marks close-on-exec only just after opening
//!   it, is opened under a lock that no spawn can run through ([`open_pty`], [`spawn_lock`]).
//!   (What ferry's own parent left open without close-on-exec is inherited like anything else:
//!   start ferry with only 0, 1 and 2 open, as systemd and Docker do.)

use rustix::process::{Resource, Rlimit};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::{Arc, RwLock, RwLockReadGuard};

/// How commands are confined.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sandbox {
    /// Server environment variables passed through to commands; all others are cleared.
    pub env: Vec<String>,
    /// RLIMIT_NPROC for commands.
    pub max_processes: Option<u64>,
    /// RLIMIT_FSIZE, bytes.
    pub max_file_size: Option<u64>,
    /// RLIMIT_CPU, seconds.
    pub max_cpu_seconds: Option<u64>,
    /// RLIMIT_NOFILE.
    pub max_open_files: Option<u64>,
    /// Run commands as this user (name or numeric uid) with its primary group; only when ferry runs as root.
    pub user: Option<String>,
}

/// The server variables commands see by default.
pub const DEFAULT_ENV: &[&str] = &["PATH", "HOME", "LANG", "TERM"];

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            env: DEFAULT_ENV.iter().map(|s| s.to_string()).collect(),
            // Counted per user across the machine, threads included (ferry's own too when it runs
            // commands as itself): room for parallel builds, yet a fork bomb stops early.
            max_processes: Some(1024),
            // Unlimited: moving and producing big files is ferry's job; the disk is the real bound
            // (this limit is per file, so it would not bound disk use anyway).
            max_file_size: None,
            // Unlimited: exec already has a wall-clock timeout, and a terminal may build for hours.
            max_cpu_seconds: None,
            // The usual soft limit: what programs expect, and it bounds each process's kernel memory.
            max_open_files: Some(1024),
            user: None,
        }
    }
}

/// Number of resource limits a sandbox may set.
const LIMITS: usize = 4;

/// A [`Sandbox`] checked and resolved at startup, ready to apply to each command; cheap to clone.
#[derive(Debug, Clone)]
pub struct Confinement {
    env: Arc<[(OsString, OsString)]>,
    limits: [Option<(Resource, u64)>; LIMITS],
    ids: Option<(u32, u32)>,
}

impl Sandbox {
    /// Checks the settings, resolves the user and reads the allowed variables, once at startup.
    pub fn prepare(&self) -> anyhow::Result<Confinement> {
        for name in &self.env {
            anyhow::ensure!(
                !name.is_empty() && !name.contains(['=', '\0']),
                "exec env: {name:?} is not a variable name"
            );
        }
        let mut env: Vec<_> = self
            .env
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
            .collect();
        let wanted = [
            (Resource::Nproc, self.max_processes, "max_processes"),
            (Resource::Fsize, self.max_file_size, "max_file_size"),
            (Resource::Cpu, self.max_cpu_seconds, "max_cpu_seconds"),
            (Resource::Nofile, self.max_open_files, "max_open_files"),
        ];
        let mut limits = [None; LIMITS];
        for (slot, (res, value, name)) in limits.iter_mut().zip(wanted) {
            // 0 keeps the server's own limit (TOML has no null to unset a default with).
            let Some(v) = value.filter(|v| *v > 0) else {
                continue;
            };
            // Only root may raise a hard limit: keep within the server's own.
            let own = rustix::process::getrlimit(res);
            let hard = own.maximum;
            if own.current == Some(v) && hard == Some(v) {
                // Commands inherit it as it is: no need to set it in each child (see `apply`).
                continue;
            }
            let v = match hard {
                Some(h) if h < v => {
                    tracing::warn!(
                        "exec {name} = {v} is over the server's own hard limit; using {h}"
                    );
                    h
                }
                _ => v,
            };
            *slot = Some((res, v));
        }
        let ids = match &self.user {
            None => None,
            Some(spec) => {
                let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                let (uid, gid, home) = resolve_user(spec, &passwd).map_err(anyhow::Error::msg)?;
                let me = (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                );
                if me == (uid, gid) {
                    None
                } else {
                    anyhow::ensure!(
                        me.0 == 0,
                        "exec user {spec:?}: ferry must run as root to run commands as another user"
                    );
                    // The user's own home, not the server's.
                    for (_, v) in env.iter_mut().filter(|(k, _)| k == "HOME") {
                        *v = OsString::from(&home);
                    }
                    Some((uid, gid))
                }
            }
        };
        Ok(Confinement {
            env: env.into(),
            limits,
            ids,
        })
    }
}

impl Confinement {
    /// The server variables passed through, with their values at startup.
    pub fn env(&self) -> impl Iterator<Item = &(OsString, OsString)> {
        self.env.iter()
    }

    /// The uid and gid commands run as, when not the server's own.
    pub fn ids(&self) -> Option<(u32, u32)> {
        self.ids
    }

    /// The start of `program` with `args`, in `cwd`, with the server's allowlisted variables
    /// and the request's own `env` over them, the limits and the user. A bare name is looked
    /// up when it starts, in the `PATH` the command will see (the request's own, else the
    /// server's passed through), as `execvp` would.
    pub fn plan(
        &self,
        program: &str,
        args: &[String],
        env: &BTreeMap<String, String>,
        cwd: &std::path::Path,
        stdin: bool,
    ) -> crate::core::error::Result<Plan> {
        use crate::core::error::Error;
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c =
            |b: &[u8]| CString::new(b).map_err(|_| Error::bad_request("a NUL byte in the command"));
        let mut vars: BTreeMap<&[u8], &[u8]> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        vars.extend(env.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        let envp = vars
            .iter()
            .map(|(k, v)| c(&[*k, b"=", *v].concat()))
            .collect::<Result<_, _>>()?;
        let candidates = if program.contains('/') {
            vec![c(program.as_bytes())?]
        } else {
            // execvp's default when there is no PATH at all.
            let path: &[u8] = vars.get(&b"PATH"[..]).copied().unwrap_or(b"/bin:/usr/bin");
            path.split(|b| *b == b':')
                .map(|dir| match dir {
                    b"" => c(program.as_bytes()),
                    d => c(&[d, b"/", program.as_bytes()].concat()),
                })
                .collect::<Result<_, _>>()?
        };
        let argv = std::iter::once(program)
            .chain(args.iter().map(String::as_str))
            .map(|a| c(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        Ok(Plan {
            candidates,
            argv,
            envp,
            cwd: c(cwd.as_os_str().as_bytes())?,
            limits: self
                .limits
                .iter()
                .flatten()
                .map(|(res, v)| (*res as i32, *v))
                .collect(),
            ids: self.ids,
            stdin,
        })
    }

    /// Hands a terminal's pty to the commands' user (when not the server's), as a login would.
    pub fn own_tty(&self, pts: impl std::os::fd::AsFd) -> std::io::Result<()> {
        use rustix::process::{Gid, Uid};
        if let Some((uid, gid)) = self.ids {
            let ids = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
            rustix::fs::fchown(pts, ids.0, ids.1)?;
        }
        Ok(())
    }

    /// Confines a terminal's shell about to be forked (`pty-process` starts it from a std
    /// `Command`; exec uses [`Confinement::plan`]): clears its environment to the allowlist,
    /// switches its user and sets its resource limits between fork and exec. Spawn it under
    /// [`spawn_lock`].
    // `pre_exec` is unsafe because the closure runs in the forked child of a multi-threaded
    // process, where only async-signal-safe calls are sound. It makes only `setrlimit` system
    // calls (rustix, no libc wrapper state), on values computed before the fork: no allocation,
    // no lock. std runs it after its own setup (user, directory, process group), just before
    // exec; lowering limits needs no privilege either way.
    #[allow(unsafe_code)]
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.env_clear();
        for (k, v) in self.env.iter() {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = self.ids {
            // std drops the supplementary groups (setgroups([])) when root switches user.
            cmd.uid(uid).gid(gid);
        }
        let limits = self.limits;
        if limits.iter().any(Option::is_some) {
            // SAFETY: see above; the closure only calls setrlimit(2) on copied plain values.
            unsafe {
                cmd.pre_exec(move || {
                    for &(res, v) in limits.iter().flatten() {
                        let lim = Rlimit {
                            current: Some(v),
                            maximum: Some(v),
                        };
                        rustix::process::setrlimit(res, lim)?;
                    }
                    Ok(())
                });
            }
        }
    }
}

/// Starts a confined command under [`spawn_lock`], with a clear error for a missing or
/// forbidden program (or working directory).
pub fn spawn(plan: &Plan, program: &str) -> crate::core::error::Result<Process> {
    start(plan).map_err(|e| spawn_error(e, program))
}

/// Starts a confined command under [`spawn_lock`]; the error as the system gave it.
pub fn start(plan: &Plan) -> Result<Process, SpawnError> {
    let _lock = spawn_lock();
    plan.spawn()
}

/// The clear error for a command that did not start.
pub fn spawn_error(e: SpawnError, program: &str) -> crate::core::error::Error {
    use crate::core::error::{Code, Error};
    let SpawnError { err, in_cwd, .. } = e;
    match err.kind() {
        std::io::ErrorKind::NotFound if in_cwd => {
            Error::new(Code::NotFound, "the working directory is gone")
        }
        std::io::ErrorKind::PermissionDenied if in_cwd => Error::new(
            Code::ForbiddenPath,
            format!("{program}: permission denied (to enter its cwd)"),
        ),
        std::io::ErrorKind::NotFound => {
            Error::new(Code::NotFound, format!("{program}: command not found"))
        }
        std::io::ErrorKind::PermissionDenied => Error::new(
            Code::ForbiddenPath,
            format!("{program}: permission denied (to run it, or to enter its cwd)"),
        ),
        _ => match err.raw_os_error() {
            Some(libc::ENOEXEC) => Error::bad_request(format!(
                "{program}: exec format error (a script needs a #! line)"
            )),
            Some(libc::E2BIG) => Error::bad_request(format!(
                "{program}: the arguments and environment are too long"
            )),
            _ => Error::internal(format!("spawn {program}: {err}")),
        },
    }
}

/// Forks (spawns) hold this shared; opening a pty holds it exclusive.
static SPAWNS: RwLock<()> = RwLock::new(());

/// Held while spawning a command, so no fork copies a pty master before it is close-on-exec.
pub fn spawn_lock() -> RwLockReadGuard<'static, ()> {
    SPAWNS.read().unwrap_or_else(|e| e.into_inner())
}

/// Opens a pty pair while no command is being spawned (see [`spawn_lock`]).
pub fn open_pty() -> pty_process::Result<(pty_process::Pty, pty_process::Pts)> {
    let _g = SPAWNS.write().unwrap_or_else(|e| e.into_inner());
    pty_process::open()
}

/// The uid, primary gid and home of `spec` (a user name, else a numeric uid) in `passwd` text.
fn resolve_user(spec: &str, passwd: &str) -> Result<(u32, u32, String), String> {
    let entries = passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        match f.as_slice() {
            [name, _, uid, gid, _, home, ..] => Some((
                *name,
                uid.parse::<u32>().ok()?,
                gid.parse().ok()?,
                home.to_string(),
            )),
            _ => None,
        }
    });
    let by_uid = spec.parse::<u32>().ok();
    let mut found = None;
    for (name, uid, gid, home) in entries {
        if name == spec {
            return Ok((uid, gid, home));
        }
        if found.is_none() && by_uid == Some(uid) {
            found = Some((uid, gid, home));
        }
    }
    found.ok_or_else(|| format!("exec user {spec:?}: no such user in /etc/passwd"))
}

mod process;
mod spawn;
pub use process::Process;
pub use spawn::{Plan, SpawnError, keep_children};

#[cfg(test)]
mod tests;
