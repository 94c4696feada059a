//! The client's side of TLS: which certificates it trusts, and the handshake.

use super::{ClientError, Result};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, RootCertStore};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// What a TLS client trusts; build it once, connect many times.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    /// Trusts only the certificates of a PEM file: the CA that signed the server's certificate,
    /// or the server's self-signed certificate itself.
    pub fn with_ca_file(path: &Path) -> Result<ClientTls> {
        let mut roots = RootCertStore::empty();
        for cert in crate::tls::certificates(path, "CA file").map_err(ClientError::Tls)? {
            roots.add(cert).map_err(|e| {
                ClientError::Tls(format!(
                    "the TLS CA file {} holds a certificate that cannot be trusted: {e}",
                    path.display()
                ))
            })?;
        }
        ClientTls::with_roots(roots)
    }

    /// Trusts the system's CA certificates (on Debian, those of the `ca-certificates` package;
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR` point elsewhere).
    pub fn system() -> Result<ClientTls> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            return Err(ClientError::Tls(format!(
                "no system CA certificates found{why}; install ca-certificates, or pass --ca FILE"
            )));
        }
        ClientTls::with_roots(roots)
    }

    fn with_roots(roots: RootCertStore) -> Result<ClientTls> {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// Makes the TLS handshake on `sock`, checking the certificate against the host of `addr`.
    pub(super) async fn handshake(
        &self,
        sock: TcpStream,
        addr: &str,
    ) -> Result<TlsStream<TcpStream>> {
        let name = server_name(addr)?;
        TlsConnector::from(self.config.clone())
            .connect(name, sock)
            .await
            .map_err(
                |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::InvalidCertificate(why)) => {
                        ClientError::Tls(untrusted(addr, why))
                    }
                    Some(other) => {
                        ClientError::Tls(format!("handshake with {addr} failed: {other}"))
                    }
                    None => ClientError::Tls(format!(
                        "handshake with {addr} failed: {e} (does the server speak TLS?)"
                    )),
                },
            )
    }
}

/// One line saying why the server's certificate was refused, and what to do.
fn untrusted(addr: &str, why: &CertificateError) -> String {
    match why {
        CertificateError::UnknownIssuer => format!(
            "the certificate of {addr} is not trusted (unknown issuer); if it is self-signed or \
             from a private CA, pass --ca FILE with that certificate or CA"
        ),
        CertificateError::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => format!(
            "the certificate of {addr} is a CA certificate, which cannot identify a server; \
             make it with basicConstraints=CA:FALSE (see the README, TLS)"
        ),
        why => {
            // Some reasons print as a debug dump of DER bytes: keep their name only.
            let text = why.to_string();
            let short = match text.find([' ', '{', '(']) {
                Some(i) if text.contains('[') => &text[..i],
                _ => &text,
            };
            format!(
                "the certificate of {addr} is not accepted ({short}); if it is self-signed or \
                 from a private CA, pass --ca FILE with that certificate or CA"
            )
        }
    }
}

/// The name the certificate must carry: the host part of `host:port` (an IP or a DNS name).
fn server_name(addr: &str) -> Result<ServerName<'static>> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(ServerName::IpAddress(sa.ip().into()));
    }
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| ClientError::Tls(format!("{host:?} is not a valid TLS server name")))
}

#[cfg(test)]
mod tests {
    use super::server_name;
    use rustls::pki_types::ServerName;

    #[test]
    fn names_from_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:8888").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:8888").unwrap(),
            ServerName::IpAddress(_)
        ));
        let dns = server_name("ferry.example:8888").unwrap();
        assert_eq!(dns.to_str(), "ferry.example");
        assert!(server_name("bad name:1").is_err());
    }
}
