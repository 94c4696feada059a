//! Access tokens: generation, storage and constant-time checks.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use subtle::ConstantTimeEq;

/// The file in the data dir that holds the generated token.
pub const TOKEN_FILE: &str = "token";

/// Checks presented tokens against the server's; the same check for every transport.
#[derive(Clone)]
pub struct Auth {
    digest: [u8; 32],
}

impl Auth {
    /// An authenticator for `token`.
    pub fn new(token: &str) -> Self {
        Auth {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `presented` is the token; compares digests in constant time, so length leaks nothing.
    pub fn check(&self, presented: Option<&str>) -> bool {
        let Some(p) = presented else { return false };
        let d: [u8; 32] = Sha256::digest(p.as_bytes()).into();
        bool::from(d.ct_eq(&self.digest)) && !p.is_empty()
    }
}

/// A fresh random token: 32 bytes as hex.
pub fn generate_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source works");
    hex::encode(b)
}

/// The token to use: `given`, else the one stored in `data_dir`, else a new one stored there (mode 0600).
/// The second value is true when the token was just generated (print it once).
pub fn load_or_create_token(
    given: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<(String, bool)> {
    if let Some(t) = given {
        anyhow::ensure!(!t.trim().is_empty(), "--token must not be empty");
        return Ok((t.to_string(), false));
    }
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
    let token = generate_token();
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok((token, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        let a = Auth::new("secret");
        assert!(a.check(Some("secret")));
        for bad in [
            None,
            Some(""),
            Some("secre"),
            Some("secret2"),
            Some("SECRET"),
        ] {
            assert!(!a.check(bad), "{bad:?}");
        }
    }
}
