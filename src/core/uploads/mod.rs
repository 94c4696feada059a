//! Resumable uploads: an upload takes its bytes over several requests, keeps whatever arrived
//! when a request is cut off, and is renamed into place only once complete and verified.
//!
//! The model is the one of the IETF draft "Resumable Uploads for HTTP"
//! (draft-ietf-httpbis-resumable-upload): an upload has an offset (bytes stored so far), a
//! completeness flag and, once the client states it, a length. Each request that carries data
//! is an [`Append`]; only one runs at a time per upload. The state lives in memory: a restart
//! forgets every incomplete upload, and the temp files of the ones it knew are removed at
//! shutdown and on expiry.
//!
//! The registry and its requests live here; `state` holds what it keeps per upload, `append`
//! the handle a transport feeds and the settling of each append, `disk` the blocking worker
//! that writes and hashes the bytes.

mod append;
mod disk;
mod manage;
mod state;

pub use append::Append;

use crate::core::audit::Actor;
use crate::core::auth::Action;
use crate::core::checksum::Md5Stream;
use crate::core::error::{Code, Error, Result};
use crate::core::files::{Files, blocking};
use crate::core::paths::RelPath;
use crate::core::put::{PutDone, create_temp};
use crate::core::registry::random_id;
use crate::core::transfer::TransferCtx;
use disk::Job;
use serde::Serialize;
use state::{Parked, Slot, Upload, check_md5s, find, length_of, offset_conflict};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most incomplete uploads at once; creating more is refused as `busy`.
const MAX_OPEN: usize = 1024;

/// What a client can learn about an upload.
#[derive(Debug, Clone, Serialize)]
pub struct UploadInfo {
    /// The upload's id.
    pub id: String,
    /// The target path under the root.
    pub path: String,
    /// Bytes stored so far.
    pub offset: u64,
    /// The whole file's length, once the client stated it.
    pub length: Option<u64>,
    /// Whether the upload is complete (verified and renamed into place).
    pub complete: bool,
    /// Seconds until the upload is forgotten unless more data arrives.
    pub expires_in: u64,
    /// The stored file, once complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<PutDone>,
}

/// What a request that carries upload data states about it.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// Whether this request's content ends the upload.
    pub complete: bool,
    /// The whole file's length, if stated (HTTP: `Upload-Length`).
    pub length: Option<u64>,
    /// This request's content length, if known; with `complete` it fixes the whole length.
    pub content_length: Option<u64>,
    /// The whole file's MD5 hex, if stated; checked when the upload completes.
    pub md5: Option<String>,
    /// This request's content MD5 hex, if stated; content that does not match is not kept.
    pub part_md5: Option<String>,
}

/// The registry of resumable uploads; cheap to clone.
#[derive(Clone)]
pub struct Uploads {
    inner: Arc<Inner>,
}

struct Inner {
    files: Files,
    expiry: Duration,
    max_size: u64,
    map: Mutex<HashMap<String, Upload>>,
    closed: AtomicBool,
}

