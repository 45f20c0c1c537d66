//! Exclude patterns with rsync's rules ("INCLUDE/EXCLUDE PATTERN RULES" in `man rsync`).
//!
//! A path is relative to the volume root, `/`-separated, as the scan walks it. For each pattern:
//! - a leading `/` anchors it at the root; otherwise it matches the end of the path;
//! - without a `/` (a trailing one aside) and without `**`, it matches the last name, at any
//!   depth; with an inner `/` it matches as many trailing names as it has, and with `**` (not
//!   at its start) it may match from any `/` on; a leading `**` matches from the root too;
//! - a trailing `/` matches directories only; a trailing `/***` matches a directory and
//!   everything in it;
//! - `*` matches anything but `/`, `?` one byte but `/`, `[...]` a class (`[!...]`, `[^...]`,
//!   ranges, `[:alpha:]` and the other POSIX classes; never `/`), `**` anything, `/` included;
//!   `\` makes the next byte literal. A pattern without `*`, `?` or `[` is compared as is.
//!
//! Patterns are bytes, as names are. Matching is a dynamic programme over pattern tokens and
//! path bytes: time bounded by their product whatever the pattern (no backtracking blow-up on
//! `*a*a*a*…`), and patterns from a peer are bounded in number and size ([`MAX_EXCLUDES`],
//! [`MAX_EXCLUDE_LEN`]) before any is compiled. An excluded directory is not descended into
//! (by the scan) and never deleted (by the receiver), nor is anything excluded inside a
//! directory that is.

use crate::confine::display_bytes;

/// Most patterns one session may carry.
pub const MAX_EXCLUDES: usize = 1000;
/// Longest pattern, in bytes.
pub const MAX_EXCLUDE_LEN: usize = 4096;

/// Why patterns were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExcludeError {
    /// More than [`MAX_EXCLUDES`] patterns.
    #[error("{count} exclude patterns: at most {MAX_EXCLUDES} are allowed")]
    TooMany {
        /// How many were given.
        count: usize,
    },
    /// A pattern longer than [`MAX_EXCLUDE_LEN`].
    #[error("an exclude pattern of {len} bytes (`{start}…`): at most {MAX_EXCLUDE_LEN} are allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// Its first bytes.
        start: String,
    },
    /// A pattern that cannot be read.
    #[error("invalid exclude pattern `{pattern}`: {reason}")]
    Invalid {
        /// The pattern (lossy).
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A set of compiled exclude patterns; empty excludes nothing.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// The pattern without its leading and trailing `/`.
    literal: Vec<u8>,
    /// Tokens of `literal` when it has wildcards.
    tokens: Option<Vec<Token>>,
    anchored: bool,
    dir_only: bool,
    /// Matched against the whole path rather than the last name.
    whole_path: bool,
    /// Starts with `**`: matched against the path with a `/` before it.
    wild2_prefix: bool,
    /// Ends with `***`: a directory matches with a `/` after it.
    wild3_suffix: bool,
    /// Where a match may start.
    start: Start,
}

#[derive(Debug, Clone, Copy)]
enum Start {
    /// At the start of the text.
    Beginning,
    /// At the start of the last N names (none if the path has fewer).
    LastNames(usize),
    /// At the start or after any `/`.
    AnySlash,
}

#[derive(Debug, Clone)]
enum Token {
    Byte(u8),
    /// `?`
    Any,
    /// `*`
    Star,
    /// `**` (or more stars)
    StarStar,
    /// `[...]`: the bytes it holds, and whether it is negated.
    Class(Box<[u64; 4]>, bool),
}

impl Token {
    fn matches_one(&self, byte: u8) -> bool {
        match self {
            Token::Byte(b) => *b == byte,
            Token::Any => byte != b'/',
            Token::Class(set, negated) => byte != b'/' && (contains(set, byte) != *negated),
            Token::Star | Token::StarStar => unreachable!("stars match runs"),
        }
    }
}

fn contains(set: &[u64; 4], byte: u8) -> bool {
    set[usize::from(byte >> 6)] & (1 << (byte & 63)) != 0
}

fn insert(set: &mut [u64; 4], byte: u8) {
    set[usize::from(byte >> 6)] |= 1 << (byte & 63);
}

impl Excludes {
    /// Checks and compiles `patterns`: at most [`MAX_EXCLUDES`] of at most [`MAX_EXCLUDE_LEN`]
    /// bytes each (checked before anything is compiled), none empty, none with a NUL byte, an
    /// unclosed `[`, an unknown `[:class:]` or a trailing lone `\` (rsync would take those as
    /// matching nothing, silently).
    pub fn new<P: AsRef<[u8]>>(patterns: &[P]) -> Result<Self, ExcludeError> {
        if patterns.len() > MAX_EXCLUDES {
            return Err(ExcludeError::TooMany { count: patterns.len() });
        }
        if let Some(long) = patterns.iter().map(AsRef::as_ref).find(|p| p.len() > MAX_EXCLUDE_LEN) {
            return Err(ExcludeError::TooLong { len: long.len(), start: display_bytes(&long[..40]) });
        }
        let rules = patterns.iter().map(|p| Rule::new(p.as_ref())).collect::<Result<_, _>>()?;
        Ok(Excludes { rules })
    }

