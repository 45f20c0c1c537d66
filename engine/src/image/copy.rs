//! The copy: resolve, walk, move blobs, push manifests children first, tag last.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::manifest::{self, Content, Descriptor, Platform};
use super::reference::{Digest, Version};
use super::{ATTEMPTS, Endpoint, ImageError, RawManifest};
use crate::progress::{BlobState, Event, SharedReporter};

/// What a copy may do.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Copy only this platform of an index (the index itself is then not copied, so its digest
    /// is not preserved). `None`: every platform, the index byte-identical.
    pub platform: Option<Platform>,
    /// Blobs copied at once.
    pub jobs: usize,
    /// Only report what would move.
    pub dry_run: bool,
}

impl Default for CopyOptions {
    fn default() -> CopyOptions {
        CopyOptions { platform: None, jobs: 4, dry_run: false }
    }
}

/// Which tags `image sync` copies: all, or those a regular expression matches.
#[derive(Debug, Clone, Default)]
pub struct TagFilter(Option<regex::Regex>);

impl TagFilter {
    /// Every tag.
    #[must_use]
    pub fn all() -> TagFilter {
        TagFilter(None)
    }

    /// The tags `pattern` matches (anywhere in the tag, unless it is anchored).
    #[must_use]
    pub fn matching(pattern: regex::Regex) -> TagFilter {
        TagFilter(Some(pattern))
    }

    /// Whether `tag` is copied.
    #[must_use]
    pub fn matches(&self, tag: &str) -> bool {
        self.0.as_ref().is_none_or(|pattern| pattern.is_match(tag))
    }
}

impl From<Option<regex::Regex>> for TagFilter {
    fn from(pattern: Option<regex::Regex>) -> TagFilter {
        TagFilter(pattern)
    }
}

/// What a run of image copies did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Images (tags or digests) copied.
    pub images: u64,
    /// Manifests and indexes pushed.
    pub manifests: u64,
    /// Blobs streamed from source to target.
    pub blobs_copied: u64,
    /// Blobs already on the target.
    pub blobs_skipped: u64,
    /// Blobs mounted from another repository of the target registry.
    pub blobs_mounted: u64,
    /// Blob bytes streamed.
    pub bytes_copied: u64,
    /// Wall time.
    pub elapsed_s: f64,
    /// One line per image that failed.
    pub errors: Vec<String>,
    /// `source -> target@digest` per image copied.
    pub copied: Vec<String>,
    /// Set for `--dry-run`: nothing was written; the counts say what would have moved.
    pub dry_run: bool,
}

/// State shared by the copies of one run: the reporter, counters, and which blobs are known to
/// be on which target repository (so `sync` mounts rather than re-streams them).
pub struct Session {
    reporter: SharedReporter,
    started: Instant,
    summary: Mutex<ImageSummary>,
    /// digest → (registry host, repository) where the blob is known to exist.
    known: Mutex<HashMap<Digest, Vec<(String, String)>>>,
}

impl Session {
    /// A new run reporting to `reporter`.
    #[must_use]
    pub fn new(reporter: SharedReporter) -> Session {
        Session { reporter, started: Instant::now(), summary: Mutex::default(), known: Mutex::default() }
    }

    /// The summary so far (elapsed time filled in).
    #[must_use]
    pub fn summary(&self) -> ImageSummary {
        let mut summary = self.summary.lock().expect("summary").clone();
        summary.elapsed_s = self.started.elapsed().as_secs_f64();
        summary
    }

    fn count(&self, update: impl FnOnce(&mut ImageSummary)) {
        update(&mut self.summary.lock().expect("summary"));
    }

    fn remember(&self, digest: &Digest, target: &Endpoint) {
        if let Endpoint::Registry { registry, repository } = target {
            let mut known = self.known.lock().expect("known");
            let places = known.entry(digest.clone()).or_default();
            let place = (registry.host().to_owned(), repository.clone());
            if !places.contains(&place) {
                places.push(place);
            }
        }
    }

    /// Another repository on the same registry known to hold the blob.
    fn mount_source(&self, digest: &Digest, target: &Endpoint, source: &Endpoint) -> Option<String> {
        let Endpoint::Registry { registry, repository } = target else { return None };
        if let Endpoint::Registry { registry: from, repository: from_repo } = source
            && from.host() == registry.host()
            && from_repo != repository
        {
            return Some(from_repo.clone());
        }
        let known = self.known.lock().expect("known");
        known
            .get(digest)?
            .iter()
            .find(|(host, repo)| host == registry.host() && repo != repository)
            .map(|(_, r)| r.clone())
    }

