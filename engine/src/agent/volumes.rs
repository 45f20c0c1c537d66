//! The volumes an agent serves: grants, given at start or while it runs, each resolved afresh
//! by every session that uses it.
//!
//! A session holds its volume ([`InUse`]) from the moment it resolves it until it ends, so a
//! revoke can tell that a volume is in use and refuse.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::AgentError;
use crate::sync::full_message;
use crate::volume::{CheckedGrant, VolumeError, VolumeGrant, VolumeRoot};
use crate::wire::{RemoteError, RemoteErrorKind, VolumeStatus};

struct Volume {
    grant: Arc<CheckedGrant>,
    /// How many sessions hold it.
    users: Arc<AtomicUsize>,
}

/// The grants, by volume name.
#[derive(Default)]
pub(super) struct Volumes {
    by_name: RwLock<HashMap<String, Volume>>,
}

/// A session's hold on its volume; released when dropped.
pub(super) struct InUse(Arc<AtomicUsize>);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Volumes {
    /// Adds a grant: its path opens as a directory, its name is new, and it overlaps no other
    /// grant. Opens directories (blocking).
    pub(super) fn grant(&self, grant: VolumeGrant) -> Result<(), AgentError> {
        let (checked, root) = CheckedGrant::new(grant.clone()).map_err(|source| AgentError::Volume {
            name: grant.name.clone(),
            path: grant.path.clone(),
            source,
        })?;
        let mut by_name = self.by_name.write().expect("volumes lock");
        if by_name.contains_key(&grant.name) {
            return Err(AgentError::Duplicate(grant.name));
        }
        for other in by_name.values() {
            let other = other.grant.grant();
            let other_root = crate::confine::open_root(&other.path).map_err(|source| AgentError::Volume {
                name: other.name.clone(),
                path: other.path.clone(),
                source,
            })?;
            refuse_overlap((other, other_root.as_fd()), (&grant, root.as_fd()))?;
        }
        by_name.insert(grant.name, Volume { grant: Arc::new(checked), users: Arc::default() });
        Ok(())
    }

    /// Withdraws grant `name`; refused while a session uses it. Sessions opened for it but not
    /// yet joined are refused when they join, as unknown.
    pub(super) fn revoke(&self, name: &str) -> Result<VolumeGrant, AgentError> {
        let mut by_name = self.by_name.write().expect("volumes lock");
        let Some(volume) = by_name.get(name) else {
            return Err(AgentError::NotGranted(name.to_owned()));
        };
        let sessions = volume.users.load(Ordering::SeqCst);
        if sessions > 0 {
            return Err(AgentError::InUse { name: name.to_owned(), sessions });
        }
        let volume = by_name.remove(name).expect("looked up above");
        Ok(volume.grant.grant().clone())
    }

    /// Withdraws grant `name` whether or not sessions use it (they are being ended).
    pub(super) fn withdraw(&self, name: &str) {
        self.by_name.write().expect("volumes lock").remove(name);
    }

    /// The names of the volumes, sorted.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.read().expect("volumes lock").keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Whether volume `name` is granted read-only; `None` when there is no such volume.
    pub(super) fn read_only(&self, name: &str) -> Option<bool> {
        self.by_name.read().expect("volumes lock").get(name).map(|volume| volume.grant.grant().read_only)
    }

    /// Checks that volume `name` exists.
    pub(super) fn known(&self, name: &str) -> Result<(), RemoteError> {
        self.hold(name).map(drop)
    }

    /// The grant of volume `name`, held for a session.
    fn hold(&self, name: &str) -> Result<(Arc<CheckedGrant>, InUse), RemoteError> {
        let by_name = self.by_name.read().expect("volumes lock");
        let Some(volume) = by_name.get(name) else {
            let mut known: Vec<_> = by_name.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(RemoteError::new(
                RemoteErrorKind::UnknownVolume,
                format!("this agent serves no volume `{name}` (it serves: {})", known.join(", ")),
            ));
        };
        // Counted under the read lock: a revoke (write lock) sees every session that got here.
        volume.users.fetch_add(1, Ordering::SeqCst);
        Ok((volume.grant.clone(), InUse(volume.users.clone())))
    }

    /// Resolves volume `name`'s root afresh for a session, off the runtime threads (the path
    /// may be on a file system that is slow to answer); the session holds the volume until it
    /// drops the [`InUse`].
    pub(super) async fn resolve(&self, name: &str) -> Result<(VolumeRoot, InUse), RemoteError> {
        let (checked, in_use) = self.hold(name)?;
        let resolved = tokio::task::spawn_blocking(move || checked.resolve()).await;
        let resolved = resolved
            .map_err(|_| RemoteError::new(RemoteErrorKind::Other, "resolving the volume root panicked"))?
            .map_err(|error| RemoteError::new(RemoteErrorKind::Other, full_message(&error)))?;
        Ok((resolved, in_use))
    }

    /// The state of every volume, each resolved afresh as a session would, measured off the
    /// runtime threads.
    pub(super) async fn status(&self) -> Vec<VolumeStatus> {
        let grants: Vec<Arc<CheckedGrant>> =
            self.by_name.read().expect("volumes lock").values().map(|v| v.grant.clone()).collect();
        let measured = tokio::task::spawn_blocking(move || {
            let mut status: Vec<VolumeStatus> = grants.iter().map(|checked| status_of(checked)).collect();
            status.sort_by(|a, b| a.name.cmp(&b.name));
            status
        });
        measured.await.unwrap_or_default()
    }
}

fn status_of(checked: &CheckedGrant) -> VolumeStatus {
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
