//! One TCP connection: the hello, the demultiplexer and the writer.

use super::TcpConfig;
use super::codec::{CodecError, Frame, FrameCodec, HEADER_LEN, Kind};
use super::messages::{
    ErrorBody, FEATURE_MD5_TRAILER, Hello, Limits, PROTOCOL_VERSION, Request, Welcome,
};
use super::ops::{self, StreamCtx};
use super::writer::{shrink, write_loop};
use crate::core::Core;
use crate::core::audit::Actor;
use crate::core::auth::Principal;
use crate::core::error::{Code, Error};
use crate::core::registry::SessionCounters;
use crate::listen::{ReadHalf, Stream};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

/// Frames queued for the socket, per connection; with the windows, this bounds its memory.
const OUT_QUEUE: usize = 32;
/// Largest frame accepted before the hello is authenticated.
const HELLO_MAX: usize = 16 * 1024;
/// Most streams open at once on one connection; more get `busy`.
pub(super) const MAX_STREAMS: usize = 64;
/// Largest window grant the server accepts in total on one stream (keeps the counter sane).
const MAX_WINDOW: usize = 1 << 40;
/// A connection before and after its hello.
pub(super) struct Conn {
    core: Core,
    cfg: Arc<TcpConfig>,
    peer: SocketAddr,
    shutdown: CancellationToken,
    kill: CancellationToken,
}

/// What every stream of an authenticated connection shares.
pub(super) struct Shared {
    pub core: Core,
    pub actor: Actor,
    pub out: mpsc::Sender<Frame>,
    /// Largest data payload the server sends.
    pub chunk: usize,
    pub counters: Arc<SessionCounters>,
    /// Cancelled when the connection ends; streams then stop as failed, not as cancelled.
    pub closed: CancellationToken,
    /// The connection's idle timeout: an upload ends when no frame came for this long.
    pub idle: std::time::Duration,
    /// When the connection began; `last_in` counts from here.
    pub born: tokio::time::Instant,
    /// When the connection last received a frame, in milliseconds after `born`.
    pub last_in: AtomicU64,
    /// Upload bytes consumed before the server grants them back in one `Window`: half the
    /// initial window, as HTTP/2 peers do, so a sender is woken once per step, not per frame;
    /// smaller when a whole frame would not fit in the other half (see `grant_step`).
    pub grant_step: usize,
}

impl Shared {
    /// Resolves once the connection has received no frame for the idle timeout.
    pub async fn silent(&self) {
        loop {
            let last =
                self.born + std::time::Duration::from_millis(self.last_in.load(Ordering::Relaxed));
            let until = last + self.idle;
            if tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    }
}

struct Slot {
    inbound: Option<mpsc::UnboundedSender<Frame>>,
    /// The stream's `Eof` has been passed on: later data frames are discarded, not queued.
    ended: bool,
    credit: Arc<AtomicU64>,
    window: Arc<Semaphore>,
    cancel: CancellationToken,
}

type Reader = FramedRead<ReadHalf, FrameCodec>;

fn error_frame(stream: u32, e: &Error) -> Frame {
    Frame::json(Kind::Error, stream, &ErrorBody::from(e))
}

impl Conn {
    pub(super) fn new(
        core: Core,
        cfg: Arc<TcpConfig>,
        peer: SocketAddr,
        shutdown: CancellationToken,
        kill: CancellationToken,
    ) -> Self {
        Conn {
            core,
            cfg,
            peer,
            shutdown,
            kill,
        }
    }

