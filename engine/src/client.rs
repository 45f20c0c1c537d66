//! The coordinator's side: the three ways to run a volume copy.
//!
//! - [`copy_local`]: both ends in this process, joined by a real loopback mutual-TLS tunnel with
//!   ephemeral certificates: the same code path as between two nodes.
//! - [`copy_to_agent`]: this process is the source; an agent is the target.
//! - [`push_between_agents`]: the coordinator opens a session on the target agent and asks the
//!   source agent to push into it; data flows agent to agent, progress flows back here.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;

use crate::agent::{Agent, AgentError, VolumeGrant};
use crate::certs::{self, CertError, Identity, Role};
use crate::progress::{SharedReporter, Summary};
use crate::sync::{self, SyncError};
use crate::tunnel::{self, Proxy, TunnelError};
use crate::volume::{Overlap, VolumeRoot};
use crate::wire::{
    FrameReader, FrameWriter, Hello, Message, RemoteError, Request, SyncOptions, VolumeStatus, Welcome, WireError,
};
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
    /// An agent could not be reached or authenticated.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// The agent refused the request.
    #[error("agent `{addr}` refused: {error}")]
    Refused {
        /// The agent.
        addr: String,
        /// Its reason.
        error: RemoteError,
    },
    /// The handshake failed (version mismatch, not a mover agent).
    #[error("handshake with `{addr}` failed")]
    Handshake {
        /// The agent.
        addr: String,
        /// The cause.
        #[source]
        source: WireError,
    },
    /// The transfer failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The source agent reported a failed push.
    #[error("the push failed: {0}")]
    Push(String),
    /// Local agent setup failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Connects to an agent, says hello and returns the tunnel and the agent's welcome.
pub async fn open(
    identity: &Identity,
    addr: &str,
    request: Request,
    proxy: Option<&Proxy>,
) -> Result<(tunnel::ClientStream, Welcome), CopyError> {
    let config = tunnel::client_config(identity)?;
    open_with((&config, &identity.migration_id()), addr, request, proxy).await
}

/// [`open`] with a TLS configuration and migration id at hand.
async fn open_with(
    (config, migration_id): (&Arc<rustls::ClientConfig>, &str),
    addr: &str,
    request: Request,
    proxy: Option<&Proxy>,
) -> Result<(tunnel::ClientStream, Welcome), CopyError> {
    let mut stream = tunnel::connect(addr, config.clone(), proxy).await?;
    let hello = Hello { migration_id: migration_id.to_owned(), request };
    let handshake = |source| CopyError::Handshake { addr: addr.to_owned(), source };
    FrameWriter::new(&mut stream).send_hello(&hello).await.map_err(handshake)?;
    match FrameReader::new(&mut stream).read_welcome().await {
        Ok(welcome) => Ok((stream, welcome)),
        Err(WireError::Remote(error)) => Err(CopyError::Refused { addr: addr.to_owned(), error }),
        Err(error) => Err(handshake(error)),
    }
}

/// Opens the further lanes of a session over `streams` connections whose first connection to
/// the agent at `addr` was welcomed with the lane token `token`.
pub(crate) async fn join_lanes(
    (config, migration_id): (&Arc<rustls::ClientConfig>, &str),
    addr: &str,
    proxy: Option<&Proxy>,
    token: &[u8],
    streams: u32,
) -> Result<Vec<tunnel::ClientStream>, CopyError> {
    if streams > 1 && token.is_empty() {
        return Err(
            SyncError::Protocol(format!("agent `{addr}` offered no lanes for a {streams}-stream session")).into()
        );
    }
    let lanes = (1..streams).map(|lane| async move {
        let request = Request::JoinLane { token: token.to_vec(), lane };
        open_with((config, migration_id), addr, request, proxy).await.map(|(stream, _)| stream)
    });
    futures_util::future::try_join_all(lanes).await
}

