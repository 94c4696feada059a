//! The download planner (`plan`): conditional and `Range` headers against a file.
//!
//! Input: `size: u64 le`, `mtime: u64 le`, then up to four `\n`-separated header values
//! (Range, If-Range, If-None-Match, If-Modified-Since; empty: absent). Properties: no panic; a
//! partial answer is non-empty and lies within the file; a single `bytes=` range spelled from
//! the input's numbers gets the answer RFC 9110 gives it.
#![no_main]

use ferry::http::range::{Conditions, Plan, Validators, plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap());
    let mtime_s = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let v = Validators {
        etag: "\"0123456789abcdef0123456789abcdef\"",
        mtime_s,
        size,
    };
    let text = String::from_utf8_lossy(&data[16..]);
    let mut fields = text.split('\n').map(|f| (!f.is_empty()).then_some(f));
    let mut next = || fields.next().flatten();
    let c = Conditions {
        range: next(),
        if_range: next(),
        if_none_match: next(),
        if_modified_since: next(),
    };
    let p = plan(c, v);
    check(p, size);
    if c.range.is_none() {
        assert!(matches!(p, Plan::Full | Plan::NotModified));
    }

    // The same numbers as a well-formed single range, unconditional: compare with RFC 9110.
    let a = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let b = size.rotate_left(17) ^ mtime_s;
    for (spelled, expected) in [
        (format!("bytes={a}-{b}"), closed(a, b, size)),
        (format!("bytes={a}-"), open(a, size)),
        (format!("bytes=-{a}"), suffix(a, size)),
    ] {
        let c = Conditions {
            range: Some(&spelled),
            ..Default::default()
        };
        let got = plan(c, v);
        check(got, size);
        assert_eq!(got, expected, "{spelled} on {size} bytes");
    }
});

fn check(p: Plan, size: u64) {
    if let Plan::Partial { start, len } = p {
        assert!(len > 0 && start < size, "{p:?} of {size}");
        let end = start.checked_add(len).expect("no overflow");
        assert!(end <= size, "{p:?} ends past {size}");
    }
}

/// `bytes=s-e`: from s to e inclusive, the end clamped to the file.
fn closed(s: u64, e: u64, size: u64) -> Plan {
    if s <= e && s < size {
        Plan::Partial {
            start: s,
            len: e.min(size - 1) - s + 1,
        }
    } else {
        Plan::Unsatisfiable
    }
}

/// `bytes=s-`: from s to the end.
fn open(s: u64, size: u64) -> Plan {
    if s < size {
        Plan::Partial {
            start: s,
            len: size - s,
        }
    } else {
        Plan::Unsatisfiable
    }
}

/// `bytes=-n`: the last n bytes (all of them if n is larger); `-0` is unsatisfiable.
fn suffix(n: u64, size: u64) -> Plan {
    if n == 0 || size == 0 {
        Plan::Unsatisfiable
    } else {
        let len = n.min(size);
        Plan::Partial {
            start: size - len,
            len,
        }
    }
}
