//! Opening a file for download: confined, regular files only, with the stored (or computed)
//! MD5; small files are read whole at open.

use super::{GetFile, GetStream, Opened, SMALL_FILE};
use crate::core::audit::Actor;
use crate::core::auth::Action;
use crate::core::digests::FileKey;
use crate::core::error::{Error, Result};
use crate::core::files::{Files, blocking};
use crate::core::paths::RelPath;
use bytes::Bytes;
use rustix::io::ReadWriteFlags;
use std::os::unix::fs::MetadataExt;

/// An opened file: handle, key, MD5 and, for a small file, its content.
type Opening = (std::fs::File, FileKey, String, Option<Bytes>);

impl Files {
    /// Opens `raw` for download, or lists it when it is a directory.
    pub async fn open_path(&self, actor: &Actor, raw: &str) -> Result<Opened> {
        match self.open_inner(actor, raw).await? {
            Some(f) => Ok(Opened::File(Box::new(f))),
            None => Ok(Opened::Dir(self.list(actor, raw).await?)),
        }
    }

    /// Opens `raw` for download: confined, regular files only, with the stored (or computed) MD5.
    pub async fn open_get(&self, actor: &Actor, raw: &str) -> Result<GetFile> {
        self.open_inner(actor, raw)
            .await?
            .ok_or_else(|| Error::bad_request(format!("{}: is a directory", raw.trim_matches('/'))))
    }

    async fn open_inner(&self, actor: &Actor, raw: &str) -> Result<Option<GetFile>> {
        actor.require(Action::Download)?;
        let rel = RelPath::parse(raw)?;
        let opened = match self.open_fast(&rel) {
            Some(done) => Some(done),
            None => self.open_slow(rel.clone()).await?,
        };
        Ok(opened.map(|(file, key, md5, small)| GetFile {
            files: self.clone(),
            actor: actor.clone(),
            path: rel.as_str().to_string(),
            file,
            key,
            small,
            md5,
        }))
    }

    /// Opens a file whose digest is known without leaving the async thread: open, fstat and,
    /// for a small file, a read that takes only pages already in memory (`RWF_NOWAIT`).
    /// `None` when any step would need the disk thread (or fails: that path reports it).
    fn open_fast(&self, rel: &RelPath) -> Option<Opening> {
        let file = open_file(self, rel).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let key = FileKey::of(&meta);
        let md5 = self.digests.lookup(rel.as_str(), key)?;
        let small = if key.size <= SMALL_FILE {
            // tmpfs and ramfs refuse RWF_NOWAIT, but their pages are memory: a plain read
            // does not wait for a disk there (the disk thread found out which devices they are).
            let flags = if self.in_memory(meta.dev()) == Some(true) {
                ReadWriteFlags::empty()
            } else {
                ReadWriteFlags::NOWAIT
            };
            Some(read_whole(&file, key, flags)?)
        } else {
            None
        };
        Some((file, key, md5, small))
    }

    /// Whether the device `dev` is known to be a file system in memory: `None` until the disk
    /// thread has looked.
    fn in_memory(&self, dev: u64) -> Option<bool> {
        let devs = self
            .memory_devices
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        devs.iter().find(|(d, _)| *d == dev).map(|(_, m)| *m)
    }

    /// Notes whether the device of `file` is a file system in memory, once per device (a
    /// blocking call: on a network file system `fstatfs` asks the server).
    fn learn_device(&self, file: &std::fs::File, dev: u64) {
        if self.in_memory(dev).is_some() {
            return;
        }
        let memory = on_memory_fs(file);
        let mut devs = self
            .memory_devices
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !devs.iter().any(|(d, _)| *d == dev) {
            devs.push((dev, memory));
        }
    }

    /// Opens on the disk thread, hashing the file if its digest is not stored.
    async fn open_slow(&self, rel: RelPath) -> Result<Option<Opening>> {
        let this = self.clone();
        blocking(move || {
            let file = open_file(&this, &rel)?;
            let meta = file.metadata().map_err(|e| Error::io(e, rel.as_str()))?;
            if meta.is_dir() {
                return Ok(None);
            }
            if !meta.is_file() {
                return Err(Error::bad_request(format!("{rel}: not a regular file")));
            }
            let (key, md5) = this.digest_of(&rel, &file)?;
            let small = (key.size <= SMALL_FILE)
                .then(|| read_whole(&file, key, ReadWriteFlags::empty()))
                .flatten();
            if small.is_some() {
                this.learn_device(&file, meta.dev());
            }
            Ok(Some((file, key, md5, small)))
        })
        .await
    }

    /// Opens `raw` for download from `offset`, with chunks of at most `chunk` bytes.
    pub async fn get(
        &self,
        actor: &Actor,
        raw: &str,
        offset: u64,
        chunk: usize,
    ) -> Result<GetStream> {
        self.open_get(actor, raw)
            .await?
            .stream(offset, None, chunk)
            .await
    }
}

/// Opens `rel` under the root without following it out, non-blocking so that a FIFO or a
/// device cannot hang the open (O_NONBLOCK changes nothing for a regular file's reads).
fn open_file(files: &Files, rel: &RelPath) -> Result<std::fs::File> {
    let mut opts = cap_std::fs::OpenOptions::new();
    opts.read(true);
    cap_std::fs::OpenOptionsExt::custom_flags(
        &mut opts,
        rustix::fs::OFlags::NONBLOCK.bits() as i32,
    );
    Ok(files
        .dir
        .open_with(rel.as_path(), &opts)
        .map_err(|e| Error::io(e, rel.as_str()))?
        .into_std())
}

/// A small file's whole content, if it still matches `key` once read (else the caller streams
/// it and reports the change as any download does). With `ReadWriteFlags::NOWAIT` it takes
/// only pages already in memory and gives `None` rather than wait for the disk.
fn read_whole(
    file: &std::fs::File,
    key: FileKey,
    flags: rustix::io::ReadWriteFlags,
) -> Option<Bytes> {
    // Exactly `size` bytes: a file that grew or changed meanwhile shows in the key below.
    let mut buf = vec![0u8; key.size as usize];
    let mut got = 0;
    while got < buf.len() {
        let mut part = [std::io::IoSliceMut::new(&mut buf[got..])];
        match rustix::io::preadv2(file, &mut part, got as u64, flags) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return None,
        }
    }
    buf.truncate(got);
    let same = got as u64 == key.size && FileKey::of(&file.metadata().ok()?) == key;
    same.then(|| Bytes::from(buf))
}

/// Whether `file` lives on a file system kept in memory (tmpfs, ramfs).
fn on_memory_fs(file: &std::fs::File) -> bool {
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    rustix::fs::fstatfs(file).is_ok_and(|s| {
        // The field's width and sign differ between platforms; the magic numbers are 32 bits.
        let kind = s.f_type as u32;
        kind == libc::TMPFS_MAGIC as u32 || kind == RAMFS_MAGIC
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /dev/shm is a tmpfs: it refuses `RWF_NOWAIT`, is recognised as memory, and a plain
    /// read of a small file there works.
    #[test]
    fn tmpfs_is_recognised() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("no /dev/shm here: nothing to check");
            return;
        };
        let path = dir.path().join("small.bin");
        std::fs::write(&path, b"ferry small file").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert!(on_memory_fs(&file), "/dev/shm is not a tmpfs here");
        let key = FileKey::of(&file.metadata().unwrap());
        let got = read_whole(&file, key, ReadWriteFlags::empty());
        assert_eq!(got.as_deref(), Some(&b"ferry small file"[..]));
    }
}
