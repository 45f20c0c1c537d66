//! The agent: serves volumes as a source and receives them as a target, over mutual TLS.
//!
//! Which volumes a session may touch is a grant ([`VolumeGrant`]); `--volume` flags are one
//! source of grants, all given at start, and grants that overlap are refused then. Each session
//! resolves its volume's path afresh and checks it is what the grant meant
//! (the `volume` module); every file operation of the session is relative to the root handle it
//! resolved, and a root that changes under the session ends it.
//!
//! Who may ask what:
//!
//! | request         | role          | effect                                                   |
//! |-----------------|---------------|----------------------------------------------------------|
//! | `Ping`          | any           | version and volume names; for a coordinator, the state   |
//! |                 |               | of each volume (readable, writable, free and used bytes)  |
//! | `Receive`       | coordinator   | receive a volume on this connection                      |
//! | `OpenSession`   | coordinator   | reserve a one-time token for a source agent's push       |
//! | `JoinSession`   | agent         | receive into the session the token names                 |
//! | `Push`          | coordinator   | dial the target agent and push a volume; report progress |
//! | `JoinLane`      | as the first  | carry content for a receive that asked for `streams > 1`  |
//! |                 | connection    | (the lane token is in the first connection's request)     |
//! | `GrantPodVolume`| coordinator   | grant a volume of a pod, found by pod UID and volume name |
//! |                 |               | beneath the kubelet's pods directory (`pod_volumes`)      |
//! | `RevokeVolume`  | coordinator   | withdraw a grant `GrantPodVolume` made                    |
//!
//! The agent's identity may change while it serves ([`Agent::set_identity`]: a node agent takes
//! the next migration's certificates): new connections use the new one; when the migration
//! changes, the sessions of the previous one end, its opened sessions are dropped and its pod
//! grants withdrawn. Without an identity, every connection is closed before its handshake.

mod admission;
mod claim;
mod observe;
mod pod_volumes;
mod sessions;
mod transfer;
mod volumes;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use self::admission::{Decision, RequestKind};
use self::pod_volumes::PodVolumes;
use self::sessions::{LaneGroups, Lanes, OpenedSession, OpenedSessions};
use self::transfer::SessionResult;
use self::volumes::{InUse, Volumes};
use crate::certs::{Identity, Role};
use crate::sync::{CancellationToken, full_message};
use crate::tunnel::{self, TunnelError};
use crate::volume::{VolumeError, VolumeRoot};
use crate::wire::{
    FrameReader, FrameWriter, Hello, HelloReply, MAX_STREAMS, RemoteError, RemoteErrorKind, Request, SyncOptions,
    Welcome, WireError,
};

pub use self::observe::{Direction, SessionObserver, SessionStats};
pub use crate::volume::VolumeGrant;

/// How long a session opened by a coordinator waits for the source agent.
pub const SESSION_TTL: Duration = Duration::from_secs(300);
/// How long a peer has to send its hello after the TLS handshake.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// Most connections that have not yet completed mutual TLS and sent their hello; past this,
/// new connections are closed at once. Each waits at most [`tunnel::HANDSHAKE_TIMEOUT`] plus
/// [`HELLO_TIMEOUT`], so a flood of half-open connections cannot hold the agent.
pub const MAX_UNAUTHENTICATED: usize = 4096;
/// How long a receive that asked for several streams waits for its other lanes to join.
pub const LANE_JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent reads and drops what a client sent after a hello it refused, waiting for
/// it to close ([`drain_until_closed`]).
pub const REFUSED_DRAIN: Duration = Duration::from_secs(5);
/// How long running sessions may take to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How long the sessions of a migration the agent no longer serves may take to end (they are
/// cancelled: temporary files removed, completed files kept) before they are dropped.
pub const MIGRATION_END_GRACE: Duration = Duration::from_secs(10);

