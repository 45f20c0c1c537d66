//! What `mover plan run` shows while it runs: on a terminal one progress line per volume
//! (bytes, rate, ETA) and a total line; with `--output json` the engine's events as JSON lines,
//! each with a `volume` field, plus hook events; otherwise only hook output, warnings and errors.
//! Hook output always goes to stderr in text mode, each line prefixed with the hook's name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use mover_engine::progress::{Event, Reporter};
use serde_json::json;

use super::Printer;
use crate::args::GlobalArgs;
use crate::output;
use crate::plan::Hook;
use crate::plan::report::{ImageReport, VolumeReport};

struct VolumeLine {
    done: u64,
    length: u64,
    bar: ProgressBar,
}

/// The plan's renderer and its lines.
struct Inner {
    printer: Printer,
    /// The total line, on a terminal.
    total: Option<ProgressBar>,
    /// Each volume's or image's line, by name.
    volumes: Mutex<HashMap<String, VolumeLine>>,
}

/// The plan's renderer; cheap to share.
#[derive(Clone)]
pub struct PlanPrinter(Arc<Inner>);

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ")
}

impl PlanPrinter {
    /// Picks the renderer once.
    #[must_use]
    pub fn new(global: &GlobalArgs) -> PlanPrinter {
        let printer = Printer::new(global, true);
        let total = printer.bars().map(|multi| {
            let total = multi.add(ProgressBar::new(0));
            total.set_style(style(
                "{prefix:<16.bold} {bytes:>10}/{total_bytes:<10} [{wide_bar}] {binary_bytes_per_sec:>12} ETA {eta:<4}",
            ));
            total.set_prefix("total");
            total
        });
        PlanPrinter(Arc::new(Inner { printer, total, volumes: Mutex::new(HashMap::new()) }))
    }

    /// A line of text on stderr, above the progress lines on a terminal.
    pub(crate) fn text_line(&self, text: &str) {
        self.0.printer.note(text);
    }

    /// A hook starts.
    pub fn hook_started(&self, hook: &Hook) {
        if self.is_json() {
            self.0.printer.json("hook_started", json!({"hook": hook.name, "phase": hook.phase, "side": hook.side}));
        } else {
            self.text_line(&format!("hook `{}` ({}, {} side) started", hook.name, hook.phase, hook.side));
        }
    }

    /// One line of a hook's output.
    pub fn hook_line(&self, hook: &Hook, line: &str) {
        if self.is_json() {
            self.0.printer.json("hook_output", json!({"hook": hook.name, "line": line}));
        } else {
            self.text_line(&format!("{} | {line}", hook.name));
        }
    }

    /// A hook ended.
    pub fn hook_finished(&self, hook: &Hook, result: &str, elapsed: Duration) {
        if self.is_json() {
            self.0.printer.json(
                "hook_finished",
                json!({"hook": hook.name, "phase": hook.phase, "result": result, "elapsed_s": elapsed.as_secs_f64()}),
            );
        } else {
            self.text_line(&format!("hook `{}` {result} after {:.1}s", hook.name, elapsed.as_secs_f64()));
        }
    }

    /// True with `--output json`.
    #[must_use]
    pub fn is_json(&self) -> bool {
        self.0.printer.is_json()
    }

    /// A progress line above the total, counted in it, on a terminal.
    fn line(&self, name: &str, prefix: &str) -> Option<ProgressBar> {
        let (multi, total) = (self.0.printer.bars()?, self.0.total.as_ref()?);
        let bar = multi.insert_before(total, ProgressBar::new(0));
        bar.set_style(style(
            "{prefix:<16} {bytes:>10}/{total_bytes:<10} [{wide_bar}] {binary_bytes_per_sec:>12} ETA {eta:<4} {msg}",
        ));
        bar.set_prefix(output::escape(prefix).into_owned());
        bar.enable_steady_tick(Duration::from_millis(250));
        total.enable_steady_tick(Duration::from_millis(250));
        self.0
            .volumes
            .lock()
            .expect("volumes lock")
            .insert(name.to_owned(), VolumeLine { done: 0, length: 0, bar: bar.clone() });
        Some(bar)
    }

    /// A reporter for one volume's copy.
    #[must_use]
    /// In a `dry_run`, its changes are listed.
    pub fn volume(&self, name: &str, dry_run: bool) -> Arc<dyn Reporter> {
        let bar = self.line(name, name);
        Arc::new(VolumeProgress { printer: self.clone(), name: name.to_owned(), bar, dry_run })
    }

    /// A volume ended: its line shows the result, and JSON gets a `volume_finished` event.
    pub fn volume_finished(&self, report: &VolumeReport) {
        if self.is_json() {
            let mut value = serde_json::to_value(report).expect("reports serialise");
            value["volume"] = report.name.clone().into();
            self.0.printer.json("volume_finished", value);
        } else if self.0.total.is_some() {
            if let Some(line) = self.0.volumes.lock().expect("volumes lock").get(&report.name) {
                line.bar.set_position(report.bytes_total);
                line.bar.finish_with_message(report.result.to_string());
            }
            self.update_total(&report.name, Some(report.bytes_total), Some(report.bytes_total));
        }
    }