    /// Whether no pattern was given.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `path` (relative to the root, `/`-separated, not empty) is excluded. `is_dir`
    /// tells whether it is a directory; it is asked only when a pattern's match depends on it.
    pub fn excludes(&self, path: &[u8], is_dir: impl FnOnce() -> bool) -> bool {
        let mut is_dir = Some(is_dir);
        let mut known = None;
        let mut dir = || *known.get_or_insert_with(|| is_dir.take().expect("asked once")());
        self.rules.iter().any(|rule| {
            let matched = rule.matches(path, false) || (rule.wild3_suffix && dir() && rule.matches(path, true));
            matched && (!rule.dir_only || dir())
        })
    }
}

impl Rule {
    fn new(pattern: &[u8]) -> Result<Self, ExcludeError> {
        let invalid = |reason| ExcludeError::Invalid { pattern: display_bytes(pattern), reason };
        if pattern.contains(&0) {
            return Err(invalid("it holds a NUL byte, which no name can"));
        }
        let (body, dir_only) = match pattern.strip_suffix(b"/") {
            Some(body) if pattern.len() > 1 => (body, true),
            _ => (pattern, false),
        };
        let wild = body.iter().any(|b| b"*?[".contains(b));
        let wild2 = wild && body.windows(2).any(|w| w == b"**");
        let wild2_prefix = wild && body.starts_with(b"**");
        let wild3_suffix = wild && body.ends_with(b"***");
        let slashes = body.split(|&b| b == b'/').count() - 1;
        let (literal, anchored) = match body.strip_prefix(b"/") {
            Some(rest) => (rest.to_vec(), true),
            None => (body.to_vec(), false),
        };
        if literal.is_empty() {
            return Err(invalid("it is empty, and matches nothing"));
        }
        let tokens = if wild { Some(tokenize(&literal).map_err(invalid)?) } else { None };
        let start = if anchored || wild2_prefix || (slashes == 0 && !wild2) {
            Start::Beginning
        } else if !wild2 {
            Start::LastNames(slashes + 1)
        } else {
            Start::AnySlash
        };
        Ok(Rule {
            literal,
            tokens,
            anchored,
            dir_only,
            whole_path: slashes > 0 || wild2,
            wild2_prefix,
            wild3_suffix,
            start,
        })
    }

    /// rsync's `rule_matches`; `dir_suffix` adds the `/` a directory gets for a `/***` pattern.
    fn matches(&self, path: &[u8], dir_suffix: bool) -> bool {
        let name = if self.whole_path { path } else { path.rsplit(|&b| b == b'/').next().unwrap_or(path) };
        let Some(tokens) = &self.tokens else {
            // Without wildcards, a plain comparison (backslashes included, as rsync does).
            let pattern = self.literal.as_slice();
            return if self.anchored || !self.whole_path {
                name == pattern
            } else {
                name.ends_with(pattern) && (name.len() == pattern.len() || name[name.len() - pattern.len() - 1] == b'/')
            };
        };
        let mut text = Vec::with_capacity(name.len() + 2);
        if self.wild2_prefix && !self.anchored {
            text.push(b'/');
        }
        text.extend_from_slice(name);
        if dir_suffix {
            text.push(b'/');
        }
        match self.start {
            Start::Beginning => wildmatch(tokens, &text, |j| j == 0),
            Start::AnySlash => wildmatch(tokens, &text, |j| j == 0 || text[j - 1] == b'/'),
            Start::LastNames(count) => {
                // The start of the last `count` names: after the `count`th slash from the end,
                // or the whole text if it has exactly `count` names.
                let mut seen = 0;
                let mut begin = None;
                for (at, _) in text.iter().enumerate().rev().filter(|(_, b)| **b == b'/') {
                    seen += 1;
                    if seen == count {
                        begin = Some(at + 1);
                        break;
                    }
                }
                match begin {
                    Some(begin) => wildmatch(tokens, &text[begin..], |j| j == 0),
                    None if seen + 1 == count => wildmatch(tokens, &text, |j| j == 0),
                    None => false,
                }
            }
        }
    }
}

