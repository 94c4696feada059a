//! The disk side of an upload: written on one thread, hashed on another, flushed to disk on a
//! third while it arrives; checked for size and MD5, then fsynced.

use crate::core::checksum::Md5Stream;
use crate::core::error::{Code, Error, Result};
use crate::core::transfer::QUEUE;
use bytes::Bytes;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;

/// Hashes on one thread while writing on this one; checks size and MD5; fsyncs. Returns the MD5
/// of the received bytes whenever all of them arrived.
pub(super) fn write_and_verify(
    file: std::fs::File,
    mut rx: mpsc::Receiver<Bytes>,
    size: Option<u64>,
    expected: Option<&str>,
    commit: &AtomicBool,
) -> (Result<std::fs::File>, Option<String>) {
    let (htx, hrx) = std::sync::mpsc::sync_channel::<Bytes>(QUEUE * 2);
    let hasher = std::thread::spawn(move || {
        let mut md5 = Md5Stream::new();
        for chunk in hrx {
            md5.update(&chunk);
        }
        md5
    });
    // Started at the first 32 MiB only: most uploads never need it.
    let mut flusher: Option<Flusher> = None;
    let mut file = file;
    let mut written = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        let _ = htx.send(chunk.clone());
        if let Err(e) = file.write_all(&chunk) {
            return (Err(Error::internal(e)), None);
        }
        let before = written;
        written += chunk.len() as u64;
        if before / FLUSH_EVERY != written / FLUSH_EVERY {
            flusher.get_or_insert_with(|| Flusher::start(&file)).nudge();
        }
    }
    drop(htx);
    if let Some(f) = flusher {
        f.stop();
    }
    let Ok(md5) = hasher.join() else {
        return (Err(Error::internal("hasher panicked")), None);
    };
    if !commit.load(Ordering::SeqCst) {
        return (Err(Error::new(Code::Cancelled, "upload abandoned")), None);
    }
    if let Some(size) = size
        && written != size
    {
        let e = Error::bad_request(format!("upload ended after {written} of {size} bytes"));
        return (Err(e), None);
    }
    let actual = md5.hex();
    if let Some(exp) = expected
        && !exp.eq_ignore_ascii_case(&actual)
    {
        let e = Error::new(
            Code::ChecksumMismatch,
            format!(
                "MD5 mismatch: expected {exp}, received bytes have {actual}; nothing was written"
            ),
        );
        return (Err(e), Some(actual));
    }
    let r = file.sync_all().map(|_| file).map_err(Error::internal);
    (r, Some(actual))
}

/// Bytes written between two nudges of the [`Flusher`].
const FLUSH_EVERY: u64 = 32 << 20;

/// Writes a big upload's data to disk while it arrives (fdatasync on a thread of its own), so
/// the fsync before the rename waits only for the last part instead of the whole file.
struct Flusher {
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    /// A flusher of `file` (through a second handle); does nothing if that handle fails.
    fn start(file: &std::fs::File) -> Flusher {
        let Ok(handle) = file.try_clone() else {
            return Flusher {
                tx: None,
                thread: None,
            };
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::spawn(move || {
            for () in rx {
                let _ = handle.sync_data();
            }
        });
        Flusher {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Asks for a flush; skipped when one is already pending.
    fn nudge(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(());
        }
    }

    /// Waits for the flush in progress, if any.
    fn stop(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
