//! `mover image copy` and `mover image sync`.

use std::sync::Arc;

use anyhow::Context;
use mover_engine::image::{self, Endpoint, ImageRef, ImageSummary, Session, Version};
use mover_engine::tunnel::Proxy;
use mover_plan::Side;

use crate::args::{GlobalArgs, ImageCommand, ImageCommon, ImageCopyArgs, ImageSyncArgs, OutputFormat};
use crate::render::image::ImageRenderer;
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
    let printer = Arc::new(ImageRenderer::new(global, args.common.dry_run));
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
    let printer = Arc::new(ImageRenderer::new(global, args.common.dry_run));
    let session = Session::new(printer.clone());
    let options =
        image::CopyOptions { platform: None, jobs: usize::from(args.common.jobs), dry_run: args.common.dry_run };
    let result = image::sync_images(
        &session,
        &source,
        &target,
        &options,
        &tags.into(),
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

fn finish(printer: &ImageRenderer, summary: ImageSummary, error: Option<anyhow::Error>) -> anyhow::Result<Outcome> {
    let mut summary = summary;
    if let Some(error) = &error {
        summary.errors.push(format!("{error:#}"));
    }
    printer.summary(&summary);
    match error {
        Some(error) => Err(error),
        None if summary.errors.is_empty() => Ok(Outcome::Success),
        None => {
            printer.errors(&summary.errors);
            Ok(Outcome::Failed)
        }
    }
}

/// The endpoint of one side, from the flags.
fn endpoint(reference: &ImageRef, common: &ImageCommon, side: Side, proxy: Option<&Proxy>) -> anyhow::Result<Endpoint> {
    let max_manifest_bytes = usize::try_from(common.max_manifest_size).unwrap_or(usize::MAX);
    access::endpoint_for(reference, common.registries().get(side), side, proxy, max_manifest_bytes, common.dry_run)
}