/// Whether `tokens` match all of `text` from a start `starts` allows: `live[j]` says that the
/// tokens so far can match `text[s..j]` for an allowed start `s`.
fn wildmatch(tokens: &[Token], text: &[u8], starts: impl Fn(usize) -> bool) -> bool {
    let mut live: Vec<bool> = (0..=text.len()).map(starts).collect();
    let mut next = vec![false; text.len() + 1];
    for token in tokens {
        match token {
            Token::Star | Token::StarStar => {
                let slash_ok = matches!(token, Token::StarStar);
                next[0] = live[0];
                for j in 1..=text.len() {
                    next[j] = live[j] || (next[j - 1] && (slash_ok || text[j - 1] != b'/'));
                }
            }
            one => {
                next[0] = false;
                for j in 1..=text.len() {
                    next[j] = live[j - 1] && one.matches_one(text[j - 1]);
                }
            }
        }
        std::mem::swap(&mut live, &mut next);
        if !live.contains(&true) {
            return false;
        }
    }
    live[text.len()]
}

/// Reads a pattern into tokens, as rsync's `wildmatch` reads it.
fn tokenize(pattern: &[u8]) -> Result<Vec<Token>, &'static str> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' => {
                i += 1;
                let &byte = pattern.get(i).ok_or("it ends with a lone `\\`; write `\\\\` for a backslash")?;
                tokens.push(Token::Byte(byte));
            }
            b'?' => tokens.push(Token::Any),
            b'*' => {
                let run = pattern[i..].iter().take_while(|&&b| b == b'*').count();
                tokens.push(if run == 1 { Token::Star } else { Token::StarStar });
                i += run - 1;
            }
            b'[' => {
                let (token, end) = class(pattern, i + 1)?;
                tokens.push(token);
                i = end;
            }
            byte => tokens.push(Token::Byte(byte)),
        }
        i += 1;
    }
    Ok(tokens)
}

const UNCLOSED: &str = "a `[` is not closed by a `]`; write `\\[` for a literal one";

/// The class that starts at `i` (after its `[`), and the index of its closing `]`. The first
/// member may be `]`; `a-z` is a range; `[:name:]` a POSIX class.
fn class(pattern: &[u8], mut i: usize) -> Result<(Token, usize), &'static str> {
    let at = |i: usize| pattern.get(i).copied().unwrap_or(0);
    let mut set = [0u64; 4];
    let negated = matches!(at(i), b'!' | b'^');
    if negated {
        i += 1;
    }
    let mut previous = 0u8;
    loop {
        let mut byte = at(i);
        match byte {
            0 => return Err(UNCLOSED),
            b'\\' => {
                i += 1;
                byte = at(i);
                if byte == 0 {
                    return Err(UNCLOSED);
                }
                insert(&mut set, byte);
            }
            b'-' if previous != 0 && at(i + 1) != 0 && at(i + 1) != b']' => {
                i += 1;
                let mut last = at(i);
                if last == b'\\' {
                    i += 1;
                    last = at(i);
                    if last == 0 {
                        return Err(UNCLOSED);
                    }
                }
                for member in previous..=last {
                    insert(&mut set, member);
                }
                byte = 0;
            }
            b'[' if at(i + 1) == b':' => {
                let name_start = i + 2;
                let close = pattern[name_start..].iter().position(|&b| b == b']').ok_or(UNCLOSED)? + name_start;
                if close > name_start && pattern[close - 1] == b':' {
                    let name = &pattern[name_start..close - 1];
                    let test = posix_class(name).ok_or("unknown character class: use one of `[:alpha:]`, `[:digit:]`, `[:alnum:]`, `[:space:]`, `[:upper:]`, `[:lower:]`, `[:punct:]`, `[:xdigit:]`, `[:blank:]`, `[:cntrl:]`, `[:graph:]`, `[:print:]`")?;
                    for member in 1..=255u8 {
                        if test(member) {
                            insert(&mut set, member);
                        }
                    }
                    i = close;
                    byte = 0;
                } else {
                    // Not a class name after all: `[` is a member, and reading goes on at `:`.
                    insert(&mut set, b'[');
                }
            }
            _ => insert(&mut set, byte),
        }
        previous = byte;
        i += 1;
        if at(i) == b']' {
            return Ok((Token::Class(Box::new(set), negated), i));
        }
    }
}

fn posix_class(name: &[u8]) -> Option<fn(u8) -> bool> {
    Some(match name {
        b"alnum" => |b: u8| b.is_ascii_alphanumeric(),
        b"alpha" => |b: u8| b.is_ascii_alphabetic(),
        b"blank" => |b: u8| b == b' ' || b == b'\t',
        b"cntrl" => |b: u8| b.is_ascii_control(),
        b"digit" => |b: u8| b.is_ascii_digit(),
        b"graph" => |b: u8| b.is_ascii_graphic(),
        b"lower" => |b: u8| b.is_ascii_lowercase(),
        b"print" => |b: u8| b.is_ascii_graphic() || b == b' ',
        b"punct" => |b: u8| b.is_ascii_punctuation(),
        b"space" => |b: u8| b.is_ascii_whitespace() || b == 0x0b,
        b"upper" => |b: u8| b.is_ascii_uppercase(),
        b"xdigit" => |b: u8| b.is_ascii_hexdigit(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
