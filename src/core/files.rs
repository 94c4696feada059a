//! The served root: confined file access, listings and the digest of every file.

use crate::core::audit::{Actor, Audit, TransferRow, now_ms};
use crate::core::auth::Action;
use crate::core::digests::{DigestCache, FileKey};
use crate::core::error::{Code, Error, Result};
use crate::core::paths::RelPath;
use crate::core::queue::{QUEUE_WAIT, wait_for_slot};
use crate::core::registry::{Registry, new_id};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// The marker in the names of in-progress uploads; such files are hidden from listings.
pub const TEMP_MARKER: &str = ".ferry-tmp-";

/// One entry of a listing, or the answer to `stat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// The file name (the full relative path for `stat`).
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, unix ms.
    pub mtime: i64,
    /// The MD5 hex, when known without hashing.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub md5: Option<String>,
}

/// Most transfers (downloads, uploads, upload appends) at once, across all transports. Each
/// holds a blocking thread while it runs, and tokio's pool has 512: the rest stay free for
/// opens, listings and commands.
pub const MAX_TRANSFERS: usize = 256;

/// Confined access to the served root, shared by every transport. A clone is one counter
/// increment: every download holds one, and each shared counter touched per request is a cache
/// line the workers pass back and forth.
#[derive(Clone)]
pub struct Files(Arc<FilesParts>);

impl std::ops::Deref for Files {
    type Target = FilesParts;
    fn deref(&self) -> &FilesParts {
        &self.0
    }
}

/// What [`Files`] holds.
pub struct FilesParts {
    pub(crate) dir: Arc<Dir>,
    transfers: Arc<tokio::sync::Semaphore>,
    root_path: Arc<Path>,
    pub(crate) digests: DigestCache,
    pub(crate) audit: Audit,
    pub(crate) registry: Registry,
    /// Each device seen by the disk thread, and whether it is a file system in memory (tmpfs,
    /// ramfs), whose small files the async thread reads without `RWF_NOWAIT`.
    pub(crate) memory_devices: Arc<std::sync::RwLock<Vec<(u64, bool)>>>,
}

/// Runs blocking filesystem work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)?
}

impl Files {
    /// Opens the root (created if missing).
    pub fn open(
        root: &Path,
        digests: DigestCache,
        audit: Audit,
        registry: Registry,
    ) -> anyhow::Result<Files> {
        std::fs::create_dir_all(root)?;
        let root_path = root.canonicalize()?;
        let dir = Dir::open_ambient_dir(&root_path, ambient_authority())?;
        Ok(Files(Arc::new(FilesParts {
            dir: Arc::new(dir),
            transfers: Arc::new(tokio::sync::Semaphore::new(MAX_TRANSFERS)),
            root_path: root_path.into(),
            digests,
            audit,
            registry,
            memory_devices: Arc::default(),
        })))
    }

    /// A slot for one transfer: at once while fewer than [`MAX_TRANSFERS`] run, else the first
    /// one freed within [`QUEUE_WAIT`] (a burst queues, as commands do), else `busy`.
    pub(crate) async fn transfer_slot(&self) -> Result<OwnedSemaphorePermit> {
        wait_for_slot(&self.transfers, QUEUE_WAIT, || {
            format!("{MAX_TRANSFERS} transfers are running; retry shortly")
        })
        .await
    }

    /// The root's absolute path on the host.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Resolves a directory for a command's cwd: confined, and must exist. The answer is its
    /// physical path (no symlink in it), as the shell sets `PWD`.
    pub async fn resolve_dir(&self, raw: &str) -> Result<PathBuf> {
        let rel = RelPath::parse(raw)?;
        let root = self.root_path.to_path_buf();
        if rel.is_root() {
            // The root is a directory held open since startup: nothing to look up.
            return Ok(root);
        }
        let dir = self.dir.clone();
        blocking(move || {
            let meta = dir
                .metadata(rel.as_path())
                .map_err(|e| Error::io(e, rel.as_str()))?;
            if !meta.is_dir() {
                return Err(Error::bad_request(format!("{rel}: not a directory")));
            }
            let physical = std::fs::canonicalize(root.join(rel.as_path()))
                .map_err(|e| Error::io(e, rel.as_str()))?;
            // A symlink swapped in since the check above could lead out of the root.
            if !physical.starts_with(&root) {
                return Err(Error::io(
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                    rel.as_str(),
                ));
            }
            Ok(physical)
        })
        .await
    }

    /// Describes one path (following symlinks that stay inside the root).
    pub async fn stat(&self, actor: &Actor, raw: &str) -> Result<Entry> {
        actor.require(Action::Browse)?;
        let rel = RelPath::parse(raw)?;
        let this = self.clone();
        blocking(move || {
            let meta = this
                .dir
                .metadata(rel.as_path())
                .map_err(|e| Error::io(e, rel.as_str()))?;
            Ok(this.entry(rel.as_str().to_string(), &rel, &meta, meta.file_type()))
        })
        .await
    }

