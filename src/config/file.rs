//! The config file (`ferry serve --config ferry.toml`): tokens by their SHA-256 only, with
//! roles, per-role program allowlists and public read. See `docs/ferry.example.toml`.

use crate::core::auth::{AccessConfig, Role, TokenEntry};
use crate::core::sandbox::Sandbox;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Whether requests without a token may download files.
    #[serde(default)]
    pub public_read: bool,
    /// Tokens by name.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenLine>,
    /// Settings per role.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleLine>,
    /// The command sandbox (`[exec]`); absent means its defaults.
    #[serde(default)]
    pub exec: Option<Sandbox>,
}

/// One token: `alice = { role = "write", sha256 = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLine {
    /// `read`, `write`, `exec` or `admin`.
    pub role: String,
    /// SHA-256 of the token, 64 hex digits (`ferry token new` prints it).
    pub sha256: String,
}

/// One role's settings: `[roles.exec]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleLine {
    /// The programs (argv[0]) this role may run; absent means any. A shell line runs `sh`.
    pub programs: Option<Vec<String>>,
}

/// The line `ferry token new` prints for the `[tokens]` table.
pub fn token_line(name: &str, role: Role, digest: &[u8; 32]) -> String {
    format!(
        "{name} = {{ role = \"{role}\", sha256 = \"{}\" }}",
        hex::encode(digest)
    )
}

/// Whether `name` may name a token: letters, digits, `_` and `-`, at most 64 (a bare TOML
/// key), and not `anonymous` or `legacy`, the names of the public reader and legacy clients.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "anonymous"
        && name != crate::core::auth::LEGACY
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

impl ConfigFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses and checks a config file's text.
    pub fn parse(text: &str) -> anyhow::Result<ConfigFile> {
        let file: ConfigFile = toml::from_str(text)?;
        file.access()?;
        Ok(file)
    }

    /// The access rules the file describes.
    pub fn access(&self) -> anyhow::Result<AccessConfig> {
        let mut cfg = AccessConfig {
            public_read: self.public_read,
            ..AccessConfig::default()
        };
        for (name, t) in &self.tokens {
            anyhow::ensure!(
                valid_name(name),
                "token name {name:?}: use letters, digits, '_' and '-' (at most 64), not anonymous or legacy"
            );
            let role: Role = t
                .role
                .parse()
                .map_err(|e| anyhow::anyhow!("token {name:?}: {e}"))?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(t.sha256.trim(), &mut digest).map_err(|_| {
                anyhow::anyhow!(
                    "token {name:?}: sha256 must be 64 hex digits (the file holds hashes only; \
                     `ferry token new` prints the line to add)"
                )
            })?;
            anyhow::ensure!(
                !cfg.tokens.iter().any(|e: &TokenEntry| e.digest == digest),
                "token {name:?}: the same token is listed twice"
            );
            cfg.tokens.push(TokenEntry {
                name: name.as_str().into(),
                role,
                digest,
            });
        }
        for (name, r) in &self.roles {
            let role: Role = name
                .parse()
                .map_err(|e| anyhow::anyhow!("[roles.{name}]: {e}"))?;
            if let Some(p) = &r.programs {
                anyhow::ensure!(
                    p.iter().all(|p| !p.is_empty()),
                    "[roles.{name}]: an empty program name"
                );
                cfg.programs.insert(role, p.clone());
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::auth::token_digest;

    #[test]
    fn parses_the_example() {
        let text = include_str!("../../docs/ferry.example.toml");
        let cfg = ConfigFile::parse(text).unwrap().access().unwrap();
        assert!(!cfg.tokens.is_empty());
    }

    #[test]
    fn the_exec_table_is_the_sandbox() {
        let f = ConfigFile::parse("[exec]\nmax_processes = 64\nuser = \"nobody\"\n").unwrap();
        let s = f.exec.unwrap();
        assert_eq!(
            (s.max_processes, s.user.as_deref()),
            (Some(64), Some("nobody"))
        );
        assert!(ConfigFile::parse("[exec]\nmax_procs = 1\n").is_err());
    }

    #[test]
    fn token_lines_round_trip() {
        let line = token_line("bob", Role::Write, &token_digest("t"));
        let cfg = ConfigFile::parse(&format!("[tokens]\n{line}\n"))
            .unwrap()
            .access()
            .unwrap();
        assert_eq!(&*cfg.tokens[0].name, "bob");
        assert_eq!(cfg.tokens[0].role, Role::Write);
        assert_eq!(cfg.tokens[0].digest, token_digest("t"));
    }

    #[test]
    fn refuses_plain_tokens_bad_roles_and_typos() {
        let hash = hex::encode(token_digest("t"));
        for bad in [
            "[tokens]\nbob = { role = \"write\", token = \"secret\" }".to_string(),
            format!("[tokens]\nbob = {{ role = \"root\", sha256 = \"{hash}\" }}"),
            "[tokens]\nbob = { role = \"read\", sha256 = \"zz\" }".to_string(),
            format!("[tokens]\n\"b b\" = {{ role = \"read\", sha256 = \"{hash}\" }}"),
            format!("[tokens]\nanonymous = {{ role = \"read\", sha256 = \"{hash}\" }}"),
            format!("[tokens]\nlegacy = {{ role = \"read\", sha256 = \"{hash}\" }}"),
            format!("[tokens]\n\"a.b\" = {{ role = \"read\", sha256 = \"{hash}\" }}"),
            format!(
                "[tokens]\na = {{ role = \"read\", sha256 = \"{hash}\" }}\nb = {{ role = \"admin\", sha256 = \"{hash}\" }}"
            ),
            "[roles.anonymous]\nprograms = []".to_string(),
            "public_reads = true".to_string(),
        ] {
            assert!(ConfigFile::parse(&bad).is_err(), "{bad}");
        }
    }
}
