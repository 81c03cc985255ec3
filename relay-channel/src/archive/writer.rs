//! The archive thread: packs valid datagrams into Avro container blocks,
//! writes them under `.avro.part`, and rotates by size and by time, handing
//! each file it is done with to the [closer](super::closer). Rejected
//! datagrams never come here: they take the quarantine's own path.
//!
//! A file is written as `{channel}-{from}.avro.part`, `{from}` the arrival
//! time of its first record (see [`crate::holds::stamp`]), and closed as
//! `{channel}-{from}--{to}.avro`, `{to}` the time the writer closed it.
//!
//! It takes [`Batch`]es from the receive thread's queue and gives them back
//! empty ([`crate::handover`]). Disk trouble is counted as `archive_dropped`;
//! the archive reports itself unhealthy and retries.
//!
//! [`Archive`] drives four parts, each with its own state: the open block
//! ([`super::block`]), the open file ([`super::file`]), the level
//! controller ([`super::level`]) and the pool's queue ([`super::pool`]).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use tokio::sync::mpsc::UnboundedSender;

use super::block::{BlockMeta, OpenBlock, NO_TIMES};
use super::closer::{ClosedFile, Closer};
use super::file::Files;
use super::level::LevelControl;
use super::pool::{self, thread_cpu_time, Pool, PoolQueue};
use super::recovery;
use crate::config::{ArchiveSpec, Codec, Fsync};
use crate::container::BlockEncoder;
use crate::handover::{ArchiveInbox, Batch, FillGauge};
use crate::ledger::Ledger;
use crate::logs::{Condition, Report};
use crate::record_time::RecordTime;
use crate::status::FileClosed;

/// How long the archive waits after disk trouble before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest wait for a batch, so timers are looked at often enough.
const TICK: Duration = Duration::from_millis(100);

/// How often the archive looks for blocks the pool has compressed when it
/// has nothing else to do.
const POOL_POLL: Duration = Duration::from_millis(1);

/// The archive thread of one channel.
pub(crate) struct Archive {
    spec: ArchiveSpec,
    channel: String,
    ledger: Arc<Ledger>,
    encoder: BlockEncoder,
    /// Reads each record's `archive.time_field`, for the block index.
    time: Option<RecordTime>,
    block: OpenBlock,
    files: Files,
    level: LevelControl,
    /// With `archive.compress_threads` above 1, the threads that compress
    /// blocks; otherwise this thread compresses them.
    pool: PoolQueue,
    /// Disk trouble, logged when it starts, each minute while it lasts,
    /// and when it ends.
    trouble: Condition,
    /// The archive queue's fill, asked between the chunks of a block being
    /// compressed (set when the thread starts).
    gauge: Option<FillGauge>,
    /// Where closed files go to be finished; `None` before `run` starts it
    /// (and after `finish`), when files are closed on this thread.
    closer: Option<Sender<ClosedFile>>,
    closer_state: Closer,
}

