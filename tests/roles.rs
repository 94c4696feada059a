//! Roles, public read and the failed-authentication limit, checked the same way over TCP,
//! HTTP and the WebSocket terminal, against a real server.

mod common;

use common::{TOKEN, TestServer};
use ferry::client::Client;
use ferry::core::auth::{AccessConfig, BURST, Role, TokenEntry, token_digest};
use ferry::core::checksum::Md5Stream;
use ferry::core::error::Code;
use ferry::core::exec::ExecRequest;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const READ: &str = "reader-token-0001";
const WRITE: &str = "writer-token-0002";
const EXEC: &str = "exec-token-0003";
const WRITE2: &str = "writer-token-0004";

/// A server with an admin (TOKEN), a reader, a writer and an exec token allowed only `echo`.
async fn server(public_read: bool) -> TestServer {
    TestServer::start_with(|cfg| {
        let mut access = AccessConfig::single_admin(TOKEN);
        for (name, role, token) in [
            ("reader", Role::Read, READ),
            ("writer", Role::Write, WRITE),
            ("runner", Role::Exec, EXEC),
            ("writer2", Role::Write, WRITE2),
        ] {
            access.tokens.push(TokenEntry {
                name: name.into(),
                role,
                digest: token_digest(token),
            });
        }
        access.programs.insert(Role::Exec, vec!["echo".into()]);
        access.public_read = public_read;
        // The default limit of failed authentications (common's servers lift it).
        access.failure_burst = BURST;
        cfg.core.access = access;
    })
    .await
}

fn web(token: Option<&str>) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

/// The status and error code of an HTTP answer.
async fn answer(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    (status, code)
}

async fn put_http(s: &TestServer, token: &str, name: &str) -> (StatusCode, String) {
    let r = web(Some(token))
        .put(s.url(&format!("/files/{name}")))
        .body("data")
        .send()
        .await
        .unwrap();
    answer(r).await
}

async fn exec_http(s: &TestServer, token: &str, body: Value) -> (StatusCode, String) {
    let r = web(Some(token))
        .post(s.url("/api/v1/exec"))
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(r).await
}

/// The HTTP status of a terminal upgrade with `token`.
async fn ws_status(s: &TestServer, token: Option<&str>) -> u16 {
    let url = s.url("/term/ws").replace("http://", "ws://");
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("terminal upgrade: {e}"),
    }
}

fn code_of<T>(r: ferry::client::Result<T>) -> Option<Code> {
    r.err().and_then(|e| e.code())
}

async fn tcp_put(c: &Client, path: &str) -> ferry::client::Result<()> {
    c.put(path, &b"data"[..], 4, None, |_| {}).await.map(|_| ())
}

async fn tcp_get(c: &Client, path: &str) -> ferry::client::Result<Vec<u8>> {
    c.get(path, 0, Md5Stream::new(), Vec::new(), |_| {})
        .await
        .map(|(v, _)| v)
}

