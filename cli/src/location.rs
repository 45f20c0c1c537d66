//! One end of a volume copy: a local directory or `agent://HOST:PORT/VOLUME`.

use std::path::PathBuf;

use anyhow::bail;

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

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::Agent { addr, volume } => write!(f, "agent://{addr}/{volume}"),
        }
    }
}

/// Parses `agent://HOST:PORT/VOLUME`; anything else is a local path.
pub fn parse_location(text: &str) -> anyhow::Result<Location> {
    let Some(rest) = text.strip_prefix("agent://") else {
        return Ok(Location::Local(PathBuf::from(text)));
    };
    let Some((addr, volume)) = rest.split_once('/') else {
        bail!("`{text}` names no volume: write `agent://HOST:PORT/VOLUME`");
    };
    if volume.is_empty() || volume.contains('/') {
        bail!("`{text}`: the volume must be one name after `HOST:PORT/`");
    }
    if !addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()) {
        bail!("`{text}`: expected `HOST:PORT` after `agent://`");
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
}
