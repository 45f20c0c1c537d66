//! Registry credentials: flags, or the auth files docker, podman and skopeo share.

use std::path::{Path, PathBuf};

use base64::Engine;

/// Credentials for one registry. `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// None.
    #[default]
    Anonymous,
    /// `USER:PASSWORD`, exchanged for a bearer token when the registry asks for one.
    Basic {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A bare bearer token (an `OpenShift` service-account token).
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, ***)"),
            Credentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl Credentials {
    /// Parses `USER:PASSWORD` (the password may contain `:`).
    pub fn parse_pair(text: &str) -> Result<Credentials, String> {
        match text.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                Ok(Credentials::Basic { user: user.to_owned(), password: password.to_owned() })
            }
            _ => Err("expected USER:PASSWORD".to_owned()),
        }
    }
}

/// Why an auth file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("auth file `{}`: {reason}", path.display())]
pub struct AuthFileError {
    path: PathBuf,
    reason: String,
}

/// Finds credentials for `registry` (`host[:port]`) in, in order: `authfile` (`--authfile`),
/// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.docker/config.json`.
/// The first file with an entry for the registry wins. Credential helpers (`credsStore`,
/// `credHelpers`) are not run: a warning says so when a file names one.
pub fn lookup_credentials(registry: &str, authfile: Option<&Path>) -> Result<Option<Credentials>, AuthFileError> {
    let explicit = authfile.map(Path::to_owned).or_else(|| std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from));
    let candidates: Vec<PathBuf> = match explicit {
        Some(path) => vec![path],
        None => [
            std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("containers/auth.json")),
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    let must_exist = authfile.is_some() || std::env::var_os("REGISTRY_AUTH_FILE").is_some();
    for path in candidates {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => continue,
            Err(e) => return Err(AuthFileError { path, reason: e.to_string() }),
        };
        match parse(&bytes, registry).map_err(|reason| AuthFileError { path: path.clone(), reason })? {
            Some(credentials) => return Ok(Some(credentials)),
            None => {
                if std::str::from_utf8(&bytes)
                    .is_ok_and(|text| text.contains("credHelpers") || text.contains("credsStore"))
                {
                    tracing::warn!(
                        "`{}` names a credential helper, which mover does not run: put `{registry}`'s credentials in an auth file or pass them with --src-creds/--dest-creds",
                        path.display()
                    );
                }
            }
        }
    }
    Ok(None)
}

fn parse(bytes: &[u8], registry: &str) -> Result<Option<Credentials>, String> {
    let document: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let Some(auths) = document.get("auths").and_then(|a| a.as_object()) else { return Ok(None) };
    // Keys may be `host`, `https://host`, `http://host/v1/` (docker's historic forms).
    let entry = auths.iter().find(|(key, _)| {
        let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
        let key = key.split('/').next().unwrap_or_default();
        key == registry || (registry == "docker.io" && key == "index.docker.io")
    });
    let Some((_, entry)) = entry else { return Ok(None) };
    if let Some(token) = entry.get("registrytoken").and_then(|t| t.as_str()) {
        return Ok(Some(Credentials::Token(token.to_owned())));
    }
    if let (Some(user), Some(password)) =
        (entry.get("username").and_then(|u| u.as_str()), entry.get("password").and_then(|p| p.as_str()))
    {
        return Ok(Some(Credentials::Basic { user: user.to_owned(), password: password.to_owned() }));
    }
    let Some(encoded) = entry.get("auth").and_then(|a| a.as_str()) else { return Ok(None) };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| format!("the `auth` entry for `{registry}` is not base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| format!("the `auth` entry for `{registry}` is not UTF-8"))?;
    Credentials::parse_pair(&decoded)
        .map(Some)
        .map_err(|_| format!("the `auth` entry for `{registry}` is not USER:PASSWORD"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_file_forms() {
        let file = br#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYTpzcw=="},
                        "other.example":{"username":"u","password":"p"}}}"#;
        assert_eq!(
            parse(file, "reg.example:5000").unwrap(),
            Some(Credentials::Basic { user: "user".into(), password: "pa:ss".into() })
        );
        assert_eq!(
            parse(file, "other.example").unwrap(),
            Some(Credentials::Basic { user: "u".into(), password: "p".into() })
        );
        assert_eq!(parse(file, "third.example").unwrap(), None);
        assert!(parse(br#"{"auths":{"x":{"auth":"!!"}}}"#, "x").is_err());
        assert!(parse(b"nope", "x").is_err());
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let creds = Credentials::parse_pair("alice:s3cret").unwrap();
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert!(!format!("{:?}", Credentials::Token("tok3n".into())).contains("tok3n"));
        assert!(Credentials::parse_pair("nocolon").is_err());
    }
}
