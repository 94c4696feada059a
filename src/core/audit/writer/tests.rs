//! The writer: a batch with a bad row (the good rows are written and acknowledged, the bad one
//! alone fails), big batches, the close, and when a batch waits for company.

use super::*;
use crate::core::audit::Audit;

fn actor(session: &str) -> Actor {
    Actor {
        session_id: session.into(),
        transport: "tcp",
        peer: "test".into(),
        principal: Arc::new(crate::core::auth::Principal::admin("test")),
    }
}

fn start(id: &str, session: &str) -> (Event, oneshot::Receiver<()>) {
    let (done, acked) = oneshot::channel();
    let ev = Event::CommandStart {
        id: id.into(),
        actor: actor(session),
        command: "true".into(),
        cwd: String::new(),
        at: now_ms(),
        done,
    };
    (ev, acked)
}

/// A fresh store (its writer running beside), its pool, and a connection to write batches on.
async fn store() -> (tempfile::TempDir, sqlx::SqlitePool, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let (audit, _writer) = Audit::open(dir.path()).await.unwrap();
    let pool = audit.pool().clone();
    let conn = open(&dir.path().join("ferry.db")).unwrap();
    (dir, pool, conn)
}

#[tokio::test]
async fn one_bad_row_costs_only_itself() {
    let (_dir, pool, mut conn) = store().await;
    let (good, good_acked) = start("c1", "s1");
    // The same command id twice: the second breaks the primary key.
    let (dup, dup_acked) = start("c1", "s1");
    let (later, later_acked) = start("c2", "s1");
    let mut batch = vec![Event::SessionStart(actor("s1"), now_ms()), good, dup, later];
    let result = write_batch(&mut conn, &mut batch);
    assert!(result.is_err(), "the bad row is reported");
    assert!(good_acked.await.is_ok() && later_acked.await.is_ok());
    assert!(
        dup_acked.await.is_err(),
        "a start whose row failed is refused"
    );
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM commands ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ids, ["c1", "c2"]);
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1);
    // A batch that is all good is one transaction, acknowledged as a whole.
    let (a, a_acked) = start("c3", "s1");
    let (flush, flushed) = oneshot::channel();
    let mut batch = vec![a, Event::Flush(flush)];
    write_batch(&mut conn, &mut batch).unwrap();
    assert!(a_acked.await.is_ok() && flushed.await.is_ok());
    // The failed batch left no transaction open: the row is committed, seen by another connection.
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM commands WHERE id = 'c3'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seen, 1);
}

/// Transfer rows in the big batch.
const BIG: usize = 40;

fn transfer(id: &str) -> Event {
    Event::Transfer(Box::new(TransferRow {
        id: id.into(),
        actor: actor("s2"),
        path: "f".into(),
        direction: "get",
        size: 1,
        bytes: 1,
        md5: None,
        expected_md5: None,
        result: "verified",
        started_at: now_ms(),
        ended_at: now_ms(),
    }))
}

#[tokio::test]
async fn a_big_batch_goes_in_one_transaction_in_order() {
    let (_dir, pool, mut conn) = store().await;
    let mut batch = vec![Event::SessionStart(actor("s2"), now_ms())];
    batch.extend((0..5).map(|i| transfer(&format!("t{i}"))));
    let (c, c_acked) = start("c9", "s2");
    batch.push(c);
    batch.extend((5..BIG).map(|i| transfer(&format!("t{i:02}"))));
    batch.push(Event::CommandEnd(CommandEnd {
        id: "c9".into(),
        exit_code: Some(0),
        signal: None,
        duration_ms: 1,
        bytes_out: 0,
        truncated: false,
        error: None,
    }));
    write_batch(&mut conn, &mut batch).unwrap();
    assert!(c_acked.await.is_ok());
    let transfers: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(transfers, BIG as i64);
    let ended: Option<i64> = sqlx::query_scalar("SELECT exit_code FROM commands WHERE id = 'c9'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ended, Some(0), "the end row came after the start row");
}

#[tokio::test]
async fn close_writes_what_is_queued_then_the_writer_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (audit, writer) = Audit::open(dir.path()).await.unwrap();
    let a = actor("s3");
    // Nobody waits for this row: it lingers in the writer until the close takes it.
    audit.session_started(&a).await;
    audit.close().await;
    writer.await.unwrap();
    let refused = audit.command_started("c1", &a, "true", "").await;
    assert!(
        refused.is_err(),
        "no command runs unrecorded after the close"
    );
    let (reopened, _writer) = Audit::open(dir.path()).await.unwrap();
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE id = 's3'")
        .fetch_one(reopened.pool())
        .await
        .unwrap();
    assert_eq!(sessions, 1);
}

