//! Uploads: hashed on the way in, fsynced, renamed into place only when size and MD5 match.

use crate::core::audit::Actor;
use crate::core::auth::Action;
use crate::core::checksum::is_md5_hex;
use crate::core::error::{Code, Error, Result};
use crate::core::files::{Files, blocking};
use crate::core::paths::RelPath;
use crate::core::registry::TransferState;
use crate::core::transfer::{QUEUE, TransferCtx};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

mod place;
mod write;
pub(crate) use place::{commit_file, create_temp};
use write::write_and_verify;

/// How the request side ends an upload, read by the disk thread once its queue is closed.
#[derive(Default)]
pub(super) struct Commit {
    /// Every byte is in (else the upload was abandoned).
    done: AtomicBool,
    /// An MD5 that came after the data (a trailer), checked as one given up front is.
    md5: OnceLock<String>,
}

impl Commit {
    /// The MD5 to check the bytes against, given up front or after the data, once all is in;
    /// `Err` when the upload was abandoned.
    pub(super) fn expected<'a>(&'a self, up_front: Option<&'a str>) -> Result<Option<&'a str>> {
        if !self.done.load(Ordering::SeqCst) {
            return Err(Error::new(Code::Cancelled, "upload abandoned"));
        }
        Ok(up_front.or(self.md5.get().map(String::as_str)))
    }
}

impl Files {
    /// Starts an upload to `raw` of exactly `size` bytes (any number if `None`), verified against
    /// `md5` if given.
    pub async fn put(
        &self,
        actor: &Actor,
        raw: &str,
        size: Option<u64>,
        md5: Option<String>,
    ) -> Result<PutSink> {
        actor.require(Action::Write)?;
        let rel = RelPath::parse(raw)?;
        if let Some(m) = &md5
            && !is_md5_hex(m)
        {
            return Err(Error::bad_request("md5 must be 32 hex digits"));
        }
        let slot = self.transfer_slot().await?;
        let this = self.clone();
        let rel2 = rel.clone();
        // The guard removes the temp file if this request goes away before the upload holds it.
        let (tmp, file) = blocking(move || create_temp(&this, &rel2)).await?.keep();
        let (tx, rx) = mpsc::channel(QUEUE);
        let files = self.clone();
        let (rel3, expected) = (rel.clone(), md5.clone());
        let commit = Arc::new(Commit::default());
        let commit2 = commit.clone();
        let worker = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            write_loop(&files, file, rx, &rel3, &tmp, size, expected, &commit2)
        });
        let handle =
            self.registry
                .start_transfer(actor, rel.as_str().into(), "put", size.unwrap_or(0));
        Ok(PutSink {
            tx: Some(tx),
            worker: Some(worker),
            received: 0,
            size,
            expected: md5.map(Into::into),
            ctx: TransferCtx {
                files: self.clone(),
                actor: actor.clone(),
                path: rel.as_str().into(),
                handle: Some(handle),
                size: size.unwrap_or(0),
            },
            commit,
            pending: Vec::new(),
            small: bytes::BytesMut::new(),
            pending_len: 0,
        })
    }
}

/// An upload in progress: `write` chunks, then `finish`; dropping it leaves nothing behind.
pub struct PutSink {
    tx: Option<mpsc::Sender<Vec<Bytes>>>,
    worker: Option<tokio::task::JoinHandle<Settled>>,
    received: u64,
    size: Option<u64>,
    expected: Option<Arc<str>>,
    ctx: TransferCtx,
    commit: Arc<Commit>,
    /// Chunks gathered into one hand-over of about [`GATHER`] bytes: large ones as they are,
    /// small ones copied together into one piece.
    pending: Vec<Bytes>,
    /// Small chunks copied together, the next piece of `pending`.
    small: bytes::BytesMut,
    /// Bytes in `pending` and `small`.
    pending_len: usize,
}

/// Chunks are handed to the disk thread in batches of this many bytes or more (HTTP bodies
/// arrive in pieces of 64 KiB or less): one wake-up of the disk thread per batch, not per piece.
const GATHER: usize = 256 * 1024;

/// A batch is handed over at this many pieces even if it is smaller (one `writev` takes at most
/// 1024).
const GATHER_PIECES: usize = 64;

/// Chunks smaller than this are copied together rather than kept: each may be a slice that
/// holds a whole read buffer of the transport (a client trickling single bytes).
const SMALL: usize = 16 * 1024;

/// How the disk thread settled an upload, with the MD5 of the received bytes when it got that far.
type Settled = (Result<PutDone>, Option<String>);

/// A verified upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutDone {
    /// The MD5 of the stored bytes.
    pub md5: String,
    /// Bytes stored.
    pub size: u64,
    /// Whether the name was new (else an old file was replaced).
    pub created: bool,
}

