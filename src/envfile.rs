//! Parsing and quoting of per-project `.env` files (`KEY=VALUE` lines holding a Project's secrets).
//!
//! This module owns the text format only: it does no IO and never expands variables, so `$HOME` in a
//! value stays the five characters `$HOME`. Values are secrets: no error, and no `Debug` output, may
//! contain one. [`quote`] and [`parse`] are inverses, so files this program writes read back exactly.

use std::fmt;

/// A parsed `.env` file. A key given twice keeps its first position and its last value.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct EnvFile {
    entries: Vec<(String, String)>,
    /// Where each key is in `entries`, so parsing stays linear in the file's size.
    positions: std::collections::HashMap<String, usize>,
}

impl EnvFile {
    /// The value of `key`, if the file sets it.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.positions
            .get(key)
            .map(|at| self.entries[*at].1.as_str())
    }

    /// The effective `(key, value)` pairs, in the order each key first appears.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn set(&mut self, key: &str, value: String) {
        match self.positions.get(key) {
            Some(at) => self.entries[*at].1 = value,
            None => {
                self.positions.insert(key.to_owned(), self.entries.len());
                self.entries.push((key.to_owned(), value));
            }
        }
    }
}

impl fmt::Debug for EnvFile {
    // Keys only: a derived Debug would print secrets into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, _)| (k, format_args!("<redacted>"))))
            .finish()
    }
}

/// Why a `.env` file could not be read. Never carries a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub(crate) struct EnvParseError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// Parses `.env` text: `KEY=VALUE` lines, optional `export `, `#` comments, `'…'` and `"…"` values.
pub(crate) fn parse(text: &str) -> Result<EnvFile, EnvParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut env = EnvFile::default();
    for (index, raw) in text.split('\n').enumerate() {
        let error = |reason: String| EnvParseError {
            line: index + 1,
            reason,
        };
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = strip_export(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(error("expected KEY=VALUE".to_owned()));
        };
        let key = key.trim();
        if !valid_key(key) {
            return Err(error(format!(
                "invalid key {key:?}: use letters, digits and _, not starting with a digit"
            )));
        }
        let value = parse_value(value.trim()).map_err(|reason| error(reason.to_owned()))?;
        env.set(key, value);
    }
    Ok(env)
}

/// Renders `value` so that [`parse`] reads it back unchanged: bare when that is safe, else quoted.
pub(crate) fn quote(value: &str) -> String {
    if !value.is_empty() && value.chars().all(is_bare) {
        return value.to_owned();
    }
    if !value.contains(['\'', '\n', '\r']) {
        return format!("'{value}'");
    }
    let mut out = String::with_capacity(value.len() + 8);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `key` is a usable variable name: `^[A-Za-z_][A-Za-z0-9_]*$`.
pub(crate) fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_bare(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-./:@+,%".contains(c)
}

/// Drops a leading `export` keyword; `export=1` is the key `export`, not the keyword.
fn strip_export(line: &str) -> &str {
    match line.strip_prefix("export") {
        Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
        _ => line,
    }
}

/// Reads a trimmed value. Errors are fixed phrases so no part of the value can leak into them.
fn parse_value(value: &str) -> Result<String, &'static str> {
    if let Some(inner) = value.strip_prefix('\'') {
        let Some((literal, rest)) = inner.split_once('\'') else {
            return Err("unterminated single quote");
        };
        check_after_quote(rest)?;
        return Ok(literal.to_owned());
    }
    if let Some(inner) = value.strip_prefix('"') {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '"' => {
                    check_after_quote(&inner[at + 1..])?;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e @ ('\\' | '"' | '$'))) => out.push(e),
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err("unterminated double quote");
    }
    Ok(cut_inline_comment(value).to_owned())
}

/// A closing quote may be followed only by whitespace and an optional ` #comment`.
fn check_after_quote(rest: &str) -> Result<(), &'static str> {
    let after = rest.trim_start();
    if after.is_empty() || (after.starts_with('#') && after.len() < rest.len()) {
        Ok(())
    } else {
        Err("unexpected text after the closing quote")
    }
}

