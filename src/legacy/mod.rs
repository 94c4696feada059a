//! The legacy line protocol on the TCP port, for the classic socket clients written before
//! framing: a command client and a file client. A connection is told apart from a framed one
//! by its first byte; then this thin adapter reads lines, calls the core and answers in the
//! clients' own byte layout (see docs/protocol.md, "Legacy line protocol").

mod exchange;

use crate::core::Core;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The transport name of legacy sessions in the registry, the audit log and the API.
pub const TRANSPORT: &str = "legacy";

/// Settings of the legacy line protocol, which is off unless `--legacy` is given.
#[derive(Debug, Clone)]
pub struct LegacyConfig {
    /// Networks besides loopback whose clients may speak it (they carry no token).
    pub allow: Vec<IpNet>,
    /// How long to wait for the acknowledgement of a client not yet seen to send one.
    pub ack_wait: Duration,
    /// How long to wait for the acknowledgement of a client that sent one before.
    pub ack_patience: Duration,
    /// How long a connection may wait for its next line before it is closed.
    pub idle_timeout: Duration,
}

impl Default for LegacyConfig {
    fn default() -> Self {
        LegacyConfig {
            allow: Vec::new(),
            ack_wait: Duration::from_millis(100),
            ack_patience: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl LegacyConfig {
    /// Whether a client at `ip` may speak the legacy protocol: loopback, or an allowed network.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// What a new connection speaks, as its first byte tells.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// The framed protocol (its hello starts with 0x00), or TLS (0x16), or silence so far.
    Framed,
    /// Legacy text: any other first byte.
    Legacy,
    /// Closed before a byte came, or the server is stopping.
    Gone,
}

/// Peeks at the first byte without taking it. A client silent for `wait` is left to the framed
/// path, which owns the hello timeout and its error frame.
pub async fn sniff(sock: &TcpStream, wait: Duration, shutdown: &CancellationToken) -> Sniffed {
    let mut first = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(wait, sock.peek(&mut first)) => match r {
            Ok(Ok(0)) | Ok(Err(_)) => Sniffed::Gone,
            Ok(Ok(_)) if first[0] == 0x00 || first[0] == 0x16 => Sniffed::Framed,
            Ok(Ok(_)) => Sniffed::Legacy,
            Err(_) => Sniffed::Framed,
        },
        _ = shutdown.cancelled() => Sniffed::Gone,
    }
}

/// What a refused client reads before the connection closes.
const REFUSED: &[u8] =
    b"ferry: legacy clients are accepted only from loopback or --legacy-allow networks\n";

/// Answers a refused client's line with [`REFUSED`], laid out as any answer (length, the
/// acknowledgement or a short wait, the text), then closes; nothing it sent is run.
async fn refuse(sock: &mut TcpStream, cfg: &LegacyConfig) {
    let mut buf = [0u8; 2048];
    let wait = cfg.ack_wait;
    let _ = tokio::time::timeout(wait, sock.read(&mut buf)).await;
    if sock
        .write_all(REFUSED.len().to_string().as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(wait, sock.read(&mut buf)).await;
    let _ = sock.write_all(REFUSED).await;
    let _ = sock.shutdown().await;
}

/// Serves one legacy connection as a session of its own, until the client closes it, it idles
/// out or the server stops. `kill` (the shutdown deadline) ends a running exchange too.
pub async fn serve(
    core: Core,
    cfg: Arc<LegacyConfig>,
    mut sock: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    kill: CancellationToken,
) {
    if !cfg.allows(peer.ip()) {
        tracing::warn!(%peer, "legacy client refused: not loopback and not in --legacy-allow");
        refuse(&mut sock, &cfg).await;
        return;
    }
    let principal = core.auth.legacy();
    let (actor, guard) = core
        .open_session(TRANSPORT, peer.to_string(), principal)
        .await;
    let mut conn = exchange::Conn::new(sock, cfg, guard.counters.clone());
    let reason = tokio::select! {
        r = conn.run(&core, &actor, &shutdown) => r,
        _ = kill.cancelled() => "shutdown deadline",
    };
    drop(conn);
    core.close_session(&actor, guard, reason).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback always may; others only inside an allowed network, IPv4-mapped or not.
    #[test]
    fn allowlist() {
        let mut cfg = LegacyConfig::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(cfg.allows(ip("127.0.0.1")));
        assert!(cfg.allows(ip("127.9.9.9")));
        assert!(cfg.allows(ip("::1")));
        assert!(cfg.allows(ip("::ffff:127.0.0.1")));
        assert!(!cfg.allows(ip("10.1.2.3")));
        cfg.allow.push("10.0.0.0/8".parse().unwrap());
        assert!(cfg.allows(ip("10.1.2.3")));
        assert!(cfg.allows(ip("::ffff:10.1.2.3")));
        assert!(!cfg.allows(ip("11.1.2.3")));
        assert!(!cfg.allows(ip("fd00::1")));
    }

    /// A refused client gets the refusal as an answer it can read: length, then the text.
    #[tokio::test]
    async fn refusal_is_an_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"ls").await.unwrap();
            let mut len = vec![0u8; 2];
            s.read_exact(&mut len).await.unwrap();
            s.write_all(b"ok").await.unwrap();
            let n: usize = std::str::from_utf8(&len).unwrap().parse().unwrap();
            let mut text = Vec::new();
            s.read_to_end(&mut text).await.unwrap();
            (n, text)
        });
        let (mut sock, _) = listener.accept().await.unwrap();
        refuse(&mut sock, &LegacyConfig::default()).await;
        let (n, text) = client.await.unwrap();
        assert_eq!(n, REFUSED.len());
        assert_eq!(text, REFUSED);
    }
}
