//! `ferry exec` and `ferry shell`.

use super::{Conn, ExecArgs};
use crate::client::{Client, ClientError, ClientTls, StreamHandle};
use crate::core::error::Code;
use crate::core::exec::ExecRequest;
use crate::tcp::codec::Kind;
use crate::tcp::messages::{ExecEnd, Request};
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use tokio::io::AsyncBufReadExt;

/// The exit code of `ferry exec` when ferry itself fails (as ssh does).
pub const EXIT_FERRY_ERROR: i32 = 255;
/// The exit code when the command ran past its timeout (as `timeout(1)` does).
pub const EXIT_TIMEOUT: i32 = 124;

/// Connects with friendly errors; the token comes from the flag, FERRY_TOKEN, or a local
/// `ferry-data/token`. With none, the connection is anonymous (enough on a `--public-read`
/// server to download).
pub(super) async fn connect(conn: &Conn) -> anyhow::Result<Client> {
    let (token, tls) = credentials(conn)?;
    Client::connect_with(&conn.addr, &token, tls.as_ref())
        .await
        .map_err(|e| friendly(conn, &token, tls.is_some(), e))
}

/// As [`connect`], opening a stream with `first` in the same write as the hello (see
/// [`Client::connect_opening`]); the stream keeps the connection.
pub(super) async fn connect_opening(conn: &Conn, first: &Request) -> anyhow::Result<StreamHandle> {
    let (token, tls) = credentials(conn)?;
    Client::connect_opening(&conn.addr, &token, tls.as_ref(), first)
        .await
        .map(|(_, stream)| stream)
        .map_err(|e| friendly(conn, &token, tls.is_some(), e))
}

/// The token to send (empty for none) and the TLS set-up, from the flags and the environment.
fn credentials(conn: &Conn) -> anyhow::Result<(String, Option<ClientTls>)> {
    // The local server's token is only ever sent to a server on this machine.
    let token = conn.token.clone().or_else(|| {
        if !is_loopback(&conn.addr) {
            return None;
        }
        let dir = std::env::var_os("FERRY_DATA_DIR").unwrap_or_else(|| "ferry-data".into());
        let path = std::path::Path::new(&dir).join(crate::core::auth::TOKEN_FILE);
        std::fs::read_to_string(&path)
            .ok()
            .map(|t| t.trim().to_string())
    });
    let tls = match (&conn.ca, conn.tls) {
        (Some(ca), _) => Some(ClientTls::with_ca_file(ca)?),
        (None, true) => Some(ClientTls::system()?),
        (None, false) => None,
    };
    Ok((token.unwrap_or_default(), tls))
}

/// A failed connection, said in the user's terms: no server, no or a wrong token, or a TLS
/// server reached without `--tls`.
fn friendly(conn: &Conn, token: &str, tls: bool, e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Io(e) => anyhow::anyhow!(
            "cannot reach ferry at {}: {e} (is `ferry serve` running there?)",
            conn.addr
        ),
        e if e.code() == Some(Code::Unauthorized) && token.is_empty() => anyhow::anyhow!(
            "no token: pass --token or set FERRY_TOKEN (ferry serve prints it at first start)"
        ),
        e if e.code() == Some(Code::Unauthorized) => anyhow::anyhow!(
            "the server at {} refused the token (unauthorized); check --token or FERRY_TOKEN",
            conn.addr
        ),
        e @ ClientError::Protocol(_) if !tls => {
            anyhow::anyhow!("{e} (if the server at {} uses TLS, pass --tls)", conn.addr)
        }
        e => e.into(),
    }
}

/// Whether `addr` (`host:port`) names this machine.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The local exit code for a command's end: its code, or 128 + signal.
pub fn exit_code(end: &ExecEnd) -> i32 {
    match (end.exit_code, end.signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => EXIT_FERRY_ERROR,
    }
}

/// The exit code when local output was closed (as a process killed by SIGPIPE).
pub const EXIT_BROKEN_PIPE: i32 = 128 + 13;

/// Writes output at once, so it streams as the command produces it; once the local reader is
/// gone (`ferry exec -- yes | head -1`), answers `Break` so the command is stopped.
fn print_output(kind: Kind, bytes: &[u8]) -> ControlFlow<()> {
    // Straight to the descriptor: std's stdout is line-buffered, and would write each piece in
    // two (up to its last newline, then the rest at the flush).
    let (out, err) = (std::io::stdout(), std::io::stderr());
    let fd = if kind == Kind::Stdout {
        out.as_fd()
    } else {
        err.as_fd()
    };
    match write_all(fd, bytes) {
        Err(rustix::io::Errno::PIPE) => ControlFlow::Break(()),
        // Output that cannot be written (closed, full disk) is dropped, as std's stdout does.
        _ => ControlFlow::Continue(()),
    }
}

/// Writes one line to standard error, waiting when a non-blocking descriptor is full. A line
/// that cannot be written (stderr closed, or a pipe nobody reads) is dropped, where `eprintln!`
/// would panic and turn the exit code into 101.
pub fn say(args: std::fmt::Arguments<'_>) {
    let line = format!("{args}\n");
    let _ = write_all(std::io::stderr().as_fd(), line.as_bytes());
}