    fn known_at(&self, digest: &Digest, target: &Endpoint) -> bool {
        let Endpoint::Registry { registry, repository } = target else { return false };
        let known = self.known.lock().expect("known");
        known.get(digest).is_some_and(|places| places.iter().any(|(h, r)| h == registry.host() && r == repository))
    }
}

/// Cap on the bytes of all manifests of one image, held until they are pushed.
const MAX_WALK_BYTES: usize = 64 << 20;

/// The manifests and blobs an image consists of.
struct Walk {
    /// Children before parents; the root last.
    manifests: Vec<RawManifest>,
    /// Unique blobs, largest first.
    blobs: Vec<Descriptor>,
}

/// Copies one image. `source_version` is resolved once; `target_tag` (if any) is set last.
/// Returns the digest of what the tag points at.
pub async fn copy_image(
    session: &Session,
    source: &Endpoint,
    source_version: Option<&Version>,
    target: &Endpoint,
    target_tag: Option<&str>,
    options: &CopyOptions,
) -> Result<Digest, ImageError> {
    let label = format!("{source}{}", source_version.map(ToString::to_string).unwrap_or_default());
    let root = source.manifest(source_version, &format!("manifest of {label}")).await?;
    let walk = walk(source, root, options.platform.as_ref()).await?;
    let root = walk.manifests.last().expect("the root is in the walk").clone();
    let bytes: u64 = walk.blobs.iter().map(|b| b.size).sum();
    session.reporter.on_event(&Event::ImagePlanned {
        image: label.clone(),
        digest: root.digest.to_string(),
        manifests: walk.manifests.len() as u64,
        blobs: walk.blobs.len() as u64,
        bytes,
    });

    let jobs = options.jobs.max(1);
    futures_util::stream::iter(walk.blobs.iter())
        .map(|blob| copy_blob(session, &label, source, target, blob, options.dry_run))
        .buffer_unordered(jobs)
        .try_collect::<Vec<()>>()
        .await?;

    if !options.dry_run {
        let (children, root_slice) = walk.manifests.split_at(walk.manifests.len() - 1);
        for child in children {
            target.put_manifest(child, None).await?;
        }
        target.put_manifest(&root_slice[0], target_tag).await?;
    }
    session.count(|s| {
        s.images += 1;
        s.manifests += walk.manifests.len() as u64;
        let tag = target_tag.map(|t| format!(":{t}")).unwrap_or_default();
        s.copied.push(format!("{label} -> {target}{tag}@{}", root.digest));
    });
    session.reporter.on_event(&Event::ImageCopied { image: label, digest: root.digest.to_string() });
    Ok(root.digest)
}

/// Fetches every manifest below `root` by digest, within the caps.
async fn walk(source: &Endpoint, root: RawManifest, platform: Option<&Platform>) -> Result<Walk, ImageError> {
    let mut root = root;
    if let Some(platform) = platform {
        let parsed = manifest::parse_with_limit(&root.bytes, Some(&root.media_type), usize::MAX)
            .map_err(|problem| ImageError::Manifest { what: "the source manifest".into(), problem })?;
        if let Content::Index { manifests } = parsed.content {
            let chosen = manifests
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| platform.matches(p)))
                .ok_or_else(|| {
                    let have: Vec<String> =
                        manifests.iter().filter_map(|m| m.platform.as_ref().map(ToString::to_string)).collect();
                    ImageError::Invalid(format!(
                        "platform {platform} is not in the source index (it has: {})",
                        have.join(", ")
                    ))
                })?;
            root = fetch_child(source, chosen).await?;
        }
    }
    let mut manifests = Vec::new();
    let mut blobs: HashMap<Digest, Descriptor> = HashMap::new();
    let mut seen = HashSet::new();
    visit(source, root, 0, &mut manifests, &mut blobs, &mut seen).await?;
    let mut blobs: Vec<Descriptor> = blobs.into_values().collect();
    blobs.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.digest.cmp(&b.digest)));
    Ok(Walk { manifests, blobs })
}

