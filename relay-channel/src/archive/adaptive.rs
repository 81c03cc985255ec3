//! The adaptive compression level: under overload the archive degrades
//! before anything is lost. With zstd, when the archive's queue fills or
//! the kernel starts dropping datagrams on the receive socket (the archive
//! thread's compression taking the CPU the receive thread needs), the level
//! steps down the ladder: the preferred level (`archive.level`), then 1,
//! zstd's fast negative levels, and at last blocks stored uncompressed
//! (raw blocks in the zstd frame, a copy). When the pressure is gone for a
//! while, it climbs back one step at a time.
//!
//! Pure: [`Adaptive::observe`] takes the signals and the time, and says
//! which level the next blocks get.

use std::time::{Duration, Instant};

/// The rungs below the preferred level: fast levels, then the negative
/// ones (each about twice as fast as the one before on telemetry), then
/// storing (`None`).
const LADDER: [Option<i32>; 9] = [
    Some(1),
    Some(-1),
    Some(-4),
    Some(-16),
    Some(-64),
    Some(-256),
    Some(-1024),
    Some(-8192),
    None,
];

/// Queue fill at or above which the level goes down.
pub(crate) const PRESSURE_FILL: f64 = 0.25;
/// Queue fill at or above which (or with kernel drops) it goes down two
/// rungs at a time: 8 KiB records at 80,000/s fill a 32 MiB queue in 50 ms,
/// so the bottom must be reachable within about 100 ms.
pub(crate) const SEVERE_FILL: f64 = 0.5;
/// Queue fill under which the archive counts as keeping up.
pub(crate) const CALM_FILL: f64 = 0.05;
/// Shortest time between two steps down: a step takes effect at the next
/// block.
const STEP_DOWN_EVERY: Duration = Duration::from_millis(20);
/// How long it must be calm (no kernel drop, the queue nearly empty) before
/// each step up. Long enough that a load which needs a low level does not
/// see it climb back between its bursts.
const STEP_UP_AFTER: Duration = Duration::from_secs(5);

/// What the archive thread sees of the load.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Signals {
    /// How full the archive queue is, 0 to 1.
    pub(crate) fill: f64,
    /// The receive socket's drop counter.
    pub(crate) kernel_drops: u64,
    /// The receive thread found its socket never empty since the last look
    /// (nearly every `recvmmsg` filled its batch): it is at its limit,
    /// before the kernel drops anything.
    pub(crate) saturated: bool,
    /// Writing the blocks took longer than compressing them since the last
    /// look: a filling queue then waits on the disk, and compressing less
    /// would only give it more to write.
    pub(crate) disk_bound: bool,
}

/// Where the level stands.
#[derive(Debug, Clone)]
pub(crate) struct Adaptive {
    /// `ladder[0]` is the preferred level.
    ladder: Vec<Option<i32>>,
    at: usize,
    last_step: Option<Instant>,
    calm_since: Option<Instant>,
    last_kernel_drops: Option<u64>,
    /// When the level last left the preferred one (while degraded).
    degraded_since: Option<Instant>,
}

impl Adaptive {
    pub(crate) fn new(preferred: i32) -> Adaptive {
        let mut ladder = vec![Some(preferred)];
        ladder.extend(LADDER.iter().filter(|l| l.is_none_or(|l| l < preferred)));
        Adaptive {
            ladder,
            at: 0,
            last_step: None,
            calm_since: None,
            last_kernel_drops: None,
            degraded_since: None,
        }
    }

    /// The level in use: `Some(level)`, or `None` while blocks are stored.
    pub(crate) fn level(&self) -> Option<i32> {
        self.ladder[self.at]
    }

    /// Whether the level is below the preferred one.
    pub(crate) fn degraded(&self) -> bool {
        self.at > 0
    }

    /// Takes the signals: `fill`, how full the archive queue is (0 to 1),
    /// and `kernel_drops`, the receive socket's drop counter. Returns the
    /// new level when it changes, and the time spent degraded since the
    /// last call (to be counted).
    #[cfg(test)]
    pub(crate) fn observe(
        &mut self,
        fill: f64,
        kernel_drops: u64,
        now: Instant,
    ) -> (Option<Option<i32>>, Duration) {
        self.observe_all(
            Signals {
                fill,
                kernel_drops,
                ..Signals::default()
            },
            now,
        )
    }

