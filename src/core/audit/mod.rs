//! The audit store: SQLite through sqlx, written off the request path by one task.

use crate::core::auth::{Action, Principal};
use crate::core::error::{Error, Result};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

mod writer;
use writer::Event;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Who did something: the session, its transport and peer, and the token's principal.
#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    /// The session id.
    pub session_id: Arc<str>,
    /// `tcp`, `http`, `ws` or `legacy`.
    pub transport: &'static str,
    /// The peer address.
    pub peer: Arc<str>,
    /// Who authenticated, and what they may do.
    #[serde(skip)]
    pub principal: Arc<Principal>,
}

impl Actor {
    /// `Ok` when this actor may do `action` (see [`Principal::require`]).
    pub fn require(&self, action: Action) -> Result<()> {
        self.principal.require(action)
    }

    /// The name of the actor's token.
    pub fn user(&self) -> &str {
        &self.principal.name
    }
}

/// The end of a command, completing the row written when it started.
#[derive(Debug, Clone)]
pub struct CommandEnd {
    /// The command id.
    pub id: String,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Output bytes produced (stdout + stderr).
    pub bytes_out: u64,
    /// Whether output was cut at the cap.
    pub truncated: bool,
    /// The error code that ended it, if any.
    pub error: Option<String>,
}

/// One finished transfer.
#[derive(Debug, Clone, Serialize)]
pub struct TransferRow {
    /// The transfer id.
    pub id: Arc<str>,
    /// Who moved it.
    pub actor: Actor,
    /// Path under the root.
    pub path: Arc<str>,
    /// `get` or `put`.
    pub direction: &'static str,
    /// The file's full size.
    pub size: u64,
    /// Bytes actually moved.
    pub bytes: u64,
    /// The MD5 computed or served.
    pub md5: Option<Arc<str>>,
    /// The MD5 the client announced, if any.
    pub expected_md5: Option<Arc<str>>,
    /// verified, mismatch, failed or cancelled.
    pub result: &'static str,
    /// Start, unix ms.
    pub started_at: i64,
    /// End, unix ms.
    pub ended_at: i64,
}

/// A stored digest entry.
#[derive(Debug, Clone)]
pub struct DigestRow {
    /// Path under the root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// MD5 hex.
    pub md5: String,
}

/// One audit log entry as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// `session`, `command` or `transfer`.
    pub kind: String,
    /// The row id.
    pub id: String,
    /// Session id.
    pub session_id: String,
    /// Transport.
    pub transport: String,
    /// Start, unix ms.
    pub at: i64,
    /// What happened, one line.
    pub summary: String,
    /// The result: exit code, transfer result or session end reason.
    pub result: Option<String>,
}

/// Handle to the audit store; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    pool: SqlitePool,
    tx: mpsc::Sender<Event>,
    urgent: Arc<Notify>,
}