impl Uploads {
    /// An empty registry; uploads idle for `expiry` are dropped, and all are at `shutdown`.
    /// No upload grows past `max_size` bytes, however many requests carry it.
    pub fn new(
        files: Files,
        expiry: Duration,
        max_size: u64,
        shutdown: CancellationToken,
    ) -> Uploads {
        let this = Uploads {
            inner: Arc::new(Inner {
                files,
                expiry,
                max_size,
                map: Mutex::default(),
                closed: AtomicBool::new(false),
            }),
        };
        let sweeper = this.clone();
        let every = (expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        sweeper.expire_idle(sweeper.inner.expiry).await;
                    }
                    _ = shutdown.cancelled() => {
                        sweeper.close().await;
                        break;
                    }
                }
            }
        });
        this
    }

    /// How long an upload may stay idle before it is dropped.
    pub fn expiry(&self) -> Duration {
        self.inner.expiry
    }

    fn check_size(&self, length: Option<u64>) -> Result<()> {
        match length {
            Some(l) if l > self.inner.max_size => Err(Error::new(
                Code::TooLarge,
                format!(
                    "an upload of {l} bytes is over the server's limit of {} bytes",
                    self.inner.max_size
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses new uploads and drops the idle ones with their temp files: the state is in
    /// memory only, so nothing could resume them after a restart. Appends still running drop
    /// their upload when they settle, unless they complete it. Runs at shutdown; idempotent.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.drop_idle(Duration::ZERO, "server shutdown").await;
    }

    /// Starts an upload to `raw`; the returned append takes the first part (possibly empty).
    /// If that part is cut off the upload is dropped, as its id was never announced.
    pub async fn create(&self, actor: &Actor, raw: &str, d: Declared) -> Result<Append> {
        actor.require(Action::Write)?;
        let rel = RelPath::parse(raw)?;
        check_md5s(None, &d)?;
        let length = length_of(0, None, &d)?;
        self.check_size(length)?;
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::new(Code::Busy, "the server is shutting down"));
        }
        let slot = self.inner.files.transfer_slot().await?;
        let open = {
            let map = self.inner.map.lock().unwrap();
            map.values()
                .filter(|u| !matches!(u.slot, Slot::Done(_)))
                .count()
        };
        if open >= MAX_OPEN {
            return Err(Error::new(
                Code::Busy,
                format!("{MAX_OPEN} uploads are open; finish or cancel some first"),
            ));
        }
        let files = self.inner.files.clone();
        let rel2 = rel.clone();
        // The guard removes the file if this request goes away before the upload holds it.
        let (tmp, file) = blocking(move || create_temp(&files, &rel2)).await?.keep();
        let files = &self.inner.files;
        let handle =
            files
                .registry
                .start_transfer(actor, rel.as_str().into(), "put", length.unwrap_or(0));
        let parked = Parked {
            file,
            md5: Md5Stream::new(),
            ctx: TransferCtx {
                files: files.clone(),
                actor: actor.clone(),
                path: rel.as_str().into(),
                handle: Some(handle),
                size: length.unwrap_or(0),
            },
        };
        let id = random_id();
        let (stop, settled) = (CancellationToken::new(), CancellationToken::new());
        let job = Job {
            files: files.clone(),
            parked,
            start: 0,
            creation: true,
            complete: d.complete,
            length,
            expected: d.md5.clone(),
            part_md5: d.part_md5,
            target: rel.clone(),
            tmp: tmp.clone(),
        };
        self.inner.map.lock().unwrap().insert(
            id.clone(),
            Upload {
                owner: actor.user().to_string(),
                target: rel.clone(),
                tmp,
                offset: 0,
                length,
                expected: d.md5,
                touched: Instant::now(),
                slot: Slot::Busy {
                    stop: stop.clone(),
                    settled,
                },
            },
        );
        tracing::info!(upload = %id, session = %actor.session_id, path = %rel, "upload created");
        Ok(self.start(id, job, stop, slot))
    }

    /// Appends to upload `id` from `offset`, which must be its current offset (else `conflict`,
    /// as when another append is running).
    pub async fn append(
        &self,
        actor: &Actor,
        id: &str,
        offset: u64,
        d: Declared,
    ) -> Result<Append> {
        actor.require(Action::Write)?;
        let stop = CancellationToken::new();
        // An unknown upload or a wrong offset is answered at once, not after a wait for a
        // transfer slot; the checks run again once the slot is held.
        {
            let mut map = self.inner.map.lock().unwrap();
            let up = find(&mut map, id, actor)?;
            if offset != up.offset {
                return Err(offset_conflict(offset, up.offset));
            }
        }
        let slot = self.inner.files.transfer_slot().await?;
        let job = {
            let mut map = self.inner.map.lock().unwrap();
            let up = find(&mut map, id, actor)?;
            match &up.slot {
                Slot::Done(_) => {
                    return Err(Error::bad_request(
                        "the upload is already complete; nothing can be appended",
                    ));
                }
                Slot::Busy { .. } => {
                    return Err(Error::new(
                        Code::Conflict,
                        "another request is appending to this upload",
                    ));
                }
                Slot::Idle(_) => {}
            }
            let current = up.offset;
            if offset != current {
                return Err(offset_conflict(offset, current));
            }
            let length = length_of(current, up.length, &d)?;
            self.check_size(length)?;
            check_md5s(up.expected.as_deref(), &d)?;
            up.length = length;
            if up.expected.is_none() {
                up.expected = d.md5.clone();
            }
            up.touched = Instant::now();
            let busy = Slot::Busy {
                stop: stop.clone(),
                settled: CancellationToken::new(),
            };
            let Slot::Idle(parked) = std::mem::replace(&mut up.slot, busy) else {
                unreachable!("checked above");
            };
            Job {
                files: self.inner.files.clone(),
                parked: *parked,
                start: current,
                creation: false,
                complete: d.complete,
                length,
                expected: up.expected.clone(),
                part_md5: d.part_md5,
                target: up.target.clone(),
                tmp: up.tmp.clone(),
            }
        };
        tracing::debug!(upload = %id, session = %actor.session_id, offset, "append");
        Ok(self.start(id.to_string(), job, stop, slot))
    }
}

#[cfg(test)]
mod tests;
