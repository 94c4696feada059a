//! A real ferry server for tests: port 0, a temp root, a temp database.
#![allow(dead_code)]

pub mod raw;

use ferry::client::Client;
use ferry::core::Core;
use ferry::server::{Listeners, Running, ServerConfig};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The token every test server accepts.
pub const TOKEN: &str = "test-token-0123456789";

/// A running server with its own root and data dir.
pub struct TestServer {
    /// The TCP address, `127.0.0.1:PORT`.
    pub addr: String,
    /// The HTTP base URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub http: String,
    /// What `client()` trusts when the server speaks TLS (set it after starting one).
    pub client_tls: Option<ferry::client::ClientTls>,
    /// The shared core, for reading the registry and the audit.
    pub core: Core,
    /// The served root.
    pub root: PathBuf,
    /// The data dir.
    pub data: PathBuf,
    shutdown: CancellationToken,
    running: Option<Running>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// The configuration a test server starts from.
pub fn config(root: PathBuf, data: PathBuf) -> ServerConfig {
    let mut cfg = ferry::config::ServeArgs {
        root,
        data_dir: data,
        tcp_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        max_body: 64 << 30,
        max_requests: 1024,
        request_timeout: 30,
        config: None,
        token: Some(TOKEN.to_string()),
        public_read: false,
        max_connections: 1024,
        max_frame: 1 << 20,
        exec_timeout: 60,
        max_output: 256 << 20,
        max_concurrent_execs: 64,
        hello_timeout: 10,
        idle_timeout: 300,
        shutdown_grace: 5,
        upload_expiry: 3600,
        term_grace: 300,
        term_idle: 3600,
        no_record: false,
        allow_origin: Vec::new(),
        legacy: false,
        legacy_allow: Vec::new(),
        legacy_ack_wait: 100,
        tls_cert: None,
        tls_key: None,
    }
    .to_config()
    .unwrap()
    .0;
    cfg.shutdown_grace = Duration::from_secs(5);
    // Tests send wrong tokens on purpose, many times: only tests of the limit keep its default.
    cfg.core.access.failure_burst = 1_000_000;
    // The test machine's rc files (slow to run) and history file stay out of terminal tests.
    cfg.core.term.shell = ["/bin/bash", "--norc", "--noprofile", "+o", "history"]
        .map(String::from)
        .to_vec();
    cfg
}

impl TestServer {
    /// Starts a server with default limits.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusts its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        // The server's allocator, as `ferry serve` switches it on.
        ferry::memory::small_from_mimalloc();
        let root = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut cfg = config(root.path().to_path_buf(), data.path().to_path_buf());
        tweak(&mut cfg);
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let running = ferry::server::start(cfg, Listeners { tcp, http }, shutdown.clone())
            .await
            .unwrap();
        TestServer {
            addr: running.tcp_addr.to_string(),
            http: format!("{scheme}://{}", running.http_addr),
            client_tls: None,
            core: running.core.clone(),
            root: root.path().canonicalize().unwrap(),
            data: data.path().to_path_buf(),
            shutdown,
            running: Some(running),
            _dirs: (root, data),
        }
    }

    /// The full URL of `path` on the HTTP plane.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// An HTTP client that sends the token on every request.
    pub fn web(&self) -> reqwest::Client {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {TOKEN}").parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    }

    /// A fresh authenticated client connection.
    pub async fn client(&self) -> Client {
        Client::connect_with(&self.addr, TOKEN, self.client_tls.as_ref())
            .await
            .unwrap()
    }

    /// The JSON answer of an authenticated `GET` of an API path.
    pub async fn api(&self, path: &str) -> serde_json::Value {
        self.web()
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A path under the served root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Names in the root that are `name` or an upload's temp file, sorted.
    pub fn leftovers(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n == name || n.contains(".ferry-tmp-"))
            .collect();
        v.sort();
        v
    }

    /// Waits until every audit row written so far is committed.
    pub async fn flush_audit(&self) {
        self.core.audit.flush().await;
    }

    /// Counts rows of an audit table matching a SQL condition.
    pub async fn count(&self, table: &str, cond: &str) -> i64 {
        self.flush_audit().await;
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {cond}");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(self.core.audit.pool())
            .await
            .unwrap()
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
    }

    /// The shutdown signal (to test graceful shutdown).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Takes the running handle (to wait for shutdown by hand).
    pub fn take_running(&mut self) -> Running {
        self.running.take().unwrap()
    }
}

/// One exchange of the legacy line protocol at `addr`: sends `cmd`, reads the length (digits
/// alone), acknowledges, reads the output. Returns the still open connection and the output.
pub async fn legacy_exchange(addr: &str, cmd: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(cmd.as_bytes()).await.unwrap();
    let mut head = [0u8; 32];
    let n = s.read(&mut head).await.unwrap();
    let len: usize = std::str::from_utf8(&head[..n]).unwrap().parse().unwrap();
    s.write_all(b"ok").await.unwrap();
    let mut out = vec![0u8; len];
    s.read_exact(&mut out).await.unwrap();
    (s, out)
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for 100 MB in a debug build.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The MD5 of a file as the system's `md5sum` prints it.
pub fn md5sum(path: &std::path::Path) -> String {
    let out = std::process::Command::new("md5sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "md5sum failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Whether a process is gone (or a zombie waiting for its reaper).
pub fn process_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .map(|r| r.trim_start().starts_with('Z'))
            .unwrap_or(true),
    }
}

/// Waits until a process has terminated (its pidfd polls readable), at most 5 s; true if it did.
pub async fn wait_dead(pid: i32) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    let Some(p) = Pid::from_raw(pid) else {
        return true;
    };
    let Ok(fd) = pidfd_open(p, PidfdFlags::empty()) else {
        return true; // no such process
    };
    tokio::task::spawn_blocking(move || {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let limit = Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&limit)), Ok(n) if n > 0) || process_dead(pid)
    })
    .await
    .unwrap()
}