/// Standard output as a writer that waits when a non-blocking descriptor is full (see
/// [`write_all`]), where std's `Stdout` fails with `WouldBlock`.
pub(super) struct WaitingStdout;

impl Write for WaitingStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_all(std::io::stdout().as_fd(), buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes all of `bytes` to `fd`. A descriptor left non-blocking by whoever started ferry (a
/// shared terminal, a pipe from an event loop) is waited on when full, never given up on.
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> rustix::io::Result<()> {
    use rustix::event::{PollFd, PollFlags, poll};
    use rustix::io::Errno;
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                match poll(&mut [PollFd::from_borrowed_fd(fd, PollFlags::OUT)], None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn report(err: &ClientError) -> i32 {
    if matches!(err, ClientError::Stopped) {
        return EXIT_BROKEN_PIPE;
    }
    say!("ferry: {err}");
    match err.code() {
        Some(Code::Timeout) => EXIT_TIMEOUT,
        _ => EXIT_FERRY_ERROR,
    }
}

pub(super) async fn exec(a: ExecArgs) -> anyhow::Result<i32> {
    let mut env = std::collections::BTreeMap::new();
    for kv in &a.env {
        let Some((k, v)) = kv.split_once('=') else {
            say!("ferry: --env takes NAME=VALUE, got {kv:?}");
            return Ok(EXIT_FERRY_ERROR);
        };
        env.insert(k.to_string(), v.to_string());
    }
    let mut req = ExecRequest {
        cmd: (!a.argv).then(|| a.command.join(" ")),
        argv: a.argv.then(|| a.command.clone()),
        cwd: a.cwd,
        env,
        timeout_ms: a.timeout.map(|s| s.saturating_mul(1000)),
        stdin: false,
        max_output: None,
    };
    let stdin = (!a.no_stdin && !std::io::stdin().is_terminal()).then(tokio::io::stdin);
    req.stdin = stdin.is_some();
    // The command goes out with the hello: a new connection costs one round trip, not two.
    let stream = match connect_opening(&a.conn, &Request::Exec(req)).await {
        Ok(s) => s,
        Err(e) => {
            say!("ferry: {e}");
            return Ok(EXIT_FERRY_ERROR);
        }
    };
    match Client::exec_on(stream, stdin, |k, b| print_output(k, &b)).await {
        Ok(end) => {
            if end.truncated {
                say!("ferry: output was cut at the server's limit; the command was stopped");
            }
            Ok(exit_code(&end))
        }
        Err(e) => Ok(report(&e)),
    }
}

/// How often an idle `ferry shell` pings its server.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);

pub(super) async fn shell(conn: Conn) -> anyhow::Result<i32> {
    let client = match connect(&conn).await {
        Ok(c) => c,
        Err(e) => {
            say!("ferry: {e}");
            return Ok(EXIT_FERRY_ERROR);
        }
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        say!(
            "connected to {} (session {}); end with Ctrl-D or `exit`",
            conn.addr,
            client.welcome.session
        );
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut last = 0;
    loop {
        if interactive {
            print!(":> ");
            let _ = std::io::stdout().flush();
        }
        // While the user thinks, a ping now and then keeps the server from closing the
        // connection as idle (`--idle-timeout`).
        let line = loop {
            tokio::select! {
                line = lines.next_line() => break line?,
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if let Err(e) = client.ping().await {
                        return Ok(report(&e));
                    }
                }
            }
        };
        let Some(line) = line else {
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "exit" || line == "quit" {
            break;
        }
        let req = ExecRequest {
            cmd: Some(line.to_string()),
            ..ExecRequest::default()
        };
        match client
            .exec(req, None::<tokio::io::Empty>, |k, b| print_output(k, &b))
            .await
        {
            Ok(end) => {
                last = exit_code(&end);
                say!("[exit {last}]");
            }
            Err(e) => {
                last = report(&e);
                if matches!(e, ClientError::Io(_) | ClientError::Protocol(_)) {
                    return Ok(last);
                }
            }
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::write_all;
    use rustix::fs::{OFlags, fcntl_setfl};
    use std::io::Read;
    use std::os::fd::AsFd;

    /// A non-blocking output that fills up is waited on: every byte arrives, in order.
    #[test]
    fn a_full_non_blocking_output_is_waited_on() {
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        fcntl_setfl(&write_end, OFlags::NONBLOCK).unwrap();
        let capacity = rustix::pipe::fcntl_getpipe_size(&read_end).unwrap();
        let data: Vec<u8> = (0..16 * capacity).map(|i| (i % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            // Read nothing until the pipe is full, so the writer surely meets EAGAIN first.
            while rustix::io::ioctl_fionread(&read_end).unwrap() < capacity as u64 {
                std::thread::yield_now();
            }
            let mut got = Vec::new();
            std::fs::File::from(read_end).read_to_end(&mut got).unwrap();
            got
        });
        write_all(write_end.as_fd(), &data).unwrap();
        drop(write_end);
        assert!(reader.join().unwrap() == data, "bytes lost or reordered");
    }
}
