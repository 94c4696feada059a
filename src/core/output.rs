//! Reading a command's pipes under its output cap.

use crate::core::exec::ExecOutput;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Notify, mpsc};

/// The output budget of one command, shared by its stdout and stderr readers.
pub(crate) struct OutputCap {
    pub(crate) max: u64,
    pub(crate) used: AtomicU64,
    pub(crate) truncated: AtomicBool,
    pub(crate) hit: Notify,
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
        match pipe.read_buf(&mut buf).await {
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
            }
        }
    }
}
