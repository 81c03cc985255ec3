//! Restart policy: exponential backoff with jitter, reset once a child has
//! stayed up, and a crash-loop window that parks a channel.
//!
//! Pure logic over instants, so tests drive it without processes or clocks.
//! Restart intensity is a sliding window of failure instants (as OTP and
//! saluki do): more than `max_restarts` failures within `restart_window`
//! park the channel for `cooldown`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Policy;

/// What to do after a child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    Restart { after: Duration },
    /// Too many failures: leave it parked until this instant.
    Park { until: Instant },
}

/// The failure history of one channel.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    failures: VecDeque<Instant>,
    /// Failures since the child last stayed up for `stable_after`.
    consecutive: u32,
}

impl Tracker {
    /// Records a failure at `now` of a child that had been up for `uptime`.
    /// `jitter` in [-1, 1] scales the ±20% randomisation (tests pass 0).
    pub fn on_failure(
        &mut self,
        now: Instant,
        uptime: Duration,
        policy: &Policy,
        jitter: f64,
    ) -> Decision {
        if uptime >= policy.stable_after {
            self.consecutive = 0;
        }
        self.failures.push_back(now);
        while let Some(&t) = self.failures.front() {
            if now.duration_since(t) > policy.restart_window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        if self.failures.len() > policy.max_restarts as usize {
            return Decision::Park {
                until: now + policy.cooldown,
            };
        }
        self.consecutive += 1;
        Decision::Restart {
            after: backoff(policy, self.consecutive, jitter),
        }
    }

    /// Forgets the history: after a cool-down, or when the configuration
    /// changed or an operator asked for a restart.
    pub fn reset(&mut self) {
        self.failures.clear();
        self.consecutive = 0;
    }

    /// Failures within the current window.
    pub fn recent_failures(&self) -> usize {
        self.failures.len()
    }
}

/// The delay before the `n`-th consecutive restart (n >= 1).
pub fn backoff(policy: &Policy, n: u32, jitter: f64) -> Duration {
    let base = policy.backoff_initial.as_secs_f64()
        * policy
            .backoff_factor
            .powi(n.saturating_sub(1).min(64) as i32);
    let capped = base.min(policy.backoff_max.as_secs_f64());
    let jittered = capped * (1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
    Duration::from_secs_f64(jittered.min(policy.backoff_max.as_secs_f64()).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            backoff_factor: 2.0,
            stable_after: Duration::from_secs(30),
            max_restarts: 3,
            restart_window: Duration::from_secs(60),
            cooldown: Duration::from_secs(300),
            ..Policy::default()
        }
    }

    fn after(d: Decision) -> Duration {
        match d {
            Decision::Restart { after } => after,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn delays_grow_by_the_factor_up_to_the_cap() {
        let p = Policy {
            max_restarts: 100,
            ..policy()
        };
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let delays: Vec<u128> = (0..7)
            .map(|i| {
                after(t.on_failure(t0 + Duration::from_secs(i), Duration::ZERO, &p, 0.0))
                    .as_millis()
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn more_than_max_restarts_in_the_window_parks() {
        let p = policy();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        for i in 0..3 {
            after(t.on_failure(t0 + Duration::from_secs(i), Duration::ZERO, &p, 0.0));
        }
        assert_eq!(
            t.on_failure(t0 + Duration::from_secs(3), Duration::ZERO, &p, 0.0),
            Decision::Park {
                until: t0 + Duration::from_secs(303)
            }
        );
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let p = policy();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        for i in 0..20u64 {
            // One failure every 25 s: never more than 3 within 60 s.
            let d = t.on_failure(
                t0 + Duration::from_secs(25 * i),
                Duration::from_secs(1),
                &p,
                0.0,
            );
            assert!(matches!(d, Decision::Restart { .. }), "failure {i}: {d:?}");
        }
        assert!(t.recent_failures() <= 3);
    }

    #[test]
    fn a_child_that_stayed_up_resets_the_backoff() {
        let p = Policy {
            max_restarts: 100,
            ..policy()
        };
        let mut t = Tracker::default();
        let t0 = Instant::now();
        after(t.on_failure(t0, Duration::ZERO, &p, 0.0));
        after(t.on_failure(t0, Duration::ZERO, &p, 0.0));
        assert_eq!(
            after(t.on_failure(t0, Duration::ZERO, &p, 0.0)).as_millis(),
            400
        );
        assert_eq!(
            after(t.on_failure(t0, Duration::from_secs(31), &p, 0.0)).as_millis(),
            100
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_the_cap() {
        let p = policy();
        assert_eq!(backoff(&p, 1, 1.0).as_millis(), 120);
        assert_eq!(backoff(&p, 1, -1.0).as_millis(), 80);
        assert_eq!(backoff(&p, 30, 1.0), p.backoff_max);
    }

    #[test]
    fn reset_forgets_everything() {
        let p = policy();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            t.on_failure(t0, Duration::ZERO, &p, 0.0);
        }
        t.reset();
        assert_eq!(
            after(t.on_failure(t0, Duration::ZERO, &p, 0.0)).as_millis(),
            100
        );
    }
}
