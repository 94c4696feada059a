//! Transfer rows into the audit store: the one list of a row's values, bound the same way in
//! a batch's multi-row INSERTs and in a short trip's string of statements.

use crate::core::audit::TransferRow;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, QueryBuilder, Sqlite};
use std::sync::Arc;

/// Most rows of one multi-row INSERT into `transfers`.
const TRANSFER_ROWS: usize = 64;

/// Writes transfer rows with few statements: chunks of 64, 32, ... 1 rows, so that at most seven
/// statement shapes are ever prepared and cached. Each shape's text is built once, and the rows'
/// values go straight into the arguments (a `QueryBuilder` formats a placeholder per value).
pub(super) async fn insert_transfers(
    tx: &mut sqlx::SqliteConnection,
    rows: &mut Vec<&TransferRow>,
) -> sqlx::Result<()> {
    let mut rest = &rows[..];
    while !rest.is_empty() {
        let n = 1 << rest.len().min(TRANSFER_ROWS).ilog2();
        let (chunk, after) = rest.split_at(n);
        rest = after;
        let mut args = SqliteArguments::default();
        for t in chunk {
            bind_transfer!(t, |v| args.add(v).map_err(sqlx::Error::Encode)?);
        }
        sqlx::query_with(transfer_insert(n), args)
            .execute(&mut *tx)
            .await?;
    }
    rows.clear();
    Ok(())
}

const TRANSFER_COLUMNS: &str = "INSERT INTO transfers (id, session_id, transport, peer, path, \
     direction, size, bytes, md5, expected_md5, result, started_at, ended_at) ";

/// The INSERT of `rows` transfer rows (a power of two up to [`TRANSFER_ROWS`]).
fn transfer_insert(rows: usize) -> &'static str {
    static SHAPES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        (0..=TRANSFER_ROWS.ilog2())
            .map(|k| {
                let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
                format!("{TRANSFER_COLUMNS}VALUES {}", vec![row; 1 << k].join(", "))
            })
            .collect()
    });
    &SHAPES[rows.ilog2() as usize]
}

/// Binds a transfer row's values in column order, each with `$bind` (as `$v`). Shared strings
/// are bound as clones of their `Arc`: sqlx allocates a copy of a borrowed string on every
/// bind, while an owned `Arc<str>` is handed over with a refcount bump.
#[rustfmt::skip]
macro_rules! bind_transfer {
    ($t:expr, |$v:ident| $bind:expr) => {{
        let t: &TransferRow = $t;
        { let $v = t.id.clone(); $bind; }
        { let $v = t.actor.session_id.clone(); $bind; }
        { let $v = shared(t.actor.transport); $bind; }
        { let $v = t.actor.peer.clone(); $bind; }
        { let $v = t.path.clone(); $bind; }
        { let $v = shared(t.direction); $bind; }
        { let $v = t.size as i64; $bind; }
        { let $v = t.bytes as i64; $bind; }
        { let $v = t.md5.clone(); $bind; }
        { let $v = t.expected_md5.clone(); $bind; }
        { let $v = shared(t.result); $bind; }
        { let $v = t.started_at; $bind; }
        { let $v = t.ended_at; $bind; }
    }};
}
use bind_transfer;

/// Appends one INSERT of `rows` into `transfers`.
pub(super) fn push_transfers(q: &mut QueryBuilder<Sqlite>, rows: &[&TransferRow]) {
    q.push(TRANSFER_COLUMNS);
    q.push_values(rows, |mut b, t| {
        bind_transfer!(t, |v| b.push_bind(v));
    });
}

/// `word` as a shared string, made once per thread: sqlx copies a borrowed string into two
/// fresh allocations on every bind, and a transfer row has three such words (transport,
/// direction, result).
fn shared(word: &'static str) -> Arc<str> {
    thread_local! {
        static WORDS: std::cell::RefCell<Vec<(&'static str, Arc<str>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    WORDS.with_borrow_mut(|words| {
        if let Some((_, w)) = words.iter().find(|(k, _)| *k == word) {
            return w.clone();
        }
        let w: Arc<str> = word.into();
        words.push((word, w.clone()));
        w
    })
}
