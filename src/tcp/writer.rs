//! The writing side of a TCP connection: queued frames out to the socket, with a stall limit.

use super::codec::{Frame, FrameCodec, HEADER_LEN, Kind};
use crate::core::registry::SessionCounters;
use futures_util::SinkExt;
use std::sync::Arc;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::FramedWrite;

/// An idle connection keeps buffers no larger than this; bigger ones (left by a transfer) are freed.
const IDLE_BUFFER: usize = 16 * 1024;

/// Frees a buffer that grew during a transfer once it is empty again.
pub(super) fn shrink(buf: &mut bytes::BytesMut) {
    if buf.is_empty() && buf.capacity() > IDLE_BUFFER {
        *buf = bytes::BytesMut::new();
    }
}

/// Sends queued frames until the queue closes. A peer that takes none of our bytes for `stall`
/// (the idle timeout) is gone or stopped reading what it was granted: the writer gives up, and
/// the connection ends.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: FramedWrite<W, FrameCodec>,
    mut rx: mpsc::Receiver<Frame>,
    counters: Arc<SessionCounters>,
    stall: std::time::Duration,
) {
    // A connection-level error is the last frame sent. The socket stays open (later frames are
    // discarded) until every stream has settled, so a peer that sees the close knows that
    // nothing of its session is still running or half-written.
    let mut closing = false;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(f) = next.take().or_else(|| rx.try_recv().ok()) {
            if closing {
                continue;
            }
            closing = f.stream == 0 && f.kind == Kind::Error;
            let n = (4 + HEADER_LEN + f.payload.len()) as u64;
            counters.add_out(n);
            if !matches!(timeout(stall, w.feed(f)).await, Ok(Ok(()))) {
                return;
            }
        }
        if !matches!(timeout(stall, w.flush()).await, Ok(Ok(()))) {
            return;
        }
        if rx.is_empty() {
            shrink(w.write_buffer_mut());
        }
    }
}
