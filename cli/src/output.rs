//! The one way `mover` writes text: every line for the terminal, every JSON line, every table
//! goes through here.
//!
//! Two guarantees, whatever the text holds and wherever it goes:
//!
//! - **No control characters from peers reach a terminal.** File names come from a source tree
//!   or a peer agent, error bodies from registries, messages from agents: any of them may hold
//!   escape sequences (a title change, a screen clear, a cursor move that paints a fake `ok`, an
//!   OSC 52 clipboard write). [`escape`] shows C0 controls (but newline), DEL and C1 controls
//!   (U+0080–U+009F, which some terminals obey as 8-bit escapes) as `\x1b`, `\u{9b}`. Newlines
//!   stay: our own messages span lines (a hook's last output lines, a registry's body), and a
//!   newline cannot move the cursor back over what was printed. Hook output is escaped too,
//!   although it is the user's own: one rule for everything on the terminal is easier to trust.
//!   JSON strings are escaped by serde for C0; [`json_text`] escapes DEL and C1 as `\u007f`…
//!   `\u009f` as well, so a JSON line shown on a terminal is as harmless.
//! - **Writing never fails the command.** A closed pipe (`mover … | head -1`) or a full disk
//!   behind stderr (`2>/dev/full`) must not panic (`eprintln!` and `println!` do) or change the
//!   exit code: output is dropped, the migration carries on and exits with its own code.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the command's final JSON object (a summary or report) was written.
static FINAL_WRITTEN: AtomicBool = AtomicBool::new(false);

fn is_control(c: char) -> bool {
    matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}')
}

/// `text` with its control characters escaped; newlines are kept when `newlines` is true.
#[must_use]
pub fn escape_with(text: &str, newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| is_control(c) && !(newlines && c == '\n');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

/// `text` as it may be shown on a terminal: control characters escaped, newlines kept.
#[must_use]
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_with(text, true)
}

/// Writes `text` and a newline to stderr, escaped; errors are dropped.
pub fn eprintln(text: &str) {
    let mut line = escape(text).into_owned();
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Writes `text` to stdout, escaped, as it is (add the newline yourself); errors are dropped.
pub fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(escape(text).as_bytes());
    let _ = stdout.flush();
}

/// Writes `text` and a newline to stdout, escaped; errors are dropped.
pub fn println(text: &str) {
    let mut line = escape(text).into_owned();
    line.push('\n');
    print(&line);
}

/// `value` as JSON text (pretty or one line), with DEL and C1 controls escaped as `\u00XX`.
///
/// `serde_json` escapes C0 controls in strings, but not DEL and C1. Outside strings JSON is ASCII,
/// so the replacement only ever touches string contents and keeps the value the same.
#[must_use]
pub fn json_text(value: &impl serde::Serialize, pretty: bool) -> String {
    let is_unescaped = |c: char| matches!(c, '\x7f'..='\u{9f}');
    let text = if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) };
    let text = text.expect("our JSON types serialise");
    if !text.chars().any(is_unescaped) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 12);
    for c in text.chars() {
        if is_unescaped(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes one JSON line on stdout (whole, under the stdout lock); errors are dropped.
pub fn json_line(value: &serde_json::Value) {
    let mut line = json_text(value, false);
    line.push('\n');
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(line.as_bytes());
    let _ = stdout.flush();
}

/// Writes the command's final JSON object (`summary`, `report`, `preflight`).
pub fn json_final(value: &serde_json::Value) {
    json_line(value);
    FINAL_WRITTEN.store(true, Ordering::Release);
}

/// With `--output json`, a command that fails before writing its final object still ends with
/// one: `empty` (the command's summary with nothing done) of type `kind`, carrying the error in
/// `errors`.
pub fn json_final_on_error(json: bool, kind: &str, empty: serde_json::Value, error: &anyhow::Error) {
    if !json || FINAL_WRITTEN.load(Ordering::Acquire) {
        return;
    }
    let mut value = empty;
    value["type"] = kind.into();
    value["errors"] = serde_json::json!([format!("{error:#}")]);
    json_final(&value);
}

/// Writes `mover`'s own logs to stderr; a failed write is dropped (never reported through
/// `eprintln!`, which would panic on the same closed stderr).
pub fn init_logs(filter: tracing_subscriber::EnvFilter, ansi: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false)
        .init();
}

/// Prints a panic as an internal error, without panicking again on a closed stderr.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        eprintln(&format!("error: internal error (a bug in mover, please report it): {info}"));
    }));
}

#[cfg(test)]
mod tests {
    use super::{escape, escape_with, json_text};

    #[test]
    fn controls_are_escaped() {
        assert_eq!(escape("a\x1b]0;pwned\x07b"), "a\\x1b]0;pwned\\x07b");
        assert_eq!(escape("\x1b[2J\r\tok\x7f"), "\\x1b[2J\\r\\tok\\x7f");
        assert_eq!(escape("csi \u{9b}31m"), "csi \\u{9b}31m");
        assert_eq!(escape("two\nlines"), "two\nlines");
        assert_eq!(escape_with("two\nlines", false), "two\\nlines");
        assert_eq!(escape("plain `name` é ü"), "plain `name` é ü");
    }

    #[test]
    fn json_keeps_its_value_without_raw_controls() {
        let value = serde_json::json!({"path": "a\x1b[2J\u{9b}b\x7f"});
        for pretty in [false, true] {
            let text = json_text(&value, pretty);
            assert!(!text.chars().any(|c| c.is_control() && c != '\n' && c != ' '), "{text}");
            assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), value);
        }
    }
}
