//! The disk side of an upload: written on one thread (through a [`FileWriter`]: past 8 MiB
//! straight to the disk), hashed on another; checked for size and MD5, then fsynced.

use super::Commit;
use crate::core::checksum::{Md5Stream, Md5Thread};
use crate::core::direct::FileWriter;
use crate::core::error::{Code, Error, Result};
use bytes::Bytes;
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
    // A batch taken from the queue that did not fit in the previous write.
    let mut carried: Option<Vec<Bytes>> = None;
    while let Some(mut batch) = carried.take().or_else(|| rx.blocking_recv()) {
        // Whatever else is already queued goes into the same write and the same hand-over to
        // the hashing thread, up to `BATCH`: each wake-up of a thread moves as much as it can.
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
        // Hashed while it is written.
        hasher.update_batch(batch.clone());
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

/// Bytes in a batch.
fn bytes_in(batch: &[Bytes]) -> u64 {
    batch.iter().map(|c| c.len() as u64).sum()
}

/// Pieces in one batch, at most (one `writev` takes at most 1024).
const BATCH_PIECES: usize = 256;
