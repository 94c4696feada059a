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
/// How long a connection with nothing to send keeps a big write buffer.
const KEEP_BUFFER: std::time::Duration = std::time::Duration::from_millis(100);

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
    let mut big = false;
    while let Some(first) = next_frame(&mut rx, w.write_buffer_mut(), &mut big, KEEP_BUFFER).await {
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
            big |= w.write_buffer().len() > IDLE_BUFFER;
        }
        if !matches!(timeout(stall, w.flush()).await, Ok(Ok(()))) {
            return;
        }
    }
}

/// The next frame to send. A buffer that a transfer made `big` is kept while frames keep coming
/// (a stream's queue empties between its pieces, and fresh memory for each would be paged in
/// again), and freed once the connection has had nothing to send for `keep`.
async fn next_frame(
    rx: &mut mpsc::Receiver<Frame>,
    buf: &mut bytes::BytesMut,
    big: &mut bool,
    keep: std::time::Duration,
) -> Option<Frame> {
    if let Ok(f) = rx.try_recv() {
        return Some(f);
    }
    if !*big {
        return rx.recv().await;
    }
    match timeout(keep, rx.recv()).await {
        Ok(f) => f,
        Err(_) => {
            // Flushed, so empty; its capacity no longer tells how much memory it holds.
            *buf = bytes::BytesMut::new();
            *big = false;
            rx.recv().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_big_buffer_is_kept_while_frames_come_and_freed_once_idle() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut buf = bytes::BytesMut::with_capacity(1 << 20);
        let mut big = true;
        tx.send(Frame::new(Kind::Data, 1, &b"a"[..])).await.unwrap();
        let f = next_frame(&mut rx, &mut buf, &mut big, KEEP_BUFFER).await;
        assert_eq!(&f.unwrap().payload[..], b"a");
        assert!(big && buf.capacity() >= 1 << 20, "kept while frames come");
        // Nothing for longer than KEEP_BUFFER: freed, and the frame that comes later arrives.
        let later = tokio::spawn(async move {
            tokio::time::sleep(KEEP_BUFFER * 3).await;
            tx.send(Frame::new(Kind::Data, 1, &b"b"[..])).await.unwrap();
        });
        let f = next_frame(&mut rx, &mut buf, &mut big, KEEP_BUFFER).await;
        assert_eq!(&f.unwrap().payload[..], b"b");
        assert!(!big && buf.capacity() == 0, "freed after being idle");
        later.await.unwrap();
    }
}
