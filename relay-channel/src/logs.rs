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
}
