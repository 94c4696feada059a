//! A started command: its pipes, and how it ended, read through a pidfd.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

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

impl Process {
    /// A process just started as `pid`, watched through `pidfd`, with its pipes.
    pub(super) fn new(
        pid: u32,
        pidfd: AsyncFd<OwnedFd>,
        stdin: Option<pipe::Sender>,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    ) -> Self {
        Process {
            pid,
            pidfd: Some(pidfd),
            status: None,
            stdin,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Its process id (also its process group's).
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for it to end and reaps it; cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.exited().await?;
        self.try_wait()?
            .ok_or_else(|| io::Error::other("the process ended but could not be reaped"))
    }

    /// Waits for it to end without reaping it, so that its process group's id stays its own
    /// (until [`Process::wait`]) and the group can still be killed safely; cancel-safe.
    pub async fn exited(&self) -> io::Result<()> {
        match self.pidfd.as_ref() {
            Some(fd) => wait_on(fd, rustix::process::WaitIdOptions::NOWAIT)
                .await
                .map(drop),
            None => Ok(()),
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
        // Not reaped: the group's id is still its own, and so is what is left in the group.
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
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
            let _ = wait_on(&pidfd, rustix::process::WaitIdOptions::empty()).await;
        });
    }
}

/// Waits until the process of `pidfd` has ended: its `wait(2)` status, reaped unless `extra`
/// has `NOWAIT`; cancel-safe.
async fn wait_on(
    pidfd: &AsyncFd<OwnedFd>,
    extra: rustix::process::WaitIdOptions,
) -> io::Result<i32> {
    loop {
        if let Some(status) = reap_with(pidfd, extra)? {
            return Ok(status);
        }
        pidfd.readable().await?.clear_ready();
    }
}

/// Reaps the process of `pidfd` if it has ended: its `wait(2)` status, else None.
fn reap(pidfd: &AsyncFd<OwnedFd>) -> io::Result<Option<i32>> {
    reap_with(pidfd, rustix::process::WaitIdOptions::empty())
}

/// As [`reap`], with `extra` options (`NOWAIT`: leave it unreaped).
fn reap_with(
    pidfd: &AsyncFd<OwnedFd>,
    extra: rustix::process::WaitIdOptions,
) -> io::Result<Option<i32>> {
    let opts =
        rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG | extra;
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
