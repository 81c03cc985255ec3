//! The archive feed: valid datums copied into the pending batch, handed to
//! the archive thread when full or old enough, and accounted for.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::handover::{Batch, ToArchive, BATCH_BYTES, HAND_OVER_AFTER};
use crate::ledger::{BatchCounts, Ledger};
use crate::logs::RateLimit;

/// How long the feed waits for room in the queue at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The receive thread's side of the archive.
pub(crate) struct ArchiveFeed {
    queue: ToArchive,
    /// The batch being filled; its datums already count as `in_flight`.
    /// Handed over when full or [`HAND_OVER_AFTER`] old, so a slow stream
    /// does not spend a queue slot per datagram.
    pending: Option<Batch>,
    pending_since: Option<Instant>,
    /// Batches filled during [`ArchiveFeed::push`], in order, handed over
    /// by the next [`ArchiveFeed::hand_over_if_due`] (after the ledger has
    /// counted their datums in flight).
    full: Vec<Batch>,
    /// Emptied batches the queue refused, taken before the pool's.
    spare: Vec<Batch>,
    ledger: Arc<Ledger>,
    drop_log: RateLimit,
    channel: String,
}

impl ArchiveFeed {
    pub(crate) fn new(queue: ToArchive, ledger: Arc<Ledger>, channel: &str) -> ArchiveFeed {
        ArchiveFeed {
            queue,
            pending: None,
            pending_since: None,
            full: Vec::new(),
            spare: Vec::new(),
            ledger,
            drop_log: RateLimit::new(1, Duration::from_secs(60)),
            channel: channel.to_string(),
        }
    }

    /// An empty batch: a refused one emptied, or one from the pool.
    fn empty_batch(&mut self) -> Option<Batch> {
        self.spare.pop().or_else(|| self.queue.take())
    }

