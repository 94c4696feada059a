//! `/files/{path}`: downloads with checksum headers and ranges, verified uploads, deletes.

use crate::core::Core;
use crate::core::audit::Actor;
use crate::core::error::{Code, Error};
use crate::core::files::Entry;
use crate::core::put::PutDone;
use crate::core::transfer::{GetFile, GetStream, Opened};
use crate::http::ApiError;
use crate::http::checksums::{VersionHeaders, checksum_headers, expected_md5};
use crate::http::range::{Conditions, Plan, Validators, plan};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;

/// Chunk size of HTTP downloads: 1 MiB, as the TCP transport's frames. Against 256 KiB, a
/// warm 1 GiB download ran 8 to 15% faster (a quarter of the hand-offs between the disk thread
/// and the connection, each a wake-up on the other core).
const CHUNK: usize = 1024 * 1024;

/// A directory listing as JSON.
#[derive(Serialize)]
pub struct Listing {
    /// The directory, relative to the root.
    pub path: String,
    /// Its entries, sorted by name.
    pub entries: Vec<Entry>,
}

/// `GET`/`HEAD /files/` : the root's listing.
pub async fn get_root(
    state: State<Core>,
    actor: axum::Extension<Actor>,
    req: Request,
) -> Result<Response, ApiError> {
    get_file(state, actor, Path(String::new()), req).await
}

/// `GET`/`HEAD /files/{path}`: a file with its MD5 headers (ranges and conditionals honoured),
/// or a directory's listing.
pub async fn get_file(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(path): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    // The request's own method and headers (the `HeaderMap` extractor would copy them all).
    let Parts {
        method, headers, ..
    } = req.into_parts().0;
    let file = match core.files.open_path(&actor, &path).await? {
        Opened::Dir(entries) => {
            let path = path.trim_matches('/').to_string();
            return Ok(Json(Listing { path, entries }).into_response());
        }
        Opened::File(f) => f,
    };
    let mtime_s = u64::try_from(file.mtime_ms() / 1000).unwrap_or(0);
    let version = VersionHeaders::of(&file.md5, mtime_s);
    let v = Validators {
        etag: version.etag_str(),
        mtime_s,
        size: file.size(),
    };
    let h = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let c = Conditions {
        if_none_match: h(header::IF_NONE_MATCH),
        if_modified_since: h(header::IF_MODIFIED_SINCE),
        range: h(header::RANGE),
        if_range: h(header::IF_RANGE),
    };
    let plan = plan(c, v);
    let mut resp = match plan {
        Plan::NotModified => Response::new(Body::empty()),
        Plan::Unsatisfiable => ApiError::new(
            Code::RangeNotSatisfiable,
            format!(
                "range {} is outside the file ({} bytes)",
                c.range.unwrap_or(""),
                file.size()
            ),
        )
        .into_response(),
        Plan::Full => body(&method, *file, 0, None).await?,
        Plan::Partial { start, len } => body(&method, *file, start, Some(len)).await?,
    };
    let size = v.size;
    let hm = resp.headers_mut();
    // The headers below, set without growing the map on the way.
    hm.reserve(10);
    let status = match plan {
        Plan::NotModified => StatusCode::NOT_MODIFIED,
        Plan::Unsatisfiable => {
            hm.insert(header::CONTENT_RANGE, value(format!("bytes */{size}")));
            StatusCode::RANGE_NOT_SATISFIABLE
        }
        Plan::Full => {
            hm.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            StatusCode::OK
        }
        Plan::Partial { start, len } => {
            let end = start + len - 1;
            hm.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            hm.insert(
                header::CONTENT_RANGE,
                value(format!("bytes {start}-{end}/{size}")),
            );
            StatusCode::PARTIAL_CONTENT
        }
    };
    if status != StatusCode::RANGE_NOT_SATISFIABLE {
        let mime = mime_guess::from_path(&path)
            .first_raw()
            .unwrap_or("application/octet-stream");
        hm.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    }
    version.set(hm);
    hm.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Served files are data, never a page of ferry's origin: an uploaded .html or .svg must
    // not run scripts next to the API.
    hm.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    hm.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    *resp.status_mut() = status;
    Ok(resp)
}

fn value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("header values built here are ASCII")
}

