//! The audit store's one writer task: events arrive on a bounded channel and are written in
//! batches, one transaction each, off the request path.

use crate::core::audit::{Actor, CommandEnd, DigestRow, TransferRow, now_ms};
use sqlx::SqlitePool;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};

/// What the writer is asked to record.
pub(super) enum Event {
    SessionStart(Actor, i64),
    /// A command about to run: acknowledged once its row is committed.
    CommandStart {
        id: String,
        actor: Actor,
        command: String,
        cwd: String,
        at: i64,
        done: oneshot::Sender<()>,
    },
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

/// Writes batches until every sender is gone; `urgent` cuts the wait between batches short
/// (someone awaits a row).
pub(super) async fn writer(pool: SqlitePool, mut rx: mpsc::Receiver<Event>, urgent: Arc<Notify>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let flushing = batch
            .iter()
            .any(|e| matches!(e, Event::Flush(_) | Event::CommandStart { .. }));
        if let Err(e) = write_batch(&pool, &mut batch).await {
            tracing::error!(error = %e, "audit batch failed");
        }
        batch.clear();
        if !flushing {
            // Let rows gather: under load one wake-up and one transaction then carry many
            // rows instead of each request waking this task and SQLite's thread.
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = urgent.notified() => {}
            }
        }
    }
}

/// Most events written in one transaction.
const BATCH: usize = 512;
/// How long the writer waits after a batch before taking the next (a flush skips it).
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// Most rows of one multi-row INSERT into `transfers`.
const TRANSFER_ROWS: usize = 64;

/// Writes transfer rows with few statements: chunks of 64, 32, ... 1 rows, so that at most seven
/// statement shapes are ever prepared and cached.
async fn insert_transfers(
    tx: &mut sqlx::SqliteConnection,
    rows: &mut Vec<&TransferRow>,
) -> sqlx::Result<()> {
    let mut rest = &rows[..];
    while !rest.is_empty() {
        let n = 1 << rest.len().min(TRANSFER_ROWS).ilog2();
        let (chunk, after) = rest.split_at(n);
        rest = after;
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO transfers (id, session_id, transport, peer, path, direction, size, bytes,
             md5, expected_md5, result, started_at, ended_at) ",
        );
        // Shared strings are bound as clones of their `Arc`: sqlx allocates a copy of a borrowed
        // string on every bind, while an owned `Arc<str>` is handed over with a refcount bump.
        q.push_values(chunk, |mut b, t| {
            b.push_bind(t.id.clone())
                .push_bind(t.actor.session_id.clone())
                .push_bind(t.actor.transport)
                .push_bind(t.actor.peer.clone())
                .push_bind(t.path.clone())
                .push_bind(t.direction)
                .push_bind(t.size as i64)
                .push_bind(t.bytes as i64)
                .push_bind(t.md5.clone())
                .push_bind(t.expected_md5.clone())
                .push_bind(t.result)
                .push_bind(t.started_at)
                .push_bind(t.ended_at);
        });
        q.build().execute(&mut *tx).await?;
    }
    rows.clear();
    Ok(())
}

/// Writes a batch in one transaction (a single row: one statement, committed by itself), then
/// acknowledges those who wait for it. If the transaction fails, each event is written alone,
/// so that one bad row costs only itself: a command whose start row fails is refused, the
/// others run.
async fn write_batch(pool: &SqlitePool, batch: &mut Vec<Event>) -> sqlx::Result<()> {
    let single = batch.len() == 1;
    let whole = if single {
        let mut conn = pool.acquire().await?;
        write_events(&mut conn, batch).await
    } else {
        let mut tx = pool.begin().await?;
        match write_events(&mut tx, batch).await {
            Ok(()) => tx.commit().await,
            Err(e) => Err(e),
        }
    };
    let mut failed = None;
    for ev in batch.drain(..) {
        let written = match &whole {
            Ok(()) => true,
            Err(_) if matches!(ev, Event::Flush(_)) => true,
            Err(_) if single => false,
            Err(_) => {
                let mut conn = pool.acquire().await?;
                let alone = write_events(&mut conn, std::slice::from_ref(&ev)).await;
                alone.map_err(|e| failed = Some(e)).is_ok()
            }
        };
        match ev {
            Event::CommandStart { done, .. } | Event::Flush(done) if written => {
                let _ = done.send(());
            }
            _ => {}
        }
    }
    match (whole, failed) {
        (Err(e), _) if single => Err(e),
        (Err(_), Some(e)) => Err(e),
        _ => Ok(()),
    }
}

async fn write_events(tx: &mut sqlx::SqliteConnection, batch: &[Event]) -> sqlx::Result<()> {
    let mut transfers = Vec::new();
    for ev in batch {
        // Rows keep their order: gathered transfers go in before any other event.
        if !matches!(ev, Event::Transfer(_)) && !transfers.is_empty() {
            insert_transfers(tx, &mut transfers).await?;
        }
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
            Event::CommandStart {
                id,
                actor,
                command,
                cwd,
                at,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO commands (id, session_id, transport, peer, command, cwd, started_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(id)
                .bind(&actor.session_id)
                .bind(actor.transport)
                .bind(&actor.peer)
                .bind(command)
                .bind(cwd)
                .bind(at)
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
                .bind(*bytes_in as i64)
                .bind(*bytes_out as i64)
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
                .bind(&c.error)
                .bind(&c.id)
                .execute(&mut *tx)
                .await?;
            }
            Event::Transfer(t) => transfers.push(&**t),
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
            Event::Flush(_) => {}
        }
    }
    insert_transfers(tx, &mut transfers).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
