//! Resumable uploads over HTTP, after draft-ietf-httpbis-resumable-upload: `POST /files/{path}`
//! (or `PUT` with `Upload-Complete`) creates an upload, and `HEAD`, `PATCH` and `DELETE` on
//! `/uploads/{id}` read its offset, append to it and cancel it.
//!
//! hyper cannot send the draft's `104 (Upload Resumption Supported)` interim response from a
//! handler, so a client learns an upload's URL only from the final answer to its creation: a
//! client that wants to survive a cut in the first request creates with an empty `?0` request.

use crate::core::Core;
use crate::core::audit::Actor;
use crate::core::error::{Code, Error};
use crate::core::uploads::{Append, Declared, UploadInfo};
use crate::http::ApiError;
use crate::http::checksums::{CONTENT_DIGEST, CONTENT_MD5, checksum_headers, expected_md5};
use crate::http::files::{body_error, content_length, stored};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;

/// `Upload-Complete`: whether a request's content ends the upload (`?1`) or not (`?0`).
pub static UPLOAD_COMPLETE: HeaderName = HeaderName::from_static("upload-complete");
/// `Upload-Offset`: bytes of the upload stored so far.
pub static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
/// `Upload-Length`: the whole file's length.
pub static UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
/// `Upload-Limit`: the server's limits on the upload (here its remaining `max-age`).
pub static UPLOAD_LIMIT: HeaderName = HeaderName::from_static("upload-limit");

/// The media type of a `PATCH` body appended to an upload.
const PARTIAL_UPLOAD: &str = "application/partial-upload";

/// The structured-field value of an item header, without its parameters.
fn item<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let v = h.get(name)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim())
}

/// `Upload-Complete` as a structured boolean; any other value counts as absent, as the draft says.
pub fn upload_complete(h: &HeaderMap) -> Option<bool> {
    match item(h, &UPLOAD_COMPLETE)? {
        "?1" => Some(true),
        "?0" => Some(false),
        _ => None,
    }
}

/// A non-negative structured integer (at most 15 digits); any other value counts as absent.
fn sf_integer(h: &HeaderMap, name: &HeaderName) -> Option<u64> {
    let v = item(h, name)?;
    if v.is_empty() || v.len() > 15 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// What a request with upload data states: `X-Checksum-Md5` and `Repr-Digest` give the whole
/// file's MD5; `Content-Digest` and `Content-MD5` (RFC 1864: the message body's) this request's.
fn declared(headers: &HeaderMap, complete: bool) -> Result<Declared, ApiError> {
    let mut whole = headers.clone();
    let mut part = HeaderMap::new();
    for name in [&CONTENT_DIGEST, &CONTENT_MD5] {
        if let Some(v) = whole.remove(name) {
            part.insert(name.clone(), v);
        }
    }
    Ok(Declared {
        complete,
        length: sf_integer(headers, &UPLOAD_LENGTH),
        content_length: content_length(headers),
        md5: expected_md5(&whole)?,
        part_md5: expected_md5(&part)?,
    })
}

fn value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("header values built here are ASCII")
}

/// The URL path of an upload.
fn upload_url(id: &str) -> String {
    format!("/uploads/{id}")
}

/// The upload state headers: `Upload-Complete`, `Upload-Offset`, `Upload-Length` when known and,
/// while the upload can take data, `Upload-Limit: max-age=<seconds left>`.
fn state_headers(h: &mut HeaderMap, info: &UploadInfo) {
    let complete = if info.complete { "?1" } else { "?0" };
    h.insert(UPLOAD_COMPLETE.clone(), HeaderValue::from_static(complete));
    h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(info.offset));
    if let Some(len) = info.length {
        h.insert(UPLOAD_LENGTH.clone(), HeaderValue::from(len));
    }
    if !info.complete {
        h.insert(
            UPLOAD_LIMIT.clone(),
            value(format!("max-age={}", info.expires_in)),
        );
    }
}

/// The JSON answer to a creation that leaves the upload incomplete.
#[derive(Serialize)]
struct Created {
    id: String,
    location: String,
    path: String,
    offset: u64,
    length: Option<u64>,
    complete: bool,
    expires_in: u64,
}

