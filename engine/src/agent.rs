//! The agent: serves volumes as a source and receives them as a target, over mutual TLS.
//!
//! Which volumes a session may touch is a grant ([`VolumeGrant`]); `--volume` flags are one
//! source of grants, all given at start, and grants that overlap are refused then. Each session
//! resolves its volume's path afresh and checks it is what the grant meant
//! ([`crate::volume`]); every file operation of the session is relative to the root handle it
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
//! |                 | connection    | (the first connection's welcome holds the lane token)     |

mod claim;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::certs::{Identity, Role};
use crate::progress::{Event, Reporter};
use crate::sync::{self, full_message};
use crate::tunnel::{self, TunnelError};
use crate::volume::{CheckedGrant, VolumeError, VolumeRoot};
use crate::wire::{
    FrameReader, FrameWriter, Hello, HelloReply, MAX_STREAMS, Message, RemoteError, RemoteErrorKind, Request,
    SyncOptions, VolumeStatus, Welcome, WireError,
};

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
/// How long running sessions may take to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

pub use crate::volume::VolumeGrant;

/// Which way a session moved a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This agent was the source (a push).
    Sent,
    /// This agent was the target.
    Received,
}

impl Direction {
    /// `sent` or `received`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// What one finished session moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Content bytes sent or written.
    pub bytes: u64,
    /// Bytes on the tunnel (frames after compression, before TLS): written by a source, read by
    /// a target.
    pub bytes_on_wire: u64,
    /// Files whose content was sent or written.
    pub files: u64,
    /// Errors: per-file errors of a push, plus one when the session failed as a whole.
    pub errors: u64,
}

/// Told about every transfer session (the agent binary turns this into `/metrics`).
pub trait SessionObserver: Send + Sync {
    /// A session starts moving `volume`.
    fn session_started(&self, volume: &str, direction: Direction);
    /// It ended, successfully or not.
    fn session_finished(&self, volume: &str, direction: Direction, stats: &SessionStats);
}

/// Reports a session's start on creation and its end (with what it moved) when dropped.
struct Observed {
    observer: Option<Arc<dyn SessionObserver>>,
    volume: String,
    direction: Direction,
    stats: SessionStats,
}

