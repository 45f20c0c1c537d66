//! One end of a volume copy: a local directory or `agent://HOST:PORT/VOLUME`.
//!
//! Addresses are read strictly, so a typo never turns into a local directory (`agnet://h:1/v`
//! once became `./agnet:/h:1/v/` on the local disk):
//! - `agent://HOST:PORT/VOLUME` is a volume an agent serves;
//! - `k8s://…` is reserved for PVCs reached through the Kubernetes API: not supported yet;
//! - any other `SCHEME://…` is refused, naming the forms mover knows;
//! - as in rsync, a colon before the first `/` marks an address (`host:7443/data`,
//!   `agent:/host:7443/data`), and mover knows no address without a scheme: refused. A local
//!   directory whose name holds such a colon is written with a `./` (`./a:b`);
//! - anything else is a local directory.

use std::path::PathBuf;

/// Why text is not a volume end; the message says which forms are known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LocationError(pub String);

/// One end of a copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A directory on this machine.
    Local(PathBuf),
    /// A volume an agent serves.
    Agent {
        /// `HOST:PORT`.
        addr: String,
        /// The volume's name on that agent.
        volume: String,
    },
}

impl Location {
    /// True for a volume an agent serves.
    #[must_use]
    pub fn is_agent(&self) -> bool {
        matches!(self, Location::Agent { .. })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::Agent { addr, volume } => write!(f, "agent://{addr}/{volume}"),
        }
    }
}

/// The forms of [`parse_location`], for error messages.
const KNOWN_FORMS: &str =
    "mover copies between a local directory (`./data`, `/mnt/data`) and `agent://HOST:PORT/VOLUME`";

/// The scheme of `SCHEME://…` (RFC 3986 letters), if `text` starts with one.
fn scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// Parses one end of a copy (see the module documentation for the rules).
pub fn parse_location(text: &str) -> Result<Location, LocationError> {
    let error = |message: String| Err(LocationError(message));
    if text.is_empty() {
        return error(format!("an empty address: {KNOWN_FORMS}"));
    }
    match scheme(text) {
        Some("agent") => return parse_agent(text),
        Some("k8s") => {
            return error(format!(
                "`{text}`: `k8s://CONTEXT/NAMESPACE/PVC` is not supported yet; run `mover-agent serve` where the \
                 volume is mounted and write `agent://HOST:PORT/VOLUME`"
            ));
        }
        Some(scheme) => return error(format!("`{text}`: unknown scheme `{scheme}://`; {KNOWN_FORMS}")),
        None => {}
    }
    let colon = text.find(':');
    if colon.is_some_and(|colon| text.find('/').is_none_or(|slash| colon < slash)) {
        return error(format!(
            "`{text}` looks like an address (a colon before the first `/`), but {KNOWN_FORMS}; for a local \
             directory whose name holds a colon, write `./{text}`"
        ));
    }
    Ok(Location::Local(PathBuf::from(text)))
}

fn parse_agent(text: &str) -> Result<Location, LocationError> {
    let rest = &text["agent://".len()..];
    let error = |message: String| Err(LocationError(message));
    let Some((addr, volume)) = rest.split_once('/') else {
        return error(format!("`{text}` names no volume: write `agent://HOST:PORT/VOLUME`"));
    };
    if volume.is_empty() || volume.contains('/') {
        return error(format!("`{text}`: the volume must be one name after `HOST:PORT/`"));
    }
    if !addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()) {
        return error(format!("`{text}`: expected `HOST:PORT` after `agent://`"));
    }
    Ok(Location::Agent { addr: addr.to_owned(), volume: volume.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(parse_location("./a").unwrap(), Location::Local("./a".into()));
        assert_eq!(
            parse_location("agent://10.0.0.1:7443/data").unwrap(),
            Location::Agent { addr: "10.0.0.1:7443".into(), volume: "data".into() }
        );
        for bad in ["agent://host/data", "agent://host:port/data", "agent://h:1/", "agent://h:1/a/b", "agent://h:1"] {
            assert!(parse_location(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn typos_are_not_directories() {
        for bad in ["agnet://h:1/v", "AGENT://h:1/v", "s3://bucket/x", "agent:/h:1/v", "h:1/v", "h:1", "a:b", ""] {
            assert!(parse_location(bad).is_err(), "took {bad:?} for a directory");
        }
        assert!(parse_location("k8s://ctx/ns/pvc").unwrap_err().0.contains("not supported yet"));
        assert!(parse_location("agnet://h:1/v").unwrap_err().0.contains("unknown scheme `agnet://`"));
        assert!(parse_location("h:1/v").unwrap_err().0.contains("`./h:1/v`"));
    }

    #[test]
    fn paths_with_colons_after_a_slash_are_directories() {
        for good in ["./a:b", "/mnt/a:b", "dir/a:b", "./x://y", "../h:1/v"] {
            assert_eq!(parse_location(good).unwrap(), Location::Local(good.into()));
        }
    }
}