impl PutSink {
    /// Bytes still expected (`u64::MAX` when the size was not announced).
    pub fn remaining(&self) -> u64 {
        self.size.map_or(u64::MAX, |s| s - self.received)
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes a chunk for the disk thread, which gets them in batches; waits only while its
    /// small queue is full.
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if chunk.len() as u64 > self.remaining() {
            return Err(Error::bad_request(format!(
                "more data than the announced {} bytes",
                self.size.unwrap_or(0)
            )));
        }
        self.received += chunk.len() as u64;
        if let Some(h) = &self.ctx.handle {
            h.progress(chunk.len() as u64);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.pending_len += chunk.len();
        if chunk.len() < SMALL {
            self.small.extend_from_slice(&chunk);
        } else {
            self.seal_small();
            self.pending.push(chunk);
        }
        if self.pending_len < GATHER && self.pending.len() < GATHER_PIECES {
            return Ok(());
        }
        self.hand_over().await
    }

    /// Closes the piece of small chunks copied so far, keeping the order of the chunks.
    fn seal_small(&mut self) {
        if !self.small.is_empty() {
            self.pending.push(self.small.split().freeze());
        }
    }

    /// Sends the gathered chunks to the disk thread.
    async fn hand_over(&mut self) -> Result<()> {
        self.seal_small();
        let batch = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::internal("put already finished"))?;
        if tx.send(batch).await.is_ok() {
            Ok(())
        } else {
            Err(self.worker_error().await)
        }
    }

    async fn worker_error(&mut self) -> Error {
        self.tx = None;
        match self.worker.take() {
            Some(w) => match w.await {
                Ok((Err(e), _)) => e,
                Ok((Ok(_), _)) => Error::internal("put worker ended early"),
                Err(e) => Error::internal(e),
            },
            None => Error::internal("put worker gone"),
        }
    }

    /// Ends the upload once all bytes are in: verify, then rename into place or leave nothing.
    pub async fn finish(self) -> Result<PutDone> {
        self.finish_checked(None).await
    }

    /// Ends the upload with the MD5 its sender computed while sending (a trailer): checked as
    /// one given up front is, before the file is renamed into place. An upload that announced an
    /// MD5 up front cannot take a second one.
    pub async fn finish_with_md5(self, md5: String) -> Result<PutDone> {
        let bad = if !is_md5_hex(&md5) {
            Some("the trailing md5 must be 32 hex digits")
        } else if self.expected.is_some() {
            Some("an md5 was given up front: no trailing one")
        } else {
            None
        };
        match bad {
            Some(why) => {
                self.abort(false).await;
                Err(Error::bad_request(why))
            }
            None => self.finish_checked(Some(md5)).await,
        }
    }

    async fn finish_checked(mut self, trailer: Option<String>) -> Result<PutDone> {
        if let Some(m) = trailer {
            let _ = self.commit.md5.set(m.clone());
            self.expected = Some(m.into());
        }
        if self.size.is_some() && self.remaining() > 0 {
            let err = Error::bad_request(format!("upload ended {} bytes short", self.remaining()));
            let _ = self.stop_worker().await;
            self.ctx
                .record("put", TransferState::Failed, None, self.expected.clone())
                .await;
            return Err(err);
        }
        if self.pending_len > 0
            && let Err(e) = self.hand_over().await
        {
            let _ = self.stop_worker().await;
            self.ctx
                .record("put", TransferState::Failed, None, self.expected.clone())
                .await;
            return Err(e);
        }
        // Closing the queue with the commit flag set tells the worker that all data is in.
        self.commit.done.store(true, Ordering::SeqCst);
        let (result, actual) = self.stop_worker().await;
        let state = match &result {
            Ok(_) => TransferState::Verified,
            Err(e) if e.code == Code::ChecksumMismatch => TransferState::Mismatch,
            Err(_) => TransferState::Failed,
        };
        let md5 = if state == TransferState::Failed {
            None
        } else {
            actual
        };
        self.ctx
            .record("put", state, md5.map(Into::into), self.expected.clone())
            .await;
        result
    }

    /// Abandons the upload (cancel, disconnect): the temp file is removed, nothing is renamed.
    pub async fn abort(mut self, cancelled: bool) {
        let _ = self.stop_worker().await;
        let state = if cancelled {
            TransferState::Cancelled
        } else {
            TransferState::Failed
        };
        self.ctx
            .record("put", state, None, self.expected.clone())
            .await;
    }

    /// Closes the queue and waits for the worker: it renames the file into place if the commit
    /// flag is set and everything checks out, else it removes its temp file. Either way the
    /// upload is settled on disk once this returns.
    async fn stop_worker(&mut self) -> Settled {
        self.tx = None;
        match self.worker.take() {
            Some(w) => w.await.unwrap_or_else(|e| (Err(Error::internal(e)), None)),
            None => (Err(Error::internal("put worker gone")), None),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_loop(
    files: &Files,
    file: std::fs::File,
    rx: mpsc::Receiver<Vec<Bytes>>,
    rel: &RelPath,
    tmp: &RelPath,
    size: Option<u64>,
    expected: Option<String>,
    commit: &Commit,
) -> Settled {
    let (result, actual) = write_and_verify(file, rx, size, expected.as_deref(), commit);
    let settled = result.and_then(|file| commit_file(files, file, rel, tmp, actual.clone()));
    if settled.is_err() {
        let _ = files.dir.remove_file(tmp.as_path());
    }
    (settled, actual)
}
