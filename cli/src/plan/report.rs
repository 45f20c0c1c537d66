//! The end-of-plan report: per hook and per volume what happened, printed as a table and
//! written as JSON with `--report FILE`.

use std::path::Path;

use anyhow::Context;
use mover_engine::progress::Summary;
use serde::Serialize;

use mover_engine::image::ImageSummary;

use mover_plan::SkippedImage;

use super::{Hook, ImageTransfer, Phase, Plan, Side};
use mover_plan::StepRecord;

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    /// It completed.
    Succeeded,
    /// It failed.
    Failed,
    /// It ran past its timeout and was killed.
    TimedOut,
    /// The plan stopped before it.
    NotRun,
    /// The user interrupted it (Ctrl-C, SIGTERM).
    Cancelled,
}

impl std::fmt::Display for StepResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepResult::Succeeded => "ok",
            StepResult::Failed => "FAILED",
            StepResult::TimedOut => "TIMED OUT",
            StepResult::NotRun => "not run",
            StepResult::Cancelled => "CANCELLED",
        })
    }
}

/// One hook in the report.
#[derive(Debug, Clone, Serialize)]
pub struct HookReport {
    /// Its name.
    pub name: String,
    /// Its phase.
    pub phase: Phase,
    /// Its side.
    pub side: Side,
    /// How it ended.
    pub result: StepResult,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Seconds it ran.
    pub elapsed_s: f64,
}

/// One volume in the report.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeReport {
    /// Its name.
    pub name: String,
    /// Where from.
    pub source: String,
    /// Where to.
    pub target: String,
    /// How it ended.
    pub result: StepResult,
    /// Regular files in the source.
    pub files_total: u64,
    /// Files whose content was sent.
    pub files_transferred: u64,
    /// Content bytes in the source.
    pub bytes_total: u64,
    /// Content bytes sent.
    pub bytes_transferred: u64,
    /// Bytes on the tunnel, after compression.
    pub bytes_on_wire: u64,
    /// Entries deleted on the target.
    pub entries_deleted: u64,
    /// Seconds the copy took.
    pub elapsed_s: f64,
    /// Why it failed, when it failed as a whole.
    pub error: Option<String>,
    /// Per-file errors.
    pub errors: Vec<String>,
    /// Warnings.
    pub warnings: Vec<String>,
}

impl VolumeReport {
    /// Fills in a finished copy.
    pub fn record(&mut self, summary: &Summary) {
        self.result = if summary.is_success() { StepResult::Succeeded } else { StepResult::Failed };
        self.files_total = summary.files_total;
        self.files_transferred = summary.files_transferred;
        self.bytes_total = summary.bytes_total;
        self.bytes_transferred = summary.bytes_transferred;
        self.bytes_on_wire = summary.bytes_on_wire;
        self.entries_deleted = summary.entries_deleted;
        self.elapsed_s = summary.elapsed_s;
        self.errors.clone_from(&summary.errors);
        self.warnings.clone_from(&summary.warnings);
        self.warnings.extend(summary.not_preserved.iter().map(|what| format!("not preserved: {what}")));
    }
}

/// One image transfer (a copy or a sync) in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// `copy` or `sync`.
    pub kind: &'static str,
    /// Source reference or repository.
    pub source: String,
    /// Destination reference or repository.
    pub destination: String,
    /// How it ended.
    pub result: StepResult,
    /// Images (tags) copied.
    pub images: u64,
    /// Blobs streamed.
    pub blobs_copied: u64,
    /// Blobs already there.
    pub blobs_skipped: u64,
    /// Blobs mounted from another repository.
    pub blobs_mounted: u64,
    /// Blob bytes streamed.
    pub bytes_copied: u64,
    /// Wall time.
    pub elapsed_s: f64,
    /// Why it failed.
    pub error: Option<String>,
    /// Per-tag failures of a sync.
    pub errors: Vec<String>,
}

impl ImageReport {
    /// Fills in a finished transfer.
    pub fn record(&mut self, summary: &ImageSummary) {
        self.images = summary.images;
        self.blobs_copied = summary.blobs_copied;
        self.blobs_skipped = summary.blobs_skipped;
        self.blobs_mounted = summary.blobs_mounted;
        self.bytes_copied = summary.bytes_copied;
        self.elapsed_s = summary.elapsed_s;
        self.errors.clone_from(&summary.errors);
        self.result = if summary.errors.is_empty() { StepResult::Succeeded } else { StepResult::Failed };
    }

