use super::Declared;
use crate::core::audit::Actor;
use crate::core::exec::ExecLimits;
use crate::core::files::TEMP_MARKER;
use crate::core::{Core, CoreConfig};
use futures_util::FutureExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The names under `dir` that are temp files.
fn temp_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(TEMP_MARKER))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_creation_dropped_while_its_temp_file_is_made_leaves_nothing_behind() {
    // One blocking thread runs blocking tasks in order: a task queued after the creation's
    // shows when that one is over, output dropped included.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let root = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let cfg = CoreConfig {
            root: root.path().to_path_buf(),
            data_dir: data.path().to_path_buf(),
            access: crate::core::auth::AccessConfig::single_admin("t"),
            exec: ExecLimits {
                timeout: Duration::from_secs(1),
                max_output: 1024,
                max_concurrent: 1,
                sandbox: Default::default(),
            },
            upload_expiry: Duration::from_secs(60),
            max_upload: 1 << 20,
            term: Default::default(),
        };
        let shutdown = CancellationToken::new();
        let (core, _writer) = Core::open(&cfg, shutdown.clone()).await.unwrap();
        let actor = Actor {
            session_id: "s".into(),
            transport: "http",
            peer: "test".into(),
            principal: std::sync::Arc::new(crate::core::auth::Principal::admin("test")),
        };
        // Polled once, the creation has queued its temp file's creation and waits for it; then
        // its request goes away. (Should the blocking task win the race and the creation finish
        // in that one poll, there is nothing to test: try again.)
        let dropped = (0..100).find(|i| {
            let path = format!("d{i}/x");
            let create = core.uploads.create(&actor, &path, Declared::default());
            create.now_or_never().is_none()
        });
        let i = dropped.expect("the creation never had to wait for its temp file");
        tokio::task::spawn_blocking(|| ()).await.unwrap();
        assert_eq!(
            temp_files(&root.path().join(format!("d{i}"))),
            Vec::<String>::new()
        );
        shutdown.cancel();
    });
}
