//! Downloads: streamed from a disk thread with the stored MD5; shared transfer bookkeeping.

use crate::core::audit::{Actor, TransferRow, now_ms};
use crate::core::digests::FileKey;
use crate::core::error::{Error, Result};
use crate::core::files::Files;
use crate::core::registry::{CheckInfo, TransferHandle, TransferState};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use tokio::sync::mpsc;

mod open;
mod pool;

/// Chunks buffered between the disk thread and the transport, per transfer.
pub(crate) const QUEUE: usize = 4;

/// Files up to this size are read whole when opened, on the same disk-thread hop: no reader
/// thread, no channel.
pub(crate) const SMALL_FILE: u64 = 64 * 1024;

/// What a `get` announces before its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetHeader {
    /// The whole file's size.
    pub size: u64,
    /// The whole file's MD5 hex.
    pub md5: String,
    /// Where the data starts.
    pub offset: u64,
    /// Modification time, unix ms.
    pub mtime: i64,
}

/// How a `get` ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetEnd {
    /// The MD5 announced in the header, repeated.
    pub md5: String,
    /// Data bytes sent.
    pub bytes: u64,
    /// Whether the file changed while it was read (the MD5 then does not describe the bytes).
    pub changed: bool,
}

enum Chunk {
    Data(Bytes),
    End { changed: bool },
    Failed(Error),
}

/// Where a download's chunks come from.
enum Source {
    /// The disk thread, chunk by chunk.
    Disk(mpsc::Receiver<Chunk>),
    /// A small file read whole when it was opened: its chunks, then the end.
    Ready(std::vec::IntoIter<Chunk>),
}

/// A download in progress: pull chunks, then `finish`.
pub struct GetStream {
    /// What was announced.
    pub header: GetHeader,
    source: Source,
    end: Option<bool>,
    sent: u64,
    want: u64,
    ctx: TransferCtx,
}

pub(crate) struct TransferCtx {
    pub(crate) files: Files,
    pub(crate) actor: Actor,
    pub(crate) path: Arc<str>,
    pub(crate) handle: Option<TransferHandle>,
    pub(crate) size: u64,
}

impl TransferCtx {
    /// Ends the transfer: registry, metrics, MD5 check (when two digests were compared), log
    /// and audit. `md5` is the digest of the bytes moved, when known.
    pub(crate) async fn record(
        &mut self,
        direction: &'static str,
        state: TransferState,
        md5: Option<Arc<str>>,
        expected: Option<Arc<str>>,
    ) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        let bytes = handle.done();
        let id = handle.id().clone();
        let started_at = handle.started_at();
        let now = now_ms();
        handle.finish(state, md5.clone(), now);
        let result = match state {
            TransferState::Verified => "verified",
            TransferState::Mismatch => "mismatch",
            TransferState::Cancelled => "cancelled",
            _ => "failed",
        };
        let registry = &self.files.registry;
        registry
            .metrics()
            .transfer(self.actor.transport, direction, result);
        if let Some(exp) = &expected
            && matches!(state, TransferState::Verified | TransferState::Mismatch)
        {
            registry.record_check(CheckInfo {
                transfer_id: id.clone(),
                session_id: self.actor.session_id.clone(),
                user: self.actor.principal.name.clone(),
                transport: self.actor.transport,
                path: self.path.clone(),
                direction,
                expected: exp.clone(),
                actual: md5.clone(),
                result: if state == TransferState::Verified {
                    "ok"
                } else {
                    "mismatch"
                },
                at: now,
            });
        }
        tracing::debug!(transfer = %id, session = %self.actor.session_id, path = %self.path, direction,
            bytes, size = self.size, md5 = md5.as_deref().unwrap_or("-"), result, "transfer");
        self.files
            .audit
            .transfer(TransferRow {
                id,
                actor: self.actor.clone(),
                path: self.path.clone(),
                direction,
                size: self.size,
                bytes,
                md5,
                expected_md5: expected,
                result,
                started_at,
                ended_at: now,
            })
            .await;
    }
}

impl GetStream {
    /// Data bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.want.saturating_sub(self.sent)
    }

    /// The next chunk of data, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let next = match &mut self.source {
            Source::Disk(rx) => rx.recv().await,
            Source::Ready(chunks) => chunks.next(),
        };
        match next {
            Some(Chunk::Data(b)) => {
                self.sent += b.len() as u64;
                if let Some(h) = &self.ctx.handle {
                    h.progress(b.len() as u64);
                }
                Ok(Some(b))
            }
            Some(Chunk::End { changed }) => {
                self.end = Some(changed);
                Ok(None)
            }
            Some(Chunk::Failed(e)) => Err(e),
            None => Err(Error::internal("get reader ended early")),
        }
    }

    /// All the data at once, when the file was small enough to be read whole at open and fits
    /// one chunk; the stream is then at its end (call `finish`).
    pub fn take_whole(&mut self) -> Option<Bytes> {
        let Source::Ready(chunks) = &mut self.source else {
            return None;
        };
        match chunks.as_slice() {
            [Chunk::Data(_), Chunk::End { .. }] | [Chunk::End { .. }] => {}
            _ => return None,
        }
        let data = match chunks.next() {
            Some(Chunk::Data(b)) => {
                chunks.next();
                b
            }
            _ => Bytes::new(),
        };
        self.sent += data.len() as u64;
        if let Some(h) = &self.ctx.handle {
            h.progress(data.len() as u64);
        }
        self.end = Some(false);
        Some(data)
    }

    /// Ends the transfer after the last chunk; records it.
    pub async fn finish(mut self) -> GetEnd {
        let changed = self.end.unwrap_or(true);
        let md5: Arc<str> = self.header.md5.as_str().into();
        let state = if changed {
            TransferState::Mismatch
        } else {
            TransferState::Verified
        };
        // The announced digest holds for the bytes sent when the file did not change meanwhile.
        let actual = (!changed).then(|| md5.clone());
        // Only a whole file is an MD5 check: part of one says nothing of the digest.
        let whole = self.header.offset == 0 && self.want == self.header.size;
        let expected = whole.then(|| md5.clone());
        self.ctx.record("get", state, actual, expected).await;
        GetEnd {
            md5: std::mem::take(&mut self.header.md5),
            bytes: self.sent,
            changed,
        }
    }

    /// Ends the transfer early (cancel or error); records it.
    pub async fn abort(mut self, cancelled: bool) {
        let state = if cancelled {
            TransferState::Cancelled
        } else {
            TransferState::Failed
        };
        self.ctx.record("get", state, None, None).await;
    }
}

