//! The disk side of an upload: written on one thread, hashed on another, flushed to disk on a
//! third while it arrives; checked for size and MD5, then fsynced.

use super::Commit;
use crate::core::checksum::{Md5Stream, Md5Thread};
use crate::core::error::{Code, Error, Result};
use crate::core::flush::Flusher;
use bytes::Bytes;
use std::io::Write;
use tokio::sync::mpsc;

/// Hashes on one thread while writing on this one; checks size and MD5; fsyncs. Returns the MD5
/// of the received bytes whenever all of them arrived.
pub(super) fn write_and_verify(
    file: std::fs::File,
    mut rx: mpsc::Receiver<Bytes>,
    size: Option<u64>,
    expected: Option<&str>,
    commit: &Commit,
) -> (Result<std::fs::File>, Option<String>) {
    let mut hasher = Md5Thread::start(Md5Stream::new());
    let mut flusher = Flusher::default();
    let mut file = file;
    let mut written = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        let n = chunk.len() as u64;
        hasher.update(chunk.clone());
        if let Err(e) = file.write_all(&chunk) {
            flusher.stop();
            return (Err(Error::internal(e)), None);
        }
        written += n;
        flusher.wrote(&file, n);
    }
    flusher.stop();
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
