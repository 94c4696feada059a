//! The operations of a TCP stream: each decodes its request, calls the core and encodes frames.

use super::codec::{Frame, Kind};
use super::conn::Shared;
use super::messages::{ErrorBody, ListBatch, ListEnd, PutTrailer, Request};
use crate::core::error::{Code, Error};
use crate::core::exec::{ExecOutput, ExecRequest};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Listing entries per `Header` frame.
const LIST_BATCH: usize = 64;

/// One stream's view of its connection.
pub(super) struct StreamCtx {
    pub id: u32,
    pub shared: Arc<Shared>,
    /// Data and EOF frames from the client (for `put` and `exec` with stdin).
    pub inbound: mpsc::UnboundedReceiver<Frame>,
    /// Bytes the client may still send before a grant.
    pub credit: Arc<AtomicU64>,
    /// Bytes the server may still send before the client grants more.
    pub window: Arc<Semaphore>,
    pub cancel: CancellationToken,
}

/// The stream ended before it could finish (cancel, or the client went away).
struct Gone;

fn cancelled() -> Error {
    Error::new(Code::Cancelled, "cancelled by the client")
}

/// An upload whose connection received nothing for `idle`: dropped.
fn stalled(idle: std::time::Duration) -> Error {
    Error::new(
        Code::Timeout,
        format!(
            "no frame for {} s: the upload is dropped",
            idle.as_secs_f64()
        ),
    )
}

/// How many consumed upload bytes the server gathers before one grant: half the window, but
/// never so many that a client waiting for room for a whole frame (up to `max_frame` - 5
/// bytes) could wait forever on bytes the server holds back.
pub(super) fn grant_step(window: usize, max_frame: usize) -> usize {
    (window / 2)
        .min(window.saturating_sub(max_frame.saturating_sub(5)))
        .max(1)
}

impl StreamCtx {
    async fn send(&self, frame: Frame) -> Result<(), Gone> {
        tokio::select! {
            r = self.shared.out.send(frame) => r.map_err(|_| Gone),
            _ = self.cancel.cancelled() => Err(Gone),
        }
    }

    async fn json(&self, kind: Kind, v: &impl serde::Serialize) -> Result<(), Gone> {
        self.send(Frame::json(kind, self.id, v)).await
    }

    /// Sends data in chunks that fit a frame, each after the client's window allows it.
    async fn data(&self, kind: Kind, mut bytes: Bytes) -> Result<(), Gone> {
        while !bytes.is_empty() {
            let piece = bytes.split_to(bytes.len().min(self.shared.chunk));
            let permit = tokio::select! {
                p = self.window.acquire_many(piece.len() as u32) => p.map_err(|_| Gone)?,
                _ = self.cancel.cancelled() => return Err(Gone),
            };
            permit.forget();
            self.send(Frame::new(kind, self.id, piece)).await?;
        }
        Ok(())
    }

    /// Gives the client back `n` bytes of window once its data has been consumed.
    async fn grant(&self, n: usize) {
        if n > 0 {
            self.credit.fetch_add(n as u64, Ordering::AcqRel);
            let _ = self.send(Frame::window(self.id, n as u32)).await;
        }
    }

    /// Whether an ending stream was cancelled by its client (rather than losing its connection).
    fn by_client(&self) -> bool {
        !self.shared.closed.is_cancelled()
    }

    async fn fail(&self, e: &Error) {
        // An error must reach the client even after a cancel, so it bypasses `send`.
        let _ = self
            .shared
            .out
            .send(Frame::json(Kind::Error, self.id, &ErrorBody::from(e)))
            .await;
    }
}

