//! A builder of OCI image layouts on disk (image-spec `image-layout.md`): the `oci-layout` file,
//! `index.json` and content-addressed blobs under `blobs/sha256/<hex>`.
//!
//! Blobs are streamed: a random layer of any size is generated, hashed and written in pieces, never
//! held in memory whole. Random layers are real gzip streams (stored, i.e. uncompressed, deflate
//! blocks around random bytes), so they are incompressible, `gzip -t` accepts them, and tools that
//! compress layers they detect as uncompressed (skopeo does) leave them, and their digests, alone.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use mover_testdata::oci::{LayoutBuilder, OCI_LAYER_GZIP};
//! let mut layout = LayoutBuilder::new("/tmp/layout".as_ref())?;
//! let layer = layout.random_blob(64 << 20, 1, OCI_LAYER_GZIP)?;
//! let manifest = layout.image("linux", "amd64", &[layer], false)?;
//! layout.tag("v1", &manifest)?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image configuration.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip-compressed layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker image manifest, version 2, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image configuration.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip-compressed layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The four manifest media types, as a registry client lists them in `Accept`.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
/// The annotation that names a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Size of the pieces blobs are written in.
const PIECE: usize = 1 << 20;
/// Largest payload of one stored deflate block.
const STORED_MAX: u64 = 65_535;
/// gzip header (10 bytes) and trailer (CRC-32 and size, 8 bytes).
const GZIP_FRAMING: u64 = 18;
/// Header of one stored deflate block: BFINAL/BTYPE byte, LEN, NLEN.
const BLOCK_HEADER: u64 = 5;

/// A content descriptor: what a manifest or index says about a blob.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Descriptor {
    /// Media type, e.g. [`OCI_MANIFEST`].
    pub media_type: String,
    /// `sha256:<64 lowercase hex digits>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

impl Descriptor {
    /// The descriptor as JSON: `{"mediaType", "digest", "size"}`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }

    /// The 64 hex digits of the digest.
    #[must_use]
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    /// The same blob under another media type.
    #[must_use]
    pub fn with_media_type(&self, media_type: &str) -> Descriptor {
        Descriptor { media_type: media_type.to_owned(), ..self.clone() }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn digest_string(hasher: Sha256) -> String {
    format!("sha256:{}", hex(&hasher.finalize()))
}

/// `sha256:<hex>` of `bytes`.
#[must_use]
pub fn sha256_bytes(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    digest_string(hasher)
}

/// `sha256:<hex>` of the file at `path`, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; PIECE];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(digest_string(hasher))
}

/// CRC-32 (IEEE, as gzip uses it), table-driven.
struct Crc32 {
    value: u32,
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32 {
    fn new() -> Self {
        Crc32 { value: !0 }
    }

    fn update(&mut self, bytes: &[u8]) {
        let mut c = self.value;
        for &b in bytes {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.value = c;
    }

    fn finish(&self) -> u32 {
        !self.value
    }
}

/// A file being written under a temporary name while its SHA-256 is computed.
struct BlobWriter {
    out: BufWriter<File>,
    hasher: Sha256,
    size: u64,
    temp: PathBuf,
}

impl BlobWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.out.write_all(bytes)
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Builds an OCI image layout in a directory. See the [module documentation](self).
#[derive(Debug)]
pub struct LayoutBuilder {
    dir: PathBuf,
    /// Tags in `index.json`, in the order they were first given.
    tags: Vec<(String, Descriptor)>,
    /// The uncompressed digest (diff ID) of each layer written as gzip, by compressed digest.
    diff_ids: HashMap<String, String>,
}

impl LayoutBuilder {
    /// Creates `dir` (and its parents) if needed and writes `oci-layout`, `blobs/sha256/` and an
    /// empty `index.json` in it.
    pub fn new(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir.join("blobs").join("sha256"))?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let builder = LayoutBuilder { dir: dir.to_owned(), tags: Vec::new(), diff_ids: HashMap::new() };
        builder.write_index()?;
        Ok(builder)
    }

    /// The layout's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob with `digest` (`sha256:<hex>`) is stored in the layout at `dir`.
    #[must_use]
    pub fn blob_path_in(dir: &Path, digest: &str) -> PathBuf {
        dir.join("blobs").join("sha256").join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    /// Where the blob with `digest` is stored in this layout.
    #[must_use]
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        Self::blob_path_in(&self.dir, digest)
    }

    fn begin(&self) -> io::Result<BlobWriter> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join("blobs").join("sha256").join(format!(".tmp-{}-{n}", std::process::id()));
        let out = BufWriter::with_capacity(PIECE, File::create(&temp)?);
        Ok(BlobWriter { out, hasher: Sha256::new(), size: 0, temp })
    }

