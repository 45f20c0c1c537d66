//! OCI image layouts (`oci:DIR[:TAG]`): `oci-layout`, `index.json`, `blobs/<alg>/<hex>`.
//!
//! Blob paths are built only from strictly parsed digests. Blobs are written to a temporary
//! name in the same directory and renamed into place after the stream ended verified; `index.json`
//! is replaced the same way.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::manifest::{self, Descriptor};
use super::reference::{Digest, Version};
use super::{BlobStream, ImageError, RawManifest};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Cap on `index.json` (about 40,000 entries).
const INDEX_CAP: u64 = 8 << 20;
const READ_CHUNK: usize = 1 << 20;

/// An OCI image layout directory.
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    max_manifest_bytes: usize,
    /// Serialises `index.json` updates.
    index_lock: tokio::sync::Mutex<()>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<IndexEntry>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl IndexEntry {
    fn ref_name(&self) -> Option<&str> {
        self.annotations.as_ref()?.get(REF_NAME)?.as_str()
    }
}

impl Layout {
    /// Opens an existing layout to read from.
    pub fn open(dir: &Path, max_manifest_bytes: usize) -> Result<Layout, ImageError> {
        let layout = Layout { dir: dir.to_owned(), max_manifest_bytes, index_lock: tokio::sync::Mutex::new(()) };
        let marker = std::fs::read(dir.join("oci-layout")).map_err(|e| {
            layout.error(format!("not an OCI image layout (cannot read `oci-layout`: {e}); create one with `mover image copy SRC oci:DIR:TAG`"))
        })?;
        let marker: serde_json::Value =
            serde_json::from_slice(&marker).map_err(|e| layout.error(format!("`oci-layout` is not JSON: {e}")))?;
        if marker.get("imageLayoutVersion").and_then(|v| v.as_str()).is_none_or(|v| !v.starts_with("1.")) {
            return Err(layout.error("`oci-layout` does not declare imageLayoutVersion 1.x".into()));
        }
        Ok(layout)
    }

    /// A layout to plan a dry run against: opened when it exists, nothing created when not
    /// (a dry run writes nothing; a missing layout simply has no blobs).
    pub fn for_dry_run(dir: &Path, max_manifest_bytes: usize) -> Result<Layout, ImageError> {
        if dir.join("oci-layout").exists() {
            return Layout::open(dir, max_manifest_bytes);
        }
        Ok(Layout { dir: dir.to_owned(), max_manifest_bytes, index_lock: tokio::sync::Mutex::new(()) })
    }

    /// Opens a layout to write into, creating it when missing. A directory that exists, is not
    /// empty and is not a layout is refused (nothing of it is overwritten).
    pub fn create(dir: &Path, max_manifest_bytes: usize) -> Result<Layout, ImageError> {
        let layout = Layout { dir: dir.to_owned(), max_manifest_bytes, index_lock: tokio::sync::Mutex::new(()) };
        if dir.join("oci-layout").exists() {
            return Layout::open(dir, max_manifest_bytes);
        }
        if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(layout.error(
                "the directory is not empty and is not an OCI image layout: name an empty or new directory".into(),
            ));
        }
        let io = |e: std::io::Error| layout.error(e.to_string());
        std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(io)?;
        write_atomic(
            &dir.join("index.json"),
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
        )
        .map_err(io)?;
        write_atomic(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
        Ok(layout)
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn error(&self, reason: String) -> ImageError {
        ImageError::Layout { path: self.dir.clone(), reason }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        // Safe: the digest was parsed strictly (an algorithm name and hex digits only).
        self.dir.join("blobs").join(digest.algorithm().name()).join(digest.hex())
    }

    async fn read_index(&self) -> Result<IndexFile, ImageError> {
        let path = self.dir.join("index.json");
        let bytes = read_file_capped(&path, INDEX_CAP).await.map_err(|e| self.error(format!("index.json: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| self.error(format!("index.json is not a valid OCI index: {e}")))
    }

    /// The manifest a tag (or the only entry) names, or the one with a digest.
    pub async fn manifest(&self, version: Option<&Version>) -> Result<RawManifest, ImageError> {
        let (digest, media_type) = match version {
            Some(Version::Digest(digest)) => (digest.clone(), None),
            Some(Version::Tag(tag)) => {
                let index = self.read_index().await?;
                let entry = index.manifests.iter().find(|e| e.ref_name() == Some(tag.as_str())).ok_or_else(|| {
                    let tags: Vec<&str> = index.manifests.iter().filter_map(IndexEntry::ref_name).collect();
                    ImageError::NotFound {
                        what: format!(
                            "tag `{tag}` in OCI layout `{}` (it has: {})",
                            self.dir.display(),
                            tags.join(", ")
                        ),
                    }
                })?;
                (entry.digest.clone(), Some(entry.media_type.clone()))
            }
            None => {
                let index = self.read_index().await?;
                match index.manifests.as_slice() {
                    [only] => (only.digest.clone(), Some(only.media_type.clone())),
                    [] => {
                        return Err(ImageError::NotFound {
                            what: format!("any image in OCI layout `{}`", self.dir.display()),
                        });
                    }
                    many => {
                        let tags: Vec<&str> = many.iter().filter_map(IndexEntry::ref_name).collect();
                        return Err(ImageError::Invalid(format!(
                            "OCI layout `{}` holds {} images: name one with `oci:{}:TAG` (tags: {})",
                            self.dir.display(),
                            many.len(),
                            self.dir.display(),
                            tags.join(", ")
                        )));
                    }
                }
            }
        };
        let what = format!("manifest {digest} in `{}`", self.dir.display());
        let bytes = read_file_capped(&self.blob_path(&digest), self.max_manifest_bytes as u64).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::FileTooLarge {
                ImageError::Manifest {
                    what: what.clone(),
                    problem: manifest::ManifestError::TooLarge { limit: self.max_manifest_bytes },
                }
            } else {
                self.error(format!("{what}: {e}"))
            }
        })?;
        super::registry::finish_manifest(
            &what,
            Bytes::from(bytes),
            &media_type.unwrap_or_default(),
            Some(&Version::Digest(digest)),
        )
    }

    /// Streams a blob from `offset`, never more than its descriptor's size (+1, so a longer
    /// file is noticed).
    pub async fn blob(&self, descriptor: &Descriptor, offset: u64) -> Result<BlobStream, ImageError> {
        let path = self.blob_path(&descriptor.digest);
        let mut file =
            tokio::fs::File::open(&path).await.map_err(|e| self.error(format!("blob {}: {e}", descriptor.digest)))?;
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| self.error(e.to_string()))?;
        }
        let limit = descriptor.size.saturating_sub(offset) + 1;
        let dir = self.dir.clone();
        let stream = futures_util::stream::try_unfold((file, limit), move |(mut file, left)| {
            let dir = dir.clone();
            async move {
                if left == 0 {
                    return Ok(None);
                }
                let mut buffer = BytesMut::zeroed(READ_CHUNK.min(left as usize));
                let n = file
                    .read(&mut buffer)
                    .await
                    .map_err(|e| ImageError::Layout { path: dir, reason: format!("reading a blob: {e}") })?;
                if n == 0 {
                    return Ok(None);
                }
                buffer.truncate(n);
                Ok(Some((buffer.freeze(), (file, left - n as u64))))
            }
        });
        Ok(Box::pin(stream))
    }

