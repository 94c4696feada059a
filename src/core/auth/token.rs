//! Access tokens: generation, storage and their stored form (a SHA-256 digest).

use super::Principal;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

/// The file in the data dir that holds the generated token.
pub const TOKEN_FILE: &str = "token";

/// The SHA-256 digest of a token: all the server keeps of a configured token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token a connection last proved, and whose it is: its next requests with the same token
/// skip the digest. Tokens are fixed while the server runs, so a proven one stays good for the
/// connection's life.
#[derive(Default)]
pub struct Proven(Mutex<Option<ProvenToken>>);

/// A token as presented, and whose it is.
type ProvenToken = (Box<[u8]>, Arc<Principal>);

impl Proven {
    /// Whose `presented` is, if it is the token this connection proved (compared in constant
    /// time).
    pub fn recall(&self, presented: &str) -> Option<Arc<Principal>> {
        let proven = self.0.lock().unwrap();
        let (token, who) = proven.as_ref()?;
        bool::from(token.ct_eq(presented.as_bytes())).then(|| who.clone())
    }

    /// Remembers that `presented` is `who`'s token.
    pub fn remember(&self, presented: &str, who: Arc<Principal>) {
        *self.0.lock().unwrap() = Some((presented.as_bytes().into(), who));
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
