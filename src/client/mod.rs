//! A client of the TCP protocol: one connection, many concurrent streams.
//!
//! Used by the `ferry` CLI and the tests; any program written from `docs/protocol.md` is its peer.

mod ops;
mod stream;
mod tls;

pub use ops::{GetOutcome, Progress};
pub use stream::{StreamHandle, StreamSender};
pub use tls::ClientTls;

use crate::core::error::{Code, Error};
use crate::listen::{ReadHalf, WriteHalf};
use crate::tcp::codec::{self, Frame, FrameCodec, HEADER_LEN, Kind};
use crate::tcp::messages::{ErrorBody, Hello, PROTOCOL_VERSION, Request, Welcome};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};

/// Bytes the server may send on each stream before the client grants more.
pub const CLIENT_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest frame the client accepts.
const CLIENT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// The id of a client's first stream.
const FIRST_STREAM: u32 = 1;

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made or broke.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// TLS could not be set up: an untrusted certificate, a failed handshake, a bad CA file.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server answered with an error.
    #[error("{}: {}", .0.code, .0.message)]
    Server(Error),
    /// The server broke the protocol or closed the connection early.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The bytes received do not have the MD5 the server announced.
    #[error("checksum_mismatch: expected MD5 {expected}, received bytes have {actual}")]
    Mismatch {
        /// What the server announced.
        expected: String,
        /// What the client computed.
        actual: String,
    },
    /// A local file could not be read or written.
    #[error("{0}")]
    Local(String),
    /// The caller stopped the operation (for instance, its output was closed).
    #[error("stopped")]
    Stopped,
}

impl ClientError {
    /// The server's error code, if the server sent one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Server(e) => Some(e.code),
            ClientError::Mismatch { .. } => Some(Code::ChecksumMismatch),
            _ => None,
        }
    }
}

/// The client's result type.
pub type Result<T> = std::result::Result<T, ClientError>;

struct StreamEntry {
    tx: mpsc::UnboundedSender<Frame>,
    window: Arc<Semaphore>,
}

type Streams = Arc<Mutex<HashMap<u32, StreamEntry>>>;

/// An authenticated connection; clone it to share among tasks.
#[derive(Clone)]
pub struct Client {
    out: mpsc::Sender<Frame>,
    streams: Streams,
    next: Arc<AtomicU32>,
    chunk: usize,
    /// The server's welcome: session id and limits.
    pub welcome: Arc<Welcome>,
}

impl Client {
    /// Whether the server announced the optional protocol part `feature` in its welcome.
    pub fn supports(&self, feature: &str) -> bool {
        self.welcome.features.iter().any(|f| f == feature)
    }

    /// Connects to `addr` and says hello with `token`.
    pub async fn connect(addr: &str, token: &str) -> Result<Client> {
        Client::connect_with(addr, token, None).await
    }

    /// Connects to `addr`, over TLS when `tls` is given, and says hello with `token`.
    pub async fn connect_with(addr: &str, token: &str, tls: Option<&ClientTls>) -> Result<Client> {
        Ok(Client::start(addr, token, tls, None).await?.0)
    }

    /// Connects as [`Client::connect_with`] does and opens a stream with `first` in the same
    /// write as the Hello (requests may follow it before the Welcome): a client that does one
    /// thing saves a round trip.
    pub async fn connect_opening(
        addr: &str,
        token: &str,
        tls: Option<&ClientTls>,
        first: &Request,
    ) -> Result<(Client, StreamHandle)> {
        match Client::start(addr, token, tls, Some(first)).await? {
            (client, Some(stream)) => Ok((client, stream)),
            (_, None) => Err(ClientError::Protocol(
                "the first stream was not opened".into(),
            )),
        }
    }

