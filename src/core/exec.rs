//! The command executor: process groups, timeouts, output caps, streamed output.

use crate::core::audit::{Actor, Audit, CommandEnd};
use crate::core::auth::Action;
use crate::core::error::{Code, Error, Result};
use crate::core::files::Files;
use crate::core::output::{OutputCap, drain, pump};
use crate::core::queue::{QUEUE_WAIT, wait_for_slot};
use crate::core::registry::new_id;
use crate::core::sandbox::{self, Confinement, Sandbox};
use crate::core::simple_command::start_plain;
use bytes::Bytes;
use rustix::process::{Pid, Signal, kill_process_group};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Output cap of a command whose transport holds all its output before answering.
pub const BUFFERED_OUTPUT: u64 = 16 << 20;

/// A command to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// A shell line, run by `sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// A program and its arguments, run directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Working directory under the root (default: the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Timeout in milliseconds (capped by the server's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Whether the client streams stdin (else stdin is closed).
    #[serde(default)]
    pub stdin: bool,
    /// A lower output cap for this command, set by a transport that buffers the output.
    #[serde(skip)]
    pub max_output: Option<u64>,
}

impl ExecRequest {
    /// The command as one line, for logs and the audit.
    pub fn display(&self) -> String {
        match (&self.cmd, &self.argv) {
            (Some(c), _) => c.clone(),
            (None, Some(a)) => serde_json::to_string(a).unwrap_or_default(),
            (None, None) => String::new(),
        }
    }
}

/// A piece of output.
#[derive(Debug, Clone)]
pub enum ExecOutput {
    /// Bytes the command wrote to stdout.
    Stdout(Bytes),
    /// Bytes the command wrote to stderr.
    Stderr(Bytes),
}

/// How a command ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Whether output was cut at the cap (the command is then killed).
    pub truncated: bool,
    /// Set when the command ran past its timeout or was cancelled.
    #[serde(skip)]
    pub error: Option<Error>,
}

/// A running command: read `output`, feed `stdin`, then await `outcome`. Dropping it kills the group.
pub struct ExecHandle {
    /// The command id (as in the audit log).
    pub id: String,
    /// Output as it is produced, in order within each stream.
    pub output: mpsc::Receiver<ExecOutput>,
    /// Stdin, when requested; dropping it closes the command's stdin.
    pub stdin: Option<mpsc::Sender<Bytes>>,
    done: oneshot::Receiver<ExecOutcome>,
    cancel: CancellationToken,
    _guard: DropGuard,
}

impl ExecHandle {
    /// Kills the command's process group now.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Reads all the output, then waits for the end: stdout, stderr and how it ended. Set a
    /// `max_output` on the request (such as [`BUFFERED_OUTPUT`]) to bound what this holds.
    pub async fn collect(mut self) -> (Vec<u8>, Vec<u8>, ExecOutcome) {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(out) = self.output.recv().await {
            match out {
                ExecOutput::Stdout(b) => stdout.extend_from_slice(&b),
                ExecOutput::Stderr(b) => stderr.extend_from_slice(&b),
            }
        }
        (stdout, stderr, self.outcome().await)
    }

    /// Waits for the end; call after `output` is drained (it closes first).
    pub async fn outcome(self) -> ExecOutcome {
        let cancel = self.cancel.clone();
        let r = self.done.await;
        drop(self._guard);
        r.unwrap_or(ExecOutcome {
            exit_code: None,
            signal: None,
            duration_ms: 0,
            truncated: false,
            error: Some(if cancel.is_cancelled() {
                Error::new(Code::Cancelled, "cancelled")
            } else {
                Error::internal("command supervisor ended early")
            }),
        })
    }
}

/// Limits the executor enforces.
#[derive(Debug, Clone)]
pub struct ExecLimits {
    /// Longest and default run time.
    pub timeout: Duration,
    /// Most output bytes (stdout + stderr) before the command is cut.
    pub max_output: u64,
    /// Most commands running at once.
    pub max_concurrent: usize,
    /// How commands are confined (environment, resource limits, user).
    pub sandbox: Sandbox,
}

