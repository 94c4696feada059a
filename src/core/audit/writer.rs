//! The audit store's one writer task: events arrive on a bounded channel and are written in
//! batches, one transaction each, off the request path.

use crate::core::audit::{Actor, CommandEnd, DigestRow, TransferRow, now_ms};
use futures_util::FutureExt;
use sqlx::{Acquire, QueryBuilder, Sqlite, SqlitePool};
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
    /// As a flush, then the writer gives its connection back and ends (the server is stopping).
    Close(oneshot::Sender<()>),
}

/// Starts [`writer`] on a thread of its own, with a runtime of its own: building each batch's
/// statements then takes nothing from the async workers that serve requests, and its timer
/// outlives theirs. The handle ends when the writer does (every sender gone, or `Close`).
pub(super) fn start(
    pool: SqlitePool,
    rx: mpsc::Receiver<Event>,
    urgent: Arc<Notify>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (done, ended) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ferry-audit".into())
        .spawn(move || {
            runtime.block_on(writer(pool, rx, urgent));
            let _ = done.send(());
        })?;
    // Whether the thread returned or panicked, the sender is gone once it has stopped.
    Ok(tokio::spawn(async move {
        let _ = ended.await;
    }))
}

/// Writes batches until every sender is gone, on a connection of its own (whose page cache
/// stays warm). Rows nobody waits for wait up to [`LINGER`] for company, cut short by `urgent`
/// (someone awaits a row): under load one wake-up and one transaction then carry many rows,
/// and a session's start row goes in with its first command's rather than ahead of it.
pub(super) async fn writer(pool: SqlitePool, mut rx: mpsc::Receiver<Event>, urgent: Arc<Notify>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut conn = None;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if lingers(&batch) {
            // A permit left by an awaited row taken earlier would cut the wait short: drop it,
            // then take what came meanwhile (a row awaited from now on brings a new permit).
            let _ = urgent.notified().now_or_never();
            take_queued(&mut rx, &mut batch);
            if lingers(&batch) {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = urgent.notified() => {}
                }
                take_queued(&mut rx, &mut batch);
            }
        }
        let closing = batch.iter().any(|e| matches!(e, Event::Close(_)));
        let c = match conn {
            Some(ref mut c) => c,
            None => match pool.acquire().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    // Those who wait for these rows are told they were not written.
                    tracing::error!(error = %e, "audit store unavailable; batch dropped");
                    batch.clear();
                    if closing {
                        return;
                    }
                    continue;
                }
            },
        };
        if let Err(e) = write_batch(c, &mut batch).await {
            tracing::error!(error = %e, "audit batch failed");
            // The next batch starts on a fresh connection, whatever state this one was left in.
            if let Some(c) = conn.take() {
                drop(c.detach());
            }
        }
        batch.clear();
        if closing {
            return;
        }
    }
}

/// Whether a batch should wait for company before it is written: not when someone awaits one
/// of its rows, and not when it is full (lingering then would cap the writer at one batch per
/// linger, and hold up every sender behind a full queue).
fn lingers(batch: &[Event]) -> bool {
    batch.len() < BATCH
        && !batch.iter().any(|e| {
            matches!(
                e,
                Event::Flush(_) | Event::Close(_) | Event::CommandStart { .. }
            )
        })
}

fn take_queued(rx: &mut mpsc::Receiver<Event>, batch: &mut Vec<Event>) {
    while batch.len() < BATCH {
        let Ok(ev) = rx.try_recv() else { break };
        batch.push(ev);
    }
}

