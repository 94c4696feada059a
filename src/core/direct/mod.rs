//! A big file as it is written, from its first byte on: through the page cache at first, then,
//! once the file is big and the filesystem a local one that takes it, straight to the disk
//! (`O_DIRECT`) from one aligned buffer. Uploads and `ferry get` write through it.
//!
//! Why: such a file is fsynced before it is renamed into place, so the page cache only holds
//! it in between. Filling it costs a fresh page per 4 KiB, which on a virtual machine whose free
//! memory goes back to its host (free page reporting) is a host fault per page: the kernel's copy
//! into the cache ran at 400 MB/s there, against 1.2 GB/s written direct. A big file also no
//! longer pushes the files being served out of the cache.

use crate::core::flush::Flusher;
use bytes::Bytes;
use rustix::fs::OFlags;
use std::fs::File;
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// Bytes written through the page cache before the rest goes direct: smaller files never leave
/// it, and stay cached for whoever reads them next.
const DIRECT_AFTER: u64 = 8 << 20;

/// Offsets, lengths and the buffer's address are multiples of this in direct writes (the
/// largest logical block size in common use).
const ALIGN: usize = 4096;

/// Bytes gathered before one direct write.
const STAGE: usize = 1 << 20;

/// Filesystems that write `O_DIRECT` to a local disk (`statfs` magic numbers): ext4, XFS and
/// Btrfs. Elsewhere (tmpfs, network and FUSE filesystems, overlays) the page cache is kept.
const DIRECT_FS: [u32; 3] = [0xEF53, 0x5846_5342, 0x9123_683E];

/// A file being written in order, to its end (see the module's doc). After an error it takes
/// nothing more: what it had staged is lost, so each later call fails too.
pub struct FileWriter {
    file: File,
    /// The error that stopped it, if one did.
    failed: Option<io::ErrorKind>,
    /// Bytes in the file so far (the staged ones not included).
    at: u64,
    /// Flushes what went through the page cache.
    flusher: Flusher,
    /// The aligned buffer once writes go direct.
    direct: Option<Stage>,
    /// Whether going direct may still be tried (a local filesystem that has not refused it).
    may_go_direct: bool,
    /// Tests: the buffer is put one byte off its alignment, so that every direct write fails
    /// with EINVAL, as on a filesystem that wants a larger alignment.
    #[cfg(test)]
    misaligned: bool,
}

/// Bytes waiting for the next direct write; they belong at the file's `at`, which is aligned.
struct Stage {
    /// Room for `STAGE` bytes at an aligned address, and for the alignment.
    mem: Vec<u8>,
    /// Where the aligned part of `mem` starts.
    start: usize,
    /// Bytes staged.
    len: usize,
}

impl Stage {
    /// An empty stage.
    fn new() -> Stage {
        let mem = vec![0u8; STAGE + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        Stage { mem, start, len: 0 }
    }

    /// The aligned room for `STAGE` bytes.
    fn buf(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + STAGE]
    }
}

impl FileWriter {
    /// Takes a file opened for reading and writing, and writes on from its end.
    pub fn new(mut file: File) -> io::Result<FileWriter> {
        let at = file.seek(SeekFrom::End(0))?;
        let may_go_direct = rustix::fs::fstatfs(&file)
            .map(|s| DIRECT_FS.contains(&magic(&s)))
            .unwrap_or(false);
        Ok(FileWriter {
            file,
            failed: None,
            at,
            flusher: Flusher::default(),
            direct: None,
            may_go_direct,
            #[cfg(test)]
            misaligned: false,
        })
    }

    /// Whether writes now go straight to the disk.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Appends every piece of `batch`, in order.
    pub fn write_batch(&mut self, batch: &[Bytes]) -> io::Result<()> {
        self.unless_failed(|w| w.append_batch(batch))
    }

    /// Writes what is staged, and returns the file, complete (but not yet fsynced).
    pub fn finish(mut self) -> io::Result<File> {
        self.unless_failed(Self::complete)?;
        Ok(self.file)
    }

