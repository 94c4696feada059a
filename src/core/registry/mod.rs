//! Live sessions and transfers of every transport, with change events.

use crate::core::audit::{Actor, now_ms};
use crate::core::metrics::{ByteCounters, Metrics};
use foldhash::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

mod ids;
mod views;
use ids::id_at;
pub use ids::{new_id, random_id};
pub use views::{CheckInfo, RegistryEvent, SessionInfo, TransferInfo, TransferState, visible};

/// How many finished transfers stay visible.
const RECENT_TRANSFERS: usize = 100;

/// How many MD5 checks stay visible.
const RECENT_CHECKS: usize = 200;

/// Counters of one live session, updated by its transport.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Bytes received from the peer.
    pub bytes_in: AtomicU64,
    /// Bytes sent to the peer.
    pub bytes_out: AtomicU64,
    totals: ByteCounters,
}

impl SessionCounters {
    /// Counts bytes received from the peer (also in the transport's totals).
    pub fn add_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
        self.totals.bytes_in.inc_by(n);
    }

    /// Counts bytes sent to the peer (also in the transport's totals).
    pub fn add_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.totals.bytes_out.inc_by(n);
    }
}

struct LiveSession {
    info: SessionInfo,
    counters: Arc<SessionCounters>,
}

struct LiveTransfer {
    info: TransferInfo,
    done: Arc<AtomicU64>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<Arc<str>, LiveSession>,
    transfers: HashMap<Arc<str>, LiveTransfer>,
    recent: VecDeque<TransferInfo>,
    checks: VecDeque<CheckInfo>,
}

/// The registry of live sessions and transfers; a clone is one counter increment (every
/// transfer's handle holds one).
#[derive(Clone)]
pub struct Registry(Arc<Shared>);

/// What every clone of a [`Registry`] shares.
struct Shared {
    inner: Mutex<Inner>,
    events: broadcast::Sender<RegistryEvent>,
    metrics: Metrics,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Registry(Arc::new(Shared {
            inner: Mutex::default(),
            events,
            metrics: Metrics::default(),
        }))
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Subscribes to change events (a lagging receiver loses the oldest).
    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.0.events.subscribe()
    }

    /// Sends the event `ev` builds, when anyone listens (else it is not even built).
    fn emit(&self, ev: impl FnOnce() -> RegistryEvent) {
        if self.0.events.receiver_count() > 0 {
            let _ = self.0.events.send(ev());
        }
    }

    /// Registers a session; it is removed when the returned guard drops.
    pub fn open_session(&self, actor: &Actor) -> SessionGuard {
        let counters = Arc::new(SessionCounters {
            totals: self.0.metrics.session_opened(actor.transport),
            ..SessionCounters::default()
        });
        let info = SessionInfo {
            id: actor.session_id.clone(),
            transport: actor.transport,
            peer: actor.peer.clone(),
            user: actor.principal.name.clone(),
            role: actor.principal.role,
            started_at: now_ms(),
            bytes_in: 0,
            bytes_out: 0,
            current: None,
        };
        self.0.inner.lock().unwrap().sessions.insert(
            info.id.clone(),
            LiveSession {
                info: info.clone(),
                counters: counters.clone(),
            },
        );
        self.emit(|| RegistryEvent::SessionStarted(info));
        SessionGuard {
            registry: self.clone(),
            id: actor.session_id.clone(),
            transport: actor.transport,
            counters,
        }
    }

    /// Sets what a session is doing now.
    pub fn set_current(&self, session_id: &str, current: Option<String>) {
        if let Some(s) = self.0.inner.lock().unwrap().sessions.get_mut(session_id) {
            s.info.current = current;
        }
    }

    /// The live sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let inner = self.0.inner.lock().unwrap();
        let mut v: Vec<_> = inner
            .sessions
            .values()
            .map(|s| SessionInfo {
                bytes_in: s.counters.bytes_in.load(Ordering::Relaxed),
                bytes_out: s.counters.bytes_out.load(Ordering::Relaxed),
                ..s.info.clone()
            })
            .collect();
        v.sort_by_key(|s| s.started_at);
        v
    }

    /// Registers a transfer; report progress and the end through the returned handle.
    pub fn start_transfer(
        &self,
        actor: &Actor,
        path: Arc<str>,
        direction: &'static str,
        total: u64,
    ) -> TransferHandle {
        let done = Arc::new(AtomicU64::new(0));
        let now = now_ms();
        let info = TransferInfo {
            id: id_at(now),
            session_id: actor.session_id.clone(),
            user: actor.principal.name.clone(),
            transport: actor.transport,
            path,
            direction,
            bytes_done: 0,
            bytes_total: total,
            rate: 0,
            md5: None,
            state: TransferState::InProgress,
            started_at: now,
            ended_at: None,
        };
        self.0.inner.lock().unwrap().transfers.insert(
            info.id.clone(),
            LiveTransfer {
                info: info.clone(),
                done: done.clone(),
            },
        );
        self.emit(|| RegistryEvent::Transfer(info.clone()));
        TransferHandle {
            registry: self.clone(),
            id: info.id,
            started_at: now,
            done,
            finished: false,
        }
    }

    /// Active transfers, then recent finished ones (newest first).
    pub fn transfers(&self) -> Vec<TransferInfo> {
        let inner = self.0.inner.lock().unwrap();
        let now = now_ms();
        let mut v: Vec<_> = inner.transfers.values().map(|t| snapshot(t, now)).collect();
        v.sort_by_key(|t| t.started_at);
        v.extend(inner.recent.iter().rev().cloned());
        v
    }

    /// Records an MD5 check (and counts a mismatch).
    pub fn record_check(&self, check: CheckInfo) {
        if check.result != "ok" {
            self.0.metrics.mismatch(check.transport);
        }
        {
            let mut inner = self.0.inner.lock().unwrap();
            if inner.checks.len() == RECENT_CHECKS {
                inner.checks.pop_front();
            }
            inner.checks.push_back(check.clone());
        }
        self.emit(|| RegistryEvent::Check(check));
    }

    /// Recent MD5 checks, newest first.
    pub fn checks(&self) -> Vec<CheckInfo> {
        self.0
            .inner
            .lock()
            .unwrap()
            .checks
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    fn finish_transfer(&self, id: &str, state: TransferState, md5: Option<Arc<str>>, at: i64) {
        let info = {
            let mut inner = self.0.inner.lock().unwrap();
            let Some(t) = inner.transfers.remove(id) else {
                return;
            };
            let mut info = snapshot(&t, at);
            // An upload of unannounced size shows its total once it is known.
            if state == TransferState::Verified {
                info.bytes_total = info.bytes_total.max(info.bytes_done);
            }
            info.state = state;
            info.md5 = md5;
            info.ended_at = Some(at);
            if inner.recent.len() == RECENT_TRANSFERS {
                inner.recent.pop_front();
            }
            inner.recent.push_back(info.clone());
            info
        };
        self.emit(|| RegistryEvent::Transfer(info));
    }
}

