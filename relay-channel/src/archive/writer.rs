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

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{RecvTimeoutError, Sender};
use tokio::sync::mpsc::UnboundedSender;

use super::adaptive::{Adaptive, Signals, Work};
use super::closer::{epoch_ms, file_stamp, ClosedFile, Closer};
use super::pool::{self, thread_cpu_time, Pool};
use super::recovery;
use crate::config::{ArchiveSpec, Codec, Fsync};
use crate::container::{self, BlockEncoder};
use crate::handover::{ArchiveInbox, Batch};
use crate::ledger::Ledger;
use crate::logs::RateLimit;
use crate::status::FileClosed;

/// How long the archive waits after disk trouble before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest wait for a batch, so timers are looked at often enough.
const TICK: Duration = Duration::from_millis(100);

/// A file being written.
struct OpenFile {
    file: File,
    part: PathBuf,
    /// `{channel}-{from}`: its name without `.avro.part`.
    stem: String,
    /// The arrival time of its first record, in ms since the epoch.
    from_ms: u64,
    sync: [u8; 16],
    len: u64,
    records: u64,
    /// When its first record was taken: it closes `rotate_interval` later.
    opened: Instant,
    /// Where the writeback started by [`start_writeback`] has reached.
    written_back: u64,
    /// Up to where its pages have been let go of from the page cache.
    released: u64,
    /// Up to where space is allocated ahead of the writes
    /// ([`allocate_ahead`]); `u64::MAX` once the filesystem refused.
    allocated: u64,
}

impl OpenFile {
    /// The file, closed now: `to` is the time, not before `from`.
    fn into_closed(self) -> ClosedFile {
        ClosedFile {
            file: self.file,
            part: self.part,
            stem: self.stem,
            to_ms: epoch_ms(SystemTime::now()).max(self.from_ms),
            len: self.len,
            records: self.records,
        }
    }
}

/// The archive thread of one channel: the open block and the open file.
pub(crate) struct Archive {
    spec: ArchiveSpec,
    channel: String,
    dir: PathBuf,
    schema_json: String,
    ledger: Arc<Ledger>,
    encoder: BlockEncoder,
    block: Vec<u8>,
    block_records: u64,
    block_started: Option<Instant>,
    /// The arrival time of the open block's first record.
    block_first_arrival: Option<SystemTime>,
    file: Option<OpenFile>,
    retry_at: Option<Instant>,
    last_start_ms: u64,
    last_fsync: Instant,
    error_log: RateLimit,
    /// Where closed files go to be finished; `None` before `run` starts it
    /// (and after `finish`), when files are closed on this thread.
    closer: Option<Sender<ClosedFile>>,
    closer_state: Closer,
    /// The zstd level under load (`archive.adaptive`); `None` with other
    /// codecs or when turned off.
    adaptive: Option<Adaptive>,
    last_adapt: Option<Instant>,
    /// The receive thread's `recvmmsg` calls and full batches at the last
    /// look.
    last_receive_calls: (u64, u64),
    /// The blocks compressed and written since the last look: their input
    /// bytes and the time it took, the cost of the level in use.
    work: Work,
    /// With `archive.compress_threads` above 1, the threads that compress
    /// blocks; `None`: this thread compresses them.
    pool: Option<Pool>,
    /// The blocks out with the pool, in order.
    in_flight: VecDeque<BlockMeta>,
}

/// What the archive knows of a block besides its records.
#[derive(Debug, Clone, Copy)]
struct BlockMeta {
    count: u64,
    /// The arrival time of its first record: a file it starts is named
    /// after it.
    first_arrival: Option<SystemTime>,
    /// When its first record was taken: a file it starts closes
    /// `rotate_interval` later.
    started: Option<Instant>,
    /// Its records' bytes.
    bytes: u64,
}

