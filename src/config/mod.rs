//! `ferry serve` settings: flags, each also read from `FERRY_<NAME>`, and the config file.

pub mod file;

use crate::core::CoreConfig;
use crate::core::auth::{AccessConfig, Role, TokenEntry, load_or_create_token, token_digest};
use crate::core::exec::ExecLimits;
use crate::core::term::TermConfig;
use crate::http::HttpConfig;
use crate::legacy::LegacyConfig;
use crate::server::ServerConfig;
use crate::tcp::TcpConfig;
use crate::tls::ServerTls;
use clap::Args;
use file::ConfigFile;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `ferry serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory of the served files (created if missing).
    #[arg(long, env = "FERRY_ROOT", default_value = "ferry-root")]
    pub root: PathBuf,
    /// Directory for the SQLite database and the generated token.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "ferry-data")]
    pub data_dir: PathBuf,
    /// Address of the raw TCP protocol (port 0 picks a free port).
    #[arg(long, env = "FERRY_TCP_ADDR", default_value = "127.0.0.1:8888")]
    pub tcp_addr: SocketAddr,
    /// Address of the HTTP API, file downloads and uploads (port 0 picks a free port).
    #[arg(long, env = "FERRY_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Config file of tokens (by hash) with roles; see docs/ferry.example.toml.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Admin access token; without one (and without --config), a token is generated once and
    /// kept in the data dir.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Let requests without a token download files (nothing else).
    #[arg(long, env = "FERRY_PUBLIC_READ")]
    pub public_read: bool,
    /// Most TCP connections at once.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Largest frame accepted, in bytes (K, M suffixes; 64K to 8M).
    #[arg(long, env = "FERRY_MAX_FRAME", default_value = "1M", value_parser = parse_size)]
    pub max_frame: u64,
    /// Largest HTTP request body, uploads included (K, M, G suffixes).
    #[arg(long, env = "FERRY_MAX_BODY", default_value = "64G", value_parser = parse_size)]
    pub max_body: u64,
    /// Most HTTP requests handled at once; more are answered 503 `busy` at once.
    #[arg(long, env = "FERRY_MAX_REQUESTS", default_value_t = 1024)]
    pub max_requests: usize,
    /// Seconds an HTTP API request may take (file transfers, exec and event streams excepted).
    #[arg(long, env = "FERRY_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,
    /// Longest run time of a command, in seconds (a request may ask for less).
    #[arg(long, env = "FERRY_EXEC_TIMEOUT", default_value_t = 600)]
    pub exec_timeout: u64,
    /// Most output (stdout + stderr) of one command before it is cut and killed (K, M, G suffixes).
    #[arg(long, env = "FERRY_MAX_OUTPUT", default_value = "256M", value_parser = parse_size)]
    pub max_output: u64,
    /// Most commands running at once; more wait up to 10 s, then get `busy`.
    #[arg(long, env = "FERRY_MAX_CONCURRENT_EXECS", default_value_t = 64)]
    pub max_concurrent_execs: usize,
    /// Seconds a new connection has to send its hello (TCP) or its request headers (HTTP).
    #[arg(long, env = "FERRY_HELLO_TIMEOUT", default_value_t = 10)]
    pub hello_timeout: u64,
    /// Seconds a connection may stay idle (TCP: no frame and nothing running; HTTP: between
    /// requests, capped by --hello-timeout) before it is closed.
    #[arg(long, env = "FERRY_IDLE_TIMEOUT", default_value_t = 300)]
    pub idle_timeout: u64,
    /// Seconds transfers may go on after SIGINT/SIGTERM.
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Seconds a resumable upload may stay idle before it is dropped with its temp file.
    #[arg(long, env = "FERRY_UPLOAD_EXPIRY", default_value_t = 3600)]
    pub upload_expiry: u64,
    /// Seconds a terminal's shell lives on after its browser tab or network is gone (to resume).
    #[arg(long, env = "FERRY_TERM_GRACE", default_value_t = 300)]
    pub term_grace: u64,
    /// Seconds a terminal session may see no input, output or client before it is ended.
    #[arg(long, env = "FERRY_TERM_IDLE", default_value_t = 3600)]
    pub term_idle: u64,
    /// Do not record terminal sessions (recorded by default, as asciicast in <data-dir>/recordings).
    #[arg(long, env = "FERRY_NO_RECORD")]
    pub no_record: bool,
    /// Origins (scheme://host[:port]) whose pages may open a terminal besides the server's own;
    /// repeatable or comma-separated, `*` allows any.
    #[arg(long, env = "FERRY_ALLOW_ORIGIN", value_delimiter = ',')]
    pub allow_origin: Vec<String>,
    /// Also accept the legacy line protocol on the TCP port: classic command and file clients,
    /// which carry no token, from loopback and --legacy-allow networks only.
    #[arg(long, env = "FERRY_LEGACY")]
    pub legacy: bool,
    /// Networks (CIDR, such as 10.0.0.0/8) whose legacy clients are accepted besides loopback;
    /// repeatable or comma-separated.
    #[arg(
        long,
        env = "FERRY_LEGACY_ALLOW",
        value_delimiter = ',',
        value_name = "CIDR",
        requires = "legacy"
    )]
    pub legacy_allow: Vec<ipnet::IpNet>,
    /// Milliseconds to wait for a legacy client's acknowledgement before sending the data
    /// anyway (raise it for clients on slow links).
    #[arg(
        long,
        env = "FERRY_LEGACY_ACK_WAIT",
        default_value_t = 100,
        requires = "legacy"
    )]
    pub legacy_ack_wait: u64,
    /// PEM certificate chain (leaf first): with --tls-key, both listeners speak TLS only.
    #[arg(
        long,
        env = "FERRY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "FERRY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

/// Parses `123`, `64K`, `1M`, `2G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix in {s:?}; use K, M or G")),
            };
            (&s[..i], mul)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl ServeArgs {
    /// Who may connect: the config file's tokens (plus `--token`, as an admin), or else one
    /// admin token (`--token`, or the one kept in the data dir, generated at first start).
    /// The second value is a token to print, when one was just generated.
    pub fn access(
        &self,
        file: Option<&ConfigFile>,
    ) -> anyhow::Result<(AccessConfig, Option<String>)> {
        let (Some(path), Some(file)) = (&self.config, file) else {
            let (token, generated) = load_or_create_token(self.token.as_deref(), &self.data_dir)?;
            let mut access = AccessConfig::single_admin(&token);
            access.public_read = self.public_read;
            return Ok((access, generated.then_some(token)));
        };
        let mut access = file.access()?;
        access.public_read |= self.public_read;
        if let Some(t) = &self.token {
            anyhow::ensure!(!t.trim().is_empty(), "--token must not be empty");
            // Sessions are shown to the token of the same name: no config token may share it.
            anyhow::ensure!(
                !access.tokens.iter().any(|e| &*e.name == "admin"),
                "{}: a token is named admin, the name of --token's; rename it or drop --token",
                path.display()
            );
            access.tokens.push(TokenEntry {
                name: "admin".into(),
                role: Role::Admin,
                digest: token_digest(t),
            });
        }
        anyhow::ensure!(
            !access.tokens.is_empty() || access.public_read,
            "{} lists no [tokens]: add one with `ferry token new --role admin`",
            path.display()
        );
        Ok((access, None))
    }

    /// The server configuration for these flags; also a token to print, when one was just
    /// generated.
    pub fn to_config(&self) -> anyhow::Result<(ServerConfig, Option<String>)> {
        let file = match &self.config {
            Some(path) => Some(ConfigFile::load(path)?),
            None => None,
        };
        let (access, generated) = self.access(file.as_ref())?;
        anyhow::ensure!(
            (64 * 1024..=8 * 1024 * 1024).contains(&self.max_frame),
            "--max-frame must be between 64K and 8M"
        );
        anyhow::ensure!(self.exec_timeout > 0, "--exec-timeout must be positive");
        anyhow::ensure!(self.upload_expiry > 0, "--upload-expiry must be positive");
        anyhow::ensure!(self.term_idle > 0, "--term-idle must be positive");
        anyhow::ensure!(self.idle_timeout > 0, "--idle-timeout must be positive");
        anyhow::ensure!(
            !(self.legacy && self.tls_cert.is_some()),
            "--legacy and --tls-cert do not go together: legacy clients speak plain text, and \
             with TLS the TCP port is TLS only"
        );
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Some(ServerTls::from_pem_files(cert, key).map_err(anyhow::Error::msg)?)
            }
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together: give both, or neither"),
        };
        let cfg = ServerConfig {
            core: CoreConfig {
                root: self.root.clone(),
                data_dir: self.data_dir.clone(),
                access,
                exec: ExecLimits {
                    timeout: Duration::from_secs(self.exec_timeout),
                    max_output: self.max_output,
                    max_concurrent: self.max_concurrent_execs,
                    sandbox: file.and_then(|f| f.exec).unwrap_or_default(),
                },
                upload_expiry: Duration::from_secs(self.upload_expiry),
                max_upload: self.max_body,
                term: TermConfig {
                    grace: Duration::from_secs(self.term_grace),
                    idle: Duration::from_secs(self.term_idle),
                    record: !self.no_record,
                    ..TermConfig::default()
                },
            },
            tcp: TcpConfig {
                max_connections: self.max_connections,
                max_frame: self.max_frame as usize,
                hello_timeout: Duration::from_secs(self.hello_timeout),
                idle_timeout: Duration::from_secs(self.idle_timeout),
                legacy: self.legacy.then(|| {
                    std::sync::Arc::new(LegacyConfig {
                        allow: self.legacy_allow.clone(),
                        ack_wait: Duration::from_millis(self.legacy_ack_wait.max(1)),
                        idle_timeout: Duration::from_secs(self.idle_timeout),
                        ..LegacyConfig::default()
                    })
                }),
                ..TcpConfig::default()
            },
            http: HttpConfig {
                max_body: self.max_body,
                max_requests: self.max_requests,
                request_timeout: Duration::from_secs(self.request_timeout.max(1)),
                header_timeout: Duration::from_secs(self.hello_timeout),
                idle_timeout: Duration::from_secs(self.idle_timeout),
                max_connections: self.max_connections,
                // Over plain HTTP a cookie marked Secure would never come back.
                secure_cookies: tls.is_some(),
                allowed_origins: self.allow_origin.clone(),
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            tls,
        };
        Ok((cfg, generated))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("17"), Ok(17));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
    }
}
