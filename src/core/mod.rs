//! The core every transport calls: exec, files with MD5, registry, audit, auth.
//!
//! Nothing here knows a transport: requests are plain values, answers are values and streams,
//! and failures are one [`error::Error`] with a stable code.

pub mod audit;
pub mod auth;
pub mod checksum;
pub mod digests;
pub mod direct;
pub mod error;
pub mod exec;
pub mod files;
pub mod flush;
pub mod metrics;
mod output;
pub mod paths;
pub mod put;
pub mod queue;
pub mod registry;
pub mod sandbox;
pub mod simple_command;
pub mod term;
pub mod transfer;
pub mod uploads;

use crate::core::audit::{Actor, Audit};
use crate::core::auth::{AccessConfig, Auth, Principal};
use crate::core::exec::{ExecLimits, Executor};
use crate::core::files::Files;
use crate::core::registry::{Registry, SessionGuard, new_id};
use crate::core::term::{TermConfig, Terminals};
use crate::core::uploads::Uploads;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the core needs to start.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The served root.
    pub root: PathBuf,
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// Tokens, roles and public read.
    pub access: AccessConfig,
    /// Exec limits.
    pub exec: ExecLimits,
    /// How long a resumable upload may stay idle before it is dropped.
    pub upload_expiry: Duration,
    /// Largest resumable upload, however many requests carry it.
    pub max_upload: u64,
    /// Terminal sessions.
    pub term: TermConfig,
}

/// The shared core; cheap to clone (one reference count), its parts reached through `Deref`.
#[derive(Clone)]
pub struct Core(Arc<CoreParts>);

impl std::ops::Deref for Core {
    type Target = CoreParts;
    fn deref(&self) -> &CoreParts {
        &self.0
    }
}

/// What the core is made of: every transport reaches these through a [`Core`].
pub struct CoreParts {
    /// Confined files with MD5.
    pub files: Files,
    /// The command executor.
    pub exec: Executor,
    /// Live sessions and transfers.
    pub registry: Registry,
    /// The audit store.
    pub audit: Audit,
    /// The token check.
    pub auth: Auth,
    /// Resumable uploads in progress.
    pub uploads: Uploads,
    /// Terminal sessions.
    pub term: Terminals,
}

impl Core {
    /// Opens the database, loads the digests and opens the root. Returns the audit writer's task too.
    pub async fn open(
        cfg: &CoreConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Core, tokio::task::JoinHandle<()>)> {
        let sandbox = cfg.exec.sandbox.prepare()?;
        std::fs::create_dir_all(&cfg.data_dir)?;
        let (audit, writer) = Audit::open(&cfg.data_dir).await?;
        let digests = digests::DigestCache::load(audit.clone()).await?;
        let registry = Registry::new();
        let files = Files::open(&cfg.root, digests, audit.clone(), registry.clone())?;
        let uploads = Uploads::new(
            files.clone(),
            cfg.upload_expiry,
            cfg.max_upload,
            shutdown.clone(),
        );
        let term = Terminals::new(
            cfg.term.clone(),
            files.clone(),
            audit.clone(),
            cfg.data_dir.clone(),
            sandbox.clone(),
            shutdown.clone(),
        );
        let limits = cfg.exec.clone();
        let exec = Executor::new(files.clone(), audit.clone(), limits, sandbox, shutdown);
        let core = Core(Arc::new(CoreParts {
            files,
            exec,
            registry,
            audit,
            auth: Auth::new(&cfg.access),
            uploads,
            term,
        }));
        Ok((core, writer))
    }

    /// Opens a session for an authenticated peer: registered, audited and logged; ends when the guard drops.
    pub async fn open_session(
        &self,
        transport: &'static str,
        peer: String,
        principal: Arc<Principal>,
    ) -> (Actor, SessionGuard) {
        let actor = Actor {
            session_id: new_id(),
            transport,
            peer: peer.into(),
            principal,
        };
        let guard = self.registry.open_session(&actor);
        self.audit.session_started(&actor).await;
        tracing::info!(session = %actor.session_id, transport, peer = %actor.peer,
            user = %actor.principal.name, role = %actor.principal.role, "session start");
        (actor, guard)
    }

    /// Closes a session's audit row and logs its end in one line.
    pub async fn close_session(&self, actor: &Actor, guard: SessionGuard, reason: &str) {
        use std::sync::atomic::Ordering;
        let bytes_in = guard.counters.bytes_in.load(Ordering::Relaxed);
        let bytes_out = guard.counters.bytes_out.load(Ordering::Relaxed);
        // Audit first, so whoever sees the session leave the registry finds its end recorded.
        self.audit
            .session_ended(&actor.session_id, bytes_in, bytes_out, reason)
            .await;
        drop(guard);
        tracing::info!(session = %actor.session_id, transport = actor.transport, peer = %actor.peer,
            bytes_in, bytes_out, reason, "session end");
    }
}
