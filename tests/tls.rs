//! TLS on both listeners, with a self-signed certificate made at test time (rcgen): the CLI and
//! the library client over TCP+TLS, HTTPS with its checksum header and `Secure` cookies, a
//! `wss://` terminal, and plaintext or silent clients turned away without holding up others.

mod common;

use bytes::Bytes;
use common::*;
use ferry::client::ClientTls;
use ferry::tcp::codec::{Frame, FrameCodec, Kind};
use ferry::tcp::messages::{Hello, PROTOCOL_VERSION};
use ferry::tls::ServerTls;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::codec::FramedWrite;

/// The binary under test.
const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// The longest any single step may take before the test calls it hung (a safety net only).
const HANG: Duration = Duration::from_secs(30);

/// A self-signed certificate for `localhost` and `127.0.0.1`, as PEM files in a temp dir.
struct Pki {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

fn pki() -> Pki {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Pki {
        _dir: dir,
        cert,
        key,
    }
}

/// A test server whose both listeners speak TLS with `pki`'s certificate; `client()` trusts it.
async fn tls_server(pki: &Pki, tweak: impl FnOnce(&mut ferry::server::ServerConfig)) -> TestServer {
    let tls = ServerTls::from_pem_files(&pki.cert, &pki.key).unwrap();
    let mut s = TestServer::start_with(|cfg| {
        cfg.tls = Some(tls);
        tweak(cfg);
    })
    .await;
    s.client_tls = Some(ClientTls::with_ca_file(&pki.cert).unwrap());
    s
}

/// `host:port` of the HTTPS listener.
fn http_addr(s: &TestServer) -> &str {
    s.http.trim_start_matches("https://")
}

/// A TLS connection to `addr` that trusts only `pki`'s certificate (offering HTTP/1.1).
async fn tls_connect(pki: &Pki, addr: &str) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&pki.cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(ferry::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let sock = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, sock)
        .await
        .expect("TLS handshake with the test server")
}

/// One HTTPS request on a fresh connection: status, headers and the whole body.
async fn https(
    s: &TestServer,
    pki: &Pki,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, HeaderMap, Bytes) {
    let stream = tls_connect(pki, http_addr(s)).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", http_addr(s));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let resp = tokio::time::timeout(HANG, send.send_request(req))
        .await
        .expect("HTTPS answer in time")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, bytes)
}

fn md5_hex(bytes: &[u8]) -> String {
    ferry::core::checksum::hash_reader(bytes).unwrap().0
}

