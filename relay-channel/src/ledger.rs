//! The channel's ledger: every counter of the stats line, changed only
//! through [`Ledger`]'s methods, each a whole transition that keeps
//! `received = archived + rejected + archive_dropped + in_flight`
//! (checked by a debug assertion after each change).
//!
//! The counters live behind one mutex that each thread takes once per batch
//! (not per datagram): the receive thread gathers a batch's counts without
//! it ([`BatchCounts`]) and applies them at once, so every snapshot, and so
//! every stats line, balances exactly.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::reject::RejectReason;
use crate::status::{Counters, Stats, StatusLine};

/// The counters of one channel, and its health flags.
#[derive(Debug)]
pub(crate) struct Ledger {
    accounts: Mutex<Accounts>,
    /// False while the archive cannot write (disk full, folder gone, ...).
    archive_healthy: AtomicBool,
    /// False while a multicast join waits for its interface.
    joined: AtomicBool,
    /// The zstd level in use; [`NO_LEVEL`] with other codecs or while
    /// blocks are stored.
    archive_level: AtomicI64,
    archive_stored: AtomicBool,
    /// `recvmmsg` calls that returned datagrams, and those that filled the
    /// whole batch: the receive thread's load, for the adaptive archive.
    receive_calls: AtomicU64,
    receive_full: AtomicU64,
    /// No kernel drop counter on the receive socket.
    kernel_drops_absent: AtomicBool,
    /// The longest receive gap since the last stats line, in ns.
    receive_gap_max_ns: AtomicU64,
}

/// [`Ledger::archive_level`] when there is none.
const NO_LEVEL: i64 = i64::MIN;

/// The counters as kept: the stats line's [`Counters`] and the rejections
/// by reason, in order of first appearance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Accounts {
    counters: Counters,
    rejected_by_reason: Vec<(RejectReason, u64)>,
}

/// What one received batch adds to the ledger, gathered by the receive
/// thread without the lock and applied by [`Ledger::received`].
#[derive(Debug, Default)]
pub(crate) struct BatchCounts {
    pub(crate) datagrams: u64,
    pub(crate) bytes: u64,
    /// Rejections by reason, in order of first appearance.
    rejected: Vec<(RejectReason, u64)>,
    /// Valid datagrams put in the archive's batch: now in flight.
    pub(crate) to_archive: u64,
    /// Valid datagrams with no batch to go in: dropped from the archive.
    pub(crate) not_archived: u64,
    pub(crate) quarantine_dropped: u64,
    pub(crate) forwarded_full: u64,
    pub(crate) send_errors_full: u64,
    pub(crate) forwarded_decimated: u64,
    pub(crate) send_errors_decimated: u64,
    /// The kernel's drop counter for the socket, a running total.
    pub(crate) kernel_drops: u64,
}

impl BatchCounts {
    pub(crate) fn new() -> BatchCounts {
        BatchCounts {
            rejected: Vec::with_capacity(16),
            ..BatchCounts::default()
        }
    }

    /// Back to zero for the next batch (keeping its memory).
    pub(crate) fn clear(&mut self) {
        let mut rejected = std::mem::take(&mut self.rejected);
        rejected.clear();
        *self = BatchCounts {
            rejected,
            ..BatchCounts::default()
        };
    }

    /// One datagram of `len` bytes read from the socket.
    pub(crate) fn datagram(&mut self, len: usize) {
        self.datagrams += 1;
        self.bytes += len as u64;
    }

    /// One datagram rejected for `reason`.
    pub(crate) fn rejected(&mut self, reason: RejectReason) {
        add_reason(&mut self.rejected, reason, 1);
    }
}

fn add_reason(by_reason: &mut Vec<(RejectReason, u64)>, reason: RejectReason, n: u64) {
    match by_reason.iter_mut().find(|(r, _)| *r == reason) {
        Some((_, c)) => *c += n,
        None => by_reason.push((reason, n)),
    }
}

