//! Shell lines that are one plain command, which ferry runs without the shell (as bash does
//! for `bash -c 'cat FILE'`): the shell's fork and start cost about a millisecond, a third of
//! a short command's round trip.

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
