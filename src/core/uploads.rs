//! Resumable uploads: an upload takes its bytes over several requests, keeps whatever arrived
//! when a request is cut off, and is renamed into place only once complete and verified.
//!
//! The model is the one of the IETF draft "Resumable Uploads for HTTP"
//! (draft-ietf-httpbis-resumable-upload): an upload has an offset (bytes stored so far), a
//! completeness flag and, once the client states it, a length. Each request that carries data
//! is an [`Append`]; only one runs at a time per upload. The state lives in memory: a restart
//! forgets every incomplete upload, and the temp files of the ones it knew are removed at
//! shutdown and on expiry.

use crate::core::audit::{Actor, now_ms};
use crate::core::checksum::{Md5Stream, is_md5_hex};
use crate::core::error::{Code, Error, Result};
use crate::core::files::{Files, blocking};
use crate::core::paths::RelPath;
use crate::core::put::{PutDone, commit_file, create_temp};
use crate::core::registry::{TransferState, new_id};
use crate::core::transfer::{QUEUE, TransferCtx};
use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Most incomplete uploads at once; creating more is refused as `busy`.
const MAX_OPEN: usize = 1024;

/// Most completed uploads remembered (for a client that missed the final answer); the oldest go.
const MAX_DONE: usize = 1024;

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
    map: Mutex<HashMap<String, Upload>>,
    closed: AtomicBool,
}

struct Upload {
    target: RelPath,
    tmp: RelPath,
    /// Bytes acknowledged: what settled appends kept. A running append moves it when it settles,
    /// so a reported offset never has to be taken back.
    offset: u64,
    length: Option<u64>,
    expected: Option<String>,
    touched: Instant,
    slot: Slot,
}

enum Slot {
    /// Waiting for the next append.
    Idle(Box<Parked>),
    /// An append runs; `stop` asks it to end, `settled` fires once it has.
    Busy {
        stop: CancellationToken,
        settled: CancellationToken,
    },
    /// Complete, stored and remembered for a while.
    Done(PutDone),
}

/// What an idle upload holds: its temp file, the MD5 state of the bytes in it, its transfer.
struct Parked {
    file: std::fs::File,
    md5: Md5Stream,
    ctx: TransferCtx,
}

impl Upload {
    fn info(&self, id: &str, expiry: Duration) -> UploadInfo {
        let stored = match &self.slot {
            Slot::Done(d) => Some(d.clone()),
            _ => None,
        };
        UploadInfo {
            id: id.to_string(),
            path: self.target.as_str().to_string(),
            offset: self.offset,
            length: self.length,
            complete: stored.is_some(),
            expires_in: expiry.saturating_sub(self.touched.elapsed()).as_secs(),
            stored,
        }
    }
}

fn gone() -> Error {
    Error::new(
        Code::NotFound,
        "no such upload (it was completed long ago, cancelled, failed or expired)",
    )
}

/// The whole length implied by a request that starts at `offset`, checked against `known`.
fn length_of(offset: u64, known: Option<u64>, d: &Declared) -> Result<Option<u64>> {
    let by_content = d
        .complete
        .then_some(d.content_length)
        .flatten()
        .map(|n| offset.saturating_add(n));
    let mut length = known;
    for l in [d.length, by_content].into_iter().flatten() {
        match length {
            Some(k) if k != l => {
                return Err(Error::bad_request(format!(
                    "inconsistent upload length: {k} bytes stated before, {l} now"
                )));
            }
            _ => length = Some(l),
        }
    }
    if let Some(l) = length
        && l < offset
    {
        return Err(Error::bad_request(format!(
            "inconsistent upload length: {l} bytes, but {offset} are already stored"
        )));
    }
    Ok(length)
}

fn check_md5s(known: Option<&str>, d: &Declared) -> Result<()> {
    for m in [&d.md5, &d.part_md5].into_iter().flatten() {
        if !is_md5_hex(m) {
            return Err(Error::bad_request("an MD5 must be 32 hex digits"));
        }
    }
    if let (Some(k), Some(m)) = (known, &d.md5)
        && !k.eq_ignore_ascii_case(m)
    {
        return Err(Error::bad_request(format!(
            "the file's MD5 {m} disagrees with the {k} stated before"
        )));
    }
    Ok(())
}

