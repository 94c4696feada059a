//! The handle a transport feeds one request's data through, and the settling of each append:
//! the upload parked again at its new offset, stored, or dropped.

use super::disk::{Job, Outcome, run};
use super::state::{Slot, Upload, forget_oldest_done};
use super::{UploadInfo, Uploads};
use crate::core::error::{Code, Error, Result};
use crate::core::registry::TransferState;
use crate::core::transfer::QUEUE;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// One request's data on its way into an upload: `write` chunks, then `finish` when the content
/// ended normally or `interrupt` when it was cut off. Dropping it counts as `interrupt`.
pub struct Append {
    id: String,
    tx: Option<mpsc::Sender<Msg>>,
    done: Option<oneshot::Receiver<Result<UploadInfo>>>,
    stop: CancellationToken,
    next: u64,
    length: Option<u64>,
    max: u64,
}

/// What the transport side tells the disk worker.
pub(super) enum Msg {
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
        let over = match self.length {
            Some(len) if self.next + n > len => Some(Error::bad_request(format!(
                "more data than the upload's length of {len} bytes; the upload is dropped"
            ))),
            _ if self.next + n > self.max => Some(Error::new(
                Code::TooLarge,
                format!(
                    "the upload would exceed the server's limit of {} bytes; it is dropped",
                    self.max
                ),
            )),
            _ => None,
        };
        if let Some(e) = over {
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

impl Uploads {
    /// Runs `job` on the disk worker; the returned handle feeds it and learns how it settled.
    pub(super) fn start(
        &self,
        id: String,
        job: Job,
        stop: CancellationToken,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Append {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        let (start, length) = (job.start, job.length);
        // The append settles here even if the transport drops its end mid-request: the bytes
        // handed over are written and the upload is parked again (or dropped, or stored).
        let this = self.clone();
        let id2 = id.clone();
        tokio::spawn(async move {
            let outcome = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                run(job, rx)
            })
            .await;
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
            max: self.inner.max_size,
        }
    }

    /// Applies how an append ended to the registry, once the disk worker is done.
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
                let (settled, result) = {
                    let mut map = self.inner.map.lock().unwrap();
                    // Read under the lock: `close` sets the flag before it takes the lock to drop
                    // the idle uploads, so either it sees this one idle or this sees the flag.
                    let closed = self.inner.closed.load(Ordering::SeqCst);
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
                ctx.record(
                    "put",
                    TransferState::Verified,
                    Some(done.md5.into()),
                    expected.map(Into::into),
                )
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
                ctx.record("put", state, md5.map(Into::into), expected.map(Into::into))
                    .await;
                if let Some(s) = settled.flatten() {
                    s.cancel();
                }
                tracing::info!(upload = %id, reason = %error, "upload dropped");
                Err(error)
            }
        }
    }
}