impl Ledger {
    pub(crate) fn new() -> Ledger {
        Ledger {
            accounts: Mutex::new(Accounts::default()),
            archive_healthy: AtomicBool::new(true),
            joined: AtomicBool::new(true),
            archive_level: AtomicI64::new(NO_LEVEL),
            archive_stored: AtomicBool::new(false),
            receive_calls: AtomicU64::new(0),
            receive_full: AtomicU64::new(0),
            kernel_drops_absent: AtomicBool::new(false),
            receive_gap_max_ns: AtomicU64::new(0),
        }
    }

    /// The receive socket has no kernel drop counter (no `SO_RXQ_OVFL`: the
    /// portable I/O path, or a kernel that refused it): the stats line
    /// writes `kernel_drops` as `null`, not as a 0 nobody measured.
    pub(crate) fn set_kernel_drops_absent(&self) {
        self.kernel_drops_absent.store(true, Ordering::Relaxed);
    }

    /// Locks the counters; a thread that panicked while holding them left
    /// plain integers behind, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one change under the lock, then checks the identity.
    fn change(&self, f: impl FnOnce(&mut Accounts)) {
        let mut t = self.lock();
        f(&mut t);
        debug_assert!(
            t.counters.balanced(),
            "received = archived + rejected + archive_dropped + in_flight fails: {:?}",
            t.counters
        );
    }

    /// One received batch: every datagram is rejected, in flight to the
    /// archive, or dropped from it.
    pub(crate) fn received(&self, b: &BatchCounts) {
        self.change(|t| {
            let c = &mut t.counters;
            c.received += b.datagrams;
            c.bytes_received += b.bytes;
            for &(reason, n) in &b.rejected {
                c.rejected += n;
                add_reason(&mut t.rejected_by_reason, reason, n);
            }
            let c = &mut t.counters;
            c.in_flight += b.to_archive;
            c.archive_dropped += b.not_archived;
            c.quarantine_dropped += b.quarantine_dropped;
            c.forwarded_full += b.forwarded_full;
            c.send_errors_full += b.send_errors_full;
            c.forwarded_decimated += b.forwarded_decimated;
            c.send_errors_decimated += b.send_errors_decimated;
            c.kernel_drops = b.kernel_drops;
        });
    }

    /// `n` in-flight datagrams written to an archive file.
    pub(crate) fn archived(&self, n: u64) {
        self.change(|t| {
            t.counters.in_flight -= n;
            t.counters.archived += n;
        });
    }

    /// `n` in-flight datagrams the archive could not take (queue full, disk
    /// trouble).
    pub(crate) fn archive_dropped(&self, n: u64) {
        self.change(|t| {
            t.counters.in_flight -= n;
            t.counters.archive_dropped += n;
        });
    }

    /// An archive open, write, close or rename failed.
    pub(crate) fn archive_error(&self) {
        self.change(|t| t.counters.archive_errors += 1);
    }

    /// An archive file was closed and renamed to `.avro`.
    pub(crate) fn file_closed(&self) {
        self.change(|t| t.counters.files_closed += 1);
    }

    /// Bytes of closed files a hold covers, as of the last retention pass.
    pub(crate) fn set_held_bytes(&self, bytes: u64) {
        self.change(|t| t.counters.held_bytes = bytes);
    }

    /// The quarantine thread wrote `kept` rejected datagrams and could not
    /// write `dropped`.
    pub(crate) fn quarantine_written(&self, kept: u64, dropped: u64) {
        self.change(|t| {
            t.counters.quarantined += kept;
            t.counters.quarantine_dropped += dropped;
        });
    }

    /// `n` rejected datagrams not handed to the quarantine.
    pub(crate) fn quarantine_dropped(&self, n: u64) {
        self.change(|t| t.counters.quarantine_dropped += n);
    }

    /// The receive socket failed other than by a timeout.
    pub(crate) fn receive_error(&self) {
        self.change(|t| t.counters.receive_errors += 1);
    }

