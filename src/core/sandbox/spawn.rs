//! Starting a confined command without forking the server: a `vfork`-style clone (the child
//! shares the server's memory and runs on a small stack of its own, the calling thread waits
//! until it has exec'd) sets the process group, stdio, directory, user and resource limits,
//! then execs, as glibc's `posix_spawn` does. A fork would copy the server's page tables and
//! take copy-on-write faults, which grow with the server; this costs the same at any size.

use super::Process;
use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// Everything a command needs to start, made ready before the clone: the child only reads it.
pub struct Plan {
    /// Paths to exec in turn, as `execvp` tries its `PATH` (one for a name with a `/`).
    pub candidates: Vec<CString>,
    /// The arguments, argv[0] first.
    pub argv: Vec<CString>,
    /// The whole environment, as `NAME=VALUE`.
    pub envp: Vec<CString>,
    /// The working directory.
    pub cwd: CString,
    /// Limits to set, soft and hard.
    pub limits: Vec<(c_int, u64)>,
    /// The uid and gid to switch to.
    pub ids: Option<(u32, u32)>,
    /// Whether the command reads stdin from a pipe (else from /dev/null).
    pub stdin: bool,
}

/// What the child reads (prepared by the parent) and writes (the error that stopped it).
struct ChildArgs {
    candidates: Vec<*const c_char>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    cwd: *const c_char,
    stdio: [RawFd; 3],
    limits: Vec<(c_int, libc::rlimit)>,
    ids: Option<(u32, u32)>,
    errno: c_int,
}

/// The child's stack, in 16-byte units: 64 KiB, far more than its few calls use.
const STACK: usize = 4096;

/// A pipe whose ends are both above the standard descriptors, so that placing one end on 0, 1
/// or 2 in the child never overwrites another.
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// Why a command did not start: the error, and whether it came from entering its working
/// directory (else from the program: not found, not executable, or a setup step).
#[derive(Debug)]
pub struct SpawnError {
    /// The system error.
    pub err: io::Error,
    /// Whether the working directory was the cause.
    pub in_cwd: bool,
    /// Whether the program did start (it was exec'd, then could not be watched and was killed).
    pub ran: bool,
}

impl From<io::Error> for SpawnError {
    fn from(err: io::Error) -> Self {
        SpawnError {
            err,
            in_cwd: false,
            ran: false,
        }
    }
}

/// The child's errno for a failed `chdir`, tagged so the parent can tell it from exec's.
const CWD_FAILED: c_int = 1 << 16;

impl Plan {
    /// Starts the command, or says why it could not (the child's exec error included).
    #[allow(unsafe_code)]
    pub fn spawn(&self) -> Result<Process, SpawnError> {
        // The server's ends are made ready (non-blocking, registered) before the child exists,
        // so nothing can fail between its start and its `Process`, which kills it when dropped.
        let (stdin_child, stdin) = if self.stdin {
            let (r, w) = pipe_pair()?;
            (r, Some(pipe::Sender::from_owned_fd(w)?))
        } else {
            let null = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(io::Error::from)?;
            (above_stdio(null)?, None)
        };
        let (out_r, out_w) = pipe_pair()?;
        let (err_r, err_w) = pipe_pair()?;
        let (stdout, stderr) = (
            pipe::Receiver::from_owned_fd(out_r)?,
            pipe::Receiver::from_owned_fd(err_r)?,
        );
        let nul = |v: &[CString]| {
            let mut p: Vec<*const c_char> = v.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let mut args = ChildArgs {
            candidates: self.candidates.iter().map(|s| s.as_ptr()).collect(),
            argv: nul(&self.argv),
            envp: nul(&self.envp),
            cwd: self.cwd.as_ptr(),
            stdio: [
                stdin_child.as_raw_fd(),
                out_w.as_raw_fd(),
                err_w.as_raw_fd(),
            ],
            limits: self
                .limits
                .iter()
                .map(|&(res, v)| {
                    let v = v as libc::rlim_t;
                    let lim = libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    };
                    (res, lim)
                })
                .collect(),
            ids: self.ids,
            errno: 0,
        };
        let mut stack = vec![0u128; STACK];
        // SAFETY: the child runs `child` on its own stack (the top of `stack`, 16-byte aligned)
        // and reads `args`, both alive until clone returns: with CLONE_VFORK this thread is
        // suspended until the child has exec'd or exited. Signals are blocked around the clone
        // (all that glibc lets a program block) so that no handler of the server runs in the
        // child before it has reset them.
        let (pid, clone_err) = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let top = stack.as_mut_ptr().add(STACK) as *mut c_void;
            let pid = libc::clone(
                child,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &mut args as *mut ChildArgs as *mut c_void,
            );
            let err = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            (pid, err)
        };
        drop((stdin_child, out_w, err_w, stack));
        let Some(pid_) = rustix::process::Pid::from_raw(pid) else {
            return Err(clone_err.into());
        };
        // SAFETY: the child has exec'd or exited (CLONE_VFORK); nothing else writes it now.
        let errno = unsafe { std::ptr::read_volatile(&args.errno) };
        // Without PIDFD_NONBLOCK (Linux 5.10): every wait on it passes WNOHANG.
        let watched = match errno {
            0 => rustix::process::pidfd_open(pid_, rustix::process::PidfdFlags::empty())
                .map_err(io::Error::from)
                // SAFETY: the AsyncFd owns the pidfd, which stays open and the same while it
                // lives.
                .and_then(|fd| unsafe {
                    AsyncFd::register_with_interest(fd, Interest::READABLE).map_err(Into::into)
                }),
            e => Err(io::Error::from_raw_os_error(e & !CWD_FAILED)),
        };
        match watched {
            Ok(pidfd) => Ok(Process::new(pid as u32, pidfd, stdin, stdout, stderr)),
            Err(err) => {
                // It failed to start (and has exited), or cannot be watched: end and reap it.
                let _ = rustix::process::kill_process_group(pid_, rustix::process::Signal::KILL);
                let _ = rustix::process::kill_process(pid_, rustix::process::Signal::KILL);
                while let Err(rustix::io::Errno::INTR) =
                    rustix::process::waitpid(Some(pid_), rustix::process::WaitOptions::empty())
                {
                }
                Err(SpawnError {
                    err,
                    in_cwd: errno & CWD_FAILED != 0,
                    ran: errno == 0,
                })
            }
        }
    }
}

