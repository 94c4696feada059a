//! The raw TCP transport: framed, multiplexed, flow-controlled; a thin adapter over the core.

pub mod codec;
mod conn;
pub mod messages;
mod ops;

use crate::core::Core;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits of the TCP transport.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Most connections at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Largest frame accepted (length field value).
    pub max_frame: usize,
    /// Bytes a client may send on a stream before a window grant.
    pub window: u32,
    /// How long a new connection may take to send its hello.
    pub hello_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_connections: 1024,
            max_frame: codec::DEFAULT_MAX_FRAME,
            window: 4 * 1024 * 1024,
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts connections until `shutdown`; each runs on `tracker`. `kill` ends them all at once.
pub async fn serve(
    core: Core,
    cfg: TcpConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    kill: CancellationToken,
    tracker: TaskTracker,
) {
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of descriptors and similar: say so and keep serving.
                    tracing::warn!(error = %e, "tcp accept failed; pausing 100 ms");
                    // Out of descriptors: retrying at once would spin; give closing ones a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = sock.set_nodelay(true);
        let conn = conn::Conn::new(
            core.clone(),
            cfg.clone(),
            peer,
            shutdown.clone(),
            kill.clone(),
        );
        tracker.spawn(async move {
            conn.run(sock).await;
            drop(permit);
        });
    }
}
