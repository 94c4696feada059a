//! Chunk buffers of one download, used again once the transport has sent them.

use bytes::Bytes;
use std::sync::{Arc, Mutex, Weak};

type Free = Mutex<Vec<Vec<u8>>>;

/// Buffers of one size lent out as chunks and given back when a chunk's last `Bytes` is
/// dropped: a download zeroes and pages in the few buffers it has in flight, not one per chunk.
pub(super) struct Pool {
    size: usize,
    free: Arc<Free>,
}

impl Pool {
    /// A pool of buffers of `size` bytes; it starts empty.
    pub(super) fn new(size: usize) -> Pool {
        Pool {
            size,
            free: Arc::default(),
        }
    }

    /// A buffer of the pool's size: one given back, or a new one.
    pub(super) fn take(&self) -> Vec<u8> {
        let back = self.free.lock().expect("pool lock").pop();
        back.unwrap_or_else(|| vec![0; self.size])
    }

    /// The first `len` bytes of `buf` as a chunk; `buf` comes back once the chunk is dropped,
    /// unless the pool is gone by then.
    pub(super) fn lend(&self, buf: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Lent {
            buf,
            len,
            back: Arc::downgrade(&self.free),
        })
    }
}

struct Lent {
    buf: Vec<u8>,
    len: usize,
    back: Weak<Free>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(free) = self.back.upgrade() {
            free.lock()
                .expect("pool lock")
                .push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_once_its_chunk_and_every_slice_of_it_are_dropped() {
        let pool = Pool::new(8);
        let mut buf = pool.take();
        buf[..3].copy_from_slice(b"abc");
        let at = buf.as_ptr();
        let chunk = pool.lend(buf, 3);
        assert_eq!(&chunk[..], b"abc");
        let part = chunk.slice(1..);
        let free = || pool.free.lock().unwrap().len();
        drop(chunk);
        assert_eq!(free(), 0, "still lent while a slice of it lives");
        drop(part);
        assert_eq!(free(), 1, "given back");
        let again = pool.take();
        assert_eq!(again.as_ptr(), at, "and lent again");
    }

    #[test]
    fn a_chunk_outliving_its_pool_frees_its_buffer() {
        let pool = Pool::new(8);
        let chunk = pool.lend(pool.take(), 8);
        let free = Arc::downgrade(&pool.free);
        drop(pool);
        assert!(free.upgrade().is_none());
        assert_eq!(chunk.len(), 8);
        drop(chunk);
    }
}