/// The child: only system calls on values the parent prepared (no allocation, no lock, no
/// panic), then exec; on failure its errno goes back through `args` and it exits.
#[allow(unsafe_code)]
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive while the parent is suspended.
    unsafe {
        let args = &mut *(arg as *mut ChildArgs);
        let errno = setup_and_exec(args);
        std::ptr::write_volatile(&mut args.errno, errno);
        libc::_exit(127)
    }
}

/// The kernel's `struct sigaction` for `rt_sigaction` (x86-64 and aarch64 layout).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Resets signals, then sets the group, stdio, user, directory and limits, and execs; returns
/// the errno that stopped it (tagged with [`CWD_FAILED`] for the directory).
#[allow(unsafe_code)]
unsafe fn setup_and_exec(args: &ChildArgs) -> c_int {
    let errno = || unsafe { *libc::__errno_location() };
    unsafe {
        // The server's handlers must not run here, and SIGPIPE (ignored by Rust) is the default
        // again for the command, as std does; other ignored signals stay ignored, as with exec.
        // Raw system calls: libc's wrapper may take a lock (for SIGABRT) in the server's memory.
        let act = |sig: c_int, new: *const KernelSigaction, old: *mut KernelSigaction| {
            libc::syscall(libc::SYS_rt_sigaction, sig, new, old, 8usize)
        };
        let dfl = KernelSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = KernelSigaction { ..dfl };
            if act(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if (old.handler != libc::SIG_DFL && old.handler != libc::SIG_IGN)
                || sig == libc::SIGPIPE
            {
                act(sig, &dfl, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) != 0 {
            return errno();
        }
        for (target, &fd) in args.stdio.iter().enumerate() {
            if libc::dup2(fd, target as c_int) < 0 {
                return errno();
            }
        }
        if let Some((uid, gid)) = args.ids {
            // Raw system calls: they change this process alone (glibc's wrappers would signal
            // every thread of the server to change them too).
            let no_groups: *const libc::gid_t = std::ptr::null();
            if libc::syscall(libc::SYS_setgroups, 0, no_groups) != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                return errno();
            }
        }
        // As the user: a directory it may not enter is refused.
        if libc::chdir(args.cwd) != 0 {
            return errno() | CWD_FAILED;
        }
        for (res, lim) in &args.limits {
            if libc::setrlimit(*res as _, lim) != 0 {
                return errno();
            }
        }
        // Unblocked last, once in the command's own group (a Ctrl-Z to the server's group no
        // longer reaches it), as glibc does just before exec.
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        // As execvp: the next candidate after a missing file, EACCES if one was not executable.
        let mut failed = libc::ENOENT;
        let mut denied = false;
        for &path in &args.candidates {
            libc::execve(path, args.argv.as_ptr(), args.envp.as_ptr());
            failed = errno();
            match failed {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => return failed,
            }
        }
        if denied { libc::EACCES } else { failed }
    }
}

/// Puts SIGCHLD back to its default if ferry was started with it ignored: the kernel would then
/// reap commands itself, before ferry could read how they ended.
#[allow(unsafe_code)]
pub fn keep_children() {
    // SAFETY: reads and sets one signal's disposition; a handler already installed is kept.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) == 0
            && (old.sa_sigaction == libc::SIG_IGN || old.sa_flags & libc::SA_NOCLDWAIT != 0)
        {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGCHLD, &dfl, std::ptr::null_mut());
        }
    }
}
