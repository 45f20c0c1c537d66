//! One end of a volume copy: a local directory, `agent://HOST:PORT/VOLUME` or a claim
//! `k8s://CONTEXT/NAMESPACE/PVC`.
//!
//! Addresses are read strictly, so a typo never turns into a local directory (`agnet://h:1/v`
//! once became `./agnet:/h:1/v/` on the local disk):
//! - `agent://HOST:PORT/VOLUME` is a volume an agent serves;
//! - `k8s://CONTEXT/NAMESPACE/PVC` is a PersistentVolumeClaim reached through the Kubernetes
//!   API (a front end's [`crate::VolumeResolver`] turns it into an agent); an empty CONTEXT is
//!   the kubeconfig's current context, and a context holding `/` is written with `%2F`. A target
//!   may leave the claim out (`k8s://CONTEXT/NAMESPACE`, or with a trailing `/`): it gets the
//!   source's name;
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
        /// `HOST:PORT`, where the agent is exposed (other agents dial it there).
        addr: String,
        /// The volume's name on that agent.
        volume: String,
        /// `HOST:PORT` where this machine reaches the agent instead, when it cannot reach
        /// `addr` (an API-server port-forward); `None`: at `addr`.
        via: Option<String>,
    },
    /// A PersistentVolumeClaim in a cluster.
    Kube(ClaimRef),
}

/// A PersistentVolumeClaim named by `k8s://CONTEXT/NAMESPACE/PVC`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimRef {
    /// The kubeconfig context; `None`: the current one.
    pub context: Option<String>,
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name; `None` on a target: the source claim's name.
    pub name: Option<String>,
}

impl ClaimRef {
    /// `namespace/name`, as progress lines and reports name a claim.
    #[must_use]
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name.as_deref().unwrap_or("*"))
    }
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let context = self.context.as_deref().unwrap_or("").replace('%', "%25").replace('/', "%2F");
        write!(f, "k8s://{context}/{}/{}", self.namespace, self.name.as_deref().unwrap_or(""))
    }
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
            Location::Agent { addr, volume, .. } => write!(f, "agent://{addr}/{volume}"),
            Location::Kube(claim) => claim.fmt(f),
        }
    }
}

/// The forms of [`parse_location`], for error messages.
const KNOWN_FORMS: &str = "mover copies between a local directory (`./data`, `/mnt/data`), `agent://HOST:PORT/VOLUME` \
                           and `k8s://CONTEXT/NAMESPACE/PVC`";

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
        Some("k8s") => return parse_claim(text).map(Location::Kube),
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
    Ok(Location::Agent { addr: addr.to_owned(), volume: volume.to_owned(), via: None })
}

/// DNS-1123 label: what Kubernetes takes as a namespace or claim name.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn parse_claim(text: &str) -> Result<ClaimRef, LocationError> {
    let rest = &text["k8s://".len()..];
    let error = |message: String| Err(LocationError(message));
    let parts: Vec<&str> = rest.split('/').collect();
    let (context, namespace, name) = match parts.as_slice() {
        [context, namespace] | [context, namespace, ""] => (*context, *namespace, None),
        [context, namespace, name] => (*context, *namespace, Some(*name)),
        _ => {
            return error(format!(
                "`{text}`: expected `k8s://CONTEXT/NAMESPACE/PVC` (write a context that holds `/` with `%2F`)"
            ));
        }
    };
    let context = context.replace("%2F", "/").replace("%2f", "/").replace("%25", "%");
    for (what, value) in [("namespace", Some(namespace)), ("claim name", name)] {
        if let Some(value) = value
            && !is_dns_label(value)
        {
            return error(format!(
                "`{text}`: `{value}` is not a valid {what} (lower-case letters, digits, `-` and `.`)"
            ));
        }
    }
    Ok(ClaimRef {
        context: (!context.is_empty()).then_some(context),
        namespace: namespace.to_owned(),
        name: name.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(parse_location("./a").unwrap(), Location::Local("./a".into()));
        assert_eq!(
            parse_location("agent://10.0.0.1:7443/data").unwrap(),
            Location::Agent { addr: "10.0.0.1:7443".into(), volume: "data".into(), via: None }
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
        assert!(parse_location("agnet://h:1/v").unwrap_err().0.contains("unknown scheme `agnet://`"));
        assert!(parse_location("h:1/v").unwrap_err().0.contains("`./h:1/v`"));
    }

    #[test]
    fn parses_claims() {
        let claim = |context: Option<&str>, namespace: &str, name: Option<&str>| {
            Location::Kube(ClaimRef {
                context: context.map(str::to_owned),
                namespace: namespace.to_owned(),
                name: name.map(str::to_owned),
            })
        };
        assert_eq!(parse_location("k8s://src/app/data").unwrap(), claim(Some("src"), "app", Some("data")));
        assert_eq!(parse_location("k8s://dst/app").unwrap(), claim(Some("dst"), "app", None));
        assert_eq!(parse_location("k8s://dst/app/").unwrap(), claim(Some("dst"), "app", None));
        assert_eq!(parse_location("k8s:///app/data").unwrap(), claim(None, "app", Some("data")));
        let eks = parse_location("k8s://arn:aws:eks:eu-west-1:1:cluster%2Fprod/app/data").unwrap();
        assert_eq!(eks, claim(Some("arn:aws:eks:eu-west-1:1:cluster/prod"), "app", Some("data")));
        assert_eq!(eks.to_string(), "k8s://arn:aws:eks:eu-west-1:1:cluster%2Fprod/app/data");
        for bad in ["k8s://ctx", "k8s://ctx/App/data", "k8s://ctx/app/da_ta", "k8s://ctx/app/a/b", "k8s://ctx//data"] {
            assert!(parse_location(bad).is_err(), "accepted {bad}");
        }
        assert!(parse_location("k8s://ctx/App/data").unwrap_err().0.contains("not a valid namespace"));
    }

    #[test]
    fn paths_with_colons_after_a_slash_are_directories() {
        for good in ["./a:b", "/mnt/a:b", "dir/a:b", "./x://y", "../h:1/v"] {
            assert_eq!(parse_location(good).unwrap(), Location::Local(good.into()));
        }
    }
}