/// The answer to a request that carried upload data and ended normally.
fn answer(info: UploadInfo, creation: bool) -> Response {
    let mut resp = match (&info.stored, creation) {
        // The upload is complete: answer as the PUT of the whole file would have.
        (Some(done), _) => stored(&info.path, done),
        (None, true) => {
            let location = upload_url(&info.id);
            let mut r = (
                StatusCode::CREATED,
                Json(Created {
                    id: info.id.clone(),
                    location: location.clone(),
                    path: info.path.clone(),
                    offset: info.offset,
                    length: info.length,
                    complete: false,
                    expires_in: info.expires_in,
                }),
            )
                .into_response();
            r.headers_mut().insert(header::LOCATION, value(location));
            r
        }
        (None, false) => StatusCode::NO_CONTENT.into_response(),
    };
    state_headers(resp.headers_mut(), &info);
    resp
}

/// Streams a request's content into an append and ends it: finished when the content is whole,
/// interrupted (keeping what arrived) when it is cut off or a newer request takes over.
async fn pump(mut append: Append, body: Body) -> Result<UploadInfo, Error> {
    let stop = append.stop_signal();
    let mut data = body.into_data_stream();
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                append.interrupt().await?;
                return Err(Error::new(
                    Code::Conflict,
                    "a newer request on this upload ended this one; the bytes that arrived are kept",
                ));
            }
            next = data.next() => next,
        };
        match next {
            None => return append.finish().await,
            Some(Ok(chunk)) => append.write(chunk).await?,
            Some(Err(e)) => {
                let err = body_error(e);
                append.interrupt().await?;
                return Err(err);
            }
        }
    }
}

/// `POST /files/{path}`, and `PUT /files/{path}` with `Upload-Complete`: creates a resumable
/// upload whose first part is the body. `?0` answers 201 with `Location: /uploads/{id}`; `?1`
/// stores the verified file and answers as `PUT` does. A cut-off body keeps nothing.
pub async fn create(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    Path(path): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(complete) = upload_complete(&headers) else {
        return Err(ApiError::new(
            Code::BadRequest,
            "POST /files/{path} starts a resumable upload: send Upload-Complete: ?0 (more parts \
             follow) or ?1 (the body is the whole file)",
        ));
    };
    let d = declared(&headers, complete)?;
    let append = core.uploads.create(&actor, &path, d).await?;
    let info = pump(append, body).await?;
    Ok(answer(info, true))
}

/// `HEAD /uploads/{id}`: 204 with the upload's state; a running append is ended first so the
/// offset is settled. No caching.
pub async fn status(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let info = core.uploads.status(&actor, &id).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    state_headers(h, &info);
    if let Some(done) = &info.stored {
        checksum_headers(h, &done.md5);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `PATCH /uploads/{id}`: appends the body at `Upload-Offset` (which must be the current
/// offset: else 409 with the current `Upload-Offset`); `Upload-Complete: ?1` completes it.
pub async fn append(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    match append_inner(&core, &actor, &headers, &id, body).await {
        Ok(resp) => resp,
        Err(e) => {
            let mut resp = e.into_response();
            // Wherever the upload stands after a failed append, the client can go on from there.
            if let Some(offset) = core.uploads.offset(&actor, &id) {
                resp.headers_mut()
                    .insert(UPLOAD_OFFSET.clone(), HeaderValue::from(offset));
            }
            resp
        }
    }
}

async fn append_inner(
    core: &Core,
    actor: &Actor,
    headers: &HeaderMap,
    id: &str,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(offset) = sf_integer(headers, &UPLOAD_OFFSET) else {
        return Err(ApiError::new(
            Code::BadRequest,
            "PATCH needs Upload-Offset: the offset to append at (HEAD on the upload tells it)",
        ));
    };
    let Some(complete) = upload_complete(headers) else {
        return Err(ApiError::new(
            Code::BadRequest,
            "PATCH needs Upload-Complete: ?0 (more parts follow) or ?1 (this is the last part)",
        ));
    };
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let media = ct.to_str().unwrap_or("").split(';').next().unwrap_or("");
        let media = media.trim().to_ascii_lowercase();
        if media != PARTIAL_UPLOAD && media != "application/octet-stream" {
            return Err(ApiError::new(
                Code::BadRequest,
                format!("PATCH on an upload takes Content-Type: {PARTIAL_UPLOAD}, not {media}"),
            ));
        }
    }
    let d = declared(headers, complete)?;
    let append = core.uploads.append(actor, id, offset, d).await?;
    let info = pump(append, body).await?;
    Ok(answer(info, false))
}

/// `DELETE /uploads/{id}`: cancels the upload (a running append is ended, the temp file
/// removed); 204. A completed upload is only forgotten.
pub async fn cancel(
    State(core): State<Core>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    core.uploads.cancel(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
