//! Terminal sessions: a shell on a PTY per session, a replay buffer addressed by byte offset,
//! resume after a dropped connection, grace and idle timers, asciicast recordings.
//!
//! Flow control: the PTY is read only while the output not yet taken by the client is under
//! [`WINDOW`] bytes; a client that stops reading (or a detached session) stops the reader, and
//! the shell then blocks on its own writes. Memory per session stays under [`RING_BYTES`].

mod access;
mod record;
mod ring;
mod session;
mod supervise;

pub use record::RecordingInfo;
pub use session::{Attachment, Exit, Input, InputSender, TermEvent};

use crate::core::audit::{Actor, Audit};
use crate::core::error::{Code, Error, Result};
use crate::core::files::Files;
use crate::core::registry::SessionGuard;
use crate::core::sandbox::{Confinement, open_pty, spawn_lock};
use record::Recorder;
use session::{PtyInput, Session, State, read_loop};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use supervise::Reader;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Output kept for replay per session.
pub const RING_BYTES: usize = 1 << 20;

/// Most output read from the PTY ahead of what the client has taken.
pub const WINDOW: u64 = 256 << 10;

/// Most terminal sessions at once.
pub const MAX_SESSIONS: usize = 64;

/// How long the rest of a shell's output may take to drain once its session is killed.
const DRAIN: Duration = Duration::from_millis(200);

/// Settings of terminal sessions.
#[derive(Debug, Clone)]
pub struct TermConfig {
    /// How long a shell lives on after its client is gone.
    pub grace: Duration,
    /// How long a session may see no input, output or client before it is ended.
    pub idle: Duration,
    /// Whether sessions are recorded as asciicast files.
    pub record: bool,
    /// The shell and its arguments (default: `/bin/bash`, else `/bin/sh`).
    pub shell: Vec<String>,
}

impl Default for TermConfig {
    fn default() -> Self {
        TermConfig {
            grace: Duration::from_secs(300),
            idle: Duration::from_secs(3600),
            record: true,
            shell: vec![
                ["/bin/bash", "/bin/sh"]
                    .into_iter()
                    .find(|p| std::path::Path::new(p).exists())
                    .unwrap_or("/bin/sh")
                    .to_string(),
            ],
        }
    }
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

impl TermSize {
    /// Builds a size, refusing values outside 1 to 1000.
    pub fn new(cols: i64, rows: i64) -> Result<TermSize> {
        let ok = |v: i64| (1..=1000).contains(&v);
        if !ok(cols) || !ok(rows) {
            return Err(Error::bad_request(format!(
                "terminal size {cols}x{rows}: columns and rows must be 1 to 1000"
            )));
        }
        Ok(TermSize {
            cols: cols as u16,
            rows: rows as u16,
        })
    }

