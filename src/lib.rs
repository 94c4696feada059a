//! ferry: run commands and move files on a machine through three transports that share one core.
//!
//! ```text
//!  raw TCP :8888 ──┐
//!  HTTP REST ──────┤   transports: decode, authenticate, call core, encode
//!  WS /term ───────┘
//!                   │
//!                   ▼
//!    core: Exec · Files (+ MD5) · Registry (sessions, transfers, checks) · Audit (SQLite) · Auth
//! ```
// Deny, not forbid: core::sandbox sets resource limits in a pre_exec closure, the one place
// that needs unsafe (and says why there).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod http;
pub mod legacy;
pub mod listen;
pub mod memory;
pub mod server;
pub mod tcp;
pub mod tls;
