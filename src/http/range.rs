//! What a download answers given its conditional and `Range` headers: 200, 206, 304 or 416.
//!
//! Several ranges in one request get the whole file (200): RFC 9110 lets a server ignore
//! `Range`, and it keeps ferry clear of multipart bodies and many-range amplification.

use http_range_header::{EndPosition, StartPosition};

/// The validators of a file, as its headers show them.
#[derive(Debug, Clone, Copy)]
pub struct Validators<'a> {
    /// The strong ETag, quoted: `"<md5 hex>"`.
    pub etag: &'a str,
    /// Last modification, unix seconds.
    pub mtime_s: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The request headers that decide the answer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditions<'a> {
    /// `If-None-Match`.
    pub if_none_match: Option<&'a str>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a str>,
    /// `Range`.
    pub range: Option<&'a str>,
    /// `If-Range`.
    pub if_range: Option<&'a str>,
}

/// What to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 304: the client's copy is current.
    NotModified,
    /// 200: the whole file.
    Full,
    /// 206: `len` bytes from `start`.
    Partial {
        /// First byte.
        start: u64,
        /// Number of bytes.
        len: u64,
    },
    /// 416: the range lies outside the file.
    Unsatisfiable,
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn date_s(s: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(s).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Decides the answer to a GET or HEAD.
pub fn plan(c: Conditions<'_>, v: Validators<'_>) -> Plan {
    if let Some(inm) = c.if_none_match {
        if etag_matches(inm, v.etag) {
            return Plan::NotModified;
        }
    } else if let Some(since) = c.if_modified_since.and_then(date_s)
        && v.mtime_s <= since
    {
        return Plan::NotModified;
    }
    let Some(range) = c.range else {
        return Plan::Full;
    };
    if let Some(ir) = c.if_range {
        let current = if ir.starts_with('"') {
            ir == v.etag
        } else {
            date_s(ir) == Some(v.mtime_s)
        };
        if !current {
            return Plan::Full;
        }
    }
    if !range.trim_start().starts_with("bytes=") {
        return Plan::Full; // another unit: ignored
    }
    let Ok(parsed) = http_range_header::parse_range_header(range.trim()) else {
        return Plan::Unsatisfiable;
    };
    if parsed.ranges.len() != 1 {
        return Plan::Full;
    }
    let r = parsed.ranges[0];
    let size = v.size;
    let resolved = match (r.start, r.end) {
        // A suffix longer than the file means the whole file (the parser refuses `-0`).
        (StartPosition::FromLast(n), _) if size > 0 => Some((size - n.min(size), n.min(size))),
        (StartPosition::FromLast(_), _) => None,
        (StartPosition::Index(s), EndPosition::LastByte) => (s < size).then(|| (s, size - s)),
        (StartPosition::Index(s), EndPosition::Index(e)) => {
            (s <= e && s < size).then(|| (s, e.min(size - 1) - s + 1))
        }
    };
    match resolved {
        Some((start, len)) => Plan::Partial { start, len },
        None => Plan::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Validators<'static> = Validators {
        etag: "\"0123\"",
        mtime_s: 1_700_000_000,
        size: 1000,
    };

    fn range(r: &str) -> Plan {
        plan(
            Conditions {
                range: Some(r),
                ..Default::default()
            },
            V,
        )
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-0"), Plan::Partial { start: 0, len: 1 });
        assert_eq!(
            range("bytes=-500"),
            Plan::Partial {
                start: 500,
                len: 500
            }
        );
        assert_eq!(
            range("bytes=-5000"),
            Plan::Partial {
                start: 0,
                len: 1000
            }
        );
        assert_eq!(
            range("bytes=990-"),
            Plan::Partial {
                start: 990,
                len: 10
            }
        );
        assert_eq!(
            range("bytes=900-5000"),
            Plan::Partial {
                start: 900,
                len: 100
            }
        );
        assert_eq!(range("bytes=500-100"), Plan::Unsatisfiable);
        assert_eq!(range("bytes=1000-"), Plan::Unsatisfiable);
        assert_eq!(range("bytes=-0"), Plan::Unsatisfiable);
        assert_eq!(range("bytes=x-1"), Plan::Unsatisfiable);
        assert_eq!(range("bytes=0-1,5-6"), Plan::Full);
        assert_eq!(range("items=0-1"), Plan::Full);
        let empty = Validators { size: 0, ..V };
        let c = Conditions {
            range: Some("bytes=0-0"),
            ..Default::default()
        };
        assert_eq!(plan(c, empty), Plan::Unsatisfiable);
    }

    #[test]
    fn conditionals() {
        let c = Conditions {
            if_none_match: Some("\"aa\", \"0123\""),
            ..Default::default()
        };
        assert_eq!(plan(c, V), Plan::NotModified);
        let c = Conditions {
            if_none_match: Some("\"aa\""),
            if_modified_since: Some("Sun, 06 Nov 2044 08:49:37 GMT"),
            ..Default::default()
        };
        assert_eq!(plan(c, V), Plan::Full, "If-None-Match wins over the date");
        let c = Conditions {
            if_modified_since: Some("Sun, 06 Nov 2044 08:49:37 GMT"),
            ..Default::default()
        };
        assert_eq!(plan(c, V), Plan::NotModified);
        let c = Conditions {
            range: Some("bytes=0-9"),
            if_range: Some("\"old\""),
            ..Default::default()
        };
        assert_eq!(
            plan(c, V),
            Plan::Full,
            "a stale If-Range gets the whole file"
        );
        let c = Conditions {
            range: Some("bytes=0-9"),
            if_range: Some("\"0123\""),
            ..Default::default()
        };
        assert_eq!(plan(c, V), Plan::Partial { start: 0, len: 10 });
    }
}
