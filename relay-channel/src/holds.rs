//! Holds: an operator keeps every archive file of a time range past
//! retention.
//!
//! A hold is one JSON file, `{name}.json`, in the holds folder
//! (`relay-channel run --holds-dir`): its time range (`from`, `to`, RFC 3339)
//! and the channels it covers (all of them without `channels`). While it is
//! there, retention deletes no file of a covered channel whose time span
//! overlaps the range. The relay only reads the folder; the orchestrator
//! writes it ([`write`], [`remove`]).
//!
//! An archive file's time span comes from its name
//! (`{channel}-{from}--{to}.avro`, [`file_span`]): from its first record's
//! arrival to its close, in arrival time, UTC, to the millisecond. Archive
//! file names are composed and parsed by the crate's `file_names` module;
//! [`stamp`], [`parse_stamp`], [`file_span`] and [`Span`] are its, here for
//! those who keep holds.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::file_names;
pub use crate::file_names::{file_span, parse_stamp, stamp, Span};

/// One hold, as stored in `{dir}/{name}.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Hold {
    /// The hold's name: its file is `{name}.json`.
    pub name: String,
    /// Start of the range, RFC 3339 (`2026-11-23T15:00:00Z`,
    /// `2026-11-23T16:00:00.250+01:00`).
    pub from: String,
    /// End of the range (inclusive), RFC 3339; may lie in the future.
    pub to: String,
    /// The channels it covers; `None`: every channel.
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
}

impl Hold {
    /// The range `[from, to]`; `None` if either end is not an RFC 3339 time
    /// with an offset (`Z` or `±HH:MM`), or `from` is after `to`.
    pub fn range(&self) -> Option<(SystemTime, SystemTime)> {
        let from = parse_rfc3339(&self.from)?;
        let to = parse_rfc3339(&self.to)?;
        (from <= to).then_some((from, to))
    }

    /// Whether the hold covers `channel` (`channels` absent: every channel).
    pub fn covers(&self, channel: &str) -> bool {
        self.channels
            .as_ref()
            .is_none_or(|cs| cs.iter().any(|c| c == channel))
    }
}

/// Parses an RFC 3339 time: `YYYY-MM-DDTHH:MM:SS[.fraction]` (`T`, `t` or a
/// space between date and time) followed by `Z` (or `z`) or an offset
/// `+HH:MM` / `-HH:MM`. A time without an offset is refused: it names no
/// instant. Years before 1970 are refused.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    if !s.is_ascii() {
        return None;
    }
    let b = s.as_bytes();
    let (local, offset_s): (&str, i64) = match *b.last()? {
        b'Z' | b'z' => (&s[..s.len() - 1], 0),
        _ => {
            if s.len() < 6 {
                return None;
            }
            let (local, off) = s.split_at(s.len() - 6);
            let o = off.as_bytes();
            let sign = match o[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if o[3] != b':' {
                return None;
            }
            let hh = two_digits(o[1], o[2])?;
            let mm = two_digits(o[4], o[5])?;
            if hh > 23 || mm > 59 {
                return None;
            }
            (local, sign * (hh * 3600 + mm * 60))
        }
    };
    // `YYYY-MM-DDTHH:MM:SS`, then only `.` and digits: no second offset.
    let l = local.as_bytes();
    let fraction_ok =
        l.len() == 19 || (l.len() > 20 && l[19] == b'.' && l[20..].iter().all(u8::is_ascii_digit));
    if !fraction_ok {
        return None;
    }
    let mut local = local.to_string();
    if l[10] == b't' {
        local.replace_range(10..11, "T");
    }
    let t = humantime::parse_rfc3339_weak(&local).ok()?;
    // The local time is UTC plus the offset.
    let shift = Duration::from_secs(offset_s.unsigned_abs());
    if offset_s >= 0 {
        t.checked_sub(shift)
            .filter(|t| *t >= SystemTime::UNIX_EPOCH)
    } else {
        t.checked_add(shift)
    }
}

fn two_digits(a: u8, b: u8) -> Option<i64> {
    (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
}

/// The closed archive files (`*.avro`) of a channel folder, with their
/// bytes and spans, in no particular order. Only regular files directly in
/// the folder count (a symlink is neither followed nor listed), as for
/// retention. A `.avro` file whose name carries no stamp spans its
/// modification time alone.
pub fn closed_files(dir: &Path) -> Vec<(PathBuf, u64, Span)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| file_names::is_closed(&e.file_name().to_string_lossy()))
        .filter_map(|e| {
            // `DirEntry::metadata` does not follow a symlink.
            let m = e.metadata().ok()?;
            if !m.is_file() {
                return None;
            }
            let path = e.path();
            let span = file_span(&path).or_else(|| {
                let t = m.modified().ok()?;
                Some(Span { from: t, to: t })
            })?;
            Some((path, m.len(), span))
        })
        .collect()
}

