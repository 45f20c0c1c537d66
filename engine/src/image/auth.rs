//! Registry credentials: given, or found in the auth files docker, podman and skopeo share.

use std::path::PathBuf;

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

/// Where to look for registry credentials: the auth files docker, podman and skopeo share, in
/// lookup order. The front end decides which (from its flags and environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFiles {
    /// The files, first looked at first.
    paths: Vec<PathBuf>,
    /// A missing file is an error (the user named it), not skipped.
    named: bool,
}

impl AuthFiles {
    /// One file the user named: it must exist.
    #[must_use]
    pub fn named(path: PathBuf) -> AuthFiles {
        AuthFiles { paths: vec![path], named: true }
    }

    /// The usual places, in order; a missing one is skipped.
    #[must_use]
    pub fn usual(paths: Vec<PathBuf>) -> AuthFiles {
        AuthFiles { paths, named: false }
    }

    /// The files, in lookup order.
    #[must_use]
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

/// What a credential lookup found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CredentialLookup {
    /// The first entry for the registry, if any file has one.
    pub credentials: Option<Credentials>,
    /// Files read before that (or all of them) that name a credential helper (`credsStore`,
    /// `credHelpers`), which mover does not run: the front end may say so.
    pub helpers: Vec<PathBuf>,
}

/// Finds credentials for `registry` (`host[:port]`) in `files`, in order. The first file with an
/// entry for the registry wins. Credential helpers are not run: files that name one are listed
/// in the answer.
pub fn lookup_credentials(registry: &str, files: &AuthFiles) -> Result<CredentialLookup, AuthFileError> {
    let mut lookup = CredentialLookup::default();
    for path in &files.paths {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !files.named => continue,
            Err(e) => return Err(AuthFileError { path: path.clone(), reason: e.to_string() }),
        };
        match parse(&bytes, registry).map_err(|reason| AuthFileError { path: path.clone(), reason })? {
            Some(credentials) => {
                lookup.credentials = Some(credentials);
                return Ok(lookup);
            }
            None => {
                if std::str::from_utf8(&bytes)
                    .is_ok_and(|text| text.contains("credHelpers") || text.contains("credsStore"))
                {
                    lookup.helpers.push(path.clone());
                }
            }
        }
    }
    Ok(lookup)
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
    fn files_are_read_in_order_and_only_a_named_one_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let helper = dir.path().join("helper.json");
        let entry = dir.path().join("entry.json");
        std::fs::write(&helper, br#"{"auths":{},"credsStore":"desktop"}"#).unwrap();
        std::fs::write(&entry, br#"{"auths":{"reg.example":{"username":"u","password":"p"}}}"#).unwrap();
        let found =
            lookup_credentials("reg.example", &AuthFiles::usual(vec![missing.clone(), helper.clone(), entry])).unwrap();
        assert_eq!(found.credentials, Some(Credentials::Basic { user: "u".into(), password: "p".into() }));
        assert_eq!(found.helpers, vec![helper]);
        assert_eq!(
            lookup_credentials("reg.example", &AuthFiles::usual(vec![missing.clone()])).unwrap(),
            CredentialLookup::default()
        );
        let error = lookup_credentials("reg.example", &AuthFiles::named(missing)).unwrap_err();
        assert!(error.to_string().contains("missing.json"), "{error}");
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let creds = Credentials::parse_pair("alice:s3cret").unwrap();
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert!(!format!("{:?}", Credentials::Token("tok3n".into())).contains("tok3n"));
        assert!(Credentials::parse_pair("nocolon").is_err());
    }
}
