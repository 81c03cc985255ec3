//! The receive thread: `recvmmsg` batches through the stages, each with a
//! small interface of its own:
//!
//! - [`classify`]: datagram and sender → relayed, or rejected and why;
//! - [`outputs`]: the full-rate output, and what the decimator makes of
//!   the valid datagrams on the decimated one;
//! - [`archive_feed`]: the batch for the archive, its hand-over and its
//!   accounting;
//! - [`membership`]: the multicast join, kept standing.
//!
//! Rejected datagrams are counted, logged (rate-limited) and offered to the
//! quarantine. Each batch's counts go to the [`Ledger`] at once.

pub(crate) mod archive_feed;
pub(crate) mod classify;
pub(crate) mod membership;
pub(crate) mod outputs;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use socket2::Socket;

use crate::handover::{RejectedDatagram, Rejection, ToArchive};
use crate::ledger::{BatchCounts, Ledger};
use crate::logs::RateLimit;
use crate::net;
use crate::quarantine;
use archive_feed::ArchiveFeed;
use classify::Classifier;
use membership::Join;
use outputs::Outputs;

/// How long the receive thread keeps draining the socket after a stop.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Everything the receive thread owns.
pub(crate) struct ReceivePath {
    receiver: net::BatchReceiver,
    /// The receive socket: kept open for the receiver's descriptor, and
    /// joined to the group.
    socket: Socket,
    classifier: Classifier,
    outputs: Outputs,
    archive: ArchiveFeed,
    rejects: RejectSink,
    join: Option<Join>,
    ledger: Arc<Ledger>,
    /// The current batch's counts.
    counts: BatchCounts,
    /// Indices of the current batch's valid datagrams.
    valid: Vec<usize>,
    /// Datagrams per `recvmmsg` call.
    batch: usize,
    error_log: RateLimit,
    channel: String,
}

/// The receive path's parts, as `relay` builds them.
pub(crate) struct Parts {
    pub(crate) socket: Socket,
    /// Datagrams per `recvmmsg` call.
    pub(crate) batch: usize,
    /// The socket asked for arrival stamps (time windows of the decimator).
    pub(crate) stamps: bool,
    /// The I/O path the socket was opened for.
    pub(crate) io: crate::status::IoPath,
    pub(crate) classifier: Classifier,
    pub(crate) outputs: Outputs,
    pub(crate) to_archive: ToArchive,
    pub(crate) quarantine: quarantine::Feed,
    pub(crate) join: Option<Join>,
}

impl ReceivePath {
    pub(crate) fn new(p: Parts, ledger: Arc<Ledger>, channel: &str) -> ReceivePath {
        ReceivePath {
            receiver: net::BatchReceiver::new(&p.socket, p.batch, p.stamps, p.io),
            socket: p.socket,
            classifier: p.classifier,
            outputs: p.outputs,
            archive: ArchiveFeed::new(p.to_archive, ledger.clone(), channel),
            rejects: RejectSink {
                quarantine: p.quarantine,
                log: RateLimit::new(5, Duration::from_secs(60)),
                channel: channel.to_string(),
            },
            join: p.join,
            ledger,
            counts: BatchCounts::new(),
            valid: Vec::with_capacity(p.batch),
            batch: p.batch,
            error_log: RateLimit::new(1, Duration::from_secs(60)),
            channel: channel.to_string(),
        }
    }

    /// The thread body: relays until `stop`, then drains what the kernel
    /// holds (for at most [`DRAIN_LIMIT`]) and hands everything over.
    pub(crate) fn run(mut self, stop: &AtomicBool) {
        let mut drain_until: Option<Instant> = None;
        // When the last call returned, if it left data in the socket.
        let mut left_data: Option<Instant> = None;
        loop {
            if drain_until.is_none() && stop.load(Ordering::Relaxed) {
                drain_until = Some(Instant::now() + DRAIN_LIMIT);
            }
            if drain_until.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            if let Some(at) = left_data.take() {
                self.ledger.note_receive_gap(at.elapsed());
            }
            match self.receiver.recv(drain_until.is_some()) {
                Ok(0) => {}
                Ok(n) => {
                    // A full batch: more may be waiting in the socket (a
                    // call that returns less found the socket empty).
                    let full = n >= self.batch;
                    self.ledger.note_receive_call(full);
                    left_data = full.then(Instant::now);
                    self.process(n)
                }
                Err(e) if is_timeout(&e) => {
                    if drain_until.is_some() {
                        break;
                    }
                    self.idle();
                }
                Err(e) => self.receive_error(&e),
            }
            self.keep_joined();
        }
        self.finish();
    }