/// A file opened for download, with its stored MD5; nothing is recorded until [`GetFile::stream`].
pub struct GetFile {
    files: Files,
    actor: Actor,
    path: String,
    file: std::fs::File,
    key: FileKey,
    /// The whole content of a small file, read at open (`None` if it changed meanwhile).
    small: Option<Bytes>,
    /// The whole file's MD5 hex.
    pub md5: String,
}

impl GetFile {
    /// The whole file's size.
    pub fn size(&self) -> u64 {
        self.key.size
    }

    /// Modification time, unix ms.
    pub fn mtime_ms(&self) -> i64 {
        self.key.mtime_ns / 1_000_000
    }

    /// The path under the root, normalised.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Starts sending `len` bytes (all the rest if `None`) from `offset`, in chunks of at most
    /// `chunk` bytes, once a transfer slot is free if it reads from disk (see
    /// `Files::transfer_slot`); registers and later records the transfer.
    pub async fn stream(self, offset: u64, len: Option<u64>, chunk: usize) -> Result<GetStream> {
        let size = self.key.size;
        if offset > size {
            return Err(Error::bad_request(format!(
                "offset {offset} is past the end ({size} bytes)"
            )));
        }
        let want = len.unwrap_or(size - offset).min(size - offset);
        let key = self.key;
        let source = match self.small {
            Some(all) => {
                let part = all.slice(offset as usize..(offset + want) as usize);
                let mut chunks: Vec<Chunk> = (0..part.len())
                    .step_by(chunk.max(1))
                    .map(|at| Chunk::Data(part.slice(at..part.len().min(at + chunk.max(1)))))
                    .collect();
                chunks.push(Chunk::End { changed: false });
                Source::Ready(chunks.into_iter())
            }
            None => {
                let (tx, rx) = mpsc::channel(QUEUE);
                let file = self.file;
                let slot = self.files.transfer_slot().await?;
                tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    read_loop(file, key, offset, want, chunk.max(1), tx)
                });
                Source::Disk(rx)
            }
        };
        let path: Arc<str> = self.path.into();
        let handle = self
            .files
            .registry
            .start_transfer(&self.actor, path.clone(), "get", want);
        Ok(GetStream {
            header: GetHeader {
                size,
                md5: self.md5,
                offset,
                mtime: key.mtime_ns / 1_000_000,
            },
            source,
            end: None,
            sent: 0,
            want,
            ctx: TransferCtx {
                files: self.files,
                actor: self.actor,
                path,
                handle: Some(handle),
                size,
            },
        })
    }
}

/// What a path turned out to be when opened for download.
pub enum Opened {
    /// A regular file, ready to stream.
    File(Box<GetFile>),
    /// A directory, listed.
    Dir(Vec<crate::core::files::Entry>),
}

fn read_loop(
    mut file: std::fs::File,
    key: FileKey,
    offset: u64,
    want: u64,
    chunk: usize,
    tx: mpsc::Sender<Chunk>,
) {
    if let Err(e) = file.seek(SeekFrom::Start(offset)) {
        let _ = tx.blocking_send(Chunk::Failed(Error::internal(e)));
        return;
    }
    let pool = pool::Pool::new(chunk.min(usize::try_from(want).unwrap_or(usize::MAX)));
    let mut sent = 0u64;
    while sent < want {
        let n = usize::try_from(want - sent).map_or(chunk, |left| chunk.min(left));
        let mut buf = pool.take();
        let mut filled = 0;
        while filled < n {
            match file.read(&mut buf[filled..n]) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Chunk::Failed(Error::internal(e)));
                    return;
                }
            }
        }
        if filled == 0 {
            break; // the file shrank
        }
        sent += filled as u64;
        if tx
            .blocking_send(Chunk::Data(pool.lend(buf, filled)))
            .is_err()
        {
            return; // the transport went away
        }
    }
    let changed = sent != want
        || file
            .metadata()
            .map(|m| FileKey::of(&m) != key)
            .unwrap_or(true);
    let _ = tx.blocking_send(Chunk::End { changed });
}

pub use crate::core::put::{PutDone, PutSink};
