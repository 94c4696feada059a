//! Reading a command's pipes under its output cap.

use crate::core::exec::ExecOutput;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::unix::pipe;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// How long output may go without progress after the command's group is gone.
const DRAIN: Duration = Duration::from_millis(500);
/// Most bytes read after the command's group is gone: more can only come from a process that
/// left the group (its pipes hold at most 64 KiB each).
const AFTER_EXIT_MAX: u64 = 1 << 20;
/// Room made for each read of a pipe: all that a default pipe holds.
const PIPE_READ: usize = 64 * 1024;

/// The output budget of one command, shared by its stdout and stderr readers.
pub(crate) struct OutputCap {
    pub(crate) max: u64,
    pub(crate) used: AtomicU64,
    pub(crate) truncated: AtomicBool,
    pub(crate) hit: Notify,
    /// Counts reads and deliveries, so a drain can tell a slow reader from a stuck pipe.
    pub(crate) progress: AtomicU64,
    /// Bytes read from both pipes.
    pub(crate) read: AtomicU64,
    /// Readers waiting for the consumer to take output (a slow client, not a stuck pipe).
    pub(crate) sending: AtomicU64,
}

impl OutputCap {
    /// A fresh budget of `max` bytes, nothing read yet.
    pub(crate) fn new(max: u64) -> Self {
        OutputCap {
            max,
            used: AtomicU64::new(0),
            truncated: AtomicBool::new(false),
            hit: Notify::new(),
            progress: AtomicU64::new(0),
            read: AtomicU64::new(0),
            sending: AtomicU64::new(0),
        }
    }
}

/// Forwards one pipe's output until EOF, cutting it at the cap (and then discarding the rest).
pub(crate) async fn pump(
    pipe: pipe::Receiver,
    tx: mpsc::Sender<ExecOutput>,
    cap: Arc<OutputCap>,
    wrap: fn(Bytes) -> ExecOutput,
) {
    // One buffer for the whole command: a piece is split off it, and once the pieces sent
    // before are gone its memory is used again, so that streaming output does not touch fresh
    // pages on every read. Memory is taken only once the pipe has something to read.
    let mut buf = BytesMut::new();
    loop {
        let read = match pipe.readable().await {
            Ok(()) => {
                buf.reserve(PIPE_READ);
                match pipe.try_read_buf(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    r => r,
                }
            }
            Err(e) => Err(e),
        };
        cap.progress.fetch_add(1, Ordering::Relaxed);
        if let Ok(n) = read {
            cap.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) if cap.truncated.load(Ordering::Relaxed) => {
                buf.clear();
                continue;
            }
            Ok(n) => {
                let before = cap.used.fetch_add(n as u64, Ordering::Relaxed);
                let room = cap.max.saturating_sub(before);
                if (n as u64) > room {
                    let mut piece = buf.split();
                    piece.truncate(room as usize);
                    if !cap.truncated.swap(true, Ordering::Relaxed) {
                        cap.hit.notify_one();
                    }
                    if !piece.is_empty() {
                        send(&tx, &cap, wrap(piece.freeze())).await;
                    }
                    // Keep the pipe open (reading and discarding) until the group is killed, so the
                    // command ends by our SIGKILL, not by a SIGPIPE race.
                    continue;
                }
                if !send(&tx, &cap, wrap(buf.split().freeze())).await {
                    return;
                }
                cap.progress.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Hands a piece to the consumer, counted in `sending` while it waits for room (so that a drain
/// sees a slow client, not a stuck pipe); false once the consumer is gone.
async fn send(tx: &mpsc::Sender<ExecOutput>, cap: &OutputCap, piece: ExecOutput) -> bool {
    cap.sending.fetch_add(1, Ordering::Relaxed);
    let sent = tx.send(piece).await.is_ok();
    cap.sending.fetch_sub(1, Ordering::Relaxed);
    sent
}

/// Waits for a command's pipe readers once its group is dead. Its pipes then close at once,
/// but a process that left the group (setsid) may still hold them: a reader whose pipe gives
/// nothing for [`DRAIN`] is stopped, and so are both once more than [`AFTER_EXIT_MAX`] bytes
/// came after the exit (then the output is marked truncated), so the command always ends. A
/// reader waiting for a slow client is waited for: the transport ends that wait if the client
/// goes away.
pub(crate) async fn drain(readers: [Option<JoinHandle<()>>; 2], cap: &OutputCap) {
    let base = cap.read.load(Ordering::Relaxed);
    for mut r in readers.into_iter().flatten() {
        loop {
            let seen = cap.progress.load(Ordering::Relaxed);
            tokio::select! {
                _ = &mut r => break,
                _ = tokio::time::sleep(DRAIN) => {
                    if cap.read.load(Ordering::Relaxed) - base > AFTER_EXIT_MAX {
                        cap.truncated.store(true, Ordering::Relaxed);
                        r.abort();
                        break;
                    }
                    let stuck = cap.progress.load(Ordering::Relaxed) == seen
                        && cap.sending.load(Ordering::Relaxed) == 0;
                    if stuck {
                        r.abort();
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{OutputCap, drain, pump};
    use crate::core::exec::ExecOutput;
    use bytes::Bytes;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    use tokio::net::unix::pipe;
    use tokio::sync::mpsc;

    /// The piece cut at the output cap reaches a client too slow to take it at once: the drain
    /// after the command's end waits for it (as for any piece waiting for room), it does not
    /// take the reader for a stuck pipe and drop the piece.
    #[tokio::test(start_paused = true)]
    async fn the_piece_cut_at_the_cap_waits_for_a_slow_client() {
        let (read_end, write_end) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&write_end, &[7u8; 1000]).unwrap();
        drop(write_end);
        let cap = Arc::new(OutputCap::new(600));
        // The client has taken nothing yet: the channel is full before the pipe is read.
        let (tx, mut rx) = mpsc::channel(1);
        tx.send(ExecOutput::Stdout(Bytes::from_static(b"earlier")))
            .await
            .unwrap();
        let receiver = pipe::Receiver::from_owned_fd(read_end).unwrap();
        let reader = tokio::spawn(pump(receiver, tx, cap.clone(), ExecOutput::Stdout));
        // The cap is marked in the same poll that starts sending the cut piece, which then
        // waits: the test runs on one thread.
        while !cap.truncated.load(Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
        let draining = tokio::spawn({
            let cap = cap.clone();
            async move { drain([Some(reader), None], &cap).await }
        });
        // Far past the drain's patience for a pipe that gives nothing.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut got = Vec::new();
        while let Some(ExecOutput::Stdout(b)) = rx.recv().await {
            got.push(b);
        }
        draining.await.unwrap();
        assert_eq!(got.len(), 2, "the cut piece was dropped");
        assert_eq!(&got[1][..], &[7u8; 600][..]);
    }
}
