//! Files over TCP: MD5-verified round trips, resume, atomic puts, confinement, digests.

mod common;

use common::*;
use ferry::core::checksum::{Md5Stream, hash_reader};
use ferry::core::error::Code;
use ferry::core::registry::{RegistryEvent, TransferState};
use ferry::tcp::codec::Kind;
use ferry::tcp::messages::{GetEnd, GetHeader, Request};
use std::path::Path;

fn md5_of(bytes: &[u8]) -> String {
    hash_reader(bytes).unwrap().0
}

/// Names in a directory that look like in-progress uploads.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ferry-tmp-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hundred_megabyte_round_trip_matches_md5sum() {
    let s = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src.bin");
    std::fs::write(&src, random_bytes(100 << 20, 42)).unwrap();
    let want = md5sum(&src);

    let c = s.client().await;
    let file = std::fs::File::open(&src).unwrap();
    let done = c
        .put("data/big.bin", file, 100 << 20, Some(want.clone()), |_| {})
        .await
        .unwrap();
    assert_eq!(
        (done.md5.as_str(), done.size, done.created),
        (want.as_str(), 100 << 20, true)
    );
    assert_eq!(md5sum(&s.path("data/big.bin")), want);

    let dst = local.path().join("dst.bin");
    let out = std::fs::File::create(&dst).unwrap();
    let (_, got) = c
        .get("data/big.bin", 0, Md5Stream::new(), out, |_| {})
        .await
        .unwrap();
    assert_eq!(got.header.md5, want);
    assert_eq!(
        (got.end.md5.as_str(), got.end.bytes, got.end.changed),
        (want.as_str(), 100 << 20, false)
    );
    assert_eq!(md5sum(&dst), want);

    // The digest was stored at write time: the listing shows it without hashing.
    let entries = c.list("data").await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].md5.as_deref(), Some(want.as_str()));
    assert_eq!(
        s.count(
            "transfers",
            &format!("direction = 'put' AND md5 = '{want}' AND result = 'verified'")
        )
        .await,
        1
    );
    assert_eq!(
        s.count("transfers", "direction = 'get' AND result = 'verified'")
            .await,
        1
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn get_resumes_from_an_offset() {
    let s = TestServer::start().await;
    let data = random_bytes(3_000_001, 7);
    std::fs::write(s.path("f.bin"), &data).unwrap();
    let c = s.client().await;
    let offset = 1_234_567;
    let mut prefix = Md5Stream::new();
    prefix.update(&data[..offset]);
    let (tail, got) = c
        .get("f.bin", offset as u64, prefix, Vec::new(), |_| {})
        .await
        .unwrap();
    assert_eq!(tail, &data[offset..]);
    assert_eq!(got.header.offset, offset as u64);
    assert_eq!(got.header.md5, md5_of(&data));

    // A wrong prefix is caught by the whole-file MD5.
    let mut bad = Md5Stream::new();
    bad.update(&vec![0u8; offset]);
    let err = c
        .get("f.bin", offset as u64, bad, Vec::new(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::ChecksumMismatch), "{err}");

    let err = c
        .get(
            "f.bin",
            data.len() as u64 + 1,
            Md5Stream::new(),
            Vec::new(),
            |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::BadRequest), "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_md5_leaves_the_old_file_intact() {
    let s = TestServer::start().await;
    std::fs::write(s.path("keep.txt"), b"old contents\n").unwrap();
    let c = s.client().await;
    let new = b"new contents that must not land\n".to_vec();
    let wrong = md5_of(b"something else");
    let err = c
        .put(
            "keep.txt",
            std::io::Cursor::new(new.clone()),
            new.len() as u64,
            Some(wrong),
            |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::ChecksumMismatch), "{err}");
    assert_eq!(
        std::fs::read(s.path("keep.txt")).unwrap(),
        b"old contents\n"
    );
    assert!(
        temp_files(&s.root).is_empty(),
        "temp files left: {:?}",
        temp_files(&s.root)
    );
    assert_eq!(
        s.count("transfers", "path = 'keep.txt' AND result = 'mismatch'")
            .await,
        1
    );

    // The right MD5 replaces it.
    let done = c
        .put(
            "keep.txt",
            std::io::Cursor::new(new.clone()),
            new.len() as u64,
            Some(md5_of(&new)),
            |_| {},
        )
        .await
        .unwrap();
    assert!(!done.created);
    assert_eq!(std::fs::read(s.path("keep.txt")).unwrap(), new);

    // Malformed requests are refused up front.
    let err = c
        .put(
            "x",
            std::io::Cursor::new(vec![]),
            0,
            Some("nothex".into()),
            |_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::BadRequest));
    let err = c
        .put("", std::io::Cursor::new(vec![]), 0, None, |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::BadRequest));
    // An empty file is a file.
    c.put("empty", std::io::Cursor::new(vec![]), 0, None, |_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(s.path("empty")).unwrap().len(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_killed_mid_put_leaves_nothing() {
    use ferry::tcp::codec::{Frame, FrameCodec};
    use futures_util::{SinkExt, StreamExt};
    let s = TestServer::start().await;
    let mut events = s.core.registry.subscribe();
    // A client that vanishes without a word: frames by hand, then the socket is dropped.
    let sock = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let mut framed = tokio_util::codec::Framed::new(sock, FrameCodec::new(1 << 20));
    let hello = serde_json::json!({"version": 1, "token": TOKEN});
    framed
        .send(Frame::json(Kind::Hello, 0, &hello))
        .await
        .unwrap();
    assert_eq!(framed.next().await.unwrap().unwrap().kind, Kind::Welcome);
    let put = Request::Put {
        path: "partial.bin".into(),
        size: 10 << 20,
        md5: None,
        md5_trailer: false,
    };
    framed
        .send(Frame::json(Kind::Request, 1, &put))
        .await
        .unwrap();
    // Half the default window (4 MiB) in 256 KiB frames: the server grants the bytes back
    // once they are on its way to disk, in one step; then vanish.
    for part in random_bytes(2 << 20, 3).chunks(256 << 10) {
        framed
            .send(Frame::new(Kind::Data, 1, part.to_vec()))
            .await
            .unwrap();
    }
    let grant = framed.next().await.unwrap().unwrap();
    assert_eq!(grant.kind, Kind::Window);
    assert_eq!(grant.payload[..], (2u32 << 20).to_be_bytes());
    drop(framed);
    let failed = loop {
        match events.recv().await.unwrap() {
            RegistryEvent::Transfer(t) if t.state != TransferState::InProgress => break t,
            _ => {}
        }
    };
    assert_eq!(failed.state, TransferState::Failed);
    assert!(!s.path("partial.bin").exists());
    assert!(
        temp_files(&s.root).is_empty(),
        "temp files left: {:?}",
        temp_files(&s.root)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_put_leaves_nothing_even_when_all_bytes_arrived() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let mut st = c
        .open(&Request::Put {
            path: "c.bin".into(),
            size: 1 << 20,
            md5: None,
            md5_trailer: false,
        })
        .await
        .unwrap();
    st.send_data(random_bytes(1 << 19, 1).into()).await.unwrap();
    st.cancel().await.unwrap();
    let err = st.recv().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Cancelled), "{err}");
    assert!(!s.path("c.bin").exists());
    assert!(temp_files(&s.root).is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn path_escapes_are_refused() {
    let s = TestServer::start().await;
    std::os::unix::fs::symlink("/etc", s.path("etc-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.path("pw")).unwrap();
    std::fs::create_dir(s.path("inside")).unwrap();
    std::fs::write(s.path("inside/ok.txt"), b"fine").unwrap();
    std::os::unix::fs::symlink("inside/ok.txt", s.path("good-link")).unwrap();
    let c = s.client().await;
    for path in [
        "../etc/passwd",
        "/etc/passwd",
        "a/../../x",
        "etc-link/passwd",
        "pw",
        "inside/../../x",
        "a\0b",
    ] {
        let err = c
            .get(path, 0, Md5Stream::new(), Vec::new(), |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::ForbiddenPath), "get {path:?}: {err}");
        let err = c.stat(path).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(Code::ForbiddenPath),
            "stat {path:?}: {err}"
        );
    }
    for path in ["../evil", "/tmp/evil", "etc-link/evil"] {
        let err = c
            .put(path, std::io::Cursor::new(b"x".to_vec()), 1, None, |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::ForbiddenPath), "put {path:?}: {err}");
    }
    assert!(!Path::new("/etc/evil").exists());
    for path in ["..", "etc-link", "/"] {
        let err = c.list(path).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(Code::ForbiddenPath),
            "list {path:?}: {err}"
        );
    }
    // A symlink that stays inside the root is followed.
    let (bytes, _) = c
        .get("good-link", 0, Md5Stream::new(), Vec::new(), |_| {})
        .await
        .unwrap();
    assert_eq!(bytes, b"fine");
    let err = c
        .get("missing", 0, Md5Stream::new(), Vec::new(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    let err = c
        .get("inside", 0, Md5Stream::new(), Vec::new(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::BadRequest));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_placed_by_other_means_is_hashed_once_then_served_from_the_digest() {
    let s = TestServer::start().await;
    let data = random_bytes(1 << 20, 11);
    std::fs::write(s.path("placed.bin"), &data).unwrap();
    // A file modified within the last 2 s is hashed but not remembered (a write in the same
    // timestamp tick would not show); this one was placed an hour ago.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(s.path("placed.bin"))
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let c = s.client().await;
    assert_eq!(
        c.list("").await.unwrap()[0].md5,
        None,
        "unknown before the first get"
    );
    let (_, got) = c
        .get("placed.bin", 0, Md5Stream::new(), Vec::new(), |_| {})
        .await
        .unwrap();
    assert_eq!(got.header.md5, md5_of(&data));
    assert_eq!(c.stat("placed.bin").await.unwrap().md5, Some(md5_of(&data)));
    s.flush_audit().await;
    assert_eq!(
        s.count(
            "digests",
            &format!("path = 'placed.bin' AND md5 = '{}'", md5_of(&data))
        )
        .await,
        1
    );
    // Rewriting it in place with the same size and its old mtime restored (as `cp -p` or
    // `rsync -t --inplace` do) still invalidates the digest: the ctime moved.
    let other = random_bytes(1 << 20, 12);
    std::fs::write(s.path("placed.bin"), &other).unwrap();
    std::fs::File::options()
        .write(true)
        .open(s.path("placed.bin"))
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let (bytes, got) = c
        .get("placed.bin", 0, Md5Stream::new(), Vec::new(), |_| {})
        .await
        .unwrap();
    assert_eq!((bytes.len(), got.header.md5), (other.len(), md5_of(&other)));
    // Changing the file invalidates the digest.
    std::fs::write(s.path("placed.bin"), b"changed").unwrap();
    let (bytes, got) = c
        .get("placed.bin", 0, Md5Stream::new(), Vec::new(), |_| {})
        .await
        .unwrap();
    assert_eq!(
        (bytes.as_slice(), got.header.md5),
        (&b"changed"[..], md5_of(b"changed"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trailer_reports_a_file_changed_during_the_transfer() {
    let s = TestServer::start().await;
    std::fs::write(s.path("moving.bin"), random_bytes(40 << 20, 13)).unwrap();
    let c = s.client().await;
    let mut st = c
        .open(&Request::Get {
            path: "moving.bin".into(),
            offset: 0,
        })
        .await
        .unwrap();
    let h: GetHeader = st.recv().await.unwrap().parse().unwrap();
    assert_eq!(h.size, 40 << 20);
    // The server cannot have read all 40 MB ahead of this reader (window and queues are smaller).
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(s.path("moving.bin"))
        .unwrap()
        .write_all(b"more")
        .unwrap();
    let end: GetEnd = loop {
        let f = st.recv().await.unwrap();
        if f.kind == Kind::End {
            break f.parse().unwrap();
        }
    };
    assert!(end.changed);
    assert_eq!(end.bytes, 40 << 20);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn digests_survive_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let body = random_bytes(100_000, 17);
    for round in 0..2 {
        let cfg = config(root.path().into(), data.path().into());
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let running =
            ferry::server::start(cfg, ferry::server::Listeners { tcp, http }, stop.clone())
                .await
                .unwrap();
        let c = ferry::client::Client::connect(&running.tcp_addr.to_string(), TOKEN)
            .await
            .unwrap();
        if round == 0 {
            c.put(
                "kept.bin",
                std::io::Cursor::new(body.clone()),
                body.len() as u64,
                None,
                |_| {},
            )
            .await
            .unwrap();
        } else {
            // Known at once from the database, without a get.
            assert_eq!(c.stat("kept.bin").await.unwrap().md5, Some(md5_of(&body)));
        }
        drop(c);
        stop.cancel();
        running.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_is_refused_without_blocking() {
    let s = TestServer::start().await;
    let st = std::process::Command::new("mkfifo")
        .arg(s.path("pipe"))
        .status()
        .unwrap();
    assert!(st.success());
    let c = s.client().await;
    let err = c
        .get("pipe", 0, Md5Stream::new(), Vec::new(), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::BadRequest), "{err}");
    s.stop().await;
}

/// An upload that arrives in thousands of pieces of every size (as HTTP bodies and slow
/// clients deliver them) is stored whole and in order, and its MD5 is the bytes' own: pieces
/// are copied together, kept as they are, batched and handed to the MD5 thread in many ways.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_in_thousands_of_uneven_pieces_is_stored_whole() {
    let s = TestServer::start().await;
    let data = random_bytes(6 << 20, 21);
    let admin = std::sync::Arc::new(ferry::core::auth::Principal::admin("test"));
    let (actor, _guard) = s.core.open_session("tcp", "test".into(), admin).await;
    let mut sink = s
        .core
        .files
        .put(&actor, "pieces.bin", Some(data.len() as u64), None)
        .await
        .unwrap();
    let (mut at, mut i) = (0, 0usize);
    while at < data.len() {
        // Mostly small pieces, with an empty one, a mid-sized and a large one now and then.
        let n = match i % 50 {
            0 => 0,
            7 => 20_000,
            31 => 300_000,
            _ => 1 + (i * 37) % 100,
        }
        .min(data.len() - at);
        sink.write(bytes::Bytes::copy_from_slice(&data[at..at + n]))
            .await
            .unwrap();
        at += n;
        i += 1;
    }
    let done = sink.finish().await.unwrap();
    let want = hex::encode(<md5::Md5 as md5::Digest>::digest(&data));
    assert_eq!(done.md5, want);
    assert_eq!(std::fs::read(s.path("pieces.bin")).unwrap(), data);
}
