//! Bad input on the terminal WebSocket `/term/ws`: origins, tokens, an oversized message,
//! control JSON in a binary message and out-of-range resizes. The expected answers are listed
//! in docs/security.md ("Bad-input suite").

mod bad;
mod common;

use bad::WAIT;
use common::{TOKEN, TestServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `/term/ws{query}` with `auth` as the Authorization value and `origin`, if given.
async fn open(
    s: &TestServer,
    query: &str,
    auth: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, WsError> {
    let url = s
        .url(&format!("/term/ws{query}"))
        .replace("http://", "ws://");
    let mut req = url.into_client_request().unwrap();
    if let Some(a) = auth {
        req.headers_mut()
            .insert("authorization", a.parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    // The client may send more than the server takes: the limit under test is the server's.
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(8 << 20))
        .max_frame_size(Some(8 << 20));
    tokio_tungstenite::connect_async_with_config(req, Some(cfg), false)
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status and error code of a refused upgrade.
fn refusal(e: WsError) -> (u16, String) {
    let WsError::Http(resp) = e else {
        panic!("expected an HTTP refusal, got {e}")
    };
    let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
        .expect("a JSON error body");
    let code = body["error"]["code"].as_str().unwrap().to_string();
    (resp.status().as_u16(), code)
}

/// A shell on the terminal, with what it printed so far.
struct Shell {
    ws: Ws,
    out: Vec<u8>,
    controls: Vec<Value>,
}

impl Shell {
    async fn open(s: &TestServer) -> Shell {
        let ws = open(s, "", Some(&format!("Bearer {TOKEN}")), None)
            .await
            .expect("terminal opens");
        let mut sh = Shell {
            ws,
            out: Vec::new(),
            controls: Vec::new(),
        };
        sh.read_one().await;
        assert_eq!(sh.controls[0]["type"], "session", "{:?}", sh.controls);
        sh
    }

    /// Reads one message; false once the socket has closed.
    async fn read_one(&mut self) -> bool {
        let msg = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("the terminal said nothing for 10 s");
        match msg {
            Some(Ok(Message::Binary(b))) => self.out.extend_from_slice(&b),
            Some(Ok(Message::Text(t))) => self.controls.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(c))) => {
                self.controls
                    .push(json!({"type": "close-frame", "code": c.map(|c| u16::from(c.code))}));
                return false;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return false,
        }
        true
    }

    /// Reads until the output contains `text`.
    async fn until(&mut self, text: &str) {
        while !String::from_utf8_lossy(&self.out).contains(text) {
            assert!(
                self.read_one().await,
                "closed before {text:?}: {}",
                String::from_utf8_lossy(&self.out)
            );
        }
    }

    /// Reads until the `n`-th control message of type `kind` has arrived; returns it.
    async fn control(&mut self, kind: &str, n: usize) -> Value {
        loop {
            let seen: Vec<&Value> = self.controls.iter().filter(|c| c["type"] == kind).collect();
            if seen.len() >= n {
                return seen[n - 1].clone();
            }
            assert!(
                self.read_one().await,
                "closed before {kind}: {:?}",
                self.controls
            );
        }
    }

    async fn send(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Types a line and reads until its marker `echo` prints (computed, so not the echo).
    async fn marker(&mut self, cmd: &str, n: u32) -> String {
        self.send(Message::Binary(
            format!("{cmd}; echo mark$((1000+{n}))\r")
                .into_bytes()
                .into(),
        ))
        .await;
        self.until(&format!("mark{}", 1000 + n)).await;
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

/// Origins at the upgrade: none (a non-browser client) passes with the token; another site,
/// `null` and another port of the same host are 403 `forbidden_origin`, and open no shell.
#[tokio::test(flavor = "multi_thread")]
async fn origins_at_the_upgrade() {
    let s = TestServer::start().await;
    let auth = format!("Bearer {TOKEN}");
    let ws = open(&s, "", Some(&auth), None).await;
    assert!(ws.is_ok(), "no Origin with a bearer token opens a terminal");
    drop(ws);
    let own_port = s.http.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let other_port = format!("http://127.0.0.1:{}", own_port.wrapping_add(1));
    for origin in [
        "https://evil.example",
        "null",
        &other_port,
        "file://",
        "http://127.0.0.1.evil.example",
    ] {
        let e = open(&s, "", Some(&auth), Some(origin)).await.unwrap_err();
        assert_eq!(refusal(e), (403, "forbidden_origin".into()), "{origin}");
    }
    let terminals = s
        .core
        .registry
        .sessions()
        .iter()
        .filter(|x| x.transport == "ws")
        .count();
    assert_eq!(terminals, 1, "only the allowed upgrade started a shell");
    s.stop().await;
}

/// Tokens at the upgrade: missing, empty, wrong, shorter, longer, another scheme, or only in the
/// query string: 401 `unauthorized`, and no shell starts.
#[tokio::test(flavor = "multi_thread")]
async fn the_upgrade_needs_the_bearer_token() {
    let s = TestServer::start().await;
    let short = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let long = format!("Bearer {TOKEN}{TOKEN}");
    let basic = format!("Basic {TOKEN}");
    for (query, auth) in [
        (String::new(), None),
        (String::new(), Some("Bearer ")),
        (String::new(), Some("Bearer wrong")),
        (String::new(), Some(short.as_str())),
        (String::new(), Some(long.as_str())),
        (String::new(), Some(basic.as_str())),
        (format!("?token={TOKEN}"), None),
        (format!("?access_token={TOKEN}"), None),
    ] {
        let e = open(&s, &query, auth, None).await.unwrap_err();
        assert_eq!(refusal(e), (401, "unauthorized".into()), "{query} {auth:?}");
    }
    assert!(
        s.core.registry.sessions().is_empty(),
        "{:?}",
        s.core.registry.sessions()
    );
    s.stop().await;
}

/// A message over 1 MiB closes the socket with 1009 (message too big); the shell stays
/// resumable and the server serves new terminals.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_is_closed_with_1009() {
    let s = TestServer::start().await;
    let mut sh = Shell::open(&s).await;
    // The server may close while the message is still being written: the write can fail.
    let _ = sh
        .ws
        .send(Message::Binary(vec![b'x'; (1 << 20) + 1].into()))
        .await;
    while sh.read_one().await {}
    let close = sh.controls.last().unwrap().clone();
    assert_eq!(
        close,
        json!({"type": "close-frame", "code": 1009}),
        "{:?}",
        sh.controls
    );
    let mut again = Shell::open(&s).await;
    again.marker("true", 1).await;
    s.stop().await;
}

/// A control message sent as a binary message is keystrokes (docs/protocol.md 10.2: binary
/// messages carry raw terminal bytes): the shell reads it as typed text and the size stays.
#[tokio::test(flavor = "multi_thread")]
async fn control_json_in_a_binary_message_is_input() {
    let s = TestServer::start().await;
    let mut sh = Shell::open(&s).await;
    let resize = json!({"type": "resize", "cols": 50, "rows": 10}).to_string();
    sh.send(Message::Binary(resize.clone().into_bytes().into()))
        .await;
    // The shell echoes what was typed; then Ctrl-U drops the line.
    sh.until(r#""cols":50"#).await;
    sh.send(Message::Binary(b"\x15".to_vec().into())).await;
    let out = sh.marker("stty size", 1).await;
    assert!(out.contains("24 80"), "{out}");
    assert!(
        sh.controls.iter().all(|c| c["type"] != "error"),
        "{:?}",
        sh.controls
    );
    s.stop().await;
}

/// Resizes outside 1 to 1000 (0, 65535, 65536, -1, huge, not a number) each get an `error`
/// message `bad_request`; the session goes on at its size.
#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_resizes_are_refused() {
    let s = TestServer::start().await;
    let mut sh = Shell::open(&s).await;
    let bad = [
        json!({"type": "resize", "cols": 0, "rows": 24}),
        json!({"type": "resize", "cols": 65535, "rows": 24}),
        json!({"type": "resize", "cols": 65536, "rows": 24}),
        json!({"type": "resize", "cols": -1, "rows": 24}),
        json!({"type": "resize", "cols": 80, "rows": 0}),
        json!({"type": "resize", "cols": 80, "rows": 1001}),
        json!({"type": "resize", "cols": 1e300, "rows": 24}),
        json!({"type": "resize", "cols": u64::MAX, "rows": 24}),
        json!({"type": "resize", "cols": "80", "rows": 24}),
        json!({"type": "resize", "cols": 80}),
    ];
    for (i, m) in bad.iter().enumerate() {
        sh.send(Message::Text(m.to_string().into())).await;
        let err = sh.control("error", i + 1).await;
        assert_eq!(err["code"], "bad_request", "{m}: {err}");
        assert!(
            err["message"].as_str().is_some_and(|t| !t.is_empty()),
            "{err}"
        );
    }
    let out = sh.marker("stty size", 1).await;
    assert!(out.contains("24 80"), "{out}");
    // The limits themselves are accepted.
    sh.send(Message::Text(
        json!({"type": "resize", "cols": 1000, "rows": 1})
            .to_string()
            .into(),
    ))
    .await;
    let out = sh.marker("stty size", 2).await;
    assert!(out.contains("1 1000"), "{out}");
    s.stop().await;
}