    /// Connects, sends the Hello and `first` (as stream 1), and waits for the Welcome.
    async fn start(
        addr: &str,
        token: &str,
        tls: Option<&ClientTls>,
        first: Option<&Request>,
    ) -> Result<(Client, Option<StreamHandle>)> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        let (rd, wr): (ReadHalf, WriteHalf) = match tls {
            None => {
                let (r, w) = sock.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(tls) => {
                let (r, w) = tokio::io::split(tls.handshake(sock, addr).await?);
                (Box::new(r), Box::new(w))
            }
        };
        let mut reader = FramedRead::new(rd, FrameCodec::new(CLIENT_MAX_FRAME));
        let mut writer = FramedWrite::new(wr, FrameCodec::new(CLIENT_MAX_FRAME));
        let hello = Hello {
            version: PROTOCOL_VERSION,
            token: Some(token.to_string()),
            client: Some(format!("ferry-cli/{}", env!("CARGO_PKG_VERSION"))),
            window: Some(CLIENT_WINDOW),
            max_frame: Some(CLIENT_MAX_FRAME as u32),
        };
        let protocol = |e: codec::CodecError| ClientError::Protocol(e.to_string());
        writer
            .feed(Frame::json(Kind::Hello, 0, &hello))
            .await
            .map_err(protocol)?;
        if let Some(req) = first {
            writer
                .feed(Frame::json(Kind::Request, FIRST_STREAM, req))
                .await
                .map_err(protocol)?;
        }
        writer.flush().await.map_err(protocol)?;
        let first_frame = reader
            .next()
            .await
            .ok_or_else(|| {
                ClientError::Protocol("the server closed the connection during the hello".into())
            })?
            .map_err(protocol)?;
        let welcome: Welcome = match first_frame.kind {
            Kind::Welcome => first_frame
                .parse()
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
            Kind::Error => return Err(server_error(&first_frame)),
            k => {
                return Err(ClientError::Protocol(format!(
                    "expected a welcome, got {k:?}"
                )));
            }
        };
        // Send at most what the server accepts in a frame, and no more than its window at once.
        let max_frame = welcome.limits.max_frame as usize;
        if max_frame <= HEADER_LEN {
            return Err(ClientError::Protocol(format!(
                "the server's largest frame ({max_frame} bytes) leaves no room for data"
            )));
        }
        let max_payload = (max_frame - HEADER_LEN)
            .min(256 * 1024)
            .min(welcome.limits.window as usize);
        let (out, out_rx) = mpsc::channel(32);
        let client = Client {
            out,
            streams: Arc::default(),
            next: Arc::new(AtomicU32::new(FIRST_STREAM + u32::from(first.is_some()))),
            chunk: max_payload.max(1),
            welcome: Arc::new(welcome),
        };
        // Registered before the reader starts, which drops frames of streams it does not know.
        let stream = first.map(|_| client.register(FIRST_STREAM));
        tokio::spawn(write_loop(writer, out_rx));
        tokio::spawn(read_loop(reader, client.streams.clone()));
        Ok((client, stream))
    }

    /// Opens a stream with `req`; data sends are limited by the server's window.
    pub async fn open(&self, req: &Request) -> Result<StreamHandle> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = self.register(id);
        self.send(Frame::json(Kind::Request, id, req)).await?;
        Ok(handle)
    }

    /// Makes stream `id` known to the reader; its frames go to the handle returned.
    fn register(&self, id: u32) -> StreamHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let window = Arc::new(Semaphore::new(self.welcome.limits.window as usize));
        self.streams.lock().unwrap().insert(
            id,
            StreamEntry {
                tx,
                window: window.clone(),
            },
        );
        StreamHandle::new(id, rx, window, self.clone())
    }

    async fn send(&self, f: Frame) -> Result<()> {
        self.out
            .send(f)
            .await
            .map_err(|_| ClientError::Protocol("the connection is closed".into()))
    }
}

fn server_error(f: &Frame) -> ClientError {
    match f.parse::<ErrorBody>() {
        Ok(b) => ClientError::Server(b.into()),
        Err(_) => ClientError::Protocol("an unreadable error frame".into()),
    }
}

async fn write_loop(mut w: FramedWrite<WriteHalf, FrameCodec>, mut rx: mpsc::Receiver<Frame>) {
    while let Some(f) = rx.recv().await {
        if codec::feed(&mut w, f).await.is_err() {
            return;
        }
        while let Ok(f) = rx.try_recv() {
            if codec::feed(&mut w, f).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    // Every handle is gone: end the connection cleanly (over TLS, with a close_notify).
    let _ = w.close().await;
}

async fn read_loop(mut r: FramedRead<ReadHalf, FrameCodec>, streams: Streams) {
    while let Some(Ok(f)) = r.next().await {
        let map = streams.lock().unwrap();
        if f.stream == 0 {
            // A connection-level error: every open stream hears it.
            for s in map.values() {
                s.window.close();
                let _ = s.tx.send(Frame::new(f.kind, 0, f.payload.clone()));
            }
            continue;
        }
        let Some(s) = map.get(&f.stream) else {
            continue;
        };
        if f.kind == Kind::Window {
            if let Ok(b) = <[u8; 4]>::try_from(&f.payload[..]) {
                s.window.add_permits(u32::from_be_bytes(b) as usize);
            }
            continue;
        }
        // Once a stream is over, a sender waiting for window must not wait forever.
        if matches!(f.kind, Kind::End | Kind::Error) {
            s.window.close();
        }
        let _ = s.tx.send(f);
    }
    // The connection is gone: dropping the senders ends every stream, closing the windows
    // wakes every sender.
    for s in streams.lock().unwrap().drain() {
        s.1.window.close();
    }
}
