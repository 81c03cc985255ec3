//! Logging set-up shared by the binaries: tracing to stderr, filtered by
//! `RUST_LOG` (default `info`); and the rate limit hot-path logs go through.

use std::time::{Duration, Instant};

/// Set by the orchestrator for its children: they log without timestamps,
/// since the orchestrator stamps each line it forwards.
pub const SUPERVISED_ENV: &str = "SPEEDDATA_SUPERVISED";

/// Installs the global subscriber.
pub fn init() {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A supervisor that went away closes our stderr; logging must not
        // then panic (tracing-subscriber reports write errors with
        // eprintln!, which panics on a closed stderr) and stop a clean
        // shutdown.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    if std::env::var_os(SUPERVISED_ENV).is_some() {
        logs.without_time().with_target(false).init();
    } else {
        logs.init();
    }
}

/// Lets through at most `burst` events per `period`, counting the rest, so
/// trouble on the hot path is logged without flooding the log.
#[derive(Debug)]
pub(crate) struct RateLimit {
    period: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) fn new(burst: u32, period: Duration) -> RateLimit {
        RateLimit {
            period,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed_since_last_allowed)` when this event may be logged.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
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

/// A condition that lasts (a full disk, a folder gone): logged once when it
/// starts, as a count at most once per `period` while it lasts, and once
/// when it ends, instead of a line per occurrence.
#[derive(Debug)]
pub(crate) struct Condition {
    period: Duration,
    since: Option<Instant>,
    last_report: Option<Instant>,
    /// Occurrences, and what they lost, since the last report.
    times: u64,
    lost: u64,
    /// Since it started.
    lost_in_all: u64,
}

/// What a [`Condition`] says to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// It has just started.
    Started,
    /// It goes on: `times` occurrences losing `lost` since the last report.
    Ongoing {
        times: u64,
        lost: u64,
        for_: Duration,
    },
    /// Nothing to log now.
    Quiet,
}

impl Condition {
    pub(crate) fn new(period: Duration) -> Condition {
        Condition {
            period,
            since: None,
            last_report: None,
            times: 0,
            lost: 0,
            lost_in_all: 0,
        }
    }

    /// The condition occurred (again), losing `lost`.
    pub(crate) fn occurred(&mut self, lost: u64, now: Instant) -> Report {
        self.lost_in_all += lost;
        let Some(since) = self.since else {
            self.since = Some(now);
            self.last_report = Some(now);
            return Report::Started;
        };
        self.times += 1;
        self.lost += lost;
        if self
            .last_report
            .is_some_and(|t| now.saturating_duration_since(t) < self.period)
        {
            return Report::Quiet;
        }
        self.last_report = Some(now);
        Report::Ongoing {
            times: std::mem::take(&mut self.times),
            lost: std::mem::take(&mut self.lost),
            for_: now.saturating_duration_since(since),
        }
    }

    /// The condition is over: how long it lasted and what it lost in all,
    /// if it was on.
    pub(crate) fn ended(&mut self, now: Instant) -> Option<(Duration, u64)> {
        let since = self.since.take()?;
        let lost = std::mem::take(&mut self.lost_in_all);
        self.times = 0;
        self.lost = 0;
        self.last_report = None;
        Some((now.saturating_duration_since(since), lost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_condition_is_logged_at_its_start_each_minute_and_its_end() {
        let mut c = Condition::new(Duration::from_secs(60));
        let t = Instant::now();
        let s = |n| t + Duration::from_secs(n);
        assert_eq!(c.ended(t), None);
        assert_eq!(c.occurred(589, t), Report::Started);
        for n in 1..60 {
            assert_eq!(c.occurred(10, s(n)), Report::Quiet, "{n}");
        }
        assert_eq!(
            c.occurred(10, s(60)),
            Report::Ongoing {
                times: 60,
                lost: 600,
                for_: Duration::from_secs(60)
            }
        );
        assert_eq!(c.occurred(1, s(61)), Report::Quiet);
        assert_eq!(c.ended(s(70)), Some((Duration::from_secs(70), 1190)));
        assert_eq!(c.ended(s(71)), None);
        assert_eq!(c.occurred(3, s(80)), Report::Started);
    }

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
}
