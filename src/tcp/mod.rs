//! The raw TCP transport: framed, multiplexed, flow-controlled; a thin adapter over the core.

pub mod codec;
mod conn;
pub mod messages;
mod ops;
mod writer;

use crate::core::Core;
use crate::legacy::{self, LegacyConfig, Sniffed};
use crate::listen::establish;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
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
    /// How long an authenticated connection may go without a frame and with no stream open.
    pub idle_timeout: Duration,
    /// The legacy line protocol on the same port, when it is on.
    pub legacy: Option<Arc<LegacyConfig>>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_connections: 1024,
            max_frame: codec::DEFAULT_MAX_FRAME,
            window: 4 * 1024 * 1024,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            legacy: None,
        }
    }
}

/// Accepts connections until `shutdown`; each runs on `tracker`. `kill` ends them all at once.
/// With `tls`, each connection first makes a TLS handshake, within the hello timeout. With the
/// legacy protocol on, a connection whose first byte is neither a frame's (0x00) nor a TLS
/// handshake's (0x16) is a legacy client.
pub async fn serve(
    core: Core,
    cfg: TcpConfig,
    tls: Option<TlsAcceptor>,
    listener: TcpListener,
    shutdown: CancellationToken,
    kill: CancellationToken,
    tracker: TaskTracker,
) {
    let cfg = Arc::new(cfg);
    let max = cfg.max_connections;
    let stop = shutdown.clone();
    crate::listen::accept_loop(listener, max, stop, "tcp", |sock, peer, permit| {
        let conn = conn::Conn::new(
            core.clone(),
            cfg.clone(),
            peer,
            shutdown.clone(),
            kill.clone(),
        );
        let (tls, cfg, shutdown) = (tls.clone(), cfg.clone(), shutdown.clone());
        let (core, kill) = (core.clone(), kill.clone());
        tracker.spawn(async move {
            let timeout = cfg.hello_timeout;
            if let Some(lcfg) = &cfg.legacy {
                match legacy::sniff(&sock, timeout, &shutdown).await {
                    Sniffed::Framed => {}
                    Sniffed::Gone => return,
                    Sniffed::Legacy => {
                        legacy::serve(core, lcfg.clone(), sock, peer, shutdown, kill).await;
                        drop(permit);
                        return;
                    }
                }
            }
            if let Some(sock) = establish(sock, peer, tls.as_ref(), timeout, &shutdown, "tcp").await
            {
                conn.run(sock).await;
            }
            drop(permit);
        });
    })
    .await;
}
