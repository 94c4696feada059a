//! Shell lines that are one plain command, which ferry runs without the shell (as bash does
//! for `bash -c 'cat FILE'`): the shell's fork and start cost about a millisecond, a third of
//! a short command's round trip.

use crate::core::error::Result;
use crate::core::sandbox::{self, Confinement, Process};
use std::collections::BTreeMap;
use std::path::Path;

/// Words that mean something to `sh` (dash) or to bash when they start a line: builtins and
/// reserved words. A line starting with one of them is left to the shell, even where a program
/// of the same name exists (`echo`, `test`, `kill`, `time`): the builtin is what `sh -c` runs.
#[rustfmt::skip]
const SHELL_WORDS: &[&str] = &[
    ".", ":", "[", "alias", "bg", "bind", "break", "builtin", "caller", "case", "cd", "chdir",
    "command", "compgen", "complete", "compopt", "continue", "coproc", "declare", "dirs",
    "disown", "do", "done", "echo", "elif", "else", "enable", "esac", "eval", "exec", "exit",
    "export", "false", "fc", "fg", "fi", "for", "function", "getopts", "hash", "help",
    "history", "if", "in", "jobs", "kill", "let", "local", "logout", "mapfile", "popd",
    "printf", "pushd", "pwd", "read", "readarray", "readonly", "return", "select", "set",
    "shift", "shopt", "source", "suspend", "test", "then", "time", "times", "trap", "true",
    "type", "typeset", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// The words of `line` when the shell would only split it on blanks and run the first word as
/// a program: nothing but letters, digits, blanks and `-_./,:+@%=` (no quoting, expansion,
/// globbing, redirection, comment or list), a first word that is neither a builtin, a reserved
/// word nor an assignment. `None` when the line needs the shell.
pub fn plain_words(line: &str) -> Option<Vec<String>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./,:+@%=".contains(c);
    if !line.chars().all(|c| plain(c) || c == ' ' || c == '\t') {
        return None;
    }
    let words: Vec<String> = line
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let first = words.first()?;
    if first.contains('=') || SHELL_WORDS.contains(&first.as_str()) {
        return None;
    }
    Some(words)
}

/// Starts `line` without the shell when it is one plain command ([`plain_words`]) and the
/// request's variables allow it ([`shell_free_env`]). `None` when the shell must run it: the
/// line needs it, or the program did not start (missing, a script without `#!`), which the
/// shell then reports, or runs, as it always has.
pub fn start_plain(
    sandbox: &Confinement,
    line: &str,
    env: &BTreeMap<String, String>,
    cwd: &Path,
    stdin: bool,
) -> Option<Result<Process>> {
    let words = plain_words(line)?;
    if !shell_free_env(sandbox, env) {
        return None;
    }
    // The shell would have set PWD, to the directory's physical path (as `cwd` is).
    let mut env = env.clone();
    env.insert("PWD".into(), cwd.to_string_lossy().into_owned());
    let plan = sandbox
        .plan(&words[0], &words[1..], &env, cwd, stdin)
        .ok()?;
    match sandbox::start(&plan) {
        Ok(process) => Some(Ok(process)),
        // It ran, then could not be watched: ferry's own error, and no second run.
        Err(e) if e.ran => Some(Err(sandbox::spawn_error(e, &words[0]))),
        Err(_) => None,
    }
}

/// Whether a plain line may skip the shell with these variables: they name no PWD (the shell
/// sets its own), each name is one the shell passes on, and a PATH is set (the shell's default
/// search path differs from exec's).
fn shell_free_env(sandbox: &Confinement, env: &BTreeMap<String, String>) -> bool {
    let shell_name = |k: &str| {
        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with(|c: char| c.is_ascii_digit())
    };
    let path = env.contains_key("PATH") || sandbox.env().any(|(k, _)| k == "PATH");
    path && !env.contains_key("PWD") && env.keys().all(|k| shell_name(k))
}

#[cfg(test)]
mod tests {
    use super::plain_words;

    #[test]
    fn a_plain_command_is_split_into_its_words() {
        assert_eq!(
            plain_words("  cat\t/srv/a-b_c.txt  dd if=x of=y user@host:1,2+3%  "),
            Some(
                [
                    "cat",
                    "/srv/a-b_c.txt",
                    "dd",
                    "if=x",
                    "of=y",
                    "user@host:1,2+3%"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        assert_eq!(plain_words("./run.sh"), Some(vec!["./run.sh".to_string()]));
    }

    #[test]
    fn anything_the_shell_would_interpret_is_left_to_it() {
        for line in [
            "echo hi",
            "exit 3",
            "true",
            "cd /tmp",
            "if",
            "time ls",
            ": x",
            "FOO=1 env",
            "ls *.txt",
            "ls ~",
            "cat $HOME/x",
            "cat 'a b'",
            "cat \"a\"",
            "cat a\\ b",
            "ls; rm x",
            "ls && ls",
            "ls | wc",
            "ls > out",
            "ls < in",
            "sleep 1 &",
            "ls # note",
            "(ls)",
            "ls {a,b}",
            "ls\nrm x",
            "ls [ab]",
            "ls ?",
            "echo `id`",
            "ls !x",
            "",
            "   ",
        ] {
            assert_eq!(plain_words(line), None, "{line:?} needs the shell");
        }
    }
}
