//! Image references in skopeo's spelling, parsed strictly before any URL or path is built.
//!
//! - `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` (a bare `docker://NAME` means Docker Hub, as in
//!   skopeo: `docker://busybox` is `docker.io/library/busybox:latest`);
//! - `oci:DIR[:TAG]`, an OCI image layout directory.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A content digest, `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`.
///
/// Parsed strictly: anything else is refused, so a digest can be put into a URL or a file name
/// (`blobs/sha256/<hex>`) without escaping and without any way to reach another path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// The hash algorithms of the OCI image spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the registered default.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The name used in digests and in `blobs/<name>/`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub(crate) fn aws(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            Algorithm::Sha256 => &aws_lc_rs::digest::SHA256,
            Algorithm::Sha512 => &aws_lc_rs::digest::SHA512,
        }
    }
}

/// Why a reference or digest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} `{input}`: {reason}")]
pub struct ParseError {
    what: &'static str,
    input: String,
    reason: String,
}

fn refuse(what: &'static str, input: &str, reason: impl Into<String>) -> ParseError {
    // Cap what is echoed back, the reason too (it quotes the bad part): the input may be a
    // hostile peer's.
    let input: String = input.chars().take(200).collect();
    let mut reason: String = reason.into();
    if let Some((cut, _)) = reason.char_indices().nth(300) {
        reason.truncate(cut);
        reason.push_str("...");
    }
    ParseError { what, input, reason }
}

impl Digest {
    /// The digest of `bytes` with `algorithm`.
    #[must_use]
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let sum = aws_lc_rs::digest::digest(algorithm.aws(), bytes);
        Digest::from_raw(algorithm, sum.as_ref())
    }

    pub(crate) fn from_raw(algorithm: Algorithm, raw: &[u8]) -> Digest {
        use std::fmt::Write;
        let mut hex = String::with_capacity(raw.len() * 2);
        for byte in raw {
            let _ = write!(hex, "{byte:02x}");
        }
        Digest { algorithm, hex }
    }

    /// The algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part.
    #[must_use]
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A short form for progress lines: `sha256:0123456789ab`.
    #[must_use]
    pub fn short(&self) -> String {
        format!("{}:{}", self.algorithm.name(), &self.hex[..12])
    }
}

impl FromStr for Digest {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Digest, ParseError> {
        let (algorithm, hex) =
            input.split_once(':').ok_or_else(|| refuse("digest", input, "expected ALGORITHM:HEX"))?;
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(refuse("digest", input, format!("unsupported algorithm `{other}` (sha256 or sha512)")));
            }
        };
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(refuse(
                "digest",
                input,
                format!("expected {} lowercase hex digits after `{}:`", algorithm.hex_len(), algorithm.name()),
            ));
        }
        Ok(Digest { algorithm, hex: hex.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Which version of an image a reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// A tag, resolved once to a digest.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Tag(tag) => write!(f, ":{tag}"),
            Version::Digest(digest) => write!(f, "@{digest}"),
        }
    }
}

/// A repository in a registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    /// `host[:port]`.
    pub registry: String,
    /// `path/of/repo`.
    pub name: String,
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)
    }
}

/// Where an image lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `docker://registry/repo[:tag|@digest]`; `version` is `None` when neither was given
    /// (`latest` for a source; for `image sync`, all tags).
    Registry {
        /// The repository.
        repository: Repository,
        /// Tag or digest.
        version: Option<Version>,
    },
    /// `oci:DIR[:TAG]`.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`), if any.
        tag: Option<String>,
    },
}

impl ImageRef {
    /// The same place with another version (used by `sync` to address each tag).
    #[must_use]
    pub fn with_version(&self, version: Option<Version>) -> ImageRef {
        match self {
            ImageRef::Registry { repository, .. } => ImageRef::Registry { repository: repository.clone(), version },
            ImageRef::Layout { dir, .. } => {
                let tag = match version {
                    Some(Version::Tag(tag)) => Some(tag),
                    _ => None,
                };
                ImageRef::Layout { dir: dir.clone(), tag }
            }
        }
    }

