//! An upload's file on disk: the temp file it is written to, and its rename into place.

use super::PutDone;
use crate::core::digests::FileKey;
use crate::core::error::{Error, Result};
use crate::core::files::{Files, TEMP_MARKER};
use crate::core::paths::RelPath;
use crate::core::registry::random_id;

/// Opens a fresh temp file next to the target `rel` (blocking): the target must not be a
/// directory, its parent is created if missing, and everything stays inside the root. Returns
/// the temp file's path and the file, opened for writing.
pub(crate) fn create_temp(files: &Files, rel: &RelPath) -> Result<NewTemp> {
    let Some((parent, name)) = rel.split() else {
        return Err(Error::bad_request("cannot put to the root directory"));
    };
    // A temp name must fit in 255 bytes too: a long target name is cut (at a char boundary)
    // to leave room for the dot, the marker and the 16-digit id.
    let mut keep = name.len().min(255 - 1 - TEMP_MARKER.len() - 16);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    let tmp = parent.join(&format!(".{}{TEMP_MARKER}{}", &name[..keep], random_id()));
    if let Ok(meta) = files.dir.metadata(rel.as_path())
        && meta.is_dir()
    {
        return Err(Error::bad_request(format!("{rel}: is a directory")));
    }
    // Resolve the parent first: a parent that is a symlink out of the root must be
    // refused as an escape, not reported as "already exists" by create_dir_all.
    match files.dir.metadata(parent.as_path()) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::bad_request(format!("{parent}: not a directory"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            files
                .dir
                .create_dir_all(parent.as_path())
                .map_err(|e| Error::io(e, parent.as_str()))?;
            if let Err(e) = sync_created(&files.dir, &parent) {
                tracing::warn!(path = %parent, error = %e, "could not flush new directories");
            }
        }
        Err(e) => return Err(Error::io(e, parent.as_str())),
    }
    let mut opts = cap_std::fs::OpenOptions::new();
    // Readable too: a big upload reads back its last partial block when it turns to direct
    // writes (see `core::direct::FileWriter`).
    opts.read(true).write(true).create_new(true);
    let file = files
        .dir
        .open_with(tmp.as_path(), &opts)
        .map_err(|e| Error::io(e, rel.as_str()))?;
    Ok(NewTemp {
        files: files.clone(),
        made: Some((tmp, file.into_std())),
    })
}

/// Flushes the directory that holds `rel` to disk, so that a new name in it survives a crash.
fn sync_parent(root: &cap_std::fs::Dir, rel: &RelPath) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags, openat};
    // cap-std opens directories with O_PATH, on which fsync fails (EBADF): "." is opened again
    // beneath the handle, for reading.
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let readable = match rel.split().map(|(p, _)| p).filter(|p| !p.is_root()) {
        Some(p) => openat(&root.open_dir(p.as_path())?, ".", flags, Mode::empty())?,
        None => openat(root, ".", flags, Mode::empty())?,
    };
    match rustix::fs::fsync(&readable) {
        // A file system that cannot flush a directory: there is nothing more to do.
        Err(rustix::io::Errno::INVAL) => Ok(()),
        r => Ok(r?),
    }
}

/// Flushes the entries of directories just made for `dir` (by `create_dir_all`): the
/// directory holding each of `dir` and its ancestors, up to the root.
fn sync_created(root: &cap_std::fs::Dir, dir: &RelPath) -> std::io::Result<()> {
    let mut at = dir.clone();
    loop {
        sync_parent(root, &at)?;
        match at.split() {
            Some((up, _)) if !up.is_root() => at = up,
            _ => return Ok(()),
        }
    }
}

/// Renames the verified temp file into place durably and stores its digest.
pub(crate) fn commit_file(
    files: &Files,
    file: std::fs::File,
    rel: &RelPath,
    tmp: &RelPath,
    md5: Option<String>,
) -> Result<PutDone> {
    let md5 = md5.ok_or_else(|| Error::internal("verified upload without a digest"))?;
    let created = files.dir.symlink_metadata(rel.as_path()).is_err();
    files
        .dir
        .rename(tmp.as_path(), &files.dir, rel.as_path())
        .map_err(|e| Error::io(e, rel.as_str()))?;
    // Make the rename itself durable: fsync the directory that now holds the name.
    if let Err(e) = sync_parent(&files.dir, rel) {
        tracing::warn!(path = %rel, error = %e, "could not flush the directory after a rename");
    }
    // The key is read from the open file after the rename, which moves its ctime.
    let key = FileKey::of(&file.metadata().map_err(Error::internal)?);
    files.digests.store(rel.as_str(), key, &md5);
    Ok(PutDone {
        md5,
        size: key.size,
        created,
    })
}

/// A temp file just made for an upload that no upload holds yet: removed if dropped before
/// [`NewTemp::keep`], so a creation whose request goes away while it waits leaves nothing behind.
pub(crate) struct NewTemp {
    files: Files,
    made: Option<(RelPath, std::fs::File)>,
}

impl NewTemp {
    /// Hands the temp file over to its upload, which removes it from then on.
    pub(crate) fn keep(mut self) -> (RelPath, std::fs::File) {
        self.made.take().expect("kept once")
    }
}

impl Drop for NewTemp {
    fn drop(&mut self) {
        if let Some((tmp, file)) = self.made.take() {
            drop(file);
            let _ = self.files.dir.remove_file(tmp.as_path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    #[test]
    fn a_rename_is_flushed_in_the_root_and_in_a_subdirectory() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        // Opened as the served root is: cap-std gives an O_PATH handle, which fsync refuses.
        let root = cap_std::fs::Dir::open_ambient_dir(tmp.path(), ambient_authority()).unwrap();
        for path in ["top.bin", "sub/inner.bin"] {
            let rel = RelPath::parse(path).unwrap();
            sync_parent(&root, &rel).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        let missing = RelPath::parse("gone/x.bin").unwrap();
        assert!(sync_parent(&root, &missing).is_err());
        // A parent that leads out of the root is refused, not flushed.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("out")).unwrap();
        let escape = RelPath::parse("out/x.bin").unwrap();
        assert!(sync_parent(&root, &escape).is_err());
        // Directories just made: flushing each level's holder, up to the root, succeeds (that
        // every level is flushed is not observable here; an strace shows one fsync per level).
        std::fs::create_dir_all(tmp.path().join("a/b/c")).unwrap();
        sync_created(&root, &RelPath::parse("a/b/c").unwrap()).unwrap();
    }
}
