//! Rejected datagrams, kept for inspection on a path of their own.
//!
//! A datagram that is rejected is counted at once (`rejected`, by reason).
//! A copy of it may then be kept in `quarantine.jsonl` beside the archive,
//! but that copy never competes with valid records: it travels from the
//! receive thread to a quarantine thread of its own, in small batches over a
//! small bounded queue with recycled buffers ([`Feed`]), at most
//! [`RATE_DATAGRAMS`] datagrams and [`RATE_BYTES`] bytes a second. Whatever
//! does not fit (rate, queue, file cap, a write error) is counted as
//! `quarantine_dropped`; whatever is written, as `quarantined`. With
//! `archive.quarantine_size = 0` nothing is copied at all.
//!
//! The file never grows past about `quarantine_size`: at half of it the file
//! moves to `quarantine.jsonl.1` (replacing the older one) and a new one
//! begins. It is opened with `O_NOFOLLOW`, so a symlink planted in its place
//! is refused rather than followed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::json;

use crate::handover::RejectedDatagram;
use crate::ledger::Ledger;
use crate::logs::RateLimit;

/// Rejected datagrams copied to quarantine per second, at most…
pub(crate) const RATE_DATAGRAMS: u32 = 1_000;
/// …and their bytes per second, at most: quarantine is for inspection, and
/// a flood of junk must cost neither CPU nor disk bandwidth.
pub(crate) const RATE_BYTES: usize = 1 << 20;
/// A batch of rejects goes to the quarantine thread at this many…
const BATCH_REJECTS: usize = 16;
/// …or this many bytes, or this old.
const BATCH_BYTES: usize = 128 << 10;
const BATCH_AGE: Duration = Duration::from_millis(50);
/// Batches the queue to the quarantine thread holds.
const QUEUE_BATCHES: usize = 4;

/// Rejected datagrams handed to the quarantine thread: their bytes back to
/// back, and for each its end offset and why it was rejected.
#[derive(Debug, Default)]
pub(crate) struct Rejects {
    data: Vec<u8>,
    entries: Vec<(usize, RejectedDatagram)>,
}

impl Rejects {
    fn push(&mut self, datagram: &[u8], r: RejectedDatagram) {
        self.data.extend_from_slice(datagram);
        self.entries.push((self.data.len(), r));
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn clear(&mut self) {
        self.data.clear();
        self.entries.clear();
    }

    fn iter(&self) -> impl Iterator<Item = (&RejectedDatagram, &[u8])> {
        let mut start = 0;
        self.entries.iter().map(move |(end, r)| {
            let d = &self.data[start..*end];
            start = *end;
            (r, d)
        })
    }
}

/// The receive thread's end of the quarantine path.
pub(crate) struct Feed {
    to_writer: Option<Sender<Rejects>>,
    free: Receiver<Rejects>,
    pending: Option<Rejects>,
    pending_since: Option<Instant>,
    allocated: usize,
    window_start: Instant,
    window_datagrams: u32,
    window_bytes: usize,
}

impl Feed {
    /// A feed that keeps nothing (quarantine off): every reject is counted
    /// as not kept, and nothing is copied.
    pub(crate) fn off() -> Feed {
        Feed {
            to_writer: None,
            free: crossbeam_channel::never(),
            pending: None,
            pending_since: None,
            allocated: 0,
            window_start: Instant::now(),
            window_datagrams: 0,
            window_bytes: 0,
        }
    }

    /// Copies a rejected datagram for quarantine if the rate and the queue
    /// allow; false if it is not kept (the caller counts it).
    pub(crate) fn offer(&mut self, datagram: &[u8], r: RejectedDatagram, now: Instant) -> bool {
        if self.to_writer.is_none() {
            return false;
        }
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_datagrams = 0;
            self.window_bytes = 0;
        }
        if self.window_datagrams >= RATE_DATAGRAMS
            || self.window_bytes + datagram.len() > RATE_BYTES
        {
            return false;
        }
        if self.pending.is_none() {
            self.pending = match self.free.try_recv() {
                Ok(b) => Some(b),
                Err(_) if self.allocated < QUEUE_BATCHES + 2 => {
                    self.allocated += 1;
                    Some(Rejects::default())
                }
                Err(_) => return false,
            };
        }
        let b = self.pending.as_mut().expect("taken above");
        b.push(datagram, r);
        self.pending_since.get_or_insert(now);
        self.window_datagrams += 1;
        self.window_bytes += datagram.len();
        true
    }