/// A block to write: its records, encoded here, or encoded by the pool.
enum Body<'a> {
    Records(&'a [u8]),
    /// The whole block with a placeholder sync marker, and the compress
    /// thread's CPU time for it; or why it could not be encoded.
    Encoded(io::Result<&'a mut [u8]>, Duration),
}

/// The share of `recvmmsg` calls that filled their batch above which the
/// receive thread counts as saturated (at least this many calls between
/// two looks).
const SATURATED_SHARE: f64 = 0.9;
const SATURATED_MIN_CALLS: u64 = 4;

/// Bytes written to a file after which the archive thread starts their
/// writeback itself (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does
/// not wait for it to finish), as RocksDB's `bytes_per_sync` does. Without
/// it the kernel lets gigabytes of dirty pages pile up and then writes them
/// back all at once on its own threads, which take the CPU the receive
/// thread needs in a burst, unseen by the archive; with it the cost of
/// writing is steady, and counted in the archive's time, where the adaptive
/// level weighs it against compressing.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// How far behind the writeback started the archive lets go of the file's
/// pages from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`): by
/// then they are written, clean, and dropped at once; a page still being
/// written is left alone by the kernel, and goes the usual way.
///
/// The archive is written once and read later, if at all: keeping it in
/// the page cache would only push out what other programs read. And
/// writing into pages the kernel has just freed costs several times less
/// CPU than into fresh ones, where a fresh page can cost the host a fault
/// too (measured in benches/RESULTS.md).
const RELEASE_BEHIND: u64 = 64 << 20;

/// Starts the writeback of what `f` holds beyond its last start, once
/// that is [`WRITEBACK_EVERY`] bytes, and lets go of the pages
/// [`RELEASE_BEHIND`] bytes behind it. Only hints: an error (a filesystem
/// without them) is ignored, and the kernel writes the pages back anyway.
fn start_writeback(f: &mut OpenFile) {
    if f.len - f.written_back < WRITEBACK_EVERY {
        return;
    }
    let (from, len) = (f.written_back, f.len - f.written_back);
    let fd = f.file.as_raw_fd();
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // open for as long as `f` lives.
    unsafe {
        libc::sync_file_range(
            fd,
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
    f.written_back = f.len;
    let release_to = f.written_back.saturating_sub(RELEASE_BEHIND);
    if release_to > f.released {
        // SAFETY: as above, integer arguments only.
        unsafe {
            libc::posix_fadvise(
                fd,
                f.released as libc::off_t,
                (release_to - f.released) as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
        f.released = release_to;
    }
}

/// How often the archive looks for blocks the pool has compressed when it
/// has nothing else to do.
const POOL_POLL: Duration = Duration::from_millis(1);

/// How often the adaptive level looks at the queue and the kernel's drops.
const ADAPT_EVERY: Duration = Duration::from_millis(5);

/// How much disk space the archive allocates ahead of its writes, at a
/// time (`fallocate(FALLOC_FL_KEEP_SIZE)`: the file's length stays what
/// was written). Writing into allocated space spares ext4 its delayed
/// allocation, page by page, and the CPU it costs (measured in
/// benches/RESULTS.md). What is left over is given back when the file
/// closes (`set_len`), or when a crash's leftover is recovered.
const ALLOCATE_AHEAD: u64 = 16 << 20;

/// Allocates space up to [`ALLOCATE_AHEAD`] beyond what `f` holds (not
/// beyond the size at which files rotate), once less than half of that is
/// left. Only a hint: a filesystem without it, or a full disk, and the
/// writes go on as before; this file stops asking.
fn allocate_ahead(f: &mut OpenFile, rotate_size: u64) {
    if f.allocated == u64::MAX || f.allocated >= f.len + ALLOCATE_AHEAD / 2 {
        return;
    }
    let to = (f.len + ALLOCATE_AHEAD).min(rotate_size.max(f.len));
    if to <= f.allocated {
        return;
    }
    let from = f.allocated.max(f.len);
    // SAFETY: fallocate only reads its integer arguments; the fd is open
    // for as long as `f` lives.
    let r = unsafe {
        libc::fallocate(
            f.file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            from as libc::off_t,
            (to - from) as libc::off_t,
        )
    };
    f.allocated = if r == 0 { to } else { u64::MAX };
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
        recovery::recover_leftovers(&dir);
        let adaptive = match spec.codec {
            Codec::Zstd { level } if spec.adaptive => Some(Adaptive::new(level)),
            _ => None,
        };
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
            dir,
            schema_json: schema_json.to_string(),
            ledger: ledger.clone(),
            encoder: BlockEncoder::new(spec.codec),
            block: Vec::with_capacity(spec.block_size + crate::config::MAX_DATAGRAM),
            block_records: 0,
            block_started: None,
            block_first_arrival: None,
            file: None,
            retry_at: None,
            last_start_ms: 0,
            last_fsync: Instant::now(),
            error_log: RateLimit::new(3, Duration::from_secs(60)),
            closer: None,
            closer_state: Closer::new(spec, channel, holds_dir, ledger, closed),
            adaptive,
            last_adapt: None,
            last_receive_calls: (0, 0),
            work: Work::default(),
            pool,
            in_flight: VecDeque::new(),
        })
    }

    /// The thread body: runs until the receive side hangs up, then writes
    /// out everything buffered and closes the file.
    pub(crate) fn run(mut self, inbox: ArchiveInbox) {
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
            if !self.in_flight.is_empty() {
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

    /// Lets the adaptive level see the archive queue's fill and the
    /// kernel's drops (at most every [`ADAPT_EVERY`]), and applies a new
    /// level to the next blocks.
    fn adapt(&mut self, fill: f64) {
        let Some(a) = &mut self.adaptive else {
            return;
        };
        let now = Instant::now();
        if self
            .last_adapt
            .is_some_and(|t| now.duration_since(t) < ADAPT_EVERY)
        {
            return;
        }
        self.last_adapt = Some(now);
        let (calls, full) = self.ledger.receive_calls();
        let (calls0, full0) = std::mem::replace(&mut self.last_receive_calls, (calls, full));
        let (calls, full) = (calls.saturating_sub(calls0), full.saturating_sub(full0));
        let saturated =
            calls >= SATURATED_MIN_CALLS && full as f64 >= SATURATED_SHARE * calls as f64;
        let (changed, degraded_for) = a.observe_all(
            Signals {
                fill,
                kernel_drops: self.ledger.kernel_drops(),
                saturated,
                work: std::mem::take(&mut self.work),
            },
            now,
        );
        self.ledger.archive_degraded(degraded_for);
        if let Some(level) = changed {
            let degraded = a.degraded();
            if let Err(e) = self.encoder.set_zstd(level) {
                tracing::warn!(channel = %self.channel, error = %e, "cannot change the zstd level");
                return;
            }
            self.ledger.set_archive_level(true, level);
            let shown = level.map_or("stored (no compression)".to_string(), |l| l.to_string());
            if degraded {
                tracing::info!(channel = %self.channel, level = %shown, queue_fill = fill, "archive: compressing less to keep up");
            } else {
                tracing::info!(channel = %self.channel, level = %shown, "archive: back at the preferred zstd level");
            }
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
        let mut first = None;
        for (r, arrived) in batch.records_with_arrival() {
            if records == 0 {
                first = arrived;
            }
            end += r.len();
            records += 1;
            if end - start >= size {
                self.start_block(records, first);
                self.write_records(&data[start..end]);
                (start, records) = (end, 0);
            }
        }
        if records > 0 {
            self.start_block(records, first);
            self.block.extend_from_slice(&data[start..]);
        }
    }

    /// The open block, empty, now holds `records` records, the first of
    /// which arrived at `first`.
    fn start_block(&mut self, records: u64, first: Option<SystemTime>) {
        self.block_records = records;
        self.block_first_arrival = Some(first.unwrap_or_else(SystemTime::now));
        self.block_started = Some(Instant::now());
    }

    /// Copies a batch's records into the open block, writing it out each
    /// time the next record would not fit.
    fn copy_in(&mut self, batch: &Batch) {
        for (r, arrived) in batch.records_with_arrival() {
            if self.block_records > 0 && self.block.len() + r.len() > self.spec.block_size {
                self.write_block();
            }
            if self.block_records == 0 {
                self.block_first_arrival = Some(arrived.unwrap_or_else(SystemTime::now));
            }
            self.block.extend_from_slice(r);
            self.block_records += 1;
            self.block_started.get_or_insert_with(Instant::now);
        }
        if self.block.len() >= self.spec.block_size {
            self.write_block();
        }
    }

    /// When the current file's first record was taken: the open file's,
    /// or the open block's when no file is open yet (the block starts the
    /// next file).
    fn file_started(&self) -> Option<Instant> {
        match &self.file {
            Some(f) => Some(f.opened),
            None => self
                .in_flight
                .front()
                .map_or(self.block_started, |b| b.started),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let flush = self.block_started.map(|s| s + self.spec.flush_interval);
        let rotate = self.file_started().map(|s| s + self.spec.rotate_interval);
        match (flush, rotate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time-driven work: close a block at `flush_interval`, a file
    /// `rotate_interval` after its first record.
    fn tick(&mut self, now: Instant) {
        if let Some(s) = self.block_started {
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
        let block = std::mem::take(&mut self.block);
        self.write_records(&block);
        self.block = block;
        self.block.clear();
    }

    /// Writes `data`, the records of the open block (`block_records` of
    /// them, the first arrived at `block_first_arrival`), as one block to
    /// the file (opening one if needed), or hands it to the pool to be
    /// compressed and written in turn; and empties the open block.
    fn write_records(&mut self, data: &[u8]) {
        let meta = BlockMeta {
            count: self.block_records,
            first_arrival: self.block_first_arrival.take(),
            started: self.block_started.take(),
            bytes: data.len() as u64,
        };
        self.block_records = 0;
        if meta.count == 0 {
            return;
        }
        let level = self.encoder.zstd_level();
        // Stored zstd blocks cost nothing to make, and here are written
        // straight from the records: not worth the pool's copy (and the
        // adaptive level stores exactly when the CPU is short).
        let stored = matches!(self.spec.codec, Codec::Zstd { .. }) && level.is_none();
        if self.pool.is_none() || stored {
            self.drain_pool();
            self.put_block(meta, Body::Records(data));
            return;
        }
        while self.pool.as_ref().is_some_and(|p| !p.has_room()) {
            self.write_pooled(true);
        }
        if let Some(p) = &mut self.pool {
            p.send(meta.count, data, level);
            self.in_flight.push_back(meta);
        }
    }

    /// Writes the next block the pool has compressed, waiting for it if
    /// `wait`; false when there is none (or none back yet).
    fn write_pooled(&mut self, wait: bool) -> bool {
        let Some(mut done) = self.pool.as_mut().and_then(|p| p.next(wait)) else {
            return false;
        };
        let meta = self
            .in_flight
            .pop_front()
            .expect("the archive keeps each block out with the pool");
        let result = std::mem::replace(&mut done.result, Ok(()));
        let body = result.map(|()| &mut done.block[..]);
        self.put_block(meta, Body::Encoded(body, done.cpu));
        if let Some(p) = &mut self.pool {
            p.recycle(done);
        }
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
        if self.file.is_none() && self.retry_at.is_some_and(|t| Instant::now() < t) {
            // Still waiting to retry after disk trouble: already reported.
            self.ledger.archive_dropped(count);
            return;
        }
        let result = self.ensure_file(&meta).and_then(|()| {
            let f = self.file.as_mut().expect("ensure_file opened a file");
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
            let (len, cpu, t1) = match body {
                Body::Records(data) => {
                    // Only the adaptive level needs the cost (two system
                    // calls a block).
                    let c0 = self.adaptive.is_some().then(thread_cpu_time);
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
            start_writeback(f);
            allocate_ahead(f, self.spec.rotate_size);
            self.work.bytes += meta.bytes;
            self.work.busy += cpu + t1.elapsed();
            f.records += count;
            Ok(())
        });
        match result {
            Ok(()) => {
                self.ledger.archived(count);
                if self.spec.fsync == Fsync::Interval
                    && self.last_fsync.elapsed() >= self.spec.flush_interval
                {
                    if let Some(f) = &self.file {
                        if let Err(e) = f.file.sync_data() {
                            tracing::warn!(file = %f.part.display(), error = %e, "fsync failed");
                        }
                    }
                    self.last_fsync = Instant::now();
                }
                if self
                    .file
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
        if self.ledger.set_archive_healthy(false) {
            tracing::error!(
                channel = %self.channel, dir = %self.dir.display(), error = %e, lost,
                "archive {what} failed; the live outputs go on, the archive retries every {}s",
                RETRY_AFTER.as_secs()
            );
        } else if let Some(suppressed) = self.error_log.allow(Instant::now()) {
            tracing::warn!(channel = %self.channel, error = %e, lost, suppressed, "archive {what} still failing");
        }
        if let Some(f) = self.file.take() {
            let good = f.len;
            let _ = f.file.set_len(good);
            self.file = Some(f);
            self.close_file();
        }
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
    }

    fn ensure_file(&mut self, block: &BlockMeta) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        match self.open_file(block) {
            Ok(f) => {
                self.file = Some(f);
                self.retry_at = None;
                if !self.ledger.set_archive_healthy(true) {
                    tracing::info!(channel = %self.channel, "archive writing again");
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the file `block` starts: named after the arrival time of the
    /// block's first record.
    fn open_file(&mut self, block: &BlockMeta) -> io::Result<OpenFile> {
        fs::create_dir_all(&self.dir)?;
        refuse_symlinked_folder(&self.dir)?;
        let first = block.first_arrival.unwrap_or_else(SystemTime::now);
        // Names carry the start time to the millisecond; keep them unique and
        // in order even when files rotate faster than that.
        let mut ms = epoch_ms(first).max(self.last_start_ms + 1);
        loop {
            let stem = format!("{}-{}", self.channel, file_stamp(ms));
            let part = self.dir.join(format!("{stem}.avro.part"));
            // A file of the same start, named as before spans were.
            if fs::symlink_metadata(self.dir.join(format!("{stem}.avro"))).is_ok() {
                ms += 1;
                continue;
            }
            let mut file = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&part)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    ms += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.last_start_ms = ms;
            let sync = container::new_sync_marker();
            let mut header = Vec::new();
            container::encode_header(&self.schema_json, &self.spec.codec, &sync, &mut header);
            file.write_all(&header)?;
            tracing::debug!(file = %part.display(), "archive file opened");
            return Ok(OpenFile {
                file,
                part,
                stem,
                from_ms: ms,
                sync,
                len: header.len() as u64,
                records: 0,
                opened: block.started.unwrap_or_else(Instant::now),
                written_back: 0,
                released: 0,
                allocated: 0,
            });
        }
    }

    /// Hands the open file to the closer thread, which finishes it (fsync,
    /// rename) without holding up the writing of the next one.
    fn close_file(&mut self) {
        let Some(f) = self.file.take() else { return };
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
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)?;
    fs::remove_file(&probe)
}

/// A channel folder must be a real folder: one replaced by a symlink would
/// send the archive elsewhere.
pub(crate) fn refuse_symlinked_folder(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a symlink, not a folder", dir.display()),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holds;
    use crate::ledger::BatchCounts;

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
        assert!(a.dir.read_dir().unwrap().all(|e| !e
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
        let f = a.file.as_ref().unwrap();
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

    /// The record count of each block of an archive file.
    fn block_counts(path: &Path) -> Vec<i64> {
        let mut r = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        container::read_header(&mut r).unwrap();
        let mut counts = Vec::new();
        while let Ok(n) = container::read_long(&mut r) {
            let size = container::read_long(&mut r).unwrap();
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
            assert_eq!(a.block_records, 3);
            a.take(&ints(3, 1024));
            assert_eq!(a.block_records, 0, "written, nothing waits");
            a.take(&ints(1027, 1025));
            assert_eq!(a.block_records, 1, "the record past the block waits");
            a.take(&ints(2052, 5));
            assert_eq!(a.block_records, 6, "a small batch is copied in");
            // Two and a half blocks: what waits, two blocks straight from
            // the batch, and the half waits for the next batch.
            a.take(&ints(2057, 2560));
            assert_eq!(a.block_records, 512);
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
        assert!(a.pool.is_some());
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
        assert!(a.in_flight.is_empty());
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
        assert!(a.file.is_none() && closed.try_recv().is_err());
        assert_eq!(
            a.next_deadline(),
            a.block_started.map(|s| s + Duration::from_secs(60))
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

    #[test]
    fn file_stamps_sort_as_time() {
        assert_eq!(file_stamp(1_795_383_000_123), "20261122T213000.123Z");
        assert!(file_stamp(1_795_383_000_123) < file_stamp(1_795_383_000_124));
    }
}