    /// The tag, when the reference names one.
    #[must_use]
    pub fn tag(&self) -> Option<&str> {
        match self {
            ImageRef::Registry { version: Some(Version::Tag(tag)), .. } | ImageRef::Layout { tag: Some(tag), .. } => {
                Some(tag)
            }
            _ => None,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry { repository, version: Some(version) } => write!(f, "docker://{repository}{version}"),
            ImageRef::Registry { repository, version: None } => write!(f, "docker://{repository}"),
            ImageRef::Layout { dir, tag: Some(tag) } => write!(f, "oci:{}:{tag}", dir.display()),
            ImageRef::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
        }
    }
}

const TRANSPORTS: &str = "use `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` or `oci:DIR[:TAG]`";

impl FromStr for ImageRef {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<ImageRef, ParseError> {
        if let Some(rest) = input.strip_prefix("docker://") {
            parse_registry(input, rest)
        } else if let Some(rest) = input.strip_prefix("oci:") {
            parse_layout(input, rest)
        } else {
            Err(refuse("image reference", input, format!("unknown transport; {TRANSPORTS}")))
        }
    }
}

fn parse_layout(input: &str, rest: &str) -> Result<ImageRef, ParseError> {
    // `oci:DIR:TAG`: the tag is what follows the last `:` when it is a valid tag and the
    // directory part is not empty (a path may itself contain `:`).
    let (dir, tag) = match rest.rsplit_once(':') {
        Some((dir, tag)) if !dir.is_empty() && valid_tag(tag) => (dir, Some(tag.to_owned())),
        _ => (rest, None),
    };
    if dir.is_empty() {
        return Err(refuse("image reference", input, format!("no directory after `oci:`; {TRANSPORTS}")));
    }
    if dir.contains('\0') {
        return Err(refuse("image reference", input, "the directory contains a NUL byte"));
    }
    Ok(ImageRef::Layout { dir: PathBuf::from(dir), tag })
}

fn parse_registry(input: &str, rest: &str) -> Result<ImageRef, ParseError> {
    let (name_part, digest) = match rest.split_once('@') {
        Some((name, digest)) => (name, Some(digest.parse::<Digest>()?)),
        None => (rest, None),
    };
    // A tag is after the last `:` that follows the last `/` (a port is before the first `/`).
    let last_slash = name_part.rfind('/').map_or(0, |i| i + 1);
    let (name_part, tag) = match name_part[last_slash..].rfind(':') {
        Some(colon) => {
            let colon = last_slash + colon;
            (&name_part[..colon], Some(&name_part[colon + 1..]))
        }
        None => (name_part, None),
    };
    if let Some(tag) = tag
        && !valid_tag(tag)
    {
        return Err(refuse(
            "image reference",
            input,
            format!("bad tag `{tag}` (letters, digits, `_`, `.`, `-`; at most 128, not starting with `.` or `-`)"),
        ));
    }
    let (registry, name) = match name_part.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') => {
            (first.to_owned(), path.to_owned())
        }
        Some(_) => ("docker.io".to_owned(), name_part.to_owned()),
        None => ("docker.io".to_owned(), format!("library/{name_part}")),
    };
    if !valid_registry(&registry) {
        return Err(refuse("image reference", input, format!("bad registry host `{registry}`")));
    }
    if !valid_repository(&name) {
        return Err(refuse(
            "image reference",
            input,
            format!(
                "bad repository name `{name}` (lowercase letters and digits, separated by `.`, `_`, `__`, `-` or `/`)"
            ),
        ));
    }
    let version = match (tag, digest) {
        (_, Some(digest)) => Some(Version::Digest(digest)),
        (Some(tag), None) => Some(Version::Tag(tag.to_owned())),
        (None, None) => None,
    };
    Ok(ImageRef::Registry { repository: Repository { registry, name }, version })
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[must_use]
pub fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A repository path: components of `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`.
#[must_use]
pub fn valid_repository(name: &str) -> bool {
    name.len() <= 255 && !name.is_empty() && name.split('/').all(valid_component)
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else { return false };
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return false;
    }
    if !bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')) {
        return false;
    }
    // Separators: `.` and `_` alone, `__`, or any run of `-`; never mixed.
    let mut run = Vec::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() {
            let ok = match run.as_slice() {
                [] | [b'.' | b'_'] | [b'_', b'_'] => true,
                dashes => dashes.iter().all(|&d| d == b'-'),
            };
            if !ok {
                return false;
            }
            run.clear();
        } else {
            run.push(b);
        }
    }
    true
}

