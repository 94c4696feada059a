//! One terminal session: its shared state, the attachment of a client, and the PTY pumps.

use crate::core::error::{Code, Error, Result};
use crate::core::registry::SessionCounters;
use crate::core::term::record::Recorder;
use crate::core::term::ring::{Ring, Slice};
use crate::core::term::{TermSize, WINDOW};
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest chunk of output handed to a client at once.
const CHUNK: usize = 32 * 1024;

/// How a shell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
}

/// Input for the shell.
#[derive(Debug, Clone)]
pub enum Input {
    /// Keystrokes (raw terminal bytes).
    Bytes(Bytes),
    /// A new terminal size.
    Resize(TermSize),
}

pub(super) struct State {
    pub ring: Ring,
    /// Output handed to the attached client (or the last one); the reader stays within
    /// [`WINDOW`] of it.
    pub delivered: u64,
    pub exit: Option<Exit>,
    pub exit_seen: bool,
    /// The current attachment; a newer one ends older ones.
    pub generation: u64,
    pub attached: bool,
    pub detached_at: Option<Instant>,
    pub last_active: Instant,
    pub paused: bool,
}

/// The shared part of a live terminal session.
pub(super) struct Session {
    pub id: String,
    pub state: Mutex<State>,
    /// Bumped on every change of `state` that someone may wait for.
    pub changed: watch::Sender<u64>,
    /// Bumped when a client attaches or detaches (the timers' business, not every output's).
    pub lifecycle: watch::Sender<u64>,
    /// The PTY's writing side, written by the attached client's task itself (no task hop per
    /// keystroke); gone once the shell has ended.
    pub input: Mutex<Option<PtyInput>>,
    pub cancel: CancellationToken,
    pub counters: Arc<SessionCounters>,
    pub grace: Duration,
    pub idle: Duration,
}

/// The writing side of a session's PTY, with the recording of its resizes.
pub(super) struct PtyInput {
    pub pty: pty_process::OwnedWritePty,
    pub recorder: Option<Recorder>,
}

impl Session {
    pub fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Signals an attach or a detach (and bumps `changed` too).
    pub fn bump_lifecycle(&self) {
        self.lifecycle.send_modify(|v| *v = v.wrapping_add(1));
        self.bump();
    }

    /// Drops the PTY's writing side: the shell has ended.
    pub fn close_input(&self) {
        self.input.lock().unwrap().take();
    }

