//! The closer: finishes each file the writer is done with (fsync per
//! policy, rename `{channel}-{from}.avro.part` to
//! `{channel}-{from}--{to}.avro`), reports it (`file_closed`, written by the
//! control loop) and applies retention, after each file and at least every
//! second (so a hold made or removed counts within seconds). Runs on a
//! thread of its own, so an fsync that takes seconds on a slow disk never
//! stalls the archive, and retention never touches the receive path.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{RecvTimeoutError, Sender};
use tokio::sync::mpsc::UnboundedSender;

use super::retention::Retention;
use crate::config::{ArchiveSpec, Fsync};
use crate::file_names;
use crate::ledger::Ledger;
use crate::status::FileClosed;

/// Retention runs at least this often (and after each file closed).
pub(super) const RETENTION_EVERY: Duration = Duration::from_secs(1);

/// A file the writer is done with.
pub(super) struct ClosedFile {
    pub(super) file: File,
    /// Where it was written (`{stem}.avro.part`).
    pub(super) part: PathBuf,
    /// `{channel}-{from}`.
    pub(super) stem: String,
    /// When the writer closed it, in ms since the epoch (not before `from`).
    pub(super) to_ms: u64,
    pub(super) len: u64,
    pub(super) records: u64,
}

/// Where a closed file goes: `{dir}/{stem}--{to}.avro`. Should that name be
/// taken (a clock set back), `to` moves on a millisecond at a time: a closed
/// file is never replaced.
pub(super) fn closed_path(dir: &Path, stem: &str, to_ms: u64) -> PathBuf {
    let mut ms = to_ms;
    loop {
        let path = dir.join(file_names::closed_name(stem, ms));
        if fs::symlink_metadata(&path).is_err() || ms >= to_ms + 60_000 {
            return path;
        }
        ms += 1;
    }
}

/// Finishes closed files.
#[derive(Clone)]
pub(super) struct Closer {
    fsync: Fsync,
    retention: Retention,
    channel: String,
    dir: PathBuf,
    ledger: Arc<Ledger>,
    closed: UnboundedSender<FileClosed>,
    /// When retention last ran.
    last_retention: Option<Instant>,
}

impl Closer {
    pub(super) fn new(
        spec: &ArchiveSpec,
        channel: &str,
        holds_dir: Option<&Path>,
        ledger: Arc<Ledger>,
        closed: UnboundedSender<FileClosed>,
    ) -> Closer {
        Closer {
            fsync: spec.fsync,
            retention: Retention::of(spec, channel, holds_dir),
            channel: channel.to_string(),
            dir: spec.channel_dir(channel),
            ledger,
            closed,
            last_retention: None,
        }
    }

