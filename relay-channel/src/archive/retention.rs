//! Retention: the oldest closed files go while the channel's folder holds
//! more than `archive.retention_size` bytes, and files older than
//! `archive.retention_age`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::ArchiveSpec;

/// The retention limits of a channel; none: keep everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retention {
    age: Option<Duration>,
    size: Option<u64>,
}

impl Retention {
    pub(super) fn of(spec: &ArchiveSpec) -> Retention {
        Retention {
            age: spec.retention_age,
            size: spec.retention_size,
        }
    }

    /// Deletes the oldest closed files while the folder holds more than
    /// `retention_size` bytes, and files older than `retention_age`.
    pub(super) fn apply(&self, dir: &Path) {
        if self.age.is_none() && self.size.is_none() {
            return;
        }
        let mut files = closed_files(dir);
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let now = SystemTime::now();
        for (path, size, modified) in files {
            let too_big = self.size.is_some_and(|max| total > max);
            let too_old = self.age.is_some_and(|age| {
                modified.is_some_and(|m| now.duration_since(m).unwrap_or_default() > age)
            });
            if !too_big && !too_old {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    total -= size;
                    tracing::info!(file = %path.display(), bytes = size, "retention: deleted archive file");
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "retention: cannot delete")
                }
            }
        }
    }
}

/// Closed archive files of a folder: (path, bytes, modified). Only regular
/// files directly in it count (`DirEntry::metadata` does not follow a
/// symlink), so retention never deletes through one.
fn closed_files(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".avro"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file().then(|| (e.path(), m.len(), m.modified().ok()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_oldest_closed_files_go_while_the_folder_is_too_big() {
        let d = tempfile::tempdir().unwrap();
        for name in ["ch-1.avro", "ch-2.avro", "ch-3.avro"] {
            file(d.path(), name, 100);
        }
        file(d.path(), "ch-4.avro.part", 1_000);
        let outside = tempfile::tempdir().unwrap();
        let target = file(outside.path(), "kept.avro", 1_000);
        std::os::unix::fs::symlink(&target, d.path().join("ch-0.avro")).unwrap();
        let r = Retention {
            age: None,
            size: Some(250),
        };
        r.apply(d.path());
        // Neither the open file nor the symlink counts or goes.
        assert_eq!(
            names(d.path()),
            ["ch-0.avro", "ch-2.avro", "ch-3.avro", "ch-4.avro.part"]
        );
        assert!(target.exists());
    }

    #[test]
    fn files_older_than_the_age_go() {
        let d = tempfile::tempdir().unwrap();
        let old = file(d.path(), "ch-1.avro", 10);
        let hours_ago = SystemTime::now() - Duration::from_secs(7_200);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(hours_ago)
            .unwrap();
        file(d.path(), "ch-2.avro", 10);
        let r = Retention {
            age: Some(Duration::from_secs(3_600)),
            size: None,
        };
        r.apply(d.path());
        assert_eq!(names(d.path()), ["ch-2.avro"]);
    }

    #[test]
    fn without_limits_everything_stays() {
        let d = tempfile::tempdir().unwrap();
        file(d.path(), "ch-1.avro", 10);
        Retention {
            age: None,
            size: None,
        }
        .apply(d.path());
        assert_eq!(names(d.path()), ["ch-1.avro"]);
    }
}