impl Uploads {
    /// An empty registry; uploads idle for `expiry` are dropped, and all are at `shutdown`.
    pub fn new(files: Files, expiry: Duration, shutdown: CancellationToken) -> Uploads {
        let this = Uploads {
            inner: Arc::new(Inner {
                files,
                expiry,
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
        let rel = RelPath::parse(raw)?;
        check_md5s(None, &d)?;
        let length = length_of(0, None, &d)?;
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::new(Code::Busy, "the server is shutting down"));
        }
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
        let (tmp, file) = blocking(move || create_temp(&files, &rel2)).await?;
        let files = &self.inner.files;
        let handle = files
            .registry
            .start_transfer(actor, rel.as_str(), "put", length.unwrap_or(0));
        let parked = Parked {
            file,
            md5: Md5Stream::new(),
            ctx: TransferCtx {
                files: files.clone(),
                actor: actor.clone(),
                path: rel.as_str().to_string(),
                handle: Some(handle),
                started_at: now_ms(),
                size: length.unwrap_or(0),
            },
        };
        let id = new_id();
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
        Ok(self.start(id, job, stop))
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
        let stop = CancellationToken::new();
        let job = {
            let mut map = self.inner.map.lock().unwrap();
            let up = map.get_mut(id).ok_or_else(gone)?;
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
                return Err(Error::new(
                    Code::Conflict,
                    format!("Upload-Offset {offset} does not match the upload's offset {current}"),
                ));
            }
            let length = length_of(current, up.length, &d)?;
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
        Ok(self.start(id.to_string(), job, stop))
    }

    fn start(&self, id: String, job: Job, stop: CancellationToken) -> Append {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        let (start, length) = (job.start, job.length);
        // The append settles here even if the transport drops its end mid-request: the bytes
        // handed over are written and the upload is parked again (or dropped, or stored).
        let this = self.clone();
        let id2 = id.clone();
        tokio::spawn(async move {
            let outcome = tokio::task::spawn_blocking(move || run(job, rx)).await;
            let result = this.settle(&id2, outcome).await;
            let _ = done_tx.send(result);
        });
        Append {
            id,
            tx: Some(tx),
            done: Some(done_rx),
            stop,
            next: start,
            length,
        }
    }

    async fn settle(
        &self,
        id: &str,
        outcome: std::result::Result<Outcome, tokio::task::JoinError>,
    ) -> Result<UploadInfo> {
        let expiry = self.inner.expiry;
        let take_settled = |up: &mut Upload| match &up.slot {
            Slot::Busy { settled, .. } => Some(settled.clone()),
            _ => None,
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                // The worker panicked: its file and MD5 state are lost, and so is the upload.
                let up = self.inner.map.lock().unwrap().remove(id);
                if let Some(mut up) = up {
                    if let Some(s) = take_settled(&mut up) {
                        s.cancel();
                    }
                    let _ = self.inner.files.dir.remove_file(up.tmp.as_path());
                }
                return Err(Error::internal(e));
            }
        };
        match outcome {
            Outcome::Parked {
                parked,
                offset,
                error,
            } => {
                let closed = self.inner.closed.load(Ordering::SeqCst);
                let (settled, result) = {
                    let mut map = self.inner.map.lock().unwrap();
                    let up = map.get_mut(id).expect("a busy upload stays registered");
                    let settled = take_settled(up);
                    up.offset = offset;
                    up.slot = Slot::Idle(Box::new(parked));
                    up.touched = Instant::now();
                    if closed {
                        (settled, Err(map.remove(id).expect("just seen")))
                    } else {
                        (settled, Ok(up.info(id, expiry)))
                    }
                };
                if let Some(s) = settled {
                    s.cancel();
                }
                let info = match result {
                    Ok(info) => info,
                    Err(up) => {
                        self.drop_upload(id, up, TransferState::Failed, "server shutdown")
                            .await;
                        return Err(Error::new(Code::Busy, "the server is shutting down"));
                    }
                };
                tracing::debug!(upload = %id, offset, "append settled");
                match error {
                    Some(e) => Err(e),
                    None => Ok(info),
                }
            }
            Outcome::Stored {
                mut ctx,
                done,
                expected,
            } => {
                ctx.size = done.size;
                let (settled, info) = {
                    let mut map = self.inner.map.lock().unwrap();
                    let up = map.get_mut(id).expect("a busy upload stays registered");
                    let settled = take_settled(up);
                    up.offset = done.size;
                    up.length = Some(done.size);
                    up.slot = Slot::Done(done.clone());
                    up.touched = Instant::now();
                    let info = up.info(id, expiry);
                    forget_oldest_done(&mut map);
                    (settled, info)
                };
                ctx.record("put", TransferState::Verified, Some(done.md5), expected)
                    .await;
                if let Some(s) = settled {
                    s.cancel();
                }
                Ok(info)
            }
            Outcome::Dropped {
                mut ctx,
                state,
                md5,
                expected,
                error,
            } => {
                let up = self.inner.map.lock().unwrap().remove(id);
                let settled = up.map(|mut u| {
                    ctx.size = u.length.unwrap_or(u.offset);
                    take_settled(&mut u)
                });
                ctx.record("put", state, md5, expected).await;
                if let Some(s) = settled.flatten() {
                    s.cancel();
                }
                tracing::info!(upload = %id, reason = %error, "upload dropped");
                Err(error)
            }
        }
    }