    pub(super) async fn run(self, sock: Stream) {
        let (rd, wr) = sock.into_split();
        // Until the peer has authenticated, it may send no more than a small hello.
        let mut reader = FramedRead::new(rd, FrameCodec::new(HELLO_MAX.min(self.cfg.max_frame)));
        let mut writer = FramedWrite::new(wr, FrameCodec::new(self.cfg.max_frame));
        writer.set_backpressure_boundary(256 * 1024);
        let (hello, principal) = match self.hello(&mut reader).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(peer = %self.peer, code = %e.code, msg = %e.message, "tcp connection refused");
                let _ = writer.send(error_frame(0, &e)).await;
                return;
            }
        };
        reader.decoder_mut().set_max_frame(self.cfg.max_frame);
        let (actor, guard) = self
            .core
            .open_session("tcp", self.peer.to_string(), principal)
            .await;
        let client_max = hello
            .max_frame
            .map_or(self.cfg.max_frame, |m| (m as usize).max(4096));
        let client_window = hello.window.unwrap_or(self.cfg.window).max(4096);
        let chunk = (client_max.min(self.cfg.max_frame) - HEADER_LEN)
            .min(256 * 1024)
            .min(client_window as usize);
        let limits = self.core.exec.limits();
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            server: format!("ferry/{}", env!("CARGO_PKG_VERSION")),
            session: actor.session_id.to_string(),
            limits: Limits {
                max_frame: self.cfg.max_frame as u32,
                window: self.cfg.window,
                exec_timeout_ms: limits.timeout.as_millis() as u64,
                max_output: limits.max_output,
                max_concurrent_execs: limits.max_concurrent as u32,
            },
            features: vec![FEATURE_MD5_TRAILER.to_string()],
        };
        if writer
            .send(Frame::json(Kind::Welcome, 0, &welcome))
            .await
            .is_err()
        {
            self.core
                .close_session(&actor, guard, "closed before welcome")
                .await;
            return;
        }
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let counters = guard.counters.clone();
        let kill = self.kill.clone();
        let writing = write_loop(writer, out_rx, counters.clone(), self.cfg.idle_timeout);
        // At the shutdown deadline the socket is dropped even if the peer stopped reading.
        let write_task = tokio::spawn(async move {
            tokio::select! {
                _ = writing => {}
                _ = kill.cancelled() => {}
            }
        });
        let shared = Arc::new(Shared {
            core: self.core.clone(),
            actor: actor.clone(),
            out,
            chunk,
            counters,
            closed: CancellationToken::new(),
            idle: self.cfg.idle_timeout,
            born: tokio::time::Instant::now(),
            last_in: AtomicU64::new(0),
            grant_step: super::ops::grant_step(self.cfg.window as usize, self.cfg.max_frame),
        });
        let reason = self.demux(&mut reader, &shared, client_window).await;
        drop(shared);
        let _ = write_task.await;
        self.core.close_session(&actor, guard, reason).await;
    }

    async fn hello(&self, reader: &mut Reader) -> Result<(Hello, Arc<Principal>), Error> {
        let first = tokio::time::timeout(self.cfg.hello_timeout, reader.next())
            .await
            .map_err(|_| {
                Error::new(
                    Code::Timeout,
                    format!("no hello within {:?}", self.cfg.hello_timeout),
                )
            })?;
        let frame = match first {
            None => return Err(Error::bad_request("closed before hello")),
            Some(Err(e)) => return Err(codec_error(&e)),
            Some(Ok(f)) => f,
        };
        if frame.kind != Kind::Hello || frame.stream != 0 {
            return Err(Error::bad_request(
                "the first frame must be a hello on stream 0",
            ));
        }
        let hello: Hello = frame
            .parse()
            .map_err(|e| Error::bad_request(format!("bad hello: {e}")))?;
        if hello.version != PROTOCOL_VERSION {
            return Err(Error::bad_request(format!(
                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                hello.version
            )));
        }
        let principal = self
            .core
            .auth
            .authenticate(self.peer.ip(), hello.token.as_deref())?;
        Ok((hello, principal))
    }

    /// Routes frames to streams until the peer leaves or breaks the protocol; returns why it ended.
    async fn demux(
        &self,
        reader: &mut Reader,
        shared: &Arc<Shared>,
        client_window: u32,
    ) -> &'static str {
        let conn_cancel = shared.closed.clone();
        let mut streams: HashMap<u32, Slot> = HashMap::new();
        let mut tasks: JoinSet<u32> = JoinSet::new();
        let mut draining = false;
        let fail = |e: Error| {
            let out = shared.out.clone();
            async move {
                let _ = out.send(error_frame(0, &e)).await;
            }
        };
        // Idle: no frame received and no stream open for `idle_timeout`; reset by both.
        let idle = tokio::time::sleep(self.cfg.idle_timeout);
        tokio::pin!(idle);
        let reason = loop {
            if draining && streams.is_empty() {
                break "server shutdown";
            }
            tokio::select! {
                frame = reader.next() => {
                    let now = tokio::time::Instant::now();
                    idle.as_mut().reset(now + self.cfg.idle_timeout);
                    let since = now.saturating_duration_since(shared.born).as_millis();
                    shared.last_in.store(since as u64, Ordering::Relaxed);
                    let frame = match frame {
                        None => break "closed by peer",
                        Some(Err(CodecError::Io(_))) => break "connection error",
                        Some(Err(e)) => {
                            fail(codec_error(&e)).await;
                            break "protocol error";
                        }
                        Some(Ok(f)) => f,
                    };
                    shared.counters.add_in((4 + HEADER_LEN + frame.payload.len()) as u64);
                    let id = frame.stream;
                    match frame.kind {
                        Kind::Request => {
                            if id == 0 || streams.contains_key(&id) {
                                fail(Error::bad_request(format!("stream id {id} is 0 or already in use"))).await;
                                break "protocol error";
                            }
                            if streams.len() >= MAX_STREAMS {
                                let e = Error::new(Code::Busy, format!("at most {MAX_STREAMS} streams may be open at once"));
                                let _ = shared.out.send(error_frame(id, &e)).await;
                                continue;
                            }
                            if draining {
                                let e = Error::new(Code::Busy, "the server is shutting down");
                                let _ = shared.out.send(error_frame(id, &e)).await;
                                continue;
                            }
                            let req: Request = match frame.parse() {
                                Ok(r) => r,
                                Err(e) => {
                                    let e = Error::bad_request(format!("bad request: {e}"));
                                    let _ = shared.out.send(error_frame(id, &e)).await;
                                    continue;
                                }
                            };
                            let takes_data = matches!(&req, Request::Put { .. })
                                || matches!(&req, Request::Exec(x) if x.stdin);
                            let (in_tx, in_rx) = mpsc::unbounded_channel();
                            let slot = Slot {
                                inbound: takes_data.then_some(in_tx),
                                ended: false,
                                credit: Arc::new(AtomicU64::new(self.cfg.window as u64)),
                                window: Arc::new(Semaphore::new(client_window as usize)),
                                cancel: conn_cancel.child_token(),
                            };
                            let ctx = StreamCtx {
                                id,
                                shared: shared.clone(),
                                inbound: in_rx,
                                credit: slot.credit.clone(),
                                window: slot.window.clone(),
                                cancel: slot.cancel.clone(),
                            };
                            streams.insert(id, slot);
                            tasks.spawn(async move {
                                ops::run(ctx, req).await;
                                id
                            });
                        }
                        Kind::Data | Kind::Eof => {
                            let Some(slot) = streams.get_mut(&id) else { continue };
                            let Some(inbound) = &slot.inbound else {
                                fail(Error::bad_request(format!("stream {id} takes no data"))).await;
                                break "protocol error";
                            };
                            // Frames that carry nothing cost no window, so the window cannot
                            // bound them: an empty `Data`, or anything after the `Eof`, is
                            // dropped here rather than queued for a consumer that may be stuck.
                            if slot.ended || (frame.kind == Kind::Data && frame.payload.is_empty()) {
                                continue;
                            }
                            slot.ended = frame.kind == Kind::Eof;
                            let n = frame.payload.len() as u64;
                            if frame.kind == Kind::Data {
                                let ok = slot.credit
                                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(n))
                                    .is_ok();
                                if !ok {
                                    fail(Error::bad_request(format!("stream {id} sent more than its window"))).await;
                                    break "protocol error";
                                }
                            }
                            let _ = inbound.send(frame);
                        }
                        Kind::Window => {
                            let Ok(b) = <[u8; 4]>::try_from(&frame.payload[..]) else {
                                fail(Error::bad_request("a window frame carries 4 bytes")).await;
                                break "protocol error";
                            };
                            if let Some(slot) = streams.get(&id) {
                                let n = u32::from_be_bytes(b) as usize;
                                if slot.window.available_permits() + n > MAX_WINDOW {
                                    fail(Error::bad_request("window grant too large")).await;
                                    break "protocol error";
                                }
                                slot.window.add_permits(n);
                            }
                        }
                        Kind::Cancel => {
                            if let Some(slot) = streams.get(&id) {
                                slot.cancel.cancel();
                            }
                        }
                        other => {
                            fail(Error::bad_request(format!("a client may not send {other:?} frames"))).await;
                            break "protocol error";
                        }
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(id) = done {
                        streams.remove(&id);
                    }
                    if streams.is_empty() {
                        shrink(reader.read_buffer_mut());
                        idle.as_mut().reset(tokio::time::Instant::now() + self.cfg.idle_timeout);
                    }
                }
                _ = shared.out.closed() => {
                    // The writer also stops at the shutdown deadline.
                    break if self.kill.is_cancelled() { "shutdown deadline" } else { "write stalled or failed" };
                }
                _ = &mut idle, if streams.is_empty() => {
                    let secs = self.cfg.idle_timeout.as_secs_f64();
                    fail(Error::new(Code::Timeout, format!("idle for {secs} s: no frame and nothing running"))).await;
                    break "idle";
                }
                _ = self.shutdown.cancelled(), if !draining => draining = true,
                _ = self.kill.cancelled() => break "shutdown deadline",
            }
        };
        // Whatever ended the connection, its streams end too: commands are killed, uploads dropped.
        conn_cancel.cancel();
        streams.clear();
        while tasks.join_next().await.is_some() {}
        reason
    }
}

fn codec_error(e: &CodecError) -> Error {
    match e {
        CodecError::TooLarge(..) => Error::new(Code::TooLarge, e.to_string()),
        _ => Error::bad_request(e.to_string()),
    }
}
