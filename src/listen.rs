//! The accept loop every transport shares: a cap on connections, shutdown, and a pause on errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Accepts connections until `shutdown`, at most `max` at once (further ones wait in the
/// kernel's backlog); hands each, with `TCP_NODELAY` set, to `serve` with the permit that
/// counts it (drop the permit when the connection ends).
pub async fn accept_loop(
    listener: TcpListener,
    max: usize,
    shutdown: CancellationToken,
    what: &'static str,
    mut serve: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
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
        serve(sock, peer, permit);
    }
}