    /// The state of upload `id`. A running append is stopped first (the draft lets the server end
    /// it), so the offset returned is settled and the next append at it is accepted.
    pub async fn status(&self, id: &str) -> Result<UploadInfo> {
        loop {
            let settled = {
                let map = self.inner.map.lock().unwrap();
                let up = map.get(id).ok_or_else(gone)?;
                match &up.slot {
                    Slot::Busy { stop, settled } => {
                        stop.cancel();
                        settled.clone()
                    }
                    _ => return Ok(up.info(id, self.inner.expiry)),
                }
            };
            settled.cancelled().await;
        }
    }

    /// The acknowledged offset of upload `id`, without waiting for a running append.
    pub fn offset(&self, id: &str) -> Option<u64> {
        let map = self.inner.map.lock().unwrap();
        map.get(id).map(|u| u.offset)
    }

    /// Cancels upload `id`: a running append is stopped and the temp file removed. A completed
    /// upload is only forgotten; its file stays.
    pub async fn cancel(&self, actor: &Actor, id: &str) -> Result<()> {
        let up = loop {
            let settled = {
                let mut map = self.inner.map.lock().unwrap();
                let up = map.get(id).ok_or_else(gone)?;
                match &up.slot {
                    Slot::Busy { stop, settled } => {
                        stop.cancel();
                        settled.clone()
                    }
                    _ => break map.remove(id).expect("just seen"),
                }
            };
            settled.cancelled().await;
        };
        tracing::info!(upload = %id, session = %actor.session_id, path = %up.target, "upload cancelled");
        self.drop_upload(id, up, TransferState::Cancelled, "cancelled")
            .await;
        Ok(())
    }

    /// Drops the uploads idle for at least `idle` (temp files removed, completed ones forgotten);
    /// returns how many. Runs every so often with the configured expiry.
    pub async fn expire_idle(&self, idle: Duration) -> usize {
        self.drop_idle(idle, "expired").await
    }

    async fn drop_idle(&self, idle: Duration, why: &str) -> usize {
        let expired: Vec<(String, Upload)> = {
            let mut map = self.inner.map.lock().unwrap();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, u)| {
                    !matches!(u.slot, Slot::Busy { .. }) && u.touched.elapsed() >= idle
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| map.remove(&id).map(|u| (id, u)))
                .collect()
        };
        let n = expired.len();
        for (id, up) in expired {
            self.drop_upload(&id, up, TransferState::Failed, why).await;
        }
        n
    }

    /// Removes an unregistered upload's temp file and records its transfer's end.
    async fn drop_upload(&self, id: &str, up: Upload, state: TransferState, why: &str) {
        let Slot::Idle(parked) = up.slot else {
            return;
        };
        let Parked { file, mut ctx, .. } = *parked;
        drop(file);
        let files = self.inner.files.clone();
        let tmp = up.tmp.clone();
        let _ = blocking(move || {
            files
                .dir
                .remove_file(tmp.as_path())
                .map_err(|e| Error::io(e, tmp.as_str()))
        })
        .await;
        ctx.size = up.length.unwrap_or(up.offset);
        ctx.record("put", state, None, up.expected).await;
        if why != "cancelled" {
            tracing::info!(upload = %id, path = %up.target, reason = why, "upload dropped");
        }
    }
}

