//! The hand-over contract between the receive thread and the threads that
//! write: the [`Batch`] of valid datagrams and the queue to the archive
//! ([`archive_queue`]: its sizing and the pool batches are recycled
//! through), and why a datagram was rejected ([`Rejection`],
//! [`RejectedDatagram`]) for the counters and the quarantine (each counted
//! under a [`RejectReason`], whose labels `reject` defines).
//!
//! Batches circulate: the receive thread fills one, queues it to the archive
//! thread, which empties it and gives it back, so buffers are allocated once.
//! The receive path never waits on disk: when the queue is full, a batch is
//! refused and its datagrams are counted as `archive_dropped`.

use std::net::SocketAddrV4;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::config::MAX_DATAGRAM;
use crate::reject::RejectReason;
use crate::validate::Invalid;

/// A batch is handed to the archive once it holds this many bytes (or is
/// [`HAND_OVER_AFTER`] old); the archive queue is counted in such batches.
pub(crate) const BATCH_BYTES: usize = 256 << 10;

/// Longest a datagram waits in the receive thread's pending batch.
pub(crate) const HAND_OVER_AFTER: Duration = Duration::from_millis(10);

/// Capacity a recycled batch keeps; one that grew past it (a burst of large
/// datagrams) gives the memory back.
const KEEP_BATCH_CAPACITY: usize = 1 << 20;

/// Batches the archive queue holds: `queue` bytes (`archive.queue`) in
/// batches of up to [`BATCH_BYTES`], at least 4.
pub(crate) fn queue_slots(queue: u64) -> usize {
    ((queue / BATCH_BYTES as u64) as usize).max(4)
}

/// Batches in circulation: the queue's, the one being filled and the one
/// being written.
fn pool_size(slots: usize) -> usize {
    slots + 2
}

/// Datagrams handed from the receive thread to the archive thread.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Valid datagrams, back to back.
    data: Vec<u8>,
    /// End offset of each datagram in `data`.
    ends: Vec<usize>,
    /// When they arrived: from the datagram at the index on (up to the next
    /// entry's), the wall-clock time of the receive call that read them.
    arrivals: Vec<(usize, SystemTime)>,
}

impl Batch {
    pub(crate) fn with_capacity(records: usize) -> Batch {
        Batch {
            data: Vec::with_capacity(records * 256),
            ends: Vec::with_capacity(records),
            arrivals: Vec::new(),
        }
    }

    /// The datagrams pushed from now on arrived at `at`.
    pub(crate) fn mark_arrival(&mut self, at: SystemTime) {
        let next = self.ends.len();
        match self.arrivals.last_mut() {
            Some((i, t)) if *i == next => *t = at,
            _ => self.arrivals.push((next, at)),
        }
    }

    pub(crate) fn push(&mut self, datagram: &[u8]) {
        self.data.extend_from_slice(datagram);
        self.ends.push(self.data.len());
    }

    /// The datagrams, back to back.
    pub(crate) fn data(&self) -> &[u8] {
        &self.data
    }

    /// Datagrams in the batch.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of the datagrams in the batch.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.arrivals.clear();
        if self.data.capacity() > KEEP_BATCH_CAPACITY {
            self.data.shrink_to(KEEP_BATCH_CAPACITY);
        }
    }

    /// The datagrams, in order.
    pub(crate) fn records(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let r = &self.data[start..end];
            start = end;
            r
        })
    }

    /// The datagrams, in order, each with its arrival time (`None` before
    /// the first [`Batch::mark_arrival`]).
    pub(crate) fn records_with_arrival(&self) -> impl Iterator<Item = (&[u8], Option<SystemTime>)> {
        let mut marks = self.arrivals.iter().peekable();
        let mut at = None;
        self.records().enumerate().map(move |(i, r)| {
            while let Some(&&(from, t)) = marks.peek() {
                if from > i {
                    break;
                }
                at = Some(t);
                marks.next();
            }
            (r, at)
        })
    }
}

