//! The disk side of an append: a blocking worker that writes each chunk at its offset, keeps the
//! upload's MD5 state up to date and, when the upload completes, verifies and renames it.

use super::append::Msg;
use super::state::Parked;
use crate::core::checksum::Md5Stream;
use crate::core::error::{Code, Error};
use crate::core::files::Files;
use crate::core::paths::RelPath;
use crate::core::put::{PutDone, commit_file};
use crate::core::registry::TransferState;
use crate::core::transfer::TransferCtx;
use std::os::unix::fs::FileExt;
use tokio::sync::mpsc;

/// One append, as the disk worker runs it.
pub(super) struct Job {
    pub(super) files: Files,
    pub(super) parked: Parked,
    pub(super) start: u64,
    pub(super) creation: bool,
    pub(super) complete: bool,
    pub(super) length: Option<u64>,
    pub(super) expected: Option<String>,
    pub(super) part_md5: Option<String>,
    pub(super) target: RelPath,
    pub(super) tmp: RelPath,
}

/// How an append ended on disk.
pub(super) enum Outcome {
    /// The upload waits, incomplete, at `offset`; `error` is what this append ran into.
    Parked {
        parked: Parked,
        offset: u64,
        error: Option<Error>,
    },
    /// Verified and renamed into place.
    Stored {
        ctx: TransferCtx,
        done: PutDone,
        expected: Option<String>,
    },
    /// Given up; the temp file is already removed.
    Dropped {
        ctx: TransferCtx,
        state: TransferState,
        md5: Option<String>,
        expected: Option<String>,
        error: Error,
    },
}

/// Why the worker stopped taking chunks.
enum Stop {
    Finished,
    Cut,
    Invalid(Error),
    Failed(Error),
}

/// The disk side of one append: writes and hashes each chunk at its offset, then settles.
pub(super) fn run(job: Job, mut rx: mpsc::Receiver<Msg>) -> Outcome {
    let Job {
        files,
        parked,
        start,
        creation,
        complete,
        length,
        expected,
        part_md5,
        target,
        tmp,
    } = job;
    let Parked { file, mut md5, ctx } = parked;
    // With a digest of this request's content, the part is kept only if it matches: remember
    // where it started to take it back.
    let before = part_md5.as_ref().map(|_| md5.clone());
    let mut part = part_md5.as_ref().map(|_| Md5Stream::new());
    let mut offset = start;
    let stop = loop {
        match rx.blocking_recv() {
            None => break Stop::Cut,
            Some(Msg::Finish) => break Stop::Finished,
            Some(Msg::Invalid(e)) => break Stop::Invalid(e),
            Some(Msg::Data(chunk)) => {
                // Positional writes: bytes a failed write left past `offset` are overwritten
                // by the next append and cut off at completion.
                if let Err(e) = file.write_all_at(&chunk, offset) {
                    break Stop::Failed(Error::io(e, target.as_str()));
                }
                md5.update(&chunk);
                if let Some(p) = &mut part {
                    p.update(&chunk);
                }
                offset += chunk.len() as u64;
                if let Some(h) = &ctx.handle {
                    h.progress(chunk.len() as u64);
                }
            }
        }
    };
    drop(rx);
    let cut_short = !matches!(stop, Stop::Finished);
    let part_error = match (&part_md5, part) {
        (Some(want), Some(p)) if !cut_short => {
            let got = p.hex();
            (!got.eq_ignore_ascii_case(want)).then(|| {
                Error::new(
                    Code::ChecksumMismatch,
                    format!(
                        "Content-Digest: this request's content has MD5 {got}, not {want}; \
                         it was not kept"
                    ),
                )
            })
        }
        _ => None,
    };
    if let Some(before) = before
        && (cut_short || part_error.is_some())
    {
        md5 = before;
        offset = start;
    }
    let discard = |ctx: TransferCtx, state, md5, error| {
        let _ = files.dir.remove_file(tmp.as_path());
        Outcome::Dropped {
            ctx,
            state,
            md5,
            expected: expected.clone(),
            error,
        }
    };
    let error = match stop {
        Stop::Invalid(e) => return discard(ctx, TransferState::Failed, None, e),
        Stop::Failed(e) => Some(e),
        Stop::Cut => None,
        Stop::Finished => part_error,
    };
    if creation && (cut_short || error.is_some()) {
        // Nobody learnt this upload's id: it cannot be resumed, so keep nothing.
        let (state, error) = match error {
            Some(e) => (TransferState::Failed, e),
            None => (
                TransferState::Cancelled,
                Error::new(
                    Code::Cancelled,
                    "the request creating the upload was cut off; nothing was kept",
                ),
            ),
        };
        return discard(ctx, state, None, error);
    }
    if cut_short || error.is_some() || !complete {
        return Outcome::Parked {
            parked: Parked { file, md5, ctx },
            offset,
            error,
        };
    }
    if let Some(len) = length
        && len != offset
    {
        let e = Error::bad_request(format!(
            "the upload was declared complete at {offset} bytes, but its length is {len}; \
             nothing was written"
        ));
        return discard(ctx, TransferState::Failed, None, e);
    }
    let actual = md5.hex();
    if let Some(exp) = &expected
        && !exp.eq_ignore_ascii_case(&actual)
    {
        let e = Error::new(
            Code::ChecksumMismatch,
            format!(
                "MD5 mismatch: expected {exp}, received bytes have {actual}; nothing was written"
            ),
        );
        return discard(ctx, TransferState::Mismatch, Some(actual), e);
    }
    // Bytes a failed positional write left past the end are cut off before the fsync.
    if let Err(e) = file.set_len(offset).and_then(|_| file.sync_all()) {
        return discard(ctx, TransferState::Failed, None, Error::internal(e));
    }
    match commit_file(&files, file, &target, &tmp, Some(actual.clone())) {
        Ok(done) => Outcome::Stored {
            ctx,
            done,
            expected: expected.clone(),
        },
        Err(e) => discard(ctx, TransferState::Failed, Some(actual), e),
    }
}