/// Rows nobody waits for linger for company, but a full batch has all it can take: lingering
/// then capped the writer at one batch per linger (25,600 rows a second), and under load every
/// request waited behind the full queue.
#[test]
fn a_full_batch_or_an_awaited_row_does_not_linger() {
    let mut batch: Vec<Event> = (0..BATCH - 1).map(|i| transfer(&format!("t{i}"))).collect();
    assert!(lingers(&batch), "a batch short of full waits for company");
    batch.push(transfer("last"));
    assert!(!lingers(&batch), "a full batch is written at once");
    let (c, _acked) = start("c1", "s1");
    assert!(!lingers(&[transfer("t"), c]), "a command waits for its row");
    let (flush, _flushed) = oneshot::channel();
    assert!(!lingers(&[Event::Flush(flush)]));
}

/// A transfer row whose every value tells it apart: row `i` of a run.
fn distinct(i: usize) -> Event {
    let n = i as u64;
    Event::Transfer(Box::new(TransferRow {
        id: format!("v{i:02}").into(),
        actor: Actor {
            session_id: format!("s{i}").into(),
            transport: if i.is_multiple_of(2) { "tcp" } else { "http" },
            peer: format!("peer{i}").into(),
            principal: Arc::new(crate::core::auth::Principal::admin("test")),
        },
        path: format!("p{i}").into(),
        direction: if i.is_multiple_of(3) { "put" } else { "get" },
        size: n,
        bytes: n + 1000,
        md5: (!i.is_multiple_of(4)).then(|| format!("m{i}").into()),
        expected_md5: (!i.is_multiple_of(5)).then(|| format!("e{i}").into()),
        result: if i.is_multiple_of(2) {
            "verified"
        } else {
            "failed"
        },
        started_at: 10 * i as i64,
        ended_at: 10 * i as i64 + 7,
    }))
}

/// Every value of a transfer row, as stored.
#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Stored {
    id: String,
    session_id: String,
    transport: String,
    peer: String,
    path: String,
    direction: String,
    size: i64,
    bytes: i64,
    md5: Option<String>,
    expected_md5: Option<String>,
    result: String,
    started_at: i64,
    ended_at: i64,
}

/// The rows of `ids` as [`distinct`] makes them, as SQLite should give them back.
fn expected(ids: impl Iterator<Item = usize>) -> Vec<Stored> {
    ids.map(|i| {
        let Event::Transfer(t) = distinct(i) else {
            unreachable!()
        };
        Stored {
            id: t.id.to_string(),
            session_id: t.actor.session_id.to_string(),
            transport: t.actor.transport.to_string(),
            peer: t.actor.peer.to_string(),
            path: t.path.to_string(),
            direction: t.direction.to_string(),
            size: t.size as i64,
            bytes: t.bytes as i64,
            md5: t.md5.map(|m| m.to_string()),
            expected_md5: t.expected_md5.map(|m| m.to_string()),
            result: t.result.to_string(),
            started_at: t.started_at,
            ended_at: t.ended_at,
        }
    })
    .collect()
}

async fn stored(pool: &sqlx::SqlitePool) -> Vec<Stored> {
    sqlx::query_as(
        "SELECT id, session_id, transport, peer, path, direction, size, bytes, md5, \
         expected_md5, result, started_at, ended_at FROM transfers ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Rows written sixteen to a statement keep each value in its own column and row, the
/// statement serves again after a run that failed, and a bad row in a run costs only itself.
#[tokio::test]
async fn runs_of_transfer_rows_store_every_value_and_a_bad_one_costs_only_itself() {
    let (_dir, pool, mut conn) = store().await;
    // Two runs of sixteen and three single rows.
    let mut batch: Vec<Event> = (0..BIG - 5).map(distinct).collect();
    write_batch(&mut conn, &mut batch).unwrap();
    assert_eq!(stored(&pool).await, expected(0..BIG - 5));
    // A run with a row that repeats an id: the batch is rolled back and written row by row.
    let mut batch: Vec<Event> = (BIG..BIG + 20).map(distinct).collect();
    batch[7] = distinct(3);
    assert!(
        write_batch(&mut conn, &mut batch).is_err(),
        "the bad row is reported"
    );
    let want = (0..BIG - 5).chain((BIG..BIG + 20).filter(|i| *i != BIG + 7));
    assert_eq!(stored(&pool).await, expected(want));
    // The run's statement, back in the cache after its failure, writes the next run whole.
    let mut batch: Vec<Event> = (BIG + 20..BIG + 36).map(distinct).collect();
    write_batch(&mut conn, &mut batch).unwrap();
    let want = (0..BIG - 5)
        .chain((BIG..BIG + 20).filter(|i| *i != BIG + 7))
        .chain(BIG + 20..BIG + 36);
    assert_eq!(stored(&pool).await, expected(want));
}