/// Errors setting up an agent or changing its grants.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A volume root could not be opened.
    #[error("cannot open volume `{name}` at `{}`", path.display())]
    Volume {
        /// Volume name.
        name: String,
        /// Its path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Two grants with one name.
    #[error("volume `{0}` is given twice")]
    Duplicate(String),
    /// Two grants overlap (or their overlap could not be checked).
    #[error(transparent)]
    Overlap(#[from] VolumeError),
    /// A revoke named a volume that is not granted.
    #[error("no volume `{0}` is granted to this agent")]
    NotGranted(String),
    /// A revoke named a volume that sessions are using.
    #[error("volume `{name}` is in use by {sessions} session(s): revoke it once they have ended")]
    InUse {
        /// Volume name.
        name: String,
        /// How many sessions use it.
        sessions: usize,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
}

/// The identity the agent serves with, and what is made of it.
struct Tls {
    migration_id: String,
    client: Arc<rustls::ClientConfig>,
    acceptor: TlsAcceptor,
    /// Cancelled when the agent stops serving this migration: its sessions end.
    ended: CancellationToken,
}

impl Tls {
    fn new(identity: &Identity, ended: CancellationToken) -> Result<Tls, AgentError> {
        let acceptor = TlsAcceptor::from(tunnel::server_config(identity)?);
        let client = tunnel::client_config(identity)?;
        Ok(Tls { migration_id: identity.migration_id(), client, acceptor, ended })
    }
}

struct State {
    /// `None` while the agent waits for its identity: connections are closed at once.
    tls: RwLock<Option<Arc<Tls>>>,
    volumes: Volumes,
    pods: Option<PodVolumes>,
    sessions: OpenedSessions,
    claims: Arc<claim::Claims>,
    lanes: Arc<LaneGroups>,
    unauthenticated: Arc<tokio::sync::Semaphore>,
    observer: Option<Arc<dyn SessionObserver>>,
}

/// A configured agent, ready to serve.
#[derive(Clone)]
pub struct Agent {
    state: Arc<State>,
}

impl Agent {
    /// Checks every grant as [`Agent::grant`] does and prepares TLS.
    #[allow(clippy::needless_pass_by_value, reason = "the agent takes its identity; the signature stays")]
    pub fn new(identity: Identity, grants: Vec<VolumeGrant>) -> Result<Agent, AgentError> {
        Agent::build(Some(Tls::new(&identity, CancellationToken::new())?), grants)
    }

    /// An agent without an identity yet: it refuses every connection (closed before the TLS
    /// handshake) until [`Agent::set_identity`] gives it one.
    pub fn waiting(grants: Vec<VolumeGrant>) -> Result<Agent, AgentError> {
        Agent::build(None, grants)
    }

    fn build(tls: Option<Tls>, grants: Vec<VolumeGrant>) -> Result<Agent, AgentError> {
        let agent = Agent {
            state: Arc::new(State {
                tls: RwLock::new(tls.map(Arc::new)),
                volumes: Volumes::default(),
                pods: None,
                sessions: OpenedSessions::default(),
                claims: Arc::default(),
                lanes: Arc::default(),
                unauthenticated: Arc::new(tokio::sync::Semaphore::new(MAX_UNAUTHENTICATED)),
                observer: None,
            }),
        };
        for grant in grants {
            agent.grant(grant)?;
        }
        Ok(agent)
    }

    /// Grants a volume, also while the agent serves: its path must open as a directory, its
    /// name be new, and it must not overlap another grant. Opens directories: call it off the
    /// runtime threads when a path may be slow to answer.
    pub fn grant(&self, grant: VolumeGrant) -> Result<(), AgentError> {
        self.state.volumes.grant(grant)
    }

    /// Withdraws the grant of volume `name`, also while the agent serves. Refused, without
    /// waiting, while a session uses the volume ([`AgentError::InUse`]); sessions that ask for
    /// it afterwards are refused as for an unknown volume.
    pub fn revoke(&self, name: &str) -> Result<(), AgentError> {
        self.state.volumes.revoke(name).map(drop)
    }

    /// Serves volumes of pods granted at run time ([`crate::wire::Request::GrantPodVolume`]),
    /// found beneath `pods_dir`, the kubelet's pods directory (`/var/lib/kubelet/pods` on the
    /// node). Without it, such grants are refused. Call before serving.
    #[must_use]
    pub fn with_pod_volumes(mut self, pods_dir: PathBuf) -> Agent {
        Arc::get_mut(&mut self.state).expect("with_pod_volumes is called before the agent is shared").pods =
            Some(PodVolumes::new(pods_dir));
        self
    }

    /// Changes the identity new connections are served with (and pushes dial with); `None`
    /// refuses every new connection. When the migration changes (another CA, or none), the
    /// running sessions of the previous one are cancelled (as at shutdown: temporary files
    /// removed, completed files kept) and dropped after [`MIGRATION_END_GRACE`], the sessions
    /// it opened and no agent joined are dropped, and its pod grants are withdrawn. Sessions
    /// continue when the migration stays (a renewed certificate of the same CA). Returns the
    /// migration ids before and after.
    pub fn set_identity(&self, identity: Option<Identity>) -> Result<IdentityChange, AgentError> {
        let mut current = self.state.tls.write().expect("identity lock");
        let before = current.as_ref().map(|tls| tls.migration_id.clone());
        let after = identity.as_ref().map(Identity::migration_id);
        let same = before.is_some() && before == after;
        let ended = match current.as_ref() {
            Some(tls) if same => tls.ended.clone(),
            _ => CancellationToken::new(),
        };
        let tls = identity.map(|identity| Tls::new(&identity, ended)).transpose()?;
        let previous = std::mem::replace(&mut *current, tls.map(Arc::new));
        drop(current);
        let mut withdrawn = Vec::new();
        if let (Some(previous), false) = (previous, same) {
            previous.ended.cancel();
            self.state.sessions.drop_migration(&previous.migration_id);
            if let Some(pods) = &self.state.pods {
                withdrawn = pods.withdraw_migration(&self.state.volumes, &previous.migration_id);
            }
        }
        Ok(IdentityChange { before, after, withdrawn })
    }

    /// Reports every transfer session to `observer` (metrics). Call before serving.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn SessionObserver>) -> Agent {
        Arc::get_mut(&mut self.state).expect("with_observer is called before the agent is shared").observer =
            Some(observer);
        self
    }

    /// Accepts connections until `shutdown` completes, then stops accepting, gives running
    /// sessions [`SHUTDOWN_GRACE`] to finish and aborts the rest (their temporary files are
    /// removed; completed files stay).
    pub async fn serve(&self, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let Ok(permit) = self.state.unauthenticated.clone().try_acquire_owned() else {
                            debug!(%peer, "too many connections still in their handshake: closed");
                            continue;
                        };
                        let state = self.state.clone();
                        sessions.spawn(async move { handle(state, tcp, peer.to_string(), permit).await });
                    }
                    Err(error) => {
                        // Out of file descriptors or similar: back off instead of spinning.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(listener);
        info!(active = sessions.len(), "shutting down: no new connections");
        let drain = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            warn!(active = sessions.len(), "sessions still running after the grace period: aborting them");
            sessions.shutdown().await;
        }
    }
}