    /// Runs `op` unless an earlier error stopped the writer; an error of `op` stops it (but an
    /// interrupted call, which wrote nothing and may be retried).
    fn unless_failed<T>(&mut self, op: impl FnOnce(&mut Self) -> io::Result<T>) -> io::Result<T> {
        if let Some(kind) = self.failed {
            return Err(io::Error::new(kind, "an earlier write to this file failed"));
        }
        op(self).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.failed = Some(e.kind());
            }
        })
    }

    /// Appends every piece of `batch`, in order (the work of [`FileWriter::write_batch`] and of
    /// `Write`).
    fn append_batch<P: AsRef<[u8]>>(&mut self, batch: &[P]) -> io::Result<()> {
        self.maybe_go_direct()?;
        if self.direct.is_none() {
            write_all(&mut self.file, batch)?;
            let n = batch.iter().map(|c| c.as_ref().len() as u64).sum::<u64>();
            self.wrote_cached(n);
            return Ok(());
        }
        batch
            .iter()
            .try_for_each(|piece| self.stage(piece.as_ref()))
    }

    /// Counts `n` bytes written through the page cache.
    fn wrote_cached(&mut self, n: u64) {
        self.at += n;
        self.flusher.wrote(&self.file, n);
    }

    /// Turns direct writes on once the file is big enough, where they may be tried.
    fn maybe_go_direct(&mut self) -> io::Result<()> {
        if self.direct.is_none() && self.may_go_direct && self.at >= DIRECT_AFTER {
            self.go_direct()?;
        }
        Ok(())
    }

    /// Adds `piece` to the buffer of direct writes, writing the buffer each time it fills.
    fn stage(&mut self, piece: &[u8]) -> io::Result<()> {
        let mut rest = piece;
        while !rest.is_empty() {
            let Some(stage) = self.direct.as_mut() else {
                // Direct writes were refused midway: the rest goes through the cache.
                self.file.write_all(rest)?;
                self.wrote_cached(rest.len() as u64);
                return Ok(());
            };
            let n = (STAGE - stage.len).min(rest.len());
            let len = stage.len;
            stage.buf()[len..len + n].copy_from_slice(&rest[..n]);
            stage.len += n;
            rest = &rest[n..];
            if stage.len == STAGE {
                self.flush_stage(STAGE)?;
            }
        }
        Ok(())
    }

    /// Writes what is staged (the whole blocks direct, the last partial one through the cache;
    /// the next write goes direct again, from that block), and waits for the flush in
    /// progress.
    fn complete(&mut self) -> io::Result<()> {
        if let Some(stage) = &self.direct {
            let blocks = stage.len / ALIGN * ALIGN;
            if blocks > 0 {
                self.flush_stage(blocks)?;
            }
            if let Some(stage) = self.direct.take() {
                self.write_buffered(stage)?;
                self.file.seek(SeekFrom::Start(self.at))?;
            }
        }
        drop(std::mem::take(&mut self.flusher));
        Ok(())
    }

    /// Turns direct writes on from the file's end: the part of its last block written so far is
    /// read back into the buffer, so that every direct write starts on a block.
    fn go_direct(&mut self) -> io::Result<()> {
        let mut stage = Stage::new();
        #[cfg(test)]
        if self.misaligned {
            stage.start += 1;
        }
        let head = (self.at % ALIGN as u64) as usize;
        let start = self.at - head as u64;
        // Read before the flag is set: a direct read would need alignment too. A file that
        // cannot be read, or a filesystem that refuses the flag, keeps the page cache.
        let read = self.file.read_exact_at(&mut stage.buf()[..head], start);
        stage.len = head;
        let flags = rustix::fs::fcntl_getfl(&self.file)?;
        if read.is_err() || rustix::fs::fcntl_setfl(&self.file, flags | OFlags::DIRECT).is_err() {
            self.may_go_direct = false;
            return Ok(());
        }
        self.at = start;
        self.direct = Some(stage);
        Ok(())
    }

    /// Writes the first `n` staged bytes (whole blocks) direct, and keeps the rest staged. A
    /// filesystem that refuses the write (EINVAL: it wants a larger alignment) gets everything
    /// staged, and all that follows, through the cache.
    fn flush_stage(&mut self, n: usize) -> io::Result<()> {
        let Some(mut stage) = self.direct.take() else {
            return Ok(());
        };
        match self.file.write_all_at(&stage.buf()[..n], self.at) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.may_go_direct = false;
                self.write_buffered(stage)?;
                // The writes that follow go at the file's position.
                self.file.seek(SeekFrom::Start(self.at))?;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let len = stage.len;
        stage.buf().copy_within(n..len, 0);
        stage.len -= n;
        self.at += n as u64;
        self.direct = Some(stage);
        Ok(())
    }

    /// Turns direct writes off and writes everything staged through the cache, at `at`.
    fn write_buffered(&mut self, mut stage: Stage) -> io::Result<()> {
        let flags = rustix::fs::fcntl_getfl(&self.file)?;
        rustix::fs::fcntl_setfl(&self.file, flags - OFlags::DIRECT)?;
        let len = stage.len;
        self.file.write_all_at(&stage.buf()[..len], self.at)?;
        self.wrote_cached(len as u64);
        Ok(())
    }
}

/// `ferry get` writes through `Write`: each chunk is one batch, and `flush` writes what is
/// staged.
impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.unless_failed(|w| w.append_batch(&[buf]))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.unless_failed(Self::complete)
    }
}

/// A filesystem's `statfs` magic number (a 32-bit value, in an integer type that differs
/// between platforms).
#[allow(clippy::unnecessary_cast)]
fn magic(s: &rustix::fs::StatFs) -> u32 {
    s.f_type as u32
}

/// Writes every piece of `batch`, in as few `writev` calls as the file takes.
fn write_all<P: AsRef<[u8]>>(file: &mut File, batch: &[P]) -> io::Result<()> {
    // Empty pieces are left out: a `writev` of nothing but them returns 0, as a full disk might.
    let mut slices: Vec<IoSlice<'_>> = batch
        .iter()
        .map(|c| c.as_ref())
        .filter(|c| !c.is_empty())
        .map(IoSlice::new)
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
