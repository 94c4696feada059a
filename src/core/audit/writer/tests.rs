//! A batch with a bad row: the good rows are written and acknowledged, the bad one alone fails.

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

#[tokio::test]
async fn one_bad_row_costs_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (audit, _writer) = Audit::open(dir.path()).await.unwrap();
    let pool = audit.pool().clone();
    let (good, good_acked) = start("c1", "s1");
    // The same command id twice: the second breaks the primary key.
    let (dup, dup_acked) = start("c1", "s1");
    let (later, later_acked) = start("c2", "s1");
    let mut batch = vec![Event::SessionStart(actor("s1"), now_ms()), good, dup, later];
    let result = write_batch(&pool, &mut batch).await;
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
    write_batch(&pool, &mut batch).await.unwrap();
    assert!(a_acked.await.is_ok() && flushed.await.is_ok());
}