/// Runs one request to its end.
pub(super) async fn run(mut s: StreamCtx, req: Request) {
    let registry = &s.shared.core.registry;
    let sid = s.shared.actor.session_id.clone();
    registry.set_current(&sid, Some(describe(&req)));
    let result = match req {
        Request::Exec(r) => exec(&mut s, r).await,
        Request::Get { path, offset } => get(&s, &path, offset).await,
        Request::Put {
            path,
            size,
            md5,
            md5_trailer,
        } => put(&mut s, &path, size, md5, md5_trailer).await,
        Request::List { path } => list(&s, &path).await,
        Request::Stat { path } => match s.shared.core.files.stat(&s.shared.actor, &path).await {
            Ok(entry) => s.json(Kind::End, &entry).await.map_err(|_| cancelled()),
            Err(e) => Err(e),
        },
        Request::Ping {} => s
            .json(Kind::End, &serde_json::json!({}))
            .await
            .map_err(|_| cancelled()),
    };
    // Once the connection itself is closing, its last word was already sent on stream 0.
    if let Err(e) = result
        && s.by_client()
    {
        s.fail(&e).await;
    }
    s.shared.core.registry.set_current(&sid, None);
}

fn describe(req: &Request) -> String {
    match req {
        Request::Exec(r) => format!("exec {}", r.display()),
        Request::Get { path, .. } => format!("get {path}"),
        Request::Put { path, .. } => format!("put {path}"),
        Request::List { path } => format!("list {path}"),
        Request::Stat { path } => format!("stat {path}"),
        Request::Ping {} => "ping".into(),
    }
}