/// Most events written in one transaction.
pub(super) const BATCH: usize = 512;
/// How long rows nobody waits for may wait for more before they are written.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// Writes a batch in one transaction, then acknowledges those who wait for it. If the
/// transaction fails, each event is written alone, so that one bad row costs only itself: a
/// command whose start row fails is refused, the others run.
async fn write_batch(
    conn: &mut sqlx::SqliteConnection,
    batch: &mut Vec<Event>,
) -> sqlx::Result<()> {
    let whole = if batch.len() <= AT_ONCE {
        write_at_once(conn, batch).await
    } else {
        let mut tx = conn.begin().await?;
        match write_events(&mut tx, batch).await {
            Ok(()) => tx.commit().await,
            Err(e) => Err(e),
        }
    };
    let single = batch.len() == 1;
    let mut failed = None;
    for ev in batch.drain(..) {
        let written = match &whole {
            Ok(()) => true,
            Err(_) if matches!(ev, Event::Flush(_) | Event::Close(_)) => true,
            Err(_) if single => false,
            Err(_) => {
                let alone = write_at_once(conn, std::slice::from_ref(&ev)).await;
                alone.map_err(|e| failed = Some(e)).is_ok()
            }
        };
        match ev {
            Event::CommandStart { done, .. } | Event::Flush(done) | Event::Close(done)
                if written =>
            {
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

/// Most events of a batch sent to SQLite as one string of statements. Each trip to the
/// connection's thread costs two thread wake-ups, more than SQLite takes to store a row, so a
/// command's start row (which its command waits for) and whatever came with it go in one trip;
/// a bigger batch, under load, goes a statement at a time in a transaction.
const AT_ONCE: usize = 8;

/// Writes a few events in one trip, between `BEGIN` and `COMMIT` (rolled back if one fails).
/// On a connection left inside a transaction, `BEGIN` fails and nothing is acknowledged.
async fn write_at_once(conn: &mut sqlx::SqliteConnection, batch: &[Event]) -> sqlx::Result<()> {
    let mut q = QueryBuilder::new("BEGIN; ");
    let mut rows = 0;
    for ev in batch {
        if push_event(&mut q, ev) {
            q.push("; ");
            rows += 1;
        }
    }
    if rows == 0 {
        return Ok(());
    }
    q.push("COMMIT;");
    // One or two rows make at most 56 statement strings, which stay prepared in sqlx's cache
    // (100 per connection); longer mixes are prepared for the trip alone.
    let written = q.build().persistent(rows <= 2).execute(&mut *conn).await;
    if written.is_err() {
        // The failed statement ended the trip with the transaction still open.
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }
    written.map(|_| ())
}

async fn write_events(tx: &mut sqlx::SqliteConnection, batch: &[Event]) -> sqlx::Result<()> {
    let mut transfers = Vec::new();
    for ev in batch {
        // Rows keep their order: gathered transfers go in before any other event.
        if let Event::Transfer(t) = ev {
            transfers.push(&**t);
            continue;
        }
        insert_transfers(tx, &mut transfers).await?;
        let mut q = QueryBuilder::new("");
        if push_event(&mut q, ev) {
            q.build().execute(&mut *tx).await?;
        }
    }
    insert_transfers(tx, &mut transfers).await?;
    Ok(())
}

/// Appends the statement that records `ev` (none for a flush or a close); says whether it did.
fn push_event(q: &mut QueryBuilder<Sqlite>, ev: &Event) -> bool {
    match ev {
        Event::SessionStart(a, at) => {
            q.push("INSERT INTO sessions (id, transport, peer, started_at, user, role) ");
            q.push_values([()], |mut b, ()| {
                b.push_bind(&a.session_id)
                    .push_bind(a.transport)
                    .push_bind(&a.peer)
                    .push_bind(*at)
                    .push_bind(&a.principal.name)
                    .push_bind(a.principal.role.as_str());
            });
        }
        Event::CommandStart {
            id,
            actor,
            command,
            cwd,
            at,
            ..
        } => {
            q.push(
                "INSERT INTO commands (id, session_id, transport, peer, command, cwd, started_at) ",
            );
            q.push_values([()], |mut b, ()| {
                b.push_bind(id)
                    .push_bind(&actor.session_id)
                    .push_bind(actor.transport)
                    .push_bind(&actor.peer)
                    .push_bind(command)
                    .push_bind(cwd)
                    .push_bind(*at);
            });
        }
        Event::SessionEnd {
            id,
            bytes_in,
            bytes_out,
            reason,
        } => {
            q.push("UPDATE sessions SET ended_at = ")
                .push_bind(now_ms())
                .push(", bytes_in = ")
                .push_bind(*bytes_in as i64)
                .push(", bytes_out = ")
                .push_bind(*bytes_out as i64)
                .push(", end_reason = ")
                .push_bind(reason)
                .push(" WHERE id = ")
                .push_bind(id);
        }
        Event::CommandEnd(c) => {
            q.push("UPDATE commands SET ended_at = ")
                .push_bind(now_ms())
                .push(", exit_code = ")
                .push_bind(c.exit_code)
                .push(", signal = ")
                .push_bind(c.signal)
                .push(", duration_ms = ")
                .push_bind(c.duration_ms as i64)
                .push(", bytes_out = ")
                .push_bind(c.bytes_out as i64)
                .push(", truncated = ")
                .push_bind(c.truncated)
                .push(", error = ")
                .push_bind(&c.error)
                .push(" WHERE id = ")
                .push_bind(&c.id);
        }
        Event::Transfer(t) => push_transfers(q, std::slice::from_ref(&&**t)),
        Event::Digest(d) => {
            q.push("INSERT INTO digests (path, size, mtime_ns, ino, ctime_ns, md5) ");
            q.push_values([()], |mut b, ()| {
                b.push_bind(&d.path)
                    .push_bind(d.size as i64)
                    .push_bind(d.mtime_ns)
                    .push_bind(d.ino as i64)
                    .push_bind(d.ctime_ns)
                    .push_bind(&d.md5);
            });
            q.push(
                " ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, \
                 ino = excluded.ino, ctime_ns = excluded.ctime_ns, md5 = excluded.md5",
            );
        }
        Event::ForgetDigest(path) => {
            q.push("DELETE FROM digests WHERE path = ").push_bind(path);
        }
        Event::Flush(_) | Event::Close(_) => return false,
    }
    true
}

mod transfers;
use transfers::{insert_transfers, push_transfers};

#[cfg(test)]
mod tests;
