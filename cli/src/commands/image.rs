//! `mover image copy` and `mover image sync`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mover_engine::image::{
    self, Credentials, Endpoint, ImageRef, ImageSummary, Layout, Registry, RegistryOptions, Session, TlsMode, Version,
};
use mover_engine::tunnel::Proxy;

use crate::args::{GlobalArgs, ImageCommand, ImageCommon, ImageCopyArgs, ImageSyncArgs, OutputFormat};
use crate::render::image::ImageRenderer;
use crate::{Outcome, UsageError, output, usage};

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
    let source = endpoint(&source_ref, &args.common, Side::Source)?;
    let target = endpoint(&target_ref, &args.common, Side::Target)?;
    let (source_version, target_tag) = versions(&source_ref, &target_ref);
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
            Some(explain(error, args.common.proxy.as_deref()).await.context(format!("copy of {source_ref} failed")))
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
    let source = endpoint(&source_ref, &args.common, Side::Source)?;
    let target = endpoint(&target_ref, &args.common, Side::Target)?;
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
            Some(explain(error, args.common.proxy.as_deref()).await.context(format!("sync of {source_ref} failed")))
        }
    };
    finish(&printer, summary, error)
}

/// What to read from the source (`latest` for a registry reference without one) and which tag
/// to set on the target (the one named, else the source's tag; none when the source is a digest).
pub(crate) fn versions(source: &ImageRef, target: &ImageRef) -> (Option<Version>, Option<String>) {
    let source_version = match source {
        ImageRef::Registry { version, .. } => Some(version.clone().unwrap_or(Version::Tag("latest".into()))),
        ImageRef::Layout { tag, .. } => tag.clone().map(Version::Tag),
    };
    let target_tag = target.tag().map(str::to_owned).or_else(|| match &source_version {
        Some(Version::Tag(tag)) => Some(tag.clone()),
        _ => None,
    });
    (source_version, target_tag)
}

/// Adds what the registry presented to an "unknown authority" error, so the user sees what they
/// would be trusting.
pub(crate) async fn explain(error: image::ImageError, proxy: Option<&str>) -> anyhow::Error {
    let proxy_url = proxy.map(str::to_owned).or_else(|| {
        ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"].iter().find_map(|v| std::env::var(v).ok())
    });
    if let image::ImageError::Proxy { registry, .. } = &error
        && let Some(proxy) = proxy_url.as_deref().and_then(|url| Proxy::parse(url).ok())
    {
        // The HTTP stack only says "tunnel error": ask the proxy ourselves, to name the hop
        // that failed (407, a refused port, an unreachable target).
        let registry = registry.clone();
        let target = if registry.contains(':') { registry.clone() } else { format!("{registry}:443") };
        if let Ok(Err(why)) = tokio::time::timeout(Duration::from_secs(10), proxy.connect(&target)).await {
            return anyhow::Error::new(error).context(why.to_string());
        }
        return error.into();
    }
    let image::ImageError::UnknownAuthority { registry, .. } = &error else { return error.into() };
    let registry = registry.clone();
    let has_port = registry.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    let addr = if has_port && !registry.ends_with(']') { registry.clone() } else { format!("{registry}:443") };
    let proxy = proxy.and_then(|url| Proxy::parse(url).ok());
    match super::presented_certificate(&addr, proxy.as_ref()).await {
        Some(presented) => anyhow::Error::new(error).context(presented),
        None => error.into(),
    }
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

#[derive(Clone, Copy)]
pub(crate) enum Side {
    Source,
    Target,
}

fn endpoint(reference: &ImageRef, common: &ImageCommon, side: Side) -> anyhow::Result<Endpoint> {
    let access = match side {
        Side::Source => Access {
            credentials: common.src_creds.clone(),
            token: common.src_registry_token.clone(),
            ca_bundle: common.src_ca_bundle.clone(),
            tls_verify: common.src_tls_verify,
            plain_http: common.src_plain_http,
            authfile: common.authfile.clone(),
        },
        Side::Target => Access {
            credentials: common.dest_creds.clone(),
            token: common.dest_registry_token.clone(),
            ca_bundle: common.dest_ca_bundle.clone(),
            tls_verify: common.dest_tls_verify,
            plain_http: common.dest_plain_http,
            authfile: common.authfile.clone(),
        },
    };
    let max_manifest_bytes = usize::try_from(common.max_manifest_size).unwrap_or(usize::MAX);
    endpoint_for(reference, &access, side, common.proxy.as_deref(), max_manifest_bytes, common.dry_run)
}

/// How to reach one side's registry.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// `USER:PASSWORD`.
    pub credentials: Option<Credentials>,
    /// A bearer token.
    pub token: Option<String>,
    /// Extra trusted CAs.
    pub ca_bundle: Option<std::path::PathBuf>,
    /// Verify certificates.
    pub tls_verify: bool,
    /// Plain HTTP.
    pub plain_http: bool,
    /// An auth file (else the usual places).
    pub authfile: Option<std::path::PathBuf>,
}