    /// Whether a blob of the right size is there.
    pub async fn has_blob(&self, descriptor: &Descriptor) -> bool {
        tokio::fs::symlink_metadata(self.blob_path(&descriptor.digest))
            .await
            .is_ok_and(|m| m.is_file() && m.len() == descriptor.size)
    }

    /// Writes a blob under a temporary name, renamed into place when the stream ended (the
    /// stream fails instead of ending when the content does not match its digest).
    pub async fn put_blob(&self, descriptor: &Descriptor, mut stream: BlobStream) -> Result<(), ImageError> {
        let target = self.blob_path(&descriptor.digest);
        let dir = target.parent().expect("blob paths have a parent").to_owned();
        tokio::fs::create_dir_all(&dir).await.map_err(|e| self.error(e.to_string()))?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp = dir.join(format!(".tmp-{}-{}-{unique}", descriptor.digest.hex(), std::process::id()));
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await.map_err(|e| self.error(e.to_string()))?;
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk?).await.map_err(|e| self.error(format!("writing a blob: {e}")))?;
            }
            file.flush().await.map_err(|e| self.error(e.to_string()))?;
            drop(file);
            tokio::fs::rename(&temp, &target).await.map_err(|e| self.error(e.to_string()))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    /// Writes a manifest blob; with a tag, points the tag at it in `index.json`.
    pub async fn put_manifest(&self, manifest: &RawManifest, tag: Option<&str>) -> Result<(), ImageError> {
        let descriptor = Descriptor {
            media_type: manifest.media_type.clone(),
            digest: manifest.digest.clone(),
            size: manifest.bytes.len() as u64,
            platform: None,
            urls: None,
        };
        if !self.has_blob(&descriptor).await {
            let bytes = manifest.bytes.clone();
            self.put_blob(&descriptor, Box::pin(futures_util::stream::once(async move { Ok(bytes) }))).await?;
        }
        let Some(tag) = tag else { return Ok(()) };
        let _guard = self.index_lock.lock().await;
        let mut index = self.read_index().await?;
        index.manifests.retain(|entry| entry.ref_name() != Some(tag));
        let mut annotations = serde_json::Map::new();
        annotations.insert(REF_NAME.to_owned(), tag.into());
        index.manifests.push(IndexEntry {
            media_type: descriptor.media_type,
            digest: descriptor.digest,
            size: descriptor.size,
            annotations: Some(annotations),
            rest: serde_json::Map::new(),
        });
        let bytes = serde_json::to_vec(&index).expect("an index serialises");
        let path = self.dir.join("index.json");
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .expect("index writer")
            .map_err(|e| self.error(format!("writing index.json: {e}")))
    }

    /// The tags in `index.json`.
    pub async fn tags(&self) -> Result<Vec<String>, ImageError> {
        let index = self.read_index().await?;
        let mut tags: Vec<String> = index
            .manifests
            .iter()
            .filter_map(IndexEntry::ref_name)
            .filter(|t| super::reference::valid_tag(t))
            .map(str::to_owned)
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }
}

async fn read_file_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).await?;
    if bytes.len() as u64 > cap {
        return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, format!("larger than {cap} bytes")));
    }
    Ok(bytes)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}
