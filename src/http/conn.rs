//! HTTP connections: accepted here so each one knows its peer, counts its bytes, and becomes one
//! session once it presents a valid token.

use crate::core::Core;
use crate::core::audit::Actor;
use crate::core::auth::{Principal, Proven};
use crate::core::registry::{SessionCounters, SessionGuard};
use crate::http::HttpConfig;
use crate::listen::{Stream, establish};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// One HTTP connection's state, reachable from its requests' extensions.
pub struct ConnState {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection came over TLS (its pages' origin is then `https://`).
    pub tls: bool,
    /// The bearer token this connection proved.
    pub proven: Proven,
    session: OnceLock<(Actor, Arc<SessionCounters>)>,
    guard: Mutex<Option<SessionGuard>>,
    opening: tokio::sync::Mutex<()>,
    pending_in: AtomicU64,
    pending_out: AtomicU64,
    /// When the connection last received a byte, in milliseconds since `opened`.
    last_in: AtomicU64,
    opened: Instant,
}

impl ConnState {
    fn new(peer: SocketAddr, tls: bool) -> Self {
        ConnState {
            peer,
            tls,
            proven: Proven::default(),
            session: OnceLock::new(),
            guard: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            pending_in: AtomicU64::new(0),
            pending_out: AtomicU64::new(0),
            last_in: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    /// The connection's session, opened on its first authenticated request (and named after
    /// its principal), as an actor with the principal `who` of the current request.
    pub async fn session(&self, core: &Core, who: Arc<Principal>) -> Actor {
        if let Some(actor) = self.opened_session(&who) {
            return actor;
        }
        let _one = self.opening.lock().await;
        if let Some(actor) = self.opened_session(&who) {
            return actor;
        }
        let (actor, guard) = core.open_session("http", self.peer.to_string(), who).await;
        let counters = guard.counters.clone();
        // Bytes of the requests before this one belong to the session too.
        counters.add_in(self.pending_in.swap(0, Ordering::Relaxed));
        counters.add_out(self.pending_out.swap(0, Ordering::Relaxed));
        *self.guard.lock().unwrap() = Some(guard);
        let _ = self.session.set((actor.clone(), counters));
        actor
    }

    /// The connection's session as an actor with the principal `who`, once it is open.
    pub fn opened_session(&self, who: &Arc<Principal>) -> Option<Actor> {
        let (actor, _) = self.session.get()?;
        Some(Actor {
            principal: who.clone(),
            ..actor.clone()
        })
    }

    fn count_in(&self, n: u64) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_in.store(now, Ordering::Relaxed);
        match self.session.get() {
            Some((_, c)) => c.add_in(n),
            None => {
                self.pending_in.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn count_out(&self, n: u64) {
        match self.session.get() {
            Some((_, c)) => c.add_out(n),
            None => {
                self.pending_out.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// A socket that counts the bytes it moves into its connection's session.
struct Counted {
    sock: Stream,
    state: Arc<ConnState>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.sock).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.state.count_in(n as u64);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.sock).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.state.count_out(n as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.sock).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.state.count_out(n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.sock.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.sock).poll_shutdown(cx)
    }
}

pub(super) async fn accept_loop(
    core: Core,
    cfg: HttpConfig,
    tls: Option<TlsAcceptor>,
    app: impl crate::http::routes::App,
    listener: TcpListener,
    (shutdown, kill, tracker): (CancellationToken, CancellationToken, TaskTracker),
) {
    // hyper starts its header timer when a connection opens and again whenever a keep-alive
    // connection goes idle after a response (not while a response, such as an event stream, is
    // still being sent, nor after an upgrade): it is the idle timeout between requests as well.
    let header_timeout = cfg.header_timeout.min(cfg.idle_timeout);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024);
    let http = Arc::new(http);
    let stop = shutdown.clone();
    crate::listen::accept_loop(
        listener,
        cfg.max_connections,
        stop,
        "http",
        |sock, peer, permit| {
            let state = Arc::new(ConnState::new(peer, tls.is_some()));
            let (app, http, tls) = (app.clone(), http.clone(), tls.clone());
            let (core, shutdown, kill) = (core.clone(), shutdown.clone(), kill.clone());
            let timeout = cfg.header_timeout;
            tracker.spawn(async move {
                // The handshake runs here, off the accept loop, bounded like the headers are.
                let Some(sock) =
                    establish(sock, peer, tls.as_ref(), timeout, &shutdown, "http").await
                else {
                    drop(permit);
                    return;
                };
                let io = TokioIo::new(Counted {
                    sock,
                    state: state.clone(),
                });
                let state2 = state.clone();
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(state2.clone());
                        app.clone().oneshot(req.map(axum::body::Body::new))
                    },
                );
                let conn = http.serve_connection(io, svc).with_upgrades();
                tokio::pin!(conn);
                let reason = tokio::select! {
                    r = conn.as_mut() => closed(r, &state, header_timeout),
                    _ = shutdown.cancelled() => {
                        // Finish the request in flight, then close; `kill` cuts it at the deadline.
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            r = conn.as_mut() => closed(r, &state, header_timeout),
                            _ = kill.cancelled() => "server shutdown",
                        }
                    }
                };
                let guard = state.guard.lock().unwrap().take();
                if let (Some((actor, _)), Some(guard)) = (state.session.get(), guard) {
                    core.close_session(actor, guard, reason).await;
                }
                drop(permit);
            });
        },
    )
    .await;
}

fn closed(r: Result<(), hyper::Error>, state: &ConnState, limit: Duration) -> &'static str {
    match r {
        Ok(()) => "closed",
        Err(e) if e.is_timeout() => {
            // Nothing at all arrived while the timer ran: idle, rather than slow headers.
            let last = Duration::from_millis(state.last_in.load(Ordering::Relaxed));
            if state.opened.elapsed().saturating_sub(last) >= limit {
                "idle"
            } else {
                "header timeout"
            }
        }
        Err(_) => "connection error",
    }
}