/// What [`Agent::set_identity`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityChange {
    /// The migration served before, if any.
    pub before: Option<String>,
    /// The migration served now, if any.
    pub after: Option<String>,
    /// The pod grants withdrawn with the previous migration.
    pub withdrawn: Vec<String>,
}

async fn handle(state: Arc<State>, tcp: TcpStream, peer: String, permit: tokio::sync::OwnedSemaphorePermit) {
    let Some(tls) = state.tls.read().expect("identity lock").clone() else {
        debug!(%peer, "no identity yet: connection closed");
        return;
    };
    let session = connection(&state, &tls, tcp, &peer, permit);
    tokio::pin!(session);
    tokio::select! {
        biased;
        () = &mut session => {}
        () = tls.ended.cancelled() => {
            // Transfers hear the cancel themselves and end; anything else is dropped.
            if tokio::time::timeout(MIGRATION_END_GRACE, session).await.is_err() {
                info!(%peer, "session of a previous migration dropped");
            }
        }
    }
}

async fn connection(
    state: &Arc<State>,
    tls: &Arc<Tls>,
    tcp: TcpStream,
    peer: &str,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    if tls.ended.is_cancelled() {
        return;
    }
    let peer = peer.to_owned();
    let (mut stream, role) = match tunnel::accept(tcp, &tls.acceptor, &peer).await {
        Ok(accepted) => accepted,
        Err(error) => {
            info!(%peer, error = %full_message(&error), "rejected connection");
            return;
        }
    };
    let hello = tokio::time::timeout(HELLO_TIMEOUT, FrameReader::new(&mut stream).read_hello()).await;
    let hello = match hello {
        Ok(Ok(hello)) => hello,
        Ok(Err(error)) => {
            let kind =
                if matches!(error, WireError::VersionMismatch { .. }) { "version mismatch" } else { "bad hello" };
            info!(%peer, error = %error, "{kind}");
            // Our reply carries our version, so the peer can report the mismatch too.
            let reply = HelloReply::Refused(RemoteError::new(RemoteErrorKind::Protocol, error.to_string()));
            let _ = FrameWriter::new(&mut stream).send_reply(&reply).await;
            return;
        }
        Err(_) => {
            info!(%peer, "no hello in time");
            return;
        }
    };
    drop(permit);
    info!(%peer, %role, request = RequestKind::of(&hello.request).as_str(), "session");
    if let Err(error) = dispatch((state, tls), stream, role, hello, &peer).await {
        warn!(%peer, error = %full_message(error.as_ref()), "session failed");
    }
}

