//! Quoting for POSIX `sh`.
//!
//! The SSH backend renders typed actions to shell text that a remote `sh`
//! parses again, so every argument must come out of that parse byte for byte.
//! [`quote`] uses the single-quote form: inside `'...'` POSIX sh gives no byte
//! a special meaning, so the only character that needs care is `'` itself,
//! which is written as `'\''` (close the quote, an escaped quote, reopen).
//!
//! Guarantees:
//! - every string without NUL quotes to a word that `sh` reads back exactly,
//!   whatever it contains (newlines, `$`, backticks, globs, `~`, unicode);
//! - NUL is refused with [`QuoteError`], because no POSIX shell word and no
//!   `execve` argument can carry it;
//! - words made only of characters that are inert to `sh` are returned
//!   unchanged (borrowed), so rendered commands stay readable.

use std::borrow::Cow;

/// Why a string cannot be written as a shell word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The string holds a NUL byte at `offset`; C strings (argv, `sh -c`)
    /// end at NUL, so it cannot be passed to a remote command.
    #[error("cannot quote {text:?} for sh: NUL byte at offset {offset}")]
    Nul {
        /// The offending string, shortened to its first 64 characters.
        text: String,
        /// Byte offset of the first NUL.
        offset: usize,
    },
}

/// Quotes `word` so that POSIX `sh` reads it back as exactly one word equal
/// to `word`.
///
/// Words that are non-empty and made only of `A-Z a-z 0-9 _ @ % + = : , . / -`
/// are returned as they are, except those shaped like a variable assignment
/// (`NAME=value`), which `sh` would take as an assignment when the word comes
/// first on a command line. Everything else is single-quoted.
pub fn quote(word: &str) -> Result<Cow<'_, str>, QuoteError> {
    if let Some(offset) = word.bytes().position(|b| b == 0) {
        return Err(QuoteError::Nul {
            text: word.chars().take(64).collect(),
            offset,
        });
    }
    if is_inert(word) {
        return Ok(Cow::Borrowed(word));
    }
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('\'');
    for c in word.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    Ok(Cow::Owned(quoted))
}

/// Quotes every element of `argv` and joins them with single spaces, giving
/// a command line that `sh` splits back into exactly `argv`.
pub fn join<I, S>(argv: I) -> Result<String, QuoteError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut line = String::new();
    for (i, arg) in argv.into_iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(&quote(arg.as_ref())?);
    }
    Ok(line)
}

/// True when `word` can be written bare: no character of it is special to
/// `sh` in any position, and it is not an assignment word.
fn is_inert(word: &str) -> bool {
    !word.is_empty()
        && word.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'@' | b'%' | b'+' | b'=' | b':' | b',' | b'.' | b'/' | b'-'
                )
        })
        && !looks_like_assignment(word)
}

/// True for `NAME=...` where NAME is a valid shell variable name: as the first
/// word of a simple command `sh` would assign instead of running it.
fn looks_like_assignment(word: &str) -> bool {
    let Some((name, _)) = word.split_once('=') else {
        return false;
    };
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    /// Runs `printf %s <quoted>` through the real `/bin/sh` and returns what
    /// it printed.
    fn sh_echo(quoted: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {quoted}"))
            .output()
            .expect("run sh");
        assert!(out.status.success(), "sh failed: {:?}", out);
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs `printf '%s\0' <line>` and splits the output back into argv.
    fn sh_split(line: &str) -> Vec<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\0' {line}"))
            .output()
            .expect("run sh");
        assert!(out.status.success(), "sh failed: {:?}", out);
        let text = String::from_utf8(out.stdout).expect("utf-8 output");
        let mut args: Vec<String> = text.split('\0').map(str::to_owned).collect();
        // printf terminates every argument with NUL, so the last piece is empty.
        assert_eq!(args.pop().as_deref(), Some(""));
        args
    }

    const TRICKY: &[&str] = &[
        "",
        " ",
        "plain",
        "two words",
        "it's",
        "'",
        "''",
        "\"double\"",
        "back\\slash",
        "new\nline",
        "tab\there",
        "$HOME",
        "${PATH}",
        "$(id)",
        "`id`",
        "*",
        "?",
        "[a-z]",
        "~",
        "~root",
        "#comment",
        "a;b",
        "a&&b",
        "a|b",
        "a>b",
        "<in",
        "FOO=bar",
        "--flag=value",
        "-n",
        "ünïcødé ☃ 日本",
        "\u{1b}[31mred",
        "'\\''",
        "!bang",
        "{a,b}",
    ];

    #[test]
    fn tricky_strings_round_trip_through_real_sh() {
        for s in TRICKY {
            let q = quote(s).unwrap();
            assert_eq!(sh_echo(&q), *s, "quoted as {q}");
        }
    }

    #[test]
    fn join_splits_back_into_the_same_argv() {
        let argv: Vec<&str> = TRICKY.to_vec();
        let line = join(&argv).unwrap();
        assert_eq!(sh_split(&line), argv);
    }

    #[test]
    fn inert_words_stay_bare_and_others_are_quoted() {
        assert!(matches!(
            quote("/etc/kubernetes/pki").unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            quote("--cluster-cidr=10.244.0.0/16").unwrap(),
            "--cluster-cidr=10.244.0.0/16"
        );
        assert_eq!(quote("").unwrap(), "''");
        assert_eq!(quote("a b").unwrap(), "'a b'");
        assert_eq!(quote("it's").unwrap(), "'it'\\''s'");
        // As a first word this would be an assignment, not a command.
        assert_eq!(quote("FOO=bar").unwrap(), "'FOO=bar'");
        assert_eq!(join(["FOO=bar", "x"]).unwrap(), "'FOO=bar' x");
    }

    #[test]
    fn assignment_shaped_command_name_is_run_not_assigned() {
        // `FOO=bar` quoted as a command name must be looked up as a command,
        // so sh reports it missing (127) instead of silently assigning.
        let out = Command::new("sh")
            .arg("-c")
            .arg(join(["FOO=bar"]).unwrap())
            .output()
            .expect("run sh");
        assert_eq!(out.status.code(), Some(127));
    }

    #[test]
    fn nul_is_rejected_with_its_offset() {
        let err = quote("ab\0cd").unwrap_err();
        assert_eq!(
            err,
            QuoteError::Nul {
                text: "ab\0cd".into(),
                offset: 2
            }
        );
        assert!(join(["ok", "b\0"]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sh_reads_back_any_string_without_nul(s in "[^\\x00]{0,40}") {
            let q = quote(&s).unwrap();
            prop_assert_eq!(sh_echo(&q), s);
        }

        #[test]
        fn sh_splits_joined_argv_back(argv in proptest::collection::vec("[^\\x00]{0,12}", 1..6)) {
            let line = join(&argv).unwrap();
            prop_assert_eq!(sh_split(&line), argv);
        }
    }
}