    /// Hands the pending rejects to the quarantine thread when there are
    /// enough, they are old enough, or `idle`. Returns how many could not
    /// be handed over (the queue is full); the caller counts them.
    pub(crate) fn hand_over_if_due(&mut self, now: Instant, idle: bool) -> u64 {
        let Some(b) = &self.pending else { return 0 };
        let due = idle
            || b.entries.len() >= BATCH_REJECTS
            || b.data.len() >= BATCH_BYTES
            || self
                .pending_since
                .is_some_and(|t| now.duration_since(t) >= BATCH_AGE);
        if b.is_empty() || !due {
            return 0;
        }
        let b = self.pending.take().expect("checked above");
        self.pending_since = None;
        let Some(tx) = &self.to_writer else { return 0 };
        match tx.try_send(b) {
            Ok(()) => 0,
            Err(TrySendError::Full(mut b)) | Err(TrySendError::Disconnected(mut b)) => {
                let n = b.len() as u64;
                b.clear();
                self.pending = Some(b);
                n
            }
        }
    }

    /// At the end: hands over what is pending (waiting a little for room)
    /// and closes the path, so the quarantine thread finishes. Returns how
    /// many could not be handed over.
    pub(crate) fn close(&mut self) -> u64 {
        let mut lost = 0;
        if let (Some(b), Some(tx)) = (self.pending.take(), &self.to_writer) {
            if !b.is_empty() {
                if let Err(e) = tx.send_timeout(b, Duration::from_secs(5)) {
                    lost = e.into_inner().len() as u64;
                }
            }
        }
        self.to_writer = None;
        lost
    }
}

/// The quarantine thread's end: writes what arrives until the feed closes.
pub(crate) struct Writer {
    file: QuarantineFile,
    rejects: Receiver<Rejects>,
    free: Sender<Rejects>,
    ledger: Arc<Ledger>,
    error_log: RateLimit,
}

/// The two ends of a quarantine path writing to `path`, bounded by `max`
/// bytes; `None` when `max` is 0 (quarantine off).
pub(crate) fn path(path: PathBuf, max: u64, ledger: Arc<Ledger>) -> (Feed, Option<Writer>) {
    if max == 0 {
        return (Feed::off(), None);
    }
    let (tx, rx) = crossbeam_channel::bounded(QUEUE_BATCHES);
    let (free_tx, free_rx) = crossbeam_channel::bounded(QUEUE_BATCHES + 2);
    let mut feed = Feed::off();
    feed.to_writer = Some(tx);
    feed.free = free_rx;
    let writer = Writer {
        file: QuarantineFile::new(path, max),
        rejects: rx,
        free: free_tx,
        ledger,
        error_log: RateLimit::new(1, Duration::from_secs(60)),
    };
    (feed, Some(writer))
}

impl Writer {
    /// The thread body.
    pub(crate) fn run(mut self) {
        while let Ok(mut batch) = self.rejects.recv() {
            let (mut kept, mut dropped) = (0u64, 0u64);
            for (r, bytes) in batch.iter() {
                match self.file.write(r, bytes) {
                    Ok(true) => kept += 1,
                    Ok(false) => dropped += 1,
                    Err(e) => {
                        dropped += 1;
                        if let Some(suppressed) = self.error_log.allow(Instant::now()) {
                            tracing::warn!(
                                file = %self.file.path.display(), error = %e, suppressed,
                                "cannot write the quarantine file; rejected datagrams are counted, not kept"
                            );
                        }
                    }
                }
            }
            self.ledger.quarantine_written(kept, dropped);
            batch.clear();
            let _ = self.free.try_send(batch);
        }
        self.file.flush();
    }
}

/// The quarantine file: one JSON object a line, moved to `<name>.1` at half
/// of `max`.
struct QuarantineFile {
    path: PathBuf,
    max: u64,
    file: Option<File>,
    len: u64,
    line: String,
}

impl QuarantineFile {
    fn new(path: PathBuf, max: u64) -> QuarantineFile {
        QuarantineFile {
            path,
            max,
            file: None,
            len: 0,
            line: String::new(),
        }
    }

    fn older(&self) -> PathBuf {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        old.into()
    }