    /// Keeps the multicast membership, if there is one.
    pub(crate) fn keep_joined(&mut self) {
        if let Some(j) = &mut self.join {
            j.keep(&self.socket, &self.ledger);
        }
    }

    /// One `recvmmsg` batch of `n` datagrams through the stages.
    fn process(&mut self, n: usize) {
        let now = Instant::now();
        self.counts.clear();
        self.valid.clear();
        for i in 0..n {
            let (d, from, truncated) = self.receiver.datagram(i);
            self.counts.datagram(d.len());
            match self.classifier.classify(d, *from.ip(), truncated) {
                Ok(()) => self.valid.push(i),
                Err(why) => self.rejects.reject(d, from, why, now, &mut self.counts),
            }
        }
        let rx = &self.receiver;
        let c = &mut self.counts;
        let clock = net::ArrivalClock::now();
        self.outputs.forward(
            &self.valid,
            |i| rx.datagram(i).0,
            |i| rx.arrival(i, &clock),
            now,
            c,
        );
        let skip = self.classifier.header_len();
        let datums = self.valid.iter().map(|&i| &rx.datagram(i).0[skip..]);
        self.archive.push(datums, now, clock.wall(), c);
        c.quarantine_dropped += self.rejects.quarantine.hand_over_if_due(now, false);
        c.kernel_drops = rx.kernel_drops.map_or(0, u64::from);
        self.ledger.received(c);
        let dropped = c.not_archived + self.archive.hand_over_if_due(now, false);
        self.archive.log_dropped(dropped, now);
    }

    /// Nothing arrived: end a decimation window that is over, hand over
    /// what waits.
    fn idle(&mut self) {
        let now = Instant::now();
        self.counts.clear();
        self.outputs.tick(now, &mut self.counts);
        if self.counts.forwarded_decimated + self.counts.send_errors_decimated > 0 {
            self.ledger.received(&self.counts);
        }
        self.archive.hand_over_if_due(now, true);
        let lost = self.rejects.quarantine.hand_over_if_due(now, true);
        if lost > 0 {
            self.ledger.quarantine_dropped(lost);
        }
    }

    fn receive_error(&mut self, e: &std::io::Error) {
        self.ledger.receive_error();
        if let Some(suppressed) = self.error_log.allow(Instant::now()) {
            tracing::warn!(channel = %self.channel, error = %e, suppressed, "receive error");
        }
        thread::sleep(Duration::from_millis(10));
    }

    /// Closes the socket, then hands over what is pending, waiting for the
    /// archive and quarantine threads rather than dropping.
    fn finish(self) {
        let ReceivePath {
            receiver,
            socket,
            mut archive,
            mut rejects,
            ledger,
            ..
        } = self;
        drop(receiver);
        drop(socket);
        archive.close();
        ledger.quarantine_dropped(rejects.quarantine.close());
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Where rejected datagrams go: counted, logged (rate-limited), offered to
/// the quarantine.
struct RejectSink {
    quarantine: quarantine::Feed,
    log: RateLimit,
    channel: String,
}

impl RejectSink {
    fn reject(
        &mut self,
        datagram: &[u8],
        from: SocketAddrV4,
        rejection: Rejection,
        now: Instant,
        counts: &mut BatchCounts,
    ) {
        let reason = rejection.reason();
        counts.rejected(reason);
        if let Some(suppressed) = self.log.allow(now) {
            tracing::warn!(
                channel = %self.channel, %from, reason = reason.as_str(), detail = %rejection,
                length = datagram.len(), suppressed, "rejected a datagram"
            );
        }
        let r = RejectedDatagram {
            at: SystemTime::now(),
            from,
            rejection,
        };
        if !self.quarantine.offer(datagram, r, now) {
            counts.quarantine_dropped += 1;
        }
    }
}
