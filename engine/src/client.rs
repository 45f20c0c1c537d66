//! The coordinator's side: the four ways to run a volume copy.
//!
//! - [`copy_local`]: both ends in this process, joined by a real loopback mutual-TLS tunnel with
//!   ephemeral certificates: the same code path as between two nodes.
//! - [`copy_to_agent`]: this process is the source; an agent is the target.
//! - [`push_between_agents`]: the coordinator opens a session on the target agent and asks the
//!   source agent to push into it; data flows agent to agent, progress flows back here.
//! - [`pull_from_agent`]: as [`push_between_agents`], into an in-process agent that serves a
//!   local directory.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::net::TcpListener;

use crate::CopyOptions;
use crate::agent::{Agent, AgentError, VolumeGrant};
use crate::certs::{self, CertError, Identity, Role};
use crate::progress::{SharedReporter, Summary};
pub use crate::session::SessionError;
use crate::session::{self, open_sending};
use crate::sync::{self, SyncError};
use crate::tunnel::{self, Proxy, TunnelError};
use crate::volume::{Overlap, VolumeRoot};
use crate::wire::{FrameReader, Message, RemoteError, Request, SyncOptions, VolumeStatus, Welcome};
use rustls::pki_types::CertificateDer;

/// Why a copy could not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source directory cannot be opened.
    #[error("cannot open the source directory `{}`", path.display())]
    Source {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The target directory cannot be opened.
    #[error("cannot open the target directory `{}`", path.display())]
    Target {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The target directory cannot be made.
    #[error("cannot create the target directory `{}`", path.display())]
    CreateTarget {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Source and target are one directory, or one holds the other.
    #[error(
        "refusing to copy `{}` into `{}`: {}, so the copy would read what it writes and delete what it \
         reads; pick a target outside the source (and the source outside the target)",
        from.display(),
        target.display(),
        overlap.describe("the source", "the target")
    )]
    Overlap {
        /// The source directory.
        from: PathBuf,
        /// The target directory.
        target: PathBuf,
        /// How they overlap (the source is the first).
        overlap: Overlap,
    },
    /// Certificates could not be made or loaded.
    #[error(transparent)]
    Certs(#[from] CertError),
    /// A session with an agent could not be opened: unreachable, not authenticated, refused, or
    /// not speaking our protocol.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The transfer failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// An agent reported that the transfer failed (the source agent of a push), with the kind
    /// of the failure.
    #[error("the push failed on agent `{agent}`: {error}")]
    Remote {
        /// The agent that said so.
        agent: String,
        /// What it said.
        error: RemoteError,
    },
    /// Local agent setup failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl CopyError {
    /// True when running the same copy again may get further: connection trouble, a busy
    /// volume, a failed file operation (a full disk). Never for a bug ([`SyncError::Internal`],
    /// or a peer's error of unknown kind) or bad input.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            CopyError::Session(error) => error.is_retryable(),
            CopyError::Remote { error, .. } => error.kind.is_retryable(),
            CopyError::Sync(error) => error.is_retryable(),
            CopyError::Source { .. }
            | CopyError::Target { .. }
            | CopyError::CreateTarget { .. }
            | CopyError::Overlap { .. }
            | CopyError::Certs(_)
            | CopyError::Agent(_) => false,
        }
    }
}

impl From<TunnelError> for CopyError {
    fn from(error: TunnelError) -> CopyError {
        CopyError::Session(SessionError::Tunnel(error))
    }
}

/// Connects to an agent, says hello and returns the tunnel and the agent's welcome (for tests that
/// speak the protocol themselves).
#[cfg(any(test, feature = "test-util"))]
pub async fn open(
    identity: &Identity,
    addr: &str,
    request: Request,
    proxy: Option<&Proxy>,
) -> Result<(tunnel::ClientStream, Welcome), CopyError> {
    connect(identity, addr, request, proxy).await
}

/// [`session::open`] with this module's error.
async fn connect(
    identity: &Identity,
    addr: &str,
    request: Request,
    proxy: Option<&Proxy>,
) -> Result<(tunnel::ClientStream, Welcome), CopyError> {
    Ok(session::open(identity, addr, request, proxy).await?)
}

