//! How the CLI reaches the other side, for every command: the coordinator's identity, the proxy
//! (parsed once into [`Proxy`] and passed as that) and the registries of both sides
//! ([`Sides`] of [`RegistrySide`], from `mover image`'s flags or a plan's `registries:`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mover_engine::certs::{Identity, Role};
use mover_engine::image::{self, Credentials, Endpoint, ImageRef, Layout, Registry, RegistryOptions, TlsMode, Version};
use mover_engine::tunnel::Proxy;
use mover_plan::{Plan, RegistrySide, Side, Sides};

use crate::args::ImageCommon;

/// A certificate and key from `dir` (`mover certs init` wrote them): the coordinator's, or the
/// migration's agent identity (a local directory that receives from an agent presents it).
pub fn load_identity(dir: &Path, role: Role) -> anyhow::Result<Identity> {
    let which = if role == Role::Agent { "agent" } else { "coordinator" };
    Identity::load(dir, role).with_context(|| format!("while loading the {which} certificate from `{}`", dir.display()))
}

/// The coordinator's identity when the plan involves agents.
pub fn plan_identity(plan: &Plan) -> anyhow::Result<Option<Identity>> {
    match &plan.certs {
        Some(dir) if plan.uses_agents() => load_identity(dir, Role::Coordinator).map(Some),
        _ => Ok(None),
    }
}

/// `proxy` with its password: from the URL, else the password file (`--proxy-password-file`, a
/// plan's `proxyPasswordFile`), else `MOVER_PROXY_PASSWORD`.
pub fn with_password(proxy: Option<Proxy>, password_file: Option<&Path>) -> anyhow::Result<Option<Proxy>> {
    let Some(mut proxy) = proxy else { return Ok(None) };
    if proxy.password.is_none() {
        if let Some(file) = password_file {
            let password = std::fs::read_to_string(file)
                .with_context(|| format!("while reading the proxy password from `{}`", file.display()))?;
            proxy.password = Some(password.trim_end_matches(['\r', '\n']).to_owned());
        } else if let Ok(password) = std::env::var("MOVER_PROXY_PASSWORD") {
            proxy.password = Some(password);
        }
    }
    Ok(Some(proxy))
}

/// A proxy URL from the command line, parsed.
pub fn parse_proxy(url: Option<&str>) -> anyhow::Result<Option<Proxy>> {
    Ok(url.map(Proxy::parse).transpose()?)
}

/// The plan's proxy, with its password.
pub fn plan_proxy(plan: &Plan) -> anyhow::Result<Option<Proxy>> {
    with_password(plan.proxy.clone(), plan.proxy_password_file.as_deref())
}

impl ImageCommon {
    /// How to reach each side's registry, from the flags.
    pub fn registries(&self) -> Sides<RegistrySide> {
        let side = |credentials: &Option<Credentials>,
                    token: &Option<String>,
                    ca_bundle: &Option<_>,
                    tls_verify,
                    plain_http| {
            RegistrySide {
                plain_http,
                tls_verify,
                ca_bundle: ca_bundle.clone(),
                ca_pem: None,
                auth_file: self.authfile.clone(),
                credentials: credentials.clone().or_else(|| token.clone().map(Credentials::Token)),
                token_file: None,
            }
        };
        Sides {
            source: side(
                &self.src_creds,
                &self.src_registry_token,
                &self.src_ca_bundle,
                self.src_tls_verify,
                self.src_plain_http,
            ),
            target: side(
                &self.dest_creds,
                &self.dest_registry_token,
                &self.dest_ca_bundle,
                self.dest_tls_verify,
                self.dest_plain_http,
            ),
        }
    }
}

/// Both sides with their token files read (a token file's content becomes the side's
/// credentials), so an unreadable one fails before anything moves.
pub fn read_token_files(registries: &Sides<RegistrySide>) -> anyhow::Result<Sides<RegistrySide>> {
    registries.try_map(|_, side| {
        let mut side = side.clone();
        if let Some(path) = side.token_file.take() {
            let token = std::fs::read_to_string(&path)
                .with_context(|| format!("while reading the registry token file `{}`", path.display()))?;
            side.credentials = Some(Credentials::Token(token.trim().to_owned()));
        }
        anyhow::Ok(side)
    })
}

/// The endpoint a reference names, ready to use (a CA bundle is read now, so a bad one fails
/// before anything moves). Dry runs create no target layout. Token files must have been read
/// ([`read_token_files`]).
pub fn endpoint_for(
    reference: &ImageRef,
    access: &RegistrySide,
    side: Side,
    proxy: Option<&Proxy>,
    max_manifest_bytes: usize,
    dry_run: bool,
) -> anyhow::Result<Endpoint> {
    match reference {
        ImageRef::Layout { dir, .. } => {
            let layout = match side {
                Side::Source => Layout::open(dir, max_manifest_bytes)?,
                Side::Target if dry_run => Layout::for_dry_run(dir, max_manifest_bytes)?,
                Side::Target => Layout::create(dir, max_manifest_bytes)?,
            };
            Ok(Endpoint::Layout(Arc::new(layout)))
        }
        ImageRef::Registry { repository, .. } => {
            let credentials = match &access.credentials {
                Some(credentials) => credentials.clone(),
                None => credentials_from_files(&repository.registry, access.auth_file.as_deref())?,
            };
            let tls = match (access.plain_http, access.tls_verify) {
                (true, _) => TlsMode::PlainHttp,
                (false, false) => TlsMode::NoVerify,
                (false, true) => TlsMode::Verify { ca_bundle: access.ca_bundle.clone(), ca_pem: access.ca_pem.clone() },
            };
            let options =
                RegistryOptions { tls, credentials, proxy: proxy.cloned(), max_manifest_bytes, pace: registry_pace()? };
            let registry = Registry::new(&repository.registry, &options)?;
            Ok(Endpoint::Registry { registry: Arc::new(registry), repository: repository.name.clone() })
        }
    }
}