    /// An entry for a transfer that has not run.
    #[must_use]
    pub fn not_run(transfer: &ImageTransfer) -> ImageReport {
        let (kind, source, destination) = match transfer {
            ImageTransfer::Copy { source, destination } => ("copy", source, destination),
            ImageTransfer::Sync { source, destination, .. } => ("sync", source, destination),
        };
        ImageReport {
            kind,
            source: source.clone(),
            destination: destination.clone(),
            result: StepResult::NotRun,
            images: 0,
            blobs_copied: 0,
            blobs_skipped: 0,
            blobs_mounted: 0,
            bytes_copied: 0,
            elapsed_s: 0.0,
            error: None,
            errors: Vec::new(),
        }
    }
}

/// An image of the plan's namespaces that is not copied.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedImageReport {
    /// The reference, as the cluster names it.
    pub reference: String,
    /// Who uses it (`Deployment shop/web`).
    pub used_by: Vec<String>,
    /// Why it is not copied.
    pub reason: String,
}

impl From<SkippedImage> for SkippedImageReport {
    fn from(image: SkippedImage) -> Self {
        SkippedImageReport { reference: image.reference, used_by: image.used_by, reason: image.reason }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The plan's name (its file, when it did not load).
    pub plan: String,
    /// `stage` or `final`.
    pub mode: &'static str,
    /// How the plan ended.
    pub result: StepResult,
    /// Whether the user interrupted the plan (`result` is then `cancelled`).
    pub cancelled: bool,
    /// A dry run (`plan run --dry-run`): nothing was written, hooks and images did not run, and
    /// the volumes' counts say what a run would do.
    pub dry_run: bool,
    /// Why it stopped, when it failed.
    pub error: Option<String>,
    /// Seconds from start to end.
    pub elapsed_s: f64,
    /// Hooks in the order they run.
    pub hooks: Vec<HookReport>,
    /// Volumes in plan order.
    pub volumes: Vec<VolumeReport>,
    /// Image transfers in plan order (then the ones found in the source cluster).
    pub images: Vec<ImageReport>,
    /// Images of the plan's namespaces left out (`images: {fromNamespaces: true}`), with why.
    pub images_skipped: Vec<SkippedImageReport>,
    /// The run's steps as they ended (MTC's itinerary), with the steps an earlier run of the
    /// same final run did (`done-before`).
    pub steps: Vec<StepRecord>,
    /// The source's workloads a final run stopped before its copies, one line each (they stay
    /// stopped after the run; `mover plan rollback` starts them again).
    pub quiesced: Vec<String>,
}

impl Report {
    /// A report where nothing has run yet.
    #[must_use]
    pub fn new(plan: &Plan, stage: bool) -> Report {
        let mut hooks: Vec<&Hook> = plan.hooks.iter().collect();
        hooks.sort_by_key(|hook| hook.phase);
        Report {
            hooks: hooks
                .into_iter()
                .map(|hook| HookReport {
                    name: hook.name.clone(),
                    phase: hook.phase,
                    side: hook.side,
                    result: StepResult::NotRun,
                    exit_code: None,
                    elapsed_s: 0.0,
                })
                .collect(),
            volumes: plan
                .volumes
                .iter()
                .map(|volume| VolumeReport {
                    name: volume.name.clone(),
                    source: volume.source.to_string(),
                    target: volume.target.to_string(),
                    result: StepResult::NotRun,
                    files_total: 0,
                    files_transferred: 0,
                    bytes_total: 0,
                    bytes_transferred: 0,
                    bytes_on_wire: 0,
                    entries_deleted: 0,
                    elapsed_s: 0.0,
                    error: None,
                    errors: Vec::new(),
                    warnings: Vec::new(),
                })
                .collect(),
            images: plan.images.iter().map(ImageReport::not_run).collect(),
            ..Report::unloaded(&plan.name, stage)
        }
    }

    /// The report of a plan that did not load (`plan` is then its file's path): no hooks,
    /// volumes or images to tell about.
    #[must_use]
    pub fn unloaded(plan: &str, stage: bool) -> Report {
        Report {
            plan: plan.to_owned(),
            mode: if stage { "stage" } else { "final" },
            result: StepResult::NotRun,
            cancelled: false,
            dry_run: false,
            error: None,
            elapsed_s: 0.0,
            hooks: Vec::new(),
            volumes: Vec::new(),
            images: Vec::new(),
            images_skipped: Vec::new(),
            steps: Vec::new(),
            quiesced: Vec::new(),
        }
    }