/// Copies the local directory `source` into volume `volume` of the agent at `addr`, through
/// `proxy` when given.
pub async fn copy_to_agent(
    identity: &Identity,
    source: &Path,
    (addr, volume): (&str, &str),
    proxy: Option<&Proxy>,
    options: CopyOptions,
    reporter: SharedReporter,
) -> Result<Summary, CopyError> {
    let options = SyncOptions::from(options);
    let started = Instant::now();
    let root =
        crate::confine::open_root(source).map_err(|e| CopyError::Source { path: source.to_owned(), source: e })?;
    let lanes = session::lane_token(options.streams);
    let request = Request::Receive { volume: volume.to_owned(), options: options.clone(), lanes };
    let config = tunnel::client_config(identity)?;
    let migration_id = identity.migration_id();
    let (stream, lanes) = open_sending((&config, &migration_id), addr, request, proxy, options.streams).await?;
    // Cancelling a copy from this process is ending the process: its connections close, and
    // the agent ends the session.
    let never = sync::CancellationToken::new();
    let root = VolumeRoot::unwatched(root);
    let mut summary = sync::send_volume(sync::First::Greeted(stream), lanes, root, options, reporter, &never)
        .await
        .map_err(|error| match SessionError::of_greeting(addr, error) {
            Ok(refused) => CopyError::from(refused),
            Err(error) => CopyError::from(error),
        })?;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Copies `source` to `target` (made if missing), both local, through an in-process agent on
/// a loopback mTLS tunnel with ephemeral certificates. Refused, before anything is made, when
/// one lies inside the other (by device and inode, whatever the spelling).
pub async fn copy_local(
    source: &Path,
    target: &Path,
    options: CopyOptions,
    reporter: SharedReporter,
) -> Result<Summary, CopyError> {
    let source_error = |error| CopyError::Source { path: source.to_owned(), source: error };
    let source_root = crate::confine::open_root(source).map_err(source_error)?;
    let overlap = crate::volume::overlap_with_path(source_root.as_fd(), target)
        .map_err(|error| CopyError::Target { path: target.to_owned(), source: error })?;
    if let Some(overlap) = overlap {
        return Err(CopyError::Overlap { from: source.to_owned(), target: target.to_owned(), overlap });
    }
    let generated = certs::generate()?;
    let target_agent =
        InProcessTarget::start(Identity::from_generated(&generated, Role::Agent)?, target, LOOPBACK).await?;
    let coordinator = Identity::from_generated(&generated, Role::Coordinator)?;
    let result =
        copy_to_agent(&coordinator, source, (&target_agent.addr, InProcessTarget::VOLUME), None, options, reporter)
            .await;
    target_agent.stop().await;
    result
}

/// Where an in-process target agent listens when only this host dials it.
const LOOPBACK: &str = "127.0.0.1:0";

/// An agent in this process, granted one local directory (made if missing) as its only
/// volume, serving on its own task until stopped.
struct InProcessTarget {
    /// The address it listens on.
    addr: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl InProcessTarget {
    /// The name of its volume.
    const VOLUME: &'static str = "target";

    async fn start(identity: Identity, target: &Path, listen: &str) -> Result<InProcessTarget, CopyError> {
        if !target.is_dir() {
            std::fs::create_dir_all(target)
                .map_err(|error| CopyError::CreateTarget { path: target.to_owned(), source: error })?;
        }
        let grant = VolumeGrant { name: Self::VOLUME.into(), path: target.to_owned(), read_only: false, mount: false };
        let agent = Agent::new(identity, vec![grant]).map_err(|error| match error {
            AgentError::Volume { path, source, .. } => CopyError::Target { path, source },
            other => CopyError::Agent(other),
        })?;
        let bind_error = |source| TunnelError::Connect { addr: listen.to_owned(), source };
        let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?.to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            agent
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(InProcessTarget { addr, stop, server })
    }

    /// Stops serving once the running sessions have ended.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// Where [`pull_from_agent`] receives: a local directory, served by an in-process agent.
#[derive(Debug, Clone)]
pub struct PullTarget {
    /// The directory (made if missing).
    pub dir: PathBuf,
    /// The address the in-process agent listens on (`IP:PORT`; port 0 picks a free one).
    pub listen: String,
    /// The address the source agent dials to reach it (`HOST:PORT`), when not the one it
    /// listens on (a wildcard address, a NAT, a port forward).
    pub advertise: Option<String>,
}

/// Copies volume `source_volume` of the agent at `source_addr` into a local directory: an
/// in-process agent serves the directory, and the source agent pushes into it (through
/// `proxy` when given) as into any agent. The in-process agent presents `agent`, an agent
/// identity of the migration (the source agent trusts only the migration's CA, and takes
/// pushes only into agents); the coordinator speaks as `coordinator`.
pub async fn pull_from_agent(
    (coordinator, agent): (&Identity, Identity),
    (source_addr, source_volume): (&str, &str),
    target: &PullTarget,
    proxy: Option<&Proxy>,
    options: CopyOptions,
    reporter: SharedReporter,
) -> Result<Summary, CopyError> {
    let options = SyncOptions::from(options);
    let target_agent = InProcessTarget::start(agent, &target.dir, &target.listen).await?;
    let dial = target.advertise.as_deref().unwrap_or(&target_agent.addr);
    let ends = ((source_addr, source_volume), (target_agent.addr.as_str(), dial, InProcessTarget::VOLUME));
    let result = push(coordinator, ends, proxy, options, reporter).await;
    target_agent.stop().await;
    result
}

/// Asks the source agent to push `source_volume` into `target_volume` on the target agent: the
/// coordinator opens the session on the target at `target_open_at`, the source agent dials the
/// target at `target_dial_at` (the same address, unless the coordinator reaches the target
/// another way, as through a port-forward), through `proxy` when given (the coordinator reaches
/// both agents directly).
pub async fn push_between_agents(
    identity: &Identity,
    (source_addr, source_volume): (&str, &str),
    (target_open_at, target_dial_at, target_volume): (&str, &str, &str),
    proxy: Option<&Proxy>,
    options: CopyOptions,
    reporter: SharedReporter,
) -> Result<Summary, CopyError> {
    let options = SyncOptions::from(options);
    let ends = ((source_addr, source_volume), (target_open_at, target_dial_at, target_volume));
    push(identity, ends, proxy, options, reporter).await
}

/// A source agent's push: the coordinator opens the session on the target at `open_at`, and the
/// source agent dials the target at `dial_at`.
async fn push(
    identity: &Identity,
    ((source_addr, source_volume), (open_at, dial_at, target_volume)): ((&str, &str), (&str, &str, &str)),
    proxy: Option<&Proxy>,
    options: SyncOptions,
    reporter: SharedReporter,
) -> Result<Summary, CopyError> {
    let started = Instant::now();
    let open_session = Request::OpenSession { volume: target_volume.to_owned(), options: options.clone() };
    let (_, welcome) = connect(identity, open_at, open_session, None).await?;
    let push = Request::Push {
        volume: source_volume.to_owned(),
        target: dial_at.to_owned(),
        token: welcome.token,
        proxy: proxy.cloned(),
        options,
    };
    let (mut stream, _) = connect(identity, source_addr, push, None).await?;
    let mut frames = FrameReader::new(&mut stream);
    loop {
        match frames.read_message().await.map_err(SyncError::from)? {
            Some(Message::Progress(event)) => reporter.on_event(&event),
            Some(Message::Summary(mut summary)) => {
                summary.elapsed_s = started.elapsed().as_secs_f64();
                return Ok(summary);
            }
            Some(Message::Error(error)) => return Err(CopyError::Remote { agent: source_addr.to_owned(), error }),
            Some(other) => {
                return Err(
                    SyncError::Protocol(format!("unexpected {} message from the source agent", other.name())).into()
                );
            }
            None => return Err(SyncError::Disconnected("(the source agent) before reporting the result").into()),
        }
    }
}

/// Asks an agent for its protocol version and volumes.
pub async fn ping(identity: &Identity, addr: &str) -> Result<Vec<String>, CopyError> {
    let (_, welcome) = connect(identity, addr, Request::Ping, None).await?;
    Ok(welcome.volumes)
}

/// A volume of a pod, granted to a node agent by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVolume {
    /// The name sessions use for the volume on that agent (as in `agent://HOST:PORT/NAME`).
    pub name: String,
    /// The UID of a pod that mounts the volume on the agent's node (`metadata.uid`).
    pub pod_uid: String,
    /// The volume's directory under the pod: the PV's name for persistent volumes.
    pub volume: String,
    /// Only readable: the agent will not receive into it.
    pub read_only: bool,
}

/// Grants a node agent a volume of a pod: the agent finds the directory the kubelet mounted
/// beneath its pods directory. Granting the same again succeeds; another grant under a name
/// taken is refused ([`SessionError::Refused`]).
pub async fn grant_pod_volume(
    identity: &Identity,
    addr: &str,
    proxy: Option<&Proxy>,
    grant: &PodVolume,
) -> Result<(), CopyError> {
    let request = Request::GrantPodVolume {
        name: grant.name.clone(),
        pod_uid: grant.pod_uid.clone(),
        volume: grant.volume.clone(),
        read_only: grant.read_only,
    };
    connect(identity, addr, request, proxy).await.map(drop)
}

/// Withdraws a grant [`grant_pod_volume`] made; refused while sessions use the volume (a
/// [`crate::RemoteErrorKind::Busy`] refusal), and for a volume the agent was given at start.
pub async fn revoke_volume(
    identity: &Identity,
    addr: &str,
    proxy: Option<&Proxy>,
    name: &str,
) -> Result<(), CopyError> {
    connect(identity, addr, Request::RevokeVolume { name: name.to_owned() }, proxy).await.map(drop)
}

/// What an agent tells a coordinator about itself (preflight).
#[derive(Debug, Clone)]
pub struct AgentStatus {
    /// Its software version (its protocol version equals ours, or the handshake failed).
    pub software_version: String,
    /// Its volumes: readable, writable, free and used bytes.
    pub volumes: Vec<VolumeStatus>,
    /// The leaf certificate it presented.
    pub certificate: Option<CertificateDer<'static>>,
}

/// Pings an agent as a coordinator, through `proxy` when given, and returns what it says about
/// itself and its volumes. A protocol version mismatch fails the handshake
/// ([`SessionError::Handshake`] with a version mismatch).
pub async fn inspect(identity: &Identity, addr: &str, proxy: Option<&Proxy>) -> Result<AgentStatus, CopyError> {
    let (stream, welcome) = connect(identity, addr, Request::Ping, proxy).await?;
    let certificate =
        stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()).map(|c| c.clone().into_owned());
    Ok(AgentStatus { software_version: welcome.software_version, volumes: welcome.volume_status, certificate })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RemoteErrorKind;

    #[test]
    fn which_copy_errors_are_retried() {
        let remote = |kind| CopyError::Remote { agent: "a:1".into(), error: RemoteError::new(kind, "why") };
        let refused = |kind| {
            CopyError::Session(SessionError::Refused { addr: "a:1".into(), error: RemoteError::new(kind, "why") })
        };
        let connect = TunnelError::Connect { addr: "a:1".into(), source: std::io::ErrorKind::ConnectionRefused.into() };
        let retried = [
            CopyError::Sync(SyncError::Disconnected("(test)")),
            CopyError::from(connect),
            remote(RemoteErrorKind::Busy),
            remote(RemoteErrorKind::Io),
            refused(RemoteErrorKind::ShuttingDown),
        ];
        for error in retried {
            assert!(error.is_retryable(), "{error}");
        }
        let not_retried = [
            // A bug stays a bug: a panic is never retried, here or on the peer (`Other`).
            CopyError::Sync(SyncError::Internal("the sender thread")),
            remote(RemoteErrorKind::Other),
            remote(RemoteErrorKind::Verification),
            refused(RemoteErrorKind::Forbidden),
            refused(RemoteErrorKind::UnknownVolume),
            CopyError::Sync(SyncError::Protocol("bad".into())),
        ];
        for error in not_retried {
            assert!(!error.is_retryable(), "{error}");
        }
    }

    #[test]
    fn a_push_failure_names_the_agent_and_keeps_the_message() {
        let error = CopyError::Remote {
            agent: "10.0.0.1:4433".into(),
            error: RemoteError::new(RemoteErrorKind::Io, "write `a`: No space left on device"),
        };
        assert_eq!(error.to_string(), "the push failed on agent `10.0.0.1:4433`: write `a`: No space left on device");
    }
}
