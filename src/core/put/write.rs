//! The disk side of an upload: written on one thread (through a [`FileWriter`]: past 8 MiB
//! straight to the disk), hashed on another; checked for size and MD5, then fsynced.

use super::Commit;
use crate::core::checksum::{Md5Stream, Md5Thread};
use crate::core::direct::FileWriter;
use crate::core::error::{Code, Error, Result};
use bytes::Bytes;
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// Hashes on one thread while writing on this one; checks size and MD5; fsyncs. Returns the MD5
/// of the received bytes whenever all of them arrived.
pub(super) fn write_and_verify(
    file: std::fs::File,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
    size: Option<u64>,
    expected: Option<&str>,
    commit: &Commit,
) -> (Result<std::fs::File>, Option<String>) {
    let mut hasher = Md5Thread::start(Md5Stream::new());
    let mut out = match FileWriter::new(file) {
        Ok(out) => out,
        Err(e) => return (Err(Error::internal(e)), None),
    };
    let mut written = 0u64;
    // Batches handed to the hashing thread and not yet written, oldest first, with their bytes.
    let mut ahead: VecDeque<(Vec<Bytes>, u64)> = VecDeque::new();
    let mut ahead_bytes = 0u64;
    // A batch taken from the queue that did not fit in the previous one.
    let mut carried: Option<Vec<Bytes>> = None;
    loop {
        // What is queued goes to the hashing thread before the disk gets the oldest of it: a
        // write that stalls (a fresh page of a file in memory can be a fault on the host of a
        // virtual machine) then leaves the hashing busy with what came meanwhile, up to `AHEAD`.
        while ahead_bytes < AHEAD {
            let next = match carried.take() {
                Some(b) => Some(b),
                // Wait only when nothing is left to write.
                None if ahead.is_empty() => rx.blocking_recv(),
                None => rx.try_recv().ok(),
            };
            // Nothing queued now, or (having waited) the sender is gone.
            let Some(mut batch) = next else { break };
            // Whatever else is already queued goes into the same write and the same hand-over
            // to the hashing thread, up to `BATCH`: each wake-up of a thread moves as much as
            // it can.
            let mut n = bytes_in(&batch);
            while n < BATCH && batch.len() < BATCH_PIECES {
                let Ok(more) = rx.try_recv() else { break };
                let m = bytes_in(&more);
                if n + m > BATCH {
                    carried = Some(more);
                    break;
                }
                n += m;
                batch.extend(more);
            }
            hasher.update_batch(batch.clone());
            ahead.push_back((batch, n));
            ahead_bytes += n;
        }
        // Nothing left to write, and nothing more will come.
        let Some((batch, n)) = ahead.pop_front() else {
            break;
        };
        ahead_bytes -= n;
        if let Err(e) = out.write_batch(&batch) {
            return (Err(Error::internal(e)), None);
        }
        written += n;
    }
    let file = match out.finish() {
        Ok(f) => f,
        Err(e) => return (Err(Error::internal(e)), None),
    };
    let Some(md5) = hasher.finish() else {
        return (Err(Error::internal("hasher panicked")), None);
    };
    let expected = match commit.expected(expected) {
        Ok(e) => e,
        Err(e) => return (Err(e), None),
    };
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

/// Bytes the disk thread writes and hands to the hashing thread at once, at most (unless one
/// batch from the queue is larger by itself).
const BATCH: u64 = 1 << 20;

/// Bytes handed to the hashing thread ahead of the disk, at most (beyond one batch).
const AHEAD: u64 = 4 << 20;

/// Bytes in a batch.
fn bytes_in(batch: &[Bytes]) -> u64 {
    batch.iter().map(|c| c.len() as u64).sum()
}

/// Pieces in one batch, at most (one `writev` takes at most 1024).
const BATCH_PIECES: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches of every size, more than `AHEAD` in all and some bigger than `BATCH`, are
    /// written whole and in order, and hashed in the same order.
    #[test]
    fn every_batch_is_written_and_hashed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let sizes = [1usize, 4096, 300 << 10, 7, 2 << 20, 65536, 1 << 20, 13];
        let mut all = Vec::new();
        let mut batches = Vec::new();
        for (i, n) in sizes.iter().cycle().take(40).enumerate() {
            let piece: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
            all.extend_from_slice(&piece);
            batches.push(vec![Bytes::from(piece)]);
        }
        assert!(all.len() as u64 > 2 * AHEAD);
        let (tx, rx) = mpsc::channel(2);
        let sender = std::thread::spawn(move || {
            for b in batches {
                tx.blocking_send(b).unwrap();
            }
        });
        // The request side saw every byte.
        let commit = Commit::default();
        commit.done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (file, md5) = write_and_verify(file, rx, Some(all.len() as u64), None, &commit);
        sender.join().unwrap();
        file.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), all);
        let mut want = Md5Stream::new();
        want.update(&all);
        assert_eq!(md5.unwrap(), want.hex());
    }
}
