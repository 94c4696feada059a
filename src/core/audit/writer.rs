//! The audit store's one writer: events arrive on a bounded channel and are written in
//! batches, one transaction each, off the request path, through a SQLite connection of the
//! writer's own thread.
//!
//! Why its own connection rather than one of the pool's: a pooled connection runs on a
//! thread of its own, so each statement cost two thread wake-ups. A command's start row,
//! which its command waits for, took four (160 us on a 2-core VM); every 1 KiB download's row
//! cost more in hand-overs than SQLite takes to store it.

use crate::core::audit::{Actor, CommandEnd, DigestRow, TransferRow, now_ms};
use futures_util::FutureExt;
use rusqlite::{Connection, OpenFlags, params};
use std::path::{Path, PathBuf};
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
    /// As a flush, then the writer closes its connection and ends (the server is stopping).
    Close(oneshot::Sender<()>),
}

/// Starts [`writer`] on a thread of its own, with a runtime of its own: building and writing
/// each batch then takes nothing from the async workers that serve requests, and its timer
/// outlives theirs. The handle ends when the writer does (every sender gone, or `Close`).
pub(super) fn start(
    db: PathBuf,
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
            runtime.block_on(writer(db, rx, urgent));
            let _ = done.send(());
        })?;
    // Whether the thread returned or panicked, the sender is gone once it has stopped.
    Ok(tokio::spawn(async move {
        let _ = ended.await;
    }))
}

/// Opens the writer's connection to the store at `db` (created and migrated already), with
/// the pool's settings.
pub(super) fn open(db: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL is a property of the file, set when the pool created it; these are per connection.
    // A small page cache: the store is written in batches, and memory counts.
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA cache_size = -512;")?;
    Ok(conn)
}