/// The queue to the archive thread, sized for `queue` bytes, with a pool of
/// batches of `records` datagrams each.
pub(crate) fn archive_queue(queue: u64, records: usize) -> (ToArchive, ArchiveInbox) {
    let slots = queue_slots(queue);
    let (to_archive, batches) = crossbeam_channel::bounded(slots);
    let (free_tx, free_rx) = crossbeam_channel::bounded(pool_size(slots));
    let sender = ToArchive {
        queue: to_archive,
        free: free_rx,
        allocated: 0,
        max: pool_size(slots),
        records,
    };
    let inbox = ArchiveInbox {
        batches,
        free: free_tx,
    };
    (sender, inbox)
}

/// The receive thread's end: empty batches from the pool, full ones to the
/// queue.
#[derive(Debug)]
pub(crate) struct ToArchive {
    queue: Sender<Batch>,
    free: Receiver<Batch>,
    allocated: usize,
    max: usize,
    records: usize,
}

impl ToArchive {
    /// An empty batch: a recycled one, or a new one while the pool is not
    /// all allocated; `None` when every batch is queued or being written.
    pub(crate) fn take(&mut self) -> Option<Batch> {
        if let Ok(b) = self.free.try_recv() {
            return Some(b);
        }
        if self.allocated < self.max {
            self.allocated += 1;
            return Some(Batch::with_capacity(self.records));
        }
        None
    }

    /// Queues a batch without waiting; gives it back when the queue is full
    /// or the archive thread is gone.
    pub(crate) fn try_send(&self, batch: Batch) -> Result<(), Batch> {
        self.queue.try_send(batch).map_err(|e| match e {
            TrySendError::Full(b) | TrySendError::Disconnected(b) => b,
        })
    }

    /// Queues a batch, waiting up to `wait` for room (at the end, while the
    /// archive drains).
    pub(crate) fn send_timeout(&self, batch: Batch, wait: Duration) -> Result<(), Batch> {
        self.queue
            .send_timeout(batch, wait)
            .map_err(|e| e.into_inner())
    }
}

/// The archive thread's end: full batches from the queue, emptied ones back
/// to the pool.
#[derive(Debug)]
/// The archive queue's fill, read where the inbox is not at hand.
#[derive(Clone)]
pub(crate) struct FillGauge(Receiver<Batch>);

impl FillGauge {
    /// How full the queue is, from 0 to 1.
    pub(crate) fn fill(&self) -> f64 {
        fill_of(&self.0)
    }
}

fn fill_of(batches: &Receiver<Batch>) -> f64 {
    match batches.capacity() {
        Some(c) if c > 0 => batches.len() as f64 / c as f64,
        _ => 0.0,
    }
}

pub(crate) struct ArchiveInbox {
    batches: Receiver<Batch>,
    free: Sender<Batch>,
}

impl ArchiveInbox {
    /// The next batch; `Disconnected` once the receive side has hung up and
    /// the queue is empty.
    pub(crate) fn recv_timeout(&self, wait: Duration) -> Result<Batch, RecvTimeoutError> {
        self.batches.recv_timeout(wait)
    }

    /// How full the queue is, from 0 to 1.
    pub(crate) fn fill(&self) -> f64 {
        fill_of(&self.batches)
    }

    /// A reading of the queue's fill to take along (the archive asks it
    /// between the chunks of a block it compresses).
    pub(crate) fn gauge(&self) -> FillGauge {
        FillGauge(self.batches.clone())
    }

    /// Gives a batch back to the pool, emptied.
    pub(crate) fn recycle(&self, mut batch: Batch) {
        batch.clear();
        let _ = self.free.try_send(batch);
    }
}

/// Why one datagram was rejected, with the detail logs and the quarantine
/// show. Kept as data: no text is built on the receive path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Longer than an IPv4 UDP datagram can be (or cut by the kernel).
    Oversized,
    /// From a sender outside `receive.allow_from`.
    SenderNotAllowed,
    /// `encoding = "single_object"`: no header, or another schema's
    /// fingerprint.
    WrongHeader,
    /// Not exactly one datum of the schema.
    Invalid(Invalid),
}

