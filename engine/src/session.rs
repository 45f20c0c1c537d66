//! The session handshake, used by both ends that dial an agent: the coordinator ([`crate::client`])
//! and a source agent pushing into a target ([`crate::agent`]). It sits below both, so neither
//! imports the other for it.

use std::sync::Arc;

use crate::certs::Identity;
use crate::sync::SyncError;
use crate::tunnel::{self, Proxy, TunnelError};
use crate::wire::{FrameReader, FrameWriter, Hello, RemoteError, Request, Welcome, WireError};

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The agent could not be reached or authenticated.
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
}

impl SessionError {
    /// True when trying again may get further: connection trouble, a busy or shutting down
    /// agent. Not a refusal for cause, nor a peer that does not speak our protocol.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            SessionError::Tunnel(error) => error.is_retryable(),
            SessionError::Refused { error, .. } => error.kind.is_retryable(),
            SessionError::Handshake { source, .. } => source.is_retryable(),
        }
    }

    /// What the agent at `addr` answered a hello with, when it was no welcome: a refusal, or
    /// a failed handshake.
    fn greeting(addr: &str, error: WireError) -> SessionError {
        match error {
            WireError::Remote(error) => SessionError::Refused { addr: addr.to_owned(), error },
            error => SessionError::Handshake { addr: addr.to_owned(), source: error },
        }
    }

    /// A sending session's error ([`open_sending`]) as the handshake would have told it, when
    /// it is the agent's answer to the hello ([`SyncError::Greeting`]); any other as it is.
    pub(crate) fn of_greeting(addr: &str, error: SyncError) -> Result<SessionError, SyncError> {
        match error {
            SyncError::Greeting(error) => Ok(SessionError::greeting(addr, error)),
            error => Err(error),
        }
    }
}

/// A fresh random token (256 bits): a session's, a lane group's.
pub(crate) fn random_token() -> Vec<u8> {
    let mut token = vec![0u8; crate::wire::LANE_TOKEN_LEN];
    getrandom::fill(&mut token).expect("the OS random source works");
    token
}

/// The TLS configuration and migration id a dialler says hello with.
pub(crate) type Dialler<'a> = (&'a Arc<rustls::ClientConfig>, &'a str);

/// Connects to an agent, says hello and returns the tunnel and the agent's welcome.
pub async fn open(
    identity: &Identity,
    addr: &str,
    request: Request,
    proxy: Option<&Proxy>,
) -> Result<(tunnel::ClientStream, Welcome), SessionError> {
    let config = tunnel::client_config(identity)?;
    open_with((&config, &identity.migration_id()), addr, request, proxy).await
}

/// Says the hello of `request` on `stream`, a connection to the agent at `addr`.
async fn say_hello(
    stream: &mut tunnel::ClientStream,
    (migration_id, request): (&str, Request),
    addr: &str,
) -> Result<(), SessionError> {
    let hello = Hello { migration_id: migration_id.to_owned(), request };
    let handshake = |source| SessionError::Handshake { addr: addr.to_owned(), source };
    FrameWriter::new(stream).send_hello(&hello).await.map_err(handshake)
}

/// [`open`] with a TLS configuration and migration id at hand.
pub(crate) async fn open_with(
    (config, migration_id): Dialler<'_>,
    addr: &str,
    request: Request,
    proxy: Option<&Proxy>,
) -> Result<(tunnel::ClientStream, Welcome), SessionError> {
    let mut stream = tunnel::connect(addr, config.clone(), proxy).await?;
    say_hello(&mut stream, (migration_id, request), addr).await?;
    match FrameReader::new(&mut stream).read_welcome().await {
        Ok(welcome) => Ok((stream, welcome)),
        Err(error) => Err(SessionError::greeting(addr, error)),
    }
}

/// A further lane of a session, on its way to being joined: ready once the agent welcomed it.
pub(crate) type JoiningLane = crate::sync::Joining<tunnel::ClientStream>;

/// A lane token for a session over `streams` connections ([`crate::wire::Request::Receive`]'s
/// `lanes`): fresh random bytes, none for one stream.
pub(crate) fn lane_token(streams: u32) -> Vec<u8> {
    if streams > 1 { random_token() } else { Vec::new() }
}

/// Opens a sending session of `streams` connections to the agent at `addr`, all at once. The
/// first says hello with `request` and is returned without waiting for the welcome: the
/// sender's first entries follow the hello, and [`crate::sync::send_volume`] reads the welcome
/// as the first frame ([`crate::sync::First::Greeted`]). The further lanes say their
/// [`Request::JoinLane`] hello with the lane token `request` carries, and are ready once
/// welcomed (the agent welcomes them once it has admitted the first).
pub(crate) async fn open_sending(
    (config, migration_id): Dialler<'_>,
    addr: &str,
    request: Request,
    proxy: Option<&Proxy>,
    streams: u32,
) -> Result<(tunnel::ClientStream, Vec<JoiningLane>), SessionError> {
    let token = match &request {
        Request::Receive { lanes, .. } | Request::JoinSession { lanes, .. } => lanes.clone(),
        _ => Vec::new(),
    };
    let tunnels = (0..streams).map(|_| tunnel::connect(addr, config.clone(), proxy));
    let mut tunnels = futures_util::future::try_join_all(tunnels).await?.into_iter();
    let mut first = tunnels.next().expect("a session has at least one stream");
    say_hello(&mut first, (migration_id, request), addr).await?;
    let lanes = (1..)
        .zip(tunnels)
        .map(|(lane, tunnel)| {
            let hello = Hello {
                migration_id: migration_id.to_owned(),
                request: Request::JoinLane { token: token.clone(), lane },
            };
            Box::pin(join_lane(tunnel, hello)) as JoiningLane
        })
        .collect();
    Ok((first, lanes))
}

/// Says a lane's `hello` on its established tunnel and waits for the welcome.
async fn join_lane(mut tunnel: tunnel::ClientStream, hello: Hello) -> Result<tunnel::ClientStream, SyncError> {
    FrameWriter::new(&mut tunnel).send_hello(&hello).await?;
    match FrameReader::new(&mut tunnel).read_welcome().await {
        Ok(_) => Ok(tunnel),
        Err(WireError::Remote(error)) => Err(SyncError::Remote(RemoteError::new(
            error.kind,
            format!("the agent refused a further stream of the session: {}", error.message),
        ))),
        Err(error) => Err(SyncError::Wire(error)),
    }
}