/// Runs commands for every transport.
#[derive(Clone)]
pub struct Executor {
    files: Files,
    audit: Audit,
    limits: Arc<ExecLimits>,
    sandbox: Arc<Confinement>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Executor {
    /// An executor under `limits`, confined by `sandbox` (prepared from `limits.sandbox`);
    /// `shutdown` cancels every running command.
    pub fn new(
        files: Files,
        audit: Audit,
        limits: ExecLimits,
        sandbox: Confinement,
        shutdown: CancellationToken,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Executor {
            files,
            audit,
            limits: Arc::new(limits),
            sandbox: Arc::new(sandbox),
            slots,
            shutdown,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &ExecLimits {
        &self.limits
    }

    /// Starts a command: audited before it runs, in its own process group, sandboxed.
    pub async fn start(&self, actor: &Actor, req: ExecRequest) -> Result<ExecHandle> {
        actor.require(Action::Exec)?;
        let (program, args) = match (&req.cmd, &req.argv) {
            (Some(_), Some(_)) => {
                return Err(Error::bad_request("give either cmd or argv, not both"));
            }
            (Some(c), None) if !c.trim().is_empty() => {
                ("sh".to_string(), vec!["-c".to_string(), c.clone()])
            }
            (None, Some(a)) if !a.is_empty() && !a[0].is_empty() => (a[0].clone(), a[1..].to_vec()),
            _ => return Err(Error::bad_request("an empty command")),
        };
        actor.principal.require_program(&program, req.env.len())?;
        for (k, v) in &req.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(Error::bad_request(format!(
                    "invalid environment variable {k:?}"
                )));
            }
        }
        let timeout = match req.timeout_ms {
            Some(0) => return Err(Error::bad_request("timeout_ms must be positive")),
            Some(ms) => Duration::from_millis(ms).min(self.limits.timeout),
            None => self.limits.timeout,
        };
        let cwd_raw = req.cwd.clone().unwrap_or_default();
        let cwd = self.files.resolve_dir(&cwd_raw).await?;
        let permit = wait_for_slot(&self.slots, QUEUE_WAIT, || {
            "too many commands are running; retry later".into()
        })
        .await?;

        let id = new_id().to_string();
        let line = req.display();
        self.audit
            .command_started(&id, actor, &line, &cwd_raw)
            .await?;

        let started = Instant::now();
        // A line that is one plain command runs without the shell when it can (else `None`).
        let direct = req
            .cmd
            .as_deref()
            .and_then(|line| start_plain(&self.sandbox, line, &req.env, &cwd, req.stdin));
        let spawned = direct.unwrap_or_else(|| {
            let plan = self
                .sandbox
                .plan(&program, &args, &req.env, &cwd, req.stdin)?;
            sandbox::spawn(&plan, &program)
        });
        let mut child = match spawned {
            Ok(c) => c,
            Err(err) => {
                self.end(&id, actor, &line, None, started, 0, false, Some(&err))
                    .await;
                return Err(err);
            }
        };
        let pgid = Pid::from_raw(child.id() as i32);
        let (out_tx, out_rx) = mpsc::channel(8);
        let cancel = self.shutdown.child_token();
        let stdin_tx = child.stdin.take().map(|mut pipe| {
            // One chunk in flight: the transport grants window back only as the command reads.
            let (tx, mut rx) = mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    if pipe.write_all(&b).await.is_err() {
                        break;
                    }
                }
            });
            tx
        });
        let cap = Arc::new(OutputCap::new(
            req.max_output
                .map_or(self.limits.max_output, |m| m.min(self.limits.max_output)),
        ));
        let readers = [
            child
                .stdout
                .take()
                .map(|p| tokio::spawn(pump(p, out_tx.clone(), cap.clone(), ExecOutput::Stdout))),
            child
                .stderr
                .take()
                .map(|p| tokio::spawn(pump(p, out_tx, cap.clone(), ExecOutput::Stderr))),
        ];
        let (done_tx, done_rx) = oneshot::channel();
        let this = self.clone();
        let (actor2, cancel2, id2) = (actor.clone(), cancel.clone(), id.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut error = None;
            // Ended but not reaped yet: its group's id cannot have been reused when it is killed.
            tokio::select! {
                _ = child.exited() => {}
                _ = &mut deadline => {
                    error = Some(Error::new(Code::Timeout, format!(
                        "command ran past its {} ms timeout; its process group was killed", timeout.as_millis())));
                }
                _ = cancel2.cancelled() => {
                    error = Some(Error::new(Code::Cancelled, "command cancelled; its process group was killed"));
                }
                _ = cap.hit.notified() => {}
            }
            // Whatever ended it, nothing of the group outlives the command.
            if let Some(pg) = pgid {
                let _ = kill_process_group(pg, Signal::KILL);
            }
            let status = child.wait().await.ok();
            drain(readers, &cap).await;
            use std::os::unix::process::ExitStatusExt;
            let outcome = ExecOutcome {
                exit_code: status.and_then(|s| s.code()),
                signal: status.and_then(|s| s.signal()),
                duration_ms: started.elapsed().as_millis() as u64,
                truncated: cap.truncated.load(Ordering::Relaxed),
                error,
            };
            let used = cap.used.load(Ordering::Relaxed);
            this.end(
                &id,
                &actor2,
                &line,
                Some(&outcome),
                started,
                used,
                outcome.truncated,
                outcome.error.as_ref(),
            )
            .await;
            let _ = done_tx.send(outcome);
        });
        Ok(ExecHandle {
            id: id2,
            output: out_rx,
            stdin: stdin_tx,
            done: done_rx,
            _guard: cancel.clone().drop_guard(),
            cancel,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn end(
        &self,
        id: &str,
        actor: &Actor,
        line: &str,
        outcome: Option<&ExecOutcome>,
        started: Instant,
        bytes_out: u64,
        truncated: bool,
        error: Option<&Error>,
    ) {
        let end = CommandEnd {
            id: id.to_string(),
            exit_code: outcome.and_then(|o| o.exit_code),
            signal: outcome.and_then(|o| o.signal),
            duration_ms: started.elapsed().as_millis() as u64,
            bytes_out,
            truncated,
            error: error.map(|e| e.code.as_str().to_string()),
        };
        tracing::info!(command = %id, session = %actor.session_id, transport = actor.transport, cmd = %line,
            exit = ?end.exit_code, signal = ?end.signal, ms = end.duration_ms, bytes_out, truncated,
            error = end.error.as_deref().unwrap_or("-"), "command");
        let result = match (error, end.exit_code) {
            (Some(e), _) if e.code == Code::Timeout => "timeout",
            (Some(e), _) if e.code == Code::Cancelled => "cancelled",
            (Some(_), _) => "error",
            (None, Some(0)) => "ok",
            (None, Some(_)) => "failed",
            (None, None) => "signalled",
        };
        self.files.registry.metrics().exec(
            actor.transport,
            result,
            started.elapsed().as_secs_f64(),
        );
        self.audit.command_ended(end).await;
    }
}