    /// Sets the archive's health; returns what it was.
    pub(crate) fn set_archive_healthy(&self, healthy: bool) -> bool {
        self.archive_healthy.swap(healthy, Ordering::Relaxed)
    }

    /// The archive's compression: `Some(level)` with zstd, `None` while it
    /// stores blocks; `zstd` false for other codecs.
    pub(crate) fn set_archive_level(&self, zstd: bool, level: Option<i32>) {
        let v = match (zstd, level) {
            (true, Some(l)) => i64::from(l),
            _ => NO_LEVEL,
        };
        self.archive_level.store(v, Ordering::Relaxed);
        self.archive_stored
            .store(zstd && level.is_none(), Ordering::Relaxed);
    }

    /// Time the archive spent below its preferred level.
    pub(crate) fn archive_degraded(&self, d: std::time::Duration) {
        let ms = d.as_millis() as u64;
        if ms > 0 {
            self.change(|t| t.counters.archive_degraded_ms += ms);
        }
    }

    /// One `recvmmsg` call that returned datagrams; `full` if it filled
    /// the batch.
    pub(crate) fn note_receive_call(&self, full: bool) {
        self.receive_calls.fetch_add(1, Ordering::Relaxed);
        if full {
            self.receive_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A gap between a receive call that left data in the socket and the
    /// next call.
    pub(crate) fn note_receive_gap(&self, gap: std::time::Duration) {
        let ns = u64::try_from(gap.as_nanos()).unwrap_or(u64::MAX);
        self.receive_gap_max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// `recvmmsg` calls so far, and how many filled their batch.
    pub(crate) fn receive_calls(&self) -> (u64, u64) {
        (
            self.receive_calls.load(Ordering::Relaxed),
            self.receive_full.load(Ordering::Relaxed),
        )
    }

    /// The kernel's drops on the receive socket so far.
    pub(crate) fn kernel_drops(&self) -> u64 {
        self.lock().counters.kernel_drops
    }

    /// Sets whether the multicast membership stands.
    pub(crate) fn set_joined(&self, joined: bool) {
        self.joined.store(joined, Ordering::Relaxed);
    }

    /// The `stats` line as of now; `last` on the one written as the relay
    /// stops.
    pub(crate) fn stats_line(&self, channel: &str, last: bool) -> StatusLine {
        let mut t = self.lock().clone();
        t.counters.receive_gap_max_us = self.receive_gap_max_ns.swap(0, Ordering::Relaxed) / 1_000;
        StatusLine::Stats(Stats {
            channel: channel.into(),
            counters: t.counters,
            rejected_by_reason: t
                .rejected_by_reason
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), *n))
                .collect(),
            archive_healthy: self.archive_healthy.load(Ordering::Relaxed),
            joined: self.joined.load(Ordering::Relaxed),
            archive_level: match self.archive_level.load(Ordering::Relaxed) {
                NO_LEVEL => None,
                l => i32::try_from(l).ok(),
            },
            archive_stored: self.archive_stored.load(Ordering::Relaxed),
            last,
            kernel_drops_absent: self.kernel_drops_absent.load(Ordering::Relaxed),
        })
    }

    #[cfg(test)]
    pub(crate) fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Reason;
    use std::time::Duration;

    fn batch(valid: u64, rejected: &[RejectReason], not_archived: u64) -> BatchCounts {
        let mut b = BatchCounts::new();
        for _ in 0..valid + not_archived {
            b.datagram(10);
        }
        for &r in rejected {
            b.datagram(3);
            b.rejected(r);
        }
        b.to_archive = valid;
        b.not_archived = not_archived;
        b
    }

