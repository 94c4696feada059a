//! Client paths: cleaned into a relative path below the root, or refused.

use crate::core::error::{Error, Result};
use crate::core::files::TEMP_MARKER;
use std::path::PathBuf;

/// Longest path accepted, as Linux's PATH_MAX.
pub const MAX_PATH: usize = 4096;

/// A client path checked for shape: relative, no `..`, no NUL.
///
/// Symlink escapes are stopped later by the capability-based root (`cap-std`,
/// openat2 `RESOLVE_BENEATH`), never by string checks alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    rel: PathBuf,
    display: String,
}

impl RelPath {
    /// Cleans `raw`: drops empty and `.` components; refuses absolute paths, `..` and NUL.
    pub fn parse(raw: &str) -> Result<RelPath> {
        Self::parse_with(raw, false)
    }

    /// Like `parse`; `reserved` also admits the names of uploads in progress (ferry's own use).
    fn parse_with(raw: &str, reserved: bool) -> Result<RelPath> {
        if raw.contains('\0') {
            return Err(Error::forbidden("path contains a NUL byte"));
        }
        if raw.len() > MAX_PATH {
            return Err(Error::bad_request(format!(
                "a path is longer than {MAX_PATH} bytes"
            )));
        }
        if raw.starts_with('/') {
            return Err(Error::forbidden(format!(
                "{raw}: absolute paths are refused; paths are relative to the served root"
            )));
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(Error::forbidden(format!("{raw}: `..` is refused"))),
                // In-progress uploads are ferry's own: never read, replaced or removed by name.
                p if !reserved && p.contains(TEMP_MARKER) => {
                    return Err(Error::forbidden(format!(
                        "{raw}: names containing {TEMP_MARKER} are reserved for uploads in progress"
                    )));
                }
                p if p.len() > 255 => {
                    return Err(Error::bad_request(
                        "a path component is longer than 255 bytes",
                    ));
                }
                p => parts.push(p),
            }
        }
        let display = parts.join("/");
        let rel = if parts.is_empty() {
            PathBuf::from(".")
        } else {
            PathBuf::from(&display)
        };
        Ok(RelPath { rel, display })
    }

    /// The path relative to the root (`.` for the root itself).
    pub fn as_path(&self) -> &std::path::Path {
        &self.rel
    }

    /// The canonical spelling, `a/b/c` (empty for the root).
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// Whether this is the root itself.
    pub fn is_root(&self) -> bool {
        self.display.is_empty()
    }

    /// The parent directory and the final name; `None` for the root.
    pub fn split(&self) -> Option<(RelPath, &str)> {
        let (parent, name) = match self.display.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None if self.display.is_empty() => return None,
            None => ("", self.display.as_str()),
        };
        Some((RelPath::parse_with(parent, true).ok()?, name))
    }

    /// Joins a child name.
    pub fn join(&self, name: &str) -> RelPath {
        if self.is_root() {
            RelPath::parse_with(name, true).unwrap_or_else(|_| self.clone())
        } else {
            RelPath::parse_with(&format!("{}/{}", self.display, name), true)
                .unwrap_or_else(|_| self.clone())
        }
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.display.is_empty() {
            f.write_str("/")
        } else {
            f.write_str(&self.display)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::Code;

    #[test]
    fn cleans_and_refuses() {
        assert_eq!(RelPath::parse("a//./b/").unwrap().as_str(), "a/b");
        assert!(RelPath::parse("").unwrap().is_root());
        for bad in ["../x", "a/../../b", "/etc/passwd", "a\0b"] {
            assert_eq!(
                RelPath::parse(bad).unwrap_err().code,
                Code::ForbiddenPath,
                "{bad}"
            );
        }
        let p = RelPath::parse("d/e/f.txt").unwrap();
        let (parent, name) = p.split().unwrap();
        assert_eq!((parent.as_str(), name), ("d/e", "f.txt"));
    }
}
