//! Asking after, cancelling and expiring resumable uploads.

use super::state::{Parked, Slot, Upload, find};
use super::{UploadInfo, Uploads};
use crate::core::audit::Actor;
use crate::core::auth::Action;
use crate::core::error::{Error, Result};
use crate::core::files::blocking;
use crate::core::registry::{TransferState, visible};
use std::collections::HashMap;
use std::time::Duration;

impl Uploads {
    /// Waits until upload `id` of `actor` (an admin: of anyone) has no append running, stopping
    /// one if need be (the draft lets the server end it), then runs `then` on the table under
    /// its lock, so the upload it sees is settled.
    async fn when_settled<T>(
        &self,
        actor: &Actor,
        id: &str,
        then: impl Fn(&mut HashMap<String, Upload>) -> T,
    ) -> Result<T> {
        actor.require(Action::Write)?;
        loop {
            let settled = {
                let mut map = self.inner.map.lock().unwrap();
                let up = find(&mut map, id, actor)?;
                match &up.slot {
                    Slot::Busy { stop, settled } => {
                        stop.cancel();
                        settled.clone()
                    }
                    _ => return Ok(then(&mut map)),
                }
            };
            settled.cancelled().await;
        }
    }

    /// The state of upload `id`, once settled: the offset returned is where the next append
    /// is accepted.
    pub async fn status(&self, actor: &Actor, id: &str) -> Result<UploadInfo> {
        let expiry = self.inner.expiry;
        self.when_settled(actor, id, |map| map[id].info(id, expiry))
            .await
    }

    /// The acknowledged offset of upload `id`, without waiting for a running append.
    pub fn offset(&self, actor: &Actor, id: &str) -> Option<u64> {
        actor.require(Action::Write).ok()?;
        let map = self.inner.map.lock().unwrap();
        map.get(id)
            .filter(|u| visible(&actor.principal, &u.owner))
            .map(|u| u.offset)
    }

    /// Cancels upload `id`: a running append is stopped and the temp file removed. A completed
    /// upload is only forgotten; its file stays.
    pub async fn cancel(&self, actor: &Actor, id: &str) -> Result<()> {
        let up = self
            .when_settled(actor, id, |map| map.remove(id).expect("just seen"))
            .await?;
        tracing::info!(upload = %id, session = %actor.session_id, path = %up.target, "upload cancelled");
        self.drop_upload(id, up, TransferState::Cancelled, "cancelled")
            .await;
        Ok(())
    }

    /// Drops the uploads idle for at least `idle` (temp files removed, completed ones forgotten);
    /// returns how many. Runs every so often with the configured expiry.
    pub async fn expire_idle(&self, idle: Duration) -> usize {
        self.drop_idle(idle, "expired").await
    }

    pub(super) async fn drop_idle(&self, idle: Duration, why: &str) -> usize {
        let expired: Vec<(String, Upload)> = {
            let mut map = self.inner.map.lock().unwrap();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, u)| {
                    !matches!(u.slot, Slot::Busy { .. }) && u.touched.elapsed() >= idle
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| map.remove(&id).map(|u| (id, u)))
                .collect()
        };
        let n = expired.len();
        for (id, up) in expired {
            self.drop_upload(&id, up, TransferState::Failed, why).await;
        }
        n
    }

    /// Removes an unregistered upload's temp file and records its transfer's end.
    pub(super) async fn drop_upload(&self, id: &str, up: Upload, state: TransferState, why: &str) {
        let Slot::Idle(parked) = up.slot else {
            return;
        };
        let Parked { file, mut ctx, .. } = *parked;
        drop(file);
        let files = self.inner.files.clone();
        let tmp = up.tmp.clone();
        let _ = blocking(move || {
            files
                .dir
                .remove_file(tmp.as_path())
                .map_err(|e| Error::io(e, tmp.as_str()))
        })
        .await;
        ctx.size = up.length.unwrap_or(up.offset);
        ctx.record("put", state, None, up.expected.map(Into::into))
            .await;
        if why != "cancelled" {
            tracing::info!(upload = %id, path = %up.target, reason = why, "upload dropped");
        }
    }
}
