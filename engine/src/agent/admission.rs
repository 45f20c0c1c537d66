//! Who may ask what: a certificate's role and a request's kind decide, and a volume granted
//! read-only refuses whatever would write to it. One table ([`rule`]); [`super::dispatch`] asks
//! it before anything else about a request.

use crate::certs::Role;
use crate::wire::{RemoteError, RemoteErrorKind, Request};

/// A request's kind, without its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestKind {
    Ping,
    Receive,
    OpenSession,
    JoinSession,
    Push,
    JoinLane,
    GrantPodVolume,
    RevokeVolume,
}

impl RequestKind {
    pub(super) fn of(request: &Request) -> RequestKind {
        match request {
            Request::Ping => RequestKind::Ping,
            Request::Receive { .. } => RequestKind::Receive,
            Request::OpenSession { .. } => RequestKind::OpenSession,
            Request::JoinSession { .. } => RequestKind::JoinSession,
            Request::Push { .. } => RequestKind::Push,
            Request::JoinLane { .. } => RequestKind::JoinLane,
            Request::GrantPodVolume { .. } => RequestKind::GrantPodVolume,
            Request::RevokeVolume { .. } => RequestKind::RevokeVolume,
        }
    }

    /// The name the agent logs.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RequestKind::Ping => "ping",
            RequestKind::Receive => "receive",
            RequestKind::OpenSession => "open-session",
            RequestKind::JoinSession => "join-session",
            RequestKind::Push => "push",
            RequestKind::JoinLane => "join-lane",
            RequestKind::GrantPodVolume => "grant-pod-volume",
            RequestKind::RevokeVolume => "revoke-volume",
        }
    }
}

/// What the table says about one role making one kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Allowed.
    Allow,
    /// Allowed unless its volume is read-only: the request writes to it.
    Writes,
    /// Refused: this role may not do what the text says.
    Forbid(&'static str),
}

/// The table. A lane joins with the role of its session's first connection, which
/// [`super::sessions`] checks against the lane token.
#[allow(clippy::match_same_arms, reason = "a table: one row per role and request")]
fn rule(kind: RequestKind, role: Role) -> Rule {
    use RequestKind as K;
    use Role::{Agent, Coordinator};
    use Rule::{Allow, Forbid, Writes};
    match (kind, role) {
        (K::Ping, Coordinator | Agent) => Allow,
        (K::Receive, Coordinator) => Writes,
        (K::Receive, Agent) => Forbid("push a volume without a session"),
        (K::OpenSession, Coordinator) => Writes,
        (K::OpenSession, Agent) => Forbid("open sessions"),
        (K::JoinSession, Coordinator) => Forbid("join a session"),
        (K::JoinSession, Agent) => Writes,
        (K::Push, Coordinator) => Allow,
        (K::Push, Agent) => Forbid("ask an agent to push"),
        (K::JoinLane, Coordinator | Agent) => Allow,
        (K::GrantPodVolume, Coordinator) => Allow,
        (K::GrantPodVolume, Agent) => Forbid("grant volumes (only the migration's coordinator may)"),
        (K::RevokeVolume, Coordinator) => Allow,
        (K::RevokeVolume, Agent) => Forbid("revoke volumes (only the migration's coordinator may)"),
    }
}

/// The table's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    Allow,
    Forbid(Reason),
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// The role may not make the request: it may not do what the text says.
    Role(&'static str),
    /// The request would write to a volume granted read-only.
    ReadOnly,
}

/// Decides whether `role` may make a request of `kind`; `read_only` says whether the volume it
/// concerns is granted read-only (false when it concerns none).
pub(super) fn admit(role: Role, kind: RequestKind, read_only: bool) -> Decision {
    match rule(kind, role) {
        Rule::Writes if read_only => Decision::Forbid(Reason::ReadOnly),
        Rule::Allow | Rule::Writes => Decision::Allow,
        Rule::Forbid(what) => Decision::Forbid(Reason::Role(what)),
    }
}

