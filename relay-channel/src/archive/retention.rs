//! Retention: the oldest closed files go while the channel's folder holds
//! more than `archive.retention_size` bytes, and files older than
//! `archive.retention_age` go; except files a hold keeps (see
//! [`crate::holds`]): a file whose time span overlaps a hold covering the
//! channel stays, whatever its age, and still counts in the folder's size.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::ArchiveSpec;
use crate::holds::{self, Hold, Span};

/// The retention limits of a channel (none: keep everything), and the holds
/// folder that overrides them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Retention {
    age: Option<Duration>,
    size: Option<u64>,
    channel: String,
    holds_dir: Option<PathBuf>,
    /// The files the last pass kept past the limits for holds (logged when
    /// it changes).
    kept_for_holds: BTreeSet<PathBuf>,
}

/// What a retention pass found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pass {
    /// Bytes of the channel's closed files that a hold covering the channel
    /// overlaps (0 without a holds folder).
    pub(super) held_bytes: u64,
}

impl Retention {
    pub(super) fn of(spec: &ArchiveSpec, channel: &str, holds_dir: Option<&Path>) -> Retention {
        Retention {
            age: spec.retention_age,
            size: spec.retention_size,
            channel: channel.to_string(),
            holds_dir: holds_dir.map(Path::to_path_buf),
            kept_for_holds: BTreeSet::new(),
        }
    }