    /// Records how the plan ended.
    pub fn finish(&mut self, result: &anyhow::Result<()>, cancelled: bool, elapsed_s: f64) {
        self.elapsed_s = elapsed_s;
        self.cancelled = cancelled;
        self.result = match result {
            _ if cancelled => StepResult::Cancelled,
            Ok(()) => StepResult::Succeeded,
            Err(_) => StepResult::Failed,
        };
        self.error = result.as_ref().err().map(|error| format!("{error:#}"));
    }

    /// Records a step as it ended (replacing what an earlier record of it said).
    pub fn step(&mut self, record: &StepRecord) {
        self.steps.retain(|step| step.step != record.step);
        self.steps.push(record.clone());
    }

    /// The entry of a hook.
    pub fn hook_mut(&mut self, name: &str) -> &mut HookReport {
        self.hooks.iter_mut().find(|hook| hook.name == name).expect("every hook has an entry")
    }

    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut json = crate::output::json_text(self, true);
        json.push('\n');
        std::fs::write(path, json).with_context(|| format!("while writing the report to `{}`", path.display()))
    }

    /// The report as a table.
    #[must_use]
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(text.trim_end());
            out.push('\n');
        };
        let dry_run = if self.dry_run { ", dry run: nothing was written" } else { "" };
        line(format!("plan `{}` ({} run{dry_run}): {} in {:.1}s", self.plan, self.mode, self.result, self.elapsed_s));
        if !self.steps.is_empty() {
            line(format!("{:<24} {:<12} {:<21} {:<21}", "STEP", "RESULT", "STARTED", "ENDED"));
            for step in &self.steps {
                line(format!(
                    "{:<24} {:<12} {:<21} {:<21}",
                    step.step.to_string(),
                    step.outcome.to_string(),
                    to_the_second(&step.started),
                    step.ended.as_deref().map_or_else(|| "-".to_owned(), to_the_second)
                ));
            }
        }
        if !self.hooks.is_empty() {
            line(format!("{:<24} {:<12} {:<7} {:<10} {:>8}", "HOOK", "PHASE", "SIDE", "RESULT", "TIME"));
            for hook in &self.hooks {
                line(format!(
                    "{:<24} {:<12} {:<7} {:<10} {:>7.1}s",
                    hook.name,
                    hook.phase.to_string(),
                    hook.side.to_string(),
                    hook.result.to_string(),
                    hook.elapsed_s
                ));
            }
        }
        if !self.volumes.is_empty() {
            line(format!(
                "{:<24} {:<10} {:>9} {:>14} {:>14} {:>14} {:>8}",
                "VOLUME", "RESULT", "FILES", "BYTES", "SENT", "ON WIRE", "TIME"
            ));
            for volume in &self.volumes {
                line(format!(
                    "{:<24} {:<10} {:>9} {:>14} {:>14} {:>14} {:>7.1}s",
                    volume.name,
                    volume.result.to_string(),
                    volume.files_total,
                    volume.bytes_total,
                    volume.bytes_transferred,
                    volume.bytes_on_wire,
                    volume.elapsed_s
                ));
            }
        }
        if !self.images.is_empty() {
            line(format!(
                "{:<40} {:<10} {:>7} {:>7} {:>7} {:>7} {:>14} {:>8}",
                "IMAGE", "RESULT", "IMAGES", "COPIED", "SKIPPED", "MOUNTED", "BYTES", "TIME"
            ));
            for image in &self.images {
                line(format!(
                    "{:<40} {:<10} {:>7} {:>7} {:>7} {:>7} {:>14} {:>7.1}s",
                    format!("{} {}", image.kind, image.source),
                    image.result.to_string(),
                    image.images,
                    image.blobs_copied,
                    image.blobs_skipped,
                    image.blobs_mounted,
                    image.bytes_copied,
                    image.elapsed_s
                ));
            }
        }
        for image in &self.images_skipped {
            line(format!(
                "image {} not copied: {} (used by {})",
                image.reference,
                image.reason,
                image.used_by.join(", ")
            ));
        }
        out
    }

    /// Prints the table on stdout.
    pub fn print(&self) {
        crate::output::print(&self.table());
    }
}

/// An RFC 3339 time in UTC to the second (`2026-12-06T01:02:03Z`).
fn to_the_second(time: &str) -> String {
    time.get(..19).map_or_else(|| time.to_owned(), |second| format!("{second}Z"))
}