impl Reason {
    /// The refusal the peer gets; `volume` is the volume the request concerns.
    pub(super) fn to_remote(self, role: Role, volume: &str) -> RemoteError {
        match self {
            Reason::Role(what) => RemoteError::new(
                RemoteErrorKind::Forbidden,
                format!("a certificate with the {role} role may not {what}"),
            ),
            Reason::ReadOnly => {
                RemoteError::new(RemoteErrorKind::ReadOnly, format!("volume `{volume}` is read-only on this agent"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cell: (request, role, read-only volume) → decision.
    #[test]
    fn every_role_and_request() {
        use Decision::{Allow, Forbid};
        use Reason::{ReadOnly, Role as ByRole};
        use RequestKind as K;
        use Role::{Agent, Coordinator};
        let without_session = ByRole("push a volume without a session");
        let table = [
            (K::Ping, Coordinator, false, Allow),
            (K::Ping, Coordinator, true, Allow),
            (K::Ping, Agent, false, Allow),
            (K::Ping, Agent, true, Allow),
            (K::Receive, Coordinator, false, Allow),
            (K::Receive, Coordinator, true, Forbid(ReadOnly)),
            (K::Receive, Agent, false, Forbid(without_session)),
            (K::Receive, Agent, true, Forbid(without_session)),
            (K::OpenSession, Coordinator, false, Allow),
            (K::OpenSession, Coordinator, true, Forbid(ReadOnly)),
            (K::OpenSession, Agent, false, Forbid(ByRole("open sessions"))),
            (K::OpenSession, Agent, true, Forbid(ByRole("open sessions"))),
            (K::JoinSession, Coordinator, false, Forbid(ByRole("join a session"))),
            (K::JoinSession, Coordinator, true, Forbid(ByRole("join a session"))),
            (K::JoinSession, Agent, false, Allow),
            (K::JoinSession, Agent, true, Forbid(ReadOnly)),
            (K::Push, Coordinator, false, Allow),
            (K::Push, Coordinator, true, Allow),
            (K::Push, Agent, false, Forbid(ByRole("ask an agent to push"))),
            (K::Push, Agent, true, Forbid(ByRole("ask an agent to push"))),
            (K::JoinLane, Coordinator, false, Allow),
            (K::JoinLane, Coordinator, true, Allow),
            (K::JoinLane, Agent, false, Allow),
            (K::JoinLane, Agent, true, Allow),
            (K::GrantPodVolume, Coordinator, false, Allow),
            (K::GrantPodVolume, Agent, false, Forbid(ByRole("grant volumes (only the migration's coordinator may)"))),
            (K::RevokeVolume, Coordinator, false, Allow),
            (K::RevokeVolume, Agent, false, Forbid(ByRole("revoke volumes (only the migration's coordinator may)"))),
        ];
        for (kind, role, read_only, expected) in table {
            assert_eq!(
                admit(role, kind, read_only),
                expected,
                "{} by the {role} role, read-only {read_only}",
                kind.as_str()
            );
        }
    }

    #[test]
    fn refusals_say_who_may_not_do_what() {
        let role = Reason::Role("open sessions").to_remote(Role::Agent, "vol");
        assert_eq!(role.kind, RemoteErrorKind::Forbidden);
        assert_eq!(role.message, "a certificate with the agent role may not open sessions");
        let read_only = Reason::ReadOnly.to_remote(Role::Coordinator, "vol");
        assert_eq!(read_only.kind, RemoteErrorKind::ReadOnly);
        assert_eq!(read_only.message, "volume `vol` is read-only on this agent");
        let grant = admit(Role::Agent, RequestKind::GrantPodVolume, false);
        let Decision::Forbid(reason) = grant else { panic!("an agent may grant: {grant:?}") };
        let grant = reason.to_remote(Role::Agent, "");
        assert_eq!(grant.kind, RemoteErrorKind::Forbidden);
        assert_eq!(
            grant.message,
            "a certificate with the agent role may not grant volumes (only the migration's coordinator may)"
        );
    }
}