    /// Checks the bounds.
    pub fn check(self) -> Result<()> {
        TermSize::new(self.cols.into(), self.rows.into()).map(|_| ())
    }
}

/// Counters of one session's output, for tests and monitoring.
#[derive(Debug, Clone, Copy)]
pub struct TermStats {
    /// Output bytes read from the PTY so far.
    pub produced: u64,
    /// Bytes held in the replay buffer.
    pub buffered: usize,
    /// Bytes read but not yet taken by the client.
    pub unsent: u64,
    /// Whether the PTY reader waits for the client.
    pub paused: bool,
    /// The shell's process id (its process group and session id).
    pub pid: Option<u32>,
}

/// A session in the table, with its shell's process id.
struct Live {
    session: Arc<Session>,
    pid: Option<u32>,
    /// The token's name that opened it: only it (or an admin) may resume it.
    owner: String,
}

struct Inner {
    cfg: TermConfig,
    files: Files,
    audit: Audit,
    recordings: PathBuf,
    sandbox: Confinement,
    sessions: Mutex<HashMap<String, Live>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The terminal sessions of the server; cheap to clone.
#[derive(Clone)]
pub struct Terminals {
    inner: Arc<Inner>,
}

impl Terminals {
    /// No sessions yet; shells are confined by `sandbox`; `shutdown` ends them all.
    pub fn new(
        cfg: TermConfig,
        files: Files,
        audit: Audit,
        data_dir: PathBuf,
        sandbox: Confinement,
        shutdown: CancellationToken,
    ) -> Self {
        Terminals {
            inner: Arc::new(Inner {
                cfg,
                files,
                audit,
                recordings: data_dir.join(record::RECORDINGS),
                sandbox,
                sessions: Mutex::default(),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Starts a shell for the session of `actor` (whose guard lives as long as the shell) and
    /// attaches the caller to it.
    pub async fn open(
        &self,
        actor: Actor,
        guard: SessionGuard,
        size: TermSize,
    ) -> Result<Attachment> {
        let id = actor.session_id.clone();
        let r = self.start(actor, guard, size).await;
        if r.is_err() {
            // The guard is gone with the failed start: close the session's audit row too.
            let audit = &self.inner.audit;
            audit
                .session_ended(&id, 0, 0, "terminal failed to start")
                .await;
        }
        r
    }

    async fn start(&self, actor: Actor, guard: SessionGuard, size: TermSize) -> Result<Attachment> {
        self.permit(&actor.principal)?;
        size.check()?;
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(Error::new(Code::Busy, "the server is shutting down"));
        }
        if inner.sessions.lock().unwrap().len() >= MAX_SESSIONS {
            return Err(Error::new(
                Code::Busy,
                "too many terminal sessions; retry later",
            ));
        }
        let cwd = inner.files.resolve_dir("").await?;
        let Some((program, args)) = inner.cfg.shell.split_first() else {
            return Err(Error::internal("no terminal shell configured"));
        };
        let shell = inner.cfg.shell.join(" ");
        let id = actor.session_id.to_string();
        let rec_path = format!("{}/{id}.cast", record::RECORDINGS);
        let line = if inner.cfg.record {
            format!("terminal {shell} (recording {rec_path})")
        } else {
            format!("terminal {shell}")
        };
        let (pty, pts) = open_pty().map_err(Error::internal)?;
        inner.sandbox.own_tty(&pts).map_err(Error::internal)?;
        pty.resize(pty_process::Size::new(size.rows, size.cols))
            .map_err(Error::internal)?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).current_dir(&cwd).kill_on_drop(true);
        inner.sandbox.apply(&mut cmd);
        cmd.env("TERM", "xterm-256color");
        // pty-process adds its own setsid/controlling-terminal step after the sandbox's.
        let cmd = pty_process::Command::from(cmd);
        inner.audit.command_started(&id, &actor, &line, "").await?;
        let started = Instant::now();
        let spawned = {
            let _lock = spawn_lock();
            cmd.spawn(pts)
        };
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let err = Error::internal(format!("spawn {shell}: {e}"));
                self.audit_end(&id, None, started, 0, Some(&err)).await;
                return Err(err);
            }
        };
        let pid = child.id();
        let (recorder, rec_task) = if inner.cfg.record {
            match Recorder::start(&inner.recordings, &id, size.cols, size.rows).await {
                Ok((r, t)) => (Some(r), Some(t)),
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "terminal recording failed to start");
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        let (changed, _) = watch::channel(0u64);
        let (lifecycle, _) = watch::channel(0u64);
        let (read_half, write_half) = pty.into_split();
        let session = Arc::new(Session {
            id: id.clone(),
            state: Mutex::new(State {
                ring: ring::Ring::new(RING_BYTES),
                delivered: 0,
                exit: None,
                exit_seen: false,
                generation: 0,
                attached: false,
                detached_at: Some(Instant::now()),
                last_active: Instant::now(),
                paused: false,
            }),
            changed,
            lifecycle,
            input: Mutex::new(Some(PtyInput {
                pty: write_half,
                recorder: recorder.clone(),
            })),
            cancel: inner.shutdown.child_token(),
            counters: guard.counters.clone(),
            grace: inner.cfg.grace,
            idle: inner.cfg.idle,
        });
        inner.sessions.lock().unwrap().insert(
            id.clone(),
            Live {
                session: session.clone(),
                pid,
                owner: actor.user().to_string(),
            },
        );
        let reader = Reader::start(
            &inner.tasks,
            read_loop(session.clone(), read_half, recorder),
        );
        let this = self.clone();
        let s2 = session.clone();
        inner.tasks.spawn(async move {
            let tasks = Tasks {
                reader,
                recorder: rec_task,
            };
            this.supervise(s2, child, tasks, actor, guard, started)
                .await;
        });
        inner.files.registry.set_current(&id, Some(line));
        tracing::info!(session = %id, %shell, pid = ?pid, "terminal start");
        self.attach_live(&id, Some(0))
    }

    fn attach_live(&self, id: &str, seq: Option<u64>) -> Result<Attachment> {
        let session = self
            .inner
            .sessions
            .lock()
            .unwrap()
            .get(id)
            .map(|l| l.session.clone())
            .ok_or_else(|| Error::new(Code::NotFound, "no such terminal session"))?;
        let mut st = session.state.lock().unwrap();
        let end = st.ring.end();
        let seq = seq.unwrap_or(st.ring.oldest());
        if seq > end {
            return Err(Error::bad_request(format!(
                "seq {seq} is past the session's output ({end} bytes)"
            )));
        }
        let oldest = st.ring.oldest();
        let (pos, lost) = if seq < oldest {
            (oldest, Some((seq, oldest)))
        } else {
            (seq, None)
        };
        st.generation += 1;
        st.attached = true;
        st.detached_at = None;
        st.delivered = pos;
        st.last_active = Instant::now();
        let generation = st.generation;
        drop(st);
        session.bump_lifecycle();
        let rx = session.changed.subscribe();
        Ok(Attachment {
            session,
            generation,
            pos,
            lost,
            rx,
        })
    }

    /// Output counters of a live session.
    pub fn stats(&self, id: &str) -> Option<TermStats> {
        let sessions = self.inner.sessions.lock().unwrap();
        let live = sessions.get(id)?;
        let st = live.session.state.lock().unwrap();
        Some(TermStats {
            produced: st.ring.end(),
            buffered: st.ring.held(),
            unsent: st.ring.end().saturating_sub(st.delivered),
            paused: st.paused,
            pid: live.pid,
        })
    }

    /// Ends every session (killing their process groups) and waits for them to be gone.
    pub async fn close(&self) {
        let sessions: Vec<_> = {
            let s = self.inner.sessions.lock().unwrap();
            s.values().map(|l| l.session.clone()).collect()
        };
        for s in sessions {
            s.cancel.cancel();
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// The tasks of one session besides its supervisor.
struct Tasks {
    reader: Reader,
    recorder: Option<tokio::task::JoinHandle<()>>,
}