/// A block to write: its records, encoded here, or encoded by the pool.
enum Body<'a> {
    Records(&'a [u8]),
    /// The whole block with a placeholder sync marker, and the compress
    /// thread's CPU time for it; or why it could not be encoded.
    Encoded(io::Result<&'a mut [u8]>, Duration),
}

impl Archive {
    /// Prepares the channel's archive folder: creates it, and closes every
    /// `.avro.part` a crash left behind (cut back to its last whole block).
    /// Fails if the folder cannot be created or written. Each file closed
    /// is reported on `closed`, for the control loop to write.
    /// Retention honours the holds of `holds_dir`, if given.
    pub(crate) fn open(
        spec: &ArchiveSpec,
        channel: &str,
        schema_json: &str,
        holds_dir: Option<&Path>,
        ledger: Arc<Ledger>,
        closed: UnboundedSender<FileClosed>,
    ) -> io::Result<Archive> {
        let dir = spec.channel_dir(channel);
        fs::create_dir_all(&dir)?;
        probe_writable(&dir)?;
        let time = record_time(spec, schema_json);
        recovery::recover_leftovers(&dir, time.as_ref());
        let level = LevelControl::new(&spec.codec, spec.adaptive);
        if let Codec::Zstd { level } = spec.codec {
            ledger.set_archive_level(true, Some(level));
        }
        let threads = spec.compress_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            pool::compress_threads(cores, channels_on_host(), &spec.codec)
        });
        let pool = if threads > 1 && !matches!(spec.codec, Codec::Null) {
            tracing::info!(
                channel,
                threads,
                "archive: blocks compressed on {threads} threads"
            );
            Some(Pool::start(threads, spec.codec, channel)?)
        } else {
            None
        };
        Ok(Archive {
            spec: spec.clone(),
            channel: channel.to_string(),
            ledger: ledger.clone(),
            encoder: BlockEncoder::new(spec.codec),
            time,
            block: OpenBlock::with_capacity(spec.block_size + crate::config::MAX_DATAGRAM),
            files: Files::new(dir, channel, schema_json, spec.codec),
            level,
            pool: PoolQueue::new(pool),
            trouble: Condition::new(Duration::from_secs(60)),
            gauge: None,
            closer: None,
            closer_state: Closer::new(spec, channel, holds_dir, ledger, closed),
        })
    }

    /// The thread body: runs until the receive side hangs up, then writes
    /// out everything buffered and closes the file.
    pub(crate) fn run(mut self, inbox: ArchiveInbox) {
        self.gauge = Some(inbox.gauge());
        match self.closer_state.clone().spawn() {
            Ok((tx, t)) => {
                self.closer = Some(tx);
                self.run_loop(&inbox);
                self.finish();
                self.closer = None;
                if t.join().is_err() {
                    tracing::error!(channel = %self.channel, "the archive closer thread panicked");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "no closer thread: files are closed on the archive thread");
                self.run_loop(&inbox);
                self.finish();
            }
        }
    }

    fn run_loop(&mut self, inbox: &ArchiveInbox) {
        loop {
            // Blocks the pool has compressed go out as soon as seen.
            while self.write_pooled(false) {}
            let mut wait = self.next_deadline().map_or(TICK, |d| {
                d.saturating_duration_since(Instant::now()).min(TICK)
            });
            if !self.pool.idle() {
                wait = wait.min(POOL_POLL);
            }
            match inbox.recv_timeout(wait) {
                Ok(batch) => {
                    self.take(&batch);
                    inbox.recycle(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.adapt(inbox.fill());
            self.tick(Instant::now());
            if self.closer.is_none() {
                // No closer thread: retention runs here.
                self.closer_state.tick();
            }
        }
    }

    /// Lets the level controller see the archive queue's fill, and applies
    /// a new level to the next blocks.
    fn adapt(&mut self, fill: f64) {
        if let Some(change) = self.level.observe(fill, &self.ledger) {
            apply_level(&mut self.encoder, &self.ledger, &self.channel, change, fill);
        }
    }

    fn take(&mut self, batch: &Batch) {
        let size = self.spec.block_size;
        if batch.bytes() < size {
            self.copy_in(batch);
            return;
        }
        // The batch holds a block or more (the receive thread hands one
        // over when it reaches the default block size, ending it with the
        // record that does): runs of its records up to the one that reaches
        // the size are blocks as they are, written straight from the
        // batch, not copied into the block first. What waits in the block
        // goes first, as a smaller block; what is left over after the last
        // run (less than a block) waits in the block.
        self.write_block();
        let data = batch.data();
        let (mut start, mut end, mut records) = (0, 0, 0);
        let (mut first, mut last, mut times) = (None, None, NO_TIMES);
        for (r, arrived) in batch.records_with_arrival() {
            if records == 0 {
                (first, times) = (arrived, NO_TIMES);
            }
            last = arrived;
            if let Some(t) = self.time.as_ref().and_then(|rt| rt.read(r)) {
                times = (times.0.min(t), times.1.max(t));
            }
            end += r.len();
            records += 1;
            if end - start >= size {
                self.block.start(records, (first, last), times);
                self.write_records(&data[start..end]);
                (start, records) = (end, 0);
            }
        }
        if records > 0 {
            self.block.start(records, (first, last), times);
            self.block.extend(&data[start..]);
        }
    }

    /// Copies a batch's records into the open block, writing it out each
    /// time the next record would not fit.
    fn copy_in(&mut self, batch: &Batch) {
        for (r, arrived) in batch.records_with_arrival() {
            if self.block.records() > 0 && self.block.bytes() + r.len() > self.spec.block_size {
                self.write_block();
            }
            let time = self.time.as_ref().and_then(|rt| rt.read(r));
            self.block.push(r, arrived, time);
        }
        if self.block.bytes() >= self.spec.block_size {
            self.write_block();
        }
    }

    /// When the current file's first record was taken: the open file's,
    /// or the open block's when no file is open yet (the block starts the
    /// next file).
    fn file_started(&self) -> Option<Instant> {
        match &self.files.open {
            Some(f) => Some(f.opened),
            None => self
                .pool
                .oldest()
                .map_or(self.block.started(), |b| b.started),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let flush = self.block.started().map(|s| s + self.spec.flush_interval);
        let rotate = self.file_started().map(|s| s + self.spec.rotate_interval);
        match (flush, rotate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time-driven work: close a block at `flush_interval`, a file
    /// `rotate_interval` after its first record.
    fn tick(&mut self, now: Instant) {
        if let Some(s) = self.block.started() {
            if now.duration_since(s) >= self.spec.flush_interval {
                self.write_block();
            }
        }
        if let Some(s) = self.file_started() {
            if now.duration_since(s) >= self.spec.rotate_interval {
                self.write_block();
                self.drain_pool();
                self.close_file();
            }
        }
    }

    fn finish(&mut self) {
        self.write_block();
        self.drain_pool();
        self.close_file();
    }

    /// Writes the open block to the file (opening one if needed).
    fn write_block(&mut self) {
        let block = self.block.take_data();
        self.write_records(&block);
        self.block.put_back(block);
    }

    /// Writes `data`, the records the open block counts, as one block to
    /// the file (opening one if needed), or hands it to the pool to be
    /// compressed and written in turn; and empties the open block.
    fn write_records(&mut self, data: &[u8]) {
        let meta = self.block.take_meta(data.len());
        if meta.count == 0 {
            return;
        }
        let level = self.encoder.zstd_level();
        // Stored zstd blocks cost nothing to make, and here are written
        // straight from the records: not worth the pool's copy (and the
        // adaptive level stores exactly when the CPU is short).
        let stored = matches!(self.spec.codec, Codec::Zstd { .. }) && level.is_none();
        if !self.pool.enabled() || stored {
            self.drain_pool();
            self.put_block(meta, Body::Records(data));
            return;
        }
        while self.pool.full() {
            self.write_pooled(true);
        }
        self.pool.send(meta, data, level);
    }

    /// Writes the next block the pool has compressed, waiting for it if
    /// `wait`; false when there is none (or none back yet).
    fn write_pooled(&mut self, wait: bool) -> bool {
        let Some((meta, mut done)) = self.pool.next(wait) else {
            return false;
        };
        let result = std::mem::replace(&mut done.result, Ok(()));
        let body = result.map(|()| &mut done.block[..]);
        self.put_block(meta, Body::Encoded(body, done.cpu));
        self.pool.recycle(done);
        true
    }

    /// Writes every block out with the pool.
    fn drain_pool(&mut self) {
        while self.write_pooled(true) {}
    }

    /// Writes one block to the file (opening one if needed), and counts its
    /// records archived, or dropped if it cannot be written.
    fn put_block(&mut self, meta: BlockMeta, body: Body<'_>) {
        let count = meta.count;
        if self.files.waiting_to_retry() {
            // Still waiting to retry after disk trouble: already reported.
            self.ledger.archive_dropped(count);
            return;
        }
        let result = self.ensure_file(&meta).and_then(|()| {
            let f = self.files.open.as_mut().expect("ensure_file opened a file");
            // A file whose folder was removed under us still takes writes,
            // into an inode nobody can reach: catch it before writing more.
            if std::os::unix::fs::MetadataExt::nlink(&f.file.metadata()?) == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} was deleted while open", f.part.display()),
                ));
            }
            // Compressing is counted in CPU time (time preempted is not
            // its cost), writing in wall time (a write that waits on the
            // disk is).
            let offset = f.len;
            let (len, cpu, t1) = match body {
                Body::Records(data) => 'made: {
                    // Only the adaptive level needs the cost (two system
                    // calls a block).
                    let mut c0 = self.level.adapts().then(thread_cpu_time);
                    // Compressing under the adaptive level: given up between
                    // chunks when the queue passes half or the kernel drops,
                    // and made again at the level the controller jumps to.
                    let gauge = self
                        .gauge
                        .as_ref()
                        .filter(|_| self.level.adapts() && self.encoder.zstd_level().is_some());
                    if let Some(gauge) = gauge {
                        let drops = self.ledger.kernel_drops();
                        let ledger = &self.ledger;
                        let mut stop = || LevelControl::should_give_up(gauge.fill(), ledger, drops);
                        match self
                            .encoder
                            .encode_preemptible(count, data, &f.sync, &mut stop)
                        {
                            Ok(encoded) => {
                                let t1 = Instant::now();
                                let cpu = c0.map_or(Duration::ZERO, |c0| {
                                    thread_cpu_time().saturating_sub(c0)
                                });
                                encoded.write_to(&mut f.file)?;
                                break 'made (encoded.len(), cpu, t1);
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                                let fill = gauge.fill();
                                if let Some(change) = self.level.observe_now(fill, &self.ledger) {
                                    apply_level(
                                        &mut self.encoder,
                                        &self.ledger,
                                        &self.channel,
                                        change,
                                        fill,
                                    );
                                }
                                // The work given up is no level's cost.
                                c0 = Some(thread_cpu_time());
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    let encoded = self.encoder.encode(count, data, &f.sync)?;
                    let t1 = Instant::now();
                    let cpu = c0.map_or(Duration::ZERO, |c0| thread_cpu_time().saturating_sub(c0));
                    encoded.write_to(&mut f.file)?;
                    (encoded.len(), cpu, t1)
                }
                Body::Encoded(block, cpu) => {
                    let block = block?;
                    let t1 = Instant::now();
                    let at = block.len() - pool::SYNC_LEN;
                    block[at..].copy_from_slice(&f.sync);
                    f.file.write_all(block)?;
                    (block.len() as u64, cpu, t1)
                }
            };
            f.len += len;
            f.index_block(offset, &meta);
            f.start_writeback();
            f.allocate_ahead(self.spec.rotate_size);
            self.level.add_work(meta.bytes, cpu + t1.elapsed());
            f.records += count;
            Ok(())
        });
        match result {
            Ok(()) => {
                self.wrote_a_block();
                self.ledger.archived(count);
                if self.spec.fsync == Fsync::Interval {
                    self.files.sync_every(self.spec.flush_interval);
                }
                if self
                    .files
                    .open
                    .as_ref()
                    .is_some_and(|f| f.len >= self.spec.rotate_size)
                {
                    self.close_file();
                }
            }
            Err(e) => {
                self.ledger.archive_dropped(count);
                self.disk_trouble("write", &e, count);
            }
        }
    }

    /// Records disk trouble: the archive is unhealthy until a file opens
    /// again. The broken file is cut back to its last whole block and closed.
    fn disk_trouble(&mut self, what: &str, e: &io::Error, lost: u64) {
        self.ledger.archive_error();
        self.ledger.set_archive_healthy(false);
        match self.trouble.occurred(lost, Instant::now()) {
            Report::Started => tracing::error!(
                channel = %self.channel, dir = %self.files.dir().display(), error = %e, lost,
                "archive {what} failed; the live outputs go on, the archive retries every {}s \
                 (logged again once a minute while it lasts, and when it ends)",
                RETRY_AFTER.as_secs()
            ),
            Report::Ongoing { times, lost, for_ } => tracing::warn!(
                channel = %self.channel, error = %e, failures = times, lost,
                "archive {what} still failing after {}s ({times} failures, {lost} datagrams lost in the last minute)",
                for_.as_secs()
            ),
            Report::Quiet => {}
        }
        if let Some(f) = &self.files.open {
            let _ = f.file.set_len(f.len);
        }
        self.close_file();
        self.files.retry_after(RETRY_AFTER);
    }

    fn ensure_file(&mut self, block: &BlockMeta) -> io::Result<()> {
        self.files.ensure(block)?;
        Ok(())
    }

    /// A block was written: the archive is healthy (again). Opening a file
    /// is not enough: on a full disk the open works and the write fails.
    fn wrote_a_block(&mut self) {
        self.ledger.set_archive_healthy(true);
        if let Some((lasted, lost)) = self.trouble.ended(Instant::now()) {
            tracing::info!(
                channel = %self.channel, lost,
                "archive writing again, after {}s of failures ({lost} datagrams lost in all)",
                lasted.as_secs()
            );
        }
    }

    /// Hands the open file to the closer thread, which finishes it (fsync,
    /// rename) without holding up the writing of the next one.
    fn close_file(&mut self) {
        let Some(f) = self.files.open.take() else {
            return;
        };
        match &self.closer {
            Some(tx) => {
                if let Err(e) = tx.send(f.into_closed()) {
                    // The closer is gone (it panicked): close here.
                    self.closer_state.close(e.into_inner());
                }
            }
            None => self.closer_state.close(f.into_closed()),
        }
    }
}

/// The reader of the channel's `archive.time_field`, if it has one (the
/// schema was checked when the configuration was read: one that does not
/// compile here leaves the index without record times, and says so).
fn record_time(spec: &ArchiveSpec, schema_json: &str) -> Option<RecordTime> {
    let field = spec.time_field.as_deref()?;
    let read = apache_avro::Schema::parse_str(schema_json)
        .map_err(|e| e.to_string())
        .and_then(|s| RecordTime::new(&s, field));
    match read {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::warn!(field, error = %e, "archive.time_field cannot be read; the block index will hold arrival times only");
            None
        }
    }
}

/// How many channels share this host: `SPEEDDATA_CHANNELS`, which the
/// orchestrator sets when it starts a relay; 1 for a relay on its own.
fn channels_on_host() -> usize {
    std::env::var(crate::config::CHANNELS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(1, |n| n.max(1))
}

fn probe_writable(dir: &Path) -> io::Result<()> {
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    let _ = fs::remove_file(&probe);
    crate::nofollow::open(OpenOptions::new().write(true).create_new(true), 0, &probe)?;
    fs::remove_file(&probe)
}

/// Applies a level the controller chose (`None`: stored), and says so.
fn apply_level(
    encoder: &mut BlockEncoder,
    ledger: &Ledger,
    channel: &str,
    (level, degraded): (Option<i32>, bool),
    fill: f64,
) {
    if let Err(e) = encoder.set_zstd(level) {
        tracing::warn!(channel = %channel, error = %e, "cannot change the zstd level");
        return;
    }
    ledger.set_archive_level(true, level);
    let shown = level.map_or("stored (no compression)".to_string(), |l| l.to_string());
    if degraded {
        tracing::info!(channel = %channel, level = %shown, queue_fill = fill, "archive: compressing less to keep up");
    } else {
        tracing::info!(channel = %channel, level = %shown, "archive: back at the preferred zstd level");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container;
    use crate::file_names::epoch_ms;
    use crate::holds;
    use crate::ledger::BatchCounts;
    use crate::varint::read_long_from;
    use std::time::SystemTime;

    fn spec(dir: &Path) -> ArchiveSpec {
        ArchiveSpec {
            dir: dir.to_path_buf(),
            codec: crate::config::Codec::Null,
            block_size: 1 << 10,
            rotate_size: 1 << 20,
            rotate_interval: Duration::from_secs(60),
            flush_interval: Duration::from_secs(3_600),
            fsync: Fsync::Never,
            queue: 1 << 20,
            quarantine_size: 0,
            retention_age: None,
            retention_size: None,
            time_field: None,
            adaptive: true,
            compress_threads: None,
        }
    }

    /// An archive of `"int"` records and where it reports closed files.
    fn archive(
        dir: &Path,
    ) -> (
        Archive,
        tokio::sync::mpsc::UnboundedReceiver<FileClosed>,
        Arc<Ledger>,
    ) {
        let ledger = Arc::new(Ledger::new());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let a = Archive::open(&spec(dir), "ch", r#""int""#, None, ledger.clone(), tx).unwrap();
        (a, rx, ledger)
    }

    /// A batch of `"int"` records, `ints` (0 to 63: one zigzag byte each),
    /// that arrived at `at`, counted as received and in flight.
    fn int_batch(ledger: &Ledger, ints: &[u8], at: SystemTime) -> Batch {
        let mut c = BatchCounts::new();
        c.datagrams = ints.len() as u64;
        c.to_archive = ints.len() as u64;
        ledger.received(&c);
        let mut b = Batch::with_capacity(ints.len());
        b.mark_arrival(at);
        for &i in ints {
            b.push(&[2 * i]);
        }
        b
    }

    /// A batch of `n` records that arrived at `at`, in flight.
    fn batch(ledger: &Ledger, n: usize, at: SystemTime) -> Batch {
        let ints: Vec<u8> = (0..n).map(|i| (i % 64) as u8).collect();
        int_batch(ledger, &ints, at)
    }

    #[test]
    fn a_file_is_named_after_its_first_record_s_arrival_and_its_close() {
        let root = tempfile::tempdir().unwrap();
        let (mut a, mut closed, ledger) = archive(root.path());
        // The records arrived a while before the archive takes them.
        let arrived = SystemTime::now() - Duration::from_secs(5);
        a.take(&batch(&ledger, 3, arrived));
        let before = SystemTime::now();
        a.finish();
        let report = closed.try_recv().unwrap();
        let name = report.path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&format!("ch-{}--", holds::stamp(arrived))),
            "{name}"
        );
        let span = holds::file_span(&report.path).unwrap();
        let to_ms = epoch_ms(span.to);
        assert!(
            to_ms >= epoch_ms(before) && span.to <= SystemTime::now(),
            "{name}"
        );
        assert_eq!(report.records, 3);
        assert!(a.files.dir().read_dir().unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".part")));
    }

    #[test]
    fn space_allocated_ahead_is_given_back_at_close() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let (mut a, mut closed, ledger) = archive(root.path());
        a.take(&batch(&ledger, 3, SystemTime::now()));
        a.write_block();
        let f = a.files.open.as_ref().unwrap();
        let on_disk = |m: std::fs::Metadata| m.blocks() * 512;
        if f.allocated != u64::MAX {
            // Up to the rotation size (1 MiB here), not beyond.
            assert_eq!(f.allocated, a.spec.rotate_size);
            let m = f.file.metadata().unwrap();
            assert!(on_disk(m.clone()) >= a.spec.rotate_size, "{m:?}");
            assert!(m.len() < 4096, "the length is what was written");
        }
        a.finish();
        let report = closed.try_recv().unwrap();
        let m = std::fs::metadata(&report.path).unwrap();
        assert_eq!(m.len(), report.bytes);
        assert!(on_disk(m) < 64 << 10, "given back");
        assert_eq!(block_counts(&report.path), [3]);
    }

    #[test]
    fn each_block_is_indexed_with_its_arrivals_and_record_times_and_recovery_rebuilds_the_index() {
        let root = tempfile::tempdir().unwrap();
        let schema = r#"{"type": "record", "name": "R", "fields": [
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-micros"}}]}"#;
        let mut spec = spec(root.path());
        spec.time_field = Some("t".into());
        spec.block_size = 40;
        let ledger = Arc::new(Ledger::new());
        let (tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        let mut a = Archive::open(&spec, "ch", schema, None, ledger.clone(), tx.clone()).unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(60);
        // Record times run backwards, so a block's least is its last.
        for round in 0..10u64 {
            let mut c = BatchCounts::new();
            c.datagrams = 10;
            c.to_archive = 10;
            ledger.received(&c);
            let mut b = Batch::with_capacity(10);
            b.mark_arrival(t0 + Duration::from_millis(round * 100));
            for i in 0..10u64 {
                let mut r = Vec::new();
                crate::varint::put_long(&mut r, 1_000_000 - (round * 10 + i) as i64);
                b.push(&r);
            }
            a.take(&b);
        }
        a.finish();
        let path = closed.try_recv().unwrap().path;
        let span = (0, i64::MAX);
        let blocks = crate::index::load(&path, span).unwrap();
        assert!(blocks.blocks.len() > 3, "{:?}", blocks.blocks);
        assert!(
            blocks.blocks.iter().all(|b| b.indexed),
            "{:?}",
            blocks.blocks
        );
        assert_eq!(blocks.blocks.iter().map(|b| b.count).sum::<u64>(), 100);
        let (mut next, mut raw, mut out) = (1_000_000, Vec::new(), Vec::new());
        let file = fs::File::open(&path).unwrap();
        for b in &blocks.blocks {
            let (lo, hi) = b.time.unwrap();
            assert_eq!(hi, next, "{b:?}");
            assert_eq!(lo, next - b.count as i64 + 1, "{b:?}");
            next = lo - 1;
            assert!(b.arrival_us.0 <= b.arrival_us.1);
            assert!(b.arrival_us.0 >= crate::index::epoch_us(t0));
            crate::index::read_block(&file, &blocks, b, &mut raw, &mut out).unwrap();
            assert_eq!(out.len() as u64, b.count * 3);
        }
        // A crash that lost the index's last two entries: recovery adds
        // them back, times read from the records, arrival the file's span.
        let stem = crate::index::stem_of(path.file_name().unwrap().to_str().unwrap())
            .unwrap()
            .to_string();
        let idx = root.path().join("ch").join(crate::index::index_name(&stem));
        let bytes = fs::read(&idx).unwrap();
        fs::write(&idx, &bytes[..bytes.len() - 56 - 20]).unwrap();
        let part = root
            .path()
            .join("ch")
            .join(crate::file_names::part_name(&stem));
        fs::rename(&path, &part).unwrap();
        drop(a);
        let _a = Archive::open(&spec, "ch", schema, None, ledger, tx).unwrap();
        let rebuilt = fs::read_dir(root.path().join("ch"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "avro"))
            .unwrap();
        let again = crate::index::load(&rebuilt, span).unwrap();
        assert!(again.blocks.iter().all(|b| b.indexed));
        let times =
            |f: &crate::index::FileBlocks| f.blocks.iter().map(|b| b.time).collect::<Vec<_>>();
        assert_eq!(times(&again), times(&blocks));
        let n = blocks.blocks.len();
        assert_eq!(again.blocks[..n - 2], blocks.blocks[..n - 2]);
        assert_eq!(fs::read(&idx).unwrap().len(), bytes.len());
    }

    /// The record count of each block of an archive file.
    fn block_counts(path: &Path) -> Vec<i64> {
        let mut r = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        container::read_header(&mut r).unwrap();
        let mut counts = Vec::new();
        while let Ok(n) = read_long_from(&mut r) {
            let size = read_long_from(&mut r).unwrap();
            let skipped = std::io::copy(
                &mut std::io::Read::take(&mut r, size as u64 + 16),
                &mut std::io::sink(),
            );
            assert_eq!(skipped.unwrap(), size as u64 + 16);
            counts.push(n);
        }
        counts
    }

    #[test]
    fn a_full_batch_is_written_as_its_own_block_after_what_waits_and_reads_back_in_order() {
        for codec in [
            crate::config::Codec::Null,
            crate::config::Codec::Zstd { level: 1 },
        ] {
            let root = tempfile::tempdir().unwrap();
            let ledger = Arc::new(Ledger::new());
            let (tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
            let mut spec = spec(root.path());
            spec.codec = codec;
            let mut a = Archive::open(&spec, "ch", r#""int""#, None, ledger.clone(), tx).unwrap();
            // Stored zstd frames too: the records written in place.
            a.encoder.set_zstd(None).unwrap();
            // Ints 0..63 as one-byte zigzag varints, counted as received.
            let ints = |from: usize, n: usize| -> Batch {
                let ints: Vec<u8> = (from..from + n).map(|i| (i % 64) as u8).collect();
                int_batch(&ledger, &ints, SystemTime::now())
            };
            // Three records wait in the block; then a batch of the block
            // size, and one just over it, go out as blocks of their own.
            a.take(&ints(0, 3));
            assert_eq!(a.block.records(), 3);
            a.take(&ints(3, 1024));
            assert_eq!(a.block.records(), 0, "written, nothing waits");
            a.take(&ints(1027, 1025));
            assert_eq!(a.block.records(), 1, "the record past the block waits");
            a.take(&ints(2052, 5));
            assert_eq!(a.block.records(), 6, "a small batch is copied in");
            // Two and a half blocks: what waits, two blocks straight from
            // the batch, and the half waits for the next batch.
            a.take(&ints(2057, 2560));
            assert_eq!(a.block.records(), 512);
            a.finish();
            let report = closed.try_recv().unwrap();
            assert_eq!(report.records, 4617);
            assert_eq!(
                block_counts(&report.path),
                [3, 1024, 1024, 6, 1024, 1024, 512],
                "{codec:?}"
            );
            let file = std::fs::File::open(&report.path).unwrap();
            let got: Vec<i32> = apache_avro::Reader::new(file)
                .unwrap()
                .map(|v| match v.unwrap() {
                    apache_avro::types::Value::Int(i) => i,
                    other => panic!("{other:?}"),
                })
                .collect();
            let want: Vec<i32> = (0..4617).map(|i| i % 64).collect();
            assert_eq!(got, want, "{codec:?}");
        }
    }

    /// With a pool, blocks compressed on several threads are written in
    /// order, stored blocks (written without the pool) among them: across
    /// size rotations every record is in the files, in the order taken,
    /// each file whole for apache-avro, and every record is counted
    /// archived.
    #[test]
    fn the_pool_writes_blocks_in_order_across_rotations() {
        let root = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::new());
        let (tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        let mut spec = spec(root.path());
        spec.codec = crate::config::Codec::Zstd { level: 3 };
        spec.compress_threads = Some(3);
        spec.rotate_size = 8 << 10;
        let mut a = Archive::open(&spec, "ch", r#""int""#, None, ledger.clone(), tx).unwrap();
        assert!(a.pool.enabled());
        let mut sent = 0usize;
        for round in 0..200 {
            // Batches of 1 to 2,000 records: blocks of every size, some
            // straight from the batch, some packed.
            let n = 1 + (round * 397) % 2_000;
            // Ints 0..63, varied enough to compress unevenly.
            let ints: Vec<u8> = (sent..sent + n)
                .map(|i| ((i * 7 + i / 64) % 64) as u8)
                .collect();
            let b = int_batch(&ledger, &ints, SystemTime::now());
            sent += n;
            // A while stored, as the adaptive level does under load:
            // written here, after every block out with the pool.
            if round == 80 {
                a.encoder.set_zstd(None).unwrap();
            }
            if round == 120 {
                a.encoder.set_zstd(Some(3)).unwrap();
            }
            a.take(&b);
            if round % 50 == 0 {
                // The loop's own polling, between batches.
                while a.write_pooled(false) {}
            }
        }
        a.finish();
        assert!(a.pool.idle());
        let mut files = Vec::new();
        while let Ok(r) = closed.try_recv() {
            files.push(r);
        }
        assert!(files.len() > 3, "rotated by size: {} files", files.len());
        files.sort_by(|x, y| x.path.cmp(&y.path));
        let mut got = Vec::new();
        for r in &files {
            let file = std::fs::File::open(&r.path).unwrap();
            let before = got.len();
            for v in apache_avro::Reader::new(file).unwrap() {
                match v.unwrap() {
                    apache_avro::types::Value::Int(i) => got.push(i),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!((got.len() - before) as u64, r.records);
        }
        let want: Vec<i32> = (0..sent).map(|i| ((i * 7 + i / 64) % 64) as i32).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "records out of order");
        let c = ledger.counters();
        assert_eq!(
            (c.archived, c.archive_dropped, c.in_flight),
            (sent as u64, 0, 0)
        );
    }

    #[test]
    fn a_file_closes_rotate_interval_after_its_first_record_even_unwritten() {
        let root = tempfile::tempdir().unwrap();
        let (mut a, mut closed, ledger) = archive(root.path());
        let arrived = SystemTime::now();
        a.take(&batch(&ledger, 2, arrived));
        let taken = Instant::now();
        // No block written yet (flush_interval is an hour): no file yet.
        a.tick(taken + Duration::from_secs(59));
        assert!(a.files.open.is_none() && closed.try_recv().is_err());
        assert_eq!(
            a.next_deadline(),
            a.block.started().map(|s| s + Duration::from_secs(60))
        );
        a.tick(taken + Duration::from_secs(61));
        let report = closed.try_recv().unwrap();
        assert_eq!(report.records, 2);
        assert_eq!(
            holds::stamp(holds::file_span(&report.path).unwrap().from),
            holds::stamp(arrived)
        );
        // The next records start the next file, with a later start.
        a.take(&batch(&ledger, 1, arrived));
        a.finish();
        let next = closed.try_recv().unwrap();
        let span = holds::file_span(&next.path).unwrap();
        assert_eq!(
            epoch_ms(span.from),
            epoch_ms(arrived) + 1,
            "unique, in order"
        );
        assert!(next.path > report.path);
    }
}
