//! Who may open, resume and replay terminals: the core's permission checks for them.

use super::Attachment;
use super::{RecordingInfo, Terminals, record};
use crate::core::auth::{Action, Principal};
use crate::core::error::{Code, Error, Result};
use crate::core::registry::visible;
use std::path::PathBuf;

impl Terminals {
    /// `Ok` when `who` may open a terminal: the exec role, and the shell on its program list.
    pub fn permit(&self, who: &Principal) -> Result<()> {
        who.require_program(self.inner.cfg.shell.first().map_or("sh", String::as_str), 0)
    }

    /// Attaches `who` to its live session `id` (an admin to any), replaying its output from
    /// `seq` (default: everything still held). A previous client is told it was taken over.
    pub fn attach(&self, who: &Principal, id: &str, seq: Option<u64>) -> Result<Attachment> {
        self.permit(who)?;
        let owned = self
            .inner
            .sessions
            .lock()
            .unwrap()
            .get(id)
            .map(|l| l.owner.clone());
        match owned {
            Some(owner) if visible(who, &owner) => self.attach_live(id, seq),
            _ => Err(Error::new(Code::NotFound, "no such terminal session")),
        }
    }

    /// Every recording, newest first.
    pub async fn recordings(&self, who: &Principal) -> Result<Vec<RecordingInfo>> {
        who.require(Action::Admin)?;
        record::list(&self.inner.recordings).await
    }

    /// The file of one recording.
    pub async fn recording_path(&self, who: &Principal, id: &str) -> Result<PathBuf> {
        who.require(Action::Admin)?;
        record::path_of(&self.inner.recordings, id).await
    }
}
