//! The one streaming MD5 used by every path that moves bytes.

use ferry_md5::{Digest, Md5};
use std::io::{self, Read, Write};

/// A streaming MD5 that counts the bytes it has seen.
#[derive(Clone, Default)]
pub struct Md5Stream {
    hasher: Md5,
    len: u64,
}

impl Md5Stream {
    /// Starts an empty digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes into the digest.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// How many bytes have been fed.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no byte has been fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finishes and returns the lowercase hex digest.
    pub fn hex(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

/// A writer that hashes every byte it passes on.
pub struct HashingWriter<W> {
    inner: W,
    md5: Md5Stream,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`, starting from an existing digest state.
    pub fn with_state(inner: W, md5: Md5Stream) -> Self {
        HashingWriter { inner, md5 }
    }

    /// Wraps `inner` with a fresh digest.
    pub fn new(inner: W) -> Self {
        Self::with_state(inner, Md5Stream::new())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.md5.len()
    }

    /// Returns the inner writer and the digest state.
    pub fn into_parts(self) -> (W, Md5Stream) {
        (self.inner, self.md5)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.md5.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Feeds everything `reader` yields into `md5`, in large reads.
pub fn digest_reader(mut reader: impl Read, mut md5: Md5Stream) -> io::Result<Md5Stream> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(md5),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        md5.update(&buf[..n]);
    }
}

/// Hashes everything `reader` yields; returns (hex, length).
pub fn hash_reader(reader: impl Read) -> io::Result<(String, u64)> {
    let md5 = digest_reader(reader, Md5Stream::new())?;
    let len = md5.len();
    Ok((md5.hex(), len))
}

/// An MD5 computed on a thread of its own: the bytes are hashed while the caller writes them,
/// so that a verified stream costs the longer of the two instead of their sum.
pub struct Md5Thread {
    tx: Option<std::sync::mpsc::SyncSender<Vec<bytes::Bytes>>>,
    thread: Option<std::thread::JoinHandle<Md5Stream>>,
    /// The digest, hashed inline, when no thread could be started.
    inline: Option<Md5Stream>,
}

impl Md5Thread {
    /// Starts hashing on from `state` (a resumed download's prefix, or a fresh digest); hashes
    /// inline instead if the system has no thread to spare.
    pub fn start(state: Md5Stream) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<bytes::Bytes>>(MD5_QUEUE);
        let spawned = std::thread::Builder::new().name("ferry-md5".into()).spawn({
            let mut md5 = state.clone();
            move || {
                for batch in rx {
                    for chunk in batch {
                        md5.update(&chunk);
                    }
                }
                md5
            }
        });
        match spawned {
            Ok(thread) => Md5Thread {
                tx: Some(tx),
                thread: Some(thread),
                inline: None,
            },
            Err(_) => Md5Thread {
                tx: None,
                thread: None,
                inline: Some(state),
            },
        }
    }

    /// Hands `chunk` over (waits only while a few chunks are already queued).
    pub fn update(&mut self, chunk: bytes::Bytes) {
        self.update_batch(vec![chunk]);
    }

    /// Hands several chunks over at once, hashed in order: one wake-up of the hashing thread
    /// for all of them.
    pub fn update_batch(&mut self, batch: Vec<bytes::Bytes>) {
        if let Some(md5) = &mut self.inline {
            batch.iter().for_each(|chunk| md5.update(chunk));
        } else if let Some(tx) = &self.tx {
            let _ = tx.send(batch);
        }
    }

    /// Waits for the last chunk to be hashed; `None` if the hashing thread failed.
    pub fn finish(mut self) -> Option<Md5Stream> {
        if let Some(md5) = self.inline.take() {
            return Some(md5);
        }
        self.tx.take();
        self.thread.take()?.join().ok()
    }
}

impl Drop for Md5Thread {
    fn drop(&mut self) {
        // An abandoned stream: close the queue so the thread ends; nobody waits for it.
        self.tx.take();
    }
}

/// Hand-overs (a chunk, or an upload's batch of about 1 MiB) queued for the hashing thread
/// before the writer waits.
const MD5_QUEUE: usize = 4;

/// Whether `s` is a well-formed MD5 hex digest (32 hex digits, any case).
pub fn is_md5_hex(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(
            hash_reader(&b""[..]).unwrap().0,
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello\n").unwrap();
        let (buf, md5) = w.into_parts();
        assert_eq!(buf, b"hello\n");
        assert_eq!(md5.hex(), "b1946ac92492d2347c6235b4d2611184");
    }

    #[test]
    fn hashing_on_a_thread_matches() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut prefix = Md5Stream::new();
        prefix.update(&data[..1000]);
        let mut t = Md5Thread::start(prefix);
        for part in data[1000..].chunks(65_536) {
            t.update(bytes::Bytes::copy_from_slice(part));
        }
        let got = t.finish().unwrap();
        assert_eq!(got.len(), data.len() as u64);
        assert_eq!(got.hex(), hash_reader(&data[..]).unwrap().0);
    }
}
