//! `mover image copy` and `mover image sync`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mover_engine::image::{self, Endpoint, ImageRef, ImageSummary, Session, Version};
use mover_engine::progress::{BlobState, Event, Reporter};
use mover_engine::tunnel::Proxy;
use mover_plan::Side;

use crate::args::{GlobalArgs, ImageCommand, ImageCommon, ImageCopyArgs, ImageSyncArgs, OutputFormat};
use crate::{Outcome, UsageError, access, output, usage};

/// Runs an image subcommand.
pub async fn run(command: ImageCommand, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    let result = match command {
        ImageCommand::Copy(args) => copy(args, global).await,
        ImageCommand::Sync(args) => sync(args, global).await,
    };
    if let Err(error) = &result {
        let empty = serde_json::to_value(ImageSummary::default()).expect("summaries serialise");
        output::json_final_on_error(global.output == OutputFormat::Json, "summary", empty, error);
    }
    result
}

/// Parses an image reference; a malformed one (no transport, a bad tag) is a usage error.
fn image_ref(text: &str) -> anyhow::Result<ImageRef> {
    text.parse::<ImageRef>().map_err(|error| usage(error.to_string()))
}

async fn copy(args: ImageCopyArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    let source_ref = image_ref(&args.source)?;
    let target_ref = image_ref(&args.target)?;
    if let ImageRef::Registry { version: Some(Version::Digest(_)), .. } = &target_ref {
        return Err(usage(format!(
            "the target `{}` names a digest: name a repository and optionally a tag (the digest is the source's)",
            args.target
        )));
    }
    let proxy = access::parse_proxy(args.common.proxy.as_deref())?;
    let source = endpoint(&source_ref, &args.common, Side::Source, proxy.as_ref())?;
    let target = endpoint(&target_ref, &args.common, Side::Target, proxy.as_ref())?;
    let (source_version, target_tag) = access::versions(&source_ref, &target_ref);
    let printer = Arc::new(ImagePrinter::new(global, args.common.dry_run));
    let session = Session::new(printer.clone());
    let options = image::CopyOptions {
        platform: args.platform.clone(),
        jobs: usize::from(args.common.jobs),
        dry_run: args.common.dry_run,
    };
    let result =
        image::copy_image(&session, &source, source_version.as_ref(), &target, target_tag.as_deref(), &options).await;
    let mut summary = session.summary();
    summary.dry_run = args.common.dry_run;
    let error = match result.map(drop) {
        Ok(()) => None,
        Err(error) => {
            Some(access::explain(error, proxy.as_ref()).await.context(format!("copy of {source_ref} failed")))
        }
    };
    finish(&printer, summary, error)
}

async fn sync(args: ImageSyncArgs, global: &GlobalArgs) -> anyhow::Result<Outcome> {
    let source_ref = image_ref(&args.source)?;
    let target_ref = image_ref(&args.target)?;
    for (what, reference) in [("source", &source_ref), ("target", &target_ref)] {
        if matches!(reference, ImageRef::Registry { version: Some(_), .. } | ImageRef::Layout { tag: Some(_), .. }) {
            return Err(usage(format!(
                "the sync {what} `{reference}` names a tag or digest: name a repository (use --tags to filter)"
            )));
        }
    }
    let tags = args
        .tags
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .context(UsageError("`--tags` is not a valid regular expression".into()))?;
    let proxy = access::parse_proxy(args.common.proxy.as_deref())?;
    let source = endpoint(&source_ref, &args.common, Side::Source, proxy.as_ref())?;
    let target = endpoint(&target_ref, &args.common, Side::Target, proxy.as_ref())?;
    let prefixes = match (&source_ref, &target_ref) {
        (ImageRef::Registry { repository: from, .. }, ImageRef::Registry { repository: to, .. }) if args.prefix => {
            Some((from.name.clone(), to.name.clone()))
        }
        _ if args.prefix => return Err(usage("`--prefix` needs docker:// source and target")),
        _ => None,
    };
    let printer = Arc::new(ImagePrinter::new(global, args.common.dry_run));
    let session = Session::new(printer.clone());
    let options =
        image::CopyOptions { platform: None, jobs: usize::from(args.common.jobs), dry_run: args.common.dry_run };
    let result = image::sync_images(
        &session,
        &source,
        &target,
        &options,
        &image::SyncOptions { tags, prefix: args.prefix },
        prefixes.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
    )
    .await;
    let mut summary = session.summary();
    summary.dry_run = args.common.dry_run;
    if result.is_ok() && summary.images == 0 && summary.errors.is_empty() {
        summary.errors.push(format!("no tags of {source_ref} matched: nothing was copied"));
    }
    let error = match result {
        Ok(()) => None,
        Err(error) => {
            Some(access::explain(error, proxy.as_ref()).await.context(format!("sync of {source_ref} failed")))
        }
    };
    finish(&printer, summary, error)
}

