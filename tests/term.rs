//! The browser terminal: a real server, a real PTY, a tokio-tungstenite client.

mod common;

use common::{TOKEN, TestServer, wait_dead};
use ferry::core::term::{RING_BYTES, WINDOW};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `/term/ws{query}` with the token (unless `token` is false) and an optional Origin.
async fn open(
    srv: &TestServer,
    query: &str,
    token: bool,
    origin: Option<&str>,
) -> Result<Ws, WsError> {
    let url = srv
        .url(&format!("/term/ws{query}"))
        .replace("http://", "ws://");
    let mut req = url.into_client_request().unwrap();
    if token {
        let bearer = format!("Bearer {TOKEN}").parse().unwrap();
        req.headers_mut().insert("authorization", bearer);
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// A terminal client: what it saw, in order.
struct Term {
    ws: Ws,
    id: String,
    /// The sequence number of the next output byte.
    seq: u64,
    out: Vec<u8>,
    controls: Vec<Value>,
    closed: bool,
}

impl Term {
    async fn connect(srv: &TestServer, query: &str) -> Term {
        let ws = open(srv, query, true, None).await.expect("terminal opens");
        let mut t = Term {
            ws,
            id: String::new(),
            seq: 0,
            out: Vec::new(),
            controls: Vec::new(),
            closed: false,
        };
        let hello = t.control("session").await;
        t.id = hello["id"].as_str().unwrap().to_string();
        t.seq = hello["seq"].as_u64().unwrap();
        t
    }

    /// Reads one message (5 s at most); false once the socket is closed.
    async fn read_one(&mut self) -> bool {
        let msg = timeout(Duration::from_secs(5), self.ws.next())
            .await
            .expect("terminal output within 5 s");
        match msg {
            Some(Ok(Message::Binary(b))) => {
                self.seq += b.len() as u64;
                self.out.extend_from_slice(&b);
            }
            Some(Ok(Message::Text(t))) => self.controls.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                self.closed = true;
                return false;
            }
            Some(Ok(_)) => {}
        }
        true
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }

    /// Reads until the output contains `needle`.
    async fn until(&mut self, needle: &str) {
        while !self.text().contains(needle) {
            assert!(
                self.read_one().await,
                "closed before {needle:?}: {}",
                self.text()
            );
        }
    }

    /// Reads until a control message of `kind` arrives, and returns it.
    async fn control(&mut self, kind: &str) -> Value {
        loop {
            if let Some(i) = self.controls.iter().position(|c| c["type"] == kind) {
                return self.controls.remove(i);
            }
            assert!(self.read_one().await, "closed before a {kind} message");
        }
    }

    async fn type_line(&mut self, line: &str) {
        let bytes = format!("{line}\r").into_bytes();
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }
}

/// Polls `cond` until it holds, for at most `secs` seconds.
async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_echoes_resizes_and_exits_with_its_code_recorded() {
    let srv = TestServer::start().await;
    let mut t = Term::connect(&srv, "?cols=100&rows=30").await;
    assert_eq!(t.seq, 0);
    // The output, not the echoed command line.
    t.type_line("echo hi$((40+2))").await;
    t.until("hi42").await;
    t.type_line("pwd").await;
    t.until(srv.root.to_str().unwrap()).await;
    t.type_line("echo \"[$TERM]\" \"[${FERRY_SECRET-unset}]\"")
        .await;
    t.until("[xterm-256color] [unset]").await;

    t.send_json(serde_json::json!({"type": "resize", "cols": 77, "rows": 33}))
        .await;
    t.type_line("stty size").await;
    t.until("33 77").await;
    // A bad size is refused without ending the session.
    t.send_json(serde_json::json!({"type": "resize", "cols": 0, "rows": 1001}))
        .await;
    let err = t.control("error").await;
    assert_eq!(err["code"], "bad_request");
    t.send_json(serde_json::json!({"type": "dance"})).await;
    assert_eq!(t.control("error").await["code"], "bad_request");

    // The session is listed with transport ws.
    let sessions: Value = srv
        .web()
        .get(srv.url("/api/v1/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == t.id.as_str())
        .expect("terminal session listed");
    assert_eq!(listed["transport"], "ws");

    t.type_line("exit 7").await;
    let exit = t.control("exit").await;
    assert_eq!(exit["code"], 7);
    while t.read_one().await {}
    assert!(t.closed);
    assert!(
        eventually(5, || srv
            .core
            .registry
            .sessions()
            .iter()
            .all(|s| *s.id != *t.id))
        .await
    );

    // Recorded as asciicast v2, listed and served.
    let cast = srv.data.join(format!("recordings/{}.cast", t.id));
    let text = std::fs::read_to_string(&cast).unwrap();
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["version"].as_i64(), header["width"].as_i64()),
        (Some(2), Some(100))
    );
    assert!(text.contains("hi42"), "{text}");
    assert!(text.contains(r#""r","77x33""#), "{text}");
    let list: Value = srv
        .web()
        .get(srv.url("/api/v1/recordings"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["recordings"][0]["id"], t.id.as_str());
    assert_eq!(list["recordings"][0]["size"], text.len());
    let resp = srv
        .web()
        .get(srv.url(&format!("/api/v1/recordings/{}", t.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-asciicast");
    assert_eq!(resp.text().await.unwrap(), text);
    // The audit links the shell to its recording.
    let linked = format!(
        "id = '{}' AND command LIKE '%recordings/%' AND exit_code = 7",
        t.id
    );
    assert_eq!(srv.count("commands", &linked).await, 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_needs_the_token_and_a_same_origin_page() {
    let srv = TestServer::start().await;
    let status = |e: WsError| match e {
        WsError::Http(resp) => resp.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    };
    assert_eq!(status(open(&srv, "", false, None).await.unwrap_err()), 401);
    let e = open(&srv, "", true, Some("http://evil.example"))
        .await
        .unwrap_err();
    if let WsError::Http(resp) = &e {
        let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
        assert!(body.contains("forbidden_origin"), "{body}");
    }
    assert_eq!(status(e), 403);
    let own = srv.http.clone();
    let ws = open(&srv, "", true, Some(&own)).await;
    assert!(ws.is_ok(), "same-origin page may open a terminal");
    drop(ws);
    assert_eq!(
        status(open(&srv, "?cols=0", true, None).await.unwrap_err()),
        400
    );
    let gone = open(&srv, "?session=0123456789abcdef", true, None).await;
    assert_eq!(status(gone.unwrap_err()), 404);
    // A plain GET (no upgrade) says what it wants.
    let resp = srv.web().get(srv.url("/term/ws")).send().await.unwrap();
    assert_eq!(resp.status(), 426);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_origins_may_open_a_terminal() {
    let srv =
        TestServer::start_with(|c| c.http.allowed_origins = vec!["https://ui.example".into()])
            .await;
    assert!(
        open(&srv, "", true, Some("https://ui.example"))
            .await
            .is_ok()
    );
    assert!(
        open(&srv, "", true, Some("https://other.example"))
            .await
            .is_err()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnect_replays_exactly_the_missed_output() {
    let srv = TestServer::start().await;
    let mut t = Term::connect(&srv, "").await;
    t.type_line("echo a$((1+1))b").await;
    t.until("a2b").await;
    // Output written while nobody is connected.
    t.type_line("sleep 0.5; echo la$((2*3))ter").await;
    t.until("sleep 0.5").await;
    let (id, seen, before) = (t.id.clone(), t.seq, t.out.clone());
    drop(t);
    // While the client is away, the shell's output arrives.
    assert!(eventually(5, || srv.core.term.stats(&id).unwrap().produced > seen + 5).await);
    let mut t = Term::connect(&srv, &format!("?session={id}&seq={seen}")).await;
    assert_eq!((t.id.as_str(), t.seq), (id.as_str(), seen));
    t.out = before;
    t.until("la6ter").await;
    t.type_line("echo do$((1+1))ne").await;
    t.until("do2ne").await;
    assert_eq!(t.text().matches("la6ter").count(), 1, "{}", t.text());
    // Byte for byte what the shell wrote (the recording has it all).
    let produced = srv.core.term.stats(&id).unwrap().produced;
    while t.seq < produced {
        t.read_one().await;
    }
    assert!(t.controls.iter().all(|c| c["type"] != "lost"));
    assert_eq!(t.seq, t.out.len() as u64);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn output_that_left_the_buffer_is_reported_and_the_old_client_is_told() {
    let srv = TestServer::start().await;
    let mut t = Term::connect(&srv, "").await;
    t.type_line("head -c 1500000 /dev/zero | tr '\\0' x; echo; echo D$((1+1))NE")
        .await;
    t.until("D2NE").await;
    let mut again = Term::connect(&srv, &format!("?session={}&seq=0", t.id)).await;
    let lost = again.control("lost").await;
    assert_eq!(lost["from"], 0);
    let to = lost["to"].as_u64().unwrap();
    // The buffer held the last RING_BYTES of the output when the client attached.
    let produced = srv.core.term.stats(&t.id).unwrap().produced;
    let ring = RING_BYTES as u64;
    assert!(
        t.seq - ring <= to && to <= produced - ring,
        "{lost} after {} of {produced}",
        t.seq
    );
    assert_eq!(again.seq, to);
    again.until("D2NE").await;
    // The first client is told another one took the session over.
    assert_eq!(t.control("taken").await["type"], "taken");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_stops_the_shell_not_the_server() {
    let srv = TestServer::start().await;
    let mut t = Term::connect(&srv, "").await;
    t.type_line("yes flow-control-test").await;
    t.until("flow-control-test\r\nflow").await;
    // Stop reading: the socket buffers fill, then the server stops reading the PTY.
    let id = t.id.clone();
    let paused = eventually(20, || srv.core.term.stats(&id).is_some_and(|s| s.paused)).await;
    let s = srv.core.term.stats(&id).unwrap();
    assert!(paused, "the reader never paused: {s:?}");
    assert!(s.unsent <= WINDOW, "{s:?}");
    assert!(s.buffered <= RING_BYTES, "{s:?}");
    // Reading again lets the output flow on.
    let before = s.produced;
    for _ in 0..2000 {
        t.read_one().await;
    }
    assert!(eventually(5, || srv.core.term.stats(&id).unwrap().produced > before).await);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ending_a_session_kills_its_processes() {
    let srv = TestServer::start_with(|c| c.core.term.grace = Duration::from_millis(200)).await;
    // Exit: background jobs (process groups of their own) go with the shell.
    let mut t = Term::connect(&srv, "").await;
    t.type_line("sleep 300 & echo J$((6*7))J $!").await;
    t.until("J42J").await;
    let job = loop {
        let text = t.text();
        let after = text.split("J42J ").nth(1).unwrap_or("");
        if let Some((pid, _)) = after.split_once("\r\n") {
            break pid.trim().parse::<i32>().unwrap();
        }
        assert!(t.read_one().await);
    };
    t.type_line("exit").await;
    assert_eq!(t.control("exit").await["code"], 0);
    assert!(
        wait_dead(job).await,
        "background job {job} outlived its shell"
    );

    // A dropped client: the shell lives through the grace period, then dies.
    let t = Term::connect(&srv, "").await;
    let shell = srv.core.term.stats(&t.id).unwrap().pid.unwrap() as i32;
    drop(t);
    assert!(wait_dead(shell).await, "shell outlived the grace period");

    // Shutdown ends live terminals.
    let srv2 = TestServer::start().await;
    let t = Term::connect(&srv2, "").await;
    let shell = srv2.core.term.stats(&t.id).unwrap().pid.unwrap() as i32;
    srv2.stop().await;
    assert!(wait_dead(shell).await, "shell outlived the server");
    drop(t);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_ends_and_no_record_records_nothing() {
    let srv = TestServer::start_with(|c| {
        c.core.term.idle = Duration::from_millis(300);
        c.core.term.record = false;
    })
    .await;
    let mut t = Term::connect(&srv, "").await;
    let shell = srv.core.term.stats(&t.id).unwrap().pid.unwrap() as i32;
    // Nobody types and the shell prints nothing more: the idle timeout kills it.
    let exit = t.control("exit").await;
    assert_eq!(
        (exit["code"].is_null(), exit["signal"].as_i64()),
        (true, Some(9))
    );
    assert!(wait_dead(shell).await);
    assert!(!srv.data.join(format!("recordings/{}.cast", t.id)).exists());
    let ended = format!("id = '{}' AND end_reason = 'grace or idle timeout'", t.id);
    assert!(
        eventually(5, || srv
            .core
            .registry
            .sessions()
            .iter()
            .all(|s| *s.id != *t.id))
        .await
    );
    assert_eq!(srv.count("sessions", &ended).await, 1);
    srv.stop().await;
}

/// How far output may run past a client's last ack (the server's window, plus one read).
const ACK_BOUND: u64 = 512 * 1024 + 256 * 1024;

/// Acks the start, runs `yes`, and reads as fast as it can until the shell pauses: the
/// server then waits for an ack.
async fn fill_ack_window(srv: &TestServer, t: &mut Term) {
    let start = t.seq;
    t.send_json(json!({"type": "ack", "seq": start})).await;
    t.type_line("yes ack-window-test").await;
    let id = t.id.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let quiet = match timeout(Duration::from_millis(200), t.ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                t.seq += b.len() as u64;
                false
            }
            Ok(Some(Ok(_))) => false,
            Ok(_) => panic!("the terminal closed"),
            Err(_) => true,
        };
        assert!(
            t.seq - start <= ACK_BOUND,
            "output ran {} bytes past the last ack",
            t.seq - start
        );
        if quiet && srv.core.term.stats(&id).is_some_and(|s| s.paused) {
            return;
        }
        assert!(Instant::now() < deadline, "the shell never paused");
    }
}

/// A page that acknowledges what it has drawn (`{"type":"ack","seq":N}`) gets at most the
/// ack window ahead, however fast its socket is read: the shell waits, not the tab.
#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledging_client_is_never_flooded() {
    let srv = TestServer::start().await;
    let mut t = Term::connect(&srv, "").await;
    fill_ack_window(&srv, &mut t).await;
    // Acknowledging lets output flow again.
    let held = t.seq;
    t.send_json(json!({"type": "ack", "seq": held})).await;
    while t.seq < held + 64 * 1024 {
        assert!(t.read_one().await);
    }
    srv.stop().await;
}

/// Input the shell has not taken (a paste into `yes`) must not hold back acknowledgements:
/// the window reopens and output flows on.
#[tokio::test(flavor = "multi_thread")]
async fn pasted_input_does_not_freeze_an_acknowledging_client() {
    let srv = TestServer::start().await;
    let mut t = Term::connect(&srv, "").await;
    fill_ack_window(&srv, &mut t).await;
    // 12 pastes of 64 KiB that `yes` never reads, then an ack behind them on the socket.
    let paste = ("x".repeat(1023) + "\n").repeat(64);
    for _ in 0..12 {
        let bytes = paste.clone().into_bytes();
        t.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }
    let held = t.seq;
    t.send_json(json!({"type": "ack", "seq": held})).await;
    while t.seq < held + 64 * 1024 {
        assert!(t.read_one().await, "the terminal closed");
    }
    srv.stop().await;
}
