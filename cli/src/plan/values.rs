//! Values of a plan file that need more than a type to be valid: agent locations, rates,
//! compression levels, durations, Kubernetes names, proxy URLs and image references.
//!
//! Each one is checked while it is deserialised, so a bad value is reported with the line and
//! column where it stands.

use std::fmt;
use std::time::Duration;

use mover_engine::Compression;
use mover_engine::tunnel::Proxy;
use serde::de::{self, Deserialize, Deserializer, Visitor};

use mover_plan::{Location, parse_location};

/// Deserialises a string and checks it with `parse`; the error carries the position.
fn checked<'de, D, T>(deserializer: D, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(de::Error::custom)
}

/// A volume end as written in a plan: `agent://HOST:PORT/VOLUME` or a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeEnd(pub Location);

impl<'de> Deserialize<'de> for VolumeEnd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            if text.is_empty() {
                return Err("empty: write `agent://HOST:PORT/VOLUME` or a directory".into());
            }
            parse_location(text).map(VolumeEnd).map_err(|e| e.to_string())
        })
    }
}

/// One rule of a volume's `exclude:` list, as `mover copy --exclude` takes it: the pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcludeRule(pub Vec<u8>);

impl<'de> Deserialize<'de> for ExcludeRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| crate::excludes::rule(text.as_bytes()).map(ExcludeRule))
    }
}

/// A bandwidth limit in bytes per second, written as `500K`, `20M`, `100Mbit`, `100B`, or a bare
/// number of KiB/s (as MTC's `rsync_opt_bwlimit` and rsync's `--bwlimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RateVisitor;
        impl Visitor<'_> for RateVisitor {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate such as `20M`, `100Mbit` or a number of KiB per second")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Rate, E> {
                if value == 0 {
                    return Err(E::custom("a bandwidth limit must be above zero (leave `bwlimit` out for none)"));
                }
                value.checked_mul(1024).map(Rate).ok_or_else(|| E::custom("a bandwidth limit this large is no limit"))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Rate, E> {
                u64::try_from(value)
                    .map_err(|_| E::custom("a bandwidth limit must be above zero"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Rate, E> {
                crate::args::parse_bwlimit(text).map(Rate).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(RateVisitor)
    }
}

/// `streams: 1..16`: connections for one volume's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams(pub u32);

impl Default for Streams {
    fn default() -> Self {
        Streams(crate::args::DEFAULT_STREAMS)
    }
}

impl<'de> Deserialize<'de> for Streams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        crate::args::parse_streams(&value.to_string()).map(Streams).map_err(de::Error::custom)
    }
}

/// `compress: auto | off | 1..19`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressSetting(pub Compression);

impl Default for CompressSetting {
    fn default() -> Self {
        CompressSetting(Compression::Auto)
    }
}

impl<'de> Deserialize<'de> for CompressSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CompressVisitor;
        impl Visitor<'_> for CompressVisitor {
            type Value = CompressSetting;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto`, `off` or a zstd level from 1 to 19")
            }
            fn visit_u64<E: de::Error>(self, level: u64) -> Result<CompressSetting, E> {
                self.visit_str(&level.to_string())
            }
            fn visit_i64<E: de::Error>(self, level: i64) -> Result<CompressSetting, E> {
                self.visit_str(&level.to_string())
            }
            // YAML 1.1 readers take `off` for `false`; accept that spelling too.
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<CompressSetting, E> {
                Ok(CompressSetting(if on { Compression::Auto } else { Compression::Off }))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<CompressSetting, E> {
                crate::args::parse_compression(text).map(CompressSetting).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(CompressVisitor)
    }
}

/// A duration: `90s`, `5m`, `1h`, `1h30m`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutSetting(pub Duration);

/// Parses `1h30m`, `90s`, `2m`, `45` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration: write e.g. `90s`, `5m`, `1h30m` or a number of seconds");
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let value: u64 = number.parse().map_err(|_| bad())?;
        total = value.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

impl<'de> Deserialize<'de> for TimeoutSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = TimeoutSetting;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `90s`, `5m`, `1h30m` or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<TimeoutSetting, E> {
                self.visit_str(&seconds.to_string())
            }
            fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<TimeoutSetting, E> {
                self.visit_str(&seconds.to_string())
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<TimeoutSetting, E> {
                match parse_duration(text).map_err(E::custom)? {
                    Duration::ZERO => Err(E::custom("a timeout must be above zero")),
                    duration => Ok(TimeoutSetting(duration)),
                }
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// A Kubernetes namespace name (an RFC 1123 label): it goes into `migration_namespaces`,
/// comma-separated, so it can hold no comma.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Namespace(pub String);

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            let valid = !text.is_empty()
                && text.len() <= 63
                && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !text.starts_with('-')
                && !text.ends_with('-');
            if valid {
                Ok(Namespace(text.to_owned()))
            } else {
                Err(format!(
                    "`{text}` is not a Kubernetes namespace name: lower-case letters, digits and `-`, at most 63, \
                     starting and ending with a letter or digit"
                ))
            }
        })
    }
}

/// A name mover uses in messages, events and metric labels (plan, volume, hook names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(pub String);

/// Checks a name: letters, digits, `.`, `_`, `-`; 1 to 63 characters.
pub fn check_name(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 63 || !text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(format!("`{text}` is not a valid name: use 1 to 63 letters, digits, `.`, `_` or `-`"));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| check_name(text).map(|()| Name(text.to_owned())))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `proxy: http://USER[:PASSWORD]@HOST:PORT`, parsed (once: it is passed on as a [`Proxy`]).
#[derive(Debug, Clone)]
pub struct ProxyUrl(pub Proxy);

