//! Tests of `FileWriter`: the bytes, the switch to direct writes, the fallback, resuming.

use super::*;

/// Pieces of an awkward size (so that neither the switch nor the end falls on a block),
/// with a pattern that shows any byte out of place.
fn pieces(total: usize) -> Vec<Bytes> {
    let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 4093) as u8).collect();
    data.chunks(100_003).map(Bytes::copy_from_slice).collect()
}

/// Writes `batch` into a new file in `dir`, three pieces per call as the disk thread does
/// (with a misaligned buffer if `misaligned`); returns whether it went direct, and what the
/// file holds.
fn write_in(dir: &std::path::Path, batch: &[Bytes], misaligned: bool) -> (bool, Vec<u8>) {
    let path = dir.join("upload");
    let mut opts = File::options();
    let file = opts.read(true).write(true).create_new(true).open(&path);
    let mut out = FileWriter::new(file.unwrap()).unwrap();
    out.misaligned = misaligned;
    let mut direct = false;
    for b in batch.chunks(3) {
        out.write_batch(b).unwrap();
        direct |= out.is_direct();
    }
    let file = out.finish().unwrap();
    let flags = rustix::fs::fcntl_getfl(&file).unwrap();
    assert!(
        !flags.contains(OFlags::DIRECT),
        "direct writes are off once finished"
    );
    drop(file);
    (direct, std::fs::read(&path).unwrap())
}

/// A temp dir beside the crate, on the disk the build uses (a system temp dir may be in
/// memory), and whether its filesystem is one that goes direct.
fn local_dir() -> (tempfile::TempDir, bool) {
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();
    let local = magic(&rustix::fs::statfs(dir.path()).unwrap());
    if !DIRECT_FS.contains(&local) {
        eprintln!("filesystem {local:#x} keeps the page cache: only the bytes are checked");
    }
    (dir, DIRECT_FS.contains(&local))
}

#[test]
fn a_batch_is_written_whole_and_in_order_empty_pieces_included() {
    let dir = tempfile::tempdir().unwrap();
    let mut pieces: Vec<Bytes> = (0..300u32)
        .map(|i| Bytes::from(vec![i as u8; (i as usize * 37) % 5000]))
        .collect();
    pieces.push(Bytes::new());
    let (direct, got) = write_in(dir.path(), &pieces, false);
    assert!(!direct, "a small file stays in the page cache");
    assert_eq!(got, pieces.concat());
}

#[test]
fn a_big_file_goes_direct_past_the_threshold_and_comes_out_whole() {
    // 12 MiB and an odd tail: the switch comes at 8,400,252 bytes (3,452 into a block), which
    // is read back into the buffer; the last 1,234 bytes are not a whole block.
    let batch = pieces((12 << 20) + 1234);
    let want = batch.concat();
    let (dir, local) = local_dir();
    let (direct, got) = write_in(dir.path(), &batch, false);
    assert!(got == want, "the file differs from what was written");
    assert_eq!(
        direct, local,
        "a 12 MiB file goes direct on a local filesystem"
    );
    // A filesystem in memory keeps the page cache: going direct there only adds a copy.
    let shm = std::path::Path::new("/dev/shm");
    if rustix::fs::statfs(shm).is_ok_and(|s| magic(&s) == libc::TMPFS_MAGIC as u32) {
        let dir = tempfile::tempdir_in(shm).unwrap();
        let (direct, got) = write_in(dir.path(), &batch, false);
        assert!(!direct, "tmpfs keeps the page cache");
        assert!(
            got == want,
            "the file in tmpfs differs from what was written"
        );
    }
}

#[test]
fn a_refused_direct_write_falls_back_to_the_cache_without_losing_a_byte() {
    // A misaligned buffer makes the first direct write fail with EINVAL: once when the
    // buffer fills (12 MiB), once at the end (8 MiB and 300,000 bytes: the buffer never
    // fills, and the whole blocks are written at `finish`).
    for total in [(12 << 20) + 1234, (8 << 20) + 300_000] {
        let batch = pieces(total);
        let (dir, local) = local_dir();
        let (direct, got) = write_in(dir.path(), &batch, true);
        assert!(got == batch.concat(), "{total} bytes: the file differs");
        assert_eq!(direct, local, "{total} bytes: direct writes were tried");
    }
}

#[test]
fn written_through_write_it_resumes_at_the_end_and_goes_direct_the_same() {
    // As `ferry get --continue` uses it: a file that holds 9,000,001 bytes already (past the
    // threshold, so the first write reads back a block this writer never wrote), then the
    // rest in chunks of 65,537 bytes through `Write`, with a `flush` halfway and at the end.
    let data: Vec<u8> = pieces((16 << 20) + 777).concat();
    let (dir, local) = local_dir();
    let path = dir.path().join("download.part");
    std::fs::write(&path, &data[..9_000_001]).unwrap();
    let file = File::options().read(true).write(true).open(&path).unwrap();
    let mut out = FileWriter::new(file).unwrap();
    let mut direct = false;
    for (i, chunk) in data[9_000_001..].chunks(65_537).enumerate() {
        out.write_all(chunk).unwrap();
        direct |= out.is_direct();
        if i == 50 {
            out.flush().unwrap();
            assert!(!out.is_direct(), "flush writes what is staged");
        }
    }
    out.flush().unwrap();
    drop(out.finish().unwrap());
    assert!(std::fs::read(&path).unwrap() == data, "the file differs");
    assert_eq!(
        direct, local,
        "past 8 MiB it goes direct on a local filesystem"
    );
}