/// The body of a download: nothing for HEAD (and no transfer recorded), else the bytes.
///
/// hyper stops polling a body once it has written the `Content-Length` it announced, so the
/// end of the transfer is settled together with its last chunk (the disk thread's end marker
/// follows that chunk at once), not on a poll after it that never comes.
async fn body(
    method: &Method,
    file: GetFile,
    start: u64,
    len: Option<u64>,
) -> Result<Response, ApiError> {
    if method == Method::HEAD {
        return Ok(Response::new(Body::empty()));
    }
    let left = len.unwrap_or(file.size() - start);
    let mut stream = file.stream(start, len, CHUNK).await?;
    if let Some(all) = stream.take_whole() {
        // A small file, read whole at open: headers and body leave in one write.
        settle(&mut Sending(Some(stream))).await?;
        return Ok(Response::new(Body::from(all)));
    }
    let mut sending = Sending(Some(stream));
    if left == 0 {
        // No chunk will be asked for: settle now.
        settle(&mut sending).await?;
        return Ok(Response::new(Body::empty()));
    }
    let body = futures_util::stream::unfold((sending, left), |(mut s, left)| async move {
        let stream = s.0.as_mut()?;
        match stream.next_chunk().await {
            Ok(Some(b)) => {
                let left = left.saturating_sub(b.len() as u64);
                if left == 0
                    && let Err(e) = settle(&mut s).await
                {
                    // The client gets fewer or other bytes than the headers promised: cut the
                    // connection so it cannot mistake them for the file.
                    return Some((Err(e), (s, left)));
                }
                Some((Ok::<Bytes, Error>(b), (s, left)))
            }
            // The file shrank: fewer bytes than announced.
            Ok(None) => settle(&mut s).await.err().map(|e| (Err(e), (s, left))),
            Err(e) => {
                if let Some(g) = s.0.take() {
                    g.abort(false).await;
                }
                Some((Err(e), (s, left)))
            }
        }
    });
    Ok(Response::new(Body::from_stream(body)))
}

/// Ends a download whose bytes have all been handed over: reads the end marker and records the
/// transfer; an error if the file changed while it was read.
async fn settle(s: &mut Sending) -> Result<(), Error> {
    let Some(mut g) = s.0.take() else {
        return Ok(());
    };
    let changed = match g.next_chunk().await {
        Ok(None) => g.finish().await.changed,
        Ok(Some(_)) => {
            g.abort(false).await;
            return Err(Error::internal("more bytes than announced"));
        }
        Err(e) => {
            g.abort(false).await;
            return Err(e);
        }
    };
    if changed {
        return Err(Error::internal("file changed while it was sent"));
    }
    Ok(())
}

/// A download being sent; if the client goes away first, the transfer is recorded as failed.
struct Sending(Option<GetStream>);

impl Drop for Sending {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            tokio::spawn(g.abort(false));
        }
    }
}

/// The declared body length, if any.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// Maps a body read error: over the size limit, no data for the idle timeout, or the client
/// went away.
pub fn body_error(e: axum::Error) -> Error {
    let inner = e.into_inner();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return Error::new(Code::TooLarge, "the body is over the server's size limit");
        }
        if err.is::<tower_http::timeout::TimeoutError>() {
            return Error::new(
                Code::Timeout,
                "no data for the idle timeout (--idle-timeout): the upload is dropped",
            );
        }
        source = err.source();
    }
    Error::new(Code::Cancelled, format!("the upload was cut off: {inner}"))
}

/// Answer of a finished upload.
#[derive(Serialize)]
struct Stored {
    path: String,
    size: u64,
    md5: String,
}

/// `PUT /files/{path}`: streams the body into a temp file, verifies, renames into place.
pub async fn put_file(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    Path(path): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    if crate::http::uploads::upload_complete(&headers).is_some() {
        // A PUT that offers to become resumable (draft-ietf-httpbis-resumable-upload).
        let (state, actor) = (State(core), axum::Extension(actor));
        return crate::http::uploads::create(state, actor, headers, Path(path), body).await;
    }
    let md5 = expected_md5(&headers)?;
    let size = content_length(&headers);
    let mut sink = core.files.put(&actor, &path, size, md5).await?;
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let err = body_error(e);
                // A body cut off is a disconnect, as on TCP: the transfer failed (not cancelled).
                sink.abort(false).await;
                return Err(err.into());
            }
        };
        if let Err(e) = sink.write(chunk).await {
            sink.abort(false).await;
            return Err(e.into());
        }
    }
    let done = sink.finish().await?;
    Ok(stored(path.trim_matches('/'), &done))
}

/// The answer to a verified upload, by PUT or by a completed resumable upload: 201 with
/// `Location` and `{"path","size","md5"}` for a new name, 204 for a replaced file; both with
/// the checksum headers and the ETag.
pub fn stored(rel: &str, done: &PutDone) -> Response {
    let mut resp = if done.created {
        let mut r = (
            StatusCode::CREATED,
            Json(Stored {
                path: rel.to_string(),
                size: done.size,
                md5: done.md5.clone(),
            }),
        )
            .into_response();
        r.headers_mut()
            .insert(header::LOCATION, value(file_url(rel)));
        r
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    checksum_headers(resp.headers_mut(), &done.md5);
    resp.headers_mut()
        .insert(header::ETAG, value(format!("\"{}\"", done.md5)));
    resp
}

/// The URL path of a file under `/files/`, percent-encoded.
pub fn file_url(rel: &str) -> String {
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    const SEGMENT: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'`')
        .add(b'{')
        .add(b'}');
    format!("/files/{}", utf8_percent_encode(rel, SEGMENT))
}

/// `DELETE /files/{path}`: a file, a symlink or an empty directory.
pub async fn delete_file(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(path): Path<String>,
) -> Result<StatusCode, ApiError> {
    core.files.delete(&actor, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}
