//! Who may do what: tokens with roles, and the one permission check every transport goes
//! through (TCP hellos, HTTP requests and WebSocket upgrades all call [`Auth::authenticate`],
//! and every core operation calls [`Principal::require`]).

mod limit;
mod token;

pub use limit::{BURST, FailureLimiter, REFILL};
pub use token::{Proven, TOKEN_FILE, generate_token, load_or_create_token, token_digest};

use crate::core::error::{Code, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a token may do; each role may do everything the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// No token, with `--public-read`: downloads only.
    Anonymous,
    /// List, stat and download files.
    Read,
    /// Also upload and delete files.
    Write,
    /// Also run commands and open terminals.
    Exec,
    /// Also read the audit log and recordings, and see and resume everyone's sessions.
    Admin,
}

impl Role {
    /// The role's name, as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Anonymous => "anonymous",
            Role::Read => "read",
            Role::Write => "write",
            Role::Exec => "exec",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "exec" => Ok(Role::Exec),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {s:?}: use read, write, exec or admin"
            )),
        }
    }
}

/// An operation that needs a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read a file's bytes.
    Download,
    /// List a directory or stat a path; see the live registry and metrics.
    Browse,
    /// Create, replace or delete files.
    Write,
    /// Run a command or open a terminal.
    Exec,
    /// Read the audit log and terminal recordings; see and resume other users' sessions.
    Admin,
}

impl Action {
    /// The least role that may do this.
    pub fn min_role(self) -> Role {
        match self {
            Action::Download => Role::Anonymous,
            Action::Browse => Role::Read,
            Action::Write => Role::Write,
            Action::Exec => Role::Exec,
            Action::Admin => Role::Admin,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Action::Download => "download files",
            Action::Browse => "list files or see sessions",
            Action::Write => "upload or delete files",
            Action::Exec => "run commands or open terminals",
            Action::Admin => "read the audit log or others' sessions",
        }
    }
}

/// Who is acting: a named token with its role, or the anonymous reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`anonymous` for the public reader).
    pub name: Arc<str>,
    /// What it may do.
    pub role: Role,
    /// The programs (argv[0]) it may run, when its role has an allowlist.
    pub programs: Option<Arc<[String]>>,
}

impl Principal {
    /// A principal with every permission and no program allowlist (for the core's own tests).
    pub fn admin(name: &str) -> Principal {
        Principal {
            name: name.into(),
            role: Role::Admin,
            programs: None,
        }
    }

    /// Whether this principal may do `action`.
    pub fn allows(&self, action: Action) -> bool {
        self.role >= action.min_role()
    }

    /// `Ok` when this principal may do `action`; else `unauthorized` for the anonymous reader
    /// (a token would help) and `forbidden` for a token whose role is too low.
    pub fn require(&self, action: Action) -> Result<()> {
        if self.allows(action) {
            return Ok(());
        }
        if self.role == Role::Anonymous {
            return Err(Error::new(
                Code::Unauthorized,
                format!(
                    "anonymous access allows downloads only: a token is needed to {}",
                    action.describe()
                ),
            ));
        }
        Err(Error::new(
            Code::Forbidden,
            format!(
                "the role {} of {:?} may not {} (needs {})",
                self.role,
                self.name,
                action.describe(),
                action.min_role()
            ),
        ))
    }

    /// `Ok` when this principal may run the program `argv0` (a shell line runs `sh`) with
    /// `env_vars` variables of its own: a role with a program list may set none, since
    /// `LD_PRELOAD`, `PATH` or `BASH_ENV` would let any listed program run anything.
    pub fn require_program(&self, argv0: &str, env_vars: usize) -> Result<()> {
        self.require(Action::Exec)?;
        if self.programs.is_some() && env_vars > 0 {
            return Err(Error::new(
                Code::Forbidden,
                format!(
                    "the role {} runs listed programs only, and may not set their environment",
                    self.role
                ),
            ));
        }
        match &self.programs {
            Some(allow) if !program_allowed(allow, argv0) => Err(Error::new(
                Code::Forbidden,
                format!(
                    "the role {} may not run {argv0:?}; it may run: {}",
                    self.role,
                    allow.join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Whether `argv0` is on the allowlist: only an exact match counts. A bare name (`ls`) is
/// looked up in the server's `PATH`, so it cannot name a file in the served root (`./ls`); a
/// path (`/usr/bin/git`) allows only itself. A shell line runs `sh`.
pub fn program_allowed(allow: &[String], argv0: &str) -> bool {
    !argv0.is_empty() && allow.iter().any(|a| a == argv0)
}

/// A configured token: its name, role and digest.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    /// A name for logs, the registry and the audit.
    pub name: Arc<str>,
    /// What the token may do.
    pub role: Role,
    /// SHA-256 of the token.
    pub digest: [u8; 32],
}

/// Who may connect, and what each role may run.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// The accepted tokens.
    pub tokens: Vec<TokenEntry>,
    /// Whether requests without a token may download files.
    pub public_read: bool,
    /// Per-role allowlists of programs (argv[0]); a role not listed may run anything.
    pub programs: BTreeMap<Role, Vec<String>>,
    /// Failed authentications an address may make in a row before it must wait.
    pub failure_burst: u32,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            tokens: Vec::new(),
            public_read: false,
            programs: BTreeMap::new(),
            failure_burst: BURST,
        }
    }
}

impl AccessConfig {
    /// One admin token named `admin`: the set-up without a config file.
    pub fn single_admin(token: &str) -> AccessConfig {
        AccessConfig {
            tokens: vec![TokenEntry {
                name: "admin".into(),
                role: Role::Admin,
                digest: token_digest(token),
            }],
            ..AccessConfig::default()
        }
    }
}

/// Checks presented tokens and limits failed attempts per peer; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<[(TokenEntry, Arc<Principal>)]>,
    anonymous: Option<Arc<Principal>>,
    legacy: Arc<Principal>,
    limiter: Arc<FailureLimiter>,
}

/// The principal of the legacy line protocol's clients, which carry no token.
pub const LEGACY: &str = "legacy";

impl Auth {
    /// Who a legacy line-protocol client is (it carries no token; its address was checked):
    /// `legacy`, with the `exec` role and that role's program allowlist.
    pub fn legacy(&self) -> Arc<Principal> {
        self.legacy.clone()
    }

