//! The route table, the OpenAPI document and the real router agree.

mod common;

use common::TestServer;
use ferry::http::ROUTES;

/// Every route in the table (which the OpenAPI document mirrors, see the unit test in
/// `src/http/routes.rs`) is served: no route answers "no such endpoint" or 405.
#[tokio::test(flavor = "multi_thread")]
async fn every_documented_route_is_served() {
    let srv = TestServer::start().await;
    std::fs::write(srv.root.join("f.txt"), b"x").unwrap();
    let web = srv.web();
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{*path}", "f.txt")
            .replace("{id}", "0000000000000000");
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = web.request(m, srv.url(&concrete));
        if *method == "POST" && concrete == "/api/v1/exec" {
            req = req.body(r#"{"cmd":"true"}"#);
        }
        if *method == "POST" && concrete.starts_with("/files/") {
            req = req.header("Upload-Complete", "?1").body("x");
        }
        if *path == "/api/v1/events" {
            // An endless stream: the status and content type are enough.
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert!(
                resp.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/event-stream")
            );
            continue;
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 405, "{method} {concrete}: {body}");
        assert!(
            !body.contains("no such endpoint"),
            "{method} {concrete} is not routed: {status} {body}"
        );
    }
    let served: serde_json::Value = web
        .get(srv.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["openapi"], "3.1.0");
    let file: serde_json::Value =
        serde_json::from_str(include_str!("../src/http/openapi.json")).unwrap();
    assert_eq!(served, file, "the served document is the one in the tree");
}
