//! One writer per volume. A receive claims its volume for as long as it runs:
//!
//! - within this process, in a map of the volumes being received into;
//! - across processes, with an exclusive `flock` on the volume root, so that an agent still
//!   draining after SIGTERM and the agent started in its place never write into one volume
//!   at once (nor two agents given the same directory).
//!
//! A new session for a volume that is being received into waits a little for the old one to
//! end: a cancelled copy's session ends within a second or two. An old session whose peer has
//! sent nothing for [`STALE_AFTER`] (it vanished without closing its connection: a node that
//! died, a cut link) is ended, and the new session is told so.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::sync::CancellationToken;
use crate::tunnel::ReadCount;
use crate::wire::{RemoteError, RemoteErrorKind};

/// How long a new session waits for the volume before it is refused as busy.
pub(super) const CLAIM_WAIT: Duration = Duration::from_secs(5);
/// A session whose peer sent nothing for this long, while another waits for its volume, is
/// taken to be stale and ended.
pub(super) const STALE_AFTER: Duration = Duration::from_secs(3);
/// How often a waiting session looks again.
const POLL: Duration = Duration::from_millis(50);

/// The volumes being received into, in this process.
#[derive(Default)]
pub(super) struct Claims {
    held: Mutex<HashMap<String, Holder>>,
}

struct Holder {
    id: u64,
    peer: String,
    since: Instant,
    cancel: CancellationToken,
    heard: ReadCount,
}

/// A volume claimed by one receive; released when dropped.
pub(super) struct Claim {
    claims: Arc<Claims>,
    volume: String,
    id: u64,
    /// Cancelled when a newer session takes the volume over.
    pub(super) cancel: CancellationToken,
    /// Counts what the session's peer sends (the receive reads its connections through it).
    pub(super) heard: ReadCount,
    /// Holds the `flock` on the volume root.
    _lock: OwnedFd,
    /// What the new session should tell its user: an old session it ended.
    pub(super) notice: Option<String>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims.release(&self.volume, self.id);
    }
}

impl Claims {
    /// Claims `volume`, whose root is `root`, for a receive from `peer`: waits up to
    /// [`CLAIM_WAIT`] for a session already receiving into it to end, ending it once its peer
    /// has been silent for [`STALE_AFTER`].
    pub(super) async fn claim(
        self: &Arc<Self>,
        volume: &str,
        root: BorrowedFd<'_>,
        peer: &str,
    ) -> Result<Claim, RemoteError> {
        let started = Instant::now();
        let mut notice = None;
        // The old session's byte count, and since when it has not moved.
        let mut silence: Option<(u64, Instant)> = None;
        let (id, cancel, heard) = loop {
            if let Some(taken) = self.try_take(volume, peer) {
                break taken;
            }
            let now = Instant::now();
            if now - started >= CLAIM_WAIT {
                let held = self.held.lock().expect("claims lock");
                let (from, running) =
                    held.get(volume).map(|h| (h.peer.clone(), h.since.elapsed().as_secs())).unwrap_or_default();
                return Err(RemoteError::new(
                    RemoteErrorKind::Busy,
                    format!(
                        "target busy: another session is receiving into volume `{volume}` (from {from}, for {running} s) \
                         and is still active; a cancelled copy's session ends within seconds, so this is another copy"
                    ),
                ));
            }
            if notice.is_none() {
                let held = self.held.lock().expect("claims lock");
                if let Some(holder) = held.get(volume) {
                    let count = holder.heard.read();
                    let quiet_since = match silence {
                        Some((seen, since)) if seen == count => since,
                        _ => now,
                    };
                    silence = Some((count, quiet_since));
                    if now - quiet_since >= STALE_AFTER {
                        holder.cancel.cancel();
                        notice = Some(format!(
                            "ended a stale session into volume `{volume}` (from {}, running for {} s, nothing heard \
                             from its source for {} s); its partial files are resumed by this one",
                            holder.peer,
                            holder.since.elapsed().as_secs(),
                            STALE_AFTER.as_secs()
                        ));
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        };
        match lock_root(root, volume) {
            Ok(lock) => {
                Ok(Claim { claims: self.clone(), volume: volume.to_owned(), id, cancel, heard, _lock: lock, notice })
            }
            Err(refused) => {
                self.release(volume, id);
                Err(refused)
            }
        }
    }

    /// Forgets claim `id` on `volume` (a newer claim may have replaced it already).
    fn release(&self, volume: &str, id: u64) {
        let mut held = self.held.lock().expect("claims lock");
        if held.get(volume).is_some_and(|holder| holder.id == id) {
            held.remove(volume);
        }
    }

    /// Takes `volume` when nobody in this process holds it.
    fn try_take(&self, volume: &str, peer: &str) -> Option<(u64, CancellationToken, ReadCount)> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut held = self.held.lock().expect("claims lock");
        if held.contains_key(volume) {
            return None;
        }
        let holder = Holder {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            peer: peer.to_owned(),
            since: Instant::now(),
            cancel: CancellationToken::new(),
            heard: ReadCount::default(),
        };
        let taken = (holder.id, holder.cancel.clone(), holder.heard.clone());
        held.insert(volume.to_owned(), holder);
        Some(taken)
    }
}

/// Locks the volume root against writers in other processes, through a handle of its own (a
/// lock belongs to an open file description: the agent's long-lived root handle would hold it
/// past the session).
fn lock_root(root: BorrowedFd<'_>, volume: &str) -> Result<OwnedFd, RemoteError> {
    let io = |what: &str, error: rustix::io::Errno| {
        RemoteError::new(RemoteErrorKind::Io, format!("cannot {what} the root of volume `{volume}`: {error}"))
    };
    let handle = rustix::fs::openat(root, c".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io("open", e))?;
    match rustix::fs::flock(&handle, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(handle),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(RemoteError::new(
            RemoteErrorKind::Busy,
            format!(
                "target busy: volume `{volume}` is being written by another process on this node (an agent still \
                 finishing its session after SIGTERM, or a second agent given the same directory); wait for it to \
                 finish or stop it, then run again"
            ),
        )),
        Err(error) => Err(io("lock", error)),
    }
}