    /// Copies a batch's valid datums, which arrived at `arrived` (wall
    /// clock), into the pending batch (`to_archive`), or counts them as
    /// `not_archived` when every batch is taken.
    ///
    /// A batch ends with the datum that brings it to [`BATCH_BYTES`]; the
    /// datums after it start the next one. So a full batch is exactly one
    /// archive block of the default size, which the archive writes
    /// straight from the batch instead of copying it into a block first.
    pub(crate) fn push<'a>(
        &mut self,
        datums: impl ExactSizeIterator<Item = &'a [u8]>,
        now: Instant,
        arrived: SystemTime,
        counts: &mut BatchCounts,
    ) {
        let mut left = datums.len() as u64;
        if left == 0 {
            return;
        }
        let Some(mut batch) = self.pending.take().or_else(|| self.empty_batch()) else {
            counts.not_archived += left;
            return;
        };
        batch.mark_arrival(arrived);
        for d in datums {
            if batch.bytes() >= BATCH_BYTES {
                let Some(mut next) = self.empty_batch() else {
                    break;
                };
                next.mark_arrival(arrived);
                self.full.push(std::mem::replace(&mut batch, next));
                self.pending_since = None;
            }
            batch.push(d);
            left -= 1;
            counts.to_archive += 1;
        }
        // Every batch is taken: the rest wait for none.
        counts.not_archived += left;
        if !batch.is_empty() && self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
        self.pending = Some(batch);
    }

    /// Hands over the batches filled since the last call, and the pending
    /// batch when it is full or old enough (or, with `idle`, whenever it
    /// holds anything). Returns how many datagrams the full queue refused
    /// (counted as `archive_dropped`).
    pub(crate) fn hand_over_if_due(&mut self, now: Instant, idle: bool) -> u64 {
        let mut refused = 0;
        for b in std::mem::take(&mut self.full) {
            refused += self.send(b);
        }
        let Some(b) = &self.pending else {
            return refused;
        };
        let due = idle
            || b.bytes() >= BATCH_BYTES
            || self
                .pending_since
                .is_some_and(|t| now.duration_since(t) >= HAND_OVER_AFTER);
        if b.is_empty() || !due {
            return refused;
        }
        self.pending_since = None;
        let b = self.pending.take().expect("checked above");
        refused + self.send(b)
    }

    /// Queues `b` without waiting; when the queue is full, counts its
    /// datagrams as `archive_dropped`, keeps it emptied for reuse and
    /// returns how many.
    fn send(&mut self, b: Batch) -> u64 {
        match self.queue.try_send(b) {
            Ok(()) => 0,
            Err(mut b) => {
                let n = b.len() as u64;
                self.ledger.archive_dropped(n);
                b.clear();
                self.spare.push(b);
                n
            }
        }
    }

    /// Logs, rate-limited, that `dropped` datagrams were not archived.
    pub(crate) fn log_dropped(&mut self, dropped: u64, now: Instant) {
        if dropped == 0 {
            return;
        }
        if let Some(suppressed) = self.drop_log.allow(now) {
            tracing::warn!(
                channel = %self.channel, dropped, suppressed,
                "archive queue full: datagrams not archived (still forwarded)"
            );
        }
    }

    /// At the end: hands over what is pending, waiting for room rather than
    /// dropping while the archive thread drains.
    pub(crate) fn close(&mut self) {
        let pending = self.pending.take().filter(|b| !b.is_empty());
        for b in std::mem::take(&mut self.full).into_iter().chain(pending) {
            if let Err(b) = self.queue.send_timeout(b, CLOSE_WAIT) {
                self.ledger.archive_dropped(b.len() as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::{archive_queue, queue_slots, ArchiveInbox};

    fn feed() -> (ArchiveFeed, ArchiveInbox, Arc<Ledger>) {
        let ledger = Arc::new(Ledger::new());
        let (tx, inbox) = archive_queue(0, 4);
        (ArchiveFeed::new(tx, ledger.clone(), "ch"), inbox, ledger)
    }

    /// Pushes `datums` as one received batch and accounts for it.
    fn receive(f: &mut ArchiveFeed, l: &Ledger, datums: &[&[u8]], now: Instant) -> BatchCounts {
        let mut c = BatchCounts::new();
        for d in datums {
            c.datagram(d.len());
        }
        f.push(datums.iter().copied(), now, SystemTime::now(), &mut c);
        l.received(&c);
        c
    }

    #[test]
    fn datums_wait_until_the_batch_is_old_enough() {
        let (mut f, inbox, l) = feed();
        let t0 = Instant::now();
        let c = receive(&mut f, &l, &[b"a", b"bc"], t0);
        assert_eq!((c.to_archive, c.not_archived), (2, 0));
        assert_eq!(f.hand_over_if_due(t0, false), 0);
        assert!(inbox.recv_timeout(Duration::ZERO).is_err());
        assert_eq!(f.hand_over_if_due(t0 + HAND_OVER_AFTER, false), 0);
        let b = inbox.recv_timeout(Duration::ZERO).unwrap();
        assert_eq!(b.records().collect::<Vec<_>>(), [&b"a"[..], b"bc"]);
        l.archived(2);
        assert!(l.counters().balanced());
    }

    #[test]
    fn a_full_batch_or_idle_hands_over_at_once() {
        let (mut f, inbox, l) = feed();
        let now = Instant::now();
        let big = vec![0u8; BATCH_BYTES];
        receive(&mut f, &l, &[&big], now);
        f.hand_over_if_due(now, false);
        assert_eq!(inbox.recv_timeout(Duration::ZERO).unwrap().len(), 1);
        receive(&mut f, &l, &[b"x"], now);
        f.hand_over_if_due(now, true);
        assert_eq!(inbox.recv_timeout(Duration::ZERO).unwrap().len(), 1);
        // Nothing pending: nothing handed over, even idle.
        receive(&mut f, &l, &[], now);
        f.hand_over_if_due(now, true);
        assert!(inbox.recv_timeout(Duration::ZERO).is_err());
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_the_path_goes_on() {
        let (mut f, inbox, l) = feed();
        let now = Instant::now();
        let slots = queue_slots(0);
        let mut refused = 0;
        for _ in 0..slots + 1 {
            receive(&mut f, &l, &[b"a", b"b"], now);
            refused += f.hand_over_if_due(now, true);
        }
        assert_eq!(refused, 2, "the batch past the queue's slots");
        // The archive takes two batches and keeps writing them: room for two.
        let writing = [
            inbox.recv_timeout(Duration::ZERO),
            inbox.recv_timeout(Duration::ZERO),
        ];
        receive(&mut f, &l, &[b"c"], now);
        assert_eq!(f.hand_over_if_due(now, true), 0);
        receive(&mut f, &l, &[b"d"], now);
        assert_eq!(f.hand_over_if_due(now, true), 0);
        // Every batch of the pool is queued or being written.
        let c = receive(&mut f, &l, &[b"e"], now);
        assert_eq!((c.to_archive, c.not_archived), (0, 1));
        let counts = l.counters();
        assert_eq!(counts.archive_dropped, 3);
        assert_eq!(counts.in_flight, slots as u64 * 2 + 2);
        assert!(counts.balanced());
        drop(writing);
    }

    #[test]
    fn a_batch_ends_with_the_datum_that_fills_it() {
        let (mut f, inbox, l) = feed();
        let now = Instant::now();
        let quarter = vec![7u8; BATCH_BYTES / 4 + 1];
        // One receive call of six datums: the fourth brings the batch to
        // BATCH_BYTES, the fifth and sixth start the next one.
        let datums: Vec<&[u8]> = vec![&quarter; 6];
        let c = receive(&mut f, &l, &datums, now);
        assert_eq!((c.to_archive, c.not_archived), (6, 0));
        assert_eq!(f.hand_over_if_due(now, false), 0);
        let first = inbox.recv_timeout(Duration::ZERO).unwrap();
        assert_eq!(first.len(), 4);
        let last = first.records().last().unwrap().len();
        assert!(first.bytes() >= BATCH_BYTES && first.bytes() - last < BATCH_BYTES);
        assert!(first.records_with_arrival().all(|(_, at)| at.is_some()));
        // The rest waits until it is old enough.
        assert!(inbox.recv_timeout(Duration::ZERO).is_err());
        f.hand_over_if_due(now + HAND_OVER_AFTER, false);
        let second = inbox.recv_timeout(Duration::ZERO).unwrap();
        assert_eq!(second.len(), 2);
        assert!(second.records_with_arrival().all(|(_, at)| at.is_some()));
        l.archived(6);
        assert!(l.counters().balanced());
    }

    #[test]
    fn a_receive_call_that_fills_every_batch_left_counts_the_rest_not_archived() {
        let ledger = Arc::new(Ledger::new());
        let (tx, inbox) = archive_queue(0, 4);
        let mut f = ArchiveFeed::new(tx, ledger.clone(), "ch");
        let now = Instant::now();
        let slots = queue_slots(0);
        // Enough for every batch of the pool and more, in one call.
        let half = vec![1u8; BATCH_BYTES / 2];
        let n = 2 * (slots + 2) + 3;
        let datums: Vec<&[u8]> = vec![&half; n];
        let c = receive(&mut f, &ledger, &datums, now);
        assert_eq!(c.to_archive, 2 * (slots as u64 + 2));
        assert_eq!(c.not_archived, 3);
        // The queue takes `slots` batches; the one past it is refused.
        let refused = f.hand_over_if_due(now, false);
        let mut queued = 0;
        while let Ok(b) = inbox.recv_timeout(Duration::ZERO) {
            queued += b.len() as u64;
        }
        assert_eq!(queued, 2 * slots as u64);
        ledger.archived(queued);
        assert_eq!(refused, 2 * 2, "two full batches past the queue");
        let counts = ledger.counters();
        assert_eq!(counts.archive_dropped, refused + 3);
        assert_eq!(counts.in_flight, 0);
        assert!(counts.balanced());
    }

    #[test]
    fn close_hands_over_what_is_pending() {
        let (mut f, inbox, l) = feed();
        receive(&mut f, &l, &[b"a"], Instant::now());
        f.close();
        assert_eq!(inbox.recv_timeout(Duration::ZERO).unwrap().len(), 1);
    }
}
