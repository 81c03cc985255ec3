//! The level controller: what the adaptive zstd level ([`super::adaptive`])
//! is shown, and how often. It samples the archive queue's fill, the
//! kernel's drops, whether the receive thread is saturated and the cost of
//! the blocks written since the last look, and says when the level changes.

use std::time::{Duration, Instant};

use super::adaptive::{Adaptive, Signals, Work};
use crate::config::Codec;
use crate::ledger::Ledger;

/// How often the adaptive level looks at the queue and the kernel's drops.
const ADAPT_EVERY: Duration = Duration::from_millis(5);

/// The share of `recvmmsg` calls that filled their batch above which the
/// receive thread counts as saturated (at least this many calls between
/// two looks).
const SATURATED_SHARE: f64 = 0.9;
const SATURATED_MIN_CALLS: u64 = 4;

/// The adaptive level, if any, and what it has been shown.
pub(super) struct LevelControl {
    /// The zstd level under load (`archive.adaptive`); `None` with other
    /// codecs or when turned off.
    adaptive: Option<Adaptive>,
    last_look: Option<Instant>,
    /// The receive thread's `recvmmsg` calls and full batches at the last
    /// look.
    last_receive_calls: (u64, u64),
    /// The blocks compressed and written since the last look: their input
    /// bytes and the time it took, the cost of the level in use.
    work: Work,
}

impl LevelControl {
    pub(super) fn new(codec: &Codec, adaptive: bool) -> LevelControl {
        LevelControl {
            adaptive: match *codec {
                Codec::Zstd { level } if adaptive => Some(Adaptive::new(level)),
                _ => None,
            },
            last_look: None,
            last_receive_calls: (0, 0),
            work: Work::default(),
        }
    }

    /// Whether a block about to be compressed at the level in use should
    /// be given up for a cheaper one: the queue is past half, or the kernel
    /// dropped datagrams since `drops_before`.
    pub(super) fn should_give_up(fill: f64, ledger: &Ledger, drops_before: u64) -> bool {
        fill >= super::adaptive::SEVERE_FILL || ledger.kernel_drops() > drops_before
    }

    /// Whether the level adapts, and so needs the cost of each block.
    #[inline]
    pub(super) fn adapts(&self) -> bool {
        self.adaptive.is_some()
    }

    /// Counts a block written: `bytes` of input in `busy` (compressing in
    /// CPU time, writing in wall time).
    #[inline]
    pub(super) fn add_work(&mut self, bytes: u64, busy: Duration) {
        self.work.bytes += bytes;
        self.work.busy += busy;
    }

    /// Shows the adaptive level the archive queue's `fill` and the
    /// `ledger`'s counters (at most every [`ADAPT_EVERY`]), and counts the
    /// time spent degraded. The new level (`None`: stored) and whether it
    /// is below the preferred one, when it changes.
    pub(super) fn observe(&mut self, fill: f64, ledger: &Ledger) -> Option<(Option<i32>, bool)> {
        let now = Instant::now();
        if self
            .last_look
            .is_some_and(|t| now.duration_since(t) < ADAPT_EVERY)
        {
            return None;
        }
        self.observe_now(fill, ledger)
    }

    /// [`LevelControl::observe`] at once, whenever the last look was: a
    /// block's compression was given up because the queue passed half or
    /// the kernel dropped, and the level must move before it is made again.
    pub(super) fn observe_now(
        &mut self,
        fill: f64,
        ledger: &Ledger,
    ) -> Option<(Option<i32>, bool)> {
        let a = self.adaptive.as_mut()?;
        let now = Instant::now();
        self.last_look = Some(now);
        let (calls, full) = ledger.receive_calls();
        let (calls0, full0) = std::mem::replace(&mut self.last_receive_calls, (calls, full));
        let (calls, full) = (calls.saturating_sub(calls0), full.saturating_sub(full0));
        let saturated =
            calls >= SATURATED_MIN_CALLS && full as f64 >= SATURATED_SHARE * calls as f64;
        let (changed, degraded_for) = a.observe_all(
            Signals {
                fill,
                kernel_drops: ledger.kernel_drops(),
                saturated,
                work: std::mem::take(&mut self.work),
            },
            now,
        );
        ledger.archive_degraded(degraded_for);
        changed.map(|level| (level, a.degraded()))
    }
}
