//! The `ferry` command line: `serve` and the client subcommands.

/// `eprintln!` that never panics: a line to standard error, through [`say`].
macro_rules! say {
    ($($t:tt)*) => {
        $crate::cli::say(format_args!($($t)*))
    };
}

mod files;
mod run;

pub use run::say;

use crate::config::ServeArgs;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// ferry: run commands and move files on a machine, MD5-verified end to end.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the server's variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the server: the raw TCP protocol and the HTTP plane (files, exec, API, metrics).
    Serve(ServeArgs),
    /// Run a command on the server; exits with its exit code.
    Exec(ExecArgs),
    /// Download a file, verifying its MD5.
    Get(GetArgs),
    /// Upload a file, verified by the server against its MD5.
    Put(PutArgs),
    /// List a directory on the server.
    Ls(LsArgs),
    /// An interactive prompt that runs each line on the server.
    Shell(Conn),
    /// Make access tokens for the config file (`ferry token new --role write`).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// The `ferry token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh token and the line that adds it to the config file's `[tokens]` table.
    New(TokenNewArgs),
}

/// Flags of `ferry token new`.
#[derive(Debug, Args)]
pub struct TokenNewArgs {
    /// What the token may do: read, write, exec or admin.
    #[arg(long)]
    pub role: crate::core::auth::Role,
    /// A name for logs, sessions and the audit (default: the role and a few hex digits).
    #[arg(long)]
    pub name: Option<String>,
}

/// Prints a fresh token for `a` and its config line, in one write; 141 when the reader of
/// standard output is gone (as `ferry ls`).
pub fn token_new(a: &TokenNewArgs) -> anyhow::Result<i32> {
    use crate::config::file::{token_line, valid_name};
    use crate::core::auth::{generate_token, token_digest};
    use std::io::Write;
    let token = generate_token();
    let digest = token_digest(&token);
    let name = match &a.name {
        Some(n) => n.clone(),
        None => format!("{}-{}", a.role, &hex::encode(digest)[..8]),
    };
    anyhow::ensure!(
        valid_name(&name),
        "--name {name:?}: use letters, digits, '_' and '-' (at most 64), not anonymous or legacy"
    );
    let text = format!(
        "# The token of {name:?} (role {}): give it to its user; ferry keeps only its hash.\n\
         {token}\n\
         # Add this line under [tokens] in the config file, then restart ferry:\n\
         {}\n",
        a.role,
        token_line(&name, a.role, &digest)
    );
    match run::WaitingStdout.write_all(text.as_bytes()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(run::EXIT_BROKEN_PIPE),
        Err(e) => Err(e.into()),
    }
}

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Server address of the TCP protocol.
    #[arg(long, env = "FERRY_ADDR", default_value = "127.0.0.1:8888")]
    pub addr: String,
    /// Access token (printed by `ferry serve` at first start, kept in its data dir).
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Connect over TLS, trusting the system's CA certificates (or only --ca).
    #[arg(long, env = "FERRY_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub tls: bool,
    /// PEM file of the CA (or the self-signed certificate) to trust instead; implies --tls.
    #[arg(long, env = "FERRY_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// Flags of `ferry exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Server address and token.
    #[command(flatten)]
    pub conn: Conn,
    /// Run the arguments directly as argv, not as one `sh -c` line.
    #[arg(long)]
    pub argv: bool,
    /// Working directory under the served root.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Timeout in seconds (the server's limit applies too).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Extra environment variable for the command, NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Never send local stdin (by default it is sent when it is not a terminal).
    #[arg(short = 'n', long)]
    pub no_stdin: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Flags of `ferry get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Server address and token.
    #[command(flatten)]
    pub conn: Conn,
    /// Path on the server, relative to the served root.
    pub remote: String,
    /// Local file (default: the remote file's name in the current directory; `-` for stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Resume from a partial local download.
    #[arg(short = 'c', long = "continue")]
    pub resume: bool,
}

/// Flags of `ferry put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Server address and token.
    #[command(flatten)]
    pub conn: Conn,
    /// Local file.
    pub local: PathBuf,
    /// Path on the server (default: the local file's name); ending in `/` puts it in that directory.
    pub remote: Option<String>,
}

/// Flags of `ferry ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Server address and token.
    #[command(flatten)]
    pub conn: Conn,
    /// Directory on the server (default: the root).
    #[arg(default_value = "")]
    pub dir: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a client subcommand; returns the process exit code.
pub async fn run_client(cmd: Command) -> anyhow::Result<i32> {
    match cmd {
        Command::Serve(_) => unreachable!("serve is started by main"),
        Command::Token(TokenCommand::New(a)) => token_new(&a),
        Command::Exec(a) => run::exec(a).await,
        Command::Shell(c) => run::shell(c).await,
        Command::Get(a) => files::get(a).await,
        Command::Put(a) => files::put(a).await,
        Command::Ls(a) => files::ls(a).await,
    }
}
