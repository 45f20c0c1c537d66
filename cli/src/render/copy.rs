//! `mover copy`'s renderer: one progress bar on a terminal (bytes, the rate content goes onto
//! the wire, files), the engine's events as JSON lines, else only warnings; each change on
//! stdout when asked; the summary line.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{BinaryBytes, ProgressBar, ProgressStyle};
use mover_engine::progress::{Event, Reporter, Summary};

use super::Printer;
use crate::args::GlobalArgs;

/// Renders a copy's events.
pub struct CopyRenderer {
    printer: Printer,
    /// The bar and the send rate, on a terminal.
    bar: Option<(ProgressBar, Mutex<SendRate>)>,
    /// Text: list each change (`-i`, or a dry run) on stdout. JSON lists them all the same.
    changes: bool,
}

impl CopyRenderer {
    /// Picks the mode once; `changes`: list each change to the target on stdout.
    pub fn new(global: &GlobalArgs, changes: bool) -> CopyRenderer {
        let printer = Printer::new(global, true);
        let bar = printer.bars().map(|multi| {
            let bar = multi.add(ProgressBar::no_length());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {bytes:>10}/{total_bytes:<10} {wide_bar} ETA {eta:<4} {msg}")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            (bar, Mutex::new(SendRate::default()))
        });
        CopyRenderer { printer, bar, changes }
    }

    /// Prints the end-of-run summary (JSON: the last line; text: on a terminal, with `-v`, and
    /// after a dry run).
    pub fn summary(&self, summary: &Summary, verbose: bool) {
        if self.printer.is_json() {
            self.printer.json_final("summary", serde_json::to_value(summary).expect("summary serialises"));
            return;
        }
        if let Some((bar, _)) = &self.bar {
            bar.finish_and_clear();
            self.printer.after(&summary_text(summary));
        } else if verbose || summary.dry_run {
            self.printer.after(&summary_text(summary));
        }
        for what in &summary.not_preserved {
            self.printer.after(&format!("warning: not preserved: {what}"));
        }
        for error in &summary.errors {
            self.printer.after(&format!("error: {error}"));
        }
    }

    /// Leaves the bar where it is before an error is printed.
    pub fn abandon(&self) {
        if let Some((bar, _)) = &self.bar {
            bar.abandon();
        }
    }
}

/// One line: what moved, what was deleted, what it cost, in the units the bar uses; after a
/// dry run, what a copy would do.
fn summary_text(summary: &Summary) -> String {
    if summary.dry_run {
        return format!(
            "dry run, nothing was written: would copy {} of {} files ({} of {}); {} would be deleted; {:.1} s",
            summary.files_transferred,
            summary.files_total,
            BinaryBytes(summary.bytes_transferred),
            BinaryBytes(summary.bytes_total),
            summary.entries_deleted,
            summary.elapsed_s,
        );
    }
    let rate = if summary.elapsed_s > 0.0 { summary.bytes_transferred as f64 / summary.elapsed_s } else { 0.0 };
    format!(
        "done: {} of {} files copied ({} of {}), {} deleted, {} on the wire, {:.1} s, {}/s",
        summary.files_transferred,
        summary.files_total,
        BinaryBytes(summary.bytes_transferred),
        BinaryBytes(summary.bytes_total),
        summary.entries_deleted,
        BinaryBytes(summary.bytes_on_wire),
        summary.elapsed_s,
        BinaryBytes(rate as u64)
    )
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

impl Reporter for CopyRenderer {
    fn wants_early_totals(&self) -> bool {
        self.bar.is_some()
    }

    fn on_event(&self, event: &Event) {
        if self.printer.is_json() {
            self.printer.event(event, None);
            return;
        }
        match event {
            Event::Warning { message } => self.printer.note(&format!("warning: {message}")),
            Event::Change(change) if self.changes => self.printer.data(&crate::itemize::line(change)),
            Event::Totals { files, bytes } => {
                if let Some((bar, rate)) = &self.bar {
                    bar.set_length(*bytes);
                    rate.lock().expect("rate lock").files_total = Some(*files);
                    bar.set_message(format!("0 of {files} files"));
                }
            }
            Event::Progress { files_done, bytes_done, bytes_on_wire, .. } => {
                if let Some((bar, rate)) = &self.bar {
                    bar.set_position(*bytes_done);
                    let mut rate = rate.lock().expect("rate lock");
                    let per_second = BinaryBytes(rate.update(*bytes_on_wire));
                    bar.set_message(match rate.files_total {
                        Some(total) => format!("{per_second}/s sent, {files_done} of {total} files"),
                        None => format!("{per_second}/s sent, {files_done} files"),
                    });
                }
            }
            Event::ImagePlanned { .. } | Event::Blob { .. } | Event::ImageCopied { .. } | Event::Change(_) => {}
        }
    }
}