async fn exec(s: &mut StreamCtx, req: ExecRequest) -> Result<(), Error> {
    let core = s.shared.core.clone();
    let mut h = core.exec.start(&s.shared.actor, req).await?;
    // Stdin flows on its own task so a command that does not read it never blocks its output.
    let stdin_task = h.stdin.take().map(|tx| {
        let mut inbound = std::mem::replace(&mut s.inbound, mpsc::unbounded_channel().1);
        let (credit, out, id) = (s.credit.clone(), s.shared.out.clone(), s.id);
        tokio::spawn(async move {
            while let Some(f) = inbound.recv().await {
                if f.kind == Kind::Eof {
                    break;
                }
                let n = f.payload.len();
                if tx.send(f.payload).await.is_err() {
                    break;
                }
                credit.fetch_add(n as u64, Ordering::AcqRel);
                let _ = out.send(Frame::window(id, n as u32)).await;
            }
        })
    });
    let mut sending = true;
    loop {
        tokio::select! {
            piece = h.output.recv() => match piece {
                None => break,
                Some(_) if !sending => {}
                Some(ExecOutput::Stdout(b)) => sending = s.data(Kind::Stdout, b).await.is_ok(),
                Some(ExecOutput::Stderr(b)) => sending = s.data(Kind::Stderr, b).await.is_ok(),
            },
            _ = s.cancel.cancelled(), if sending => sending = false,
        }
        if !sending {
            h.cancel();
        }
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    let outcome = h.outcome().await;
    match &outcome.error {
        Some(e) => Err(e.clone()),
        None => s.json(Kind::End, &outcome).await.map_err(|_| cancelled()),
    }
}

async fn get(s: &StreamCtx, path: &str, offset: u64) -> Result<(), Error> {
    let core = &s.shared.core;
    // A download may wait for a transfer slot: a cancel or a lost connection ends the wait.
    // Dropping `get` at any await leaves nothing: the file is only open, and the transfer is
    // registered after the last await.
    let mut g = tokio::select! {
        g = core.files.get(&s.shared.actor, path, offset, s.shared.chunk) => g?,
        _ = s.cancel.cancelled() => return Err(cancelled()),
    };
    if s.json(Kind::Header, &g.header).await.is_err() {
        g.abort(s.by_client()).await;
        return Err(cancelled());
    }
    loop {
        match g.next_chunk().await {
            Ok(Some(b)) => {
                if s.data(Kind::Data, b).await.is_err() {
                    g.abort(s.by_client()).await;
                    return Err(cancelled());
                }
            }
            Ok(None) => break,
            Err(e) => {
                g.abort(false).await;
                return Err(e);
            }
        }
    }
    let end = g.finish().await;
    s.json(Kind::End, &end).await.map_err(|_| cancelled())
}

async fn put(
    s: &mut StreamCtx,
    path: &str,
    size: u64,
    md5: Option<String>,
    trailer: bool,
) -> Result<(), Error> {
    if trailer && md5.is_some() {
        return Err(Error::bad_request("give md5 or md5_trailer, not both"));
    }
    let core = s.shared.core.clone();
    // Not raced with a cancel: dropped while it creates the temp file, `put` would leave that
    // file behind (its sink removes it).
    let mut sink = core
        .files
        .put(&s.shared.actor, path, Some(size), md5)
        .await?;
    let mut eof = None;
    // Bytes consumed but not yet granted back (see `Shared::grant_step`).
    let mut owed = 0;
    while eof.is_none() && (trailer || sink.remaining() > 0) {
        let frame = tokio::select! {
            biased;
            _ = s.cancel.cancelled() => {
                sink.abort(s.by_client()).await;
                return Err(cancelled());
            }
            f = s.inbound.recv() => f,
            // A client gone silent would hold the temp file and a transfer slot forever. Any
            // frame counts as life: the window this upload waits for may be queued behind a
            // slow download on the same connection.
            _ = s.shared.silent() => {
                sink.abort(false).await;
                return Err(stalled(s.shared.idle));
            }
        };
        match frame {
            Some(f) if f.kind == Kind::Data => {
                let n = f.payload.len();
                if let Err(e) = sink.write(f.payload).await {
                    sink.abort(false).await;
                    return Err(e);
                }
                owed += n;
                if owed >= s.shared.grant_step {
                    s.grant(owed).await;
                    owed = 0;
                }
            }
            Some(f) => eof = Some(f.payload),
            // The connection's reader is gone: `finish` reports a shortfall, if any.
            None => break,
        }
    }
    // A cancel that came with the last frames: nothing is stored.
    if s.cancel.is_cancelled() {
        sink.abort(s.by_client()).await;
        return Err(cancelled());
    }
    let done = match eof {
        // An EOF before the announced size: `finish` reports the shortfall.
        Some(payload) if trailer && sink.remaining() == 0 => {
            match serde_json::from_slice::<PutTrailer>(&payload) {
                Ok(t) => sink.finish_with_md5(t.md5).await?,
                Err(e) => {
                    sink.abort(false).await;
                    return Err(Error::bad_request(format!(
                        "the put's Eof must carry {{\"md5\": M}}: {e}"
                    )));
                }
            }
        }
        // All bytes in, but no trailer: nothing is verified, so nothing is stored.
        _ if trailer && sink.remaining() == 0 => {
            sink.abort(false).await;
            return Err(Error::bad_request("the put ended without its trailing md5"));
        }
        _ => sink.finish().await?,
    };
    // The file is stored: its End goes out even if a Cancel came meanwhile, so that
    // `cancelled` always means nothing was stored.
    let end = Frame::json(Kind::End, s.id, &done);
    s.shared.out.send(end).await.map_err(|_| cancelled())
}

async fn list(s: &StreamCtx, path: &str) -> Result<(), Error> {
    let entries = s.shared.core.files.list(&s.shared.actor, path).await?;
    for batch in entries.chunks(LIST_BATCH) {
        let batch = ListBatch {
            entries: batch.to_vec(),
        };
        s.json(Kind::Header, &batch)
            .await
            .map_err(|_| cancelled())?;
    }
    let end = ListEnd {
        count: entries.len() as u64,
    };
    s.json(Kind::End, &end).await.map_err(|_| cancelled())
}

#[cfg(test)]
mod tests {
    use super::grant_step;

    #[test]
    fn a_grant_step_always_leaves_room_for_a_whole_frame() {
        // Defaults: 4 MiB window, 1 MiB frames: half the window.
        assert_eq!(grant_step(4 << 20, 1 << 20), 2 << 20);
        // 8 MiB frames in a 4 MiB window: every byte is granted back at once.
        assert_eq!(grant_step(4 << 20, 8 << 20), 1);
        for (window, max_frame) in [(4096, 4096), (100_000, 65_536), (3 << 20, 2 << 20)] {
            let step = grant_step(window, max_frame);
            // A client holding back `step - 1` ungranted bytes still has room for a frame.
            assert!(
                window - (step - 1) >= (max_frame - 5).min(window),
                "{window} {max_frame}"
            );
        }
    }
}
