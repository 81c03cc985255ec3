//! The channel's counters, shared by its threads, and the JSON lines the
//! relay writes on stdout for a supervisor.
//!
//! Counters live behind one mutex that each thread takes once per batch (not
//! per datagram), so a snapshot is always consistent:
//! `received = archived + rejected + archive_dropped + in_flight` holds on
//! every stats line, exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::status::{Counters, Stats, StatusLine};

/// The counters as the threads keep them: the stats line's [`Counters`]
/// and the rejections by reason, in order of first appearance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub counters: Counters,
    pub rejected_by_reason: Vec<(&'static str, u64)>,
}

impl std::ops::Deref for Tally {
    type Target = Counters;
    fn deref(&self) -> &Counters {
        &self.counters
    }
}

impl std::ops::DerefMut for Tally {
    fn deref_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }
}

impl Tally {
    pub fn reject(&mut self, reason: &'static str, n: u64) {
        self.counters.rejected += n;
        match self
            .rejected_by_reason
            .iter_mut()
            .find(|(r, _)| *r == reason)
        {
            Some((_, c)) => *c += n,
            None => self.rejected_by_reason.push((reason, n)),
        }
    }
}

/// State shared by the receive thread, the archive thread and control.
#[derive(Debug, Default)]
pub struct Shared {
    counters: Mutex<Tally>,
    /// False while the archive cannot write (disk full, folder gone, ...).
    pub archive_healthy: AtomicBool,
    /// False while a multicast join waits for its interface.
    pub joined: AtomicBool,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            counters: Mutex::new(Tally::default()),
            archive_healthy: AtomicBool::new(true),
            joined: AtomicBool::new(true),
        }
    }

    /// Locks the counters; a thread that panicked while holding them left
    /// plain integers behind, so poisoning is ignored.
    pub fn counters(&self) -> MutexGuard<'_, Tally> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Tally {
        self.counters().clone()
    }

    pub fn healthy(&self) -> bool {
        self.archive_healthy.load(Ordering::Relaxed)
    }
}

/// The `stats` line as of now; `last` on the one written as the relay stops.
pub fn stats_line(channel: &str, shared: &Shared, last: bool) -> StatusLine {
    let t = shared.snapshot();
    StatusLine::Stats(Stats {
        channel: channel.into(),
        counters: t.counters,
        rejected_by_reason: t
            .rejected_by_reason
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect(),
        archive_healthy: shared.healthy(),
        joined: shared.joined.load(Ordering::Relaxed),
        last,
    })
}

/// Lets through at most `burst` events per `period`, counting the rest, so
/// trouble on the hot path is logged without flooding the log.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(burst: u32, period: Duration) -> RateLimit {
        RateLimit {
            period,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed_since_last_allowed)` when this event may be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.window_start {
            Some(s) if now.duration_since(s) < self.period => {}
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_a_burst_through_per_period() {
        let mut r = RateLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0), None);
        assert_eq!(r.allow(t0), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(61)), Some(2));
    }

    #[test]
    fn stats_line_carries_every_counter() {
        let s = Shared::new();
        {
            let mut c = s.counters();
            c.received = 5;
            c.archived = 2;
            c.in_flight = 1;
            c.reject("truncated", 2);
        }
        let StatusLine::Stats(v) = stats_line("ch", &s, true) else {
            panic!("not a stats line")
        };
        assert_eq!(v.channel, "ch");
        assert_eq!(v.counters.received, 5);
        assert_eq!(v.counters.rejected, 2);
        assert_eq!(v.rejected_by_reason["truncated"], 2);
        assert!(v.last && v.archive_healthy && v.joined);
        assert!(s.snapshot().balanced());
    }
}