    /// Returns when the session has been detached longer than its grace period, or idle
    /// (no input, output or attachment) longer than its idle timeout.
    pub async fn expired(&self) {
        // Output and input only move the deadline later: checked when it comes, they need not
        // wake this task each time.
        let mut rx = self.lifecycle.subscribe();
        loop {
            rx.borrow_and_update();
            let deadline = {
                let st = self.state.lock().unwrap();
                let idle_at = st.last_active + self.idle;
                match st.detached_at {
                    Some(d) if !st.attached => idle_at.min(d + self.grace),
                    _ => idle_at,
                }
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    /// Returns once a client has been told of the exit.
    pub async fn exit_seen(&self) {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if self.state.lock().unwrap().exit_seen {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// What an attached client gets next.
#[derive(Debug)]
pub enum TermEvent {
    /// Terminal output; the attachment's sequence number has advanced past it.
    Output(Vec<u8>),
    /// Output from `from` to `to` left the replay buffer before it could be sent.
    Lost {
        /// First missed offset.
        from: u64,
        /// Where the output resumes.
        to: u64,
    },
    /// The shell ended (all its output was handed out before).
    Exit(Exit),
    /// Another client attached to the session; this one is done.
    Taken,
}

/// A client's view of a terminal session. Dropping it detaches the client; the shell lives on
/// for the grace period.
pub struct Attachment {
    pub(super) session: Arc<Session>,
    pub(super) generation: u64,
    pub(super) pos: u64,
    pub(super) lost: Option<(u64, u64)>,
    pub(super) rx: watch::Receiver<u64>,
}

impl Attachment {
    /// The session id (to resume with).
    pub fn id(&self) -> &str {
        &self.session.id
    }

    /// The sequence number (output byte offset) of the next output byte this client gets.
    pub fn seq(&self) -> u64 {
        self.pos
    }

    /// The output the client asked for that had already left the buffer, as `(from, to)`.
    pub fn lost(&self) -> Option<(u64, u64)> {
        self.lost
    }

    /// Waits for the next event. Cancel-safe. Calling it again means the previous output was
    /// sent, which lets the shell's output flow on (flow control).
    pub async fn next(&mut self) -> TermEvent {
        {
            let mut st = self.session.state.lock().unwrap();
            if st.generation == self.generation && st.delivered != self.pos {
                st.delivered = self.pos;
                drop(st);
                self.session.bump();
            }
        }
        loop {
            self.rx.borrow_and_update();
            {
                let mut st = self.session.state.lock().unwrap();
                if st.generation != self.generation {
                    return TermEvent::Taken;
                }
                match st.ring.read(self.pos, CHUNK) {
                    Slice::Lost { oldest } => {
                        let from = std::mem::replace(&mut self.pos, oldest);
                        return TermEvent::Lost { from, to: oldest };
                    }
                    Slice::Data(d) if !d.is_empty() => {
                        self.pos += d.len() as u64;
                        st.last_active = Instant::now();
                        self.session.counters.add_out(d.len() as u64);
                        return TermEvent::Output(d);
                    }
                    Slice::Data(_) => {
                        if let Some(exit) = st.exit {
                            st.exit_seen = true;
                            drop(st);
                            self.session.bump();
                            return TermEvent::Exit(exit);
                        }
                    }
                }
            }
            if self.rx.changed().await.is_err() {
                return TermEvent::Taken;
            }
        }
    }

    /// A handle that feeds the shell, usable while [`Attachment::next`] is pending.
    pub fn input(&self) -> InputSender {
        InputSender {
            session: self.session.clone(),
        }
    }
}

/// Feeds one session's shell.
#[derive(Clone)]
pub struct InputSender {
    session: Arc<Session>,
}

impl InputSender {
    /// Writes keystrokes to the shell: as many of `bytes` as the terminal takes at once (all of
    /// them, unless its input queue is full), waiting while it takes none. Cancel-safe: if
    /// cancelled, nothing was written.
    pub async fn write(&self, bytes: &[u8]) -> Result<usize> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let gone = || Error::new(Code::Conflict, "the shell has ended");
        let n = std::future::poll_fn(|cx| {
            let mut input = self.session.input.lock().unwrap();
            match input.as_mut() {
                Some(i) => std::pin::Pin::new(&mut i.pty).poll_write(cx, bytes),
                None => std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            }
        })
        .await
        .map_err(|_| gone())?;
        self.session.state.lock().unwrap().last_active = Instant::now();
        self.session.counters.add_in(n as u64);
        Ok(n)
    }

    /// Resizes the terminal (1 to 1000 columns and rows).
    pub fn resize(&self, size: TermSize) -> Result<()> {
        size.check()?;
        self.session.state.lock().unwrap().last_active = Instant::now();
        let input = self.session.input.lock().unwrap();
        let input = input
            .as_ref()
            .ok_or_else(|| Error::new(Code::Conflict, "the shell has ended"))?;
        let _ = input
            .pty
            .resize(pty_process::Size::new(size.rows, size.cols));
        if let Some(r) = &input.recorder {
            r.resize(size.cols, size.rows);
        }
        Ok(())
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut st = self.session.state.lock().unwrap();
        if st.generation == self.generation {
            st.attached = false;
            st.detached_at = Some(Instant::now());
            drop(st);
            self.session.bump_lifecycle();
        }
    }
}

/// Reads the PTY into the replay buffer, never more than [`WINDOW`] ahead of the client.
pub(super) async fn read_loop(
    session: Arc<Session>,
    mut pty: pty_process::OwnedReadPty,
    recorder: Option<Recorder>,
) {
    let mut rx = session.changed.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let room = loop {
            rx.borrow_and_update();
            {
                let mut st = session.state.lock().unwrap();
                let ahead = st.ring.end() - st.delivered.min(st.ring.end());
                let room = WINDOW.saturating_sub(ahead);
                st.paused = room == 0;
                if room > 0 {
                    break room;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        };
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        // When the shell and everything holding the terminal are gone the read fails (EIO).
        let n = match pty.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        {
            let mut st = session.state.lock().unwrap();
            st.ring.push(&buf[..n]);
            st.last_active = Instant::now();
        }
        session.bump();
        if let Some(r) = &recorder {
            r.output(&buf[..n]).await;
        }
    }
}

/// Kills the process group `sid` and every other process of the session it leads (background
/// jobs of an interactive shell run in process groups of their own).
pub(super) fn kill_session(sid: i32) {
    use rustix::process::{Pid, Signal, kill_process, kill_process_group};
    let Some(leader) = Pid::from_raw(sid) else {
        return;
    };
    let _ = kill_process_group(leader, Signal::KILL);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name: state, ppid, pgrp, session.
        let session = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(3))
            .and_then(|s| s.parse::<i32>().ok());
        if session == Some(sid)
            && let Some(p) = Pid::from_raw(pid)
        {
            let _ = kill_process(p, Signal::KILL);
        }
    }
}
