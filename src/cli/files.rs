//! `ferry get`, `ferry put` and `ferry ls`.

use super::run::{self, WaitingStdout, connect};
use super::{GetArgs, LsArgs, PutArgs};
use crate::client::Progress;
use crate::core::checksum::{Md5Stream, digest_reader, hash_reader};
use crate::core::direct::FileWriter;
use crate::tcp::messages::FEATURE_MD5_TRAILER;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// A progress bar on a terminal; hidden otherwise.
fn bar(label: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

fn track(pb: &ProgressBar) -> impl FnMut(Progress) + '_ {
    move |p| match p {
        Progress::Start { size, offset } => {
            pb.set_length(size);
            pb.set_position(offset);
        }
        Progress::Advance(n) => pb.inc(n),
    }
}

fn part_path(local: &Path) -> PathBuf {
    let mut name = local.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    local.with_file_name(name)
}

pub(super) async fn get(a: GetArgs) -> anyhow::Result<i32> {
    let client = connect(&a.conn).await?;
    let name = a
        .remote
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("download")
        .to_string();
    let local = a.output.clone().unwrap_or_else(|| PathBuf::from(&name));
    if local == Path::new("-") {
        let pb = bar(&name);
        pb.set_draw_target(ProgressDrawTarget::hidden());
        let (_, out) = client
            .get(&a.remote, 0, Md5Stream::new(), WaitingStdout, track(&pb))
            .await?;
        say!("{}  verified MD5", out.header.md5);
        return Ok(0);
    }
    // Data lands in `NAME.part` and is renamed once its MD5 matches, so a failed or
    // interrupted download never looks complete. `--continue` resumes from `NAME.part`, or from
    // NAME itself; nothing local is touched until the server has accepted the request.
    let part = part_path(&local);
    let resume_from = match a.resume {
        true if part.exists() => Some(part.clone()),
        true if local.exists() => Some(local.clone()),
        _ => None,
    };
    let (offset, prefix) = match &resume_from {
        Some(from) => {
            let md5 = digest_reader(std::fs::File::open(from)?, Md5Stream::new())?;
            (md5.len(), md5)
        }
        None => (0, Md5Stream::new()),
    };
    let from_local = resume_from.as_ref() == Some(&local);
    let open = {
        let (part, local) = (part.clone(), local.clone());
        move |_: &crate::tcp::messages::GetHeader| -> std::io::Result<FileWriter> {
            if from_local {
                std::fs::rename(&local, &part)?;
            }
            // Readable too: the writer reads back a partial block when it turns to direct
            // writes. It writes on from the end of what a resumed download already holds.
            let mut opts = std::fs::OpenOptions::new();
            opts.read(true).write(true);
            if offset == 0 {
                opts.create(true).truncate(true);
            }
            FileWriter::new(opts.open(&part)?)
        }
    };
    let pb = bar(&name);
    let result = client
        .get_with(&a.remote, offset, prefix, open, track(&pb))
        .await;
    pb.finish_and_clear();
    match result {
        Ok((writer, out)) => {
            let file = writer.finish()?;
            file.sync_all()?;
            std::fs::rename(&part, &local)?;
            let resumed = if offset > 0 {
                format!(", resumed at {offset}")
            } else {
                String::new()
            };
            say!(
                "{}  {}  ({} bytes{resumed}, MD5 verified)",
                out.header.md5,
                local.display(),
                out.header.size
            );
            Ok(0)
        }
        Err(e) => {
            let mismatch = e.code() == Some(crate::core::error::Code::ChecksumMismatch);
            let len = std::fs::metadata(&part).map(|m| m.len()).ok();
            if mismatch && from_local {
                // The user's own file was not a prefix of the remote one: give it back as it was.
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&part) {
                    let _ = f.set_len(offset);
                }
                let _ = std::fs::rename(&part, &local);
                say!(
                    "ferry: {} is not the start of {}; left as it was",
                    local.display(),
                    a.remote
                );
            } else if mismatch || len == Some(0) {
                let _ = std::fs::remove_file(&part);
            } else if len.is_some_and(|l| l > offset) {
                say!(
                    "ferry: partial data kept in {}; rerun with --continue to resume",
                    part.display()
                );
            }
            Err(e.into())
        }
    }
}

pub(super) async fn put(a: PutArgs) -> anyhow::Result<i32> {
    let meta =
        std::fs::metadata(&a.local).map_err(|e| anyhow::anyhow!("{}: {e}", a.local.display()))?;
    anyhow::ensure!(meta.is_file(), "{}: not a regular file", a.local.display());
    let name = a
        .local
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{}: no file name", a.local.display()))?
        .to_string_lossy()
        .into_owned();
    let remote = match a.remote {
        None => name.clone(),
        Some(r) if r.ends_with('/') => format!("{r}{name}"),
        Some(r) => r,
    };
    let client = connect(&a.conn).await?;
    let file =
        std::fs::File::open(&a.local).map_err(|e| anyhow::anyhow!("{}: {e}", a.local.display()))?;
    let size = file.metadata()?.len();
    // One pass: the file is hashed as it is sent, and its MD5 follows the bytes. A server too
    // old to take that gets the MD5 up front, from a first pass over the file.
    let md5 = if client.supports(FEATURE_MD5_TRAILER) {
        None
    } else {
        let f = std::fs::File::open(&a.local)?;
        let (md5, _) = tokio::task::spawn_blocking(move || hash_reader(f)).await??;
        Some(md5)
    };
    let pb = bar(&name);
    let result = client.put(&remote, file, size, md5, track(&pb)).await;
    pb.finish_and_clear();
    let done = result?;
    say!(
        "{}  {remote}  ({} bytes, {}, MD5 verified by the server)",
        done.md5,
        done.size,
        if done.created { "created" } else { "replaced" }
    );
    Ok(0)
}

pub(super) async fn ls(a: LsArgs) -> anyhow::Result<i32> {
    let client = connect(&a.conn).await?;
    let entries = client.list(&a.dir).await?;
    let mut out = std::io::BufWriter::new(WaitingStdout);
    let written = if a.json {
        serde_json::to_writer_pretty(&mut out, &entries)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        entries.into_iter().try_for_each(|e| {
            let slash = if e.kind == "dir" { "/" } else { "" };
            let md5 = e.md5.as_deref().unwrap_or("-");
            writeln!(out, "{:>12}  {:32}  {}{slash}", e.size, md5, e.name)
        })
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => Ok(0),
        // The reader left (`ferry ls | head -1`): stop quietly, as a program killed by SIGPIPE.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(run::EXIT_BROKEN_PIPE),
        Err(e) => Err(e.into()),
    }
}