/// What a finished `ferry` run left behind.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the `ferry` binary in `cwd` with no FERRY_* variable from outside but the test token.
async fn ferry(cwd: &Path, args: &[&str]) -> Out {
    let mut c = Command::new(FERRY);
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_") || k.starts_with("SSL_CERT") {
            c.env_remove(k);
        }
    }
    c.env("FERRY_TOKEN", TOKEN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(HANG, c.output())
        .await
        .expect("ferry hung")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_execs_and_moves_files_over_tls_with_its_ca() {
    let pki = pki();
    let s = tls_server(&pki, |_| {}).await;
    let cert = pki.cert.to_str().unwrap();
    let work = tempfile::tempdir().unwrap();

    let out = ferry(
        work.path(),
        &[
            "exec", "--addr", &s.addr, "--tls", "--ca", cert, "--", "echo", "over-tls",
        ],
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "over-tls\n"),
        "{}",
        out.stderr
    );

    let data = random_bytes(3 << 20, 7);
    std::fs::write(work.path().join("up.bin"), &data).unwrap();
    let want = md5_hex(&data);
    // The name `localhost` is in the certificate too, and --ca alone implies --tls.
    let by_name = s.addr.replace("127.0.0.1", "localhost");
    let out = ferry(
        work.path(),
        &[
            "put",
            "--addr",
            &by_name,
            "--ca",
            cert,
            "up.bin",
            "tls/up.bin",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(md5sum(&s.path("tls/up.bin")), want);

    let out = ferry(
        work.path(),
        &[
            "get",
            "--addr",
            &s.addr,
            "--tls",
            "--ca",
            cert,
            "tls/up.bin",
            "-o",
            "down.bin",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&want) || out.stderr.contains(&want),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(md5sum(&work.path().join("down.bin")), want);

    // A CLI that exits without a TLS close_notify has left, not failed.
    let ended = "transport = 'tcp' AND ended_at IS NOT NULL";
    let deadline = Instant::now() + HANG;
    while s.count("sessions", ended).await < 3 {
        assert!(Instant::now() < deadline, "the CLI sessions never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reasons = "transport = 'tcp' AND end_reason = 'closed by peer'";
    assert_eq!(s.count("sessions", reasons).await, 3);

    // The library client over TLS: several streams on one connection.
    let c = s.client().await;
    let (a, b) = tokio::join!(c.list("tls"), c.stat("tls/up.bin"));
    assert_eq!(a.unwrap().len(), 1);
    assert_eq!(b.unwrap().md5.as_deref(), Some(want.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_without_the_ca_refuses_a_self_signed_server_in_one_line() {
    let pki = pki();
    let s = tls_server(&pki, |_| {}).await;
    let work = tempfile::tempdir().unwrap();
    let out = ferry(
        work.path(),
        &["exec", "--addr", &s.addr, "--tls", "--", "touch", "ran"],
    )
    .await;
    assert_eq!(out.code, 255, "{} {}", out.stdout, out.stderr);
    let msg = out.stderr.trim();
    assert!(!msg.contains('\n') && !msg.contains("panicked"), "{msg}");
    assert!(msg.starts_with("ferry: TLS: the certificate of"), "{msg}");
    assert!(msg.contains("--ca FILE"), "{msg}");
    assert!(
        !s.path("ran").exists(),
        "the command ran without a trusted server"
    );

    // A CA file that is not PEM is named in the error.
    let bogus = work.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let out = ferry(
        work.path(),
        &[
            "exec",
            "--addr",
            &s.addr,
            "--ca",
            bogus.to_str().unwrap(),
            "--",
            "true",
        ],
    )
    .await;
    assert_eq!(out.code, 255);
    assert!(
        out.stderr.contains("bogus.pem") && out.stderr.contains("no certificate"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_half_or_unreadable_tls_flags_at_startup() {
    let pki = pki();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let key = pki.key.to_str().unwrap();
    let cert = pki.cert.to_str().unwrap();
    let out = serve_with(dir, &["--tls-cert", cert]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("--tls-key"), "{}", out.stderr);
    let out = serve_with(dir, &["--tls-cert", "missing.pem", "--tls-key", key]).await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("missing.pem") && out.stderr.contains("cannot read"),
        "{}",
        out.stderr
    );
    let out = serve_with(dir, &["--tls-cert", cert, "--tls-key", cert]).await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("holds no private key"),
        "{}",
        out.stderr
    );
}

/// `ferry serve` on free ports with `extra` flags, which must make it fail at startup.
async fn serve_with(dir: &Path, extra: &[&str]) -> Out {
    let mut args = vec![
        "serve",
        "--tcp-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    ferry(dir, &args).await
}

/// Reads until the peer closes (EOF or reset), at most `limit`; the bytes seen, or `None` on timeout.
async fn read_until_closed(sock: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_and_silent_clients_are_closed_without_holding_up_others() {
    let pki = pki();
    let s = tls_server(&pki, |cfg| {
        cfg.tcp.hello_timeout = Duration::from_secs(2);
        cfg.http.header_timeout = Duration::from_secs(2);
    })
    .await;

    // A plaintext client's hello is not TLS: the server closes at once, with at most an alert.
    let mut plain = TcpStream::connect(&s.addr).await.unwrap();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        token: Some(TOKEN.into()),
        client: None,
        window: None,
        max_frame: None,
    };
    let mut w = FramedWrite::new(&mut plain, FrameCodec::new(1 << 20));
    w.send(Frame::json(Kind::Hello, 0, &hello)).await.unwrap();
    drop(w);
    let seen = read_until_closed(&mut plain, Duration::from_secs(5)).await;
    let seen = seen.expect("a plaintext client is closed, not left hanging");
    assert!(
        seen.is_empty() || seen[0] == 0x15,
        "not a TLS alert: {seen:?}"
    );

    // Silent clients on both ports hold their connections, but not the accept loops.
    let started = Instant::now();
    let mut silent_tcp = TcpStream::connect(&s.addr).await.unwrap();
    let mut silent_http = TcpStream::connect(http_addr(&s)).await.unwrap();
    let c = s.client().await;
    let (_, _, end) = c
        .exec_collect(ferry::core::exec::ExecRequest {
            cmd: Some("true".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(end.exit_code, Some(0));
    let (status, _, _) = https(&s, &pki, "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "other clients waited for the silent ones"
    );
    for sock in [&mut silent_tcp, &mut silent_http] {
        let seen = read_until_closed(sock, Duration::from_secs(10)).await;
        assert_eq!(
            seen,
            Some(Vec::new()),
            "a silent client is dropped at the hello timeout"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(1900));
    // Only the real client's connections became sessions.
    assert_eq!(s.count("sessions", "transport = 'tcp'").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_checksums_and_secure_cookies_with_https_origins() {
    let pki = pki();
    let s = tls_server(&pki, |_| {}).await;
    let bearer = format!("Bearer {TOKEN}");
    let auth = ("authorization", bearer.as_str());

    let (status, _, body) = https(&s, &pki, "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("ok"));

    let data = random_bytes(1 << 20, 9);
    let (status, _, body) = https(&s, &pki, "PUT", "/files/web/data.bin", &[auth], &data).await;
    assert!((200..300).contains(&status), "{status} {body:?}");
    let (status, h, body) = https(&s, &pki, "GET", "/files/web/data.bin", &[auth], b"").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_ref(), &data[..]);
    assert_eq!(h["x-checksum-md5"].to_str().unwrap(), md5_hex(&data));

    let login = serde_json::json!({ "token": TOKEN }).to_string();
    let json = ("content-type", "application/json");
    let (status, h, _) = https(&s, &pki, "POST", "/login", &[json], login.as_bytes()).await;
    assert!(status < 400, "login: {status}");
    let set = h["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("; Secure"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();

    // With the cookie, a page of the https origin may delete; one of the http origin may not.
    let port = http_addr(&s).rsplit(':').next().unwrap();
    let http_page = format!("http://127.0.0.1:{port}");
    let https_page = format!("https://127.0.0.1:{port}");
    let path = "/files/web/data.bin";
    let from = |o: &str| [("cookie", cookie.clone()), ("origin", o.to_string())];
    let hs = from(&http_page);
    let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, body) = https(&s, &pki, "DELETE", path, &hs, b"").await;
    assert_eq!(status, 403, "{body:?}");
    assert!(s.path("web/data.bin").exists());
    let hs = from(&https_page);
    let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, body) = https(&s, &pki, "DELETE", path, &hs, b"").await;
    assert!((200..300).contains(&status), "{status} {body:?}");
    assert!(!s.path("web/data.bin").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn wss_terminal_accepts_the_https_origin_only() {
    let pki = pki();
    let s = tls_server(&pki, |_| {}).await;
    let addr = http_addr(&s).to_string();
    let open = |origin: String| {
        let (pki, addr) = (&pki, addr.clone());
        async move {
            let mut req = format!("wss://{addr}/term/ws")
                .into_client_request()
                .unwrap();
            let h = req.headers_mut();
            h.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            h.insert("origin", origin.parse().unwrap());
            let stream = tls_connect(pki, &addr).await;
            tokio_tungstenite::client_async(req, stream).await
        }
    };
    let port = addr.rsplit(':').next().unwrap();
    let refused = open(format!("http://127.0.0.1:{port}")).await;
    assert!(refused.is_err(), "an http page opened a terminal over TLS");

    let (mut ws, _) = open(format!("https://127.0.0.1:{port}"))
        .await
        .expect("wss opens");
    ws.send(Message::Binary(b"echo wss-$((6*7))\r".to_vec().into()))
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + HANG;
    while !String::from_utf8_lossy(&out).contains("wss-42") {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("terminal output in time")
            .expect("terminal still open")
            .unwrap();
        if let Message::Binary(b) = msg {
            out.extend_from_slice(&b);
        }
    }
}
