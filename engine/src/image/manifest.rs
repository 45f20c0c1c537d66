//! Manifests and indexes: parsed only for what a copy needs (the descriptors they reference),
//! never re-serialised. The bytes that were fetched are the bytes that are pushed, so every
//! digest is preserved.

use serde::Deserialize;

use super::reference::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Every manifest type we accept, for `Accept` headers.
pub const ACCEPTED: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Default cap on the size of one manifest (bytes), checked while reading, before parsing.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Cap on children in one index.
pub const MAX_CHILDREN: usize = 1024;
/// Cap on blobs referenced by one image manifest.
pub const MAX_LAYERS: usize = 1024;
/// Cap on index nesting (an index of indexes of manifests is depth 2).
pub const MAX_DEPTH: usize = 4;

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Larger than the cap.
    #[error("manifest is larger than the {limit}-byte limit")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// Not JSON of the expected shape.
    #[error("manifest is not valid: {0}")]
    Invalid(String),
    /// A media type we do not copy.
    #[error(
        "unsupported manifest media type `{0}` (supported: OCI manifests and indexes, Docker schema 2 manifests and lists)"
    )]
    Unsupported(String),
    /// Too many children or blobs.
    #[error("manifest references {count} {what}, more than the limit of {limit}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many.
        count: usize,
        /// The cap.
        limit: usize,
    },
    /// Indexes nested too deep.
    #[error("image indexes are nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
}

/// A platform, as in an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`...
    pub os: String,
    /// `amd64`, `arm64`...
    pub architecture: String,
    /// `v7`, `v8`...
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `OS/ARCH[/VARIANT]`.
    pub fn parse(text: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => {
                Ok(Platform { os: (*os).to_owned(), architecture: (*arch).to_owned(), variant: None })
            }
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(format!("invalid platform `{text}`: expected OS/ARCH or OS/ARCH/VARIANT, e.g. linux/arm64/v8")),
        }
    }

    /// Whether an index entry's platform matches this selection (a selection without a
    /// variant matches every variant).
    #[must_use]
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.variant {
            Some(variant) => write!(f, "{}/{}/{variant}", self.os, self.architecture),
            None => write!(f, "{}/{}", self.os, self.architecture),
        }
    }
}

/// A reference to content: a blob or a child manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    /// Its media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Its digest, parsed strictly.
    pub digest: Digest,
    /// Its size in bytes: no more is ever read.
    pub size: u64,
    /// For index entries.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Foreign layers carry URLs and are not copied (as skopeo does).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    /// Non-distributable (foreign) layers live elsewhere and are not pushed to registries.
    #[must_use]
    pub fn is_foreign(&self) -> bool {
        self.urls.as_ref().is_some_and(|urls| !urls.is_empty())
            && (self.media_type.contains("foreign") || self.media_type.contains("nondistributable"))
    }
}

/// What a manifest references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// An image: a config and layers (and optionally a subject, which is not followed).
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layer blobs.
        layers: Vec<Descriptor>,
    },
    /// An index or manifest list.
    Index {
        /// The child manifests.
        manifests: Vec<Descriptor>,
    },
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Its media type, as it must be sent in `Content-Type` when pushed.
    pub media_type: String,
    /// What it references.
    pub content: Content,
}

#[derive(Deserialize)]
struct Document {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

/// Parses a manifest of at most [`MAX_MANIFEST_BYTES`]. `content_type` is the registry's
/// `Content-Type` or the layout descriptor's media type; the document's own `mediaType` wins when
/// present.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, ManifestError> {
    parse_with_limit(bytes, content_type, MAX_MANIFEST_BYTES)
}

