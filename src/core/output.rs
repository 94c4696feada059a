//! Reading a command's pipes under its output cap.

use crate::core::exec::ExecOutput;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// How long output may go without progress after the command's group is gone.
const DRAIN: Duration = Duration::from_millis(500);
/// The longest output may drain after the command's group is gone, progress or not.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// The output budget of one command, shared by its stdout and stderr readers.
pub(crate) struct OutputCap {
    pub(crate) max: u64,
    pub(crate) used: AtomicU64,
    pub(crate) truncated: AtomicBool,
    pub(crate) hit: Notify,
    /// Counts reads and deliveries, so a drain can tell a slow reader from a stuck pipe.
    pub(crate) progress: AtomicU64,
}

/// Forwards one pipe's output until EOF, cutting it at the cap (and then discarding the rest).
pub(crate) async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    tx: mpsc::Sender<ExecOutput>,
    cap: Arc<OutputCap>,
    wrap: fn(Bytes) -> ExecOutput,
) {
    loop {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let read = pipe.read_buf(&mut buf).await;
        cap.progress.fetch_add(1, Ordering::Relaxed);
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) if cap.truncated.load(Ordering::Relaxed) => continue,
            Ok(n) => {
                let before = cap.used.fetch_add(n as u64, Ordering::Relaxed);
                let room = cap.max.saturating_sub(before);
                if (n as u64) > room {
                    buf.truncate(room as usize);
                    if !cap.truncated.swap(true, Ordering::Relaxed) {
                        cap.hit.notify_one();
                    }
                    if !buf.is_empty() {
                        let _ = tx.send(wrap(buf.freeze())).await;
                    }
                    // Keep the pipe open (reading and discarding) until the group is killed, so the
                    // command ends by our SIGKILL, not by a SIGPIPE race.
                    continue;
                }
                if tx.send(wrap(buf.freeze())).await.is_err() {
                    return;
                }
                cap.progress.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits for a command's pipe readers once its group is dead. Its pipes then close at once,
/// but a process that left the group (setsid) may still hold them: a reader that makes no
/// progress for [`DRAIN`] is stopped, so the output channel closes and the command always
/// ends. One still reading or delivering (a busy server) is waited for, up to [`DRAIN_MAX`],
/// a bound an outside writer cannot stretch.
pub(crate) async fn drain(readers: [Option<JoinHandle<()>>; 2], cap: &OutputCap) {
    let bound = tokio::time::sleep(DRAIN_MAX);
    tokio::pin!(bound);
    for mut r in readers.into_iter().flatten() {
        loop {
            let seen = cap.progress.load(Ordering::Relaxed);
            tokio::select! {
                _ = &mut r => break,
                _ = &mut bound => {
                    r.abort();
                    break;
                }
                _ = tokio::time::sleep(DRAIN) => {
                    if cap.progress.load(Ordering::Relaxed) == seen {
                        r.abort();
                        break;
                    }
                }
            }
        }
    }
}