/// Whether a file of `channel` spanning `span` is held: it overlaps the
/// range of a hold that covers the channel (both ends inclusive). Holds
/// whose range does not parse hold nothing.
pub fn held(span: Span, holds: &[Hold], channel: &str) -> bool {
    holds.iter().any(|h| {
        h.covers(channel)
            && h.range()
                .is_some_and(|(from, to)| span.from <= to && span.to >= from)
    })
}

// ---------------------------------------------------------------------------
// The holds folder.

/// Longest hold file read; larger ones are skipped.
const MAX_HOLD_FILE: u64 = 1 << 20;
/// A file skipped is warned about at most once per this, per file.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Every hold of the folder: each `*.json` file directly in it that parses
/// as a [`Hold`] with a valid range. Others are skipped, with a warning
/// naming the file (at most once a minute per file). A missing folder holds
/// nothing.
pub fn read_dir(dir: &Path) -> Vec<Hold> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| e.path())
        .collect();
    paths.sort();
    let mut holds = Vec::new();
    for path in paths {
        match read_hold(&path) {
            Ok(h) => holds.push(h),
            Err(why) => warn_skipped(&path, &why),
        }
    }
    holds
}

fn read_hold(path: &Path) -> Result<Hold, String> {
    let m = fs::metadata(path).map_err(|e| e.to_string())?;
    if !m.is_file() {
        return Err("not a regular file".into());
    }
    if m.len() > MAX_HOLD_FILE {
        return Err(format!("longer than {MAX_HOLD_FILE} bytes"));
    }
    let text = fs::read(path).map_err(|e| e.to_string())?;
    let hold: Hold = serde_json::from_slice(&text).map_err(|e| format!("not a hold: {e}"))?;
    if hold.range().is_none() {
        return Err(format!(
            "from {:?} and to {:?} are not RFC 3339 times with an offset, from first",
            hold.from, hold.to
        ));
    }
    Ok(hold)
}

fn warn_skipped(path: &Path, why: &str) {
    static WARNED: OnceLock<Mutex<HashMap<PathBuf, Instant>>> = OnceLock::new();
    let now = Instant::now();
    let mut warned = WARNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    warned.retain(|_, at| now.duration_since(*at) < WARN_EVERY);
    if warned.contains_key(path) {
        return;
    }
    warned.insert(path.to_path_buf(), now);
    tracing::warn!(file = %path.display(), problem = why, "hold file skipped");
}

/// Whether `name` can name a hold file: not empty, no `/` or NUL, not
/// starting with `.`, at most 200 bytes.
fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && !name.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} cannot name a hold file"),
        ))
    }
}