impl<'de> Deserialize<'de> for ProxyUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| Proxy::parse(text).map(ProxyUrl).map_err(|e| e.to_string()))
    }
}

/// An image reference in skopeo's spelling: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` or
/// `oci:DIR[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(pub String);

/// Checks an image reference; `repository_only` refuses a tag or digest (a sync names
/// repositories).
pub fn check_image_ref(text: &str, repository_only: bool) -> Result<(), String> {
    let hint = "write `docker://HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]` or `oci:DIRECTORY[:TAG]`";
    if let Some(rest) = text.strip_prefix("docker://") {
        let Some((host, path)) = rest.split_once('/') else {
            return Err(format!("`{text}` names no repository: {hint}"));
        };
        if host.is_empty() || host.contains('@') {
            return Err(format!("`{text}` names no registry host: {hint}"));
        }
        if let Some((_, port)) = host.rsplit_once(':')
            && port.parse::<u16>().is_err()
        {
            return Err(format!("`{text}`: `{port}` is not a port number"));
        }
        let (repository, reference) = match path.split_once('@') {
            Some((repository, digest)) => {
                let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
                    !algorithm.is_empty() && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
                });
                if !valid {
                    return Err(format!("`{text}`: `{digest}` is not a digest such as `sha256:HEX`"));
                }
                (repository, true)
            }
            None => match path.rsplit_once(':') {
                Some((repository, tag)) => {
                    let valid = !tag.is_empty()
                        && tag.len() <= 128
                        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                    if !valid {
                        return Err(format!("`{text}`: `{tag}` is not a valid tag"));
                    }
                    (repository, true)
                }
                None => (path, false),
            },
        };
        let repository_valid = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            });
        if !repository_valid {
            return Err(format!(
                "`{text}`: `{repository}` is not a repository name (lower-case letters, digits, `.`, `_`, `-`, `/`)"
            ));
        }
        if repository_only && reference {
            return Err(format!("`{text}`: a sync names repositories; list tags under `tags`"));
        }
        return Ok(());
    }
    if let Some(dir) = text.strip_prefix("oci:") {
        if dir.is_empty() || dir.starts_with(':') {
            return Err(format!("`{text}` names no directory: {hint}"));
        }
        return Ok(());
    }
    Err(format!("`{text}` has no known transport: {hint}"))
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| check_image_ref(text, false).map(|()| ImageRef(text.to_owned())))
    }
}

/// A repository for `sync`: an image reference without tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryRef(pub String);

impl<'de> Deserialize<'de> for RepositoryRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| check_image_ref(text, true).map(|()| RepositoryRef(text.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        for bad in ["", "m", "5x", "10m5", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn image_refs() {
        for good in [
            "docker://registry.example.com:5000/shop/web:1.2",
            "docker://r/shop/web",
            "docker://r/web@sha256:0123abcd",
            "oci:/tmp/layout:latest",
        ] {
            check_image_ref(good, false).unwrap();
        }
        for bad in ["web:1", "docker://r", "docker://r:x/web", "docker://r/Web", "docker://r/web@md5", "oci:"] {
            assert!(check_image_ref(bad, false).is_err(), "accepted {bad}");
        }
        assert!(check_image_ref("docker://r/web:1", true).is_err());
    }
}

/// A registry host, with its port if any: `registry.example:5000` (no scheme, no path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost(pub String);

impl<'de> Deserialize<'de> for RegistryHost {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked(deserializer, |text| {
            // The engine's reference parser is the judge: `HOST/x` must read as a registry `HOST`.
            let parsed = format!("docker://{text}/x").parse::<mover_engine::image::ImageRef>();
            match parsed {
                Ok(mover_engine::image::ImageRef::Registry { repository, .. })
                    if repository.registry == text && repository.name == "x" =>
                {
                    Ok(RegistryHost(text.to_owned()))
                }
                _ => Err(format!(
                    "`{text}` is not a registry host: write `HOST` or `HOST:PORT`, without a scheme or a path \
                     (e.g. `registry.example:5000`)"
                )),
            }
        })
    }
}
