//! OCI image layouts (`oci:DIR[:TAG]`): `oci-layout`, `index.json`, `blobs/<alg>/<hex>`.
//!
//! Blob paths are built only from strictly parsed digests. Blobs are written to a temporary
//! name in the same directory and renamed into place after the stream ended verified; `index.json`
//! is replaced the same way.
//!
//! Every file of the layout is opened beneath a handle on the layout's directory, opened once
//! (see [`crate::confine`]): no symlink is followed on the way or at the end, and only regular
//! files are read, so a blob that is a symlink to a file elsewhere on the machine, or a FIFO
//! that would block the copy forever, is refused before a byte is read.

use std::os::fd::{AsFd, OwnedFd};
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
    /// The layout's directory, opened once; `None` for a dry run's target that does not exist.
    root: Option<OwnedFd>,
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
        let not_a_layout = |e: String| ImageError::Layout {
            path: dir.to_owned(),
            reason: format!(
                "not an OCI image layout (cannot read `oci-layout`: {e}); create one with `mover image copy SRC oci:DIR:TAG`"
            ),
        };
        let root = crate::confine::open_root(dir).map_err(|e| not_a_layout(e.to_string()))?;
        let layout = Layout {
            dir: dir.to_owned(),
            root: Some(root),
            max_manifest_bytes,
            index_lock: tokio::sync::Mutex::new(()),
        };
        let marker = layout.read_capped(b"", b"oci-layout", INDEX_CAP).map_err(not_a_layout)?;
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
        Ok(Layout { dir: dir.to_owned(), root: None, max_manifest_bytes, index_lock: tokio::sync::Mutex::new(()) })
    }

    /// Opens a layout to write into, creating it when missing. A directory that exists, is not
    /// empty and is not a layout is refused (nothing of it is overwritten).
    pub fn create(dir: &Path, max_manifest_bytes: usize) -> Result<Layout, ImageError> {
        let error = |reason: String| ImageError::Layout { path: dir.to_owned(), reason };
        if std::fs::symlink_metadata(dir.join("oci-layout")).is_ok() {
            return Layout::open(dir, max_manifest_bytes);
        }
        if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(error(
                "the directory is not empty and is not an OCI image layout: name an empty or new directory".into(),
            ));
        }
        let io = |e: std::io::Error| error(e.to_string());
        std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(io)?;
        let root = crate::confine::open_root(dir).map_err(io)?;
        write_atomic(
            root.as_fd(),
            b"index.json",
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
        )
        .map_err(io)?;
        write_atomic(root.as_fd(), b"oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
        Ok(Layout {
            dir: dir.to_owned(),
            root: Some(root),
            max_manifest_bytes,
            index_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn error(&self, reason: String) -> ImageError {
        ImageError::Layout { path: self.dir.clone(), reason }
    }

    /// The directory of a blob, relative to the layout, and its name. Safe: the digest was
    /// parsed strictly (an algorithm name and hex digits only).
    fn blob_place(digest: &Digest) -> (Vec<u8>, Vec<u8>) {
        (format!("blobs/{}", digest.algorithm().name()).into_bytes(), digest.hex().as_bytes().to_vec())
    }

    fn root(&self) -> Result<std::os::fd::BorrowedFd<'_>, String> {
        self.root.as_ref().map(AsFd::as_fd).ok_or_else(|| "the layout does not exist".to_owned())
    }

    /// Opens the regular file `name` in the directory `dir` of the layout (see the module doc);
    /// the error says what is there instead.
    fn open_file(&self, dir: &[u8], name: &[u8]) -> Result<std::fs::File, String> {
        use rustix::fs::FileType;
        let shown = || {
            let dir = crate::confine::display_bytes(dir);
            let name = crate::confine::display_bytes(name);
            if dir.is_empty() { name } else { format!("{dir}/{name}") }
        };
        let directory = crate::confine::open_dir(self.root()?, dir).map_err(|e| {
            let errno = e.raw_os_error();
            if errno == Some(rustix::io::Errno::LOOP.raw_os_error())
                || errno == Some(rustix::io::Errno::NOTDIR.raw_os_error())
            {
                format!(
                    "`{}`: `{}` is a symlink or not a directory; refusing to follow it",
                    shown(),
                    crate::confine::display_bytes(dir)
                )
            } else {
                format!("`{}`: {e}", shown())
            }
        })?;
        let kind = match crate::confine::lstat(directory.as_fd(), name) {
            Ok(None) => return Err(format!("`{}` does not exist", shown())),
            Ok(Some(stat)) => FileType::from_raw_mode(stat.st_mode),
            Err(e) => return Err(format!("`{}`: {e}", shown())),
        };
        let what = match kind {
            FileType::RegularFile => None,
            FileType::Symlink => Some("a symlink"),
            FileType::Fifo => Some("a FIFO"),
            FileType::Directory => Some("a directory"),
            FileType::Socket => Some("a socket"),
            FileType::CharacterDevice | FileType::BlockDevice => Some("a device node"),
            FileType::Unknown => Some("not a regular file"),
        };
        if let Some(what) = what {
            return Err(format!("`{}` is {what}, not a regular file; refusing to read it", shown()));
        }
        crate::confine::open_file_read(directory.as_fd(), name).map_err(|e| format!("`{}`: {e}", shown()))
    }

    /// Reads a regular file of the layout, failing past `cap` bytes.
    fn read_capped(&self, dir: &[u8], name: &[u8], cap: u64) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let file = self.open_file(dir, name)?;
        let mut bytes = Vec::new();
        file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        if bytes.len() as u64 > cap {
            return Err(format!("larger than {cap} bytes"));
        }
        Ok(bytes)
    }

    #[expect(clippy::unused_async, reason = "the layout side of `Endpoint`'s async API; small reads of a local file")]
    async fn read_index(&self) -> Result<IndexFile, ImageError> {
        let bytes =
            self.read_capped(b"", b"index.json", INDEX_CAP).map_err(|e| self.error(format!("index.json: {e}")))?;
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
        let (dir, name) = Layout::blob_place(&digest);
        let cap = self.max_manifest_bytes as u64;
        let bytes = self.read_capped(&dir, &name, cap).map_err(|e| {
            if e == format!("larger than {cap} bytes") {
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
        let (dir, name) = Layout::blob_place(&descriptor.digest);
        let file = self.open_file(&dir, &name).map_err(|e| self.error(format!("blob {}: {e}", descriptor.digest)))?;
        let mut file = tokio::fs::File::from_std(file);
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
    #[expect(clippy::unused_async, reason = "the layout side of `Endpoint`'s async API; small reads of a local file")]
    pub async fn has_blob(&self, descriptor: &Descriptor) -> bool {
        let (dir, name) = Layout::blob_place(&descriptor.digest);
        let Ok(root) = self.root() else { return false };
        let Ok(dir) = crate::confine::open_dir(root, &dir) else { return false };
        crate::confine::lstat(dir.as_fd(), &name).ok().flatten().is_some_and(|stat| {
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile
                && u64::try_from(stat.st_size).ok() == Some(descriptor.size)
        })
    }

    /// Writes a blob under a temporary name, renamed into place when the stream ended (the
    /// stream fails instead of ending when the content does not match its digest).
    pub async fn put_blob(&self, descriptor: &Descriptor, mut stream: BlobStream) -> Result<(), ImageError> {
        let (dir, name) = Layout::blob_place(&descriptor.digest);
        let root = self.root().map_err(|e| self.error(e))?;
        let io = |e: std::io::Error| self.error(e.to_string());
        let algorithm = &dir[b"blobs/".len()..];
        let blobs = crate::confine::open_dir(root, b"blobs").or_else(|_| {
            rustix::fs::mkdirat(root, c"blobs", DIR_MODE)?;
            crate::confine::open_dir(root, b"blobs")
        });
        let dir = blobs
            .and_then(|blobs| {
                match rustix::fs::mkdirat(&blobs, crate::confine::cname(algorithm).as_c_str(), DIR_MODE) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                crate::confine::open_subdir(blobs.as_fd(), algorithm)
            })
            .map_err(io)?;
        let temp = temp_name(&name);
        let result = async {
            let file = create_readable(dir.as_fd(), &temp).map_err(io)?;
            let mut file = tokio::fs::File::from_std(file);
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk?).await.map_err(|e| self.error(format!("writing a blob: {e}")))?;
            }
            file.flush().await.map_err(io)?;
            drop(file);
            rename_at(dir.as_fd(), &temp, &name).map_err(io)
        }
        .await;
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&dir, crate::confine::cname(&temp).as_c_str(), rustix::fs::AtFlags::empty());
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
        let root = self.root().map_err(|e| self.error(e))?;
        write_atomic(root, b"index.json", &bytes).map_err(|e| self.error(format!("writing index.json: {e}")))
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

/// Layout directories and files are readable by all, as other tools write them.
const DIR_MODE: rustix::fs::Mode = rustix::fs::Mode::from_raw_mode(0o755);

/// Creates the new file `name` in `dir` (never through a symlink), mode 0644.
fn create_readable(dir: std::os::fd::BorrowedFd<'_>, name: &[u8]) -> std::io::Result<std::fs::File> {
    let file = crate::confine::create_file(dir, name)?;
    rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o644))?;
    Ok(file)
}

/// A temporary name beside `name`, unique in this process.
fn temp_name(name: &[u8]) -> Vec<u8> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut temp = b".tmp-".to_vec();
    temp.extend_from_slice(name);
    temp.extend_from_slice(format!("-{}-{unique}", std::process::id()).as_bytes());
    temp
}

fn rename_at(dir: std::os::fd::BorrowedFd<'_>, from: &[u8], to: &[u8]) -> std::io::Result<()> {
    use crate::confine::cname;
    rustix::fs::renameat(dir, cname(from).as_c_str(), dir, cname(to).as_c_str()).map_err(std::io::Error::from)
}

/// Replaces `name` in `dir` with `bytes` through a temporary file and a rename.
fn write_atomic(dir: std::os::fd::BorrowedFd<'_>, name: &[u8], bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = temp_name(name);
    let result = create_readable(dir, &temp)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| rename_at(dir, &temp, name));
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, crate::confine::cname(&temp).as_c_str(), rustix::fs::AtFlags::empty());
    }
    result
}