    /// Lists a directory, sorted by name; in-progress uploads are hidden.
    pub async fn list(&self, actor: &Actor, raw: &str) -> Result<Vec<Entry>> {
        actor.require(Action::Browse)?;
        let rel = RelPath::parse(raw)?;
        let this = self.clone();
        blocking(move || {
            let rd = this
                .dir
                .read_dir(rel.as_path())
                .map_err(|e| Error::io(e, rel.as_str()))?;
            let mut out = Vec::new();
            for entry in rd {
                let entry = entry.map_err(|e| Error::io(e, rel.as_str()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.contains(TEMP_MARKER) {
                    continue;
                }
                let Ok(ft) = entry.file_type() else { continue };
                let Ok(meta) = entry.metadata() else { continue };
                out.push(this.entry(name.clone(), &rel.join(&name), &meta, ft));
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    /// Deletes a file, a symlink or an empty directory; audited, and its digest forgotten.
    pub async fn delete(&self, actor: &Actor, raw: &str) -> Result<Entry> {
        actor.require(Action::Write)?;
        let rel = RelPath::parse(raw)?;
        if rel.is_root() {
            return Err(Error::bad_request("cannot delete the root directory"));
        }
        let this = self.clone();
        let rel2 = rel.clone();
        let entry = blocking(move || {
            let rel = rel2;
            let meta = this
                .dir
                .symlink_metadata(rel.as_path())
                .map_err(|e| Error::io(e, rel.as_str()))?;
            let entry = this.entry(rel.as_str().to_string(), &rel, &meta, meta.file_type());
            let removed = if meta.is_dir() {
                this.dir.remove_dir(rel.as_path())
            } else {
                this.dir.remove_file(rel.as_path())
            };
            match removed {
                Ok(()) => Ok(entry),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTEMPTY.raw_os_error()) => {
                    Err(Error::new(
                        Code::Conflict,
                        format!("{rel}: directory not empty"),
                    ))
                }
                Err(e) => Err(Error::io(e, rel.as_str())),
            }
        })
        .await?;
        self.digests.forget(rel.as_str()).await;
        tracing::info!(session = %actor.session_id, transport = actor.transport, path = %rel, kind = %entry.kind, "delete");
        self.audit
            .transfer(TransferRow {
                id: new_id(),
                actor: actor.clone(),
                path: rel.as_str().into(),
                direction: "delete",
                size: entry.size,
                bytes: 0,
                md5: entry.md5.as_deref().map(Into::into),
                expected_md5: None,
                result: "deleted",
                started_at: now_ms(),
                ended_at: now_ms(),
            })
            .await;
        Ok(entry)
    }

    fn entry(
        &self,
        name: String,
        rel: &RelPath,
        meta: &cap_std::fs::Metadata,
        ft: cap_std::fs::FileType,
    ) -> Entry {
        use cap_std::fs::MetadataExt;
        let kind = if ft.is_symlink() {
            "symlink"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        let md5 = ft
            .is_file()
            .then(|| self.digests.lookup(rel.as_str(), FileKey::of_cap(meta)))
            .flatten();
        Entry {
            name,
            kind: kind.to_string(),
            size: meta.len(),
            mtime: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
            md5,
        }
    }

    /// The MD5 of an open file: from the cache, or hashed once and stored.
    pub(crate) fn digest_of(
        &self,
        rel: &RelPath,
        file: &std::fs::File,
    ) -> Result<(FileKey, String)> {
        use std::io::{Seek, SeekFrom};
        let meta = file.metadata().map_err(|e| Error::io(e, rel.as_str()))?;
        let mut key = FileKey::of(&meta);
        if let Some(md5) = self.digests.lookup(rel.as_str(), key) {
            return Ok((key, md5));
        }
        // A file written while it is hashed has no digest to announce: try twice, then refuse
        // rather than send a wrong strong ETag.
        for _ in 0..2 {
            (&mut &*file)
                .seek(SeekFrom::Start(0))
                .map_err(|e| Error::io(e, rel.as_str()))?;
            let (md5, _) =
                crate::core::checksum::hash_reader(file).map_err(|e| Error::io(e, rel.as_str()))?;
            let after = FileKey::of(&file.metadata().map_err(|e| Error::io(e, rel.as_str()))?);
            if after == key {
                // Only keep it if the file was not changed just now: a write in the same
                // timestamp tick would not show in the key.
                let now_ns = crate::core::audit::now_ms() * 1_000_000;
                if now_ns - key.mtime_ns > 2_000_000_000 {
                    self.digests.store(rel.as_str(), key, &md5);
                }
                return Ok((key, md5));
            }
            key = after;
        }
        Err(Error::new(
            Code::Busy,
            format!("{rel}: the file is being written; retry when it is complete"),
        ))
    }
}
