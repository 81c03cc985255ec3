//! The adaptive compression level: under overload the archive degrades
//! before anything is lost. With zstd, when the archive's queue fills or
//! the receive thread runs short of CPU (its socket never empty, or the
//! kernel dropping datagrams), the level moves along the ladder: the
//! preferred level (`archive.level`), then 1, zstd's fast negative levels,
//! and at last blocks stored uncompressed (raw blocks in the zstd frame, a
//! copy). When the pressure is gone for a while, it climbs back one step at
//! a time.
//!
//! Compressing less is not always cheaper: every byte not compressed away
//! is a byte to write, and when the disk (the page cache, and the kernel's
//! writeback competing for the same cores) is the limit, a lower level
//! makes the archive slower. So under pressure the level goes where the
//! archive thread spends the least time per byte of records, measured: the
//! time each rung's blocks took to compress and write, per input byte. It
//! steps down while the rung below is not known to be dearer, and back up
//! when the rung above is known to be cheaper, unless the receive thread
//! is short of CPU (compressing more would take what it lacks); a rung's
//! cost is forgotten
//! after [`COST_FRESH_FOR`], so the search looks again when the load or the
//! disk changes.
//!
//! Pure: [`Adaptive::observe_all`] takes the signals and the time, and says
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
/// Shortest time between two steps under pressure: a step takes effect at
/// the next block.
const STEP_DOWN_EVERY: Duration = Duration::from_millis(20);
/// How long it must be calm (no kernel drop, the queue nearly empty) before
/// each step up. Long enough that a load which needs a low level does not
/// see it climb back between its bursts.
const STEP_UP_AFTER: Duration = Duration::from_secs(5);
/// Input bytes a rung must have compressed and written before its cost
/// counts (eight blocks of the default size): less is noise.
const COST_SAMPLE_BYTES: u64 = 2 << 20;
/// How long a rung's measured cost is trusted.
const COST_FRESH_FOR: Duration = Duration::from_secs(5);
/// A rung is cheaper than another only by more than this share: noise does
/// not move the level.
const COST_MARGIN: f64 = 0.05;

/// What the archive thread did since the last look: the input bytes of
/// the blocks it wrote, and the time compressing and writing them took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Work {
    pub(crate) bytes: u64,
    pub(crate) busy: Duration,
}

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
    /// The blocks written since the last look, at the level in use.
    pub(crate) work: Work,
}

/// A rung's measured cost: nanoseconds of compressing and writing per input
/// byte, and when it was last measured.
#[derive(Debug, Clone, Copy)]
struct Cost {
    ns_per_byte: f64,
    at: Instant,
}

/// Where the level stands.
#[derive(Debug, Clone)]
pub(crate) struct Adaptive {
    /// `ladder[0]` is the preferred level.
    ladder: Vec<Option<i32>>,
    at: usize,
    /// Per rung, its last measured cost.
    costs: Vec<Option<Cost>>,
    /// The current rung's work not yet folded into its cost.
    pending: Work,
    /// The first look after a step is not measured: its blocks straddle
    /// the step, and a level's first blocks pay for setting it up.
    settling: bool,
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
            costs: vec![None; ladder.len()],
            ladder,
            at: 0,
            pending: Work::default(),
            settling: false,
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

    /// Takes the queue's fill (0 to 1) and the receive socket's drop
    /// counter, with no measure of the archive's work (every rung then
    /// looks alike: pressure steps down). Returns the new level when it
    /// changes, and the time spent degraded since the last call (to be
    /// counted).
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

    /// The cost of rung `i` if measured within [`COST_FRESH_FOR`].
    fn cost(&self, i: usize, now: Instant) -> Option<f64> {
        self.costs
            .get(i)
            .copied()
            .flatten()
            .filter(|c| now.saturating_duration_since(c.at) < COST_FRESH_FOR)
            .map(|c| c.ns_per_byte)
    }