    #[test]
    fn every_transition_keeps_the_identity() {
        let l = Ledger::new();
        l.received(&batch(5, &[RejectReason::Oversized], 2));
        let c = l.counters();
        assert_eq!((c.received, c.in_flight, c.rejected), (8, 5, 1));
        assert_eq!((c.archive_dropped, c.bytes_received), (2, 73));
        l.archived(3);
        l.archive_dropped(2);
        let c = l.counters();
        assert!(c.balanced());
        assert_eq!((c.archived, c.archive_dropped, c.in_flight), (3, 4, 0));
        l.archive_error();
        l.file_closed();
        l.quarantine_written(1, 2);
        l.quarantine_dropped(3);
        l.receive_error();
        let c = l.counters();
        assert_eq!(
            (c.archive_errors, c.files_closed, c.receive_errors),
            (1, 1, 1)
        );
        assert_eq!((c.quarantined, c.quarantine_dropped), (1, 5));
        assert!(c.balanced());
    }

    #[test]
    fn rejections_are_counted_by_reason_in_order_of_first_appearance() {
        let l = Ledger::new();
        let bad = RejectReason::Invalid(Reason::Truncated);
        l.received(&batch(0, &[bad, RejectReason::WrongHeader, bad], 0));
        l.received(&batch(1, &[RejectReason::WrongHeader], 0));
        let t = l.lock().clone();
        assert_eq!(
            t.rejected_by_reason,
            [(bad, 2), (RejectReason::WrongHeader, 2)]
        );
        assert_eq!(t.counters.rejected, 4);
    }

    #[test]
    fn batch_counts_clear_for_the_next_batch() {
        let mut b = batch(2, &[RejectReason::Oversized], 1);
        b.kernel_drops = 7;
        b.clear();
        assert_eq!(b.datagrams + b.bytes + b.to_archive + b.kernel_drops, 0);
        assert!(b.rejected.is_empty() && b.rejected.capacity() >= 16);
    }

    #[test]
    fn the_kernel_s_drop_counter_is_a_running_total() {
        let l = Ledger::new();
        let mut b = batch(1, &[], 0);
        b.kernel_drops = 4;
        l.received(&b);
        b.kernel_drops = 6;
        l.received(&b);
        assert_eq!(l.counters().kernel_drops, 6);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "fails")]
    fn a_batch_that_does_not_add_up_is_caught() {
        let l = Ledger::new();
        let mut b = batch(2, &[], 0);
        b.to_archive = 1;
        l.received(&b);
    }

    #[test]
    fn the_longest_receive_gap_is_reported_once_then_starts_again() {
        let l = Ledger::new();
        l.note_receive_gap(Duration::from_micros(300));
        l.note_receive_gap(Duration::from_micros(12_000));
        l.note_receive_gap(Duration::from_micros(40));
        let gap = |l: &Ledger| match l.stats_line("ch", false) {
            StatusLine::Stats(s) => s.counters.receive_gap_max_us,
            _ => panic!("not a stats line"),
        };
        assert_eq!(gap(&l), 12_000);
        assert_eq!(gap(&l), 0);
        l.note_receive_gap(Duration::from_micros(7));
        assert_eq!(gap(&l), 7);
    }

    #[test]
    fn stats_line_carries_every_counter() {
        let l = Ledger::new();
        l.received(&batch(3, &[RejectReason::Invalid(Reason::Truncated); 2], 0));
        l.archived(2);
        let StatusLine::Stats(v) = l.stats_line("ch", true) else {
            panic!("not a stats line")
        };
        assert_eq!(v.channel, "ch");
        assert_eq!(v.counters.received, 5);
        assert_eq!(v.counters.rejected, 2);
        assert_eq!(v.rejected_by_reason["truncated"], 2);
        assert!(v.last && v.archive_healthy && v.joined);
        assert!(v.counters.balanced());
        assert!(l.set_archive_healthy(false));
        l.set_joined(false);
        let StatusLine::Stats(v) = l.stats_line("ch", false) else {
            panic!("not a stats line")
        };
        assert!(!v.last && !v.archive_healthy && !v.joined);
    }
}