    fn finish(&self, writer: BlobWriter, media_type: &str) -> io::Result<Descriptor> {
        let BlobWriter { out, hasher, size, temp } = writer;
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        let digest = digest_string(hasher);
        fs::rename(&temp, self.blob_path(&digest))?;
        Ok(Descriptor { media_type: media_type.to_owned(), digest, size })
    }

    /// Writes a blob of exactly `size` bytes of deterministic, incompressible content derived from
    /// `seed`: a valid gzip stream whose decompressed content is
    /// [`random_bytes`](crate::random_bytes)`(seed, n)` for some `n` slightly below `size` (stored
    /// deflate blocks of at most 64 KiB, 5 bytes of framing each, plus 18 bytes of gzip header and
    /// trailer). Blobs smaller than 23 bytes cannot hold that framing and are plain random bytes.
    /// The content is streamed (64 KiB blocks through a 1 MiB write buffer), so any size is fine.
    pub fn random_blob(&mut self, size: u64, seed: u64, media_type: &str) -> io::Result<Descriptor> {
        let mut writer = self.begin()?;
        let mut random = crate::xof(seed);
        let mut buf = vec![0u8; STORED_MAX as usize];
        let minimum = GZIP_FRAMING + BLOCK_HEADER;
        if size < minimum {
            let piece = &mut buf[..size as usize];
            random.fill(piece);
            writer.write(piece)?;
            return self.finish(writer, media_type);
        }
        // The fewest blocks that can carry the rest: then the payload fits, possibly with an empty
        // last block.
        let blocks = (size - GZIP_FRAMING).div_ceil(STORED_MAX + BLOCK_HEADER);
        let payload = size - GZIP_FRAMING - BLOCK_HEADER * blocks;
        debug_assert!(payload <= blocks * STORED_MAX);
        writer.write(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        let mut crc = Crc32::new();
        let mut plain = Sha256::new();
        let mut left = payload;
        for block in 0..blocks {
            let len = left.min(STORED_MAX) as u16;
            let last = block + 1 == blocks;
            let mut header = [u8::from(last), 0, 0, 0, 0];
            header[1..3].copy_from_slice(&len.to_le_bytes());
            header[3..5].copy_from_slice(&(!len).to_le_bytes());
            writer.write(&header)?;
            let piece = &mut buf[..usize::from(len)];
            random.fill(piece);
            crc.update(piece);
            plain.update(&*piece);
            writer.write(piece)?;
            left -= u64::from(len);
        }
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&crc.finish().to_le_bytes());
        trailer[4..].copy_from_slice(&(payload as u32).to_le_bytes());
        writer.write(&trailer)?;
        let descriptor = self.finish(writer, media_type)?;
        self.diff_ids.insert(descriptor.digest.clone(), digest_string(plain));
        Ok(descriptor)
    }

    /// Writes `bytes` as a blob.
    pub fn bytes_blob(&mut self, bytes: &[u8], media_type: &str) -> io::Result<Descriptor> {
        let mut writer = self.begin()?;
        for piece in bytes.chunks(PIECE) {
            writer.write(piece)?;
        }
        self.finish(writer, media_type)
    }