fn visit<'a>(
    source: &'a Endpoint,
    manifest: RawManifest,
    depth: usize,
    manifests: &'a mut Vec<RawManifest>,
    blobs: &'a mut HashMap<Digest, Descriptor>,
    seen: &'a mut HashSet<Digest>,
) -> futures_util::future::BoxFuture<'a, Result<(), ImageError>> {
    Box::pin(async move {
        if depth > manifest::MAX_DEPTH {
            return Err(ImageError::Manifest {
                what: format!("manifest {}", manifest.digest),
                problem: manifest::ManifestError::TooDeep,
            });
        }
        if !seen.insert(manifest.digest.clone()) {
            return Ok(());
        }
        let held: usize = manifests.iter().map(|m| m.bytes.len()).sum::<usize>() + manifest.bytes.len();
        if held > MAX_WALK_BYTES {
            return Err(ImageError::Manifest {
                what: format!("manifest {}", manifest.digest),
                problem: manifest::ManifestError::TooMany {
                    what: "bytes of manifests in all",
                    count: held,
                    limit: MAX_WALK_BYTES,
                },
            });
        }
        let parsed = manifest::parse_with_limit(&manifest.bytes, Some(&manifest.media_type), usize::MAX)
            .map_err(|problem| ImageError::Manifest { what: format!("manifest {}", manifest.digest), problem })?;
        match parsed.content {
            Content::Image { config, layers } => {
                for blob in std::iter::once(config).chain(layers) {
                    if !blob.is_foreign() {
                        blobs.entry(blob.digest.clone()).or_insert(blob);
                    }
                }
            }
            Content::Index { manifests: children } => {
                if seen.len() + children.len() > manifest::MAX_CHILDREN * 4 {
                    return Err(ImageError::Manifest {
                        what: format!("manifest {}", manifest.digest),
                        problem: manifest::ManifestError::TooMany {
                            what: "manifests in all",
                            count: seen.len() + children.len(),
                            limit: manifest::MAX_CHILDREN * 4,
                        },
                    });
                }
                for child in &children {
                    if !manifest::is_manifest_type(&child.media_type) {
                        // Artifacts in an index are copied as blobs.
                        blobs.entry(child.digest.clone()).or_insert_with(|| child.clone());
                        continue;
                    }
                    let fetched = fetch_child(source, child).await?;
                    visit(source, fetched, depth + 1, manifests, blobs, seen).await?;
                }
            }
        }
        manifests.push(manifest);
        Ok(())
    })
}

async fn fetch_child(source: &Endpoint, child: &Descriptor) -> Result<RawManifest, ImageError> {
    let what = format!("manifest {}", child.digest);
    let fetched = source.manifest(Some(&Version::Digest(child.digest.clone())), &what).await?;
    if fetched.bytes.len() as u64 != child.size {
        return Err(ImageError::SizeMismatch { what, expected: child.size, actual: fetched.bytes.len() as u64 });
    }
    Ok(fetched)
}

/// One blob: skip, mount, or stream (retrying, resuming the download with `Range`).
async fn copy_blob(
    session: &Session,
    image: &str,
    source: &Endpoint,
    target: &Endpoint,
    blob: &Descriptor,
    dry_run: bool,
) -> Result<(), ImageError> {
    let event = |state: BlobState, done: u64| {
        session.reporter.on_event(&Event::Blob {
            image: image.to_owned(),
            digest: blob.digest.to_string(),
            size: blob.size,
            done,
            state,
        });
    };
    if session.known_at(&blob.digest, target) || target.has_blob(blob).await? {
        session.remember(&blob.digest, target);
        session.count(|s| s.blobs_skipped += 1);
        event(BlobState::Skipped, blob.size);
        return Ok(());
    }
    if let (Some(from), Endpoint::Registry { registry, repository }) =
        (session.mount_source(&blob.digest, target, source), target)
        && !dry_run
        // A failed mount is not a failed copy: the blob is streamed instead.
        && registry.mount(repository, &from, &blob.digest).await.unwrap_or(false)
    {
        session.remember(&blob.digest, target);
        session.count(|s| s.blobs_mounted += 1);
        event(BlobState::Mounted, blob.size);
        return Ok(());
    }
    if dry_run {
        session.count(|s| {
            s.blobs_copied += 1;
            s.bytes_copied += blob.size;
        });
        event(BlobState::Copied, 0);
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        let progress = Arc::new(AtomicU64::new(0));
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, ImageError>>(8);
        let reader = read_verified(source, blob, sender, Arc::clone(&progress), &event);
        let upload = target.put_blob(blob, Box::pin(receiver_stream(receiver)));
        let (read, upload) = tokio::join!(reader, upload);
        // The reader's error explains an upload that failed because its stream failed.
        let result = read.and(upload);
        match result {
            Ok(()) => break,
            Err(error) => {
                attempt += 1;
                let wait = error.retry_after(attempt);
                match wait {
                    Some(wait) if attempt < ATTEMPTS => {
                        tracing::info!("blob {}: {error}; copying it again in {wait:?}", blob.digest.short());
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Err(error),
                }
            }
        }
    }
    session.remember(&blob.digest, target);
    session.count(|s| {
        s.blobs_copied += 1;
        s.bytes_copied += blob.size;
    });
    event(BlobState::Copied, blob.size);
    Ok(())
}

fn receiver_stream(
    receiver: tokio::sync::mpsc::Receiver<Result<Bytes, ImageError>>,
) -> impl futures_util::Stream<Item = Result<Bytes, ImageError>> + Send {
    futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    )
}