    /// Appends one entry: `Ok(false)` if it is too large to keep at all,
    /// an error if the file cannot be opened, moved or written.
    fn write(&mut self, r: &RejectedDatagram, bytes: &[u8]) -> io::Result<bool> {
        self.line.clear();
        let entry = json!({
            "time": humantime::format_rfc3339_micros(r.at).to_string(),
            "from": r.from.to_string(),
            "reason": r.rejection.reason().as_str(),
            "detail": r.rejection.to_string(),
            "length": bytes.len(),
            "data_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
        });
        self.line.push_str(&entry.to_string());
        self.line.push('\n');
        let n = self.line.len() as u64;
        if n > self.max / 2 {
            return Ok(false);
        }
        if self.file.is_none() {
            let f = open_nofollow(&self.path)?;
            self.len = f.metadata()?.len();
            self.file = Some(f);
        }
        if self.len > 0 && self.len + n > self.max / 2 {
            // Full: this one moves to .1 and a new one begins. If the move
            // fails the file stays full and nothing more is written to it.
            self.file = None;
            fs::rename(&self.path, self.older())?;
            let f = open_nofollow(&self.path)?;
            self.len = f.metadata()?.len();
            self.file = Some(f);
            if self.len + n > self.max / 2 {
                // Someone else recreated a full file meanwhile.
                return Ok(false);
            }
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(false);
        };
        match f.write_all(self.line.as_bytes()) {
            Ok(()) => {
                self.len += n;
                Ok(true)
            }
            Err(e) => {
                self.file = None;
                Err(e)
            }
        }
    }

    fn flush(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.sync_data();
        }
    }
}

/// Opens (creating) a file to append to, refusing to follow a symlink.
fn open_nofollow(path: &std::path::Path) -> io::Result<File> {
    crate::nofollow::open(OpenOptions::new().create(true).append(true), 0, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected() -> RejectedDatagram {
        RejectedDatagram {
            at: std::time::SystemTime::now(),
            from: "127.0.0.1:9".parse().unwrap(),
            rejection: crate::handover::Rejection::Oversized,
        }
    }

    fn lines(p: &std::path::Path) -> usize {
        fs::read_to_string(p).map_or(0, |t| t.lines().count())
    }

    #[test]
    fn the_file_rotates_at_half_its_cap_and_stays_bounded() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("quarantine.jsonl");
        let mut q = QuarantineFile::new(path.clone(), 4_000);
        let mut kept = 0;
        for _ in 0..100 {
            if q.write(&rejected(), &[7u8; 100]).unwrap() {
                kept += 1;
            }
        }
        assert_eq!(kept, 100);
        let older = d.path().join("quarantine.jsonl.1");
        let (a, b) = (
            fs::metadata(&path).unwrap().len(),
            fs::metadata(&older).unwrap().len(),
        );
        assert!(a <= 2_000 && b <= 2_000, "{a} {b}");
        assert!(lines(&path) > 0 && lines(&older) > 0);
        // Too large to keep at all.
        assert!(!q.write(&rejected(), &[0u8; 3_000]).unwrap());
    }

    #[test]
    fn a_failed_move_is_an_error_not_a_panic_and_the_file_stays_bounded() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("quarantine.jsonl");
        // Room for one entry (about 200 bytes) per file: the next one rotates.
        let mut q = QuarantineFile::new(path.clone(), 600);
        assert!(q.write(&rejected(), &[1u8; 50]).unwrap());
        // The rotation target is a non-empty folder: rename fails.
        fs::create_dir(d.path().join("quarantine.jsonl.1")).unwrap();
        fs::write(d.path().join("quarantine.jsonl.1/x"), "x").unwrap();
        let before = fs::metadata(&path).unwrap().len();
        for _ in 0..10 {
            assert!(q.write(&rejected(), &[1u8; 50]).is_err());
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), before);
        // Once the way is clear, it goes on.
        fs::remove_dir_all(d.path().join("quarantine.jsonl.1")).unwrap();
        assert!(q.write(&rejected(), &[1u8; 50]).unwrap());
    }

    #[test]
    fn a_symlink_in_its_place_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside.txt");
        fs::write(&outside, "precious\n").unwrap();
        let path = d.path().join("quarantine.jsonl");
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        let mut q = QuarantineFile::new(path, 1 << 20);
        assert!(q.write(&rejected(), b"junk").is_err());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "precious\n");
    }

    #[test]
    fn the_feed_is_bounded_in_rate_and_queue() {
        let ledger = Arc::new(Ledger::new());
        let d = tempfile::tempdir().unwrap();
        let (mut feed, writer) = path(d.path().join("q.jsonl"), 1 << 20, ledger);
        let writer = writer.unwrap();
        let now = Instant::now();
        let mut kept = 0u32;
        let mut lost = 0;
        for _ in 0..5_000 {
            if feed.offer(b"x", rejected(), now) {
                kept += 1;
            }
            lost += feed.hand_over_if_due(now, false);
        }
        // Nobody drains the queue: at most the queue and the pool are used.
        assert!(kept <= RATE_DATAGRAMS, "{kept}");
        assert!(kept as u64 - lost <= ((QUEUE_BATCHES + 1) * BATCH_REJECTS) as u64);
        drop(writer);
        // Quarantine off: nothing is copied.
        let mut off = Feed::off();
        assert!(!off.offer(b"x", rejected(), now));
    }
}
