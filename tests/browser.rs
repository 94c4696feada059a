//! The web UI in real headless Chromium (`tests/e2e/ui.mjs`, playwright-core), against a real
//! server. Needs `chromium`, `node` and `npm ci` in `tests/e2e` (`.ci/run` installs them);
//! `FERRY_SKIP_BROWSER=1` skips it, saying so.

mod common;

use common::{TOKEN, TestServer};
use std::path::Path;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn ui_in_headless_chromium() {
    if std::env::var("FERRY_SKIP_BROWSER").as_deref() == Ok("1") {
        println!("SKIPPED: the browser test (FERRY_SKIP_BROWSER=1)");
        eprintln!("SKIPPED: the browser test (FERRY_SKIP_BROWSER=1)");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        dir.join("tests/e2e/node_modules/playwright-core").is_dir(),
        "run `npm ci` in tests/e2e first (or set FERRY_SKIP_BROWSER=1)"
    );
    let srv = TestServer::start_with(|cfg| {
        cfg.tcp.legacy = Some(std::sync::Arc::new(ferry::legacy::LegacyConfig::default()));
    })
    .await;
    // A raw TCP session, for the dashboard to show next to the browser's own HTTP session.
    let _tcp = srv.client().await;
    // And a legacy line client, left connected after one command.
    let (_legacy, out) = common::legacy_exchange(&srv.addr, "echo hi").await;
    assert_eq!(out, b"hi\n");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    let run = tokio::process::Command::new("node")
        .arg(dir.join("tests/e2e/ui.mjs"))
        .arg(&srv.http)
        .arg(TOKEN)
        .arg("--expect-tcp")
        .arg("--expect-legacy")
        .env("FERRY_SCREENSHOTS", &shots)
        .current_dir(dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser test finishes within 3 minutes")
        .expect("node runs (is nodejs installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed:\n{stdout}");
    assert!(shots.join("dashboard.png").is_file());
    srv.stop().await;
}
