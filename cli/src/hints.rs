//! The hint table: every remedy that names a flag, a plan field or a command.
//!
//! The engine's errors say what failed (and carry what a remedy needs, such as a registry's
//! address); the remedy is the front end's, since only it knows its flags. A hint is found by
//! walking the error's chain and asking each cause's type, never by matching message text: the
//! first cause whose type the table knows decides (a [`CopyError`] without a hint of its own
//! lets its causes decide).

use mover_engine::certs::CertError;
use mover_engine::client::{CopyError, SessionError};
use mover_engine::hooks::{self, HookError};
use mover_engine::image::{ImageError, ManifestError};
use mover_engine::tunnel::{ProxyError, TunnelError};
use mover_engine::{DeletionError, SyncError};
use mover_engine::{RemoteErrorKind, WireError};

/// A cause, as the chain gives it.
type Cause<'a> = &'a (dyn std::error::Error + 'static);

/// What one row of the table says about a cause.
enum Answer {
    /// Not a type of this row: ask the next row, then the next cause.
    NotMine,
    /// This row's type decides: the remedy, or none.
    Decided(Option<String>),
}

use Answer::{Decided, NotMine};

/// One row: a type of error and its remedies.
type Row = fn(Cause<'_>) -> Answer;

/// The rows, asked in order for each cause.
const TABLE: &[Row] = &[copy, dispatch, hook, tunnel, image, certs, deletion, disk_full];

/// The remedy for `error`, when one is known (printed as `hint:` after the error).
pub fn for_error(error: &anyhow::Error) -> Option<String> {
    let decided = |cause| {
        TABLE.iter().find_map(|row| match row(cause) {
            NotMine => None,
            Decided(hint) => Some(hint),
        })
    };
    error.chain().find_map(decided)?
}

const CERTS: &str = "create the migration's certificates with `mover certs init DIR`, then pass `--certs DIR`";

const MASS_DELETE: &str =
    "nothing was deleted; pass `--allow-mass-delete` if this is intended, or `--no-delete` to keep them";

const DISK_FULL: &str = "the target file system is full: free space there, then run the same command again; files already copied are kept and skipped";

fn copy(cause: Cause<'_>) -> Answer {
    // A copy error without a hint lets its causes decide.
    match cause.downcast_ref::<CopyError>().and_then(copy_error) {
        Some(hint) => Decided(Some(hint)),
        None => NotMine,
    }
}

/// The remedy for a copy error, when one is known (preflight's `remedy` column too).
pub fn copy_error(error: &CopyError) -> Option<String> {
    match error {
        // A refusal, a push's failure on the source agent (a target that refused it keeps its
        // kind), or the peer's receiver failing (a full disk, the mass-delete guard): by kind.
        CopyError::Session(SessionError::Refused { error, .. })
        | CopyError::Remote { error, .. }
        | CopyError::Sync(SyncError::Remote(error)) => remote_kind(error.kind),
        CopyError::Session(SessionError::Handshake { source: WireError::VersionMismatch { .. }, .. }) => {
            Some("install the same mover version on every cluster (`mover --version`, `mover-agent --version`)".into())
        }
        CopyError::Session(SessionError::Tunnel(tunnel)) => tunnel_error(tunnel),
        CopyError::Certs(_) => Some(CERTS.into()),
        _ => None,
    }
}

/// The remedy for what a peer reported, by its kind.
fn remote_kind(kind: RemoteErrorKind) -> Option<String> {
    match kind {
        RemoteErrorKind::UnknownVolume => {
            Some("check the volume name in `agent://HOST:PORT/VOLUME` against the agent's `--volume` flags".into())
        }
        RemoteErrorKind::ReadOnly => Some(
            "the agent was started with `--volume NAME=PATH:ro`; restart it without `:ro` to receive into it".into(),
        ),
        RemoteErrorKind::Busy => Some("wait for the other copy into this volume to finish, then run again".into()),
        RemoteErrorKind::NoSpace => Some(DISK_FULL.into()),
        RemoteErrorKind::MassDelete => Some(MASS_DELETE.into()),
        _ => None,
    }
}

fn hook(cause: Cause<'_>) -> Answer {
    let Some(HookError::Spawn { program, .. }) = cause.downcast_ref::<HookError>() else { return NotMine };
    Decided(Some(if program == hooks::ANSIBLE_PLAYBOOK {
        "playbook hooks need `ansible-playbook` in `PATH`: install it with `pip install ansible-core`".into()
    } else {
        format!(
            "check the hook's `command`: `{program}` must exist and be executable (names without `/` are looked up in `PATH`; relative paths start at the plan file's directory)"
        )
    }))
}

fn tunnel(cause: Cause<'_>) -> Answer {
    cause.downcast_ref::<TunnelError>().map_or(NotMine, |error| Decided(tunnel_error(error)))
}

fn tunnel_error(error: &TunnelError) -> Option<String> {
    match error {
        TunnelError::Proxy(ProxyError::Authentication { .. }) => {
            Some("check the user and password of `--proxy` (or `--proxy-password-file`, `MOVER_PROXY_PASSWORD`)".into())
        }
        TunnelError::Proxy(ProxyError::Refused { .. }) => Some(
            "the proxy must allow CONNECT to the agent's port (tinyproxy: `ConnectPort`; squid: `SSL_ports`)".into(),
        ),
        TunnelError::Proxy(ProxyError::Unreachable { .. }) => {
            Some("check the proxy's address and port in `--proxy` and that it runs".into())
        }
        TunnelError::Proxy(ProxyError::TargetUnreachable { .. }) => {
            Some("the proxy cannot reach the agent: check the agent's address as seen from the proxy".into())
        }
        TunnelError::HandshakeViaProxy { .. } => Some(
            "exempt the agents' addresses from TLS inspection on the proxy; mover never trusts a certificate outside the migration's CA".into(),
        ),
        TunnelError::Connect { .. } | TunnelError::Timeout { .. } => {
            Some(
                "check that `mover-agent serve` runs there and that the address and port are reachable from here; \
                 agents that mover runs in a cluster whose pod network this machine does not reach are reached \
                 through the API server with `--port-forward`"
                    .into(),
            )
        }
        TunnelError::Handshake { .. } => Some(
            "both sides must use certificates from the same `mover certs init` directory: the agent's `--certs` and this command's `--certs`"
                .into(),
        ),
        _ => None,
    }
}

fn image(cause: Cause<'_>) -> Answer {
    cause.downcast_ref::<ImageError>().map_or(NotMine, |error| Decided(image_error(error)))
}

fn image_error(error: &ImageError) -> Option<String> {
    match error {
        ImageError::PlainHttp { registry, .. } => Some(format!(
            "`{registry}` serves plain HTTP: if that is intended, pass `--src-plain-http` when it is the source or `--dest-plain-http` when it is the target (in a plan: `plainHttp: true` under `registries.source` or `registries.target`); nothing sent to it is encrypted"
        )),
        ImageError::Unauthorized { .. } => Some(
            "check the credentials (--src-creds/--dest-creds USER:PASSWORD, --src-registry-token/--dest-registry-token, or --authfile)"
                .into(),
        ),
        ImageError::UnknownAuthority { registry, .. } => Some(format!(
            "fetch the registry's CA bundle with `mover certs fetch {address} -o {file}.pem`, check the fingerprints it prints, \
             then pass it with --src-ca-bundle/--dest-ca-bundle (or --src-tls-verify=false/--dest-tls-verify=false to skip verification)",
            address = mover_engine::image::address(registry),
            file = registry.replace([':', '[', ']'], "_"),
        )),
        ImageError::Manifest { problem: ManifestError::TooLarge { .. }, .. } => {
            Some("raise the limit with --max-manifest-size if this manifest is expected".into())
        }
        _ => None,
    }
}

fn certs(cause: Cause<'_>) -> Answer {
    match cause.downcast_ref::<CertError>() {
        None => NotMine,
        Some(CertError::Writable { .. }) => Decided(None),
        Some(_) => Decided(Some(CERTS.into())),
    }
}

fn dispatch(cause: Cause<'_>) -> Answer {
    match cause.downcast_ref::<mover_plan::DispatchError>() {
        Some(mover_plan::DispatchError::NoWayBack(_)) => Decided(Some(
            "give `--listen IP:PORT`, an address of this machine that the source agent reaches, or copy into a \
             claim instead (`k8s://CONTEXT/NAMESPACE`), which the agents reach between them"
                .into(),
        )),
        // Its other errors, or none: their causes decide.
        _ => NotMine,
    }
}

fn deletion(cause: Cause<'_>) -> Answer {
    match cause.downcast_ref::<DeletionError>() {
        None => NotMine,
        Some(DeletionError::MassDelete { .. }) => Decided(Some(MASS_DELETE.into())),
        Some(_) => Decided(None),
    }
}

fn disk_full(cause: Cause<'_>) -> Answer {
    match cause.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::StorageFull => Decided(Some(DISK_FULL.into())),
        _ => NotMine,
    }
}

#[cfg(test)]
mod tests {
    use super::for_error;
    use mover_engine::image::ImageError;

    #[test]
    fn the_certs_fetch_remedy_always_names_a_port() {
        for (registry, expected) in [
            ("quay.example", "mover certs fetch quay.example:443 -o quay.example.pem"),
            ("reg.example:5000", "mover certs fetch reg.example:5000 -o reg.example_5000.pem"),
            ("[::1]", "mover certs fetch [::1]:443 "),
            ("[::1]:5000", "mover certs fetch [::1]:5000 "),
        ] {
            let error = ImageError::UnknownAuthority { registry: registry.into(), detail: "UnknownIssuer".into() };
            let hint = for_error(&anyhow::Error::new(error).context("copy failed")).unwrap();
            assert!(hint.contains(expected), "{hint}");
            assert!(hint.contains("--src-ca-bundle/--dest-ca-bundle"), "{hint}");
        }
    }

    #[test]
    fn a_full_disk_is_known_by_its_kind_anywhere_in_the_chain() {
        let full = std::io::Error::from_raw_os_error(28);
        let hint = for_error(&anyhow::Error::new(full).context("writing `f01`").context("copy failed")).unwrap();
        assert!(hint.contains("file system is full"), "{hint}");
        // Text is not a key: a message that only says so gets no hint.
        let text = anyhow::anyhow!("the peer reported an error: No space left on device (os error 28)");
        assert_eq!(for_error(&text), None);
    }

    #[test]
    fn a_pull_through_a_port_forward_is_told_to_give_a_listening_address() {
        let error = mover_plan::DispatchError::NoWayBack("10.245.63.4:7443".into());
        let hint = for_error(&anyhow::Error::new(error).context("copy failed")).unwrap();
        assert!(hint.contains("--listen IP:PORT"), "{hint}");
    }

    #[test]
    fn the_first_known_type_decides() {
        let error = anyhow::Error::new(mover_engine::certs::CertError::Writable { path: "/x".into(), mode: 0o666 })
            .context(std::io::Error::from_raw_os_error(28).to_string());
        assert_eq!(for_error(&error), None);
    }
}