/// The endpoint a reference names, ready to use (a CA bundle is read now, so a bad one fails
/// before anything moves). Dry runs create no target layout.
pub(crate) fn endpoint_for(
    reference: &ImageRef,
    access: &Access,
    side: Side,
    proxy: Option<&str>,
    max_manifest_bytes: usize,
    dry_run: bool,
) -> anyhow::Result<Endpoint> {
    match reference {
        ImageRef::Layout { dir, .. } => {
            let layout = match side {
                Side::Source => Layout::open(dir, max_manifest_bytes)?,
                Side::Target if dry_run => Layout::for_dry_run(dir, max_manifest_bytes)?,
                Side::Target => Layout::create(dir, max_manifest_bytes)?,
            };
            Ok(Endpoint::Layout(Arc::new(layout)))
        }
        ImageRef::Registry { repository, .. } => {
            let credentials = match (&access.credentials, &access.token) {
                (Some(creds), _) => creds.clone(),
                (None, Some(token)) => Credentials::Token(token.clone()),
                (None, None) => credentials_from_files(&repository.registry, access.authfile.as_deref())?,
            };
            let tls = match (access.plain_http, access.tls_verify) {
                (true, _) => TlsMode::PlainHttp,
                (false, false) => TlsMode::NoVerify,
                (false, true) => TlsMode::Verify { ca_bundle: access.ca_bundle.clone() },
            };
            if let Some(url) = proxy {
                // The same parser as the volume tunnel's, for the same clear errors.
                Proxy::parse(url)?;
            }
            let options = RegistryOptions {
                tls,
                credentials,
                proxy: proxy.map(str::to_owned),
                max_manifest_bytes,
                pace: registry_pace()?,
            };
            let registry = Registry::new(&repository.registry, &options)?;
            Ok(Endpoint::Registry { registry: Arc::new(registry), repository: repository.name.clone() })
        }
    }
}

/// The credentials for `registry` in the auth files (`--authfile`, else the usual places), or
/// none; says so when a file names a credential helper, which mover does not run.
fn credentials_from_files(registry: &str, authfile: Option<&Path>) -> anyhow::Result<Credentials> {
    let lookup = image::lookup_credentials(registry, &auth_files(authfile))?;
    if lookup.credentials.is_none() {
        for path in &lookup.helpers {
            tracing::warn!(
                "`{}` names a credential helper, which mover does not run: put `{registry}`'s credentials in an auth file or pass them with --src-creds/--dest-creds",
                path.display()
            );
        }
    }
    Ok(lookup.credentials.unwrap_or_default())
}

/// Where to look for registry credentials: `authfile` (`--authfile`, `authFile:`), else
/// `$REGISTRY_AUTH_FILE` (both must exist), else `$XDG_RUNTIME_DIR/containers/auth.json` then
/// `~/.docker/config.json` (skipped when missing).
fn auth_files(authfile: Option<&Path>) -> image::AuthFiles {
    if let Some(path) =
        authfile.map(Path::to_owned).or_else(|| std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from))
    {
        return image::AuthFiles::named(path);
    }
    image::AuthFiles::usual(
        [
            std::env::var_os("XDG_RUNTIME_DIR").map(|dir| PathBuf::from(dir).join("containers/auth.json")),
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json")),
        ]
        .into_iter()
        .flatten()
        .collect(),
    )
}

/// The registries' deadlines: the engine's defaults, or `MOVER_REGISTRY_PACE=HEADERS_MS:MIN_BYTES_PER_S:WINDOW_MS`,
/// an undocumented knob for tests that drive a stalling server and cannot wait 15 s per request.
fn registry_pace() -> anyhow::Result<image::Pace> {
    let Ok(text) = std::env::var("MOVER_REGISTRY_PACE") else { return Ok(image::Pace::default()) };
    let parts: Vec<u64> = text.split(':').map(str::parse).collect::<Result<_, _>>().unwrap_or_default();
    match parts.as_slice() {
        [headers, rate, window] => Ok(image::Pace {
            response_headers: Duration::from_millis(*headers),
            min_rate: *rate,
            window: Duration::from_millis(*window),
        }),
        _ => anyhow::bail!("MOVER_REGISTRY_PACE is `{text}`: expected HEADERS_MS:MIN_BYTES_PER_S:WINDOW_MS"),
    }
}
