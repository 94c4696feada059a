//! Property tests of the TCP framing: any sequence of protocol messages, encoded back to back
//! into one byte stream ("sticky packets") and cut at arbitrary points, or fed one byte at a
//! time, decodes to the same frames and the same messages. Also regression tests of what the
//! fuzz targets (tests/fuzz) and their review turned up.

use bytes::BytesMut;
use ferry::core::exec::ExecRequest;
use ferry::core::files::Entry;
use ferry::tcp::codec::{DEFAULT_MAX_FRAME, Frame, FrameCodec, Kind};
use ferry::tcp::messages::{
    ErrorBody, ExecEnd, GetEnd, GetHeader, Hello, Limits, ListBatch, ListEnd, PutEnd, Request,
    Welcome,
};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

/// One message of the protocol, as the frame that carries it.
#[derive(Debug, Clone)]
enum Msg {
    Hello(Hello),
    Welcome(Welcome),
    Request(u32, Request),
    Header(u32, GetHeader),
    Listing(u32, ListBatch),
    ListEnd(u32, ListEnd),
    ExecEnd(u32, ExecEnd),
    GetEnd(u32, GetEnd),
    PutEnd(u32, PutEnd),
    Error(u32, ErrorBody),
    Raw(Kind, u32, Vec<u8>),
    Window(u32, u32),
}

impl Msg {
    fn frame(&self) -> Frame {
        match self {
            Msg::Hello(m) => Frame::json(Kind::Hello, 0, m),
            Msg::Welcome(m) => Frame::json(Kind::Welcome, 0, m),
            Msg::Request(s, m) => Frame::json(Kind::Request, *s, m),
            Msg::Header(s, m) => Frame::json(Kind::Header, *s, m),
            Msg::Listing(s, m) => Frame::json(Kind::Header, *s, m),
            Msg::ListEnd(s, m) => Frame::json(Kind::End, *s, m),
            Msg::ExecEnd(s, m) => Frame::json(Kind::End, *s, m),
            Msg::GetEnd(s, m) => Frame::json(Kind::End, *s, m),
            Msg::PutEnd(s, m) => Frame::json(Kind::End, *s, m),
            Msg::Error(s, m) => Frame::json(Kind::Error, *s, m),
            Msg::Raw(k, s, b) => Frame::new(*k, *s, b.clone()),
            Msg::Window(s, n) => Frame::window(*s, *n),
        }
    }

    /// Checks that `f`, as decoded, parses back to this message.
    fn check(&self, f: &Frame) {
        assert_eq!(f, &self.frame());
        match self {
            Msg::Hello(m) => same(f, m),
            Msg::Welcome(m) => same(f, m),
            Msg::Request(_, m) => same(f, m),
            Msg::Header(_, m) => same(f, m),
            Msg::Listing(_, m) => same(f, m),
            Msg::ListEnd(_, m) => same(f, m),
            Msg::ExecEnd(_, m) => same(f, m),
            Msg::GetEnd(_, m) => same(f, m),
            Msg::PutEnd(_, m) => same(f, m),
            Msg::Error(_, m) => same(f, m),
            Msg::Raw(..) => {}
            Msg::Window(_, n) => {
                let b = <[u8; 4]>::try_from(&f.payload[..]).expect("a grant is 4 bytes");
                assert_eq!(u32::from_be_bytes(b), *n);
            }
        }
    }
}

/// The payload of `f` parses as a `T` equal (as JSON) to `m`.
fn same<T: Serialize + DeserializeOwned>(f: &Frame, m: &T) {
    let back: T = f.parse().expect("the payload parses");
    assert_eq!(
        serde_json::to_value(back).unwrap(),
        serde_json::to_value(m).unwrap()
    );
}

fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..24).prop_map(|c| c.into_iter().collect())
}

