//! Ids of sessions, transfers and commands, and random names.

use crate::core::audit::now_ms;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh id (16 hex digits) that sorts by creation time, so audit rows append to their indexes.
///
/// The high 44 bits are Unix milliseconds; the low 20 count from a point drawn at random once
/// per process, so two runs of the server in one millisecond do not collide. Ids from one
/// process only ever grow.
pub fn new_id() -> Arc<str> {
    id_at(now_ms())
}

/// A fresh id as [`new_id`] makes, for a moment `ms` (Unix milliseconds) the caller just read.
pub fn id_at(ms: i64) -> Arc<str> {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static OFFSET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let offset = *OFFSET.get_or_init(|| {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).expect("the OS random source works");
        u64::from(u32::from_le_bytes(b) & 0x7_ffff)
    });
    let fresh = ((ms as u64) << 20) | offset;
    let prev = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(fresh.max(last + 1))
        })
        .expect("the closure always gives a value");
    hex_id(fresh.max(prev + 1).to_be_bytes())
}

/// Eight bytes as 16 hex digits, through a table (`hex::encode` goes a `char` at a time: a
/// few hundred instructions on every transfer).
fn hex_id<T: for<'a> From<&'a str>>(bytes: [u8; 8]) -> T {
    let mut out = [0u8; 16];
    hex::encode_to_slice(bytes, &mut out).expect("16 digits hold 8 bytes");
    std::str::from_utf8(&out)
        .expect("hex digits are ASCII")
        .into()
}

/// A fresh random id (16 hex digits) for names nobody should guess or predict.
pub fn random_id() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source works");
    hex_id(b)
}

#[cfg(test)]
mod tests {
    use super::new_id;
    use std::sync::Arc;

    /// Ids are 16 hex digits, grow with every call, and start from the current millisecond.
    #[test]
    fn ids_grow_in_time_order() {
        let before = crate::core::audit::now_ms() as u64;
        let ids: Vec<Arc<str>> = (0..10_000).map(|_| new_id()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        for id in &ids {
            assert_eq!(id.len(), 16);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        let ms = u64::from_str_radix(&ids[0], 16).unwrap() >> 20;
        assert!(
            ms >= before && ms <= crate::core::audit::now_ms() as u64,
            "{ms} vs {before}"
        );
    }
}
