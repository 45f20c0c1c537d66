//! What `mover` shows: a progress bar on a terminal, JSON lines with `--output json`, nothing
//! otherwise; errors as `error:`, `Caused by:` lines and an optional `hint:`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mover_engine::progress::{Event, Reporter, Summary};

use crate::args::{GlobalArgs, OutputFormat};
use crate::output;

/// Renders engine events.
pub struct Printer {
    mode: Mode,
    /// Text: list each change (`-i`, or a dry run) on stdout. JSON lists them all the same.
    changes: bool,
}

enum Mode {
    /// JSON lines on stdout.
    Json,
    /// A progress bar on stderr, and the rate at which content is being sent.
    Bar(ProgressBar, Mutex<SendRate>),
    /// Only warnings, on stderr.
    Quiet,
}

impl Printer {
    /// Picks the renderer once; `changes`: list each change to the target on stdout.
    pub fn new(global: &GlobalArgs, changes: bool) -> Printer {
        Printer { mode: Mode::new(global), changes }
    }
}

impl Mode {
    fn new(global: &GlobalArgs) -> Mode {
        if global.output == OutputFormat::Json {
            return Mode::Json;
        }
        if global.no_progress || !std::io::stderr().is_terminal() {
            return Mode::Quiet;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {bytes:>10}/{total_bytes:<10} {wide_bar} ETA {eta:<4} {msg}")
                .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Mode::Bar(bar, Mutex::new(SendRate::default()))
    }
}

impl Printer {
    /// Prints the end-of-run summary (JSON: the last line; text: on a terminal, with `-v`, and
    /// after a dry run).
    pub fn summary(&self, summary: &Summary, verbose: bool) {
        match &self.mode {
            Mode::Json => {
                let mut value = serde_json::to_value(summary).expect("summary serialises");
                value["type"] = "summary".into();
                output::json_final(&value);
            }
            Mode::Bar(bar, _) => {
                bar.finish_and_clear();
                print_summary_text(summary);
            }
            Mode::Quiet if verbose || summary.dry_run => print_summary_text(summary),
            Mode::Quiet => {}
        }
        if !matches!(self.mode, Mode::Json) {
            for what in &summary.not_preserved {
                output::eprintln(&format!("warning: not preserved: {what}"));
            }
            for error in &summary.errors {
                output::eprintln(&format!("error: {error}"));
            }
        }
    }

    /// Clears the bar before an error is printed.
    pub fn abandon(&self) {
        if let Mode::Bar(bar, _) = &self.mode {
            bar.abandon();
        }
    }
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

/// One line: what moved, what was deleted, what it cost, in the units the bar uses; after a
/// dry run, what a copy would do.
fn print_summary_text(summary: &Summary) {
    if summary.dry_run {
        output::eprintln(&format!(
            "dry run, nothing was written: would copy {} of {} files ({} of {}); {} would be deleted; {:.1} s",
            summary.files_transferred,
            summary.files_total,
            BinaryBytes(summary.bytes_transferred),
            BinaryBytes(summary.bytes_total),
            summary.entries_deleted,
            summary.elapsed_s,
        ));
        return;
    }
    let rate = if summary.elapsed_s > 0.0 { summary.bytes_transferred as f64 / summary.elapsed_s } else { 0.0 };
    output::eprintln(&format!(
        "done: {} of {} files copied ({} of {}), {} deleted, {} on the wire, {:.1} s, {}/s",
        summary.files_transferred,
        summary.files_total,
        BinaryBytes(summary.bytes_transferred),
        BinaryBytes(summary.bytes_total),
        summary.entries_deleted,
        BinaryBytes(summary.bytes_on_wire),
        summary.elapsed_s,
        BinaryBytes(rate as u64)
    ));
}

/// The rate at which bytes go onto the wire (what `--bwlimit` limits), over the last few
/// seconds: the bar's position also moves over holes and unchanged files, which cost the link
/// nothing, and runs ahead of the link by what is queued for it.
#[derive(Default)]
pub struct SendRate {
    /// (when, bytes sent by then), oldest first, at most [`RATE_WINDOW`] apart.
    samples: std::collections::VecDeque<(std::time::Instant, u64)>,
    /// The source's regular files, once known: the same total the summary line names.
    files_total: Option<u64>,
}

const RATE_WINDOW: Duration = Duration::from_secs(3);

impl SendRate {
    /// Records `sent` bytes so far; returns bytes per second over the window.
    fn update(&mut self, sent: u64) -> u64 {
        let now = std::time::Instant::now();
        self.samples.push_back((now, sent));
        while self.samples.len() > 2 && now - self.samples[0].0 > RATE_WINDOW {
            self.samples.pop_front();
        }
        let (then, before) = self.samples[0];
        let seconds = (now - then).as_secs_f64();
        if seconds < 0.2 { 0 } else { (sent.saturating_sub(before) as f64 / seconds) as u64 }
    }
}

impl Reporter for Printer {
    fn wants_early_totals(&self) -> bool {
        matches!(self.mode, Mode::Bar(..))
    }

    fn on_event(&self, event: &Event) {
        match &self.mode {
            Mode::Json => output::json_line(&typed(event)),
            Mode::Bar(bar, rate) => match event {
                Event::Totals { files, bytes } => {
                    bar.set_length(*bytes);
                    rate.lock().expect("rate lock").files_total = Some(*files);
                    bar.set_message(format!("0 of {files} files"));
                }
                Event::Progress { files_done, bytes_done, bytes_on_wire, .. } => {
                    bar.set_position(*bytes_done);
                    let mut rate = rate.lock().expect("rate lock");
                    let per_second = BinaryBytes(rate.update(*bytes_on_wire));
                    bar.set_message(match rate.files_total {
                        Some(total) => format!("{per_second}/s sent, {files_done} of {total} files"),
                        None => format!("{per_second}/s sent, {files_done} files"),
                    });
                }
                Event::Warning { message } => bar.suspend(|| output::eprintln(&format!("warning: {message}"))),
                Event::Change(change) if self.changes => bar.suspend(|| output::println(&crate::itemize::line(change))),
                Event::ImagePlanned { .. } | Event::Blob { .. } | Event::ImageCopied { .. } | Event::Change(_) => {}
            },
            Mode::Quiet => match event {
                Event::Warning { message } => output::eprintln(&format!("warning: {message}")),
                Event::Change(change) if self.changes => output::println(&crate::itemize::line(change)),
                _ => {}
            },
        }
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