    /// Starts the closer thread: files sent on the channel are closed in
    /// order, retention runs every [`RETENTION_EVERY`]; the thread ends when
    /// the channel closes.
    pub(super) fn spawn(mut self) -> io::Result<(Sender<ClosedFile>, JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::unbounded::<ClosedFile>();
        let thread = std::thread::Builder::new()
            .name("archive-close".into())
            .spawn(move || loop {
                self.tick();
                let wait = self.last_retention.map_or(Duration::ZERO, |t| {
                    (t + RETENTION_EVERY).saturating_duration_since(Instant::now())
                });
                match rx.recv_timeout(wait) {
                    Ok(f) => self.close(f),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            })?;
        Ok((tx, thread))
    }

    /// Runs retention if it has not run for [`RETENTION_EVERY`].
    pub(super) fn tick(&mut self) {
        if self
            .last_retention
            .is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
        {
            self.retain();
        }
    }

    /// One retention pass; publishes `held_bytes`.
    fn retain(&mut self) {
        let pass = self.retention.apply(&self.dir, SystemTime::now());
        self.ledger.set_held_bytes(pass.held_bytes);
        self.last_retention = Some(Instant::now());
    }

    /// Finishes one file: fsync per policy, rename, report, retention.
    pub(super) fn close(&mut self, f: ClosedFile) {
        // Gives back the space allocated ahead of the writes: the file's
        // length is already `f.len`, and what lies beyond it goes.
        if let Err(e) = f.file.set_len(f.len) {
            tracing::warn!(file = %f.part.display(), error = %e, "cannot give back the space allocated ahead");
        }
        if self.fsync != Fsync::Never {
            if let Err(e) = f.file.sync_all() {
                tracing::warn!(file = %f.part.display(), error = %e, "fsync failed");
            }
        }
        // Its pages leave the page cache as the writer's did (what is
        // still being written stays, and goes the usual way): the archive
        // is read later, if at all. A hint; an error changes nothing.
        crate::file_hints::drop_cached(std::os::fd::AsRawFd::as_raw_fd(&f.file), 0, 0);
        drop(f.file);
        let path = closed_path(&self.dir, &f.stem, f.to_ms);
        match fs::rename(&f.part, &path) {
            Ok(()) => {
                if self.fsync != Fsync::Never {
                    sync_dir(&self.dir);
                }
                self.ledger.file_closed();
                tracing::info!(file = %path.display(), records = f.records, bytes = f.len, "archive file closed");
                // The control loop writes it; gone only as the relay stops.
                let _ = self.closed.send(FileClosed {
                    channel: self.channel.clone(),
                    path,
                    records: f.records,
                    bytes: f.len,
                });
                self.retain();
            }
            Err(e) => {
                // Left as .part: the next start recovers it.
                self.ledger.archive_error();
                tracing::error!(file = %f.part.display(), error = %e, "cannot rename closed archive file");
            }
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holds::{self, Hold};

    fn spec(dir: &Path) -> ArchiveSpec {
        ArchiveSpec {
            dir: dir.to_path_buf(),
            codec: crate::config::Codec::Null,
            block_size: 1 << 10,
            rotate_size: 1 << 20,
            rotate_interval: Duration::from_secs(60),
            flush_interval: Duration::from_secs(1),
            fsync: Fsync::OnRotate,
            queue: 1 << 20,
            quarantine_size: 0,
            retention_age: None,
            retention_size: None,
            time_field: None,
            adaptive: true,
            compress_threads: None,
        }
    }

    /// 2026-11-22T21:30:00.123Z
    const FROM_MS: u64 = 1_795_383_000_123;

    fn closed_file(dir: &Path, stem: &str, to_ms: u64) -> ClosedFile {
        let part = dir.join(format!("{}.avro.part", stem.rsplit('/').next().unwrap()));
        fs::write(&part, b"0123456789").unwrap();
        ClosedFile {
            file: fs::OpenOptions::new().write(true).open(&part).unwrap(),
            part,
            stem: stem.to_string(),
            to_ms,
            len: 10,
            records: 3,
        }
    }

    fn setup() -> (tempfile::TempDir, PathBuf, Arc<Ledger>) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ch");
        fs::create_dir(&dir).unwrap();
        (root, dir, Arc::new(Ledger::new()))
    }

    #[test]
    fn a_closed_file_is_renamed_to_its_span_counted_and_reported() {
        let (root, dir, ledger) = setup();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut closer = Closer::new(&spec(root.path()), "ch", None, ledger.clone(), tx);
        let stem = "ch-20261122T213000.123Z";
        closer.close(closed_file(&dir, stem, FROM_MS + 3_600_000));
        let done = dir.join("ch-20261122T213000.123Z--20261122T223000.123Z.avro");
        assert!(done.exists() && !dir.join(format!("{stem}.avro.part")).exists());
        let report = rx.try_recv().unwrap();
        assert_eq!(report.path, done);
        assert_eq!(
            (report.channel.as_str(), report.records, report.bytes),
            ("ch", 3, 10)
        );
        assert_eq!(ledger.counters().files_closed, 1);
        let span = holds::file_span(&done).unwrap();
        assert_eq!(holds::stamp(span.from), "20261122T213000.123Z");
        assert_eq!(holds::stamp(span.to), "20261122T223000.123Z");
    }

    #[test]
    fn a_closed_file_never_replaces_another() {
        let (root, dir, ledger) = setup();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut closer = Closer::new(&spec(root.path()), "ch", None, ledger, tx);
        let taken = dir.join("ch-20261122T213000.123Z--20261122T213000.123Z.avro");
        fs::write(&taken, b"older").unwrap();
        closer.close(closed_file(&dir, "ch-20261122T213000.123Z", FROM_MS));
        assert_eq!(fs::read(&taken).unwrap(), b"older");
        assert_eq!(
            rx.try_recv().unwrap().path,
            dir.join("ch-20261122T213000.123Z--20261122T213000.124Z.avro")
        );
    }

    #[test]
    fn a_failed_rename_leaves_the_part_and_counts_an_error() {
        let (root, dir, ledger) = setup();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut closer = Closer::new(&spec(root.path()), "ch", None, ledger.clone(), tx);
        // Its folder is gone: the rename fails.
        closer.close(closed_file(&dir, "gone/ch-1", FROM_MS));
        assert!(dir.join("ch-1.avro.part").exists());
        assert!(rx.try_recv().is_err());
        let c = ledger.counters();
        assert_eq!((c.files_closed, c.archive_errors), (0, 1));
    }

    #[test]
    fn retention_runs_on_a_tick_and_publishes_held_bytes() {
        let (root, dir, ledger) = setup();
        let holds_dir = root.path().join("holds");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut s = spec(root.path());
        s.retention_age = Some(Duration::from_secs(60));
        let mut closer = Closer::new(&s, "ch", Some(&holds_dir), ledger.clone(), tx);
        // Two files of 2026, long past retention_age; one held.
        let held = dir.join("ch-20261122T213000.123Z--20261122T223000.123Z.avro");
        let old = dir.join("ch-20261122T223000.123Z--20261122T233000.123Z.avro");
        fs::write(&held, [0u8; 7]).unwrap();
        fs::write(&old, [0u8; 5]).unwrap();
        let hold = Hold {
            name: "h".into(),
            from: "2026-11-22T21:00:00Z".into(),
            to: "2026-11-22T22:00:00Z".into(),
            channels: None,
            note: None,
            created_at: None,
            created_by: None,
        };
        holds::write(&holds_dir, &hold).unwrap();
        closer.tick();
        assert!(held.exists() && !old.exists());
        assert_eq!(ledger.counters().held_bytes, 7);
        // Not again within RETENTION_EVERY; then the hold is gone.
        holds::remove(&holds_dir, "h").unwrap();
        closer.tick();
        assert!(held.exists());
        closer.last_retention = Some(Instant::now() - RETENTION_EVERY);
        closer.tick();
        assert!(!held.exists());
        assert_eq!(ledger.counters().held_bytes, 0);
    }
}