/// What admitting a request set up for the session that follows.
#[derive(Default)]
struct Admitted {
    welcome: Welcome,
    /// The session's volume, resolved afresh, and its hold on it.
    root: Option<(VolumeRoot, InUse)>,
    /// A receive's claim on its volume.
    claim: Option<claim::Claim>,
    /// A receive's further lanes.
    lanes: Option<Lanes>,
    /// The session a join took.
    joined: Option<OpenedSession>,
}

async fn dispatch(
    (state, tls): (&Arc<State>, &Arc<Tls>),
    mut stream: tunnel::ServerStream,
    role: Role,
    hello: Hello,
    peer: &str,
) -> SessionResult {
    let ours = &tls.migration_id;
    let admitted = if hello.migration_id == *ours {
        let admitting = admit((state, tls), role, &hello.request, peer);
        if matches!(hello.request, Request::JoinLane { .. }) {
            // A lane waits for its receive to be admitted; not for a client that went away.
            tokio::select! {
                admitted = admitting => admitted,
                () = sessions::closed_by_peer(&stream) => return Ok(()),
            }
        } else {
            admitting.await
        }
    } else {
        Err(RemoteError::new(
            RemoteErrorKind::Forbidden,
            format!("migration id `{}` does not match this agent's `{ours}`", hello.migration_id),
        ))
    };
    let mut writer = FrameWriter::new(&mut stream);
    let admitted = match admitted {
        Err(error) => {
            info!(%peer, error = %error.message, "refused");
            writer.send_reply(&HelloReply::Refused(error)).await?;
            let _ = writer.shutdown().await;
            drain_until_closed(&mut stream).await;
            return Ok(());
        }
        Ok(admitted) => {
            writer.send_reply(&HelloReply::Welcome(admitted.welcome.clone())).await?;
            admitted
        }
    };
    let Admitted { root, claim, lanes, joined, .. } = admitted;
    // Held until the session ends: a revoke refuses a volume in use.
    let (root, _in_use) = root.map_or((None, None), |(root, in_use)| (Some(root), Some(in_use)));
    match hello.request {
        Request::Ping | Request::OpenSession { .. } | Request::GrantPodVolume { .. } | Request::RevokeVolume { .. } => {
            let _ = FrameWriter::new(&mut stream).shutdown().await;
        }
        Request::Receive { volume, options, .. } => {
            let (root, claim) = (root.expect("resolved on admission"), claim.expect("claimed on admission"));
            transfer::receive((state, tls), (stream, lanes), (&volume, root, &claim), options, peer).await?;
        }
        Request::JoinSession { .. } => {
            let session = joined.expect("joined on admission");
            let (root, claim) = (root.expect("resolved on admission"), claim.expect("claimed on admission"));
            let ends = (session.volume.as_str(), root, &claim);
            transfer::receive((state, tls), (stream, lanes), ends, session.options, peer).await?;
        }
        Request::JoinLane { token, lane } => state.lanes.deliver(&token, lane, stream),
        Request::Push { volume, target, token, proxy, options } => {
            let root = root.expect("resolved on admission");
            transfer::push((state, tls), stream, ((&volume, root), &target), token, proxy, options).await?;
        }
    }
    Ok(())
}

