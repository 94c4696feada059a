//! Written data pushed to disk while a big file is still arriving, so that the fsync before it
//! is renamed into place waits only for the last part.

use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;

/// Bytes written between two background flushes.
const FLUSH_EVERY: u64 = 32 << 20;

/// Flushes a file being written (fdatasync on a thread of its own) every 32 MiB; the thread
/// starts at the first 32 MiB only, as most files never need it.
#[derive(Default)]
pub struct Flusher {
    thread: Option<(SyncSender<()>, JoinHandle<()>)>,
    written: u64,
}

impl Flusher {
    /// Counts `n` more bytes written to `file`, and asks for a flush at each 32 MiB (skipped
    /// while one is pending). Does nothing if a second handle of the file cannot be had.
    pub fn wrote(&mut self, file: &std::fs::File, n: u64) {
        let before = self.written;
        self.written += n;
        if before / FLUSH_EVERY == self.written / FLUSH_EVERY {
            return;
        }
        if self.thread.is_none() {
            let Ok(handle) = file.try_clone() else {
                return;
            };
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let spawned = std::thread::Builder::new()
                .name("ferry-flush".into())
                .spawn(move || {
                    for () in rx {
                        let _ = handle.sync_data();
                    }
                });
            // Without a thread to spare, the final fsync does all the work, as it would anyway.
            let Ok(thread) = spawned else {
                return;
            };
            self.thread = Some((tx, thread));
        }
        if let Some((tx, _)) = &self.thread {
            let _ = tx.try_send(());
        }
    }
}

/// Dropping it waits for the flush in progress, and the one asked for after it, if any.
impl Drop for Flusher {
    fn drop(&mut self) {
        if let Some((tx, thread)) = self.thread.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}
