//! What the registry shows: sessions, transfers, MD5 checks and change events, as the API
//! serialises them.

use crate::core::auth::{Action, Principal, Role};
use crate::core::error::Result;
use serde::Serialize;
use std::sync::Arc;

/// A live session as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: Arc<str>,
    /// Transport name.
    pub transport: &'static str,
    /// Peer address.
    pub peer: Arc<str>,
    /// The token's name.
    pub user: Arc<str>,
    /// The token's role.
    pub role: Role,
    /// Start, unix ms.
    pub started_at: i64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// What the session is doing now, if anything.
    pub current: Option<String>,
}

/// State of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Bytes are moving.
    InProgress,
    /// Finished and the MD5 matched.
    Verified,
    /// Finished but the MD5 did not match.
    Mismatch,
    /// Ended by an error or a disconnect.
    Failed,
    /// Cancelled by the client.
    Cancelled,
}

/// A transfer as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TransferInfo {
    /// Transfer id.
    pub id: Arc<str>,
    /// Owning session.
    pub session_id: Arc<str>,
    /// The token's name of the owning session.
    pub user: Arc<str>,
    /// Transport name.
    pub transport: &'static str,
    /// Path under the root.
    pub path: Arc<str>,
    /// `get` or `put`.
    pub direction: &'static str,
    /// Bytes moved so far.
    pub bytes_done: u64,
    /// Total bytes expected.
    pub bytes_total: u64,
    /// Average rate so far, bytes per second.
    pub rate: u64,
    /// MD5, once known.
    pub md5: Option<Arc<str>>,
    /// State.
    pub state: TransferState,
    /// Start, unix ms.
    pub started_at: i64,
    /// End, unix ms, once finished.
    pub ended_at: Option<i64>,
}

/// One MD5 comparison made by ferry: an upload's client MD5 against the received bytes, or a
/// download's stored MD5 against a file that must not have changed while it was sent.
#[derive(Debug, Clone, Serialize)]
pub struct CheckInfo {
    /// The transfer it belongs to.
    pub transfer_id: Arc<str>,
    /// Owning session.
    pub session_id: Arc<str>,
    /// The token's name of the owning session.
    pub user: Arc<str>,
    /// Transport name.
    pub transport: &'static str,
    /// Path under the root.
    pub path: Arc<str>,
    /// `get` or `put`.
    pub direction: &'static str,
    /// The MD5 that should hold.
    pub expected: Arc<str>,
    /// The MD5 found, when known.
    pub actual: Option<Arc<str>>,
    /// `ok` or `mismatch`.
    pub result: &'static str,
    /// When, unix ms.
    pub at: i64,
}

/// A registry change, for live views.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RegistryEvent {
    /// A session started.
    SessionStarted(SessionInfo),
    /// A session ended.
    SessionEnded {
        /// Its id.
        id: Arc<str>,
    },
    /// A transfer started, progressed or finished.
    Transfer(TransferInfo),
    /// An MD5 check was made.
    Check(CheckInfo),
}

impl RegistryEvent {
    /// Whether `viewer` may see this event: admins see everything, others their own token's.
    pub fn visible_to(&self, viewer: &Principal) -> bool {
        match self {
            RegistryEvent::SessionStarted(s) => visible(viewer, &s.user),
            // An id alone tells nothing; a viewer drops ids it never saw start.
            RegistryEvent::SessionEnded { .. } => true,
            RegistryEvent::Transfer(t) => visible(viewer, &t.user),
            RegistryEvent::Check(c) => visible(viewer, &c.user),
        }
    }
}

/// Whether `viewer` may see what the token named `owner` did.
pub fn visible(viewer: &Principal, owner: &str) -> bool {
    viewer.allows(Action::Admin) || &*viewer.name == owner
}

impl super::Registry {
    /// The live sessions `who` may see: an admin all of them, others their own token's.
    pub fn sessions_for(&self, who: &Principal) -> Result<Vec<SessionInfo>> {
        who.require(Action::Browse)?;
        let mut v = self.sessions();
        v.retain(|s| visible(who, &s.user));
        Ok(v)
    }

    /// The transfers `who` may see (as [`Self::sessions_for`]).
    pub fn transfers_for(&self, who: &Principal) -> Result<Vec<TransferInfo>> {
        who.require(Action::Browse)?;
        let mut v = self.transfers();
        v.retain(|t| visible(who, &t.user));
        Ok(v)
    }

    /// The MD5 checks `who` may see (as [`Self::sessions_for`]).
    pub fn checks_for(&self, who: &Principal) -> Result<Vec<CheckInfo>> {
        who.require(Action::Browse)?;
        let mut v = self.checks();
        v.retain(|c| visible(who, &c.user));
        Ok(v)
    }
}