    /// An authenticator for `cfg`.
    pub fn new(cfg: &AccessConfig) -> Self {
        let principal = |name: &str, role: Role| {
            Arc::new(Principal {
                name: name.into(),
                role,
                programs: cfg.programs.get(&role).map(|p| p.clone().into()),
            })
        };
        Auth {
            tokens: cfg
                .tokens
                .iter()
                .map(|t| (t.clone(), principal(&t.name, t.role)))
                .collect(),
            anonymous: cfg
                .public_read
                .then(|| principal("anonymous", Role::Anonymous)),
            legacy: principal(LEGACY, Role::Exec),
            limiter: Arc::new(FailureLimiter::new(cfg.failure_burst, REFILL)),
        }
    }

    /// The principal of `presented` coming from `peer`. No token gives the anonymous reader
    /// when public read is on; a wrong token counts against the peer, and a peer with too many
    /// recent failures gets `rate_limited` whatever it presents.
    pub fn authenticate(&self, peer: IpAddr, presented: Option<&str>) -> Result<Arc<Principal>> {
        let presented = presented.filter(|p| !p.is_empty());
        if presented.is_none()
            && let Some(anon) = &self.anonymous
        {
            return Ok(anon.clone());
        }
        let hit = presented.map(|p| self.lookup(p));
        // A missing token is no guess: it is refused without costing an attempt.
        let allowed = match hit {
            None => self.limiter.peek(peer),
            Some(_) => self.limiter.take(peer),
        };
        match (allowed, hit) {
            (Ok(()), Some(Some(principal))) => {
                self.limiter.refund(peer);
                Ok(principal)
            }
            (Ok(()), None) => Err(Error::new(Code::Unauthorized, "missing token")),
            (Ok(()), Some(None)) => Err(Error::new(Code::Unauthorized, "wrong token")),
            (Err(wait), hit) => {
                // Wrong guesses while limited keep the address limited; the right token
                // is refused too, but costs nothing.
                if matches!(hit, Some(None)) {
                    self.limiter.failed(peer);
                }
                Err(limited(wait))
            }
        }
    }

    /// As [`Self::authenticate`], for a connection that sends its token with every request
    /// (HTTP keep-alive): the token it proved before is recognised without its digest, and is
    /// refused the same way while the address is limited.
    pub fn authenticate_on(
        &self,
        peer: IpAddr,
        presented: &str,
        proven: &Proven,
    ) -> Result<Arc<Principal>> {
        if let Some(who) = proven.recall(presented) {
            self.limiter.peek(peer).map_err(limited)?;
            return Ok(who);
        }
        let who = self.authenticate(peer, Some(presented))?;
        if !presented.is_empty() {
            proven.remember(presented, who.clone());
        }
        Ok(who)
    }

    /// The principal of a token, if it is one of ours. Every entry is compared, in constant
    /// time, so the answer's timing tells nothing.
    fn lookup(&self, presented: &str) -> Option<Arc<Principal>> {
        let d = token_digest(presented);
        let mut hit = None;
        for (entry, principal) in self.tokens.iter() {
            if bool::from(d.ct_eq(&entry.digest)) {
                hit = Some(principal.clone());
            }
        }
        hit
    }

    /// The anonymous reader, when public read is on.
    pub fn anonymous(&self) -> Option<Arc<Principal>> {
        self.anonymous.clone()
    }
}

/// The answer to an address with too many recent failures.
fn limited(wait: std::time::Duration) -> Error {
    Error::new(
        Code::RateLimited,
        format!(
            "too many failed authentications from this address; retry in {} s",
            wait.as_secs().max(1)
        ),
    )
}

#[cfg(test)]
mod tests;
