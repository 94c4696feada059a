//! The `ferry` binary: parse the command line, then serve or act as a client.

use clap::Parser;
use ferry::cli::{Cli, Command};
use ferry::config::ServeArgs;
use tokio_util::sync::CancellationToken;

/// The server's runtime: one async worker per core but one (at least one). The core left over
/// runs what ferry does off the workers (the disk thread, the MD5 of uploads, the audit store's
/// SQLite thread, terminal readers) and, on a small machine, the clients beside it: on 2 cores
/// a second worker only contended with them, and the 1 KiB load ran 10% faster with one.
/// `TOKIO_WORKER_THREADS` sets another number.
fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        b.worker_threads(cores.saturating_sub(1).max(1));
    }
    b.build()
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    ferry::memory::keep_while_busy();
    // A client drives one connection: one thread does it (with the blocking pool beside it for
    // disk and MD5), and starts faster than a pool of workers.
    let rt = match cli.command {
        Command::Serve(_) => {
            ferry::memory::small_from_mimalloc();
            server_runtime()
        }
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    let code = match cli.command {
        Command::Serve(args) => rt.block_on(serve(args)).map(|_| 0),
        cmd => rt.block_on(ferry::cli::run_client(cmd)),
    };
    // The work is done: do not wait for a blocking read of stdin that may never end.
    rt.shutdown_background();
    match code {
        Ok(c) => std::process::ExitCode::from(c.clamp(0, 255) as u8),
        Err(e) => {
            ferry::cli::say(format_args!("ferry: {e:#}"));
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    std::fs::create_dir_all(&args.data_dir)?;
    let (cfg, generated) = args.to_config()?;
    let cfg_access = cfg.core.access.clone();
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let tcp = tokio::net::TcpListener::bind(args.tcp_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.tcp_addr))?;
    let http = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.http_addr))?;
    let shutdown = CancellationToken::new();
    let running = ferry::server::start(
        cfg,
        ferry::server::Listeners { tcp, http },
        shutdown.clone(),
    )
    .await?;
    println!(
        "ferry {} serving {}",
        env!("CARGO_PKG_VERSION"),
        running.core.files.root_path().display()
    );
    println!("tcp  {}", running.tcp_addr);
    println!("http {scheme}://{}", running.http_addr);
    if args.legacy {
        let nets: Vec<String> = args.legacy_allow.iter().map(|n| n.to_string()).collect();
        println!(
            "legacy line protocol on {}, from loopback{}",
            running.tcp_addr,
            if nets.is_empty() {
                String::new()
            } else {
                format!(" and {}", nets.join(", "))
            }
        );
    }
    if let Some(cert) = &args.tls_cert {
        println!("tls  both listeners, certificate {}", cert.display());
    }
    if let Some(path) = &args.config {
        let access = &cfg_access;
        println!(
            "auth {} token(s) from {}{}",
            access.tokens.len(),
            path.display(),
            if access.public_read {
                ", public read"
            } else {
                ""
            }
        );
    } else if args.public_read {
        println!("auth public read: anyone may download files");
    }
    if let Some(token) = generated {
        println!(
            "token {token}\n      (generated once and kept in {}; clients read it from FERRY_TOKEN or --token)",
            args.data_dir.join(ferry::core::auth::TOKEN_FILE).display()
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    wait_for_signal().await;
    shutdown.cancel();
    running.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