impl Audit {
    /// Opens (or creates) `ferry.db` in `data_dir`, applies migrations and starts the writer.
    pub async fn open(data_dir: &Path) -> anyhow::Result<(Audit, JoinHandle<()>)> {
        let db = data_dir.join("ferry.db");
        let opts = SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5))
            // The audit store is written in batches and read a page at a time: a small page
            // cache per connection keeps the server's memory small.
            .pragma("cache_size", "-512");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A local file: no connection goes stale, so no ping before each use.
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let (tx, rx) = mpsc::channel(4096);
        let urgent = Arc::new(Notify::new());
        let writer = writer::start(db, rx, urgent.clone())?;
        Ok((Audit { pool, tx, urgent }, writer))
    }

    async fn send(&self, ev: Event) {
        if self.tx.send(ev).await.is_err() {
            tracing::warn!("audit writer is closed; an audit row was dropped");
        }
        // A full batch is waiting: the writer need not linger for more.
        if self.tx.max_capacity() - self.tx.capacity() >= writer::BATCH {
            self.urgent.notify_one();
        }
    }

    /// Records a session start.
    pub async fn session_started(&self, actor: &Actor) {
        self.send(Event::SessionStart(actor.clone(), now_ms()))
            .await;
    }

    /// Records a session end with its byte counts.
    pub async fn session_ended(&self, id: &str, bytes_in: u64, bytes_out: u64, reason: &str) {
        self.send(Event::SessionEnd {
            id: id.to_string(),
            bytes_in,
            bytes_out,
            reason: reason.to_string(),
        })
        .await;
    }

    /// Writes a command's row before its process starts; returns once it is stored.
    pub async fn command_started(
        &self,
        id: &str,
        actor: &Actor,
        command: &str,
        cwd: &str,
    ) -> Result<()> {
        let (done, committed) = oneshot::channel();
        self.send(Event::CommandStart {
            id: id.to_string(),
            actor: actor.clone(),
            command: command.to_string(),
            cwd: cwd.to_string(),
            at: now_ms(),
            done,
        })
        .await;
        self.urgent.notify_one();
        committed
            .await
            .map_err(|_| Error::internal("the audit store could not record the command"))
    }

    /// Completes a command's row.
    pub async fn command_ended(&self, end: CommandEnd) {
        self.send(Event::CommandEnd(end)).await;
    }

    /// Records a finished transfer.
    pub async fn transfer(&self, row: TransferRow) {
        self.send(Event::Transfer(Box::new(row))).await;
    }

    /// Stores a digest durably.
    ///
    /// Queued at once while the writer's queue has room, so that a shutdown after it (which
    /// queues its close behind) still writes it; from a task of its own when the queue is full,
    /// so that a caller on a blocking thread never waits.
    pub fn digest(&self, row: DigestRow) {
        match self.tx.try_send(Event::Digest(row)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(ev)) => {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    let audit = self.clone();
                    handle.spawn(async move { audit.send(ev).await });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!("audit writer is closed; a digest row was dropped");
            }
        }
    }

    /// Waits until every row sent before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Event::Flush(tx)).await;
        self.urgent.notify_one();
        let _ = rx.await;
    }

    /// Loads every stored digest (at start, to fill the in-memory cache).
    pub async fn load_digests(&self) -> anyhow::Result<Vec<DigestRow>> {
        let rows = sqlx::query("SELECT path, size, mtime_ns, ino, ctime_ns, md5 FROM digests")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| DigestRow {
                path: r.get("path"),
                size: r.get::<i64, _>("size") as u64,
                mtime_ns: r.get("mtime_ns"),
                ino: r.get::<i64, _>("ino") as u64,
                ctime_ns: r.get("ctime_ns"),
                md5: r.get("md5"),
            })
            .collect())
    }

    /// Forgets the stored digest of a deleted file.
    pub async fn forget_digest(&self, path: String) {
        self.send(Event::ForgetDigest(path)).await;
    }

    /// The newest audit entries, newest first, strictly older than `before` (unix ms) if given.
    pub async fn recent(
        &self,
        who: &Principal,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>> {
        who.require(Action::Admin)?;
        let before = before.unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT * FROM (
               SELECT 'session' AS kind, id, id AS session_id, transport, started_at AS at,
                      'session ' || COALESCE('of ' || user || ' ', '') || 'from ' || peer AS summary, end_reason AS result
                 FROM sessions WHERE started_at < ?1
               UNION ALL
               SELECT 'command', id, session_id, transport, started_at, command,
                      COALESCE(error, 'exit ' || exit_code, 'signal ' || signal)
                 FROM commands WHERE started_at < ?1
               UNION ALL
               SELECT 'transfer', id, session_id, transport, started_at,
                      direction || ' ' || path || ' (' || size || ' bytes)', result
                 FROM transfers WHERE started_at < ?1
             ) ORDER BY at DESC LIMIT ?2",
        )
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::internal)?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                kind: r.get("kind"),
                id: r.get("id"),
                session_id: r.get("session_id"),
                transport: r.get("transport"),
                at: r.get("at"),
                summary: r.get("summary"),
                result: r.get("result"),
            })
            .collect())
    }

    /// The pool, for read-only queries by the API and tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Writes what is queued, then closes the store; rows sent later are dropped.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        self.send(Event::Close(tx)).await;
        self.urgent.notify_one();
        let _ = rx.await;
        self.pool.close().await;
    }
}
