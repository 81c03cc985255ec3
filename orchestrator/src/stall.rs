//! The orchestrator's own pauses. A supervisor that is stopped (SIGSTOP,
//! Ctrl-Z, a debugger or strace attaching) or starved of CPU sees nothing
//! of its children meanwhile: their status lines wait in the pipes. A
//! timer that ran across such a pause judged nothing, so the watchdog must
//! not count it against a relay ([`crate::lifecycle`] starts such timers
//! again from the end of the pause).
//!
//! A beat task notes the time every [`BEAT`]; a gap of more than [`STALL`]
//! between two notes (by the beat task or by a channel task about to judge
//! its child, whichever runs first after the pause) is a stall, which ended
//! at that note.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the beat task notes the time.
pub const BEAT: Duration = Duration::from_millis(100);
/// A gap between notes longer than this is a stall of the orchestrator.
pub const STALL: Duration = Duration::from_secs(1);

/// The orchestrator's progress: when it last ran, when its last stall
/// ended. Shared by the beat task and every channel task.
#[derive(Debug)]
pub struct Stalls {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    last_note: Instant,
    last: Option<Stall>,
}

/// One stall: the orchestrator did not run from `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub from: Instant,
    pub to: Instant,
}

impl Stall {
    pub fn length(&self) -> Duration {
        self.to - self.from
    }
}

impl Stalls {
    pub fn new(now: Instant) -> Stalls {
        Stalls {
            inner: Mutex::new(Inner {
                last_note: now,
                last: None,
            }),
        }
    }

    /// Notes that the orchestrator runs at `now`. Returns the stall this
    /// note ends, if it ends one (said once, by whichever note comes first).
    fn note(&self, now: Instant) -> Option<Stall> {
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = None;
        if now.saturating_duration_since(i.last_note) > STALL {
            let stall = Stall {
                from: i.last_note,
                to: now,
            };
            i.last = Some(stall);
            ended = Some(stall);
        }
        i.last_note = i.last_note.max(now);
        ended
    }

    /// When the orchestrator last resumed after a stall, as of `now`
    /// (which is noted first; a stall it ends is logged).
    pub fn resumed_at(&self, now: Instant) -> Option<Instant> {
        if let Some(stall) = self.note(now) {
            log(stall);
        }
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        i.last.map(|s| s.to)
    }

    /// Notes the time every [`BEAT`], forever, and logs each stall once.
    pub async fn beat(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.resumed_at(Instant::now());
        }
    }
}

fn log(stall: Stall) {
    tracing::warn!(
        "the orchestrator itself did not run for {:.1} s (stopped, or starved of CPU): the relays' watchdog timers start again from now",
        stall.length().as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn regular_notes_are_no_stall() {
        let t0 = Instant::now();
        let s = Stalls::new(t0);
        for i in 1..=50 {
            assert_eq!(s.note(t0 + ms(100 * i)), None);
        }
        assert_eq!(s.resumed_at(t0 + ms(5_100)), None);
    }

    #[test]
    fn a_gap_is_one_stall_said_once_and_remembered() {
        let t0 = Instant::now();
        let s = Stalls::new(t0);
        assert_eq!(s.note(t0 + ms(100)), None);
        let stall = s.note(t0 + ms(10_100)).expect("a 10 s gap is a stall");
        assert_eq!(stall.from, t0 + ms(100));
        assert_eq!(stall.to, t0 + ms(10_100));
        assert_eq!(stall.length(), Duration::from_secs(10));
        // The beat task, running after the channel task that noted it
        // first, does not say it again.
        assert_eq!(s.note(t0 + ms(10_101)), None);
        assert_eq!(s.resumed_at(t0 + ms(10_200)), Some(t0 + ms(10_100)));
    }

    #[test]
    fn a_note_from_a_late_clock_read_does_not_go_back() {
        let t0 = Instant::now();
        let s = Stalls::new(t0 + ms(500));
        // A task that read the clock before the last note.
        assert_eq!(s.note(t0), None);
        assert_eq!(s.note(t0 + ms(1_400)), None);
    }
}