    /// [`Adaptive::observe`] with every signal (see [`Signals`]): a
    /// saturated receive thread is pressure, one rung at a time; a queue
    /// filling while the disk is what it waits on climbs back up instead.
    pub(crate) fn observe_all(
        &mut self,
        s: Signals,
        now: Instant,
    ) -> (Option<Option<i32>>, Duration) {
        let Signals {
            fill,
            kernel_drops,
            saturated,
            disk_bound,
        } = s;
        let degraded_for = match self.degraded_since {
            Some(t) => {
                let d = now.saturating_duration_since(t);
                self.degraded_since = Some(now);
                d
            }
            None => Duration::ZERO,
        };
        let dropped = self
            .last_kernel_drops
            .is_some_and(|before| kernel_drops > before);
        self.last_kernel_drops = Some(kernel_drops);
        let since_step = |s: &Self| {
            s.last_step
                .map_or(Duration::MAX, |t| now.saturating_duration_since(t))
        };
        let changed = if fill >= PRESSURE_FILL && disk_bound && !dropped {
            // The disk is the limit: more compression, fewer bytes.
            self.calm_since = None;
            if self.at > 0 && since_step(self) >= STEP_DOWN_EVERY {
                self.at -= 1;
                self.last_step = Some(now);
                if self.at == 0 {
                    self.degraded_since = None;
                }
                true
            } else {
                false
            }
        } else if dropped || saturated || fill >= PRESSURE_FILL {
            self.calm_since = None;
            if self.at + 1 < self.ladder.len() && since_step(self) >= STEP_DOWN_EVERY {
                let rungs = if dropped || fill >= SEVERE_FILL { 2 } else { 1 };
                self.at = (self.at + rungs).min(self.ladder.len() - 1);
                self.last_step = Some(now);
                self.degraded_since.get_or_insert(now);
                true
            } else {
                false
            }
        } else if fill < CALM_FILL {
            let calm = *self.calm_since.get_or_insert(now);
            if self.at > 0
                && now.saturating_duration_since(calm) >= STEP_UP_AFTER
                && since_step(self) >= STEP_UP_AFTER
            {
                self.at -= 1;
                self.last_step = Some(now);
                if self.at == 0 {
                    self.degraded_since = None;
                }
                true
            } else {
                false
            }
        } else {
            self.calm_since = None;
            false
        };
        (changed.then(|| self.level()), degraded_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: Instant, n: u64) -> Instant {
        t + Duration::from_millis(n)
    }

    #[test]
    fn pressure_steps_down_to_storing_and_calm_climbs_back_one_step_at_a_time() {
        let t = Instant::now();
        let mut a = Adaptive::new(3);
        assert_eq!(a.level(), Some(3));
        assert_eq!(a.observe(0.0, 0, t).0, None);
        // Queue pressure: one rung per 20 ms at most.
        assert_eq!(a.observe(0.3, 0, ms(t, 10)).0, Some(Some(1)));
        assert_eq!(
            a.observe(0.3, 0, ms(t, 20)).0,
            None,
            "not twice within 20 ms"
        );
        let mut now = 10;
        let mut levels = vec![Some(1)];
        while a.level() != Some(-64) {
            now += 20;
            if let (Some(l), _) = a.observe(0.3, 0, ms(t, now)) {
                levels.push(l);
            }
        }
        assert_eq!(
            levels,
            vec![Some(1), Some(-1), Some(-4), Some(-16), Some(-64)]
        );
        // A queue half full: two rungs a step, down to storing.
        now += 20;
        assert_eq!(a.observe(0.5, 0, ms(t, now)).0, Some(Some(-1024)));
        now += 20;
        assert_eq!(a.observe(0.9, 0, ms(t, now)).0, Some(None));
        assert!(a.degraded());
        // Stored is the bottom.
        assert_eq!(a.observe(1.0, 0, ms(t, now + 100)).0, None);
        // Calm: nothing for 5 s, then one step up per 5 s.
        now += 200;
        assert_eq!(a.observe(0.0, 0, ms(t, now)).0, None);
        assert_eq!(a.observe(0.0, 0, ms(t, now + 4999)).0, None);
        assert_eq!(a.observe(0.0, 0, ms(t, now + 5000)).0, Some(Some(-8192)));
        assert_eq!(a.observe(0.0, 0, ms(t, now + 8000)).0, None);
        assert_eq!(a.observe(0.0, 0, ms(t, now + 10000)).0, Some(Some(-1024)));
        // A tenth full is neither: no step up, and calm starts over.
        assert_eq!(a.observe(0.1, 0, ms(t, now + 12000)).0, None);
        assert_eq!(a.observe(0.0, 0, ms(t, now + 12100)).0, None);
        assert_eq!(a.observe(0.0, 0, ms(t, now + 17099)).0, None);
        assert_eq!(a.observe(0.0, 0, ms(t, now + 17100)).0, Some(Some(-256)));
    }

    #[test]
    fn kernel_drops_are_pressure_and_the_time_degraded_is_counted() {
        let t = Instant::now();
        let mut a = Adaptive::new(1);
        assert_eq!(
            a.observe(0.0, 7, t),
            (None, Duration::ZERO),
            "the first reading is a baseline"
        );
        assert_eq!(a.observe(0.0, 7, ms(t, 100)).0, None);
        let (l, d) = a.observe(0.0, 9, ms(t, 200));
        assert_eq!(
            (l, d),
            (Some(Some(-4)), Duration::ZERO),
            "drops: two rungs below 1"
        );
        assert_eq!(a.observe(0.0, 9, ms(t, 700)).1, Duration::from_millis(500));
        // One rung up after 5 s of calm, the next 5 s later; then no more
        // time is counted.
        let (l, d) = a.observe(0.0, 9, ms(t, 5700));
        assert_eq!((l, d), (Some(Some(-1)), Duration::from_millis(5000)));
        let (l, _) = a.observe(0.0, 9, ms(t, 10700));
        assert_eq!(l, Some(Some(1)));
        assert!(!a.degraded());
        assert_eq!(a.observe(0.0, 9, ms(t, 20000)).1, Duration::ZERO);
    }

    fn sig(fill: f64, saturated: bool, disk_bound: bool) -> Signals {
        Signals {
            fill,
            kernel_drops: 0,
            saturated,
            disk_bound,
        }
    }

    #[test]
    fn a_saturated_receive_thread_is_pressure_one_rung_at_a_time() {
        let t = Instant::now();
        let mut a = Adaptive::new(1);
        assert_eq!(a.observe_all(sig(0.0, true, false), t).0, Some(Some(-1)));
        assert_eq!(
            a.observe_all(sig(0.0, true, false), ms(t, 20)).0,
            Some(Some(-4))
        );
        // Neither saturated nor calm enough for long: it stays.
        assert_eq!(a.observe_all(sig(0.0, false, false), ms(t, 40)).0, None);
        assert_eq!(
            a.observe_all(sig(0.0, true, false), ms(t, 4000)).0,
            Some(Some(-16))
        );
    }

    #[test]
    fn a_queue_that_waits_on_the_disk_gets_more_compression_not_less() {
        let t = Instant::now();
        let mut a = Adaptive::new(1);
        assert_eq!(a.observe_all(sig(0.6, false, false), t).0, Some(Some(-4)));
        // Now the writes take longer than the compression: back up, one
        // rung per 20 ms, to the preferred level and no further.
        assert_eq!(
            a.observe_all(sig(0.6, false, true), ms(t, 20)).0,
            Some(Some(-1))
        );
        assert_eq!(a.observe_all(sig(0.6, false, true), ms(t, 30)).0, None);
        assert_eq!(
            a.observe_all(sig(0.6, false, true), ms(t, 40)).0,
            Some(Some(1))
        );
        assert!(!a.degraded());
        assert_eq!(a.observe_all(sig(0.9, false, true), ms(t, 60)).0, None);
    }

    #[test]
    fn a_low_preferred_level_keeps_only_the_rungs_below_it() {
        let a = Adaptive::new(-16);
        assert_eq!(
            a.ladder,
            vec![
                Some(-16),
                Some(-64),
                Some(-256),
                Some(-1024),
                Some(-8192),
                None
            ]
        );
    }
}
