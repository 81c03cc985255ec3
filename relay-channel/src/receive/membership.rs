//! The multicast membership: join (retrying every second while the
//! interface is missing), then check every few seconds that the membership
//! still stands. The kernel drops it silently when the interface goes away;
//! the next check joins again once it is back.
//!
//! [`Membership`] is the decision, a pure state machine that takes `now`;
//! [`Join`] performs the joins and logs.

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::config::Interface;
use crate::ledger::Ledger;
use crate::net;

/// How often a failed join is tried again.
const JOIN_RETRY: Duration = Duration::from_secs(1);
/// How often a standing membership is checked (by joining again).
const JOIN_CHECK: Duration = Duration::from_secs(2);

/// What a join returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    Joined,
    /// `EADDRINUSE`: still a member.
    AlreadyMember,
    Failed,
}

impl Attempt {
    fn of(result: &io::Result<()>) -> Attempt {
        match result {
            Ok(()) => Attempt::Joined,
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Attempt::AlreadyMember,
            Err(_) => Attempt::Failed,
        }
    }
}

/// What an attempt is worth telling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinReport {
    Nothing,
    Joined,
    /// Joined after the membership had been lost.
    JoinedAgain,
    /// The first failure, or the first since the membership was lost.
    CannotJoinYet,
}

/// When to join, and whether the membership stands.
#[derive(Debug)]
pub(crate) struct Membership {
    joined: bool,
    ever_joined: bool,
    tried: bool,
    next: Instant,
}

impl Membership {
    /// Not joined; the first attempt is due at `now`.
    pub(crate) fn new(now: Instant) -> Membership {
        Membership {
            joined: false,
            ever_joined: false,
            tried: false,
            next: now,
        }
    }

    /// Whether an attempt is due.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    pub(crate) fn joined(&self) -> bool {
        self.joined
    }

    /// Takes in an attempt made at `now`.
    pub(crate) fn attempted(&mut self, now: Instant, attempt: Attempt) -> JoinReport {
        let first = !std::mem::replace(&mut self.tried, true);
        let was_joined = self.joined;
        self.joined = attempt != Attempt::Failed;
        self.next = now + if self.joined { JOIN_CHECK } else { JOIN_RETRY };
        match attempt {
            Attempt::Joined if std::mem::replace(&mut self.ever_joined, true) => {
                JoinReport::JoinedAgain
            }
            Attempt::Joined => JoinReport::Joined,
            Attempt::AlreadyMember => JoinReport::Nothing,
            Attempt::Failed if first || was_joined => JoinReport::CannotJoinYet,
            Attempt::Failed => JoinReport::Nothing,
        }
    }
}

/// The group the receive socket stays joined to.
pub(crate) struct Join {
    group: Ipv4Addr,
    interface: Interface,
    state: Membership,
    channel: String,
}

impl Join {
    pub(crate) fn new(group: Ipv4Addr, interface: Interface, channel: &str) -> Join {
        Join {
            group,
            interface,
            state: Membership::new(Instant::now()),
            channel: channel.to_string(),
        }
    }

    /// Joins when an attempt is due, logs what is worth it, and tells the
    /// ledger whether the membership stands.
    pub(crate) fn keep(&mut self, socket: &Socket, ledger: &Ledger) {
        let now = Instant::now();
        if !self.state.due(now) {
            return;
        }
        let result = net::join(socket, self.group, &self.interface);
        let (group, interface) = (self.group, &self.interface);
        match self.state.attempted(now, Attempt::of(&result)) {
            JoinReport::Nothing => {}
            JoinReport::Joined => {
                tracing::info!(channel = %self.channel, %group, %interface, "joined multicast group")
            }
            JoinReport::JoinedAgain => tracing::warn!(
                channel = %self.channel, %group, %interface,
                "joined the multicast group again: the membership had been lost (interface gone and back)"
            ),
            JoinReport::CannotJoinYet => tracing::warn!(
                channel = %self.channel, %group, %interface, error = %result.unwrap_err(),
                "cannot join the multicast group yet; retrying every second"
            ),
        }
        ledger.set_joined(self.state.joined());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_join_is_checked_every_two_seconds() {
        let t0 = Instant::now();
        let mut m = Membership::new(t0);
        assert!(m.due(t0) && !m.joined());
        assert_eq!(m.attempted(t0, Attempt::Joined), JoinReport::Joined);
        assert!(m.joined());
        assert!(!m.due(t0 + S) && m.due(t0 + 2 * S));
        assert_eq!(
            m.attempted(t0 + 2 * S, Attempt::AlreadyMember),
            JoinReport::Nothing
        );
        assert!(m.joined() && !m.due(t0 + 3 * S) && m.due(t0 + 4 * S));
    }

    #[test]
    fn a_missing_interface_is_retried_every_second_and_reported_once() {
        let t0 = Instant::now();
        let mut m = Membership::new(t0);
        assert_eq!(m.attempted(t0, Attempt::Failed), JoinReport::CannotJoinYet);
        assert!(!m.joined() && !m.due(t0) && m.due(t0 + S));
        assert_eq!(m.attempted(t0 + S, Attempt::Failed), JoinReport::Nothing);
        assert_eq!(m.attempted(t0 + 2 * S, Attempt::Joined), JoinReport::Joined);
        assert!(m.joined());
    }

    #[test]
    fn a_lost_membership_is_reported_and_joined_again() {
        let t0 = Instant::now();
        let mut m = Membership::new(t0);
        m.attempted(t0, Attempt::Joined);
        assert_eq!(
            m.attempted(t0 + 2 * S, Attempt::Failed),
            JoinReport::CannotJoinYet
        );
        assert!(!m.joined());
        assert_eq!(
            m.attempted(t0 + 3 * S, Attempt::Failed),
            JoinReport::Nothing
        );
        assert_eq!(
            m.attempted(t0 + 4 * S, Attempt::Joined),
            JoinReport::JoinedAgain
        );
        assert!(m.joined());
    }

    #[test]
    fn eaddrinuse_means_still_a_member() {
        let inuse = Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
        assert_eq!(Attempt::of(&inuse), Attempt::AlreadyMember);
        let nodev = Err(io::Error::from_raw_os_error(libc::ENODEV));
        assert_eq!(Attempt::of(&nodev), Attempt::Failed);
        assert_eq!(Attempt::of(&Ok(())), Attempt::Joined);
    }
}