/// Writes batches until every sender is gone, on a connection of its own (whose page cache
/// stays warm). Rows nobody waits for wait up to [`LINGER`] for company, cut short by `urgent`
/// (someone awaits a row): under load one wake-up and one transaction then carry many rows,
/// and a session's start row goes in with its first command's rather than ahead of it.
pub(super) async fn writer(db: PathBuf, mut rx: mpsc::Receiver<Event>, urgent: Arc<Notify>) {
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
            None => match open(&db) {
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
        if let Err(e) = write_batch(c, &mut batch) {
            tracing::error!(error = %e, "audit batch failed");
            // The next batch starts on a fresh connection, whatever state this one was left in.
            conn = None;
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
fn write_batch(conn: &mut Connection, batch: &mut Vec<Event>) -> rusqlite::Result<()> {
    let whole = write_events(conn, batch);
    let single = batch.len() == 1;
    let mut failed = None;
    for ev in batch.drain(..) {
        let written = match &whole {
            Ok(()) => true,
            Err(_) if matches!(ev, Event::Flush(_) | Event::Close(_)) => true,
            Err(_) if single => false,
            Err(_) => {
                let alone = write_events(conn, std::slice::from_ref(&ev));
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

/// Writes `batch` in one transaction (rolled back if a row fails); nothing for a batch of
/// flushes and closes only.
fn write_events(conn: &mut Connection, batch: &[Event]) -> rusqlite::Result<()> {
    if batch
        .iter()
        .all(|e| matches!(e, Event::Flush(_) | Event::Close(_)))
    {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let mut rest = batch;
    while !rest.is_empty() {
        let run = rest
            .iter()
            .take(TRANSFER_RUN)
            .take_while(|e| matches!(e, Event::Transfer(_)))
            .count();
        let done = if run == TRANSFER_RUN {
            write_transfers(&tx, &rest[..run])?;
            run
        } else {
            write_event(&tx, &rest[0])?;
            1
        };
        rest = &rest[done..];
    }
    tx.commit()
}

/// Transfer rows that come together are written this many to a statement: per row, finding
/// a statement, running it to its end and resetting it cost SQLite more than storing the row.
const TRANSFER_RUN: usize = 16;

/// Inserts the transfer rows among `events` (one, or [`TRANSFER_RUN`]) with one statement.
/// `OR FAIL`: a row that fails ends the statement without undoing the rows before it, so
/// SQLite keeps no statement journal for it; the caller rolls the whole transaction back.
fn write_transfers(c: &Connection, events: &[Event]) -> rusqlite::Result<()> {
    static SQL: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    let [one, run] = SQL.get_or_init(|| {
        let values = |n| vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; n].join(", ");
        [1, TRANSFER_RUN].map(|n| {
            format!(
                "INSERT OR FAIL INTO transfers (id, session_id, transport, peer, path, \
                 direction, size, bytes, md5, expected_md5, result, started_at, ended_at) \
                 VALUES {}",
                values(n)
            )
        })
    });
    debug_assert!(events.len() == 1 || events.len() == TRANSFER_RUN);
    let mut st = c.prepare_cached(if events.len() == 1 { one } else { run })?;
    let mut at = 1;
    for ev in events {
        let Event::Transfer(t) = ev else {
            unreachable!("only transfer rows are written here")
        };
        let values: [&dyn rusqlite::ToSql; 13] = [
            &&*t.id,
            &&*t.actor.session_id,
            &t.actor.transport,
            &&*t.actor.peer,
            &&*t.path,
            &t.direction,
            &(t.size as i64),
            &(t.bytes as i64),
            &t.md5.as_deref(),
            &t.expected_md5.as_deref(),
            &t.result,
            &t.started_at,
            &t.ended_at,
        ];
        for v in values {
            st.raw_bind_parameter(at, v)?;
            at += 1;
        }
    }
    st.raw_execute()?;
    Ok(())
}

/// Records `ev` with its statement, prepared once per connection (nothing for a flush or a
/// close).
fn write_event(c: &Connection, ev: &Event) -> rusqlite::Result<()> {
    match ev {
        Event::SessionStart(a, at) => c
            .prepare_cached(
                "INSERT INTO sessions (id, transport, peer, started_at, user, role) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                &*a.session_id,
                a.transport,
                &*a.peer,
                at,
                &*a.principal.name,
                a.principal.role.as_str(),
            ])?,
        Event::CommandStart {
            id,
            actor,
            command,
            cwd,
            at,
            ..
        } => c
            .prepare_cached(
                "INSERT INTO commands (id, session_id, transport, peer, command, cwd, \
                 started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                id,
                &*actor.session_id,
                actor.transport,
                &*actor.peer,
                command,
                cwd,
                at,
            ])?,
        Event::SessionEnd {
            id,
            bytes_in,
            bytes_out,
            reason,
        } => c
            .prepare_cached(
                "UPDATE sessions SET ended_at = ?, bytes_in = ?, bytes_out = ?, end_reason = ? \
                 WHERE id = ?",
            )?
            .execute(params![
                now_ms(),
                *bytes_in as i64,
                *bytes_out as i64,
                reason,
                id
            ])?,
        Event::CommandEnd(e) => c
            .prepare_cached(
                "UPDATE commands SET ended_at = ?, exit_code = ?, signal = ?, duration_ms = ?, \
                 bytes_out = ?, truncated = ?, error = ? WHERE id = ?",
            )?
            .execute(params![
                now_ms(),
                e.exit_code,
                e.signal,
                e.duration_ms as i64,
                e.bytes_out as i64,
                e.truncated,
                e.error,
                e.id,
            ])?,
        Event::Transfer(_) => {
            write_transfers(c, std::slice::from_ref(ev))?;
            0
        }
        Event::Digest(d) => c
            .prepare_cached(
                "INSERT INTO digests (path, size, mtime_ns, ino, ctime_ns, md5) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET \
                 size = excluded.size, mtime_ns = excluded.mtime_ns, ino = excluded.ino, \
                 ctime_ns = excluded.ctime_ns, md5 = excluded.md5",
            )?
            .execute(params![
                d.path,
                d.size as i64,
                d.mtime_ns,
                d.ino as i64,
                d.ctime_ns,
                d.md5
            ])?,
        Event::ForgetDigest(path) => c
            .prepare_cached("DELETE FROM digests WHERE path = ?")?
            .execute(params![path])?,
        Event::Flush(_) | Event::Close(_) => 0,
    };
    Ok(())
}

#[cfg(test)]
mod tests;
