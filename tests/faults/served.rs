//! `ferry serve` as a real child process, as an operator runs it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// The token of the spawned servers.
pub const SERVE_TOKEN: &str = "fault-token-0123456789";

pub struct Served {
    pub child: Child,
    pub pid: u32,
    /// The TCP address.
    pub tcp: String,
    /// The HTTP address, host:port.
    pub http: String,
    log: tokio::task::JoinHandle<String>,
}

impl Served {
    /// Starts `ferry serve` on free ports with `root`, `data` and more flags; waits for its
    /// addresses.
    pub async fn start(root: &Path, data: &Path, flags: &[&str]) -> Served {
        let mut c = Command::new(FERRY);
        for (k, _) in std::env::vars() {
            if k.starts_with("FERRY_") {
                c.env_remove(k);
            }
        }
        c.env("FERRY_TOKEN", SERVE_TOKEN)
            .args([
                "serve",
                "--tcp-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .arg("--root")
            .arg(root)
            .arg("--data-dir")
            .arg(data)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().expect("spawn ferry serve");
        let pid = child.id().unwrap();
        let mut err = child.stderr.take().unwrap();
        // Drain the log so a full pipe never stalls the server.
        let log = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut tcp, mut http) = (None, None);
        while tcp.is_none() || http.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("ferry serve printed no addresses")
                .unwrap()
                .expect("ferry serve ended before printing its addresses");
            if let Some(a) = line.strip_prefix("tcp ") {
                tcp = Some(a.trim().to_string());
            } else if let Some(a) = line.strip_prefix("http http://") {
                http = Some(a.trim().to_string());
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Served {
            child,
            pid,
            tcp: tcp.unwrap(),
            http: http.unwrap(),
            log,
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
    }

    /// Waits at most `limit` for the exit; returns its code (None: killed or still running)
    /// and the log.
    pub async fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let code = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(s) => s.unwrap().code(),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        };
        (code, self.log.await.unwrap_or_default())
    }
}