/// Decides on a request ([`admission`]), checks what it asks for, and sets up its session:
/// the volume resolved afresh, a receive's claim and lane token, a join's session.
async fn admit(
    (state, tls): (&Arc<State>, &Arc<Tls>),
    role: Role,
    request: &Request,
    peer: &str,
) -> Result<Admitted, RemoteError> {
    // The volume the request concerns: the one it names, or (a join) its session's.
    let concerned = match request {
        Request::Receive { volume, .. } | Request::OpenSession { volume, .. } | Request::Push { volume, .. } => {
            Some(volume.clone())
        }
        Request::JoinSession { token, .. } => state.sessions.volume(token),
        Request::Ping | Request::JoinLane { .. } | Request::GrantPodVolume { .. } | Request::RevokeVolume { .. } => {
            None
        }
    };
    let read_only = concerned.as_deref().and_then(|name| state.volumes.read_only(name)).unwrap_or(false);
    if let Decision::Forbid(reason) = admission::admit(role, RequestKind::of(request), read_only) {
        return Err(reason.to_remote(role, concerned.as_deref().unwrap_or_default()));
    }
    let mut admitted = Admitted::default();
    match request {
        Request::Ping => {
            admitted.welcome.volumes = state.volumes.names();
            crate::VERSION.clone_into(&mut admitted.welcome.software_version);
            // Only a coordinator's ping walks volumes and probes writes (preflight).
            if role == Role::Coordinator {
                admitted.welcome.volume_status = state.volumes.status().await;
            }
        }
        Request::Receive { volume, options, .. } => {
            check_streams(options).and_then(|()| state.volumes.known(volume))?;
        }
        Request::OpenSession { volume, options } => {
            check_streams(options).and_then(|()| state.volumes.known(volume))?;
            admitted.welcome.token = state.sessions.open(volume, options, &tls.migration_id);
        }
        Request::GrantPodVolume { name, pod_uid, volume, read_only } => {
            let asked = pod_volumes::Asked {
                name: name.clone(),
                pod_uid: pod_uid.clone(),
                volume: volume.clone(),
                read_only: *read_only,
            };
            grant_pod_volume((state, tls), asked).await?;
            info!(%peer, volume = %name, %pod_uid, pod_volume = %volume, read_only, "granted a pod volume");
        }
        Request::RevokeVolume { name } => {
            pods_of(state)?.revoke(&state.volumes, name)?;
            info!(%peer, volume = %name, "revoked a pod volume");
        }
        Request::JoinLane { token, lane } => state.lanes.admit(token, *lane, role).await?,
        // Settled below: the token is single use.
        Request::JoinSession { .. } => {}
        Request::Push { volume, options, token, .. } => {
            check_streams(options).and_then(|()| state.volumes.known(volume))?;
            transfer::refuse_push_into_itself(state, volume, token).await?;
        }
    }
    if let Request::JoinSession { token, .. } = request {
        admitted.joined = Some(state.sessions.join(token, &tls.migration_id)?);
    }
    // Each session resolves its volume's root afresh: a grant names a path, not a directory.
    let (volume, receive) = match (request, &admitted.joined) {
        (Request::Receive { volume, options, lanes }, _) => (Some(volume.clone()), Some((options.clone(), lanes))),
        (Request::Push { volume, .. }, _) => (Some(volume.clone()), None),
        (Request::JoinSession { lanes, .. }, Some(session)) => {
            (Some(session.volume.clone()), Some((session.options.clone(), lanes)))
        }
        _ => (None, None),
    };
    if let Some(volume) = &volume {
        admitted.root = Some(state.volumes.resolve(volume).await?);
    }
    if let (Some(volume), Some((options, lane_token)), Some((root, _))) = (&volume, &receive, &admitted.root) {
        // A receive claims its volume: one writer at a time, across processes too.
        let claim = state.claims.claim(volume, root.fd().as_fd(), peer).await?;
        if let Some(notice) = &claim.notice {
            warn!(%peer, "{notice}");
        }
        admitted.welcome.notice.clone_from(&claim.notice);
        admitted.claim = Some(claim);
        // A receive over several streams waits for its further lanes, which join with the
        // token its client picked.
        if options.streams > 1 {
            admitted.lanes = Some(state.lanes.open(role, options.streams, lane_token)?);
        }
    }
    Ok(admitted)
}