    /// Clears the progress lines before the report.
    pub fn finish(&self) {
        if let Some(total) = &self.0.total {
            total.finish();
            self.0.printer.clear();
        }
    }

    fn update_total(&self, name: &str, done: Option<u64>, length: Option<u64>) {
        if let Some(total) = &self.0.total {
            let mut volumes = self.0.volumes.lock().expect("volumes lock");
            if let Some(line) = volumes.get_mut(name) {
                if let Some(done) = done {
                    line.done = done;
                }
                if let Some(length) = length {
                    line.length = length;
                }
            }
            total.set_length(volumes.values().map(|v| v.length).sum());
            total.set_position(volumes.values().map(|v| v.done).sum());
        }
    }
}

/// One volume's progress: its own bar, or its events with a `volume` field.
struct VolumeProgress {
    printer: PlanPrinter,
    name: String,
    bar: Option<ProgressBar>,
    /// List each change (as text; JSON has them all).
    dry_run: bool,
}

impl Reporter for VolumeProgress {
    fn wants_early_totals(&self) -> bool {
        self.bar.is_some()
    }

    fn on_event(&self, event: &Event) {
        if self.printer.is_json() {
            self.printer.0.printer.event(event, Some(("volume", &self.name)));
            return;
        }
        match event {
            Event::Totals { files, bytes } => {
                if let Some(bar) = &self.bar {
                    bar.set_length(*bytes);
                    bar.set_message(format!("{files} files"));
                }
                self.printer.update_total(&self.name, None, Some(*bytes));
            }
            Event::Progress { files_done, bytes_done, bytes_transferred, .. } => {
                // `bytes_done` moves within a file as its chunks go (holes and unchanged files
                // included); the larger of the two is the safer position.
                let position = (*bytes_done).max(*bytes_transferred);
                if let Some(bar) = &self.bar {
                    bar.set_position(position);
                    bar.set_message(format!("{files_done} files"));
                }
                self.printer.update_total(&self.name, Some(position), None);
            }
            Event::Warning { message } => {
                self.printer.text_line(&format!("warning: volume `{}`: {message}", self.name));
            }
            // A dry run lists its changes; a real run counts them in its report.
            Event::Change(change) if self.dry_run => {
                self.printer.text_line(&format!("volume `{}`: {}", self.name, crate::itemize::line(change)));
            }
            Event::ImagePlanned { .. } | Event::Blob { .. } | Event::ImageCopied { .. } | Event::Change(_) => {}
        }
    }
}

/// One image transfer's progress: a line beside the volumes' (and in the total), or its events
/// with an `image` field.
struct ImageProgress {
    printer: PlanPrinter,
    name: String,
    bar: Option<ProgressBar>,
    state: Mutex<ImageState>,
}

#[derive(Default)]
struct ImageState {
    length: u64,
    blobs: HashMap<String, u64>,
}

impl Reporter for ImageProgress {
    fn on_event(&self, event: &Event) {
        if self.printer.is_json() {
            self.printer.0.printer.event(event, Some(("image", &self.name)));
            return;
        }
        let mut state = self.state.lock().expect("image state");
        match event {
            Event::ImagePlanned { bytes, .. } => {
                state.length += bytes;
                if let Some(bar) = &self.bar {
                    bar.set_length(state.length);
                }
                self.printer.update_total(&self.name, None, Some(state.length));
            }
            Event::Blob { image, digest, done, .. } => {
                state.blobs.insert(format!("{image} {digest}"), *done);
                let done: u64 = state.blobs.values().sum();
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
                }
                self.printer.update_total(&self.name, Some(done), None);
            }
            Event::Warning { message } => {
                self.printer.text_line(&format!("warning: image `{}`: {message}", self.name));
            }
            _ => {}
        }
    }
}

impl PlanPrinter {
    /// A reporter for one image transfer, named by its source.
    #[must_use]
    pub fn image(&self, name: &str) -> Arc<dyn Reporter> {
        let bar = self.line(name, name.rsplit('/').next().unwrap_or(name));
        Arc::new(ImageProgress { printer: self.clone(), name: name.to_owned(), bar, state: Mutex::default() })
    }

    /// An image transfer ended: its line shows the result, and JSON gets an `image_finished`
    /// event.
    pub fn image_finished(&self, report: &ImageReport) {
        if self.is_json() {
            let mut value = serde_json::to_value(report).expect("reports serialise");
            value["image"] = report.source.clone().into();
            self.0.printer.json("image_finished", value);
        } else if let Some(line) = self.0.volumes.lock().expect("volumes lock").get(&report.source) {
            line.bar.finish_with_message(report.result.to_string());
        }
    }
}