    /// The diff ID (digest of the uncompressed content) recorded for a layer: for gzip layers
    /// made by [`random_blob`](Self::random_blob), the digest of the payload; otherwise the
    /// layer's own digest.
    #[must_use]
    pub fn diff_id(&self, layer: &Descriptor) -> String {
        self.diff_ids.get(&layer.digest).cloned().unwrap_or_else(|| layer.digest.clone())
    }

    /// Writes an image: a configuration blob (`architecture`, `os`, `variant` when `arch` is
    /// given as `arch/variant`, and `rootfs.diff_ids`) and a manifest referring to it and to
    /// `layers`, which must be blobs of this layout. The manifest is an OCI image manifest with
    /// a `mediaType` field, or with `docker` a Docker v2 schema 2 manifest (configuration type
    /// [`DOCKER_CONFIG`]; layers of type [`OCI_LAYER_GZIP`] are listed as [`DOCKER_LAYER_GZIP`],
    /// other types as given). Returns the manifest's descriptor.
    pub fn image(&mut self, os: &str, arch: &str, layers: &[Descriptor], docker: bool) -> io::Result<Descriptor> {
        Ok(self.image_with_config(os, arch, layers, docker)?.0)
    }

    /// [`image`](Self::image), returning the descriptors of the manifest and of the configuration.
    pub fn image_with_config(
        &mut self,
        os: &str,
        arch: &str,
        layers: &[Descriptor],
        docker: bool,
    ) -> io::Result<(Descriptor, Descriptor)> {
        let (architecture, variant) = split_arch(arch);
        let diff_ids: Vec<String> = layers.iter().map(|l| self.diff_id(l)).collect();
        let mut config = json!({
            "architecture": architecture,
            "os": os,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(variant) = variant {
            config["variant"] = json!(variant);
        }
        let config_type = if docker { DOCKER_CONFIG } else { OCI_CONFIG };
        let config = self.bytes_blob(&pretty(&config)?, config_type)?;
        let layers: Vec<Value> = layers
            .iter()
            .map(|l| {
                if docker && l.media_type == OCI_LAYER_GZIP { l.with_media_type(DOCKER_LAYER_GZIP) } else { l.clone() }
                    .to_json()
            })
            .collect();
        let media_type = if docker { DOCKER_MANIFEST } else { OCI_MANIFEST };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.to_json(),
            "layers": layers,
        });
        Ok((self.bytes_blob(&pretty(&manifest)?, media_type)?, config))
    }

    /// Writes an index over `children` (manifest descriptor, os, arch or `arch/variant`), each
    /// listed with its `platform`: an OCI image index, or with `docker` a Docker manifest list.
    /// Returns its descriptor.
    pub fn index(&mut self, children: &[(Descriptor, &str, &str)], docker: bool) -> io::Result<Descriptor> {
        let manifests: Vec<Value> = children
            .iter()
            .map(|(child, os, arch)| {
                let (architecture, variant) = split_arch(arch);
                let mut entry = child.to_json();
                entry["platform"] = json!({"architecture": architecture, "os": os});
                if let Some(variant) = variant {
                    entry["platform"]["variant"] = json!(variant);
                }
                entry
            })
            .collect();
        let media_type = if docker { DOCKER_LIST } else { OCI_INDEX };
        let index = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
        self.bytes_blob(&pretty(&index)?, media_type)
    }

    /// Tags `desc` as `name` in `index.json` (an entry annotated with [`REF_NAME`]), replacing an
    /// earlier tag of that name; `index.json` is rewritten each time.
    pub fn tag(&mut self, name: &str, desc: &Descriptor) -> io::Result<()> {
        match self.tags.iter_mut().find(|(tag, _)| tag == name) {
            Some(entry) => entry.1 = desc.clone(),
            None => self.tags.push((name.to_owned(), desc.clone())),
        }
        self.write_index()
    }

