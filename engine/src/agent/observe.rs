//! What the agent tells its observer (the agent binary's `/metrics`) about each session.

use std::sync::Arc;

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

/// Reports a session's start on creation and its end (with what it moved) when dropped; a
/// session that ends before setting [`Observed::stats`] counts as one error.
pub(super) struct Observed {
    observer: Option<Arc<dyn SessionObserver>>,
    volume: String,
    direction: Direction,
    pub(super) stats: SessionStats,
}

impl Observed {
    pub(super) fn start(observer: Option<&Arc<dyn SessionObserver>>, volume: &str, direction: Direction) -> Observed {
        if let Some(observer) = observer {
            observer.session_started(volume, direction);
        }
        Observed {
            observer: observer.cloned(),
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
