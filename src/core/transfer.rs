//! Downloads: streamed from a disk thread with the stored MD5; shared transfer bookkeeping.

use crate::core::audit::{Actor, TransferRow, now_ms};
use crate::core::auth::Action;
use crate::core::digests::FileKey;
use crate::core::error::{Error, Result};
use crate::core::files::{Files, blocking};
use crate::core::paths::RelPath;
use crate::core::registry::{CheckInfo, TransferHandle, TransferState};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use tokio::sync::mpsc;

/// Chunks buffered between the disk thread and the transport, per transfer.
pub(crate) const QUEUE: usize = 4;

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

/// A download in progress: pull chunks, then `finish`.
pub struct GetStream {
    /// What was announced.
    pub header: GetHeader,
    rx: mpsc::Receiver<Chunk>,
    end: Option<bool>,
    sent: u64,
    want: u64,
    ctx: TransferCtx,
}

pub(crate) struct TransferCtx {
    pub(crate) files: Files,
    pub(crate) actor: Actor,
    pub(crate) path: String,
    pub(crate) handle: Option<TransferHandle>,
    pub(crate) started_at: i64,
    pub(crate) size: u64,
}

impl TransferCtx {
    /// Ends the transfer: registry, metrics, MD5 check (when two digests were compared), log
    /// and audit. `md5` is the digest of the bytes moved, when known.
    pub(crate) async fn record(
        &mut self,
        direction: &'static str,
        state: TransferState,
        md5: Option<String>,
        expected: Option<String>,
    ) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        let bytes = handle.done();
        let id = handle.id().to_string();
        handle.finish(state, md5.clone());
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
                user: self.actor.user().to_string(),
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
                at: now_ms(),
            });
        }
        tracing::info!(transfer = %id, session = %self.actor.session_id, path = %self.path, direction,
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
                result: result.to_string(),
                started_at: self.started_at,
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
        match self.rx.recv().await {
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

    /// Ends the transfer after the last chunk; records it.
    pub async fn finish(mut self) -> GetEnd {
        let changed = self.end.unwrap_or(true);
        let md5 = self.header.md5.clone();
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
            md5,
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
    /// `chunk` bytes; registers and later records the transfer.
    pub fn stream(self, offset: u64, len: Option<u64>, chunk: usize) -> Result<GetStream> {
        let size = self.key.size;
        if offset > size {
            return Err(Error::bad_request(format!(
                "offset {offset} is past the end ({size} bytes)"
            )));
        }
        let want = len.unwrap_or(size - offset).min(size - offset);
        let (tx, rx) = mpsc::channel(QUEUE);
        let key = self.key;
        let file = self.file;
        let slot = self.files.transfer_slot()?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            read_loop(file, key, offset, want, chunk.max(1), tx)
        });
        let handle = self
            .files
            .registry
            .start_transfer(&self.actor, &self.path, "get", want);
        Ok(GetStream {
            header: GetHeader {
                size,
                md5: self.md5,
                offset,
                mtime: key.mtime_ns / 1_000_000,
            },
            rx,
            end: None,
            sent: 0,
            want,
            ctx: TransferCtx {
                files: self.files,
                actor: self.actor,
                path: self.path,
                handle: Some(handle),
                started_at: now_ms(),
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

impl Files {
    /// Opens `raw` for download, or lists it when it is a directory.
    pub async fn open_path(&self, actor: &Actor, raw: &str) -> Result<Opened> {
        match self.open_inner(actor, raw).await? {
            Some(f) => Ok(Opened::File(Box::new(f))),
            None => Ok(Opened::Dir(self.list(actor, raw).await?)),
        }
    }

    /// Opens `raw` for download: confined, regular files only, with the stored (or computed) MD5.
    pub async fn open_get(&self, actor: &Actor, raw: &str) -> Result<GetFile> {
        self.open_inner(actor, raw)
            .await?
            .ok_or_else(|| Error::bad_request(format!("{}: is a directory", raw.trim_matches('/'))))
    }

    async fn open_inner(&self, actor: &Actor, raw: &str) -> Result<Option<GetFile>> {
        actor.require(Action::Download)?;
        let rel = RelPath::parse(raw)?;
        let this = self.clone();
        let rel2 = rel.clone();
        let opened = blocking(move || {
            let rel = rel2;
            // Non-blocking open, so a FIFO or device cannot hang the open; non-regular files
            // are refused below (and O_NONBLOCK changes nothing for a regular file's reads).
            let mut opts = cap_std::fs::OpenOptions::new();
            opts.read(true);
            cap_std::fs::OpenOptionsExt::custom_flags(
                &mut opts,
                rustix::fs::OFlags::NONBLOCK.bits() as i32,
            );
            let file = this
                .dir
                .open_with(rel.as_path(), &opts)
                .map_err(|e| Error::io(e, rel.as_str()))?
                .into_std();
            let meta = file.metadata().map_err(|e| Error::io(e, rel.as_str()))?;
            if meta.is_dir() {
                return Ok(None);
            }
            if !meta.is_file() {
                return Err(Error::bad_request(format!("{rel}: not a regular file")));
            }
            let (key, md5) = this.digest_of(&rel, &file)?;
            Ok(Some((file, key, md5)))
        })
        .await?;
        Ok(opened.map(|(file, key, md5)| GetFile {
            files: self.clone(),
            actor: actor.clone(),
            path: rel.as_str().to_string(),
            file,
            key,
            md5,
        }))
    }

    /// Opens `raw` for download from `offset`, with chunks of at most `chunk` bytes.
    pub async fn get(
        &self,
        actor: &Actor,
        raw: &str,
        offset: u64,
        chunk: usize,
    ) -> Result<GetStream> {
        self.open_get(actor, raw).await?.stream(offset, None, chunk)
    }
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
    let mut sent = 0u64;
    while sent < want {
        let n = chunk.min((want - sent) as usize);
        let mut buf = BytesMut::zeroed(n);
        let mut filled = 0;
        while filled < n {
            match file.read(&mut buf[filled..]) {
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
        buf.truncate(filled);
        sent += filled as u64;
        if tx.blocking_send(Chunk::Data(buf.freeze())).is_err() {
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