/// The credentials for `registry` in the auth files (`--authfile`, else the usual places), or
/// none; says so when a file names a credential helper, which mover does not run.
fn credentials_from_files(registry: &str, authfile: Option<&Path>) -> anyhow::Result<Credentials> {
    let lookup = image::lookup_credentials(registry, &auth_files(authfile))?;
    if lookup.credentials.is_none() {
        for path in &lookup.helpers {
            tracing::warn!(
                "`{}` names a credential helper, which mover does not run: put `{registry}`'s credentials in an auth file or pass them with --src-creds/--dest-creds",
                path.display()
            );
        }
    }
    Ok(lookup.credentials.unwrap_or_default())
}

/// Where to look for registry credentials: `authfile` (`--authfile`, `authFile:`), else
/// `$REGISTRY_AUTH_FILE` (both must exist), else `$XDG_RUNTIME_DIR/containers/auth.json` then
/// `~/.docker/config.json` (skipped when missing).
fn auth_files(authfile: Option<&Path>) -> image::AuthFiles {
    if let Some(path) =
        authfile.map(Path::to_owned).or_else(|| std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from))
    {
        return image::AuthFiles::named(path);
    }
    image::AuthFiles::usual(
        [
            std::env::var_os("XDG_RUNTIME_DIR").map(|dir| PathBuf::from(dir).join("containers/auth.json")),
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json")),
        ]
        .into_iter()
        .flatten()
        .collect(),
    )
}

/// The registries' deadlines: the engine's defaults, or `MOVER_REGISTRY_PACE=HEADERS_MS:MIN_BYTES_PER_S:WINDOW_MS`,
/// an undocumented knob for tests that drive a stalling server and cannot wait 15 s per request.
fn registry_pace() -> anyhow::Result<image::Pace> {
    let Ok(text) = std::env::var("MOVER_REGISTRY_PACE") else { return Ok(image::Pace::default()) };
    let parts: Vec<u64> = text.split(':').map(str::parse).collect::<Result<_, _>>().unwrap_or_default();
    match parts.as_slice() {
        [headers, rate, window] => Ok(image::Pace {
            response_headers: Duration::from_millis(*headers),
            min_rate: *rate,
            window: Duration::from_millis(*window),
        }),
        _ => anyhow::bail!("MOVER_REGISTRY_PACE is `{text}`: expected HEADERS_MS:MIN_BYTES_PER_S:WINDOW_MS"),
    }
}

/// What to read from the source (`latest` for a registry reference without one) and which tag
/// to set on the target (the one named, else the source's tag; none when the source is a digest).
pub fn versions(source: &ImageRef, target: &ImageRef) -> (Option<Version>, Option<String>) {
    let source_version = match source {
        ImageRef::Registry { version, .. } => Some(version.clone().unwrap_or(Version::Tag("latest".into()))),
        ImageRef::Layout { tag, .. } => tag.clone().map(Version::Tag),
    };
    let target_tag = target.tag().map(str::to_owned).or_else(|| match &source_version {
        Some(Version::Tag(tag)) => Some(tag.clone()),
        _ => None,
    });
    (source_version, target_tag)
}

/// Adds what the registry presented to an "unknown authority" error, so the user sees what they
/// would be trusting; asks the proxy itself when the HTTP stack only says "tunnel error".
pub async fn explain(error: image::ImageError, proxy: Option<&Proxy>) -> anyhow::Error {
    if let image::ImageError::Proxy { registry, .. } = &error {
        let from_environment = || {
            ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
                .iter()
                .find_map(|v| std::env::var(v).ok())
                .and_then(|url| Proxy::parse(&url).ok())
        };
        let Some(proxy) = proxy.cloned().or_else(from_environment) else { return error.into() };
        // The HTTP stack only says "tunnel error": ask the proxy ourselves, to name the hop
        // that failed (407, a refused port, an unreachable target).
        let target = if registry.contains(':') { registry.clone() } else { format!("{registry}:443") };
        if let Ok(Err(why)) = tokio::time::timeout(Duration::from_secs(10), proxy.connect(&target)).await {
            return anyhow::Error::new(error).context(why.to_string());
        }
        return error.into();
    }
    let image::ImageError::UnknownAuthority { registry, .. } = &error else { return error.into() };
    let has_port = registry.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    let addr = if has_port && !registry.ends_with(']') { registry.clone() } else { format!("{registry}:443") };
    match presented_certificate(&addr, proxy).await {
        Some(presented) => anyhow::Error::new(error).context(presented),
        None => error.into(),
    }
}

/// "`HOST:PORT` presented a certificate for `SUBJECT` issued by `ISSUER`", read without trusting
/// it (as `mover certs fetch` does), so a trust failure shows what the peer actually is.
pub async fn presented_certificate(addr: &str, proxy: Option<&Proxy>) -> Option<String> {
    let fetch = mover_engine::tunnel::fetch_chain(addr, proxy);
    let chain = tokio::time::timeout(Duration::from_secs(5), fetch).await.ok()?.ok()?;
    let info = mover_engine::certs::describe(chain.first()?)?;
    Some(format!("`{addr}` presented a certificate for `{}` issued by `{}`", info.subject, info.issuer))
}
