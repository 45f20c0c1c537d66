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
    /// The agent welcomed a session over several streams without a lane token (a protocol
    /// violation).
    #[error("agent `{addr}` offered no lanes for a {streams}-stream session")]
    NoLanes {
        /// The agent.
        addr: String,
        /// The streams asked for.
        streams: u32,
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
            SessionError::NoLanes { .. } => false,
        }
    }
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

/// [`open`] with a TLS configuration and migration id at hand.
pub(crate) async fn open_with(
    (config, migration_id): Dialler<'_>,
    addr: &str,
    request: Request,
    proxy: Option<&Proxy>,
) -> Result<(tunnel::ClientStream, Welcome), SessionError> {
    let mut stream = tunnel::connect(addr, config.clone(), proxy).await?;
    let hello = Hello { migration_id: migration_id.to_owned(), request };
    let handshake = |source| SessionError::Handshake { addr: addr.to_owned(), source };
    FrameWriter::new(&mut stream).send_hello(&hello).await.map_err(handshake)?;
    match FrameReader::new(&mut stream).read_welcome().await {
        Ok(welcome) => Ok((stream, welcome)),
        Err(WireError::Remote(error)) => Err(SessionError::Refused { addr: addr.to_owned(), error }),
        Err(error) => Err(handshake(error)),
    }
}

/// A further lane of a session, on its way to being joined: ready once the agent welcomed it.
pub(crate) type JoiningLane = crate::sync::Joining<tunnel::ClientStream>;

/// Opens a session of `streams` connections to the agent at `addr`: the first says hello with
/// `request`, and the further lanes' TLS handshakes run beside it, so they cost no round trip
/// of their own. Returns the first connection, its welcome, and the further lanes, joining:
/// each says its [`Request::JoinLane`] hello (with the welcome's lane token) at once and is
/// ready once welcomed, which [`crate::sync::send_volume`] waits for beside the tree's first
/// entries.
pub(crate) async fn open_with_lanes(
    (config, migration_id): Dialler<'_>,
    addr: &str,
    request: Request,
    proxy: Option<&Proxy>,
    streams: u32,
) -> Result<(tunnel::ClientStream, Welcome, Vec<JoiningLane>), SessionError> {
    let tunnels = (1..streams).map(|_| tunnel::connect(addr, config.clone(), proxy));
    let tunnels = async { futures_util::future::try_join_all(tunnels).await.map_err(SessionError::from) };
    let first = open_with((config, migration_id), addr, request, proxy);
    let ((stream, welcome), tunnels) = futures_util::future::try_join(first, tunnels).await?;
    if streams > 1 && welcome.token.is_empty() {
        return Err(SessionError::NoLanes { addr: addr.to_owned(), streams });
    }
    let lanes = (1..)
        .zip(tunnels)
        .map(|(lane, tunnel)| {
            let hello = Hello {
                migration_id: migration_id.to_owned(),
                request: Request::JoinLane { token: welcome.token.clone(), lane },
            };
            Box::pin(join_lane(tunnel, hello)) as JoiningLane
        })
        .collect();
    Ok((stream, welcome, lanes))
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