/// Reads a blob from the source into `sender`, hashing as it goes and never reading past the
/// descriptor's size; resumes a broken download with `Range`. The last chunk is held back until
/// the digest and size are known to match, so the target never receives a complete wrong blob.
async fn read_verified(
    source: &Endpoint,
    blob: &Descriptor,
    sender: tokio::sync::mpsc::Sender<Result<Bytes, ImageError>>,
    progress: Arc<AtomicU64>,
    event: &(dyn Fn(BlobState, u64) + Sync),
) -> Result<(), ImageError> {
    let what = format!("blob {}", blob.digest);
    let mut hasher = aws_lc_rs::digest::Context::new(blob.digest.algorithm().aws());
    let mut offset = 0u64;
    let mut held: Option<Bytes> = None;
    let mut last_event = Instant::now();
    let mut resumes = 0;
    let outcome: Result<(), ImageError> = async {
        // Not retried here: the whole blob copy is (see `copy_blob`).
        let mut stream = source.blob(blob, 0).await?;
        loop {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    offset += chunk.len() as u64;
                    if offset > blob.size {
                        return Err(ImageError::SizeMismatch {
                            what: what.clone(),
                            expected: blob.size,
                            actual: offset,
                        });
                    }
                    hasher.update(&chunk);
                    progress.store(offset, Ordering::Relaxed);
                    if let Some(previous) = held.replace(chunk)
                        && sender.send(Ok(previous)).await.is_err()
                    {
                        // The upload ended early; its own error says why.
                        return Ok(());
                    }
                    if last_event.elapsed() >= Duration::from_millis(250) {
                        last_event = Instant::now();
                        event(BlobState::Copying, offset);
                    }
                }
                Some(Err(error)) if error.retry_after(1).is_some() && resumes < ATTEMPTS && offset < blob.size => {
                    resumes += 1;
                    tracing::info!("{what}: {error}; resuming at byte {offset}");
                    tokio::time::sleep(error.retry_after(resumes).unwrap_or_default()).await;
                    stream = super::retry(&what, || source.blob(blob, offset)).await?;
                }
                Some(Err(error)) => return Err(error),
                None => break,
            }
        }
        if offset != blob.size {
            return Err(ImageError::SizeMismatch { what: what.clone(), expected: blob.size, actual: offset });
        }
        let actual = Digest::from_raw(blob.digest.algorithm(), hasher.finish().as_ref());
        if actual != blob.digest {
            return Err(ImageError::DigestMismatch { what: what.clone(), expected: blob.digest.clone(), actual });
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => {
            if let Some(last) = held {
                let _ = sender.send(Ok(last)).await;
            }
            Ok(())
        }
        Err(error) => {
            // Fail the upload's stream so the target discards the partial blob.
            let _ = sender.send(Err(ImageError::Invalid(format!("source failed: {error}")))).await;
            Err(error)
        }
    }
}

/// Copies every tag `tags` matches of a repository (or of every repository under a prefix,
/// when `repositories` names the source and target prefixes) or layout.
pub async fn sync_images(
    session: &Session,
    source: &Endpoint,
    target: &Endpoint,
    copy: &CopyOptions,
    tags: &TagFilter,
    repositories: Option<(&str, &str)>,
) -> Result<(), ImageError> {
    let pairs: Vec<(Endpoint, Endpoint)> = match (repositories, source, target) {
        (
            Some((source_prefix, target_prefix)),
            Endpoint::Registry { registry, .. },
            Endpoint::Registry { registry: to, .. },
        ) => {
            let names = registry.repositories(source_prefix).await?;
            if names.is_empty() {
                return Err(ImageError::NotFound {
                    what: format!("repositories under `{}/{source_prefix}/`", registry.host()),
                });
            }
            names
                .into_iter()
                .map(|name| {
                    let rest = &name[source_prefix.len()..];
                    let from = Endpoint::Registry { registry: Arc::clone(registry), repository: name.clone() };
                    let to =
                        Endpoint::Registry { registry: Arc::clone(to), repository: format!("{target_prefix}{rest}") };
                    (from, to)
                })
                .collect()
        }
        (Some(_), _, _) => {
            return Err(ImageError::Invalid(
                "copying every repository under a prefix needs a registry (docker://) source and target".into(),
            ));
        }
        (None, _, _) => vec![(source.clone(), target.clone())],
    };
    for (from, to) in pairs {
        let listed = from.tags().await?;
        for tag in listed.into_iter().filter(|tag| tags.matches(tag)) {
            let version = Version::Tag(tag.clone());
            if let Err(error) = copy_image(session, &from, Some(&version), &to, Some(&tag), copy).await {
                session.count(|s| s.errors.push(format!("{from}:{tag}: {error}")));
            }
        }
    }
    Ok(())
}
