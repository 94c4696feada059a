//! The MD5 of a file in HTTP headers, both ways: what ferry announces (`X-Checksum-Md5`,
//! `Repr-Digest`) and what a client may send with an upload (those, `Content-MD5`,
//! `Content-Digest`).

use crate::core::checksum::is_md5_hex;
use crate::core::error::Code;
use crate::http::ApiError;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use foldhash::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, UNIX_EPOCH};

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
    if let Some(v) = repr_digest(md5_hex) {
        h.insert(REPR_DIGEST.clone(), v);
    }
}

/// `Repr-Digest` of an MD5 hex: `md5=:` base64 `:`.
fn repr_digest(md5_hex: &str) -> Option<HeaderValue> {
    let mut raw = [0u8; 16];
    hex::decode_to_slice(md5_hex, &mut raw).ok()?;
    let mut v = String::with_capacity(30);
    v.push_str("md5=:");
    B64.encode_string(raw, &mut v);
    v.push(':');
    Some(HeaderValue::try_from(v).expect("base64 is ASCII"))
}

/// The headers that name one version of a file: its MD5 in three forms and its mtime. Made
/// once per MD5 and mtime and kept, as a download of a small file spent a tenth of its work
/// formatting them (hex, base64, quotes, the date).
#[derive(Clone)]
pub struct VersionHeaders {
    /// `ETag`: the MD5 hex, quoted.
    pub etag: HeaderValue,
    /// `X-Checksum-Md5`.
    pub md5: HeaderValue,
    /// `Repr-Digest`.
    pub repr: Option<HeaderValue>,
    /// `Last-Modified`.
    pub modified: HeaderValue,
}

/// Versions whose headers are kept, at most (about 300 bytes each); past it the cache starts
/// over.
const VERSIONS_KEPT: usize = 1024;

impl VersionHeaders {
    /// The headers of the version with the MD5 `md5_hex` last modified at `mtime_s` (unix
    /// seconds).
    pub fn of(md5_hex: &str, mtime_s: u64) -> VersionHeaders {
        static KEPT: LazyLock<Mutex<HashMap<(u128, u64), VersionHeaders>>> =
            LazyLock::new(Mutex::default);
        let Ok(md5) = u128::from_str_radix(md5_hex, 16) else {
            return VersionHeaders::make(md5_hex, mtime_s);
        };
        if let Some(v) = KEPT.lock().unwrap().get(&(md5, mtime_s)) {
            return v.clone();
        }
        let v = VersionHeaders::make(md5_hex, mtime_s);
        let mut kept = KEPT.lock().unwrap();
        if kept.len() >= VERSIONS_KEPT {
            kept.clear();
        }
        kept.insert((md5, mtime_s), v.clone());
        v
    }

    fn make(md5_hex: &str, mtime_s: u64) -> VersionHeaders {
        let ascii = |s: String| HeaderValue::try_from(s).expect("an MD5 hex and a date are ASCII");
        let modified = UNIX_EPOCH + Duration::from_secs(mtime_s);
        VersionHeaders {
            etag: ascii(format!("\"{md5_hex}\"")),
            md5: ascii(md5_hex.to_string()),
            repr: repr_digest(md5_hex),
            modified: ascii(httpdate::fmt_http_date(modified)),
        }
    }

    /// The ETag as text, for the conditional headers of a request.
    pub fn etag_str(&self) -> &str {
        self.etag.to_str().unwrap_or_default()
    }

    /// Sets the four headers in `h`.
    pub fn set(self, h: &mut HeaderMap) {
        h.insert(X_CHECKSUM_MD5.clone(), self.md5);
        if let Some(r) = self.repr {
            h.insert(REPR_DIGEST.clone(), r);
        }
        h.insert(header::ETAG, self.etag);
        h.insert(header::LAST_MODIFIED, self.modified);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept headers are those made afresh, per version: another mtime or MD5 is another
    /// entry, never the first one's values.
    #[test]
    fn version_headers_are_made_per_md5_and_mtime() {
        let md5 = "d41d8cd98f00b204e9800998ecf8427e";
        let a = VersionHeaders::of(md5, 1_700_000_000);
        let again = VersionHeaders::of(md5, 1_700_000_000);
        assert_eq!(a.etag, "\"d41d8cd98f00b204e9800998ecf8427e\"");
        assert_eq!(a.md5, md5);
        assert_eq!(a.repr.as_ref().unwrap(), "md5=:1B2M2Y8AsgTpgAmY7PhCfg==:");
        assert_eq!(a.modified, "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(again.etag, a.etag);
        assert_eq!(again.modified, a.modified);
        let later = VersionHeaders::of(md5, 1_700_000_001);
        assert_eq!(later.modified, "Tue, 14 Nov 2023 22:13:21 GMT");
        let other = VersionHeaders::of("0123456789abcdef0123456789abcdef", 1_700_000_000);
        assert_eq!(other.etag, "\"0123456789abcdef0123456789abcdef\"");
        let mut h = HeaderMap::new();
        a.set(&mut h);
        assert_eq!(h[header::ETAG], "\"d41d8cd98f00b204e9800998ecf8427e\"");
        assert_eq!(h[&X_CHECKSUM_MD5], md5);
        assert_eq!(h[&REPR_DIGEST], "md5=:1B2M2Y8AsgTpgAmY7PhCfg==:");
        assert_eq!(h[header::LAST_MODIFIED], "Tue, 14 Nov 2023 22:13:20 GMT");
    }
}
