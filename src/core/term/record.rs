//! Recordings of terminal sessions as asciicast v2 files, and their listing.
//!
//! The terminal's reader only appends its output (and the writer side its resizes) to an
//! in-memory batch; a writer task turns each batch into asciicast lines and writes them on a
//! blocking thread, at most [`FLUSH_EVERY`] after the batch's first event (sooner past
//! [`BATCH`] bytes). Recording thus costs a keystroke's echo a copy, not a task hop and a file
//! write of its own.

use crate::core::error::{Code, Error, Result};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Most output bytes one recording keeps; later output is not recorded (the shell goes on).
pub const MAX_RECORDING: u64 = 64 << 20;

/// The folder of the recordings under the data dir.
pub const RECORDINGS: &str = "recordings";

/// How long recorded output may wait in memory before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// A batch this large is written without waiting for [`FLUSH_EVERY`].
const BATCH: usize = 64 << 10;

/// A batch this large makes the terminal's reader wait for the writer (a slow disk slows the
/// terminal rather than filling memory).
const MAX_BATCH: usize = 1 << 20;

/// One event of a recording; output events end at an offset of the batch's data.
enum Ev {
    Output { t: f64, end: usize },
    Resize { t: f64, cols: u16, rows: u16 },
}

/// Events not written yet.
#[derive(Default)]
struct Batch {
    events: Vec<Ev>,
    data: Vec<u8>,
    /// Output bytes recorded so far (see [`MAX_RECORDING`]).
    recorded: u64,
    /// Every [`Recorder`] is gone: the writer writes what is left and ends.
    closed: bool,
    /// Writing failed: nothing more is recorded.
    failed: bool,
}

struct Shared {
    batch: Mutex<Batch>,
    started: Instant,
    /// Wakes the writer: a batch started, grew past [`BATCH`], or the recording is closed.
    wake: Notify,
    /// Wakes a reader waiting for the writer to take a full batch.
    room: Notify,
}

/// Closes the recording when the last [`Recorder`] clone is dropped.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.batch.lock().unwrap().closed = true;
        self.0.wake.notify_one();
    }
}

/// The sending side of a recording; cheap to clone, the file is complete once every clone is
/// dropped and the writer task has ended.
#[derive(Clone)]
pub struct Recorder {
    handle: Arc<Handle>,
}

impl Recorder {
    /// Creates `<dir>/<id>.cast` with its header and starts its writer task.
    pub async fn start(
        dir: &Path,
        id: &str,
        cols: u16,
        rows: u16,
    ) -> std::io::Result<(Recorder, JoinHandle<()>)> {
        tokio::fs::create_dir_all(dir).await?;
        let mut file = tokio::fs::File::create(dir.join(format!("{id}.cast"))).await?;
        let header = serde_json::json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": crate::core::audit::now_ms() / 1000,
            "env": {"TERM": "xterm-256color"},
        });
        file.write_all(format!("{header}\n").as_bytes()).await?;
        file.flush().await?;
        let shared = Arc::new(Shared {
            batch: Mutex::default(),
            started: Instant::now(),
            wake: Notify::new(),
            room: Notify::new(),
        });
        let lines = Lines {
            out: std::io::BufWriter::with_capacity(BATCH, file.into_std().await),
            pending: Vec::new(),
        };
        let task = tokio::spawn(write_task(shared.clone(), lines));
        let handle = Arc::new(Handle(shared));
        Ok((Recorder { handle }, task))
    }

    /// Records output bytes; waits while the writer is a whole [`MAX_BATCH`] behind.
    pub async fn output(&self, bytes: &[u8]) {
        let shared = &self.handle.0;
        loop {
            {
                let mut b = shared.batch.lock().unwrap();
                if b.failed || b.recorded >= MAX_RECORDING {
                    return;
                }
                if b.data.len() < MAX_BATCH {
                    let first = b.events.is_empty();
                    b.recorded += bytes.len() as u64;
                    b.data.extend_from_slice(bytes);
                    let (t, end) = (shared.started.elapsed().as_secs_f64(), b.data.len());
                    b.events.push(Ev::Output { t, end });
                    drop(b);
                    if first || end >= BATCH && end - bytes.len() < BATCH {
                        shared.wake.notify_one();
                    }
                    return;
                }
            }
            shared.room.notified().await;
        }
    }

    /// Records a resize.
    pub fn resize(&self, cols: u16, rows: u16) {
        let shared = &self.handle.0;
        let mut b = shared.batch.lock().unwrap();
        let first = b.events.is_empty();
        let t = shared.started.elapsed().as_secs_f64();
        b.events.push(Ev::Resize { t, cols, rows });
        drop(b);
        if first {
            shared.wake.notify_one();
        }
    }
}

