//! `mover image copy|sync`'s renderer: a bar per image and per blob on a terminal, the engine's
//! events as JSON lines, a list of what would move with `--dry-run`, else only warnings; the
//! summary.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use mover_engine::image::ImageSummary;
use mover_engine::progress::{BlobState, Event, Reporter};

use super::Printer;
use crate::args::GlobalArgs;
use crate::output;

/// Renders image copies.
pub struct ImageRenderer {
    printer: Printer,
    /// Per blob being copied: its bar.
    blobs: Mutex<HashMap<String, ProgressBar>>,
    /// Per image: its bar and the bytes done of each of its blobs.
    images: Mutex<HashMap<String, ImageBar>>,
    /// List what would move instead of showing bars.
    dry_run: bool,
}

/// An image's bar and the bytes done of each of its blobs.
type ImageBar = (ProgressBar, HashMap<String, u64>);

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:20} {bytes:>10}/{total_bytes:<10} {wide_bar} {binary_bytes_per_sec:>12} ETA {eta:<4}",
    )
    .expect("valid template")
}

fn human(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

impl ImageRenderer {
    /// Picks the mode once: a dry run lists instead of showing bars.
    pub fn new(global: &GlobalArgs, dry_run: bool) -> ImageRenderer {
        let printer = Printer::new(global, !dry_run);
        ImageRenderer { printer, blobs: Mutex::default(), images: Mutex::default(), dry_run }
    }

    /// The summary: JSON's last line, or what was copied (stdout) and the counts (stderr) when
    /// nothing failed.
    pub fn summary(&self, summary: &ImageSummary) {
        if self.printer.is_json() {
            self.printer.json_final("summary", serde_json::to_value(summary).expect("summary serialises"));
            return;
        }
        self.printer.clear();
        if !summary.errors.is_empty() {
            return;
        }
        let verb = if summary.dry_run { "would copy" } else { "copied" };
        for line in &summary.copied {
            output::println(line);
        }
        self.printer.after(&format!(
            "{} image(s): {verb} {} blob(s) ({}), {} already there, {} mounted, {} manifest(s), {:.2}s",
            summary.images,
            summary.blobs_copied,
            human(summary.bytes_copied),
            summary.blobs_skipped,
            summary.blobs_mounted,
            summary.manifests,
            summary.elapsed_s
        ));
    }

    /// The images that failed, as `error:` lines (JSON has them in the summary).
    pub fn errors(&self, errors: &[String]) {
        if !self.printer.is_json() {
            for error in errors {
                self.printer.after(&format!("error: {error}"));
            }
        }
    }

    /// A dry run's list: each image and what would happen to each of its blobs.
    fn list(&self, event: &Event) {
        match event {
            Event::ImagePlanned { image, digest, manifests, blobs, bytes } => {
                self.printer
                    .data(&format!("{image} ({digest}): {manifests} manifest(s), {blobs} blob(s), {}", human(*bytes)));
            }
            Event::Blob { digest, size, state, .. } => {
                let action = match state {
                    BlobState::Skipped => "already there",
                    BlobState::Mounted => "mount",
                    _ => "copy",
                };
                self.printer.data(&format!("  {action:<13} {digest} {}", human(*size)));
            }
            _ => {}
        }
    }
}

impl Reporter for ImageRenderer {
    fn on_event(&self, event: &Event) {
        if self.printer.is_json() {
            self.printer.event(event, None);
            return;
        }
        if self.dry_run {
            self.list(event);
            return;
        }
        let Some(multi) = self.printer.bars() else {
            if let Event::Warning { message } = event {
                self.printer.note(&format!("warning: {message}"));
            }
            return;
        };
        match event {
            Event::ImagePlanned { image, bytes, .. } => {
                let bar = multi.insert(0, ProgressBar::new(*bytes));
                bar.set_style(bar_style());
                let name: String = image.rsplit('/').next().unwrap_or(image).chars().take(20).collect();
                bar.set_message(output::escape(&name).into_owned());
                bar.enable_steady_tick(Duration::from_millis(250));
                self.images.lock().expect("images").insert(image.clone(), (bar, HashMap::new()));
            }
            Event::Blob { image, digest, size, done, state } => {
                if let Some((bar, blobs)) = self.images.lock().expect("images").get_mut(image) {
                    blobs.insert(digest.clone(), *done);
                    bar.set_position(blobs.values().sum());
                }
                let mut bars = self.blobs.lock().expect("bars");
                let bar = bars.entry(digest.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(*size));
                    bar.set_style(bar_style());
                    let digest: String = digest.chars().take(19).collect();
                    bar.set_message(format!("  {}", output::escape(&digest)));
                    bar.enable_steady_tick(Duration::from_millis(250));
                    bar
                });
                bar.set_position(*done);
                if *state != BlobState::Copying {
                    bar.finish_and_clear();
                    bars.remove(digest);
                }
            }
            Event::ImageCopied { image, digest } => {
                if let Some((bar, _)) = self.images.lock().expect("images").remove(image) {
                    bar.finish_and_clear();
                }
                self.printer.note(&format!("copied {image} ({digest})"));
            }
            Event::Warning { message } => self.printer.note(&format!("warning: {message}")),
            _ => {}
        }
    }
}