/// `t` as it stands at `now` (unix ms).
fn snapshot(t: &LiveTransfer, now: i64) -> TransferInfo {
    let done = t.done.load(Ordering::Relaxed);
    let elapsed_ms = (now - t.info.started_at).max(1) as u64;
    TransferInfo {
        bytes_done: done,
        rate: done.saturating_mul(1000) / elapsed_ms,
        ..t.info.clone()
    }
}

/// Keeps a session registered while alive.
pub struct SessionGuard {
    registry: Registry,
    id: Arc<str>,
    transport: &'static str,
    /// The session's byte counters.
    pub counters: Arc<SessionCounters>,
}

impl SessionGuard {
    /// The session id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry
            .0
            .inner
            .lock()
            .unwrap()
            .sessions
            .remove(&self.id);
        self.registry.0.metrics.session_closed(self.transport);
        self.registry.emit(|| RegistryEvent::SessionEnded {
            id: self.id.clone(),
        });
    }
}

/// A live transfer; dropping it unfinished marks it failed.
pub struct TransferHandle {
    registry: Registry,
    id: Arc<str>,
    started_at: i64,
    done: Arc<AtomicU64>,
    finished: bool,
}

impl TransferHandle {
    /// The transfer id.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Adds moved bytes.
    pub fn progress(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes moved so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// When it started, unix ms.
    pub fn started_at(&self) -> i64 {
        self.started_at
    }

    /// Ends the transfer in `state` at `at` (unix ms).
    pub fn finish(mut self, state: TransferState, md5: Option<Arc<str>>, at: i64) {
        self.finished = true;
        self.registry.finish_transfer(&self.id, state, md5, at);
    }
}

impl Drop for TransferHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.registry
                .finish_transfer(&self.id, TransferState::Failed, None, now_ms());
        }
    }
}