fn argv(a: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: Some(a.iter().map(|s| s.to_string()).collect()),
        ..ExecRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_may_do_what_it_should_over_tcp() {
    let s = server(false).await;
    std::fs::write(s.path("a.txt"), "hello").unwrap();

    let reader = Client::connect(&s.addr, READ).await.unwrap();
    assert_eq!(reader.list("").await.unwrap().len(), 1);
    assert_eq!(tcp_get(&reader, "a.txt").await.unwrap(), b"hello");
    assert_eq!(
        code_of(tcp_put(&reader, "r.txt").await),
        Some(Code::Forbidden)
    );
    assert_eq!(
        code_of(reader.exec_collect(argv(&["echo", "x"])).await),
        Some(Code::Forbidden)
    );
    assert!(!s.path("r.txt").exists());

    let writer = Client::connect(&s.addr, WRITE).await.unwrap();
    tcp_put(&writer, "w.txt").await.unwrap();
    assert_eq!(std::fs::read(s.path("w.txt")).unwrap(), b"data");
    assert_eq!(
        code_of(writer.exec_collect(argv(&["echo", "x"])).await),
        Some(Code::Forbidden)
    );

    // The exec role runs what its allowlist names, and nothing else (a shell line is `sh`).
    let runner = Client::connect(&s.addr, EXEC).await.unwrap();
    let (out, _, end) = runner.exec_collect(argv(&["echo", "ok"])).await.unwrap();
    assert_eq!((out.as_slice(), end.exit_code), (&b"ok\n"[..], Some(0)));
    let line = ExecRequest {
        cmd: Some("echo hi".into()),
        ..ExecRequest::default()
    };
    assert_eq!(
        code_of(runner.exec_collect(line).await),
        Some(Code::Forbidden)
    );
    assert_eq!(
        code_of(runner.exec_collect(argv(&["/bin/rm", "w.txt"])).await),
        Some(Code::Forbidden)
    );
    assert!(s.path("w.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_may_do_what_it_should_over_http_and_ws() {
    let s = server(false).await;
    std::fs::write(s.path("a.txt"), "hello").unwrap();
    let get = |t| web(Some(t)).get(s.url("/files/a.txt")).send();
    assert_eq!(get(READ).await.unwrap().status(), StatusCode::OK);
    let list = web(Some(READ))
        .get(s.url("/api/v1/files"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);

    assert_eq!(
        put_http(&s, READ, "r.txt").await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    assert_eq!(put_http(&s, WRITE, "w.txt").await.0, StatusCode::CREATED);
    let del = web(Some(READ))
        .delete(s.url("/files/w.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(del).await.1, "forbidden");
    let upload = web(Some(READ))
        .post(s.url("/files/u.txt"))
        .header("upload-complete", "?1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::FORBIDDEN);

    let echo = json!({"argv": ["echo", "hi"]});
    assert_eq!(exec_http(&s, WRITE, echo.clone()).await.1, "forbidden");
    assert_eq!(exec_http(&s, EXEC, echo).await.0, StatusCode::OK);
    assert_eq!(
        exec_http(&s, EXEC, json!({"cmd": "echo hi"})).await.1,
        "forbidden"
    );
    // Its own environment (LD_PRELOAD, PATH) would let a listed program run anything.
    let preload = json!({"argv": ["echo", "hi"], "env": {"LD_PRELOAD": "./evil.so"}});
    assert_eq!(exec_http(&s, EXEC, preload).await.1, "forbidden");

    // Only an admin reads the audit log and the recordings.
    for path in ["/api/v1/audit", "/api/v1/recordings"] {
        for t in [READ, WRITE, EXEC] {
            let r = web(Some(t)).get(s.url(path)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path} {t}");
        }
        let r = web(Some(TOKEN)).get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }

    // The terminal needs the exec role, and a shell on its allowlist (here only `echo`).
    assert_eq!(ws_status(&s, Some(READ)).await, 403);
    assert_eq!(ws_status(&s, Some(EXEC)).await, 403);
    assert_eq!(ws_status(&s, None).await, 401);
    assert_eq!(ws_status(&s, Some(TOKEN)).await, 101);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_shown_to_their_token_and_to_admins() {
    let s = server(false).await;
    // Each client keeps its connection, so its session stays live.
    let (reader, writer, admin) = (web(Some(READ)), web(Some(WRITE)), web(Some(TOKEN)));
    let users = |c: reqwest::Client| {
        let url = s.url("/api/v1/sessions");
        async move {
            let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            let mut u: Vec<String> = v["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    format!(
                        "{}:{}",
                        s["user"].as_str().unwrap(),
                        s["role"].as_str().unwrap()
                    )
                })
                .collect();
            u.sort();
            u
        }
    };
    assert_eq!(users(writer.clone()).await, ["writer:write"]);
    assert_eq!(users(reader.clone()).await, ["reader:read"]);
    assert_eq!(
        users(admin.clone()).await,
        ["admin:admin", "reader:read", "writer:write"]
    );
    // The audit knows who opened each session.
    assert_eq!(
        s.count("sessions", "user = 'reader' AND role = 'read'")
            .await,
        1
    );
    assert_eq!(
        s.count("sessions", "user = 'writer' AND role = 'write'")
            .await,
        1
    );

    // A transfer, and its check, are the writer's: the reader does not see them.
    assert_eq!(put_http(&s, WRITE, "w.txt").await.0, StatusCode::CREATED);
    for (c, n) in [(reader, 0), (writer, 1), (admin, 1)] {
        let v: Value = c
            .get(s.url("/api/v1/transfers"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["transfers"].as_array().unwrap().len(), n);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn public_read_allows_downloads_only() {
    let s = server(true).await;
    std::fs::write(s.path("pub.txt"), "public").unwrap();
    let anon = web(None);
    let r = anon.get(s.url("/files/pub.txt")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "public");
    let head = anon.head(s.url("/files/pub.txt")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    for (method, path) in [
        ("GET", "/files/"),
        ("GET", "/api/v1/files"),
        ("GET", "/api/v1/sessions"),
        ("PUT", "/files/x.txt"),
        ("DELETE", "/files/pub.txt"),
        ("POST", "/api/v1/exec"),
    ] {
        let r = anon
            .request(method.parse().unwrap(), s.url(path))
            .header("x-ferry", "1")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer(r).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into()),
            "{method} {path}"
        );
    }
    // The UI is not for the anonymous reader: it goes to the login page.
    let page = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(s.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    // A wrong token is refused, not taken as anonymous.
    let wrong = web(Some("nope"))
        .get(s.url("/files/pub.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // Over TCP, a hello without a token may get files, nothing else.
    let c = Client::connect(&s.addr, "").await.unwrap();
    assert_eq!(tcp_get(&c, "pub.txt").await.unwrap(), b"public");
    assert_eq!(code_of(c.list("").await), Some(Code::Unauthorized));
    assert_eq!(
        code_of(tcp_put(&c, "x.txt").await),
        Some(Code::Unauthorized)
    );
    let anon_tcp = "user = 'anonymous' AND role = 'anonymous' AND transport = 'tcp'";
    assert_eq!(s.count("sessions", anon_tcp).await, 1);

    // Without public read, no token is no access.
    let closed = server(false).await;
    std::fs::write(closed.path("pub.txt"), "x").unwrap();
    let r = web(None)
        .get(closed.url("/files/pub.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        code_of(Client::connect(&closed.addr, "").await),
        Some(Code::Unauthorized)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_guesses_are_rate_limited_on_every_transport() {
    let s = server(false).await;
    let guesser = web(Some("guess-0000"));
    let mut unauthorized = 0;
    let mut limited = 0;
    for _ in 0..10_000 {
        let r = guesser.get(s.url("/api/v1/files")).send().await.unwrap();
        match r.status() {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers().contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    println!("10000 guesses: {unauthorized} unauthorized, {limited} rate limited");
    assert_eq!(unauthorized, BURST as usize);
    assert_eq!(limited, 10_000 - BURST as usize);

    // The limit is per address and shared by every transport: from here, even the right
    // token is refused now, on HTTP, the browser login, TCP and the terminal.
    let r = web(Some(TOKEN))
        .get(s.url("/api/v1/files"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer(r).await,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
    );
    let login = reqwest::Client::new()
        .post(s.url("/login"))
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        code_of(Client::connect(&s.addr, TOKEN).await),
        Some(Code::RateLimited)
    );
    assert_eq!(ws_status(&s, Some(TOKEN)).await, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_guesses_count_too() {
    let s = server(false).await;
    for _ in 0..BURST {
        assert_eq!(
            code_of(Client::connect(&s.addr, "guess").await),
            Some(Code::Unauthorized)
        );
    }
    assert_eq!(
        code_of(Client::connect(&s.addr, "guess").await),
        Some(Code::RateLimited)
    );
    let r = web(Some(READ))
        .get(s.url("/api/v1/files"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumable_upload_is_its_creators_alone() {
    let s = server(true).await;
    let r = web(Some(WRITE))
        .post(s.url("/files/u.bin"))
        .header("upload-complete", "?0")
        .body("1234")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let url = s.url(&location);
    // Another write token neither sees it, nor goes on with it, nor cancels it.
    let other = web(Some(WRITE2));
    assert_eq!(
        other.head(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let patch = other
        .patch(&url)
        .header("upload-offset", "4")
        .header("upload-complete", "?1")
        .header("content-type", "application/partial-upload")
        .body("5678")
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), StatusCode::NOT_FOUND);
    assert!(!patch.headers().contains_key("upload-offset"));
    assert_eq!(
        other.delete(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // Nor does the anonymous reader learn how far it got.
    let anon = web(None)
        .patch(&url)
        .header("upload-offset", "4")
        .header("upload-complete", "?0")
        .header("content-type", "application/partial-upload")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    assert!(!anon.headers().contains_key("upload-offset"));
    // Its creator does.
    let head = web(Some(WRITE)).head(&url).send().await.unwrap();
    assert_eq!(head.headers()["upload-offset"], "4");
    // Metrics and the API description are not for the anonymous reader either.
    for path in ["/metrics", "/api/v1/openapi.json"] {
        let r = web(None).get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
}
