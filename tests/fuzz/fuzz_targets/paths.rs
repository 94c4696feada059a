//! The client path cleaner (`RelPath`).
//!
//! Input: a path, optionally `\n` and a child name to join. Properties: no panic; an accepted
//! path has no `..`, no NUL, is relative, and joined to a root stays under it, lexically;
//! its canonical spelling parses to itself; `split` and `join` agree.
#![no_main]

use ferry::core::paths::{MAX_PATH, RelPath};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (raw, child) = match text.split_once('\n') {
        Some((r, c)) => (r, Some(c)),
        None => (text, None),
    };
    let Ok(p) = RelPath::parse(raw) else {
        return;
    };
    check(&p);
    assert!(raw.len() <= MAX_PATH);
    assert_eq!(
        RelPath::parse(p.as_str()).ok().as_ref(),
        Some(&p),
        "canonical form reparses"
    );
    if let Some((parent, name)) = p.split() {
        check(&parent);
        assert!(!name.is_empty() && !name.contains('/'));
        assert_eq!(parent.join(name), p);
    } else {
        assert!(p.is_root());
    }
    if let Some(child) = child {
        // Joining never climbs out: either a deeper path or, refused, the same one.
        let j = p.join(child);
        check(&j);
        assert!(j.as_path().starts_with(p.as_path()) || p.is_root());
    }
});

fn check(p: &RelPath) {
    let s = p.as_str();
    assert!(!s.contains('\0'));
    assert!(!s.starts_with('/'));
    assert!(
        s.split('/')
            .all(|c| c != ".." && c != "." && (s.is_empty() || !c.is_empty()))
    );
    let rel = p.as_path();
    assert!(rel.is_relative());
    assert!(
        rel.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
        "{rel:?}"
    );
    let root = Path::new("/srv/root");
    let joined = root.join(rel);
    assert!(joined.starts_with(root), "{joined:?}");
    assert!(
        joined
            .strip_prefix(root)
            .unwrap()
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
        "{joined:?} leaves the root"
    );
}