fn forget_oldest_done(map: &mut HashMap<String, Upload>) {
    let mut done: Vec<(Instant, String)> = map
        .iter()
        .filter(|(_, u)| matches!(u.slot, Slot::Done(_)))
        .map(|(id, u)| (u.touched, id.clone()))
        .collect();
    if done.len() > MAX_DONE {
        done.sort();
        for (_, id) in done.iter().take(done.len() - MAX_DONE) {
            map.remove(id);
        }
    }
}

/// One request's data on its way into an upload: `write` chunks, then `finish` when the content
/// ended normally or `interrupt` when it was cut off. Dropping it counts as `interrupt`.
pub struct Append {
    id: String,
    tx: Option<mpsc::Sender<Msg>>,
    done: Option<oneshot::Receiver<Result<UploadInfo>>>,
    stop: CancellationToken,
    next: u64,
    length: Option<u64>,
}

enum Msg {
    Data(Bytes),
    Finish,
    Invalid(Error),
}

impl Append {
    /// The upload's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Fires when this append must end (offset retrieval or cancellation took over the upload):
    /// stop reading and call [`Append::interrupt`].
    pub fn stop_signal(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Hands a chunk to the disk thread. Past the upload's length the upload is dropped.
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let n = chunk.len() as u64;
        if let Some(len) = self.length
            && self.next + n > len
        {
            let e = Error::bad_request(format!(
                "more data than the upload's length of {len} bytes; the upload is dropped"
            ));
            if let Some(tx) = &self.tx {
                let _ = tx.send(Msg::Invalid(e.clone())).await;
            }
            let _ = self.outcome().await;
            return Err(e);
        }
        self.next += n;
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::internal("append already ended"))?;
        if tx.send(Msg::Data(chunk)).await.is_ok() {
            Ok(())
        } else {
            Err(match self.outcome().await {
                Err(e) => e,
                Ok(_) => Error::internal("upload worker ended early"),
            })
        }
    }

    /// Ends the append after the whole content arrived: the upload completes if the request said
    /// so (verified, renamed into place), else it waits for the next append.
    pub async fn finish(mut self) -> Result<UploadInfo> {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Finish).await;
        }
        self.outcome().await
    }

    /// Ends the append after the content was cut off: the bytes that arrived are kept (a first
    /// part is not: its upload is dropped). Returns the settled state.
    pub async fn interrupt(mut self) -> Result<UploadInfo> {
        self.outcome().await
    }

    async fn outcome(&mut self) -> Result<UploadInfo> {
        self.tx = None;
        match self.done.take() {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err(Error::internal("upload worker vanished"))),
            None => Err(Error::internal("append already ended")),
        }
    }
}

struct Job {
    files: Files,
    parked: Parked,
    start: u64,
    creation: bool,
    complete: bool,
    length: Option<u64>,
    expected: Option<String>,
    part_md5: Option<String>,
    target: RelPath,
    tmp: RelPath,
}

enum Outcome {
    /// The upload waits, incomplete, at `offset`; `error` is what this append ran into.
    Parked {
        parked: Parked,
        offset: u64,
        error: Option<Error>,
    },
    /// Verified and renamed into place.
    Stored {
        ctx: TransferCtx,
        done: PutDone,
        expected: Option<String>,
    },
    /// Given up; the temp file is already removed.
    Dropped {
        ctx: TransferCtx,
        state: TransferState,
        md5: Option<String>,
        expected: Option<String>,
        error: Error,
    },
}

enum Stop {
    Finished,
    Cut,
    Invalid(Error),
    Failed(Error),
}

