//! TLS for both listeners (rustls with the `ring` provider): the certificate and key, loaded once
//! at startup; each connection's handshake runs in its own task ([`crate::listen::establish`]).

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// A server's certificate chain and private key, ready to accept TLS connections.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls")
    }
}

/// The crypto every ferry TLS endpoint uses, chosen explicitly so that no process-wide default
/// is needed (and none installed by another crate can change it).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file, naming it in the error.
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the TLS {what} {}: {e}", path.display()))
}

/// Every certificate of a PEM file; an error names the file if it holds none or is malformed.
pub fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS {what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the TLS {what} {} holds no certificate (expected a `-----BEGIN CERTIFICATE-----` block)",
            path.display()
        ));
    }
    Ok(certs)
}

impl ServerTls {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or
    /// SEC1); every error names the file at fault.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        let chain = certificates(cert, "certificate")?;
        let key_pem = read_pem(key, "key")?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => format!(
                "the TLS key {} holds no private key (expected a PEM `PRIVATE KEY` block)",
                key.display()
            ),
            e => format!("the TLS key {} is not valid PEM: {e}", key.display()),
        })?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| {
                format!(
                    "the TLS key {} does not fit the certificate {}: {e}",
                    key.display(),
                    cert.display()
                )
            })?;
        Ok(ServerTls {
            config: Arc::new(config),
        })
    }

    /// An acceptor that offers `alpn` (e.g. `http/1.1`); empty offers none.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}