fn request() -> impl Strategy<Value = Request> {
    let exec = (
        option::of(text()),
        option::of(vec(text(), 0..4)),
        option::of(text()),
        btree_map(text(), text(), 0..3),
        option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(|(cmd, argv, cwd, env, timeout_ms, stdin)| {
            Request::Exec(ExecRequest {
                cmd,
                argv,
                cwd,
                env,
                timeout_ms,
                stdin,
                max_output: None,
            })
        });
    prop_oneof![
        exec,
        (text(), any::<u64>()).prop_map(|(path, offset)| Request::Get { path, offset }),
        (text(), any::<u64>(), option::of(text()), any::<bool>()).prop_map(
            |(path, size, md5, md5_trailer)| Request::Put {
                path,
                size,
                md5,
                md5_trailer
            }
        ),
        text().prop_map(|path| Request::List { path }),
        text().prop_map(|path| Request::Stat { path }),
        Just(Request::Ping {}),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        text(),
        text(),
        any::<u64>(),
        any::<i64>(),
        option::of(text()),
    )
        .prop_map(|(name, kind, size, mtime, md5)| Entry {
            name,
            kind,
            size,
            mtime,
            md5,
        })
}

fn msg() -> impl Strategy<Value = Msg> {
    let kinds: Vec<Kind> = (0..=255).filter_map(Kind::from_u8).collect();
    let hello = (
        any::<u32>(),
        option::of(text()),
        option::of(text()),
        option::of(any::<u32>()),
        option::of(any::<u32>()),
    )
        .prop_map(|(version, token, client, window, max_frame)| {
            Msg::Hello(Hello {
                version,
                token,
                client,
                window,
                max_frame,
            })
        });
    let welcome = (
        any::<u32>(),
        text(),
        text(),
        any::<[u32; 3]>(),
        any::<[u64; 2]>(),
    )
        .prop_map(
            |(version, server, session, [max_frame, window, max_concurrent_execs], [t, o])| {
                Msg::Welcome(Welcome {
                    version,
                    server,
                    session,
                    limits: Limits {
                        max_frame,
                        window,
                        exec_timeout_ms: t,
                        max_output: o,
                        max_concurrent_execs,
                    },
                    features: vec!["md5_trailer".into()],
                })
            },
        );
    let s = any::<u32>();
    prop_oneof![
        hello,
        welcome,
        (s, request()).prop_map(|(s, r)| Msg::Request(s, r)),
        (s, any::<[u64; 2]>(), text(), any::<i64>()).prop_map(|(s, [size, offset], md5, mtime)| {
            Msg::Header(
                s,
                GetHeader {
                    size,
                    md5,
                    offset,
                    mtime,
                },
            )
        }),
        (s, vec(entry(), 0..4)).prop_map(|(s, entries)| Msg::Listing(s, ListBatch { entries })),
        (s, any::<u64>()).prop_map(|(s, count)| Msg::ListEnd(s, ListEnd { count })),
        (
            s,
            option::of(any::<i32>()),
            option::of(any::<i32>()),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(s, exit_code, signal, duration_ms, truncated)| {
                Msg::ExecEnd(
                    s,
                    ExecEnd {
                        exit_code,
                        signal,
                        duration_ms,
                        truncated,
                        error: None,
                    },
                )
            }),
        (s, text(), any::<u64>(), any::<bool>()).prop_map(|(s, md5, bytes, changed)| Msg::GetEnd(
            s,
            GetEnd {
                md5,
                bytes,
                changed
            }
        )),
        (s, text(), any::<u64>(), any::<bool>())
            .prop_map(|(s, md5, size, created)| Msg::PutEnd(s, PutEnd { md5, size, created })),
        (s, text(), text())
            .prop_map(|(s, code, message)| Msg::Error(s, ErrorBody { code, message })),
        (proptest::sample::select(kinds), s, vec(any::<u8>(), 0..600))
            .prop_map(|(k, s, b)| Msg::Raw(k, s, b)),
        (s, any::<u32>()).prop_map(|(s, n)| Msg::Window(s, n)),
    ]
}

/// All the messages' frames, back to back in one buffer.
fn encode(msgs: &[Msg]) -> BytesMut {
    let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    for m in msgs {
        codec.encode(m.frame(), &mut buf).expect("encodes");
    }
    buf
}

/// Feeds `stream` to a decoder in pieces ending at `cuts`, decoding all it can after each.
fn decode_in_pieces(stream: &[u8], mut cuts: Vec<usize>) -> Vec<Frame> {
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    for cut in cuts {
        buf.extend_from_slice(&stream[at..cut]);
        at = cut;
        while let Some(f) = codec.decode(&mut buf).expect("valid frames") {
            frames.push(f);
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    frames
}

fn check_all(msgs: &[Msg], frames: &[Frame]) {
    assert_eq!(frames.len(), msgs.len());
    for (m, f) in msgs.iter().zip(frames) {
        m.check(f);
    }
}

proptest! {
    #[test]
    fn sticky_frames_decode_from_one_buffer(msgs in vec(msg(), 1..24)) {
        let stream = encode(&msgs);
        check_all(&msgs, &decode_in_pieces(&stream, vec![]));
    }

    #[test]
    fn frames_split_at_random_points_decode_the_same(
        msgs in vec(msg(), 1..24),
        cuts in vec(any::<Index>(), 0..32),
    ) {
        let stream = encode(&msgs);
        let cuts = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        check_all(&msgs, &decode_in_pieces(&stream, cuts));
    }

    #[test]
    fn frames_fed_one_byte_at_a_time_decode_the_same(msgs in vec(msg(), 1..8)) {
        let stream = encode(&msgs);
        check_all(&msgs, &decode_in_pieces(&stream, (0..stream.len()).collect()));
    }
}

/// A fake server on a free port: reads the client's hello, answers `welcome` (any JSON), then
/// keeps the connection; its task returns every byte the client sent after the hello, once
/// the client closes. Returns the address and that task.
async fn fake_server(welcome: serde_json::Value) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 4];
        sock.read_exact(&mut len).await.unwrap();
        let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
        sock.read_exact(&mut hello).await.unwrap();
        let mut out = BytesMut::new();
        FrameCodec::new(DEFAULT_MAX_FRAME)
            .encode(Frame::json(Kind::Welcome, 0, &welcome), &mut out)
            .unwrap();
        sock.write_all(&out).await.unwrap();
        let mut rest = Vec::new();
        let _ = sock.read_to_end(&mut rest).await;
        rest
    });
    (addr, server)
}