/// `#` starts a comment only after whitespace, so `pass#word` keeps its `#`.
fn cut_inline_comment(value: &str) -> &str {
    let mut prev_space = false;
    for (at, c) in value.char_indices() {
        if c == '#' && prev_space {
            return value[..at].trim_end();
        }
        prev_space = c.is_whitespace();
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> String {
        let env = parse(text).expect("parses");
        env.get("K").expect("K is set").to_owned()
    }

    #[test]
    fn reads_plain_pairs_with_crlf_and_bom() {
        let env = parse("\u{feff}A=1\r\nB = two words \r\n\r\nC=\r\n").expect("parses");
        assert_eq!(env.get("A"), Some("1"));
        assert_eq!(env.get("B"), Some("two words"));
        assert_eq!(env.get("C"), Some(""));
        assert!(env.get("C").is_some());
        assert!(env.get("D").is_none());
        assert_eq!(one("K='x'\r\n"), "x");
        assert_eq!(one("K=\"x\"\r"), "x");
    }

    #[test]
    fn accepts_export_prefix() {
        let env = parse("export A=1\nexport\tB=2\nexport=3\n").expect("parses");
        assert_eq!(env.get("A"), Some("1"));
        assert_eq!(env.get("B"), Some("2"));
        assert_eq!(env.get("export"), Some("3"));
    }

    #[test]
    fn skips_comments_and_cuts_inline_comments() {
        let env = parse(
            "# top\n   # indented\nA=1 # note\nB=pass#word\nC='q' # note\nD=\"q\"\t# note\nE=#x\n",
        )
        .expect("parses");
        assert_eq!(env.iter().count(), 5);
        assert_eq!(env.get("A"), Some("1"));
        assert_eq!(env.get("B"), Some("pass#word"));
        assert_eq!(env.get("C"), Some("q"));
        assert_eq!(env.get("D"), Some("q"));
        assert_eq!(env.get("E"), Some("#x"));
    }

    #[test]
    fn single_quotes_are_literal_and_double_quotes_escape() {
        assert_eq!(one(r#"K='a\nb "c" $D'"#), r#"a\nb "c" $D"#);
        assert_eq!(one(r#"K="a\nb\t\"c\" \$D \\ \r""#), "a\nb\t\"c\" $D \\ \r");
        assert_eq!(one(r#"K="keep \q both""#), r"keep \q both");
        assert_eq!(one("K='  padded  '"), "  padded  ");
    }

    #[test]
    fn dollar_is_never_expanded() {
        assert_eq!(one("K=$HOME/x"), "$HOME/x");
        assert_eq!(one("K='${HOME}'"), "${HOME}");
        assert_eq!(one("K=\"$HOME\""), "$HOME");
    }

    #[test]
    fn splits_at_the_first_equals_sign() {
        assert_eq!(one("K=a=b==\n"), "a=b==");
        assert_eq!(one("K=='='"), "='='");
    }

    #[test]
    fn many_keys_and_duplicates_keep_order_and_last_values() {
        let mut text: String = (0..20_000).map(|i| format!("K{i}=v{i}\n")).collect();
        text.push_str("K7=again\n");
        let env = parse(&text).expect("parses");
        assert_eq!(env.iter().count(), 20_000);
        assert_eq!(env.get("K19999"), Some("v19999"));
        assert_eq!(env.get("K7"), Some("again"));
        assert_eq!(env.iter().nth(7), Some(("K7", "again")));
    }

    #[test]
    fn later_duplicates_win_in_first_position() {
        let env = parse("A=1\nB=2\nA=3\n").expect("parses");
        assert_eq!(env.get("A"), Some("3"));
        let pairs: Vec<_> = env.iter().collect();
        assert_eq!(pairs, [("A", "3"), ("B", "2")]);
    }

    #[test]
    fn bad_key_names_line_and_key_but_not_value() {
        let err = parse("A=1\n\n1BAD=hunter2\n").expect_err("bad key");
        assert_eq!(err.line, 3);
        let text = err.to_string();
        assert!(text.starts_with("line 3: "), "{text}");
        assert!(text.contains("1BAD"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(parse("MY-KEY=x").is_err());
        assert!(parse("=x").is_err());
    }

    #[test]
    fn line_without_equals_does_not_echo_it() {
        let err = parse("A=1\nsk-live-hunter2\n").expect_err("no equals");
        assert_eq!(
            err,
            EnvParseError {
                line: 2,
                reason: "expected KEY=VALUE".to_owned()
            }
        );
    }

    #[test]
    fn rejects_unterminated_quotes_and_trailing_text() {
        for (text, reason) in [
            ("K='hunter2", "unterminated single quote"),
            ("K=\"hunter2", "unterminated double quote"),
            ("K=\"hunter2\\\"", "unterminated double quote"),
            ("K='hunter2'x", "unexpected text after the closing quote"),
            ("K='hunter2'#x", "unexpected text after the closing quote"),
        ] {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, 1);
            assert_eq!(err.reason, reason, "{text}");
        }
    }

    #[test]
    fn debug_redacts_values() {
        let env = parse("TOKEN=hunter2\n").expect("parses");
        let shown = format!("{env:?}");
        assert!(
            shown.contains("TOKEN") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn quote_picks_the_plainest_form() {
        assert_eq!(quote("git@github.com:o/r.git"), "git@github.com:o/r.git");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote("it's $x\n"), "\"it's \\$x\\n\"");
    }

    const NASTY: &[&str] = &[
        "",
        " ",
        "  lead and trail\t",
        "it's",
        "say \"hi\"",
        "'\"",
        "$HOME ${HOME} $(id)",
        "back\\slash\\",
        "line1\nline2\n",
        "cr\r\nlf\r",
        "#not a comment",
        "a #b",
        "x' #y",
        "=a=b=",
        "\\n \\$ \\\" \\q",
        "tab\there",
        "ünïcödé ✓ \u{a0}nbsp",
        "export K=v",
        "\u{feff}bom",
    ];

    #[test]
    fn quote_round_trips_nasty_values() {
        for value in NASTY {
            let text = format!("K={}\n", quote(value));
            assert_eq!(one(&text), *value, "{text:?}");
            let text = format!("export  K = {}  # c\r\n", quote(value));
            assert_eq!(one(&text), *value, "{text:?}");
        }
    }

    #[test]
    fn quote_round_trips_generated_values() {
        const ALPHABET: &[char] = &[
            'a', ' ', '\t', '\'', '"', '\\', '$', '#', '=', '\n', '\r', 'é', 'n',
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2000 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let len = (seed >> 59) as usize;
            let value: String = (0..len)
                .map(|i| ALPHABET[((seed >> (i * 4 % 56)) as usize) % ALPHABET.len()])
                .collect();
            let text = format!("K={}\n", quote(&value));
            assert_eq!(one(&text), value, "{text:?}");
        }
    }
}
