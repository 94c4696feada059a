//! The audit store's one writer task: events arrive on a bounded channel and are written in
//! batches, one transaction each, off the request path.

use crate::core::audit::{Actor, CommandEnd, DigestRow, TransferRow, now_ms};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

/// What the writer is asked to record.
pub(super) enum Event {
    SessionStart(Actor, i64),
    SessionEnd {
        id: String,
        bytes_in: u64,
        bytes_out: u64,
        reason: String,
    },
    CommandEnd(CommandEnd),
    Transfer(Box<TransferRow>),
    Digest(DigestRow),
    ForgetDigest(String),
    Flush(oneshot::Sender<()>),
}

/// Writes batches until every sender is gone.
pub(super) async fn writer(pool: SqlitePool, mut rx: mpsc::Receiver<Event>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        if let Err(e) = write_batch(&pool, &mut batch).await {
            tracing::error!(error = %e, "audit batch failed");
        }
        batch.clear();
    }
}

async fn write_batch(pool: &SqlitePool, batch: &mut Vec<Event>) -> sqlx::Result<()> {
    let mut flushes = Vec::new();
    let mut tx = pool.begin().await?;
    for ev in batch.drain(..) {
        match ev {
            Event::SessionStart(a, at) => {
                sqlx::query(
                    "INSERT INTO sessions (id, transport, peer, started_at, user, role) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&a.session_id)
                .bind(a.transport)
                .bind(&a.peer)
                .bind(at)
                .bind(&a.principal.name)
                .bind(a.principal.role.as_str())
                .execute(&mut *tx)
                .await?;
            }
            Event::SessionEnd {
                id,
                bytes_in,
                bytes_out,
                reason,
            } => {
                sqlx::query(
                    "UPDATE sessions SET ended_at = ?, bytes_in = ?, bytes_out = ?, end_reason = ? WHERE id = ?",
                )
                .bind(now_ms())
                .bind(bytes_in as i64)
                .bind(bytes_out as i64)
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            Event::CommandEnd(c) => {
                sqlx::query(
                    "UPDATE commands SET ended_at = ?, exit_code = ?, signal = ?, duration_ms = ?,
                     bytes_out = ?, truncated = ?, error = ? WHERE id = ?",
                )
                .bind(now_ms())
                .bind(c.exit_code)
                .bind(c.signal)
                .bind(c.duration_ms as i64)
                .bind(c.bytes_out as i64)
                .bind(c.truncated)
                .bind(c.error)
                .bind(c.id)
                .execute(&mut *tx)
                .await?;
            }
            Event::Transfer(t) => {
                sqlx::query(
                    "INSERT INTO transfers (id, session_id, transport, peer, path, direction, size, bytes,
                     md5, expected_md5, result, started_at, ended_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(&t.id)
                .bind(&t.actor.session_id)
                .bind(t.actor.transport)
                .bind(&t.actor.peer)
                .bind(&t.path)
                .bind(t.direction)
                .bind(t.size as i64)
                .bind(t.bytes as i64)
                .bind(&t.md5)
                .bind(&t.expected_md5)
                .bind(&t.result)
                .bind(t.started_at)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            }
            Event::Digest(d) => {
                sqlx::query(
                    "INSERT INTO digests (path, size, mtime_ns, ino, ctime_ns, md5) VALUES (?, ?, ?, ?, ?, ?)
                     ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                     ino = excluded.ino, ctime_ns = excluded.ctime_ns, md5 = excluded.md5",
                )
                .bind(&d.path)
                .bind(d.size as i64)
                .bind(d.mtime_ns)
                .bind(d.ino as i64)
                .bind(d.ctime_ns)
                .bind(&d.md5)
                .execute(&mut *tx)
                .await?;
            }
            Event::ForgetDigest(path) => {
                sqlx::query("DELETE FROM digests WHERE path = ?")
                    .bind(path)
                    .execute(&mut *tx)
                    .await?;
            }
            Event::Flush(done) => flushes.push(done),
        }
    }
    tx.commit().await?;
    for done in flushes {
        let _ = done.send(());
    }
    Ok(())
}
