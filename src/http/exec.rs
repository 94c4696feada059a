//! `POST /api/v1/exec`: one JSON answer, or NDJSON lines as the output is produced.

use crate::core::Core;
use crate::core::audit::Actor;
use crate::core::exec::{BUFFERED_OUTPUT, ExecHandle, ExecOutcome, ExecOutput, ExecRequest};
use crate::http::ApiError;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An exec request as HTTP clients send it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpExecRequest {
    /// A shell command line (`sh -c`).
    pub cmd: Option<String>,
    /// A program and its arguments, run without a shell.
    pub argv: Option<Vec<String>>,
    /// Working directory under the root.
    pub cwd: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Timeout in milliseconds (at most the server's).
    pub timeout_ms: Option<u64>,
    /// Text fed to the command's stdin, which is then closed.
    pub stdin: Option<String>,
}

/// The error part of an exec answer (a timeout or a cancel).
#[derive(Debug, Serialize)]
struct ErrorPart {
    code: &'static str,
    message: String,
}

/// How a command ended, as the last NDJSON line and inside the JSON answer.
#[derive(Debug, Serialize)]
struct Exit {
    exit_code: Option<i32>,
    signal: Option<i32>,
    duration_ms: u64,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorPart>,
}

impl From<ExecOutcome> for Exit {
    fn from(o: ExecOutcome) -> Self {
        Exit {
            exit_code: o.exit_code,
            signal: o.signal,
            duration_ms: o.duration_ms,
            truncated: o.truncated,
            error: o.error.map(|e| ErrorPart {
                code: e.code.as_str(),
                message: e.message,
            }),
        }
    }
}

/// The whole answer when output is not streamed.
#[derive(Debug, Serialize)]
struct Collected {
    stdout: String,
    stderr: String,
    #[serde(flatten)]
    exit: Exit,
}

async fn start(
    core: &Core,
    actor: &Actor,
    req: HttpExecRequest,
    streamed: bool,
) -> Result<ExecHandle, ApiError> {
    let HttpExecRequest {
        cmd,
        argv,
        cwd,
        env,
        timeout_ms,
        stdin,
    } = req;
    let mut handle = core
        .exec
        .start(
            actor,
            ExecRequest {
                cmd,
                argv,
                cwd,
                env,
                timeout_ms,
                stdin: stdin.is_some(),
                // A JSON answer holds the whole output: past the cap the command is killed and
                // the answer says `truncated`. NDJSON streams have the whole `--max-output`.
                max_output: (!streamed).then_some(BUFFERED_OUTPUT),
            },
        )
        .await?;
    if let (Some(text), Some(tx)) = (stdin, handle.stdin.take()) {
        // Fed from a task so a command that does not read its stdin cannot stall its output.
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from(text)).await;
        });
    }
    Ok(handle)
}

/// Runs a command; answers JSON, or NDJSON lines with `Accept: application/x-ndjson`.
/// A client that goes away kills the command's process group (the handle is dropped).
pub async fn exec(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Any Content-Type is read as JSON: `curl -d` sends a form type. Only bearer tokens
    // authenticate today, so a cross-site form cannot reach this.
    let req: HttpExecRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            crate::core::error::Code::BadRequest,
            format!("the body is not an exec request: {e}"),
        )
    })?;
    let streamed = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    let handle = start(&core, &actor, req, streamed).await?;
    if streamed {
        let lines = futures_util::stream::unfold(Lines::new(handle), |mut l| async move {
            let line = l.next().await?;
            Some((Ok::<_, std::convert::Infallible>(line), l))
        });
        let mut resp = Response::new(Body::from_stream(lines));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        return Ok(resp);
    }
    let (stdout, stderr, outcome) = handle.collect().await;
    let exit = Exit::from(outcome);
    Ok(Json(Collected {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        exit,
    })
    .into_response())
}

/// NDJSON lines of a running command: `{"stdout": ...}`, `{"stderr": ...}`, then the exit line.
struct Lines {
    handle: Option<ExecHandle>,
    carry: [Vec<u8>; 2],
}

impl Lines {
    fn new(handle: ExecHandle) -> Self {
        Lines {
            handle: Some(handle),
            carry: [Vec::new(), Vec::new()],
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            let handle = self.handle.as_mut()?;
            match handle.output.recv().await {
                Some(ExecOutput::Stdout(b)) => {
                    if let Some(line) = self.text_line(0, &b) {
                        return Some(line);
                    }
                }
                Some(ExecOutput::Stderr(b)) => {
                    if let Some(line) = self.text_line(1, &b) {
                        return Some(line);
                    }
                }
                None => {
                    // A character cut off by the end of the output still shows, as U+FFFD.
                    for which in 0..2 {
                        if !self.carry[which].is_empty() {
                            let rest = std::mem::take(&mut self.carry[which]);
                            let key = if which == 0 { "stdout" } else { "stderr" };
                            let text = String::from_utf8_lossy(&rest).into_owned();
                            return Some(json_line(&serde_json::json!({ key: text })));
                        }
                    }
                    let exit = Exit::from(self.handle.take()?.outcome().await);
                    return Some(json_line(&exit));
                }
            }
        }
    }

    /// A line with the complete UTF-8 text so far; a character split across chunks waits for
    /// its end, and invalid bytes become U+FFFD.
    fn text_line(&mut self, which: usize, bytes: &[u8]) -> Option<Bytes> {
        let buf = &mut self.carry[which];
        buf.extend_from_slice(bytes);
        let keep = match std::str::from_utf8(buf) {
            Ok(_) => 0,
            Err(e) if e.error_len().is_none() => buf.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let tail = buf.split_off(buf.len() - keep);
        let text = String::from_utf8_lossy(buf).into_owned();
        *buf = tail;
        if text.is_empty() {
            return None;
        }
        let key = if which == 0 { "stdout" } else { "stderr" };
        Some(json_line(&serde_json::json!({ key: text })))
    }
}

fn json_line(v: &impl Serialize) -> Bytes {
    let mut line = serde_json::to_vec(v).expect("plain values serialise");
    line.push(b'\n');
    Bytes::from(line)
}
