//! Browser logins over real sockets: the cookie, its CSRF rule, logout, and the pages.

mod common;

use common::{TOKEN, TestServer};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};

fn plain() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in with a form and returns the `name=value` of the session cookie.
async fn login(srv: &TestServer) -> String {
    let resp = plain()
        .post(srv.url("/login"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/");
    let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(!set.contains("Secure"), "no TLS, no Secure: {set}");
    assert!(!set.contains(TOKEN), "the cookie is not the token");
    set.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_redirect_until_logged_in() {
    let srv = TestServer::start().await;
    let c = plain();
    for (page, to) in [("/", "/login"), ("/term", "/login?next=term")] {
        let resp = c.get(srv.url(page)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(resp.headers()[LOCATION], to);
    }
    let resp = c.get(srv.url("/login")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // The API keeps answering 401 JSON.
    let resp = c.get(srv.url("/api/v1/sessions")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    // Assets are public, typed and cached.
    let resp = c.get(srv.url("/assets/app.js")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let resp = c
        .get(srv.url("/assets/vendor/xterm.css"))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let resp = c
        .get(srv.url("/assets/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    // The client resolves the dots to /Cargo.toml: no public path, so no answer without a token.
    assert_eq!(resp.status(), 401);
    assert!(!resp.text().await.unwrap().contains("[package]"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_tokens_get_no_cookie() {
    let srv = TestServer::start().await;
    let resp = plain()
        .post(srv.url("/login"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("token=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/login?failed=1");
    assert!(resp.headers().get(SET_COOKIE).is_none());
    let resp = plain()
        .post(srv.url("/login"))
        .json(&serde_json::json!({ "token": "nope" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get(SET_COOKIE).is_none());
    let resp = plain()
        .post(srv.url("/login"))
        .json(&serde_json::json!({ "token": TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.headers().get(SET_COOKIE).is_some());
    // The terminal page is the one other place a login form leads back to; no open redirect.
    for (next, to) in [("term", "/term"), ("https://evil.example", "/")] {
        let resp = plain()
            .post(srv.url("/login"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!("token={TOKEN}&next={next}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()[LOCATION], to, "next={next}");
    }
    // A forged cookie is no login.
    let resp = plain()
        .get(srv.url("/api/v1/sessions"))
        .header(COOKIE, "ferry_session=0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cookie_authenticates_with_a_csrf_rule() {
    let srv = TestServer::start().await;
    let cookie = login(&srv).await;
    let c = plain();
    let resp = c
        .get(srv.url("/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .get(srv.url("/api/v1/sessions"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A state change by cookie alone, as a cross-site form would send it, is refused...
    let exec = |req: reqwest::RequestBuilder| req.header(COOKIE, &cookie).body(r#"{"cmd":"true"}"#);
    let resp = exec(c.post(srv.url("/api/v1/exec")))
        .header(CONTENT_TYPE, "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden_origin");
    let resp = c
        .put(srv.url("/files/a.txt"))
        .header(COOKIE, &cookie)
        .header("origin", "http://evil.example")
        .header("x-ferry", "1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(!srv.path("a.txt").exists());
    // ...and allowed with X-Ferry, a JSON body, or a same-origin Origin.
    let resp = exec(c.post(srv.url("/api/v1/exec")))
        .header(CONTENT_TYPE, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .put(srv.url("/files/a.txt"))
        .header(COOKIE, &cookie)
        .header("x-ferry", "1")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let origin = srv.http.clone();
    let resp = c
        .delete(srv.url("/files/a.txt"))
        .header(COOKIE, &cookie)
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    // Bearer requests are unaffected; a wrong bearer is refused even with a good cookie.
    let resp = srv
        .web()
        .post(srv.url("/api/v1/exec"))
        .body(r#"{"cmd":"true"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .get(srv.url("/api/v1/sessions"))
        .header(COOKIE, &cookie)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Logout ends it.
    let resp = c
        .post(srv.url("/logout"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(
        resp.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let resp = c
        .get(srv.url("/api/v1/sessions"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    srv.stop().await;
}