/// [`parse`] with another size cap (`--max-manifest-size`).
pub fn parse_with_limit(bytes: &[u8], content_type: Option<&str>, limit: usize) -> Result<Parsed, ManifestError> {
    if bytes.len() > limit {
        return Err(ManifestError::TooLarge { limit });
    }
    let document: Document = serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))?;
    if document.schema_version != Some(2) {
        return Err(match document.schema_version {
            Some(1) => ManifestError::Unsupported("application/vnd.docker.distribution.manifest.v1+json".into()),
            other => ManifestError::Invalid(format!("schemaVersion is {other:?}, expected 2")),
        });
    }
    let content_type = content_type.map(|ct| ct.split(';').next().unwrap_or_default().trim());
    let media_type = match (document.media_type.as_deref(), content_type) {
        (Some(declared), _) => declared.to_owned(),
        (None, Some(ct)) if ACCEPTED.contains(&ct) => ct.to_owned(),
        // OCI documents may omit mediaType: tell them apart by shape.
        (None, _) if document.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, _) => OCI_MANIFEST.to_owned(),
    };
    let content = match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let manifests =
                document.manifests.ok_or_else(|| ManifestError::Invalid("an index without `manifests`".into()))?;
            if manifests.len() > MAX_CHILDREN {
                return Err(ManifestError::TooMany { what: "manifests", count: manifests.len(), limit: MAX_CHILDREN });
            }
            Content::Index { manifests }
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = document.config.ok_or_else(|| ManifestError::Invalid("a manifest without `config`".into()))?;
            let layers = document.layers.unwrap_or_default();
            if layers.len() > MAX_LAYERS {
                return Err(ManifestError::TooMany { what: "layers", count: layers.len(), limit: MAX_LAYERS });
            }
            Content::Image { config, layers }
        }
        other => return Err(ManifestError::Unsupported(other.chars().take(100).collect())),
    };
    Ok(Parsed { media_type, content })
}

/// Whether a media type names a manifest or index (as opposed to a blob).
#[must_use]
pub fn is_manifest_type(media_type: &str) -> bool {
    ACCEPTED.contains(&media_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn image_and_index() {
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"c","digest":"{D}","size":3}},
               "layers":[{{"mediaType":"l","digest":"{D}","size":7,"annotations":{{"x":"y"}}}}]}}"#
        );
        let parsed = parse(image.as_bytes(), None).unwrap();
        assert_eq!(parsed.media_type, OCI_MANIFEST);
        assert!(
            matches!(parsed.content, Content::Image { ref layers, .. } if layers.len() == 1 && layers[0].size == 7)
        );

        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":3,
               "platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let parsed = parse(index.as_bytes(), Some("application/json")).unwrap();
        assert_eq!(parsed.media_type, OCI_INDEX);
        let Content::Index { manifests } = parsed.content else { panic!() };
        assert!(Platform::parse("linux/arm64").unwrap().matches(manifests[0].platform.as_ref().unwrap()));
        assert!(!Platform::parse("linux/arm64/v7").unwrap().matches(manifests[0].platform.as_ref().unwrap()));
    }

    #[test]
    fn refusals() {
        assert!(matches!(parse(b"{}", None), Err(ManifestError::Invalid(_))));
        assert!(matches!(parse(br#"{"schemaVersion":1}"#, None), Err(ManifestError::Unsupported(_))));
        let bad_digest = r#"{"schemaVersion":2,"config":{"mediaType":"c","digest":"sha256:../../etc","size":1}}"#;
        assert!(matches!(parse(bad_digest.as_bytes(), None), Err(ManifestError::Invalid(_))));
        let negative = format!(r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{D}","size":-1}}}}"#);
        assert!(parse(negative.as_bytes(), None).is_err());
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(parse(&huge, None), Err(ManifestError::TooLarge { .. })));
        let many: Vec<String> = (0..=MAX_CHILDREN)
            .map(|_| format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1}}"#))
            .collect();
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, many.join(","));
        assert!(matches!(parse(index.as_bytes(), None), Err(ManifestError::TooMany { .. })));
        let other = format!(
            r#"{{"schemaVersion":2,"mediaType":"text/plain","config":{{"mediaType":"c","digest":"{D}","size":1}}}}"#
        );
        assert!(matches!(parse(other.as_bytes(), None), Err(ManifestError::Unsupported(_))));
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse(&bytes, None);
            let _ = parse(&bytes, Some(OCI_INDEX));
        }

        #[test]
        fn parsing_mutated_manifests_never_panics(cut in 0usize..400, flip in 0usize..400, byte in proptest::num::u8::ANY) {
            let mut text = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":3,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#
            ).into_bytes();
            let flip = flip % text.len();
            text[flip] = byte;
            text.truncate(cut.max(1).min(text.len()));
            let _ = parse(&text, None);
        }
    }

    #[test]
    fn platforms() {
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v2/x").is_err());
        assert!(Platform::parse("linux/../x").is_err());
        assert_eq!(Platform::parse("linux/arm/v7").unwrap().to_string(), "linux/arm/v7");
    }
}
