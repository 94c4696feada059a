//! The MD5 of a file in HTTP headers, both ways: what ferry announces (`X-Checksum-Md5`,
//! `Repr-Digest`) and what a client may send with an upload (those, `Content-MD5`,
//! `Content-Digest`).

use crate::core::checksum::is_md5_hex;
use crate::core::error::Code;
use crate::http::ApiError;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// `X-Checksum-Md5`: the MD5 hex a user compares with `md5sum`.
pub static X_CHECKSUM_MD5: HeaderName = HeaderName::from_static("x-checksum-md5");
/// `Repr-Digest` (RFC 9530).
pub static REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");
/// `Content-Digest` (RFC 9530).
pub static CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");
/// `Content-MD5` (RFC 1864).
pub static CONTENT_MD5: HeaderName = HeaderName::from_static("content-md5");

/// Sets the whole file's MD5 in its two headers (the ETag, a third form, is the caller's).
pub fn checksum_headers(h: &mut HeaderMap, md5_hex: &str) {
    h.insert(
        X_CHECKSUM_MD5.clone(),
        HeaderValue::from_str(md5_hex).expect("an MD5 hex is ASCII"),
    );
    let mut raw = [0u8; 16];
    if hex::decode_to_slice(md5_hex, &mut raw).is_ok() {
        let mut v = String::with_capacity(30);
        v.push_str("md5=:");
        B64.encode_string(raw, &mut v);
        v.push(':');
        h.insert(
            REPR_DIGEST.clone(),
            HeaderValue::try_from(v).expect("base64 is ASCII"),
        );
    }
}

/// The client's MD5 of an upload, from any of the headers that carry one; they must agree.
pub fn expected_md5(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut found: Vec<(String, &str)> = Vec::new();
    let bad = |what: &str| ApiError::new(Code::BadRequest, format!("{what} is not a valid MD5"));
    if let Some(v) = headers.get(&CONTENT_MD5) {
        let raw = v
            .to_str()
            .ok()
            .and_then(|s| B64.decode(s.trim()).ok())
            .filter(|r| r.len() == 16)
            .ok_or_else(|| bad("Content-MD5 (base64 of 16 bytes)"))?;
        found.push((hex::encode(raw), "Content-MD5"));
    }
    if let Some(v) = headers.get(&X_CHECKSUM_MD5) {
        let s = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if !is_md5_hex(&s) {
            return Err(bad("X-Checksum-Md5 (32 hex digits)"));
        }
        found.push((s, "X-Checksum-Md5"));
    }
    for name in [&REPR_DIGEST, &CONTENT_DIGEST] {
        let Some(v) = headers.get(name) else { continue };
        let s = v.to_str().map_err(|_| bad(name.as_str()))?;
        // A dictionary like `sha-256=:...:, md5=:...:`; only md5 is checked.
        for member in s.split(',') {
            let Some((alg, val)) = member.trim().split_once('=') else {
                continue;
            };
            if alg.trim().eq_ignore_ascii_case("md5") {
                let raw = val
                    .trim()
                    .strip_prefix(':')
                    .and_then(|v| v.strip_suffix(':'))
                    .and_then(|v| B64.decode(v).ok())
                    .filter(|r| r.len() == 16)
                    .ok_or_else(|| bad(name.as_str()))?;
                found.push((hex::encode(raw), name.as_str()));
            }
        }
    }
    let Some((first, _)) = found.first() else {
        return Ok(None);
    };
    if let Some((_, which)) = found.iter().find(|(m, _)| m != first) {
        return Err(ApiError::new(
            Code::BadRequest,
            format!("{which} disagrees with {}", found[0].1),
        ));
    }
    Ok(Some(first.clone()))
}