    /// Deletes, oldest first (by the start of their span), the closed files
    /// that are not held while the folder holds more than `retention_size`
    /// bytes, and the files not held whose span ended more than
    /// `retention_age` before `now`.
    pub(super) fn apply(&mut self, dir: &Path, now: SystemTime) -> Pass {
        let limits = self.age.is_some() || self.size.is_some();
        if !limits && self.holds_dir.is_none() {
            return Pass { held_bytes: 0 };
        }
        let mut files = holds::closed_files(dir);
        files.sort_by(|a, b| (a.2.from, &a.0).cmp(&(b.2.from, &b.0)));
        let holds = self
            .holds_dir
            .as_deref()
            .map(holds::read_dir)
            .unwrap_or_default();
        let held: Vec<bool> = files
            .iter()
            .map(|f| holds::held(f.2, &holds, &self.channel))
            .collect();
        let held_bytes = files
            .iter()
            .zip(&held)
            .filter(|(_, h)| **h)
            .map(|(f, _)| f.1)
            .sum();
        if !limits {
            return Pass { held_bytes };
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let mut kept = Vec::new();
        for ((path, size, span), held) in files.into_iter().zip(held) {
            let too_big = self.size.is_some_and(|max| total > max);
            let too_old = self
                .age
                .is_some_and(|age| now.duration_since(span.to).unwrap_or_default() > age);
            if !too_big && !too_old {
                continue;
            }
            if held {
                kept.push((path, size, span));
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    total -= size;
                    if let Some(idx) = crate::index::index_path(&path) {
                        let _ = fs::remove_file(idx);
                    }
                    tracing::info!(file = %path.display(), bytes = size, "retention: deleted archive file");
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "retention: cannot delete")
                }
            }
        }
        self.report_kept(&kept, &holds, total);
        Pass { held_bytes }
    }

    /// Logs the files kept past the limits for holds, when they change.
    fn report_kept(&mut self, kept: &[(PathBuf, u64, Span)], holds: &[Hold], total: u64) {
        let now_kept: BTreeSet<PathBuf> = kept.iter().map(|k| k.0.clone()).collect();
        if now_kept == self.kept_for_holds {
            return;
        }
        if kept.is_empty() {
            tracing::info!(channel = %self.channel, "retention: no file is kept past the limits for a hold any more");
        } else {
            let names: Vec<&str> = holds
                .iter()
                .filter(|h| {
                    kept.iter()
                        .any(|k| holds::held(k.2, &[(*h).clone()], &self.channel))
                })
                .map(|h| h.name.as_str())
                .collect();
            let bytes: u64 = kept.iter().map(|k| k.1).sum();
            tracing::info!(
                channel = %self.channel,
                files = kept.len(),
                bytes,
                folder_bytes = total,
                retention_size = ?self.size,
                retention_age = ?self.age.map(humantime::format_duration),
                holds = ?names,
                oldest = %kept[0].0.display(),
                "retention: keeping files past the retention limits for holds"
            );
        }
        self.kept_for_holds = now_kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T21:30:00Z
    fn t(minutes: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_383_000 + minutes * 60)
    }

    /// A closed file of channel `ch` spanning minutes `from` to `to`.
    fn span_file(dir: &Path, from: u64, to: u64, len: usize) -> PathBuf {
        file(
            dir,
            &format!("ch-{}--{}.avro", holds::stamp(t(from)), holds::stamp(t(to))),
            len,
        )
    }

    fn file(dir: &Path, name: &str, len: usize) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, vec![0u8; len]).unwrap();
        p
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    fn retention(age: Option<u64>, size: Option<u64>, holds_dir: Option<&Path>) -> Retention {
        Retention {
            age: age.map(|m| Duration::from_secs(m * 60)),
            size,
            channel: "ch".into(),
            holds_dir: holds_dir.map(Path::to_path_buf),
            kept_for_holds: BTreeSet::new(),
        }
    }

    /// A hold of minutes `from` to `to` for `channels`.
    fn hold(dir: &Path, name: &str, from: u64, to: u64, channels: Option<&[&str]>) {
        let rfc = |m| humantime::format_rfc3339(t(m)).to_string();
        let h = Hold {
            name: name.into(),
            from: rfc(from),
            to: rfc(to),
            channels: channels.map(|cs| cs.iter().map(|c| c.to_string()).collect()),
            note: None,
            created_at: None,
            created_by: None,
        };
        holds::write(dir, &h).unwrap();
    }

    #[test]
    fn the_oldest_closed_files_go_while_the_folder_is_too_big() {
        let d = tempfile::tempdir().unwrap();
        let f1 = span_file(d.path(), 0, 10, 100);
        let f2 = span_file(d.path(), 10, 20, 100);
        let f3 = span_file(d.path(), 20, 30, 100);
        file(d.path(), "ch-4.avro.part", 1_000);
        let outside = tempfile::tempdir().unwrap();
        let target = file(outside.path(), "kept.avro", 1_000);
        std::os::unix::fs::symlink(&target, d.path().join("ch-0.avro")).unwrap();
        let pass = retention(None, Some(250), None).apply(d.path(), t(40));
        assert_eq!(pass.held_bytes, 0);
        // Neither the open file nor the symlink counts or goes.
        assert!(!f1.exists() && f2.exists() && f3.exists());
        assert!(d.path().join("ch-4.avro.part").exists());
        assert!(d.path().join("ch-0.avro").exists() && target.exists());
    }

    #[test]
    fn files_whose_span_ended_longer_ago_than_the_age_go() {
        let d = tempfile::tempdir().unwrap();
        span_file(d.path(), 0, 10, 10);
        let young = span_file(d.path(), 10, 50, 10);
        retention(Some(60), None, None).apply(d.path(), t(100));
        assert_eq!(
            names(d.path()),
            [young.file_name().unwrap().to_str().unwrap()]
        );
    }

    #[test]
    fn files_named_before_spans_age_by_their_modification_time() {
        let d = tempfile::tempdir().unwrap();
        let old = file(d.path(), "ch-20000101T000000.000Z.avro", 10);
        let hours_ago = SystemTime::now() - Duration::from_secs(7_200);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hours_ago)
            .unwrap();
        file(d.path(), "ch-20000101T010000.000Z.avro", 10);
        file(d.path(), "other.avro", 10);
        retention(Some(60), None, None).apply(d.path(), SystemTime::now());
        assert_eq!(
            names(d.path()),
            ["ch-20000101T010000.000Z.avro", "other.avro"]
        );
    }

    #[test]
    fn without_limits_or_holds_everything_stays() {
        let d = tempfile::tempdir().unwrap();
        span_file(d.path(), 0, 10, 10);
        let pass = retention(None, None, None).apply(d.path(), t(10_000));
        assert_eq!(pass.held_bytes, 0);
        assert_eq!(names(d.path()).len(), 1);
    }

    #[test]
    fn held_files_outlive_the_age_and_the_rest_goes() {
        let d = tempfile::tempdir().unwrap();
        let holds_dir = tempfile::tempdir().unwrap();
        let f: Vec<PathBuf> = (0..6)
            .map(|i| span_file(d.path(), i * 10, i * 10 + 10, 10 + i as usize))
            .collect();
        // Minutes 15 to 30, ends inclusive: files 1 (10-20), 2 (20-30) and
        // 3 (30-40).
        hold(holds_dir.path(), "incident", 15, 30, None);
        // Another channel's hold holds nothing here.
        hold(holds_dir.path(), "west", 40, 50, Some(&["west"]));
        let mut r = retention(Some(5), None, Some(holds_dir.path()));
        let pass = r.apply(d.path(), t(1_000));
        let left: Vec<bool> = f.iter().map(|p| p.exists()).collect();
        assert_eq!(left, [false, true, true, true, false, false]);
        assert_eq!(pass.held_bytes, 11 + 12 + 13);
        assert_eq!(r.kept_for_holds.len(), 3);
        // The hold goes: so do its files, at the next pass.
        holds::remove(holds_dir.path(), "incident").unwrap();
        let pass = r.apply(d.path(), t(1_000));
        assert_eq!(pass.held_bytes, 0);
        assert!(f.iter().all(|p| !p.exists()));
        assert!(r.kept_for_holds.is_empty());
    }

    #[test]
    fn a_hold_reaching_into_the_future_keeps_what_is_written_until_then() {
        let d = tempfile::tempdir().unwrap();
        let holds_dir = tempfile::tempdir().unwrap();
        hold(holds_dir.path(), "ahead", 100, 200, Some(&["ch"]));
        let before = span_file(d.path(), 50, 99, 10);
        let within = span_file(d.path(), 99, 130, 10);
        let later = span_file(d.path(), 150, 160, 10);
        let after = span_file(d.path(), 201, 210, 10);
        retention(Some(1), None, Some(holds_dir.path())).apply(d.path(), t(1_000));
        assert!(!before.exists() && within.exists() && later.exists() && !after.exists());
    }

    #[test]
    fn held_files_count_toward_the_size_but_only_unheld_ones_go() {
        let d = tempfile::tempdir().unwrap();
        let holds_dir = tempfile::tempdir().unwrap();
        let f: Vec<PathBuf> = (0..5)
            .map(|i| span_file(d.path(), i * 10, i * 10 + 10, 100))
            .collect();
        hold(holds_dir.path(), "first", 0, 5, None);
        hold(holds_dir.path(), "third", 25, 25, None);
        let mut r = retention(None, Some(300), Some(holds_dir.path()));
        let pass = r.apply(d.path(), t(60));
        // 500 bytes, 300 allowed: files 1 and 3 go (the oldest not held).
        let left: Vec<bool> = f.iter().map(|p| p.exists()).collect();
        assert_eq!(left, [true, false, true, false, true]);
        assert_eq!(pass.held_bytes, 200);
        assert_eq!(
            r.kept_for_holds,
            BTreeSet::from([f[0].clone(), f[2].clone()])
        );
        // Held files alone over the size: every file not held goes.
        let mut r = retention(None, Some(150), Some(holds_dir.path()));
        r.apply(d.path(), t(60));
        let left: Vec<bool> = f.iter().map(|p| p.exists()).collect();
        assert_eq!(left, [true, false, true, false, false]);
    }

    #[test]
    fn held_bytes_are_counted_without_limits_and_nothing_goes() {
        let d = tempfile::tempdir().unwrap();
        let holds_dir = tempfile::tempdir().unwrap();
        span_file(d.path(), 0, 10, 100);
        span_file(d.path(), 10, 20, 30);
        hold(holds_dir.path(), "h", 12, 13, None);
        let pass = retention(None, None, Some(holds_dir.path())).apply(d.path(), t(10_000));
        assert_eq!(pass.held_bytes, 30);
        assert_eq!(names(d.path()).len(), 2);
        // A missing holds folder: no holds.
        let gone = holds_dir.path().join("missing");
        let pass = retention(Some(1), None, Some(&gone)).apply(d.path(), t(10_000));
        assert_eq!(pass.held_bytes, 0);
        assert!(names(d.path()).is_empty());
    }
}
