//! What every fault test shares: raw frames and HTTP requests, figures, sizes, /proc.

use crate::common::TOKEN;
use md5::{Digest, Md5};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Safety net for every single wait.
pub const WAIT: Duration = Duration::from_secs(20);

pub use crate::common::raw::{DATA, ERROR, HELLO, REQUEST, STDOUT, WELCOME, frame, json_frame};

/// How many of a fault to inject: `FERRY_SOAK_<NAME>` if set (bench/soak sets it), else `short`.
pub fn scale(name: &str, short: usize) -> usize {
    std::env::var(format!("FERRY_SOAK_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(short)
}

/// Prints one row of figures for bench/soak to collect (shown with `--nocapture`).
pub fn figure(fault: &str, count: usize, bad: usize, goal: usize, note: &str) {
    println!("FIGURE|{fault}|{count}|{bad}|{goal}|{note}");
}

/// A small deterministic generator (xorshift); the seed is printed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(name: &str) -> Rng {
        let seed = std::env::var("FERRY_SOAK_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("{name}: seed {seed} (FERRY_SOAK_SEED replays it)");
        Rng(seed | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

pub fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

pub fn hello_frame(token: &str) -> Vec<u8> {
    json_frame(
        HELLO,
        0,
        &json!({"version": 1, "token": token, "client": "faults"}),
    )
}

/// Reads one frame (kind, stream, payload); None at end of stream or on a reset.
pub async fn read_frame(s: &mut TcpStream) -> Option<(u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
    let mut payload = vec![0; len.checked_sub(5)?];
    s.read_exact(&mut payload).await.ok()?;
    Some((
        head[4],
        u32::from_be_bytes(head[5..9].try_into().unwrap()),
        payload,
    ))
}

/// Connects and says hello; returns the socket after its welcome.
pub async fn hello(addr: &str, token: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(&hello_frame(token)).await?;
    match tokio::time::timeout(WAIT, read_frame(&mut s)).await {
        Ok(Some((WELCOME, _, _))) => Ok(s),
        other => Err(std::io::Error::other(format!("no welcome: {other:?}"))),
    }
}

/// The bytes of an HTTP/1.1 request with a body of `body_len` bytes (body not included).
pub fn http_head(method: &str, path: &str, body_len: usize, extra: &[(&str, String)]) -> Vec<u8> {
    let mut h =
        format!("{method} {path} HTTP/1.1\r\nHost: ferry\r\nContent-Length: {body_len}\r\n");
    if !extra.iter().any(|(k, _)| *k == "Authorization") {
        h.push_str(&format!("Authorization: Bearer {TOKEN}\r\n"));
    }
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Fields of /proc/PID/stat after the command name: (state, ppid, pgrp).
pub fn proc_stat(pid: u32) -> Option<(char, u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = s.rsplit_once(')')?.1.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Every process id in /proc.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Resident memory of a process, in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}
