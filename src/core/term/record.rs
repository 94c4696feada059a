//! Recordings of terminal sessions as asciicast v2 files, and their listing.

use crate::core::error::{Code, Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Most output bytes one recording keeps; later output is not recorded (the shell goes on).
pub const MAX_RECORDING: u64 = 64 << 20;

/// The folder of the recordings under the data dir.
pub const RECORDINGS: &str = "recordings";

/// One event of a recording.
#[derive(Debug)]
enum Rec {
    Output(Vec<u8>),
    Resize(u16, u16),
}

/// The sending side of a recording; cheap to clone, the file is complete once every clone is
/// dropped and the writer task has ended.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Rec>,
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
        let file = tokio::fs::File::create(dir.join(format!("{id}.cast"))).await?;
        let mut out = BufWriter::new(file);
        let header = serde_json::json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": crate::core::audit::now_ms() / 1000,
            "env": {"TERM": "xterm-256color"},
        });
        out.write_all(format!("{header}\n").as_bytes()).await?;
        out.flush().await?;
        // A short queue: a slow disk slows the terminal's reader rather than filling memory.
        let (tx, mut rx) = mpsc::channel::<Rec>(16);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut pending = Vec::new();
            let mut written = 0u64;
            while let Some(ev) = rx.recv().await {
                let t = started.elapsed().as_secs_f64();
                let line = match ev {
                    Rec::Output(bytes) if written < MAX_RECORDING => {
                        written += bytes.len() as u64;
                        pending.extend_from_slice(&bytes);
                        let text = utf8_prefix(&mut pending);
                        serde_json::json!([t, "o", text])
                    }
                    Rec::Output(_) => continue,
                    Rec::Resize(cols, rows) => {
                        serde_json::json!([t, "r", format!("{cols}x{rows}")])
                    }
                };
                if out.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    break;
                }
                if rx.is_empty() && out.flush().await.is_err() {
                    break;
                }
            }
            let _ = out.flush().await;
        });
        Ok((Recorder { tx }, task))
    }

    /// Records output bytes.
    pub async fn output(&self, bytes: &[u8]) {
        let _ = self.tx.send(Rec::Output(bytes.to_vec())).await;
    }

    /// Records a resize.
    pub async fn resize(&self, cols: u16, rows: u16) {
        let _ = self.tx.send(Rec::Resize(cols, rows)).await;
    }
}

/// Takes the longest prefix of `pending` that is whole UTF-8 (invalid bytes become U+FFFD); an
/// incomplete character at the end waits for the next chunk.
fn utf8_prefix(pending: &mut Vec<u8>) -> String {
    let cut = match std::str::from_utf8(pending) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => pending.len(),
    };
    let text = String::from_utf8_lossy(&pending[..cut]).into_owned();
    pending.drain(..cut);
    text
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
    }
}
