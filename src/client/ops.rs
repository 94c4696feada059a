//! The operations of the client, each on its own stream.

use super::{Client, ClientError, Result, StreamHandle, StreamSender};
use crate::core::checksum::{Md5Stream, Md5Thread};
use crate::core::exec::ExecRequest;
use crate::core::files::Entry;
use crate::tcp::codec::{Frame, Kind};
use crate::tcp::messages::{
    ExecEnd, FEATURE_MD5_TRAILER, GetEnd, GetHeader, ListBatch, PutEnd, PutTrailer, Request,
};
use bytes::{Bytes, BytesMut};
use std::io::{Read, Write};
use std::ops::ControlFlow;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Progress of a transfer, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// The transfer starts: total size and the offset it starts from.
    Start {
        /// The whole file's size.
        size: u64,
        /// Bytes already in place.
        offset: u64,
    },
    /// More bytes moved.
    Advance(u64),
}

/// A finished, verified download.
#[derive(Debug, Clone)]
pub struct GetOutcome {
    /// The header the server sent.
    pub header: GetHeader,
    /// The trailer the server sent.
    pub end: GetEnd,
}

fn unexpected(f: &Frame) -> ClientError {
    ClientError::Protocol(format!(
        "unexpected {:?} frame on stream {}",
        f.kind, f.stream
    ))
}

fn parse<T: serde::de::DeserializeOwned>(f: &Frame) -> Result<T> {
    f.parse()
        .map_err(|e| ClientError::Protocol(format!("bad {:?} payload: {e}", f.kind)))
}

impl Client {
    /// Checks that the server answers.
    pub async fn ping(&self) -> Result<()> {
        let mut s = self.open(&Request::Ping {}).await?;
        let f = s.recv().await?;
        if f.kind == Kind::End {
            Ok(())
        } else {
            Err(unexpected(&f))
        }
    }

    /// Describes one path.
    pub async fn stat(&self, path: &str) -> Result<Entry> {
        let mut s = self.open(&Request::Stat { path: path.into() }).await?;
        let f = s.recv().await?;
        if f.kind == Kind::End {
            parse(&f)
        } else {
            Err(unexpected(&f))
        }
    }

    /// Lists a directory.
    pub async fn list(&self, path: &str) -> Result<Vec<Entry>> {
        let mut s = self.open(&Request::List { path: path.into() }).await?;
        let mut out = Vec::new();
        loop {
            let f = s.recv().await?;
            match f.kind {
                Kind::Header => out.extend(parse::<ListBatch>(&f)?.entries),
                Kind::End => return Ok(out),
                _ => return Err(unexpected(&f)),
            }
        }
    }