/// The disk side of one append: writes and hashes each chunk at its offset, then settles.
fn run(job: Job, mut rx: mpsc::Receiver<Msg>) -> Outcome {
    let Job {
        files,
        parked,
        start,
        creation,
        complete,
        length,
        expected,
        part_md5,
        target,
        tmp,
    } = job;
    let Parked { file, mut md5, ctx } = parked;
    // With a digest of this request's content, the part is kept only if it matches: remember
    // where it started to take it back.
    let before = part_md5.as_ref().map(|_| md5.clone());
    let mut part = part_md5.as_ref().map(|_| Md5Stream::new());
    let mut offset = start;
    let stop = loop {
        match rx.blocking_recv() {
            None => break Stop::Cut,
            Some(Msg::Finish) => break Stop::Finished,
            Some(Msg::Invalid(e)) => break Stop::Invalid(e),
            Some(Msg::Data(chunk)) => {
                // Positional writes: bytes a failed write left past `offset` are overwritten
                // by the next append and cut off at completion.
                if let Err(e) = file.write_all_at(&chunk, offset) {
                    break Stop::Failed(Error::io(e, target.as_str()));
                }
                md5.update(&chunk);
                if let Some(p) = &mut part {
                    p.update(&chunk);
                }
                offset += chunk.len() as u64;
                if let Some(h) = &ctx.handle {
                    h.progress(chunk.len() as u64);
                }
            }
        }
    };
    drop(rx);
    let cut_short = !matches!(stop, Stop::Finished);
    let part_error = match (&part_md5, part) {
        (Some(want), Some(p)) if !cut_short => {
            let got = p.hex();
            (!got.eq_ignore_ascii_case(want)).then(|| {
                Error::new(
                    Code::ChecksumMismatch,
                    format!(
                        "Content-Digest: this request's content has MD5 {got}, not {want}; \
                         it was not kept"
                    ),
                )
            })
        }
        _ => None,
    };
    if let Some(before) = before
        && (cut_short || part_error.is_some())
    {
        md5 = before;
        offset = start;
    }
    let discard = |ctx: TransferCtx, state, md5, error| {
        let _ = files.dir.remove_file(tmp.as_path());
        Outcome::Dropped {
            ctx,
            state,
            md5,
            expected: expected.clone(),
            error,
        }
    };
    let error = match stop {
        Stop::Invalid(e) => return discard(ctx, TransferState::Failed, None, e),
        Stop::Failed(e) => Some(e),
        Stop::Cut => None,
        Stop::Finished => part_error,
    };
    if creation && (cut_short || error.is_some()) {
        // Nobody learnt this upload's id: it cannot be resumed, so keep nothing.
        let (state, error) = match error {
            Some(e) => (TransferState::Failed, e),
            None => (
                TransferState::Cancelled,
                Error::new(
                    Code::Cancelled,
                    "the request creating the upload was cut off; nothing was kept",
                ),
            ),
        };
        return discard(ctx, state, None, error);
    }
    if cut_short || error.is_some() || !complete {
        return Outcome::Parked {
            parked: Parked { file, md5, ctx },
            offset,
            error,
        };
    }
    if let Some(len) = length
        && len != offset
    {
        let e = Error::bad_request(format!(
            "the upload was declared complete at {offset} bytes, but its length is {len}; \
             nothing was written"
        ));
        return discard(ctx, TransferState::Failed, None, e);
    }
    let actual = md5.hex();
    if let Some(exp) = &expected
        && !exp.eq_ignore_ascii_case(&actual)
    {
        let e = Error::new(
            Code::ChecksumMismatch,
            format!(
                "MD5 mismatch: expected {exp}, received bytes have {actual}; nothing was written"
            ),
        );
        return discard(ctx, TransferState::Mismatch, Some(actual), e);
    }
    // Bytes a failed positional write left past the end are cut off before the fsync.
    if let Err(e) = file.set_len(offset).and_then(|_| file.sync_all()) {
        return discard(ctx, TransferState::Failed, None, Error::internal(e));
    }
    match commit_file(&files, file, &target, &tmp, Some(actual.clone())) {
        Ok(done) => Outcome::Stored {
            ctx,
            done,
            expected: expected.clone(),
        },
        Err(e) => discard(ctx, TransferState::Failed, Some(actual), e),
    }
}
