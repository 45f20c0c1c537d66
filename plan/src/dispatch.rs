//! The one copy dispatch: which engine function copies between two [`Location`]s.
//!
//! `mover copy`, `mover plan run` and any later front end call [`copy_volume`]; it picks
//! `client::copy_local` (two local directories), `client::copy_to_agent` (a local directory to
//! an agent) or `client::push_between_agents` (agent to agent). A copy is cancelled by dropping
//! its future: the connections close, agents end their sessions and keep partial files for the
//! next run.

use std::path::PathBuf;

use mover_engine::certs::Identity;
use mover_engine::client::{self, CopyError};
use mover_engine::progress::{SharedReporter, Summary};
use mover_engine::tunnel::Proxy;
use mover_engine::wire::SyncOptions;

use crate::location::Location;

/// How to reach agents: who we are, and the proxy on the way to target agents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peers<'a> {
    /// The coordinator's identity; needed when an agent is involved.
    pub identity: Option<&'a Identity>,
    /// The HTTP CONNECT proxy, if any.
    pub proxy: Option<&'a Proxy>,
}

/// Why a copy did not run, or failed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Agent to local directory: not built yet.
    #[error("copying from an agent into a local directory is not supported")]
    AgentToLocal,
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
    /// The engine's copy failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
}

/// Copies `source` to `target` with the engine function for their forms.
pub async fn copy_volume(
    source: &Location,
    target: &Location,
    options: SyncOptions,
    peers: Peers<'_>,
    reporter: SharedReporter,
) -> Result<Summary, DispatchError> {
    let identity = || peers.identity.ok_or(DispatchError::NoIdentity);
    let summary = match (source, target) {
        (Location::Local(from), Location::Local(to)) => {
            if options.dry_run && !to.is_dir() {
                return Err(DispatchError::MissingTargetInDryRun(to.clone()));
            }
            client::copy_local(from, to, options, reporter).await?
        }
        (Location::Local(from), Location::Agent { addr, volume }) => {
            client::copy_to_agent(identity()?, from, (addr, volume), peers.proxy, options, reporter).await?
        }
        (Location::Agent { addr: from, volume: from_volume }, Location::Agent { addr: to, volume: to_volume }) => {
            client::push_between_agents(
                identity()?,
                (from, from_volume),
                (to, to_volume),
                peers.proxy,
                options,
                reporter,
            )
            .await?
        }
        (Location::Agent { .. }, Location::Local(_)) => return Err(DispatchError::AgentToLocal),
    };
    Ok(summary)
}