    /// Runs a command; `on_output` sees each piece of stdout (`Kind::Stdout`) and stderr as it arrives,
    /// and may answer `Break` to cancel the command (the result is then [`ClientError::Stopped`]).
    /// With `stdin`, its bytes are streamed to the command, then EOF.
    pub async fn exec<R>(
        &self,
        mut req: ExecRequest,
        stdin: Option<R>,
        on_output: impl FnMut(Kind, Bytes) -> ControlFlow<()>,
    ) -> Result<ExecEnd>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        req.stdin = stdin.is_some();
        let s = self.open(&Request::Exec(req)).await?;
        Client::exec_on(s, stdin, on_output).await
    }

    /// Drives a command's stream, opened with `stdin` set as `stdin` is given: feeds stdin,
    /// hands each piece of output to `on_output`, returns the end.
    pub async fn exec_on<R>(
        mut s: StreamHandle,
        stdin: Option<R>,
        mut on_output: impl FnMut(Kind, Bytes) -> ControlFlow<()>,
    ) -> Result<ExecEnd>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let feeder = stdin.map(|r| feed_stdin((*s).clone(), r));
        let mut feeder = std::pin::pin!(async move {
            match feeder {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        });
        let mut feeding = true;
        loop {
            let f = tokio::select! {
                f = s.recv() => f?,
                r = &mut feeder, if feeding => { feeding = false; r?; continue; }
            };
            match f.kind {
                Kind::Stdout | Kind::Stderr => {
                    if on_output(f.kind, f.payload).is_break() {
                        let _ = s.cancel().await;
                        return Err(ClientError::Stopped);
                    }
                }
                Kind::End => return parse(&f),
                _ => return Err(unexpected(&f)),
            }
        }
    }

    /// Runs a command and collects its stdout and stderr.
    pub async fn exec_collect(&self, req: ExecRequest) -> Result<(Vec<u8>, Vec<u8>, ExecEnd)> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let end = self
            .exec(req, None::<tokio::io::Empty>, |k, b| {
                if k == Kind::Stdout {
                    out.extend_from_slice(&b)
                } else {
                    err.extend_from_slice(&b)
                }
                ControlFlow::Continue(())
            })
            .await?;
        Ok((out, err, end))
    }

    /// Downloads `path` from `offset` into `sink` (on a thread of its own), checking the MD5.
    /// `prefix` is the digest of the `offset` bytes already held. Returns the sink.
    pub async fn get<W: Write + Send + 'static>(
        &self,
        path: &str,
        offset: u64,
        prefix: Md5Stream,
        sink: W,
        progress: impl FnMut(Progress),
    ) -> Result<(W, GetOutcome)> {
        self.get_with(path, offset, prefix, |_| Ok(sink), progress)
            .await
    }

    /// Like [`Client::get`], but the sink is opened only once the server has accepted the
    /// request and sent its header, so a refused download touches nothing locally.
    pub async fn get_with<W: Write + Send + 'static>(
        &self,
        path: &str,
        offset: u64,
        prefix: Md5Stream,
        open: impl FnOnce(&GetHeader) -> std::io::Result<W>,
        mut progress: impl FnMut(Progress),
    ) -> Result<(W, GetOutcome)> {
        let mut s = self
            .open(&Request::Get {
                path: path.into(),
                offset,
            })
            .await?;
        let f = s.recv().await?;
        if f.kind != Kind::Header {
            return Err(unexpected(&f));
        }
        let header: GetHeader = parse(&f)?;
        let sink = match open(&header) {
            Ok(w) => w,
            Err(e) => {
                let _ = s.cancel().await;
                return Err(ClientError::Local(format!("opening the local file: {e}")));
            }
        };
        progress(Progress::Start {
            size: header.size,
            offset: header.offset,
        });
        let (tx, mut rx) = mpsc::channel::<Bytes>(8);
        // Written on this thread while another hashes the same chunks: the download costs
        // the longer of the two, not their sum.
        let writer =
            tokio::task::spawn_blocking(move || -> std::io::Result<(W, Option<Md5Stream>)> {
                let (mut sink, mut md5) = (sink, Md5Thread::start(prefix));
                while let Some(b) = rx.blocking_recv() {
                    md5.update(b.clone());
                    sink.write_all(&b)?;
                }
                sink.flush()?;
                Ok((sink, md5.finish()))
            });
        // `None`: the writer stopped early (its own error says why).
        let received: Result<Option<GetEnd>> = async {
            loop {
                let f = s.recv().await?;
                match f.kind {
                    Kind::Data => {
                        progress(Progress::Advance(f.payload.len() as u64));
                        if tx.send(f.payload).await.is_err() {
                            return Ok(None);
                        }
                    }
                    Kind::End => return Ok(Some(parse(&f)?)),
                    _ => return Err(unexpected(&f)),
                }
            }
        }
        .await;
        // The writer is done with the sink before anything is reported, even an error: the
        // caller may then look at, keep or remove what was written.
        drop(tx);
        let written = writer.await;
        let end = received?;
        let (sink, md5) = written
            .map_err(|e| ClientError::Local(e.to_string()))?
            .map_err(|e| ClientError::Local(format!("writing the local file: {e}")))?;
        let end = end.ok_or_else(|| ClientError::Local("writing the local file failed".into()))?;
        let md5 = md5.ok_or_else(|| ClientError::Local("hashing the download failed".into()))?;
        let actual = md5.hex();
        if end.changed {
            return Err(ClientError::Protocol(format!(
                "{path} changed on the server during the transfer; retry"
            )));
        }
        if !actual.eq_ignore_ascii_case(&header.md5) {
            return Err(ClientError::Mismatch {
                expected: header.md5.clone(),
                actual,
            });
        }
        Ok((sink, GetOutcome { header, end }))
    }

    /// Uploads `size` bytes read from `source` (on a thread of its own) to `path`. With `md5`
    /// the server checks the bytes against it; without, the bytes are hashed as they are read
    /// and the MD5 follows them (a trailer), so the server checks them all the same, in one
    /// pass over the file.
    pub async fn put<R: Read + Send + 'static>(
        &self,
        path: &str,
        source: R,
        size: u64,
        md5: Option<String>,
        mut progress: impl FnMut(Progress),
    ) -> Result<PutEnd> {
        let trailer = md5.is_none();
        if trailer && !self.supports(FEATURE_MD5_TRAILER) {
            return Err(ClientError::Local(format!(
                "{} takes no trailing MD5 (an older ferry): give the file's MD5 up front",
                self.welcome.server
            )));
        }
        // The MD5 the server must have stored: the one given, or the one hashed while sending.
        let mut sent_md5 = md5.clone();
        let mut s = self
            .open(&Request::Put {
                path: path.into(),
                size,
                md5,
                md5_trailer: trailer,
            })
            .await?;
        progress(Progress::Start { size, offset: 0 });
        let chunk = s.chunk();
        let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let mut reader = tokio::task::spawn_blocking(move || {
            let mut source = source.take(size);
            let mut md5 = trailer.then(Md5Stream::new);
            loop {
                let mut buf = BytesMut::zeroed(chunk);
                let r = match source.read(&mut buf) {
                    Ok(0) => return md5.map(Md5Stream::hex),
                    Ok(n) => {
                        buf.truncate(n);
                        if let Some(h) = &mut md5 {
                            h.update(&buf);
                        }
                        Ok(buf.freeze())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = r.is_err();
                if tx.blocking_send(r).is_err() || failed {
                    return None;
                }
            }
        });
        let mut sent = 0u64;
        let mut trailed = !trailer;
        loop {
            tokio::select! {
                // The server may refuse early (bad path): its error ends the upload at once.
                f = s.recv() => {
                    let f = f?;
                    if f.kind != Kind::End {
                        return Err(unexpected(&f));
                    }
                    let end: PutEnd = parse(&f)?;
                    return match sent_md5 {
                        Some(m) if !m.eq_ignore_ascii_case(&end.md5) => {
                            Err(ClientError::Mismatch { expected: m, actual: end.md5 })
                        }
                        _ => Ok(end),
                    };
                }
                piece = rx.recv(), if sent < size => match piece {
                    Some(Ok(b)) => {
                        let n = b.len() as u64;
                        if s.send_data(b).await.is_err() {
                            // The stream ended under us: its last frame says why.
                            let f = s.recv().await?;
                            return Err(unexpected(&f));
                        }
                        sent += n;
                        progress(Progress::Advance(n));
                    }
                    Some(Err(e)) => {
                        let _ = s.cancel().await;
                        return Err(ClientError::Local(format!("reading the local file: {e}")));
                    }
                    None => {
                        let _ = s.cancel().await;
                        return Err(ClientError::Local(format!("the local file ended after {sent} of {size} bytes")));
                    }
                },
                // Every byte is sent: the MD5 of what was read follows them.
                md5 = &mut reader, if sent == size && !trailed => {
                    trailed = true;
                    let Ok(Some(md5)) = md5 else {
                        let _ = s.cancel().await;
                        return Err(ClientError::Local("hashing the local file failed".into()));
                    };
                    let t = serde_json::to_vec(&PutTrailer { md5: md5.clone() }).expect("serializable");
                    sent_md5 = Some(md5);
                    if s.send_eof_with(t.into()).await.is_err() {
                        let f = s.recv().await?;
                        return Err(unexpected(&f));
                    }
                }
            }
        }
    }
}

async fn feed_stdin<R: AsyncRead + Unpin>(s: StreamSender, mut r: R) -> Result<()> {
    let chunk = s.chunk();
    let mut buf = BytesMut::with_capacity(chunk);
    loop {
        buf.reserve(chunk);
        let n = r
            .read_buf(&mut buf)
            .await
            .map_err(|e| ClientError::Local(e.to_string()))?;
        if n == 0 {
            break;
        }
        s.send_data(buf.split().freeze()).await?;
    }
    s.send_eof().await
}