    fn write_index(&self) -> io::Result<()> {
        let manifests: Vec<Value> = self
            .tags
            .iter()
            .map(|(name, desc)| {
                let mut entry = desc.to_json();
                entry["annotations"] = json!({ REF_NAME: name });
                entry
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        let temp = self.dir.join(".index.json.tmp");
        fs::write(&temp, pretty(&index)?)?;
        fs::rename(temp, self.dir.join("index.json"))
    }
}

fn split_arch(arch: &str) -> (&str, Option<&str>) {
    match arch.split_once('/') {
        Some((arch, variant)) => (arch, Some(variant)),
        None => (arch, None),
    }
}

fn pretty(value: &Value) -> io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(io::Error::other)
}

/// One image of a [`Sample`].
#[derive(Clone, Debug)]
pub struct SampleImage {
    /// `linux`.
    pub os: String,
    /// `amd64` or `arm64`.
    pub arch: String,
    /// The image manifest.
    pub manifest: Descriptor,
    /// The configuration blob.
    pub config: Descriptor,
    /// All layers of the image, in order: the shared ones, then the image's own.
    pub layers: Vec<Descriptor>,
}

/// What [`sample_multiarch`] built.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The layout's directory.
    pub dir: PathBuf,
    /// The index over both images, tagged `multi`.
    pub index: Descriptor,
    /// linux/amd64 (also tagged `single`), then linux/arm64.
    pub images: Vec<SampleImage>,
    /// The three layers both images share.
    pub shared_layers: Vec<Descriptor>,
}

impl Sample {
    /// Every distinct descriptor, each once: the index, the manifests, the configurations and
    /// the layers.
    #[must_use]
    pub fn descriptors(&self) -> Vec<&Descriptor> {
        let mut all = vec![&self.index];
        for image in &self.images {
            all.push(&image.manifest);
            all.push(&image.config);
            all.extend(&image.layers);
        }
        let mut seen = std::collections::HashSet::new();
        all.retain(|d| seen.insert(d.digest.clone()));
        all
    }

    /// The linux/amd64 image (tagged `single`).
    #[must_use]
    pub fn single(&self) -> &SampleImage {
        &self.images[0]
    }

    /// Sum of the sizes of all distinct blobs.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.descriptors().iter().map(|d| d.size).sum()
    }
}

/// Builds a two-platform OCI layout in `dir`: three random layers of `layer_size` bytes shared by
/// both images and one of `layer_size` bytes per platform, images for linux/amd64 and
/// linux/arm64, an OCI index over them tagged `multi`, and the amd64 image alone tagged `single`.
pub fn sample_multiarch(dir: &Path, layer_size: u64) -> io::Result<Sample> {
    sample_multiarch_with(dir, layer_size, false)
}

/// [`sample_multiarch`], or with `docker` the same in Docker formats (schema 2 manifests and a
/// manifest list; layers as [`DOCKER_LAYER_GZIP`]).
pub fn sample_multiarch_with(dir: &Path, layer_size: u64, docker: bool) -> io::Result<Sample> {
    let mut layout = LayoutBuilder::new(dir)?;
    let layer_type = if docker { DOCKER_LAYER_GZIP } else { OCI_LAYER_GZIP };
    let shared_layers: Vec<Descriptor> =
        (1..=3).map(|seed| layout.random_blob(layer_size, seed, layer_type)).collect::<io::Result<_>>()?;
    let mut images = Vec::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let own = layout.random_blob(layer_size, 100 + i as u64, layer_type)?;
        let mut layers = shared_layers.clone();
        layers.push(own);
        let (manifest, config) = layout.image_with_config("linux", arch, &layers, docker)?;
        images.push(SampleImage { os: "linux".into(), arch: arch.into(), manifest, config, layers });
    }
    let children: Vec<(Descriptor, &str, &str)> =
        images.iter().map(|i| (i.manifest.clone(), i.os.as_str(), i.arch.as_str())).collect();
    let index = layout.index(&children, docker)?;
    layout.tag("multi", &index)?;
    layout.tag("single", &images[0].manifest)?;
    Ok(Sample { dir: dir.to_owned(), index, images, shared_layers })
}

#[cfg(test)]
mod tests;
