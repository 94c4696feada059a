//! The accept loop every transport shares: a cap on connections, shutdown, and a pause on errors;
//! and the TLS handshake each connection makes in its own task when TLS is on.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Connections open across every transport.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Told when the last open connection closes.
static QUIET: Notify = Notify::const_new();

/// An open connection's place: it counts against its listener's cap and the connections open
/// in the whole server until dropped (when the connection ends).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        OPEN.fetch_add(1, Ordering::AcqRel);
        Slot { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if OPEN.fetch_sub(1, Ordering::AcqRel) == 1 {
            QUIET.notify_one();
        }
    }
}

/// How long the server must stay without connections before it hands freed memory back.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// Once no connection has been open for [`QUIET_FOR`], returns the memory the allocator kept
/// from the last burst of work to the system (a busy minute can leave megabytes of freed heap
/// in every thread's arena); runs until the runtime ends.
pub async fn give_back_memory() {
    loop {
        QUIET.notified().await;
        tokio::time::sleep(QUIET_FOR).await;
        if OPEN.load(Ordering::Acquire) == 0 {
            crate::memory::trim();
        }
    }
}

/// Accepts connections until `shutdown`, at most `max` at once (further ones wait in the
/// kernel's backlog); hands each, with `TCP_NODELAY` set, to `serve` with the [`Slot`] that
/// counts it (drop it when the connection ends).
pub async fn accept_loop(
    listener: TcpListener,
    max: usize,
    shutdown: CancellationToken,
    what: &'static str,
    mut serve: impl FnMut(TcpStream, SocketAddr, Slot),
) {
    let slots = Arc::new(Semaphore::new(max.max(1)));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of descriptors and the like: retrying at once would spin, so give
                    // closing connections a moment, then keep serving.
                    tracing::warn!(error = %e, transport = what, "accept failed; pausing 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = sock.set_nodelay(true);
        serve(sock, peer, Slot::new(permit));
    }
}

/// An accepted connection: plain TCP, or TLS over TCP once its handshake is done.
pub enum Stream {
    /// No TLS.
    Plain(TcpStream),
    /// A finished TLS handshake.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A boxed reading half of a [`Stream`].
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed writing half of a [`Stream`].
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

impl Stream {
    /// Splits the stream for a reader task and a writer task (plain TCP without a lock).
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            // Split the wrapper, not the TLS stream, so that its reads keep the EOF rule below.
            tls => {
                let (r, w) = tokio::io::split(tls);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

/// Makes `sock` a [`Stream`]: at once without TLS; with TLS, after a handshake that must end
/// within `timeout` (a client that connects and never speaks is dropped). `None` when the
/// handshake fails, times out or the server shuts down: logged at debug level with the peer,
/// since scanners and plaintext clients would otherwise flood the log.
pub async fn establish(
    sock: TcpStream,
    peer: SocketAddr,
    tls: Option<&TlsAcceptor>,
    timeout: Duration,
    shutdown: &CancellationToken,
    what: &'static str,
) -> Option<Stream> {
    let Some(acceptor) = tls else {
        return Some(Stream::Plain(sock));
    };
    let failure = tokio::select! {
        r = tokio::time::timeout(timeout, acceptor.accept(sock)) => match r {
            Ok(Ok(s)) => return Some(Stream::Tls(Box::new(s))),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no TLS handshake within {timeout:?}"),
        },
        _ = shutdown.cancelled() => "server shutdown".to_string(),
    };
    tracing::debug!(%peer, transport = what, error = %failure, "tls handshake failed");
    None
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            // A peer that leaves without a close_notify (a CLI exiting) has ended, not failed:
            // both protocols frame their messages, so a cut inside one is still detected.
            Stream::Tls(s) => match Pin::new(s).poll_read(cx, buf) {
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                r => r,
            },
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
