//! Starting a confined command without forking the server: a `vfork`-style clone (the child
//! shares the server's memory and runs on a small stack of its own, the calling thread waits
//! until it has exec'd) sets the process group, stdio, directory, user and resource limits,
//! then execs, as glibc's `posix_spawn` does. A fork would copy the server's page tables and
//! take copy-on-write faults, which grow with the server; this costs the same at any size.

use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
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

/// A started command: its pipes, and its exit through a pidfd. Dropping it kills it.
pub struct Process {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    /// Its stdin, when piped.
    pub stdin: Option<pipe::Sender>,
    /// Its stdout.
    pub stdout: Option<pipe::Receiver>,
    /// Its stderr.
    pub stderr: Option<pipe::Receiver>,
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

impl Plan {
    /// Starts the command, or says why it could not (the child's exec error included).
    #[allow(unsafe_code)]
    pub fn spawn(&self) -> io::Result<Process> {
        let stdin = if self.stdin {
            let (r, w) = pipe_pair()?;
            (r, Some(w))
        } else {
            let null = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )?;
            (above_stdio(null)?, None)
        };
        let (out_r, out_w) = pipe_pair()?;
        let (err_r, err_w) = pipe_pair()?;
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
            stdio: [stdin.0.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            limits: self
                .limits
                .iter()
                .map(|&(res, v)| {
                    let v = v as libc::rlim_t;
                    (
                        res,
                        libc::rlimit {
                            rlim_cur: v,
                            rlim_max: v,
                        },
                    )
                })
                .collect(),
            ids: self.ids,
            errno: 0,
        };
        let mut stack = vec![0u128; STACK];
        // SAFETY: the child runs `child` on its own stack (the top of `stack`, 16-byte aligned)
        // and reads `args`, both alive until clone returns: with CLONE_VFORK this thread is
        // suspended until the child has exec'd or exited. All signals are blocked around the
        // clone so that no handler of the server runs in the child before it resets them.
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
        drop((stdin.0, out_w, err_w, stack));
        if pid < 0 {
            return Err(clone_err);
        }
        // SAFETY: the child has exec'd or exited (CLONE_VFORK); nothing else writes it now.
        let errno = unsafe { std::ptr::read_volatile(&args.errno) };
        let pidfd = match rustix::process::Pid::from_raw(pid) {
            Some(p) if errno == 0 => {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::NONBLOCK)
            }
            _ => Err(rustix::io::Errno::from_raw_os_error(errno)),
        };
        let pidfd = match pidfd {
            Ok(fd) => fd,
            Err(e) => {
                // The child is gone (it failed to exec) or cannot be watched: end and reap it.
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid).expect("a positive pid"),
                    rustix::process::Signal::KILL,
                );
                let _ = rustix::process::waitpid(
                    rustix::process::Pid::from_raw(pid),
                    rustix::process::WaitOptions::empty(),
                );
                return Err(e.into());
            }
        };
        let receiver = |fd: OwnedFd| pipe::Receiver::from_owned_fd(fd);
        // SAFETY: the AsyncFd owns the pidfd, which stays open and the same while it lives.
        let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?;
        Ok(Process {
            pid: pid as u32,
            pidfd: Some(pidfd),
            status: None,
            stdin: stdin.1.map(pipe::Sender::from_owned_fd).transpose()?,
            stdout: Some(receiver(out_r)?),
            stderr: Some(receiver(err_r)?),
        })
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

/// Resets signals, then sets the group, stdio, user, directory and limits, and execs; returns
/// the errno that stopped it.
#[allow(unsafe_code)]
unsafe fn setup_and_exec(args: &ChildArgs) -> c_int {
    let errno = || unsafe { *libc::__errno_location() };
    unsafe {
        // The server's handlers must not run here, and SIGPIPE (ignored by Rust) is the default
        // again for the command, as std does; other ignored signals stay ignored, as with exec.
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN)
                || sig == libc::SIGPIPE
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
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
            return errno();
        }
        for (res, lim) in &args.limits {
            if libc::setrlimit(*res as _, lim) != 0 {
                return errno();
            }
        }
        // As execvp: the next candidate after a missing file, EACCES if one was not executable.
        let mut failed = libc::ENOENT;
        let mut denied = false;
        for &path in &args.candidates {
            libc::execve(path, args.argv.as_ptr(), args.envp.as_ptr());
            failed = errno();
            match failed {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR => {}
                _ => return failed,
            }
        }
        if denied { libc::EACCES } else { failed }
    }
}

impl Process {
    /// Its process id (also its process group's).
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for it to end and reaps it; cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            let fd = self.pidfd.as_ref().expect("a pidfd until reaped");
            fd.readable().await?.clear_ready();
        }
    }

    /// Its exit status if it has ended (reaping it), else None.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let fd = self.pidfd.as_ref().expect("a pidfd until reaped");
        let Some(raw) = reap(fd)? else {
            return Ok(None);
        };
        let status = ExitStatus::from_raw(raw);
        self.status = Some(status);
        self.pidfd = None;
        Ok(Some(status))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        if let Ok(Some(_)) = self.try_wait() {
            return;
        }
        // Reap it once it is gone, so that no zombie stays behind.
        let (Ok(rt), Some(pidfd)) = (tokio::runtime::Handle::try_current(), self.pidfd.take())
        else {
            return;
        };
        rt.spawn(async move {
            while reap(&pidfd).is_ok_and(|s| s.is_none()) {
                match pidfd.readable().await {
                    Ok(mut ready) => ready.clear_ready(),
                    Err(_) => return,
                }
            }
        });
    }
}

/// Reaps the process of `pidfd` if it has ended: its `wait(2)` status, else None.
fn reap(pidfd: &AsyncFd<OwnedFd>) -> io::Result<Option<i32>> {
    let opts = rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG;
    let Some(st) = rustix::process::waitid(rustix::process::WaitId::PidFd(pidfd.as_fd()), opts)?
    else {
        return Ok(None);
    };
    // The encoding std's ExitStatus holds: the code shifted left by 8, or the signal number.
    Ok(Some(match (st.exit_status(), st.terminating_signal()) {
        (Some(code), _) => (code & 0xff) << 8,
        (None, Some(sig)) => sig & 0x7f | if st.dumped() { 0x80 } else { 0 },
        (None, None) => 0,
    }))
}
