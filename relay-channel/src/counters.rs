//! The channel's counters, shared by its threads, and the JSON lines the
//! relay writes on stdout for a supervisor.
//!
//! Counters live behind one mutex that each thread takes once per batch (not
//! per datagram), so a snapshot is always consistent:
//! `received = archived + rejected + archive_dropped + in_flight` holds on
//! every stats line, exactly.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Every counter of one channel. Monotonic except `in_flight`.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams read from the receive socket.
    pub received: u64,
    /// Bytes of those datagrams.
    pub bytes_received: u64,
    /// Records written to an archive file (a whole block written).
    pub archived: u64,
    /// Datagrams rejected (not exactly one datum of the schema, a sender not
    /// allowed, a wrong header, too long): never archived nor re-emitted.
    pub rejected: u64,
    /// Valid datagrams the archive could not take (queue full, disk trouble).
    pub archive_dropped: u64,
    /// Valid datagrams on their way to disk: queued or in the open block.
    pub in_flight: u64,
    /// Datagrams sent on the full-rate output.
    pub forwarded_full: u64,
    /// Datagrams sent on the decimated output.
    pub forwarded_decimated: u64,
    /// Datagrams the kernel refused to send on the full-rate output.
    pub send_errors_full: u64,
    /// Datagrams the kernel refused to send on the decimated output.
    pub send_errors_decimated: u64,
    /// Archive files closed (renamed from `.avro.part` to `.avro`).
    pub files_closed: u64,
    /// Archive write, open or close failures.
    pub archive_errors: u64,
    /// Rejected datagrams written to the quarantine file.
    pub quarantined: u64,
    /// Rejected datagrams not written to quarantine (queue full, cap, error).
    pub quarantine_dropped: u64,
    /// Receive-socket errors other than timeouts.
    pub receive_errors: u64,
    /// The kernel's count of datagrams dropped on the receive socket
    /// (`SO_RXQ_OVFL`): they never reached the relay, so they are not part
    /// of `received`.
    pub kernel_drops: u64,
    /// Rejections by reason, `(label, count)`, in order of first appearance.
    pub rejected_by_reason: Vec<(&'static str, u64)>,
}

impl Counters {
    pub fn reject(&mut self, reason: &'static str, n: u64) {
        self.rejected += n;
        match self
            .rejected_by_reason
            .iter_mut()
            .find(|(r, _)| *r == reason)
        {
            Some((_, c)) => *c += n,
            None => self.rejected_by_reason.push((reason, n)),
        }
    }

    /// Whether the accounting identity holds.
    pub fn balanced(&self) -> bool {
        self.received == self.archived + self.rejected + self.archive_dropped + self.in_flight
    }
}

/// State shared by the receive thread, the archive thread and control.
#[derive(Debug, Default)]
pub struct Shared {
    counters: Mutex<Counters>,
    /// False while the archive cannot write (disk full, folder gone, ...).
    pub archive_healthy: AtomicBool,
    /// False while a multicast join waits for its interface.
    pub joined: AtomicBool,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            counters: Mutex::new(Counters::default()),
            archive_healthy: AtomicBool::new(true),
            joined: AtomicBool::new(true),
        }
    }

    /// Locks the counters; a thread that panicked while holding them left
    /// plain integers behind, so poisoning is ignored.
    pub fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Counters {
        self.counters().clone()
    }

    pub fn healthy(&self) -> bool {
        self.archive_healthy.load(Ordering::Relaxed)
    }
}

/// Writes one JSON object as one line on stdout. A supervisor that went
/// away (closed pipe) is not the relay's problem: errors are ignored.
pub fn emit(value: &serde_json::Value) {
    let mut line = value.to_string();
    line.push('\n');
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = lock.write_all(line.as_bytes());
    let _ = lock.flush();
}

/// The `stats` line.
pub fn stats_line(channel: &str, shared: &Shared, last: bool) -> serde_json::Value {
    let c = shared.snapshot();
    let mut v = serde_json::to_value(&c).expect("counters serialize");
    let obj = v.as_object_mut().expect("counters are an object");
    let reasons: serde_json::Map<String, serde_json::Value> = c
        .rejected_by_reason
        .iter()
        .map(|(r, n)| (r.to_string(), (*n).into()))
        .collect();
    obj.insert("rejected_by_reason".into(), reasons.into());
    obj.insert("archive_healthy".into(), shared.healthy().into());
    obj.insert(
        "joined".into(),
        shared.joined.load(Ordering::Relaxed).into(),
    );
    obj.insert("final".into(), last.into());
    let mut line = serde_json::Map::new();
    line.insert("event".into(), "stats".into());
    line.insert("channel".into(), channel.into());
    line.append(obj);
    line.into()
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
        let v = stats_line("ch", &s, true);
        assert_eq!(v["event"], "stats");
        assert_eq!(v["channel"], "ch");
        assert_eq!(v["received"], 5);
        assert_eq!(v["rejected_by_reason"]["truncated"], 2);
        assert_eq!(v["final"], true);
        assert!(s.snapshot().balanced());
    }
}
