//! Sessions a coordinator opened for a source agent to join ([`Request::JoinSession`]), and the
//! further lanes of a receive over several streams ([`Request::JoinLane`]).
//!
//! [`Request::JoinSession`]: crate::wire::Request::JoinSession
//! [`Request::JoinLane`]: crate::wire::Request::JoinLane

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use tokio::sync::{Notify, mpsc};

use super::{LANE_JOIN_TIMEOUT, SESSION_TTL};
use crate::certs::Role;
use crate::tunnel;
use crate::wire::{LANE_TOKEN_LEN, RemoteError, RemoteErrorKind, SyncOptions};

/// A session a coordinator opened, waiting for its source agent.
pub(super) struct OpenedSession {
    pub(super) volume: String,
    /// The migration whose coordinator opened it: only that migration's agents join it.
    migration: String,
    pub(super) options: SyncOptions,
    expires: Instant,
}

/// The opened sessions, by one-time token.
#[derive(Default)]
pub(super) struct OpenedSessions(Mutex<HashMap<Vec<u8>, OpenedSession>>);

impl OpenedSessions {
    /// Opens a session into `volume` for [`SESSION_TTL`], for migration `migration`; returns
    /// its token.
    pub(super) fn open(&self, volume: &str, options: &SyncOptions, migration: &str) -> Vec<u8> {
        let token = crate::session::random_token();
        let mut sessions = self.0.lock().expect("sessions lock");
        sessions.retain(|_, session| session.expires > Instant::now());
        let session = OpenedSession {
            volume: volume.to_owned(),
            migration: migration.to_owned(),
            options: options.clone(),
            expires: Instant::now() + SESSION_TTL,
        };
        sessions.insert(token.clone(), session);
        token
    }

    /// The volume of the live session `token` names, if any (the token stays).
    pub(super) fn volume(&self, token: &[u8]) -> Option<String> {
        let sessions = self.0.lock().expect("sessions lock");
        sessions.get(token).filter(|session| session.expires > Instant::now()).map(|session| session.volume.clone())
    }

    /// Takes the session `token` names, for an agent of migration `migration`: a token is used
    /// once.
    pub(super) fn join(&self, token: &[u8], migration: &str) -> Result<OpenedSession, RemoteError> {
        match self.0.lock().expect("sessions lock").remove(token) {
            Some(session) if session.expires > Instant::now() && session.migration == migration => Ok(session),
            _ => Err(RemoteError::new(RemoteErrorKind::BadToken, "unknown or expired session token")),
        }
    }

    /// Drops every session migration `migration` opened and no agent has joined yet.
    pub(super) fn drop_migration(&self, migration: &str) {
        self.0.lock().expect("sessions lock").retain(|_, session| session.migration != migration);
    }
}

/// A receive waiting for its other lanes.
struct LaneGroup {
    /// Lanes must come with the role the first connection had.
    role: Role,
    streams: u32,
    joined: HashSet<u32>,
    to_receiver: mpsc::UnboundedSender<(u32, tunnel::ServerStream)>,
}

/// The receives waiting for lanes, by the lane token their client picked. A lane may say its
/// hello before its receive is admitted (the client opens them all at once): it waits for the
/// token to be registered.
#[derive(Default)]
pub(super) struct LaneGroups {
    groups: Mutex<HashMap<Vec<u8>, LaneGroup>>,
    /// Told when a receive registers its token.
    opened: Notify,
}

impl LaneGroups {
    /// Registers a receive over `streams` connections whose lanes join with `token`: refused
    /// when the token is not [`LANE_TOKEN_LEN`] bytes or another receive holds it.
    pub(super) fn open(self: &Arc<Self>, role: Role, streams: u32, token: &[u8]) -> Result<Lanes, RemoteError> {
        if token.len() != LANE_TOKEN_LEN {
            return Err(RemoteError::new(
                RemoteErrorKind::Protocol,
                format!("a {streams}-stream receive needs a lane token of {LANE_TOKEN_LEN} bytes, not {}", token.len()),
            ));
        }
        let (to_receiver, arrivals) = mpsc::unbounded_channel();
        let group = LaneGroup { role, streams, joined: HashSet::new(), to_receiver };
        {
            let mut groups = self.groups.lock().expect("lanes lock");
            if groups.contains_key(token) {
                return Err(RemoteError::new(RemoteErrorKind::Protocol, "this lane token is already in use"));
            }
            groups.insert(token.to_vec(), group);
        }
        self.opened.notify_waiters();
        Ok(Lanes { groups: self.clone(), token: token.to_vec(), arrivals })
    }

