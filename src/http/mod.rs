//! The HTTP transport (axum): files with checksum headers, uploads, exec, the JSON API and the
//! browser UI with its login.
//!
//! A thin adapter like the TCP one: it authenticates, calls the core and encodes. Each
//! connection that presents a valid token becomes one session (transport `http`).

mod api;
mod auth;
mod checksums;
mod conn;
mod error;
mod exec;
mod files;
mod linger;
mod login;
mod origin;
pub mod range;
mod routes;
mod shortcut;
mod term;
mod uploads;
mod web;

pub use error::ApiError;
pub use routes::{PUBLIC, ROUTES, Shutdown, router};
// The terminal's text-message parsers, pure functions, for the fuzz targets in tests/fuzz.
pub use term::{ack_of as term_ack_of, control as term_control};

use crate::core::Core;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits of the HTTP transport.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body (uploads included), in bytes.
    pub max_body: u64,
    /// Most requests handled at once; more get 503 `busy` at once.
    pub max_requests: usize,
    /// Longest time for an API request (not for file transfers, exec or event streams).
    pub request_timeout: Duration,
    /// Longest time a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Longest time a keep-alive connection may wait for its next request (capped by
    /// `header_timeout`, whose timer hyper also runs between requests).
    pub idle_timeout: Duration,
    /// Most connections at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Whether login cookies say `Secure` (always so with TLS; set it when a TLS proxy fronts ferry).
    pub secure_cookies: bool,
    /// Origins besides the request's own host whose pages may open a terminal (`*`: any).
    pub allowed_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body: 64 << 30,
            max_requests: 1024,
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
            secure_cookies: false,
            allowed_origins: Vec::new(),
        }
    }
}

/// Serves HTTP on `listener` until `shutdown`; connections run on `tracker`, and `kill` drops
/// them all at once. With `tls`, HTTPS only: each connection first makes a TLS handshake
/// (within the header timeout), and login cookies are `Secure`.
pub async fn serve(
    core: Core,
    mut cfg: HttpConfig,
    tls: Option<TlsAcceptor>,
    listener: TcpListener,
    shutdown: CancellationToken,
    kill: CancellationToken,
    tracker: TaskTracker,
) {
    cfg.secure_cookies |= tls.is_some();
    let app = router(core.clone(), &cfg, Shutdown(shutdown.clone()));
    let stop = (shutdown, kill, tracker);
    conn::accept_loop(core, cfg, tls, app, listener, stop).await;
}
