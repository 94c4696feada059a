//! The in-memory digest cache, keyed by path and checked against size, mtime and inode.

use crate::core::audit::{Audit, DigestRow};
use foldhash::HashMap;
use std::sync::{Arc, Mutex};

/// The identity of a file's content as the filesystem reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Status change time, ns since the epoch: catches rewrites that restore size and mtime.
    pub ctime_ns: i64,
}

impl FileKey {
    /// Reads the key from std metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        use std::os::unix::fs::MetadataExt;
        FileKey {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ino: meta.ino(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }

    /// Reads the key from cap-std metadata.
    pub fn of_cap(meta: &cap_std::fs::Metadata) -> FileKey {
        use cap_std::fs::MetadataExt;
        FileKey {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ino: meta.ino(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

/// Digests of files under the root: memory first, SQLite as the durable copy.
#[derive(Clone)]
pub struct DigestCache {
    map: Arc<Mutex<HashMap<String, (FileKey, String)>>>,
    audit: Audit,
}

impl DigestCache {
    /// Fills the cache from the audit store.
    pub async fn load(audit: Audit) -> anyhow::Result<DigestCache> {
        let rows = audit.load_digests().await?;
        let map = rows
            .into_iter()
            .map(|r| {
                let key = FileKey {
                    size: r.size,
                    mtime_ns: r.mtime_ns,
                    ino: r.ino,
                    ctime_ns: r.ctime_ns,
                };
                (r.path, (key, r.md5))
            })
            .collect();
        Ok(DigestCache {
            map: Arc::new(Mutex::new(map)),
            audit,
        })
    }

    /// The stored MD5 of `path`, if the file is unchanged since it was stored.
    pub fn lookup(&self, path: &str, key: FileKey) -> Option<String> {
        let map = self.map.lock().unwrap();
        map.get(path)
            .filter(|(k, _)| *k == key)
            .map(|(_, md5)| md5.clone())
    }

    /// Forgets the digest of a removed file, in memory and durably.
    pub async fn forget(&self, path: &str) {
        let known = self.map.lock().unwrap().remove(path).is_some();
        if known {
            self.audit.forget_digest(path.to_string()).await;
        }
    }

    /// Stores a digest in memory now and durably off the request path.
    pub fn store(&self, path: &str, key: FileKey, md5: &str) {
        self.map
            .lock()
            .unwrap()
            .insert(path.to_string(), (key, md5.to_string()));
        let row = DigestRow {
            path: path.to_string(),
            size: key.size,
            mtime_ns: key.mtime_ns,
            ino: key.ino,
            ctime_ns: key.ctime_ns,
            md5: md5.to_string(),
        };
        self.audit.digest(row);
    }
}