    /// Admits lane `lane` of the receive whose lane token is `token`: each lane once, with
    /// the role of the first connection. Waits for that receive to be admitted, up to
    /// [`LANE_JOIN_TIMEOUT`].
    pub(super) async fn admit(&self, token: &[u8], lane: u32, role: Role) -> Result<(), RemoteError> {
        let deadline = tokio::time::Instant::now() + LANE_JOIN_TIMEOUT;
        loop {
            // Listening before looking: a receive registered in between still wakes us.
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if let Some(admitted) = self.try_admit(token, lane, role) {
                return admitted;
            }
            if tokio::time::timeout_at(deadline, opened).await.is_err() {
                return Err(RemoteError::new(
                    RemoteErrorKind::BadToken,
                    format!(
                        "no receive with this lane token was admitted within {} s (or it has ended)",
                        LANE_JOIN_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
    }

    /// [`LaneGroups::admit`] now: `None` while no receive holds `token`.
    fn try_admit(&self, token: &[u8], lane: u32, role: Role) -> Option<Result<(), RemoteError>> {
        let mut groups = self.groups.lock().expect("lanes lock");
        let group = groups.get_mut(token)?;
        if group.role != role {
            return Some(Err(RemoteError::new(
                RemoteErrorKind::BadToken,
                "this lane token belongs to a receive another role opened",
            )));
        }
        if lane == 0 || lane >= group.streams || !group.joined.insert(lane) {
            return Some(Err(RemoteError::new(
                RemoteErrorKind::Protocol,
                format!("lane {lane} is not a free lane of this {}-stream receive", group.streams),
            )));
        }
        Some(Ok(()))
    }

    /// Hands an admitted lane to the receive that waits for it (or has given up: dropped).
    pub(super) fn deliver(&self, token: &[u8], lane: u32, stream: tunnel::ServerStream) {
        let to_receiver = self.groups.lock().expect("lanes lock").get(token).map(|group| group.to_receiver.clone());
        if let Some(to_receiver) = to_receiver {
            let _ = to_receiver.send((lane, stream));
        }
    }
}

/// The further lanes of one receive: they join with `token`, and arrive on `arrivals`. The
/// token is withdrawn when this is dropped: a lane that comes later is refused.
pub(super) struct Lanes {
    groups: Arc<LaneGroups>,
    pub(super) token: Vec<u8>,
    arrivals: mpsc::UnboundedReceiver<(u32, tunnel::ServerStream)>,
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.groups.groups.lock().expect("lanes lock").remove(&self.token);
    }
}

impl Lanes {
    /// Waits for the `count` other lanes and returns them in lane order; fails, naming how many
    /// came, after [`LANE_JOIN_TIMEOUT`], or at once when the source closes `first` (it died).
    pub(super) async fn gather(
        mut self,
        first: &tunnel::ServerStream,
        count: usize,
    ) -> Result<Vec<tunnel::ServerStream>, String> {
        let mut lanes = Vec::with_capacity(count);
        let deadline = tokio::time::Instant::now() + LANE_JOIN_TIMEOUT;
        // The source starts its tree while its lanes are still joining: its first entries may
        // wait unread there.
        let closed = closed_by_peer(first);
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

/// Returns when the client has closed or reset `stream`, also when what it sent before is
/// still unread (a peek would see that data and never the close behind it: a source that sent
/// its first entries and died would hold its receive until the lanes' timeout). Looked at
/// every [`CLOSE_POLL`] with `poll(POLLRDHUP)`; nothing is read.
pub(super) async fn closed_by_peer(stream: &tunnel::ServerStream) {
    let tcp = stream.get_ref().0;
    let gone = PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
    loop {
        let mut fds = [PollFd::new(tcp, PollFlags::RDHUP)];
        let now = Timespec { tv_sec: 0, tv_nsec: 0 };
        if matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(1..)) && fds[0].revents().intersects(gone) {
            return;
        }
        tokio::time::sleep(CLOSE_POLL).await;
    }
}

/// How often [`closed_by_peer`] looks.
const CLOSE_POLL: std::time::Duration = std::time::Duration::from_millis(100);
