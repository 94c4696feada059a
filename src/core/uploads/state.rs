//! What the registry keeps per upload, and the checks a request's declarations go through.

use super::{Declared, UploadInfo};
use crate::core::audit::Actor;
use crate::core::checksum::{Md5Stream, is_md5_hex};
use crate::core::error::{Code, Error, Result};
use crate::core::paths::RelPath;
use crate::core::put::PutDone;
use crate::core::registry::visible;
use crate::core::transfer::TransferCtx;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most completed uploads remembered (for a client that missed the final answer); the oldest go.
pub(super) const MAX_DONE: usize = 1024;

/// One upload the registry knows.
pub(super) struct Upload {
    /// The token's name that created it: only it (or an admin) may go on with it.
    pub(super) owner: String,
    pub(super) target: RelPath,
    pub(super) tmp: RelPath,
    /// Bytes acknowledged: what settled appends kept. A running append moves it when it settles,
    /// so a reported offset never has to be taken back.
    pub(super) offset: u64,
    pub(super) length: Option<u64>,
    pub(super) expected: Option<String>,
    pub(super) touched: Instant,
    pub(super) slot: Slot,
}

/// Where an upload stands: idle, with an append running, or complete.
pub(super) enum Slot {
    /// Waiting for the next append.
    Idle(Box<Parked>),
    /// An append runs; `stop` asks it to end, `settled` fires once it has.
    Busy {
        stop: CancellationToken,
        settled: CancellationToken,
    },
    /// Complete, stored and remembered for a while.
    Done(PutDone),
}

/// What an idle upload holds: its temp file, the MD5 state of the bytes in it, its transfer.
pub(super) struct Parked {
    pub(super) file: std::fs::File,
    pub(super) md5: Md5Stream,
    pub(super) ctx: TransferCtx,
}

impl Upload {
    /// What a client can learn about this upload, known as `id`.
    pub(super) fn info(&self, id: &str, expiry: Duration) -> UploadInfo {
        let stored = match &self.slot {
            Slot::Done(d) => Some(d.clone()),
            _ => None,
        };
        UploadInfo {
            id: id.to_string(),
            path: self.target.as_str().to_string(),
            offset: self.offset,
            length: self.length,
            complete: stored.is_some(),
            expires_in: expiry.saturating_sub(self.touched.elapsed()).as_secs(),
            stored,
        }
    }
}

/// The error for an id the registry does not know (any more).
pub(super) fn gone() -> Error {
    Error::new(
        Code::NotFound,
        "no such upload (it was completed long ago, cancelled, failed or expired)",
    )
}

/// The upload `id` as `actor` may see it, or [`gone`].
pub(super) fn find<'a>(
    map: &'a mut HashMap<String, Upload>,
    id: &str,
    actor: &Actor,
) -> Result<&'a mut Upload> {
    map.get_mut(id)
        .filter(|u| visible(&actor.principal, &u.owner))
        .ok_or_else(gone)
}

/// The error for an append whose offset is not the upload's.
pub(super) fn offset_conflict(offset: u64, current: u64) -> Error {
    Error::new(
        Code::Conflict,
        format!("Upload-Offset {offset} does not match the upload's offset {current}"),
    )
}

/// The whole length implied by a request that starts at `offset`, checked against `known`.
pub(super) fn length_of(offset: u64, known: Option<u64>, d: &Declared) -> Result<Option<u64>> {
    let by_content = d
        .complete
        .then_some(d.content_length)
        .flatten()
        .map(|n| offset.saturating_add(n));
    let mut length = known;
    for l in [d.length, by_content].into_iter().flatten() {
        match length {
            Some(k) if k != l => {
                return Err(Error::bad_request(format!(
                    "inconsistent upload length: {k} bytes stated before, {l} now"
                )));
            }
            _ => length = Some(l),
        }
    }
    if let Some(l) = length
        && l < offset
    {
        return Err(Error::bad_request(format!(
            "inconsistent upload length: {l} bytes, but {offset} are already stored"
        )));
    }
    Ok(length)
}

/// Checks that stated MD5s are hex and that the whole file's agrees with the `known` one.
pub(super) fn check_md5s(known: Option<&str>, d: &Declared) -> Result<()> {
    for m in [&d.md5, &d.part_md5].into_iter().flatten() {
        if !is_md5_hex(m) {
            return Err(Error::bad_request("an MD5 must be 32 hex digits"));
        }
    }
    if let (Some(k), Some(m)) = (known, &d.md5)
        && !k.eq_ignore_ascii_case(m)
    {
        return Err(Error::bad_request(format!(
            "the file's MD5 {m} disagrees with the {k} stated before"
        )));
    }
    Ok(())
}

/// Forgets the oldest completed uploads beyond [`MAX_DONE`].
pub(super) fn forget_oldest_done(map: &mut HashMap<String, Upload>) {
    let mut done: Vec<(Instant, String)> = map
        .iter()
        .filter(|(_, u)| matches!(u.slot, Slot::Done(_)))
        .map(|(id, u)| (u.touched, id.clone()))
        .collect();
    if done.len() > MAX_DONE {
        done.sort();
        for (_, id) in done.iter().take(done.len() - MAX_DONE) {
            map.remove(id);
        }
    }
}