/// Writes batches as they come (a burst gathers for [`FLUSH_EVERY`] at most) until the
/// recording is closed.
async fn write_task(shared: Arc<Shared>, mut lines: Lines) {
    loop {
        shared.wake.notified().await;
        if !shared.batch.lock().unwrap().closed {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
                _ = shared.wake.notified() => {}
            }
        }
        let (events, data, closed) = {
            let mut b = shared.batch.lock().unwrap();
            let events = std::mem::take(&mut b.events);
            (events, std::mem::take(&mut b.data), b.closed)
        };
        shared.room.notify_one();
        if !events.is_empty() {
            let done = tokio::task::spawn_blocking(move || {
                let r = lines.write(&events, &data);
                (lines, r)
            })
            .await;
            match done {
                Ok((l, Ok(()))) => lines = l,
                _ => {
                    shared.batch.lock().unwrap().failed = true;
                    shared.room.notify_one();
                    return;
                }
            }
        }
        if closed {
            return;
        }
    }
}

/// The file being written, and output that ends inside a UTF-8 character.
struct Lines {
    out: std::io::BufWriter<std::fs::File>,
    pending: Vec<u8>,
}

impl Lines {
    /// Writes a batch as asciicast lines, and flushes.
    fn write(&mut self, events: &[Ev], data: &[u8]) -> std::io::Result<()> {
        let mut from = 0;
        for ev in events {
            match *ev {
                Ev::Output { t, end } => {
                    self.pending.extend_from_slice(&data[from..end]);
                    from = end;
                    let text = utf8_prefix(&mut self.pending);
                    line(&mut self.out, &(t, "o", text))?;
                }
                Ev::Resize { t, cols, rows } => {
                    line(&mut self.out, &(t, "r", format!("{cols}x{rows}")))?;
                }
            }
        }
        self.out.flush()
    }
}

/// Writes one JSON line.
fn line(out: &mut impl Write, v: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, v)?;
    out.write_all(b"\n")
}

/// Takes the longest prefix of `pending` that is whole UTF-8 (invalid bytes become U+FFFD); an
/// incomplete character at the end waits for the next chunk.
fn utf8_prefix(pending: &mut Vec<u8>) -> String {
    let cut = match std::str::from_utf8(pending) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => pending.len(),
    };
    let rest = pending.split_off(cut);
    // Valid text (the usual case) moves into the String without a copy or a second pass.
    match String::from_utf8(std::mem::replace(pending, rest)) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// A recording as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingInfo {
    /// The terminal session's id.
    pub id: String,
    /// Start, unix ms (from the file's header).
    pub started_at: i64,
    /// File size in bytes.
    pub size: u64,
    /// Path of the file, relative to the data dir.
    pub path: String,
}

/// Whether `id` has the form of a session id (so it names no other file).
fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The file of recording `id` in `dir`, if the id is well formed and the file exists.
pub async fn path_of(dir: &Path, id: &str) -> Result<PathBuf> {
    let not_found = || Error::new(Code::NotFound, format!("no recording {id:?}"));
    if !valid_id(id) {
        return Err(not_found());
    }
    let path = dir.join(format!("{id}.cast"));
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => Ok(path),
        _ => Err(not_found()),
    }
}

/// Every recording in `dir`, newest first.
pub async fn list(dir: &Path) -> Result<Vec<RecordingInfo>> {
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::internal(e)),
    };
    while let Some(entry) = entries.next_entry().await.map_err(Error::internal)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".cast").filter(|i| valid_id(i)) else {
            continue;
        };
        let Ok(meta) = entry.metadata().await else {
            continue;
        };
        out.push(RecordingInfo {
            id: id.to_string(),
            started_at: header_time(&entry.path()).await.unwrap_or(0),
            size: meta.len(),
            path: format!("{RECORDINGS}/{name}"),
        });
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.started_at));
    Ok(out)
}

/// The header's `timestamp` (unix seconds) in unix ms.
async fn header_time(path: &Path) -> Option<i64> {
    let mut buf = vec![0u8; 512];
    let mut f = tokio::fs::File::open(path).await.ok()?;
    let n = f.read(&mut buf).await.ok()?;
    let line = buf[..n].split(|b| *b == b'\n').next()?;
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v["timestamp"].as_i64().map(|s| s * 1000)
}

#[cfg(test)]
mod tests {
    use super::utf8_prefix;

    #[test]
    fn a_split_character_waits_for_its_end() {
        let mut p = "hé".as_bytes()[..2].to_vec();
        assert_eq!(utf8_prefix(&mut p), "h");
        p.push("é".as_bytes()[1]);
        assert_eq!(utf8_prefix(&mut p), "é");
        assert!(p.is_empty());
        // An invalid byte becomes U+FFFD; the text around it stays.
        let mut p = b"a\xffb".to_vec();
        assert_eq!(utf8_prefix(&mut p), "a\u{fffd}b");
        assert!(p.is_empty());
    }
}