    /// Folds `work` into the current rung's cost once enough is measured.
    fn measure(&mut self, work: Work, now: Instant) {
        if self.settling {
            self.settling = work.bytes == 0;
            return;
        }
        self.pending.bytes += work.bytes;
        self.pending.busy += work.busy;
        if self.pending.bytes < COST_SAMPLE_BYTES {
            return;
        }
        let sample = self.pending.busy.as_nanos() as f64 / self.pending.bytes as f64;
        self.pending = Work::default();
        let ns_per_byte = match self.cost(self.at, now) {
            Some(before) => (before + sample) / 2.0,
            None => sample,
        };
        self.costs[self.at] = Some(Cost {
            ns_per_byte,
            at: now,
        });
    }

    /// Where pressure moves the level from the rung in use: to the rung
    /// known to cost least, when it costs clearly less than this one; else
    /// to measure the nearest rung not known (any more): below first (two
    /// rungs down with `rungs` = 2 while both are unmeasured), then above.
    /// Never above while `short_of_cpu` (the receive thread is): a rung
    /// above compresses more, with CPU the receive thread lacks, however
    /// little archive time it costs (the archive's time counts waiting on
    /// the disk, which takes no CPU); and storing takes it no more than the
    /// null codec would.
    /// With no rung measured at all, down. A rung not measured yet while
    /// others are: stay and measure it, a step is a comparison.
    fn under_pressure(&self, rungs: usize, short_of_cpu: bool, now: Instant) -> usize {
        let at = self.at;
        let bottom = self.ladder.len() - 1;
        let cost = |i: usize| self.cost(i, now);
        let Some(here) = cost(at) else {
            let any_known = (0..=bottom).any(|i| cost(i).is_some());
            return if any_known {
                at
            } else {
                (at + rungs).min(bottom)
            };
        };
        let best = (0..=bottom)
            .filter(|&i| !short_of_cpu || i >= at)
            .filter_map(|i| cost(i).map(|c| (i, c)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((i, c)) = best {
            if c < here * (1.0 - COST_MARGIN) {
                return i;
            }
        }
        // Nothing known is cheaper: measure the nearest rung not known
        // (any more), below first. The cost need not fall steadily down the
        // ladder (a lower level may write so much more that it costs more,
        // and a lower one still less), so a dearer neighbour does not end
        // the search.
        if let Some(below) = (at + 1..=bottom).find(|&i| cost(i).is_none()) {
            let two = rungs > 1 && below == at + 1 && below < bottom && cost(below + 1).is_none();
            return if two { below + 1 } else { below };
        }
        if !short_of_cpu {
            if let Some(above) = (0..at).rev().find(|&i| cost(i).is_none()) {
                return above;
            }
        }
        at
    }

    /// Where a queue past half full (or the kernel dropping) sends the
    /// level at once, without waiting [`STEP_DOWN_EVERY`] between rungs:
    /// with no rung's cost known (the first overload, or a long calm) and a
    /// slow preferred level (above 3: level 19 takes tens of milliseconds a
    /// block), to storing, the cheapest in CPU; from a measured rung, to the rung
    /// below measured clearly cheapest. `None` where the level stays for
    /// [`Adaptive::under_pressure`]'s search to go on: at the bottom, at the
    /// cheapest rung known, or while the rung in use is being measured.
    fn jump(&self, now: Instant) -> Option<usize> {
        let bottom = self.ladder.len() - 1;
        if self.at == bottom {
            return None;
        }
        if !(0..=bottom).any(|i| self.cost(i, now).is_some()) {
            // Only with a slow preferred level: from a fast one (the
            // default, 1) the walk two rungs at a time gets there soon
            // enough, and storing everything would cost the disk several
            // times the bytes.
            let slow = self.ladder[0].is_some_and(|l| l > crate::container::PREEMPT_ABOVE_LEVEL);
            return slow.then_some(bottom);
        }
        let here = self.cost(self.at, now)?;
        (self.at + 1..=bottom)
            .filter_map(|i| self.cost(i, now).map(|c| (i, c)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .filter(|&(_, c)| c < here * (1.0 - COST_MARGIN))
            .map(|(i, _)| i)
    }

    /// Takes every signal (see [`Signals`]): kernel drops, a saturated
    /// receive thread or a filling queue are pressure, which moves the
    /// level towards the rung that costs the archive least; calm climbs
    /// back towards the preferred level. Returns the new level when it
    /// changes, and the time spent degraded since the last call.
    pub(crate) fn observe_all(
        &mut self,
        s: Signals,
        now: Instant,
    ) -> (Option<Option<i32>>, Duration) {
        let Signals {
            fill,
            kernel_drops,
            saturated,
            work,
        } = s;
        let degraded_for = match self.degraded_since {
            Some(t) => {
                let d = now.saturating_duration_since(t);
                self.degraded_since = Some(now);
                d
            }
            None => Duration::ZERO,
        };
        self.measure(work, now);
        let dropped = self
            .last_kernel_drops
            .is_some_and(|before| kernel_drops > before);
        self.last_kernel_drops = Some(kernel_drops);
        let since_step = self
            .last_step
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        let to = if dropped || fill >= SEVERE_FILL {
            // Filling faster than one rung per 20 ms can absorb (or already
            // losing datagrams in the kernel): jump, don't walk.
            self.calm_since = None;
            match self.jump(now) {
                Some(to) => to,
                None if since_step >= STEP_DOWN_EVERY => self.under_pressure(2, dropped, now),
                None => self.at,
            }
        } else if saturated || fill >= PRESSURE_FILL {
            self.calm_since = None;
            if since_step >= STEP_DOWN_EVERY {
                let rungs = if dropped || fill >= SEVERE_FILL { 2 } else { 1 };
                self.under_pressure(rungs, dropped || saturated, now)
            } else {
                self.at
            }
        } else if fill < CALM_FILL {
            let calm = *self.calm_since.get_or_insert(now);
            if self.at > 0
                && now.saturating_duration_since(calm) >= STEP_UP_AFTER
                && since_step >= STEP_UP_AFTER
            {
                self.at - 1
            } else {
                self.at
            }
        } else {
            self.calm_since = None;
            self.at
        };
        if to == self.at {
            return (None, degraded_for);
        }
        self.at = to;
        self.pending = Work::default();
        self.settling = true;
        self.last_step = Some(now);
        if to == 0 {
            self.degraded_since = None;
        } else {
            self.degraded_since.get_or_insert(now);
        }
        (Some(self.level()), degraded_for)
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
    fn a_queue_past_half_jumps_at_once_instead_of_walking() {
        let t = Instant::now();
        let mut a = Adaptive::new(19);
        // A quarter full: one rung, 19 to 1.
        assert_eq!(a.observe(0.3, 0, t).0, Some(Some(1)));
        // 5 ms later, past half, nothing measured: storing, without the
        // 20 ms between steps a walk waits.
        assert_eq!(a.observe(0.6, 0, ms(t, 5)).0, Some(None));
        // From a measured rung, to the cheapest measured below it.
        let mut a = Adaptive::new(19);
        let look = |a: &mut Adaptive, fill: f64, cost: f64, at: u64| {
            let bytes = 4u64 << 20;
            a.observe_all(
                Signals {
                    fill,
                    work: Work {
                        bytes,
                        busy: Duration::from_nanos((cost * bytes as f64) as u64),
                    },
                    ..Signals::default()
                },
                ms(t, at),
            )
            .0
        };
        // Level 1 measured cheap (0.5 ns/B), then 19 measured dear (40).
        assert_eq!(look(&mut a, 0.3, 0.0, 0), Some(Some(1)));
        look(&mut a, 0.0, 0.5, 5);
        look(&mut a, 0.0, 0.5, 10);
        assert_eq!(a.level(), Some(1));
        let mut at = 10;
        while a.level() != Some(19) {
            at += 5_000;
            look(&mut a, 0.0, 0.5, at);
        }
        look(&mut a, 0.1, 40.0, at + 5);
        look(&mut a, 0.1, 40.0, at + 10);
        assert_eq!(look(&mut a, 0.55, 40.0, at + 12), Some(Some(1)));
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

    fn sig(fill: f64, saturated: bool) -> Signals {
        Signals {
            fill,
            kernel_drops: 0,
            saturated,
            work: Work::default(),
        }
    }

    #[test]
    fn a_saturated_receive_thread_is_pressure_one_rung_at_a_time() {
        let t = Instant::now();
        let mut a = Adaptive::new(1);
        assert_eq!(a.observe_all(sig(0.0, true), t).0, Some(Some(-1)));
        assert_eq!(a.observe_all(sig(0.0, true), ms(t, 20)).0, Some(Some(-4)));
        // Neither saturated nor calm enough for long: it stays.
        assert_eq!(a.observe_all(sig(0.0, false), ms(t, 40)).0, None);
        assert_eq!(
            a.observe_all(sig(0.0, true), ms(t, 4000)).0,
            Some(Some(-16))
        );
    }

    /// Drives `a` under a full queue for `from..to` ms, one look per 5 ms,
    /// each look 4 MiB of blocks that cost `cost(level)` ns per byte.
    /// Returns the level at each look.
    fn drive(
        a: &mut Adaptive,
        t: Instant,
        from: u64,
        to: u64,
        cost: impl Fn(Option<i32>) -> f64,
    ) -> Vec<Option<i32>> {
        let bytes = 4u64 << 20;
        let mut levels = Vec::new();
        for now in (from..to).step_by(5) {
            let busy = Duration::from_nanos((cost(a.level()) * bytes as f64) as u64);
            let s = Signals {
                fill: 0.6,
                work: Work { bytes, busy },
                ..Signals::default()
            };
            a.observe_all(s, ms(t, now));
            levels.push(a.level());
        }
        levels
    }

    fn share(levels: &[Option<i32>], level: Option<i32>) -> f64 {
        levels.iter().filter(|&&l| l == level).count() as f64 / levels.len() as f64
    }

    #[test]
    fn when_the_cpu_is_the_limit_pressure_goes_down_to_storing() {
        // Each rung cheaper than the one above: compression is the cost.
        let cost = |l: Option<i32>| l.map_or(0.1, |l| 0.2 + 0.1 * f64::from(l + 8193).log2());
        let t = Instant::now();
        let mut a = Adaptive::new(1);
        let levels = drive(&mut a, t, 0, 1000, cost);
        assert_eq!(a.level(), None, "{levels:?}");
        assert!(share(&levels[100..], None) > 0.9, "{levels:?}");
    }

    #[test]
    fn when_writing_is_the_limit_the_level_settles_on_the_cheapest_rung() {
        // Compressing costs less down the ladder, but writing what is not
        // compressed away costs more: -4 is cheapest.
        let cost = |l: Option<i32>| match l {
            Some(1) => 3.0,
            Some(-1) => 2.4,
            Some(-4) => 2.0,
            Some(-16) => 2.6,
            Some(-64) => 3.2,
            _ => 4.0,
        };
        let t = Instant::now();
        let mut a = Adaptive::new(1);
        let levels = drive(&mut a, t, 0, 10_000, cost);
        // It finds it within the first second, and stays there but for
        // looks at its neighbours when their costs are forgotten.
        assert!(share(&levels[200..], Some(-4)) > 0.9, "{levels:?}");
    }

    #[test]
    fn a_dearer_rung_below_does_not_hide_a_cheaper_one_further_down() {
        // -1 is cheaper than its neighbours, but storing is cheapest.
        let cost = |l: Option<i32>| match l {
            Some(1) => 3.0,
            Some(-1) => 2.0,
            Some(-4) => 2.6,
            Some(-16) => 2.4,
            Some(-64) => 2.2,
            Some(_) => 1.8,
            None => 1.0,
        };
        let t = Instant::now();
        let mut a = Adaptive::new(1);
        let levels = drive(&mut a, t, 0, 10_000, cost);
        assert!(share(&levels[100..], None) > 0.9, "{levels:?}");
    }

    #[test]
    fn when_the_disk_slows_down_the_level_climbs_back_to_the_cheapest_rung() {
        let fast_disk = |l: Option<i32>| l.map_or(0.1, |l| 0.2 + 0.1 * f64::from(l + 8193).log2());
        let t = Instant::now();
        let mut a = Adaptive::new(1);
        drive(&mut a, t, 0, 1000, fast_disk);
        assert_eq!(a.level(), None);
        // Now every byte written costs 4 ns: 1 is cheapest (2 + 0.2 × 4).
        let ratio = |l: Option<i32>| match l {
            Some(1) => 0.2,
            Some(-1) => 0.3,
            Some(-4) => 0.4,
            Some(-16) => 0.5,
            Some(-64) => 0.6,
            Some(-256) => 0.7,
            Some(-1024) => 0.8,
            Some(-8192) => 0.9,
            _ => 1.0,
        };
        let slow_disk = |l: Option<i32>| fast_disk(l) + 4.0 * ratio(l);
        let levels = drive(&mut a, t, 1000, 12_000, slow_disk);
        assert!(share(&levels[1000..], Some(1)) > 0.85, "{levels:?}");
    }

    #[test]
    fn a_receive_thread_short_of_cpu_never_looks_up() {
        // Storing is cheapest; the kernel drops at every look. Once the
        // costs above are forgotten, a full queue alone would look up
        // again; drops do not (compressing more takes the CPU they lack).
        let cost = |l: Option<i32>| l.map_or(0.1, |l| 0.2 + 0.1 * f64::from(l + 8193).log2());
        let t = Instant::now();
        let mut a = Adaptive::new(1);
        let bytes = 4u64 << 20;
        let mut levels = Vec::new();
        for (i, now) in (0..6000).step_by(5).enumerate() {
            let busy = Duration::from_nanos((cost(a.level()) * bytes as f64) as u64);
            let s = Signals {
                fill: 0.0,
                kernel_drops: i as u64,
                saturated: false,
                work: Work { bytes, busy },
            };
            a.observe_all(s, ms(t, now));
            levels.push(a.level());
        }
        let bottom = levels
            .iter()
            .position(|l| l.is_none())
            .expect("reaches storing");
        assert!(bottom < 100, "{levels:?}");
        assert!(levels[bottom..].iter().all(|l| l.is_none()), "{levels:?}");
    }

    #[test]
    fn a_receive_thread_short_of_cpu_never_climbs_even_to_a_cheaper_rung() {
        // Storing is reached while the disk is fast; then writing gets
        // dear, so the rungs above, measured a moment ago, look cheaper
        // than storing. With the kernel dropping at every look the level
        // stays: compressing more would take the CPU the receive thread
        // lacks.
        let fast_disk = |l: Option<i32>| l.map_or(0.1, |l| 0.2 + 0.1 * f64::from(l + 8193).log2());
        let t = Instant::now();
        let mut a = Adaptive::new(1);
        drive(&mut a, t, 0, 1000, fast_disk);
        assert_eq!(a.level(), None);
        let bytes = 4u64 << 20;
        let mut levels = Vec::new();
        for (i, now) in (1000..3000).step_by(5).enumerate() {
            let cost = fast_disk(a.level()) + 4.0;
            let busy = Duration::from_nanos((cost * bytes as f64) as u64);
            let s = Signals {
                fill: 0.6,
                kernel_drops: i as u64 + 1,
                saturated: true,
                work: Work { bytes, busy },
            };
            a.observe_all(s, ms(t, now));
            levels.push(a.level());
        }
        assert!(levels.iter().all(|l| l.is_none()), "{levels:?}");
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