/// The remedy for an image error, when the CLI knows one (`error:`'s `hint:` line).
pub(crate) fn hint(error: &image::ImageError) -> Option<String> {
    match error {
        image::ImageError::PlainHttp { registry, .. } => Some(format!(
            "`{registry}` serves plain HTTP: if that is intended, pass `--src-plain-http` when it is the source or `--dest-plain-http` when it is the target (in a plan: `plainHttp: true` under `registries.source` or `registries.target`); nothing sent to it is encrypted"
        )),
        _ => None,
    }
}

fn finish(printer: &ImagePrinter, summary: ImageSummary, error: Option<anyhow::Error>) -> anyhow::Result<Outcome> {
    let mut summary = summary;
    if let Some(error) = &error {
        summary.errors.push(format!("{error:#}"));
    }
    printer.summary(&summary);
    match error {
        Some(error) => Err(error),
        None if summary.errors.is_empty() => Ok(Outcome::Success),
        None => {
            if !printer.json {
                for error in &summary.errors {
                    output::eprintln(&format!("error: {error}"));
                }
            }
            Ok(Outcome::Failed)
        }
    }
}

/// The endpoint of one side, from the flags.
fn endpoint(reference: &ImageRef, common: &ImageCommon, side: Side, proxy: Option<&Proxy>) -> anyhow::Result<Endpoint> {
    let max_manifest_bytes = usize::try_from(common.max_manifest_size).unwrap_or(usize::MAX);
    access::endpoint_for(reference, common.registries().get(side), side, proxy, max_manifest_bytes, common.dry_run)
}

/// Shows image copies: per-blob bars on a terminal, JSON lines with `--output json`, a list
/// with `--dry-run`.
struct ImagePrinter {
    json: bool,
    bars: Option<(MultiProgress, Mutex<HashMap<String, ProgressBar>>)>,
    /// Per image: its bar and the bytes done of each of its blobs.
    images: Mutex<HashMap<String, ImageBar>>,
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

impl ImagePrinter {
    fn new(global: &GlobalArgs, dry_run: bool) -> ImagePrinter {
        let json = global.output == OutputFormat::Json;
        let bars = (!json && !dry_run && !global.no_progress && std::io::stderr().is_terminal())
            .then(|| (MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)), Mutex::default()));
        ImagePrinter { json, bars, images: Mutex::default(), dry_run }
    }

    fn summary(&self, summary: &ImageSummary) {
        if self.json {
            let mut value = serde_json::to_value(summary).expect("summary serialises");
            value["type"] = "summary".into();
            output::json_final(&value);
            return;
        }
        if let Some((multi, _)) = &self.bars {
            let _ = multi.clear();
        }
        if !summary.errors.is_empty() {
            return;
        }
        let verb = if summary.dry_run { "would copy" } else { "copied" };
        for line in &summary.copied {
            output::println(line);
        }
        output::eprintln(&format!(
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
}

fn human(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

impl Reporter for ImagePrinter {
    fn on_event(&self, event: &Event) {
        if self.json {
            output::json_line(&crate::printer::typed(event));
            return;
        }
        if self.dry_run {
            match event {
                Event::ImagePlanned { image, digest, manifests, blobs, bytes } => {
                    output::println(&format!(
                        "{image} ({digest}): {manifests} manifest(s), {blobs} blob(s), {}",
                        human(*bytes)
                    ));
                }
                Event::Blob { digest, size, state, .. } => {
                    let action = match state {
                        BlobState::Skipped => "already there",
                        BlobState::Mounted => "mount",
                        _ => "copy",
                    };
                    output::println(&format!("  {action:<13} {digest} {}", human(*size)));
                }
                _ => {}
            }
            return;
        }
        let Some((multi, bars)) = &self.bars else {
            if let Event::Warning { message } = event {
                output::eprintln(&format!("warning: {message}"));
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
                let mut bars = bars.lock().expect("bars");
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
                let _ = multi.println(output::escape(&format!("copied {image} ({digest})")));
            }
            Event::Warning { message } => {
                let _ = multi.println(output::escape(&format!("warning: {message}")));
            }
            _ => {}
        }
    }
}