/// A server whose welcome announces a largest frame below the frame header: the client refuses
/// it with a protocol error (it used to underflow computing its chunk size, a panic in debug).
#[tokio::test]
async fn client_refuses_a_welcome_whose_max_frame_has_no_room() {
    let welcome = Welcome {
        version: 1,
        server: "hostile".into(),
        session: "s".into(),
        limits: Limits {
            max_frame: 3,
            window: 65536,
            exec_timeout_ms: 1000,
            max_output: 1000,
            max_concurrent_execs: 1,
        },
        features: vec![],
    };
    let (addr, server) = fake_server(serde_json::to_value(&welcome).unwrap()).await;
    let err = ferry::client::Client::connect(&addr, "token")
        .await
        .err()
        .expect("a welcome with no room for data is refused");
    assert!(err.to_string().contains("leaves no room for data"), "{err}");
    server.await.unwrap();
}

/// A server older than the trailing MD5 (its welcome has no `features`): the client library
/// refuses a `put` without an MD5 before it sends anything, rather than send a request that
/// server would reject as an unknown field.
#[tokio::test]
async fn put_without_md5_to_a_server_without_trailers_is_refused_locally() {
    // An older server's welcome, byte for byte: no `features` field.
    let (addr, server) = fake_server(serde_json::json!({
        "version": 1, "server": "ferry/0.0.9", "session": "s",
        "limits": {"max_frame": 1048576, "window": 4194304, "exec_timeout_ms": 1000,
                   "max_output": 1000, "max_concurrent_execs": 1},
    }))
    .await;
    let client = ferry::client::Client::connect(&addr, "token")
        .await
        .unwrap();
    assert!(!client.supports("md5_trailer"));
    let err = client
        .put(
            "f.bin",
            std::io::Cursor::new(vec![7u8; 10]),
            10,
            None,
            |_| {},
        )
        .await
        .expect_err("no trailer to an older server");
    assert!(err.to_string().contains("takes no trailing MD5"), "{err}");
    drop(client);
    let rest = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the client closes")
        .unwrap();
    assert!(rest.is_empty(), "the client sent {} bytes", rest.len());
}
