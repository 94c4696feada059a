//! The writing side of a TCP connection: queued frames out to the socket, with a stall limit.

use super::codec::{self, Frame, FrameCodec, HEADER_LEN, Kind};
use crate::core::registry::SessionCounters;
use futures_util::SinkExt;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep, timeout};
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
    let mut keep = Keep::default();
    while let Some(first) = next_frame(&mut rx, w.write_buffer_mut(), &mut keep).await {
        let mut next = Some(first);
        while let Some(f) = next.take().or_else(|| rx.try_recv().ok()) {
            if closing {
                continue;
            }
            closing = f.stream == 0 && f.kind == Kind::Error;
            let n = (4 + HEADER_LEN + f.payload.len()) as u64;
            counters.add_out(n);
            if !matches!(timeout(stall, codec::feed(&mut w, f)).await, Ok(Ok(()))) {
                return;
            }
            if keep.idle.is_none() && w.write_buffer().len() > IDLE_BUFFER {
                keep.idle = Some(Box::pin(tokio::time::sleep(KEEP_BUFFER)));
            }
        }
        if !matches!(timeout(stall, w.flush()).await, Ok(Ok(()))) {
            return;
        }
    }
}

/// When a write buffer that a transfer made big is freed: once the connection has had nothing
/// to send for [`KEEP_BUFFER`]. A stream's queue empties between its pieces, and fresh memory
/// for each would be paged in again.
struct Keep {
    /// Set while the buffer is big; moved on at most once per [`KEEP_BUFFER`], not per frame.
    idle: Option<Pin<Box<Sleep>>>,
    /// When the last frames were taken to be sent.
    last: Instant,
}

impl Default for Keep {
    fn default() -> Self {
        Keep {
            idle: None,
            last: Instant::now(),
        }
    }
}

/// The next frame to send; frees a big buffer (flushed, so empty) once `keep` says it is idle.
async fn next_frame(
    rx: &mut mpsc::Receiver<Frame>,
    buf: &mut bytes::BytesMut,
    keep: &mut Keep,
) -> Option<Frame> {
    let f = match rx.try_recv() {
        Ok(f) => Some(f),
        Err(_) => wait_frame(rx, buf, keep).await,
    };
    keep.last = Instant::now();
    f
}

async fn wait_frame(
    rx: &mut mpsc::Receiver<Frame>,
    buf: &mut bytes::BytesMut,
    keep: &mut Keep,
) -> Option<Frame> {
    if let Some(idle) = keep.idle.as_mut() {
        loop {
            tokio::select! {
                f = rx.recv() => return f,
                _ = idle.as_mut() => {
                    let quiet = keep.last + KEEP_BUFFER;
                    if Instant::now() >= quiet {
                        break;
                    }
                    idle.as_mut().reset(quiet);
                }
            }
        }
        *buf = bytes::BytesMut::new();
        keep.idle = None;
    }
    rx.recv().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_big_buffer_is_kept_while_frames_come_and_freed_once_idle() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut buf = bytes::BytesMut::with_capacity(1 << 20);
        let mut keep = Keep {
            idle: Some(Box::pin(tokio::time::sleep(KEEP_BUFFER))),
            last: Instant::now(),
        };
        // Frames a little apart, over three times KEEP_BUFFER in all: the buffer stays.
        let sender = tokio::spawn(async move {
            for b in [&b"a"[..], b"b", b"c", b"d", b"e", b"f", b"g"] {
                tokio::time::sleep(KEEP_BUFFER / 2).await;
                tx.send(Frame::new(Kind::Data, 1, b)).await.unwrap();
            }
            // Then nothing for longer than KEEP_BUFFER before the last frame.
            tokio::time::sleep(KEEP_BUFFER * 3).await;
            tx.send(Frame::new(Kind::Data, 1, &b"z"[..])).await.unwrap();
        });
        for want in [b"a", b"b", b"c", b"d", b"e", b"f", b"g"] {
            let f = next_frame(&mut rx, &mut buf, &mut keep).await.unwrap();
            assert_eq!(&f.payload[..], want);
            assert!(buf.capacity() >= 1 << 20, "kept while frames come");
        }
        let f = next_frame(&mut rx, &mut buf, &mut keep).await.unwrap();
        assert_eq!(&f.payload[..], b"z", "the frame after the pause arrives");
        assert!(
            keep.idle.is_none() && buf.capacity() == 0,
            "freed once idle"
        );
        sender.await.unwrap();
    }
}
