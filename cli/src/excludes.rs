//! Exclude rules as rsync reads them from `--exclude`, `--exclude-from` and a plan's
//! `exclude:`, turned into the patterns the engine matches ([`mover_engine::exclude`]).
//!
//! A rule is a pattern, optionally written `- PATTERN` (rsync's exclude prefix). Include rules
//! (`+ PATTERN`) and the list-clearing `!` are refused rather than taken as patterns: mover has
//! excludes only. A file holds one rule a line; blank lines and lines starting with `;` or `#`
//! are skipped, and `\r` ends a line too, as rsync reads it.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use mover_engine::display_bytes;
use mover_engine::exclude::Excludes;

use crate::UsageError;

/// The pattern of one rule, or why the rule is refused.
pub fn rule(text: &[u8]) -> Result<Vec<u8>, String> {
    if text.starts_with(b"+ ") {
        return Err(format!(
            "`{}` is an include rule, and mover has excludes only: write the patterns to leave out",
            display_bytes(text)
        ));
    }
    if text == b"!" {
        return Err("`!` (clear the list) is not supported: leave out the rules you do not want".into());
    }
    let pattern = text.strip_prefix(b"- ").unwrap_or(text);
    Excludes::new(&[pattern]).map_err(|error| error.to_string())?;
    Ok(pattern.to_vec())
}

/// The rules of an exclude file's bytes, with the line of each refused one.
fn rules_of_file(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut patterns = Vec::new();
    for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
        for line in line.split(|&b| b == b'\r') {
            if line.is_empty() || line.starts_with(b";") || line.starts_with(b"#") {
                continue;
            }
            patterns.push(rule(line).map_err(|error| format!("line {}: {error}", number + 1))?);
        }
    }
    Ok(patterns)
}

/// The patterns of `--exclude` rules and `--exclude-from` files (`-` is standard input),
/// checked as a whole: a usage error names the rule and what is wrong with it.
pub fn from_args(excludes: &[OsString], files: &[PathBuf]) -> Result<Vec<Vec<u8>>, UsageError> {
    let mut patterns = Vec::new();
    for text in excludes {
        patterns.push(rule(text.as_bytes()).map_err(|error| UsageError(format!("`--exclude`: {error}")))?);
    }
    for file in files {
        let bytes = if file.as_os_str() == "-" {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
        } else {
            std::fs::read(file)
        };
        let bytes = bytes
            .map_err(|error| UsageError(format!("`--exclude-from`: cannot read `{}`: {error}", file.display())))?;
        let rules = rules_of_file(&bytes)
            .map_err(|error| UsageError(format!("`--exclude-from` `{}` {error}", file.display())))?;
        patterns.extend(rules);
    }
    Excludes::new(&patterns).map_err(|error| UsageError(error.to_string()))?;
    Ok(patterns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_skip_comments_and_blank_lines_and_take_rsyncs_prefixes() {
        let rules = rules_of_file(b"# caches\n; also\n\ncache/\r\n- *.tmp\n/lost+found\n").unwrap();
        assert_eq!(rules, [&b"cache/"[..], b"*.tmp", b"/lost+found"]);
        let error = rules_of_file(b"a\n+ keep\n").unwrap_err();
        assert!(error.starts_with("line 2: `+ keep` is an include rule"), "{error}");
        assert!(rules_of_file(b"!\n").is_err());
        assert!(rules_of_file(b"x[\n").unwrap_err().contains("not closed"));
    }
}