/// Writes `hold` as `{dir}/{name}.json`, atomically: a temporary file in the
/// same folder (not ending in `.json`, so never read as a hold), fsync,
/// rename, fsync of the folder. Creates the folder if needed.
pub fn write(dir: &Path, hold: &Hold) -> io::Result<()> {
    check_name(&hold.name)?;
    fs::create_dir_all(dir)?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.json.tmp-{}-{}",
        hold.name,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let text = serde_json::to_vec_pretty(hold).map_err(io::Error::other)?;
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(format!("{}.json", hold.name)))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Removes the hold `{dir}/{name}.json` (and fsyncs the folder); an error
/// of kind `NotFound` if there is none.
pub fn remove(dir: &Path, name: &str) -> io::Result<()> {
    check_name(name)?;
    fs::remove_file(dir.join(format!("{name}.json")))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn hold(name: &str, from: &str, to: &str, channels: Option<&[&str]>) -> Hold {
        Hold {
            name: name.into(),
            from: from.into(),
            to: to.into(),
            channels: channels.map(|cs| cs.iter().map(|c| c.to_string()).collect()),
            note: None,
            created_at: None,
            created_by: None,
        }
    }

    #[test]
    fn rfc3339_times_with_z_or_an_offset_parse_as_utc() {
        let utc = at("2026-11-23T15:00:00Z");
        for s in [
            "2026-11-23T15:00:00Z",
            "2026-11-23t15:00:00z",
            "2026-11-23 15:00:00Z",
            "2026-11-23T15:00:00+00:00",
            "2026-11-23T15:00:00-00:00",
            "2026-11-23T16:00:00+01:00",
            "2026-11-23T10:30:00-04:30",
            "2026-11-24T00:45:00+09:45",
        ] {
            assert_eq!(parse_rfc3339(s), Some(utc), "{s}");
        }
        assert_eq!(
            parse_rfc3339("2026-11-23T16:00:00.250+01:00"),
            Some(utc + Duration::from_millis(250))
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T15:00:00.000000001Z"),
            Some(utc + Duration::from_nanos(1))
        );
        // Across a day, a month and a year.
        assert_eq!(
            parse_rfc3339("2026-12-31T23:30:00-01:00"),
            Some(at("2027-01-01T00:30:00Z"))
        );
    }

    #[test]
    fn times_without_an_offset_or_malformed_do_not_parse() {
        for s in [
            "",
            "Z",
            "2026-11-23T15:00:00",
            "2026-11-23T15:00:00.5",
            "2026-11-23",
            "2026-11-23T15:00Z",
            "2026-11-23T15:00:00+0100",
            "2026-11-23T15:00:00+01",
            "2026-11-23T15:00:00+24:00",
            "2026-11-23T15:00:00+01:60",
            "2026-11-23T15:00:00.Z+01:00",
            "2026-11-23T15:00:00.1Z+01:00",
            "2026-11-23T15:00:00Z+01:00",
            "2026-11-23T25:00:00Z",
            "2026-13-23T15:00:00Z",
            "2026-02-30T15:00:00Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:30:00+01:00",
            "2026-11-23T15:00:00é",
            "2026-11-23X15:00:00Z",
            "tomorrow",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s:?}");
        }
    }

    #[test]
    fn a_range_needs_both_ends_in_order() {
        let h = hold(
            "a",
            "2026-11-23T15:00:00Z",
            "2026-11-23T16:00:00+01:00",
            None,
        );
        let t = at("2026-11-23T15:00:00Z");
        assert_eq!(h.range(), Some((t, t)));
        let h = hold("a", "2026-11-23T15:00:01Z", "2026-11-23T15:00:00Z", None);
        assert_eq!(h.range(), None);
        let h = hold("a", "2026-11-23T15:00:00", "2026-11-23T16:00:00Z", None);
        assert_eq!(h.range(), None);
    }

    #[test]
    fn a_hold_covers_its_channels_or_every_channel() {
        let all = hold("a", "2026-11-23T15:00:00Z", "2026-11-23T16:00:00Z", None);
        assert!(all.covers("east") && all.covers("west"));
        let some = hold(
            "a",
            "2026-11-23T15:00:00Z",
            "2026-11-23T16:00:00Z",
            Some(&["east"]),
        );
        assert!(some.covers("east") && !some.covers("west"));
        let none = hold(
            "a",
            "2026-11-23T15:00:00Z",
            "2026-11-23T16:00:00Z",
            Some(&[]),
        );
        assert!(!none.covers("east"));
    }

    #[test]
    fn holds_read_from_json_with_optional_fields_and_round_trip() {
        let h: Hold = serde_json::from_str(
            r#"{"name": "incident-7", "from": "2026-11-23T15:00:00Z", "to": "2026-11-23T16:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            h,
            hold(
                "incident-7",
                "2026-11-23T15:00:00Z",
                "2026-11-23T16:00:00Z",
                None
            )
        );
        let mut full = h.clone();
        full.channels = Some(vec!["east".into()]);
        full.note = Some("brake test".into());
        full.created_at = Some("2026-11-23T17:00:00Z".into());
        full.created_by = Some("ops".into());
        let text = serde_json::to_string(&full).unwrap();
        assert_eq!(serde_json::from_str::<Hold>(&text).unwrap(), full);
    }

    #[test]
    fn closed_files_lists_regular_avro_files_with_sizes_and_spans() {
        let d = tempfile::tempdir().unwrap();
        let new = d
            .path()
            .join("ch-20261122T213000.123Z--20261122T223000.456Z.avro");
        fs::write(&new, b"12345").unwrap();
        let other = d.path().join("copied.avro");
        fs::write(&other, b"12").unwrap();
        fs::write(d.path().join("ch-20261122T223000.456Z.avro.part"), b"123").unwrap();
        fs::write(d.path().join("quarantine.jsonl"), b"{}").unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("x.avro");
        fs::write(&target, b"x").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("ch-20261122T200000.000Z.avro")).unwrap();
        fs::create_dir(d.path().join("dir.avro")).unwrap();

        let mut files = closed_files(d.path());
        files.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(
            files[0],
            (
                new,
                5,
                Span {
                    from: at("2026-11-22T21:30:00.123Z"),
                    to: at("2026-11-22T22:30:00.456Z")
                }
            )
        );
        let modified = fs::metadata(&other).unwrap().modified().unwrap();
        assert_eq!(
            files[1],
            (
                other,
                2,
                Span {
                    from: modified,
                    to: modified
                }
            )
        );
        assert!(closed_files(&d.path().join("missing")).is_empty());
    }

    #[test]
    fn a_file_is_held_when_it_overlaps_a_hold_of_its_channel_ends_included() {
        let span = |a: &str, b: &str| Span {
            from: at(a),
            to: at(b),
        };
        let holds = [
            hold(
                "h",
                "2026-11-23T15:00:00Z",
                "2026-11-23T16:00:00Z",
                Some(&["east"]),
            ),
            hold("bad", "yesterday", "2026-11-23T18:00:00Z", None),
        ];
        let h = |s: Span, ch: &str| held(s, &holds, ch);
        // Inside, around, across either end, touching either end.
        assert!(h(
            span("2026-11-23T15:10:00Z", "2026-11-23T15:20:00Z"),
            "east"
        ));
        assert!(h(
            span("2026-11-23T14:00:00Z", "2026-11-23T17:00:00Z"),
            "east"
        ));
        assert!(h(
            span("2026-11-23T14:50:00Z", "2026-11-23T15:10:00Z"),
            "east"
        ));
        assert!(h(
            span("2026-11-23T15:50:00Z", "2026-11-23T16:10:00Z"),
            "east"
        ));
        assert!(h(
            span("2026-11-23T14:00:00Z", "2026-11-23T15:00:00Z"),
            "east"
        ));
        assert!(h(
            span("2026-11-23T16:00:00Z", "2026-11-23T17:00:00Z"),
            "east"
        ));
        // Before, after, another channel; a hold without a valid range
        // holds nothing.
        assert!(!h(
            span("2026-11-23T14:00:00Z", "2026-11-23T14:59:59.999Z"),
            "east"
        ));
        assert!(!h(
            span("2026-11-23T16:00:00.001Z", "2026-11-23T17:00:00Z"),
            "east"
        ));
        assert!(!h(
            span("2026-11-23T15:10:00Z", "2026-11-23T15:20:00Z"),
            "west"
        ));
        assert!(!h(
            span("2026-11-23T17:00:00Z", "2026-11-23T17:10:00Z"),
            "west"
        ));
        assert!(!held(
            span("2026-11-23T15:10:00Z", "2026-11-23T15:20:00Z"),
            &[],
            "east"
        ));
    }

    #[test]
    fn holds_are_written_atomically_read_back_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("holds");
        assert!(read_dir(&dir).is_empty(), "a missing folder holds nothing");
        let a = hold("a", "2026-11-23T15:00:00Z", "2026-11-23T16:00:00Z", None);
        let mut b = hold(
            "b",
            "2026-11-23T15:00:00+01:00",
            "2026-11-23T16:00:00+01:00",
            Some(&["east"]),
        );
        b.note = Some("kept for the review".into());
        write(&dir, &b).unwrap();
        write(&dir, &a).unwrap();
        assert_eq!(read_dir(&dir), [a.clone(), b.clone()]);
        // Replaced in place; nothing but the hold files is left.
        b.to = "2026-11-23T17:00:00+01:00".into();
        write(&dir, &b).unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.json", "b.json"]);
        assert_eq!(read_dir(&dir), [a.clone(), b]);
        remove(&dir, "b").unwrap();
        assert_eq!(read_dir(&dir), [a]);
        assert_eq!(
            remove(&dir, "b").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        for bad in ["", ".hidden", "..", "a/b", "x\0y"] {
            let h = hold(bad, "2026-11-23T15:00:00Z", "2026-11-23T16:00:00Z", None);
            assert_eq!(
                write(&dir, &h).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
            assert_eq!(
                remove(&dir, bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }

    #[test]
    fn files_that_are_not_holds_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let good = hold("good", "2026-11-23T15:00:00Z", "2026-11-23T16:00:00Z", None);
        write(dir.path(), &good).unwrap();
        let p = |n: &str| dir.path().join(n);
        fs::write(p("junk.json"), b"{not json").unwrap();
        fs::write(p("other.json"), br#"{"name": "x"}"#).unwrap();
        fs::write(
            p("backwards.json"),
            br#"{"name": "b", "from": "2026-11-23T16:00:00Z", "to": "2026-11-23T15:00:00Z"}"#,
        )
        .unwrap();
        fs::write(
            p("naive.json"),
            br#"{"name": "n", "from": "2026-11-23T15:00:00", "to": "2026-11-23T16:00:00"}"#,
        )
        .unwrap();
        fs::write(p("notes.txt"), b"{}").unwrap();
        fs::write(p("a.json.tmp"), serde_json::to_vec(&good).unwrap()).unwrap();
        fs::create_dir(p("folder.json")).unwrap();
        fs::write(p("big.json"), vec![b' '; MAX_HOLD_FILE as usize + 1]).unwrap();
        assert_eq!(read_dir(dir.path()), [good]);
    }
}