impl Observed {
    fn start(state: &State, volume: &str, direction: Direction) -> Observed {
        if let Some(observer) = &state.observer {
            observer.session_started(volume, direction);
        }
        Observed {
            observer: state.observer.clone(),
            volume: volume.to_owned(),
            direction,
            stats: SessionStats { errors: 1, ..SessionStats::default() },
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(observer) = &self.observer {
            observer.session_finished(&self.volume, self.direction, &self.stats);
        }
    }
}

/// Errors setting up an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A volume root could not be opened.
    #[error("cannot open volume `{name}` at `{}`", path.display())]
    Volume {
        /// Volume name.
        name: String,
        /// Its path.
        path: PathBuf,
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
    /// TLS setup failed.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
}

struct Volume {
    grant: Arc<CheckedGrant>,
}

struct OpenedSession {
    volume: String,
    options: SyncOptions,
    expires: Instant,
}

/// A receive waiting for its other lanes ([`Request::JoinLane`]).
struct LaneGroup {
    /// Lanes must come with the role the first connection had.
    role: Role,
    streams: u32,
    joined: HashSet<u32>,
    to_receiver: mpsc::UnboundedSender<(u32, tunnel::ServerStream)>,
}

struct State {
    identity: Identity,
    client: Arc<rustls::ClientConfig>,
    acceptor: TlsAcceptor,
    volumes: HashMap<String, Volume>,
    sessions: Mutex<HashMap<Vec<u8>, OpenedSession>>,
    claims: Arc<claim::Claims>,
    lanes: Mutex<HashMap<Vec<u8>, LaneGroup>>,
    unauthenticated: Arc<tokio::sync::Semaphore>,
    observer: Option<Arc<dyn SessionObserver>>,
}

/// A configured agent, ready to serve.
#[derive(Clone)]
pub struct Agent {
    state: Arc<State>,
}

impl Agent {
    /// Checks every grant (its path opens as a directory; no two overlap) and prepares TLS.
    pub fn new(identity: Identity, grants: Vec<VolumeGrant>) -> Result<Agent, AgentError> {
        let mut volumes = HashMap::new();
        let mut roots: Vec<(VolumeGrant, OwnedFd)> = Vec::new();
        for grant in grants {
            let (checked, root) = CheckedGrant::new(grant.clone()).map_err(|source| AgentError::Volume {
                name: grant.name.clone(),
                path: grant.path.clone(),
                source,
            })?;
            if volumes.insert(grant.name.clone(), Volume { grant: Arc::new(checked) }).is_some() {
                return Err(AgentError::Duplicate(grant.name));
            }
            for (other, other_root) in &roots {
                refuse_overlap((other, other_root.as_fd()), (&grant, root.as_fd()))?;
            }
            roots.push((grant, root));
        }
        let acceptor = TlsAcceptor::from(tunnel::server_config(&identity)?);
        let client = tunnel::client_config(&identity)?;
        Ok(Agent {
            state: Arc::new(State {
                identity,
                client,
                acceptor,
                volumes,
                sessions: Mutex::new(HashMap::new()),
                claims: Arc::default(),
                lanes: Mutex::new(HashMap::new()),
                unauthenticated: Arc::new(tokio::sync::Semaphore::new(MAX_UNAUTHENTICATED)),
                observer: None,
            }),
        })
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

/// Refuses two grants whose directories overlap.
fn refuse_overlap(
    (first, first_root): (&VolumeGrant, BorrowedFd<'_>),
    (second, second_root): (&VolumeGrant, BorrowedFd<'_>),
) -> Result<(), AgentError> {
    let overlap = crate::volume::overlap(first_root, second_root).map_err(|source| AgentError::Volume {
        name: second.name.clone(),
        path: second.path.clone(),
        source,
    })?;
    match overlap {
        None => Ok(()),
        Some(overlap) => Err(AgentError::Overlap(VolumeError::Overlap {
            first: first.name.clone(),
            first_path: first.path.clone(),
            second: second.name.clone(),
            second_path: second.path.clone(),
            overlap,
        })),
    }
}

fn refusal(kind: RemoteErrorKind, message: impl Into<String>) -> RemoteError {
    RemoteError::new(kind, message)
}

async fn handle(state: Arc<State>, tcp: TcpStream, peer: String, permit: tokio::sync::OwnedSemaphorePermit) {
    let (mut stream, role) = match tunnel::accept(tcp, &state.acceptor, &peer).await {
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
            let reply = HelloReply::Refused(refusal(RemoteErrorKind::Protocol, error.to_string()));
            let _ = FrameWriter::new(&mut stream).send_reply(&reply).await;
            return;
        }
        Err(_) => {
            info!(%peer, "no hello in time");
            return;
        }
    };
    drop(permit);
    info!(%peer, %role, request = request_name(&hello.request), "session");
    if let Err(error) = dispatch(&state, stream, role, hello, &peer).await {
        warn!(%peer, error = %full_message(error.as_ref()), "session failed");
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Receive { .. } => "receive",
        Request::OpenSession { .. } => "open-session",
        Request::JoinSession { .. } => "join-session",
        Request::Push { .. } => "push",
        Request::JoinLane { .. } => "join-lane",
        Request::Ping => "ping",
    }
}

impl State {
    fn writable(&self, name: &str) -> Result<&Volume, RemoteError> {
        let volume = self.volume(name)?;
        if volume.grant.grant().read_only {
            return Err(refusal(RemoteErrorKind::ReadOnly, format!("volume `{name}` is read-only on this agent")));
        }
        Ok(volume)
    }

    fn volume(&self, name: &str) -> Result<&Volume, RemoteError> {
        self.volumes.get(name).ok_or_else(|| {
            let mut known: Vec<_> = self.volumes.keys().map(String::as_str).collect();
            known.sort_unstable();
            refusal(
                RemoteErrorKind::UnknownVolume,
                format!("this agent serves no volume `{name}` (it serves: {})", known.join(", ")),
            )
        })
    }
}

/// The state of every volume, each resolved afresh as a session would, measured off the
/// runtime threads.
async fn volume_status(state: &Arc<State>) -> Vec<VolumeStatus> {
    let volumes: Vec<Arc<CheckedGrant>> = state.volumes.values().map(|v| v.grant.clone()).collect();
    let measured = tokio::task::spawn_blocking(move || {
        let mut status: Vec<VolumeStatus> = volumes
            .iter()
            .map(|checked| {
                let grant = checked.grant();
                match checked.resolve() {
                    Ok(root) => crate::inspect::inspect(&grant.name, root.fd().as_fd(), grant.read_only),
                    Err(error) => {
                        let reason = full_message(&error);
                        VolumeStatus {
                            name: grant.name.clone(),
                            read_only: grant.read_only,
                            unwritable: (!grant.read_only).then(|| reason.clone()),
                            unreadable: Some(reason),
                            ..VolumeStatus::default()
                        }
                    }
                }
            })
            .collect();
        status.sort_by(|a, b| a.name.cmp(&b.name));
        status
    });
    measured.await.unwrap_or_default()
}

impl State {
    /// Resolves volume `name`'s root afresh for a session, off the runtime threads (the path
    /// may be on a file system that is slow to answer).
    async fn resolve(&self, name: &str) -> Result<VolumeRoot, RemoteError> {
        let checked = self.volume(name)?.grant.clone();
        let resolved = tokio::task::spawn_blocking(move || checked.resolve()).await;
        let resolved = resolved.map_err(|_| refusal(RemoteErrorKind::Other, "resolving the volume root panicked"))?;
        resolved.map_err(|error| refusal(RemoteErrorKind::Other, full_message(&error)))
    }

    /// Refuses a push of `volume` into the session `token` names when that session is this
    /// agent's own and its volume overlaps `volume`: a copy of a tree into itself reads what
    /// it writes and deletes what it reads.
    async fn refuse_push_into_itself(&self, volume: &str, token: &[u8]) -> Result<(), RemoteError> {
        let target = self.sessions.lock().expect("sessions lock").get(token).map(|session| session.volume.clone());
        let Some(target) = target else { return Ok(()) };
        let (source_root, target_root) = (self.resolve(volume).await?, self.resolve(&target).await?);
        let overlap = crate::volume::overlap(source_root.fd().as_fd(), target_root.fd().as_fd()).map_err(|error| {
            refusal(RemoteErrorKind::Io, format!("cannot compare volumes `{volume}` and `{target}`: {error}"))
        })?;
        match overlap {
            None => Ok(()),
            Some(_) => Err(refusal(
                RemoteErrorKind::Other,
                format!(
                    "refusing to copy volume `{volume}` into volume `{target}` of the same agent: they are the same \
                     directory or one holds the other, so the copy would read what it writes and delete what it \
                     reads; copy into a volume that does not overlap the source"
                ),
            )),
        }
    }
}

fn forbid(role: Role, what: &str) -> RemoteError {
    refusal(RemoteErrorKind::Forbidden, format!("a certificate with the {role} role may not {what}"))
}

async fn dispatch(
    state: &Arc<State>,
    mut stream: tunnel::ServerStream,
    role: Role,
    hello: Hello,
    peer: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let ours = state.identity.migration_id();
    let decision: Result<Welcome, RemoteError> = if hello.migration_id == ours {
        match &hello.request {
            Request::Ping => {
                let mut volumes: Vec<String> = state.volumes.keys().cloned().collect();
                volumes.sort_unstable();
                // Only a coordinator's ping walks volumes and probes writes (preflight).
                let volume_status = if role == Role::Coordinator { volume_status(state).await } else { Vec::new() };
                Ok(Welcome {
                    volumes,
                    software_version: crate::VERSION.to_owned(),
                    volume_status,
                    ..Welcome::default()
                })
            }
            Request::Receive { volume, options } if role == Role::Coordinator => {
                check_streams(options).and_then(|()| state.writable(volume)).map(|_| Welcome::default())
            }
            Request::Receive { .. } => Err(forbid(role, "push a volume without a session")),
            Request::OpenSession { volume, options } if role == Role::Coordinator => {
                check_streams(options).and_then(|()| state.writable(volume)).map(|_| {
                    let mut token = vec![0u8; 32];
                    getrandom::fill(&mut token).expect("the OS random source works");
                    let mut sessions = state.sessions.lock().expect("sessions lock");
                    sessions.retain(|_, session| session.expires > Instant::now());
                    sessions.insert(
                        token.clone(),
                        OpenedSession {
                            volume: volume.clone(),
                            options: options.clone(),
                            expires: Instant::now() + SESSION_TTL,
                        },
                    );
                    Welcome { token, ..Welcome::default() }
                })
            }
            Request::OpenSession { .. } => Err(forbid(role, "open sessions")),
            Request::JoinLane { token, lane } => state.join_lane(token, *lane, role).map(|()| Welcome::default()),
            Request::JoinSession { .. } if role != Role::Agent => Err(forbid(role, "join a session")),
            Request::JoinSession { .. } => Ok(Welcome::default()),
            Request::Push { volume, options, token, .. } if role == Role::Coordinator => {
                match check_streams(options).and_then(|()| state.volume(volume)) {
                    Ok(_) => state.refuse_push_into_itself(volume, token).await.map(|()| Welcome::default()),
                    Err(error) => Err(error),
                }
            }
            Request::Push { .. } => Err(forbid(role, "ask an agent to push")),
        }
    } else {
        Err(refusal(
            RemoteErrorKind::Forbidden,
            format!("migration id `{}` does not match this agent's `{ours}`", hello.migration_id),
        ))
    };
    // A join is settled only now: the token is single use.
    let (decision, joined) = match (&hello.request, decision) {
        (Request::JoinSession { token }, Ok(welcome)) => {
            let session = state.sessions.lock().expect("sessions lock").remove(token);
            match session {
                Some(session) if session.expires > Instant::now() => (Ok(welcome), Some(session)),
                _ => (Err(refusal(RemoteErrorKind::BadToken, "unknown or expired session token")), None),
            }
        }
        (_, decision) => (decision, None),
    };
    // Each session resolves its volume's root afresh: a grant names a path, not a directory.
    let session_volume = match (&hello.request, &decision, &joined) {
        (Request::Receive { volume, .. } | Request::Push { volume, .. }, Ok(_), _) => Some(volume.as_str()),
        (Request::JoinSession { .. }, Ok(_), Some(session)) => Some(session.volume.as_str()),
        _ => None,
    };
    let (decision, root) = match session_volume {
        Some(name) => match state.resolve(name).await {
            Ok(root) => (decision, Some(root)),
            Err(error) => (Err(error), None),
        },
        None => (decision, None),
    };
    // A receive claims its volume: one writer at a time, across processes too.
    let claimed = match (&hello.request, &decision, &root) {
        (Request::Receive { .. } | Request::JoinSession { .. }, Ok(_), Some(root)) => {
            let name = session_volume.expect("a receive names its volume");
            Some(state.claims.claim(name, root.fd().as_fd(), peer).await)
        }
        _ => None,
    };
    let (decision, claim) = match (decision, claimed) {
        (_, Some(Err(busy))) => (Err(busy), None),
        (Ok(welcome), Some(Ok(claim))) => {
            if let Some(notice) = &claim.notice {
                warn!(%peer, "{notice}");
            }
            (Ok(Welcome { notice: claim.notice.clone(), ..welcome }), Some(claim))
        }
        (decision, claim) => (decision, claim.and_then(Result::ok)),
    };
    // A receive over several streams hands its further lanes a token for joining.
    let lanes = match (&hello.request, &decision, &joined) {
        (Request::Receive { options, .. }, Ok(_), _)
        | (Request::JoinSession { .. }, Ok(_), Some(OpenedSession { options, .. }))
            if options.streams > 1 =>
        {
            Some(state.open_lanes(role, options.streams))
        }
        _ => None,
    };
    let decision = match (decision, &lanes) {
        (Ok(welcome), Some(lanes)) => Ok(Welcome { token: lanes.token.clone(), ..welcome }),
        (decision, _) => decision,
    };
    let mut writer = FrameWriter::new(&mut stream);
    match decision {
        Err(error) => {
            info!(%peer, error = %error.message, "refused");
            writer.send_reply(&HelloReply::Refused(error)).await?;
            let _ = writer.shutdown().await;
            return Ok(());
        }
        Ok(welcome) => writer.send_reply(&HelloReply::Welcome(welcome)).await?,
    }
    match hello.request {
        Request::Ping | Request::OpenSession { .. } => {
            let _ = FrameWriter::new(&mut stream).shutdown().await;
        }
        Request::Receive { volume, options } => {
            let (root, claim) = (root.expect("resolved above"), claim.expect("claimed above"));
            receive(state, (stream, lanes), (&volume, root, &claim), options, peer).await?;
        }
        Request::JoinSession { .. } => {
            let session = joined.expect("joined above");
            let (root, claim) = (root.expect("resolved above"), claim.expect("claimed above"));
            receive(state, (stream, lanes), (&session.volume, root, &claim), session.options, peer).await?;
        }
        Request::JoinLane { token, lane } => {
            // The receive that waits for this lane takes it over (or has given up: dropped).
            let to_receiver = state.lanes.lock().expect("lanes lock").get(&token).map(|g| g.to_receiver.clone());
            if let Some(to_receiver) = to_receiver {
                let _ = to_receiver.send((lane, stream));
            }
        }
        Request::Push { volume, target, token, proxy, options } => {
            let root = root.expect("resolved above");
            push(state, stream, ((&volume, root), &target), token, proxy, options).await?;
        }
    }
    Ok(())
}

/// Checks the number of streams a session asks for, and its exclude patterns (bounded in
/// number and size before they are compiled).
fn check_streams(options: &SyncOptions) -> Result<(), RemoteError> {
    if !(1..=MAX_STREAMS).contains(&options.streams) {
        return Err(refusal(
            RemoteErrorKind::Protocol,
            format!("a session uses 1 to {MAX_STREAMS} streams, not {}", options.streams),
        ));
    }
    crate::exclude::Excludes::new(&options.excludes)
        .map(drop)
        .map_err(|error| refusal(RemoteErrorKind::Protocol, error.to_string()))
}

/// The further lanes of one receive: they join with `token`, and arrive on `arrivals`. The
/// token is withdrawn when this is dropped.
struct Lanes {
    state: Arc<State>,
    token: Vec<u8>,
    arrivals: mpsc::UnboundedReceiver<(u32, tunnel::ServerStream)>,
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.state.lanes.lock().expect("lanes lock").remove(&self.token);
    }
}

impl Lanes {
    /// Waits for the `count` other lanes and returns them in lane order; fails, naming how many
    /// came, after [`LANE_JOIN_TIMEOUT`], or at once when the source closes `first` (it died).
    async fn gather(mut self, first: &tunnel::ServerStream, count: usize) -> Result<Vec<tunnel::ServerStream>, String> {
        let mut lanes = Vec::with_capacity(count);
        let deadline = tokio::time::Instant::now() + LANE_JOIN_TIMEOUT;
        // Watched by peeking, so nothing is read. Data there is no sign of trouble: the source
        // starts as soon as its lanes are welcomed, which may be before they reach us here.
        let tcp = first.get_ref().0;
        let closed = async {
            let mut byte = [0u8; 1];
            if matches!(tcp.peek(&mut byte).await, Ok(1..)) {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(closed);
        while lanes.len() < count {
            let arrival = tokio::select! {
                arrival = tokio::time::timeout_at(deadline, self.arrivals.recv()) => arrival,
                () = &mut closed => {
                    return Err(format!(
                        "the source closed its first connection before its {count} further streams joined"
                    ));
                }
            };
            match arrival {
                Ok(Some(lane)) => lanes.push(lane),
                Ok(None) | Err(_) => {
                    return Err(format!(
                        "only {} of the {count} further streams joined within {} s",
                        lanes.len(),
                        LANE_JOIN_TIMEOUT.as_secs()
                    ));
                }
            }
        }
        lanes.sort_by_key(|(number, _)| *number);
        Ok(lanes.into_iter().map(|(_, lane)| lane).collect())
    }
}

impl State {
    /// Registers a receive over `streams` connections; its welcome carries the lane token.
    fn open_lanes(self: &Arc<Self>, role: Role, streams: u32) -> Lanes {
        let mut token = vec![0u8; 32];
        getrandom::fill(&mut token).expect("the OS random source works");
        let (to_receiver, arrivals) = mpsc::unbounded_channel();
        let group = LaneGroup { role, streams, joined: HashSet::new(), to_receiver };
        self.lanes.lock().expect("lanes lock").insert(token.clone(), group);
        Lanes { state: self.clone(), token, arrivals }
    }

    /// Admits lane `lane` of the receive whose lane token is `token`: each lane once, with
    /// the role of the first connection.
    fn join_lane(&self, token: &[u8], lane: u32, role: Role) -> Result<(), RemoteError> {
        let mut groups = self.lanes.lock().expect("lanes lock");
        let Some(group) = groups.get_mut(token).filter(|group| group.role == role) else {
            return Err(refusal(RemoteErrorKind::BadToken, "unknown lane token (or its receive has ended)"));
        };
        if lane == 0 || lane >= group.streams || !group.joined.insert(lane) {
            return Err(refusal(
                RemoteErrorKind::Protocol,
                format!("lane {lane} is not a free lane of this {}-stream receive", group.streams),
            ));
        }
        Ok(())
    }
}

async fn receive(
    state: &Arc<State>,
    (stream, lanes): (tunnel::ServerStream, Option<Lanes>),
    (volume, root, claim): (&str, VolumeRoot, &claim::Claim),
    options: SyncOptions,
    peer: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut observed = Observed::start(state, volume, Direction::Received);
    let mut stream = stream;
    let lanes = match lanes {
        Some(lanes) => match lanes.gather(&stream, options.streams as usize - 1).await {
            Ok(lanes) => lanes,
            Err(message) => {
                // The source hears why before the connection closes.
                let error = RemoteError::new(RemoteErrorKind::Other, message.clone());
                let _ = FrameWriter::new(&mut stream).send(&Message::Error(error)).await;
                return Err(message.into());
            }
        },
        None => Vec::new(),
    };
    let wire = &claim.heard;
    let stream = crate::tunnel::Counted::sharing(stream, wire);
    let lanes = lanes.into_iter().map(|lane| crate::tunnel::Counted::sharing(lane, wire)).collect();
    let reporter = Arc::new(crate::progress::LogProgress);
    let report = sync::receive_volume(stream, lanes, root, options, reporter, &claim.cancel).await;
    observed.stats.bytes_on_wire = wire.read();
    let report = report?;
    observed.stats = SessionStats {
        bytes: report.bytes_written,
        bytes_on_wire: wire.read(),
        files: report.files_written,
        errors: 0,
    };
    info!(%peer, %volume, files = report.files_written, bytes = report.bytes_written, "received");
    Ok(())
}

/// Forwards progress events to the coordinator's connection; drops them when it lags.
struct Forward(mpsc::Sender<Message>);

impl Reporter for Forward {
    fn on_event(&self, event: &Event) {
        let message = Message::Progress(event.clone());
        // A change (a deletion above all) is a record the coordinator must get: it waits for
        // room. Changes come only from the sender's tree thread (a blocking thread, never a
        // task); counters may be dropped, the next one says the same.
        if matches!(event, Event::Change(_)) {
            let _ = self.0.blocking_send(message);
        } else {
            let _ = self.0.try_send(message);
        }
    }

    /// The coordinator may be showing a progress bar: give it totals early.
    fn wants_early_totals(&self) -> bool {
        true
    }
}

async fn push(
    state: &Arc<State>,
    stream: tunnel::ServerStream,
    ((volume, root), target): ((&str, VolumeRoot), &str),
    token: Vec<u8>,
    proxy: Option<tunnel::Proxy>,
    options: SyncOptions,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut observed = Observed::start(state, volume, Direction::Sent);
    let (events_tx, mut events_rx) = mpsc::channel::<Message>(1024);
    let migration_id = state.identity.migration_id();
    let client = state.client.clone();
    let target = target.to_owned();
    let started = Instant::now();
    // The push lives as long as the coordinator that asked for it: when its connection closes
    // (Ctrl-C, a killed CLI), the push is cancelled at once, so the target stops writing too.
    let cancel = sync::CancellationToken::new();
    let transfer = {
        let cancel = cancel.clone();
        async move {
            let setup = async {
                let mut tunnel =
                    tunnel::connect(&target, client.clone(), proxy.as_ref()).await.map_err(|e| full_message(&e))?;
                let hello = Hello { migration_id: migration_id.clone(), request: Request::JoinSession { token } };
                FrameWriter::new(&mut tunnel).send_hello(&hello).await.map_err(|e| e.to_string())?;
                let welcome = FrameReader::new(&mut tunnel)
                    .read_welcome()
                    .await
                    .map_err(|e| format!("target agent `{target}` refused the push: {e}"))?;
                if let Some(notice) = &welcome.notice {
                    let _ = events_tx.try_send(Message::Progress(Event::Warning { message: notice.clone() }));
                }
                let lanes = crate::client::join_lanes(
                    (&client, &migration_id),
                    &target,
                    proxy.as_ref(),
                    &welcome.token,
                    options.streams,
                )
                .await
                .map_err(|e| full_message(&e))?;
                Ok::<_, String>((tunnel, lanes))
            };
            let (tunnel, lanes) = tokio::select! {
                ready = setup => ready?,
                () = cancel.cancelled() => return Err(full_message(&sync::SyncError::Cancelled)),
            };
            sync::send_volume(tunnel, lanes, root, options, Arc::new(Forward(events_tx)), &cancel)
                .await
                .map_err(|e| full_message(&e))
        }
    };
    let (mut from_coordinator, to_coordinator) = tokio::io::split(stream);
    let coordinator_gone = async move {
        // The coordinator sends nothing after its hello: any read that returns means it is gone.
        let mut byte = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read(&mut from_coordinator, &mut byte).await;
    };
    let mut writer = FrameWriter::new(to_coordinator);
    tokio::pin!(transfer, coordinator_gone);
    let mut listening = true;
    let outcome = loop {
        tokio::select! {
            outcome = &mut transfer => break outcome,
            // Drained to the end, also once the coordinator is gone: a change waits for room
            // (see `Forward`), and must not wait forever.
            Some(event) = events_rx.recv() => {
                if listening && writer.send(&event).await.is_err() {
                    listening = false;
                    cancel.cancel();
                }
            }
            () = &mut coordinator_gone, if listening => {
                listening = false;
                cancel.cancel();
            }
        }
    };
    if !listening {
        info!(%volume, "push cancelled: the coordinator went away");
        return Ok(());
    }
    while let Ok(event) = events_rx.try_recv() {
        writer.send(&event).await?;
    }
    let last = match outcome {
        Ok(mut summary) => {
            summary.elapsed_s = started.elapsed().as_secs_f64();
            // Counted before the coordinator hears the summary, so a scrape after it sees them.
            observed.stats = SessionStats {
                bytes: summary.bytes_transferred,
                bytes_on_wire: summary.bytes_on_wire,
                files: summary.files_transferred,
                errors: summary.errors.len() as u64,
            };
            drop(observed);
            Message::Summary(summary)
        }
        Err(message) => Message::Error(RemoteError::new(RemoteErrorKind::Other, message)),
    };
    writer.send(&last).await?;
    let _ = writer.shutdown().await;
    Ok(())
}
