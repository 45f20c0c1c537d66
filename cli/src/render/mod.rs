//! What `mover` shows, in one place: the [`Printer`] picks the mode once (JSON lines with
//! `--output json`, bars on a terminal, else plain lines) and does all the writing, through
//! [`crate::output`]; a renderer per kind of work decides what to show: [`copy`] (`mover copy`),
//! [`image`] (`mover image copy|sync`), [`plan`] (`mover plan run`). Errors are printed here
//! too: `error:`, `Caused by:` lines and, from [`crate::hints`], an optional `hint:`.

pub mod copy;
pub mod image;
pub mod plan;

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressDrawTarget};
use mover_engine::progress::Event;

use crate::args::{GlobalArgs, OutputFormat};
use crate::output;

/// How a command shows its work, picked once.
enum Mode {
    /// JSON lines on stdout.
    Json,
    /// Progress bars on stderr; text is written above them.
    Bars(MultiProgress),
    /// Plain lines: data on stdout, everything else on stderr.
    Plain,
}

/// The one printer: the mode, and every write a renderer makes.
pub struct Printer {
    mode: Mode,
}

impl Printer {
    /// Picks the mode: JSON with `--output json`; bars when `bars` is allowed, progress is not
    /// turned off and stderr is a terminal; else plain lines.
    #[must_use]
    pub fn new(global: &GlobalArgs, bars: bool) -> Printer {
        let mode = if global.output == OutputFormat::Json {
            Mode::Json
        } else if bars && !global.no_progress && std::io::stderr().is_terminal() {
            Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)))
        } else {
            Mode::Plain
        };
        Printer { mode }
    }

    /// True with `--output json`.
    #[must_use]
    pub fn is_json(&self) -> bool {
        matches!(self.mode, Mode::Json)
    }

    /// Where bars go, when they are shown.
    #[must_use]
    pub fn bars(&self) -> Option<&MultiProgress> {
        match &self.mode {
            Mode::Bars(multi) => Some(multi),
            _ => None,
        }
    }

    /// An engine event as a JSON line, with `tag` (`("volume", name)`) added; JSON mode only.
    pub fn event(&self, event: &Event, tag: Option<(&str, &str)>) {
        if self.is_json() {
            let mut value = typed(event);
            if let Some((key, name)) = tag {
                value[key] = name.into();
            }
            output::json_line(&value);
        }
    }

    /// `value` as a JSON line of type `kind`; JSON mode only.
    pub fn json(&self, kind: &str, value: serde_json::Value) {
        if self.is_json() {
            output::json_line(&with_type(value, kind));
        }
    }

    /// The command's final JSON object, of type `kind`; JSON mode only.
    pub fn json_final(&self, kind: &str, value: serde_json::Value) {
        if self.is_json() {
            output::json_final(&with_type(value, kind));
        }
    }

    /// A line of text on stderr, above the bars on a terminal.
    pub fn note(&self, text: &str) {
        match &self.mode {
            // `MultiProgress::suspend` panics when the terminal cannot be written; `println`
            // reports it.
            Mode::Bars(multi) => {
                let _ = multi.println(output::escape(text));
            }
            _ => output::eprintln(text),
        }
    }

    /// A line of data on stdout, with the bars out of the way on a terminal.
    pub fn data(&self, text: &str) {
        match &self.mode {
            Mode::Bars(multi) => multi.suspend(|| output::println(text)),
            _ => output::println(text),
        }
    }

    /// A line of text on stderr once the bars are gone (a summary, its errors).
    #[allow(clippy::unused_self, reason = "every write a renderer makes goes through its printer")]
    pub fn after(&self, text: &str) {
        output::eprintln(text);
    }

    /// Takes the bars off the screen (before a summary or a report).
    pub fn clear(&self) {
        if let Mode::Bars(multi) = &self.mode {
            let _ = multi.clear();
        }
    }
}

fn with_type(mut value: serde_json::Value, kind: &str) -> serde_json::Value {
    value["type"] = kind.into();
    value
}

/// `{"progress": {...}}` becomes `{"type": "progress", ...}` (ripgrep's `type` envelope).
pub(crate) fn typed(event: &Event) -> serde_json::Value {
    let value = serde_json::to_value(event).expect("events serialise");
    match value {
        serde_json::Value::Object(map) if map.len() == 1 => {
            let (kind, fields) = map.into_iter().next().expect("one entry");
            let mut fields = match fields {
                serde_json::Value::Object(fields) => fields,
                other => serde_json::Map::from_iter([("value".to_owned(), other)]),
            };
            fields.insert("type".to_owned(), kind.into());
            serde_json::Value::Object(fields)
        }
        other => other,
    }
}

/// Says that the command was cancelled (SIGINT or SIGTERM) and how to go on; with
/// `--output json`, also the summary line machines wait for (`plan run` writes its report
/// instead, and only the line).
pub fn print_cancelled(json: bool) {
    if json {
        output::json_final(&serde_json::json!({"type": "summary", "cancelled": true, "errors": [CANCELLED]}));
    }
    output::eprintln(CANCELLED);
}

/// What a cancelled command says, whatever it was doing.
pub const CANCELLED: &str = "cancelled; run the same command again to resume (files already copied are kept)";

/// Prints an error, its causes and, when we know one, a hint.
pub fn print_error(error: &anyhow::Error) {
    let mut text = format!("error: {error}");
    let causes: Vec<String> = error.chain().skip(1).map(ToString::to_string).collect();
    if !causes.is_empty() {
        text.push_str("\n\nCaused by:");
        for cause in causes {
            text.push_str("\n    ");
            text.push_str(&cause);
        }
    }
    if let Some(hint) = crate::hints::for_error(error) {
        text.push_str("\n\nhint: ");
        text.push_str(&hint);
    }
    output::eprintln(&text);
}
