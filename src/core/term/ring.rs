//! The replay buffer of a terminal session: the last bytes of output, addressed by byte offset.

use std::collections::VecDeque;

/// A bounded buffer of the newest output; a byte's sequence number is its offset in the whole
/// output of the session.
#[derive(Debug)]
pub struct Ring {
    buf: VecDeque<u8>,
    start: u64,
    cap: usize,
}

/// What a read from a sequence number found.
#[derive(Debug, PartialEq, Eq)]
pub enum Slice {
    /// Bytes from the asked offset on (empty when nothing is newer).
    Data(Vec<u8>),
    /// The bytes from the asked offset up to `oldest` have left the buffer.
    Lost {
        /// The oldest offset still held.
        oldest: u64,
    },
}

impl Ring {
    /// An empty buffer holding at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Ring {
            buf: VecDeque::with_capacity(cap.min(64 * 1024)),
            start: 0,
            cap: cap.max(1),
        }
    }

    /// The offset just past the newest byte (the total output so far).
    pub fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// The oldest offset still held.
    pub fn oldest(&self) -> u64 {
        self.start
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Appends output, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, bytes: &[u8]) {
        // Room is made before the bytes go in, so the buffer never grows past its capacity
        // (a VecDeque that overflows doubles its allocation).
        let keep = &bytes[bytes.len().saturating_sub(self.cap)..];
        let over = (self.buf.len() + keep.len()).saturating_sub(self.cap);
        if over > 0 {
            self.buf.drain(..over);
        }
        self.start += (bytes.len() - keep.len() + over) as u64;
        self.buf.extend(keep);
    }

    /// At most `max` bytes from offset `seq` on. An offset past the end reads as empty.
    pub fn read(&self, seq: u64, max: usize) -> Slice {
        if seq < self.start {
            return Slice::Lost { oldest: self.start };
        }
        let from = usize::try_from(seq - self.start).unwrap_or(usize::MAX);
        if from >= self.buf.len() {
            return Slice::Data(Vec::new());
        }
        let to = self.buf.len().min(from.saturating_add(max));
        let (a, b) = self.buf.as_slices();
        let mut out = Vec::with_capacity(to - from);
        if from < a.len() {
            out.extend_from_slice(&a[from..to.min(a.len())]);
        }
        if to > a.len() {
            out.extend_from_slice(&b[from.saturating_sub(a.len())..to - a.len()]);
        }
        Slice::Data(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{Ring, Slice};

    #[test]
    fn keeps_the_newest_bytes_by_offset() {
        let mut r = Ring::new(4);
        r.push(b"abc");
        assert_eq!(r.read(1, 10), Slice::Data(b"bc".to_vec()));
        r.push(b"def");
        assert_eq!((r.oldest(), r.end(), r.held()), (2, 6, 4));
        assert_eq!(r.read(1, 10), Slice::Lost { oldest: 2 });
        assert_eq!(r.read(3, 2), Slice::Data(b"de".to_vec()));
        assert_eq!(r.read(6, 2), Slice::Data(Vec::new()));
        // More than the capacity at once: only its newest bytes are kept.
        r.push(b"ghijkl");
        assert_eq!((r.oldest(), r.end(), r.held()), (8, 12, 4));
        assert_eq!(r.read(8, 10), Slice::Data(b"ijkl".to_vec()));
    }

    #[test]
    fn never_allocates_past_its_capacity() {
        let mut r = Ring::new(1 << 16);
        for _ in 0..40 {
            r.push(&[7u8; 5000]);
        }
        assert_eq!(r.held(), 1 << 16);
        assert!(r.buf.capacity() < 1 << 17, "{}", r.buf.capacity());
    }
}