fn valid_registry(host: &str) -> bool {
    let (host, port) = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                let port = match port {
                    "" => None,
                    port => Some(port.strip_prefix(':').unwrap_or("")),
                };
                (None, port)
            }
            None => return false,
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    let host_ok = host.is_none_or(|name| {
        !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok_and(|p| p != 0));
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digests_are_strict() {
        let digest: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(digest.to_string(), format!("sha256:{HEX}"));
        for bad in [
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{HEX}0"),
            format!("md5:{HEX}"),
            format!("sha256:../../{}", &HEX[6..]),
            format!("sha256/{HEX}"),
            String::new(),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        assert_eq!(
            Digest::of(Algorithm::Sha256, b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn registry_references() {
        let parsed: ImageRef = "docker://127.0.0.1:5000/team/app:v1.2".parse().unwrap();
        assert_eq!(
            parsed,
            ImageRef::Registry {
                repository: Repository { registry: "127.0.0.1:5000".into(), name: "team/app".into() },
                version: Some(Version::Tag("v1.2".into())),
            }
        );
        let parsed: ImageRef = format!("docker://quay.io/a/b@sha256:{HEX}").parse().unwrap();
        assert!(matches!(parsed, ImageRef::Registry { version: Some(Version::Digest(_)), .. }));
        let parsed: ImageRef = "docker://busybox".parse().unwrap();
        assert_eq!(parsed.to_string(), "docker://docker.io/library/busybox");
        let parsed: ImageRef = "docker://localhost/x".parse().unwrap();
        assert!(matches!(parsed, ImageRef::Registry { ref repository, .. } if repository.registry == "localhost"));
        let parsed: ImageRef = "docker://[::1]:5000/x:y".parse().unwrap();
        assert!(matches!(parsed, ImageRef::Registry { ref repository, .. } if repository.registry == "[::1]:5000"));
        for bad in [
            "docker://",
            "docker://host:5000/",
            "docker://host:5000/UPPER",
            "docker://host:5000/a/../b",
            "docker://host:5000/a//b",
            "docker://host:5000/a:-tag",
            "docker://host:99999/a",
            "docker://host:5000/a@sha256:zz",
            "docker://host:5000/a-_b",
            "docker://ho st:5000/a",
            "registry/a:b",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn layout_references() {
        let parsed: ImageRef = "oci:/tmp/lay:v1".parse().unwrap();
        assert_eq!(parsed, ImageRef::Layout { dir: "/tmp/lay".into(), tag: Some("v1".into()) });
        let parsed: ImageRef = "oci:./lay".parse().unwrap();
        assert_eq!(parsed, ImageRef::Layout { dir: "./lay".into(), tag: None });
        assert!("oci:".parse::<ImageRef>().is_err());
        assert!("oci::tag".parse::<ImageRef>().is_ok_and(|r| matches!(r, ImageRef::Layout { tag: None, .. })));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_valid_references_round_trip(
            text in "\\PC{0,80}",
            host in "[a-z][a-z0-9]{0,10}(\\.[a-z]{2,5})?",
            port in proptest::option::of(1u16..),
            repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
        ) {
            let _ = text.parse::<ImageRef>();
            let _ = text.parse::<Digest>();
            let _ = format!("docker://{text}").parse::<ImageRef>();
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let input = format!("docker://{host}.example{port}/{repo}:{tag}");
            let parsed: ImageRef = input.parse().unwrap();
            proptest::prop_assert_eq!(parsed.to_string(), input.clone());
            proptest::prop_assert_eq!(parsed.to_string().parse::<ImageRef>().unwrap(), parsed);
        }
    }

    #[test]
    fn repository_components() {
        for good in ["a", "a0", "a.b", "a_b", "a__b", "a---b", "ns/app", "a.b-c_d/e"] {
            assert!(valid_repository(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a._b", "a___b", "A", "a/", "/a", "a..b", "a b"] {
            assert!(!valid_repository(bad), "{bad}");
        }
    }
}