/// Reads and drops what the client sent after a hello that was refused (its first entries,
/// sent without waiting for the welcome) until it closes, for at most [`REFUSED_DRAIN`]:
/// closing with unread data would reset the connection, and the client might lose the
/// refusal to the reset before reading it.
async fn drain_until_closed(stream: &mut tunnel::ServerStream) {
    let tcp = stream.get_mut().0;
    let mut scrap = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(REFUSED_DRAIN, async {
        while matches!(tokio::io::AsyncReadExt::read(tcp, &mut scrap).await, Ok(1..)) {}
    })
    .await;
}

/// The agent's pod grants; refused when it was not given a pods directory.
fn pods_of(state: &State) -> Result<&PodVolumes, RemoteError> {
    state.pods.as_ref().ok_or_else(|| {
        RemoteError::new(
            RemoteErrorKind::Forbidden,
            "this agent does not serve pod volumes: it was started without the kubelet's pods directory",
        )
    })
}

/// Finds and grants a pod's volume, off the runtime threads (it opens directories).
async fn grant_pod_volume(
    (state, tls): (&Arc<State>, &Arc<Tls>),
    asked: pod_volumes::Asked,
) -> Result<(), RemoteError> {
    pods_of(state)?;
    let (state, tls) = (state.clone(), tls.clone());
    tokio::task::spawn_blocking(move || {
        let pods = state.pods.as_ref().expect("checked above");
        pods.grant(&state.volumes, &asked, (&tls.migration_id, &tls.ended))
    })
    .await
    .map_err(|_| RemoteError::new(RemoteErrorKind::Internal, "granting the pod volume panicked"))?
}

/// Checks the number of streams a session asks for, and its exclude patterns (bounded in
/// number and size before they are compiled).
fn check_streams(options: &SyncOptions) -> Result<(), RemoteError> {
    if !(1..=MAX_STREAMS).contains(&options.streams) {
        return Err(RemoteError::new(
            RemoteErrorKind::Protocol,
            format!("a session uses 1 to {MAX_STREAMS} streams, not {}", options.streams),
        ));
    }
    crate::exclude::Excludes::new(&options.excludes)
        .map(drop)
        .map_err(|error| RemoteError::new(RemoteErrorKind::Protocol, error.to_string()))
}

#[cfg(test)]
mod tests;