impl Rejection {
    pub(crate) fn reason(&self) -> RejectReason {
        match self {
            Rejection::Oversized => RejectReason::Oversized,
            Rejection::SenderNotAllowed => RejectReason::SenderNotAllowed,
            Rejection::WrongHeader => RejectReason::WrongHeader,
            Rejection::Invalid(i) => RejectReason::Invalid(i.reason),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Oversized => write!(f, "longer than {MAX_DATAGRAM} bytes"),
            Rejection::SenderNotAllowed => write!(f, "the sender is not in receive.allow_from"),
            Rejection::WrongHeader => write!(
                f,
                "not a single-object header (C3 01 and this schema's fingerprint)"
            ),
            Rejection::Invalid(i) => i.fmt(f),
        }
    }
}

/// One rejected datagram on its way to quarantine.
#[derive(Debug, Clone)]
pub(crate) struct RejectedDatagram {
    pub(crate) at: SystemTime,
    pub(crate) from: SocketAddrV4,
    pub(crate) rejection: Rejection,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Reason;

    #[test]
    fn a_batch_keeps_datagrams_in_order_and_is_reusable() {
        let mut b = Batch::with_capacity(4);
        b.push(b"ab");
        b.push(b"");
        b.push(b"cde");
        assert_eq!((b.len(), b.bytes()), (3, 5));
        let got: Vec<&[u8]> = b.records().collect();
        assert_eq!(got, [&b"ab"[..], b"", b"cde"]);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.records().count(), 0);
    }

    #[test]
    fn each_datagram_carries_the_arrival_of_its_receive_call() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let t1 = t0 + Duration::from_millis(3);
        let mut b = Batch::with_capacity(4);
        b.push(b"before");
        b.mark_arrival(t0);
        b.push(b"a");
        b.push(b"b");
        b.mark_arrival(t0);
        b.mark_arrival(t1);
        b.push(b"c");
        b.mark_arrival(t1 + Duration::from_millis(1));
        let got: Vec<_> = b.records_with_arrival().map(|(_, t)| t).collect();
        assert_eq!(got, [None, Some(t0), Some(t0), Some(t1)]);
        b.clear();
        b.push(b"d");
        assert_eq!(b.records_with_arrival().next(), Some((&b"d"[..], None)));
    }

    #[test]
    fn a_batch_that_grew_gives_memory_back_when_cleared() {
        let mut b = Batch::default();
        b.push(&vec![0u8; 4 * KEEP_BATCH_CAPACITY]);
        b.clear();
        assert!(b.data.capacity() <= KEEP_BATCH_CAPACITY);
    }

    #[test]
    fn the_queue_is_counted_in_batches_of_batch_bytes() {
        assert_eq!(queue_slots(32 << 20), 128);
        assert_eq!(queue_slots(0), 4);
        assert_eq!(queue_slots(BATCH_BYTES as u64 * 5 + 1), 5);
    }

    #[test]
    fn the_pool_is_bounded_and_batches_come_back() {
        let (mut tx, inbox) = archive_queue(0, 8);
        let slots = queue_slots(0);
        let mut taken: Vec<Batch> = (0..pool_size(slots)).map(|_| tx.take().unwrap()).collect();
        assert!(tx.take().is_none(), "the pool is exhausted");
        for b in taken.drain(..slots) {
            tx.try_send(b).unwrap();
        }
        let refused = tx.try_send(taken.pop().unwrap()).unwrap_err();
        assert!(refused.is_empty());
        let mut b = inbox.recv_timeout(Duration::ZERO).unwrap();
        b.push(b"x");
        inbox.recycle(b);
        let back = tx.take().expect("a recycled batch");
        assert!(back.is_empty());
    }

    #[test]
    fn rejections_are_counted_under_their_reason() {
        let invalid = Invalid {
            offset: 3,
            reason: Reason::TrailingBytes,
            field: None,
            logical: None,
        };
        let r = Rejection::Invalid(invalid);
        assert_eq!(r.reason().as_str(), "trailing_bytes");
        assert_eq!(r.to_string(), invalid.to_string());
        assert_eq!(Rejection::Oversized.reason().as_str(), "oversized");
        assert_eq!(
            Rejection::Oversized.to_string(),
            format!("longer than {MAX_DATAGRAM} bytes")
        );
    }
}