/// Copies the local directory `source` into volume `volume` of the agent at `addr`, through
/// `proxy` when given.
pub async fn copy_to_agent(
    identity: &Identity,
    source: &Path,
    (addr, volume): (&str, &str),
    proxy: Option<&Proxy>,
    options: SyncOptions,
    reporter: SharedReporter,
) -> Result<Summary, CopyError> {
    let started = Instant::now();
    let root =
        crate::confine::open_root(source).map_err(|e| CopyError::Source { path: source.to_owned(), source: e })?;
    let request = Request::Receive { volume: volume.to_owned(), options: options.clone() };
    let config = tunnel::client_config(identity)?;
    let migration_id = identity.migration_id();
    let (stream, welcome) = open_with((&config, &migration_id), addr, request, proxy).await?;
    if let Some(notice) = welcome.notice {
        reporter.on_event(&crate::progress::Event::Warning { message: notice });
    }
    let lanes = join_lanes((&config, &migration_id), addr, proxy, &welcome.token, options.streams).await?;
    // Cancelling a copy from this process is ending the process: its connections close, and
    // the agent ends the session.
    let never = sync::CancellationToken::new();
    let mut summary = sync::send_volume(stream, lanes, VolumeRoot::unwatched(root), options, reporter, &never).await?;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Copies `source` to `target` (made if missing), both local, through an in-process agent on
/// a loopback mTLS tunnel with ephemeral certificates. Refused, before anything is made, when
/// one lies inside the other (by device and inode, whatever the spelling).
pub async fn copy_local(
    source: &Path,
    target: &Path,
    options: SyncOptions,
    reporter: SharedReporter,
) -> Result<Summary, CopyError> {
    let source_error = |error| CopyError::Source { path: source.to_owned(), source: error };
    let source_root = crate::confine::open_root(source).map_err(source_error)?;
    let overlap = crate::volume::overlap_with_path(source_root.as_fd(), target)
        .map_err(|error| CopyError::Target { path: target.to_owned(), source: error })?;
    if let Some(overlap) = overlap {
        return Err(CopyError::Overlap { from: source.to_owned(), target: target.to_owned(), overlap });
    }
    if !target.is_dir() {
        std::fs::create_dir_all(target)
            .map_err(|error| CopyError::CreateTarget { path: target.to_owned(), source: error })?;
    }
    let generated = certs::generate()?;
    let agent = Agent::new(
        Identity::from_generated(&generated, Role::Agent)?,
        vec![VolumeGrant { name: "target".into(), path: target.to_owned(), read_only: false, mount: false }],
    )
    .map_err(|error| match error {
        AgentError::Volume { path, source, .. } => CopyError::Target { path, source },
        other => CopyError::Agent(other),
    })?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| TunnelError::Connect { addr: "127.0.0.1:0".into(), source })?;
    let addr = listener.local_addr().map_err(|source| TunnelError::Connect { addr: "127.0.0.1:0".into(), source })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        agent
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    let coordinator = Identity::from_generated(&generated, Role::Coordinator)?;
    let result = copy_to_agent(&coordinator, source, (&addr.to_string(), "target"), None, options, reporter).await;
    let _ = stop.send(());
    let _ = server.await;
    result
}

/// Asks the source agent to push `source_volume` into `target_volume` on the target agent; the
/// source agent dials the target through `proxy` when given (the coordinator reaches both
/// agents directly).
pub async fn push_between_agents(
    identity: &Identity,
    (source_addr, source_volume): (&str, &str),
    (target_addr, target_volume): (&str, &str),
    proxy: Option<&Proxy>,
    options: SyncOptions,
    reporter: SharedReporter,
) -> Result<Summary, CopyError> {
    let started = Instant::now();
    let open_session = Request::OpenSession { volume: target_volume.to_owned(), options: options.clone() };
    let (_, welcome) = open(identity, target_addr, open_session, None).await?;
    let push = Request::Push {
        volume: source_volume.to_owned(),
        target: target_addr.to_owned(),
        token: welcome.token,
        proxy: proxy.cloned(),
        options,
    };
    let (mut stream, _) = open(identity, source_addr, push, None).await?;
    let mut frames = FrameReader::new(&mut stream);
    loop {
        match frames.read_message().await.map_err(SyncError::from)? {
            Some(Message::Progress(event)) => reporter.on_event(&event),
            Some(Message::Summary(mut summary)) => {
                summary.elapsed_s = started.elapsed().as_secs_f64();
                return Ok(summary);
            }
            Some(Message::Error(error)) => return Err(CopyError::Push(error.message)),
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
    let (_, welcome) = open(identity, addr, Request::Ping, None).await?;
    Ok(welcome.volumes)
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
/// ([`CopyError::Handshake`] with [`WireError::VersionMismatch`]).
pub async fn inspect(identity: &Identity, addr: &str, proxy: Option<&Proxy>) -> Result<AgentStatus, CopyError> {
    let (stream, welcome) = open(identity, addr, Request::Ping, proxy).await?;
    let certificate =
        stream.get_ref().1.peer_certificates().and_then(|certs| certs.first()).map(|c| c.clone().into_owned());
    Ok(AgentStatus { software_version: welcome.software_version, volumes: welcome.volume_status, certificate })
}
