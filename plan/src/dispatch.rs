//! The one copy dispatch: which engine function copies between two [`Location`]s.
//!
//! `mover copy`, `mover plan run` and any later front end call [`copy_volume`]; it picks
//! `client::copy_local` (two local directories), `client::copy_to_agent` (a local directory to
//! an agent), `client::push_between_agents` (agent to agent) or `client::pull_from_agent` (an
//! agent to a local directory, which an in-process agent of the migration serves). A copy is cancelled by dropping
//! its future: the connections close, agents end their sessions and keep partial files for the
//! next run.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;

use mover_engine::CopyOptions;
use mover_engine::certs::Identity;
use mover_engine::client::{self, CopyError};
use mover_engine::progress::{SharedReporter, Summary};
use mover_engine::tunnel::Proxy;

use crate::location::Location;

/// How to reach agents: who we are, and the proxy on the way to target agents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peers<'a> {
    /// The coordinator's identity; needed when an agent is involved.
    pub identity: Option<&'a Identity>,
    /// The HTTP CONNECT proxy, if any.
    pub proxy: Option<&'a Proxy>,
    /// How a local target receives from a source agent; needed for agent to local directory.
    pub receiver: Option<&'a LocalReceiver>,
}

/// A local directory's in-process agent, for a copy from an agent.
#[derive(Debug)]
pub struct LocalReceiver {
    /// An agent identity of the migration (the source agent pushes only into agents of its CA).
    pub identity: Identity,
    /// Where it listens (and the source agent dials); `None`: this machine's address on the
    /// route to the source agent, on a free port.
    pub listen: Option<SocketAddr>,
}

/// Why a copy did not run, or failed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Agent to local directory without [`Peers::receiver`].
    #[error("a copy from an agent into a local directory needs an agent identity of the migration")]
    NoReceiver,
    /// No local address on the route to the source agent.
    #[error("cannot find this machine's address on the route to `{addr}`: {source}")]
    NoRoute {
        /// The source agent.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Agent to local directory, where this machine reaches the source agent through a
    /// port-forward and no listening address was given: the agent's way back here is unknown.
    #[error(
        "the source agent `{0}` is reached through a port-forward, which carries only this machine's connections \
         to it; a copy into a local directory needs the agent to connect back here: give the address it can reach"
    )]
    NoWayBack(String),
    /// An agent is involved and [`Peers::identity`] is `None`.
    #[error("a copy that involves an agent needs the coordinator's certificates")]
    NoIdentity,
    /// A dry run into a local directory that does not exist.
    #[error(
        "the target `{}` does not exist, and a dry run creates nothing: a copy would create it and everything \
         in it. Create it (empty) to preview the copy",
        .0.display()
    )]
    MissingTargetInDryRun(PathBuf),
    /// A claim (`k8s://…`) reached the dispatch unresolved: its front end's
    /// [`crate::VolumeResolver`] turns claims into agents first.
    #[error("`{0}` is a claim in a cluster: it must be resolved to its transfer agent before a copy")]
    Unresolved(String),
    /// The engine's copy failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
}

/// Copies `source` to `target` with the engine function for their forms.
pub async fn copy_volume(
    source: &Location,
    target: &Location,
    options: CopyOptions,
    peers: Peers<'_>,
    reporter: SharedReporter,
) -> Result<Summary, DispatchError> {
    let identity = || peers.identity.ok_or(DispatchError::NoIdentity);
    let summary = match (source, target) {
        (Location::Kube(claim), _) | (_, Location::Kube(claim)) => {
            return Err(DispatchError::Unresolved(claim.to_string()));
        }
        (Location::Local(from), Location::Local(to)) => {
            if options.dry_run && !to.is_dir() {
                return Err(DispatchError::MissingTargetInDryRun(to.clone()));
            }
            client::copy_local(from, to, options, reporter).await?
        }
        (Location::Local(from), Location::Agent { addr, volume, via }) => {
            // A port-forward reaches the agent without the proxy.
            let (dial, proxy) = match via {
                Some(via) => (via, None),
                None => (addr, peers.proxy),
            };
            client::copy_to_agent(identity()?, from, (dial, volume), proxy, options, reporter).await?
        }
        (
            Location::Agent { addr: from, volume: from_volume, via: from_via },
            Location::Agent { addr: to, volume: to_volume, via: to_via },
        ) => {
            client::push_between_agents(
                identity()?,
                (from_via.as_deref().unwrap_or(from), from_volume),
                (to_via.as_deref().unwrap_or(to), to, to_volume),
                peers.proxy,
                options,
                reporter,
            )
            .await?
        }
        (Location::Agent { addr, volume, via }, Location::Local(to)) => {
            let receiver = peers.receiver.ok_or(DispatchError::NoReceiver)?;
            if via.is_some() && receiver.listen.is_none() {
                return Err(DispatchError::NoWayBack(addr.clone()));
            }
            if options.dry_run && !to.is_dir() {
                return Err(DispatchError::MissingTargetInDryRun(to.clone()));
            }
            let listen = match receiver.listen {
                Some(listen) => listen,
                None => route_to(addr).map_err(|source| DispatchError::NoRoute { addr: addr.clone(), source })?,
            };
            let target = client::PullTarget { dir: to.clone(), listen: listen.to_string(), advertise: None };
            let agents = (identity()?, receiver.identity.clone());
            let source = (via.as_deref().unwrap_or(addr), volume.as_str());
            client::pull_from_agent(agents, source, &target, peers.proxy, options, reporter).await?
        }
    };
    Ok(summary)
}

/// This machine's address on the route to `addr`, port 0 (a free one). Connecting a UDP
/// socket sends nothing; it only asks the kernel which source address it would use.
fn route_to(addr: &str) -> std::io::Result<SocketAddr> {
    let peer = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address"))?;
    let socket = UdpSocket::bind(if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    socket.connect(peer)?;
    Ok(SocketAddr::new(socket.local_addr()?.ip(), 0))
}
