//! Starting and stopping a whole ferry server: the core plus its transports.

use crate::core::{Core, CoreConfig};
use crate::http::{self, HttpConfig};
use crate::tcp::{self, TcpConfig};
use crate::tls::ServerTls;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything a server needs besides its listeners.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The core's settings.
    pub core: CoreConfig,
    /// The TCP transport's limits.
    pub tcp: TcpConfig,
    /// The HTTP transport's limits.
    pub http: HttpConfig,
    /// How long transfers may go on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// TLS for both listeners (they then speak TLS only); `None`: plain TCP and HTTP.
    pub tls: Option<ServerTls>,
}

/// The bound sockets a server serves (bound by the caller, so tests can use port 0).
pub struct Listeners {
    /// The raw TCP protocol's listener.
    pub tcp: TcpListener,
    /// The HTTP listener.
    pub http: TcpListener,
}

/// A running server.
pub struct Running {
    /// The shared core (tests read the registry and the audit through it).
    pub core: Core,
    /// The TCP address actually bound.
    pub tcp_addr: SocketAddr,
    /// The HTTP address actually bound.
    pub http_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Running {
    /// Waits until the server has shut down (after `shutdown` is cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Opens the core and starts every transport; cancelling `shutdown` stops them gracefully.
pub async fn start(
    cfg: ServerConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    crate::core::sandbox::keep_children();
    tokio::spawn(crate::listen::give_back_memory());
    let (core, _writer) = Core::open(&cfg.core, shutdown.clone()).await?;
    let tcp_addr = listeners.tcp.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let kill = CancellationToken::new();
    let tracker = TaskTracker::new();
    let accept = tokio::spawn(tcp::serve(
        core.clone(),
        cfg.tcp.clone(),
        cfg.tls.as_ref().map(|t| t.acceptor(&[])),
        listeners.tcp,
        shutdown.clone(),
        kill.clone(),
        tracker.clone(),
    ));
    let http_accept = tokio::spawn(http::serve(
        core.clone(),
        cfg.http.clone(),
        cfg.tls.as_ref().map(|t| t.acceptor(&[b"http/1.1"])),
        listeners.http,
        shutdown.clone(),
        kill.clone(),
        tracker.clone(),
    ));
    let core2 = core.clone();
    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        let _ = accept.await;
        let _ = http_accept.await;
        tracker.close();
        tracing::info!(
            grace_s = cfg.shutdown_grace.as_secs(),
            "shutting down: no new connections, commands cancelled"
        );
        if tokio::time::timeout(cfg.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("transfers still running at the deadline; closing their connections");
            kill.cancel();
            tracker.wait().await;
        }
        // Terminal sessions end with the server: their shells' sessions are killed.
        core2.term.close().await;
        // Idle resumable uploads cannot outlive the process: drop them and their temp files.
        core2.uploads.close().await;
        core2.audit.close().await;
        tracing::info!("shutdown complete");
    });
    Ok(Running {
        core,
        tcp_addr,
        http_addr,
        task,
    })
}
