//! The open file: the archive file being written, and what opening the
//! next one takes (its name, its header, the wait after disk trouble).
//!
//! A file is written as `{channel}-{from}.avro.part`, `{from}` the arrival
//! time of its first record (see [`crate::file_names`]), and closed by the
//! [closer](super::closer). While it grows, the archive starts its
//! writeback, lets go of its pages, and allocates space ahead of the writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::block::BlockMeta;
use super::closer::ClosedFile;
use crate::config::Codec;
use crate::container;
use crate::file_names::{self, epoch_ms};
use crate::index::{self, IndexWriter};

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

/// How much disk space the archive allocates ahead of its writes, at a
/// time (`fallocate(FALLOC_FL_KEEP_SIZE)`: the file's length stays what
/// was written). Writing into allocated space spares ext4 its delayed
/// allocation, page by page, and the CPU it costs (measured in
/// benches/RESULTS.md). What is left over is given back when the file
/// closes (`set_len`), or when a crash's leftover is recovered.
const ALLOCATE_AHEAD: u64 = 16 << 20;

/// A file being written.
pub(super) struct OpenFile {
    pub(super) file: File,
    pub(super) part: PathBuf,
    /// `{channel}-{from}`: its name without `.avro.part`.
    stem: String,
    /// The arrival time of its first record, in ms since the epoch.
    from_ms: u64,
    pub(super) sync: [u8; 16],
    pub(super) len: u64,
    pub(super) records: u64,
    /// When its first record was taken: it closes `rotate_interval` later.
    pub(super) opened: Instant,
    /// Where the writeback started by [`start_writeback`](Self::start_writeback)
    /// has reached.
    written_back: u64,
    /// Up to where its pages have been let go of from the page cache.
    released: u64,
    /// Up to where space is allocated ahead of the writes
    /// ([`allocate_ahead`](Self::allocate_ahead)); `u64::MAX` once the
    /// filesystem refused.
    pub(super) allocated: u64,
    /// The file's block index.
    index: IndexWriter,
}

impl OpenFile {
    /// Adds the block just written at `offset` (up to `len`) to the index.
    pub(super) fn index_block(&mut self, offset: u64, block: &BlockMeta) {
        let us = |t: Option<SystemTime>| t.map_or(0, index::epoch_us);
        self.index.append(&index::Entry {
            offset,
            end: self.len,
            count: block.count,
            first_arrival_us: us(block.first_arrival),
            last_arrival_us: us(block.last_arrival.or(block.first_arrival)),
            min_time: block.times.0,
            max_time: block.times.1,
        });
    }

    /// The file, closed now: `to` is the time, not before `from`.
    pub(super) fn into_closed(self) -> ClosedFile {
        ClosedFile {
            file: self.file,
            part: self.part,
            stem: self.stem,
            to_ms: epoch_ms(SystemTime::now()).max(self.from_ms),
            len: self.len,
            records: self.records,
        }
    }

    /// Starts the writeback of what the file holds beyond its last start,
    /// once that is [`WRITEBACK_EVERY`] bytes, and lets go of the pages
    /// [`RELEASE_BEHIND`] bytes behind it. Only hints: an error (a
    /// filesystem without them) is ignored, and the kernel writes the pages
    /// back anyway.
    #[inline]
    pub(super) fn start_writeback(&mut self) {
        if self.len - self.written_back < WRITEBACK_EVERY {
            return;
        }
        let (from, len) = (self.written_back, self.len - self.written_back);
        let fd = self.file.as_raw_fd();
        crate::file_hints::start_writeback(fd, from, len);
        self.written_back = self.len;
        let release_to = self.written_back.saturating_sub(RELEASE_BEHIND);
        if release_to > self.released {
            crate::file_hints::drop_cached(fd, self.released, release_to - self.released);
            self.released = release_to;
        }
    }

    /// Allocates space up to [`ALLOCATE_AHEAD`] beyond what the file holds
    /// (not beyond the size at which files rotate), once less than half of
    /// that is left. Only a hint: a filesystem without it, or a full disk,
    /// and the writes go on as before; this file stops asking.
    #[inline]
    pub(super) fn allocate_ahead(&mut self, rotate_size: u64) {
        if self.allocated == u64::MAX || self.allocated >= self.len + ALLOCATE_AHEAD / 2 {
            return;
        }
        let to = (self.len + ALLOCATE_AHEAD).min(rotate_size.max(self.len));
        if to <= self.allocated {
            return;
        }
        let from = self.allocated.max(self.len);
        let r = crate::file_hints::allocate(self.file.as_raw_fd(), from, to - from);
        self.allocated = if r { to } else { u64::MAX };
    }
}

/// The channel's file side: the file being written, if any, and what
/// opening the next one takes.
pub(super) struct Files {
    dir: PathBuf,
    channel: String,
    schema_json: String,
    codec: Codec,
    /// The file being written.
    pub(super) open: Option<OpenFile>,
    /// After disk trouble, no file opens before this.
    retry_at: Option<Instant>,
    /// The start of the last file opened, in ms since the epoch: the next
    /// one starts later.
    last_start_ms: u64,
    last_fsync: Instant,
}

impl Files {
    /// Files of `channel` in `dir`, each starting with a header of
    /// `schema_json` and `codec`.
    pub(super) fn new(dir: PathBuf, channel: &str, schema_json: &str, codec: Codec) -> Files {
        Files {
            dir,
            channel: channel.to_string(),
            schema_json: schema_json.to_string(),
            codec,
            open: None,
            retry_at: None,
            last_start_ms: 0,
            last_fsync: Instant::now(),
        }
    }

    /// The channel's archive folder.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether no file is open and disk trouble has not waited its time:
    /// no file is to be opened yet.
    #[inline]
    pub(super) fn waiting_to_retry(&self) -> bool {
        self.open.is_none() && self.retry_at.is_some_and(|t| Instant::now() < t)
    }

    /// No file opens for `wait` from now.
    pub(super) fn retry_after(&mut self, wait: Duration) {
        self.retry_at = Some(Instant::now() + wait);
    }

    /// Opens the file `block` starts unless one is open; whether it opened
    /// one.
    pub(super) fn ensure(&mut self, block: &BlockMeta) -> io::Result<bool> {
        if self.open.is_some() {
            return Ok(false);
        }
        let f = self.open_file(block)?;
        self.open = Some(f);
        self.retry_at = None;
        Ok(true)
    }

    /// With `fsync = "interval"`: syncs the open file's data if `every` has
    /// passed since the last time.
    pub(super) fn sync_every(&mut self, every: Duration) {
        if self.last_fsync.elapsed() >= every {
            if let Some(f) = &self.open {
                if let Err(e) = f.file.sync_data() {
                    tracing::warn!(file = %f.part.display(), error = %e, "fsync failed");
                }
            }
            self.last_fsync = Instant::now();
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
            let stem = file_names::stem(&self.channel, ms);
            let part = self.dir.join(file_names::part_name(&stem));
            // A file of the same start, named as before spans were.
            if fs::symlink_metadata(self.dir.join(file_names::legacy_closed_name(&stem))).is_ok() {
                ms += 1;
                continue;
            }
            let mut file = match crate::nofollow::open(
                OpenOptions::new().write(true).create_new(true),
                0,
                &part,
            ) {
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
            container::encode_header(&self.schema_json, &self.codec, &sync, &mut header);
            file.write_all(&header)?;
            let index = IndexWriter::create(self.dir.join(index::index_name(&stem)));
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
                index,
            });
        }
    }
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
