//! The supervisor of one terminal session: its end, whatever causes it, and the cleanup.

use crate::core::audit::{Actor, CommandEnd};
use crate::core::error::{Code, Error};
use crate::core::registry::SessionGuard;
use crate::core::term::session::{Exit, Session, kill_session};
use crate::core::term::{DRAIN, Tasks, Terminals};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

impl Terminals {
    /// Waits for the shell's end (exit, grace or idle timeout, shutdown), kills what is left of
    /// its session, lets the client read the rest, and records the end.
    pub(super) async fn supervise(
        &self,
        session: Arc<Session>,
        mut child: tokio::process::Child,
        mut tasks: Tasks,
        actor: Actor,
        guard: SessionGuard,
        started: Instant,
    ) {
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        let (status, reason) = tokio::select! {
            s = child.wait() => (s.ok(), "shell exited"),
            _ = session.expired() => (None, "grace or idle timeout"),
            _ = session.cancel.cancelled() => (None, "server shutdown"),
        };
        // Whatever ended it, nothing of the shell's session outlives it.
        if let Some(sid) = pid {
            kill_session(sid);
        }
        let status = match status {
            Some(s) => Some(s),
            None => child.wait().await.ok(),
        };
        // The rest of the output still goes to the client (at its pace) unless the session is
        // being ended.
        let drain = async {
            if status.is_some() && reason == "shell exited" {
                tokio::select! {
                    _ = session.expired() => {}
                    _ = session.cancel.cancelled() => {}
                }
            }
            tokio::time::sleep(DRAIN).await;
        };
        let drained = tokio::select! {
            _ = &mut tasks.reader.done => true,
            _ = drain => false,
        };
        if !drained {
            tasks.reader.stop.cancel();
            let _ = (&mut tasks.reader.done).await;
        }
        session.close_input();
        use std::os::unix::process::ExitStatusExt;
        let exit = Exit {
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
        };
        let produced = {
            let mut st = session.state.lock().unwrap();
            st.exit = Some(exit);
            st.ring.end()
        };
        session.bump();
        if let Some(r) = tasks.recorder.take() {
            let _ = r.await;
        }
        let error = (reason != "shell exited")
            .then(|| Error::new(Code::Cancelled, format!("terminal ended: {reason}")));
        self.audit_end(&session.id, Some(exit), started, produced, error.as_ref())
            .await;
        let counters = &guard.counters;
        self.inner
            .audit
            .session_ended(
                &actor.session_id,
                counters.bytes_in.load(Ordering::Relaxed),
                counters.bytes_out.load(Ordering::Relaxed),
                reason,
            )
            .await;
        drop(guard);
        tracing::info!(session = %session.id, ?exit, reason, "terminal end");
        // A client may still be reading the last output: keep the session until it has seen
        // the exit, or until nobody came for it.
        tokio::select! {
            _ = session.exit_seen() => {}
            _ = session.expired() => {}
            _ = session.cancel.cancelled() => {}
        }
        self.inner.sessions.lock().unwrap().remove(&session.id);
    }

    /// Completes the shell's audit row.
    pub(super) async fn audit_end(
        &self,
        id: &str,
        exit: Option<Exit>,
        started: Instant,
        bytes_out: u64,
        error: Option<&Error>,
    ) {
        self.inner
            .audit
            .command_ended(CommandEnd {
                id: id.to_string(),
                exit_code: exit.and_then(|e| e.code),
                signal: exit.and_then(|e| e.signal),
                duration_ms: started.elapsed().as_millis() as u64,
                bytes_out,
                truncated: false,
                error: error.map(|e| e.code.as_str().to_string()),
            })
            .await;
    }
}

/// A session's PTY reader, on a thread of its own (from the blocking pool): a terminal's
/// output then keeps its pace whatever else the async workers have to do.
pub(super) struct Reader {
    pub(super) done: tokio::task::JoinHandle<()>,
    pub(super) stop: CancellationToken,
}

impl Reader {
    pub(super) fn start(
        tasks: &TaskTracker,
        reading: impl Future<Output = ()> + Send + 'static,
    ) -> Reader {
        let stop = CancellationToken::new();
        let runtime = tokio::runtime::Handle::current();
        let stopped = stop.clone();
        let done = tasks.spawn_blocking(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = reading => {}
                    () = stopped.cancelled() => {}
                }
            });
        });
        Reader { done, stop }
    }
}

impl Drop for Reader {
    /// A reader outlives nothing that owns it: were its supervisor dropped (a panic, or a
    /// runtime going away), its thread would otherwise wait on a paused session for ever.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
