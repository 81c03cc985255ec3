//! Archive file names, composed and parsed in this one place. In a
//! channel's folder:
//!
//! - `{channel}-{from}.avro.part`: the file being written ([`part_name`]);
//! - `{channel}-{from}--{to}.avro`: a closed file ([`closed_name`]);
//!   `{channel}-{from}.avro` is how closed files were named before spans
//!   were ([`legacy_closed_name`]);
//! - `{channel}-{from}.avro.part.damaged`: a crash's leftover whose header
//!   could not be read ([`damaged_name`]).
//!
//! `{channel}-{from}` is a file's stem ([`stem`]); `{from}` and `{to}` are
//! [`stamp`]s: from the arrival of the file's first record to its close,
//! UTC, to the millisecond. A closed file's time span comes from its name
//! ([`file_span`]).

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A closed archive file's name ends with this.
pub(crate) const CLOSED_SUFFIX: &str = ".avro";

/// The name of the file being written ends with this.
pub(crate) const PART_SUFFIX: &str = ".avro.part";

/// `{channel}-{from}`: the stem of the file of `channel` whose first record
/// arrived at `from_ms` (milliseconds since the epoch).
pub(crate) fn stem(channel: &str, from_ms: u64) -> String {
    format!("{channel}-{}", stamp_ms(from_ms))
}

/// `{stem}.avro.part`: the name of the file being written.
pub(crate) fn part_name(stem: &str) -> String {
    format!("{stem}{PART_SUFFIX}")
}

/// `{stem}--{to}.avro`: the name of the file once closed at `to_ms`.
pub(crate) fn closed_name(stem: &str, to_ms: u64) -> String {
    format!("{stem}--{}{CLOSED_SUFFIX}", stamp_ms(to_ms))
}

/// `{stem}.avro`: a closed file as named before spans were.
pub(crate) fn legacy_closed_name(stem: &str) -> String {
    format!("{stem}{CLOSED_SUFFIX}")
}

/// `{name}.damaged`: where a leftover `name` whose header is damaged is put
/// aside.
pub(crate) fn damaged_name(part_name: &str) -> String {
    format!("{part_name}.damaged")
}

/// The stem of a file being written (`{stem}.avro.part`); `None` for any
/// other name.
pub(crate) fn part_stem(name: &str) -> Option<&str> {
    name.strip_suffix(PART_SUFFIX)
}

/// Whether `name` is that of a closed archive file (`*.avro`).
pub(crate) fn is_closed(name: &str) -> bool {
    name.ends_with(CLOSED_SUFFIX)
}

/// The start of a stem, `{channel}-{from}`: `from`; `None` for any other
/// stem (the channel at least one character).
pub(crate) fn stem_start(stem: &str) -> Option<SystemTime> {
    let head_len = stem.len().checked_sub(STAMP_LEN + 1)?;
    if head_len == 0 {
        return None;
    }
    let tail = stem.get(head_len..)?;
    parse_stamp(tail.strip_prefix('-')?)
}

/// `20261122T213000.123Z` for a time in milliseconds since the epoch.
pub(crate) fn stamp_ms(ms: u64) -> String {
    stamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// Milliseconds since the epoch (0 before it).
pub(crate) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Length of a stamp, `20261122T213000.123Z`.
const STAMP_LEN: usize = 20;

/// The stamp of archive file names: `20261122T213000.123Z`, a time to the
/// millisecond (cut, not rounded), UTC.
pub fn stamp(t: SystemTime) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(epoch_ms(t));
    // 2026-11-22T21:30:00.123Z
    humantime::format_rfc3339_millis(t)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// Reads a [`stamp`]; `None` for anything else.
pub fn parse_stamp(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let shape_ok = b.len() == STAMP_LEN
        && b[8] == b'T'
        && b[15] == b'.'
        && b[19] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 8 | 15 | 19) || c.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    let text = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..19]
    );
    humantime::parse_rfc3339(&text).ok()
}

/// A closed archive file's time span: from its first record's arrival to
/// its close (arrival time, UTC, to the millisecond).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub from: SystemTime,
    pub to: SystemTime,
}

/// The span of a closed archive file, from its name:
/// `{channel}-{from}--{to}.avro`. A name from before spans were named,
/// `{channel}-{from}.avro`, ends at the file's modification time (the
/// file itself is not followed if it is a symlink). `None` for any other
/// name.
pub fn file_span(path: &Path) -> Option<Span> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(CLOSED_SUFFIX)?;
    if let Some((from, to)) = split_span(stem) {
        return Some(Span { from, to });
    }
    let from = stem_start(stem)?;
    let modified = fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(Span {
        from,
        to: modified.max(from),
    })
}

/// `{stem}--{to}`: the stem; `None` for a name without a span.
pub(crate) fn span_head(base: &str) -> Option<&str> {
    split_span(base)?;
    base.get(..base.len() - STAMP_LEN - 2)
}

/// `{channel}-{from}--{to}`: both times.
fn split_span(stem: &str) -> Option<(SystemTime, SystemTime)> {
    let head_len = stem.len().checked_sub(STAMP_LEN + 2)?;
    let (head, tail) = (stem.get(..head_len)?, stem.get(head_len..)?);
    let to = parse_stamp(tail.strip_prefix("--")?)?;
    let from = stem_start(head)?;
    Some((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn names_round_trip() {
        let from_ms = 1_795_383_000_123;
        let to_ms = from_ms + 3_600_333;
        for channel in ["ch", "a-b", "x--y", "20261122T213000.123Z"] {
            let stem = stem(channel, from_ms);
            assert_eq!(stem, format!("{channel}-20261122T213000.123Z"));
            let from = SystemTime::UNIX_EPOCH + Duration::from_millis(from_ms);
            let to = SystemTime::UNIX_EPOCH + Duration::from_millis(to_ms);
            assert_eq!(stem_start(&stem), Some(from));
            let part = part_name(&stem);
            assert_eq!(part, format!("{stem}.avro.part"));
            assert_eq!(part_stem(&part), Some(stem.as_str()));
            assert!(!is_closed(&part));
            let closed = closed_name(&stem, to_ms);
            assert_eq!(
                closed,
                format!("{channel}-20261122T213000.123Z--20261122T223000.456Z.avro")
            );
            assert!(is_closed(&closed));
            assert_eq!(part_stem(&closed), None);
            assert_eq!(
                file_span(Path::new(&closed)),
                Some(Span { from, to }),
                "{closed}"
            );
            assert_eq!(damaged_name(&part), format!("{part}.damaged"));
            assert_eq!(part_stem(&damaged_name(&part)), None);
            assert!(is_closed(&legacy_closed_name(&stem)));
        }
        assert_eq!(stem_start("-20261122T213000.123Z"), None);
        assert_eq!(stem_start("ch-2"), None);
    }

    #[test]
    fn file_stamps_sort_as_time() {
        assert_eq!(stamp_ms(1_795_383_000_123), "20261122T213000.123Z");
        assert!(stamp_ms(1_795_383_000_123) < stamp_ms(1_795_383_000_124));
        assert_eq!(epoch_ms(at("2026-11-22T21:30:00.123Z")), 1_795_383_000_123);
        assert_eq!(epoch_ms(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn stamps_sort_as_time_and_read_back() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_383_000_123);
        assert_eq!(stamp(t), "20261122T213000.123Z");
        assert_eq!(
            stamp(t + Duration::from_micros(999)),
            "20261122T213000.123Z"
        );
        assert!(stamp(t) < stamp(t + Duration::from_millis(1)));
        assert_eq!(parse_stamp("20261122T213000.123Z"), Some(t));
        for bad in [
            "20261122T213000.123",
            "20261122T213000.12Z",
            "20261122X213000.123Z",
            "2026112aT213000.123Z",
            "20261322T213000.123Z",
            "20261122T213000.123Z ",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn file_spans_come_from_names_or_the_modification_time() {
        let d = tempfile::tempdir().unwrap();
        let from = at("2026-11-22T21:30:00.123Z");
        let to = at("2026-11-22T22:30:00.456Z");
        for channel in ["ch", "a-b", "x--y", "20261122T213000.123Z"] {
            let p = d.path().join(format!(
                "{channel}-20261122T213000.123Z--20261122T223000.456Z.avro"
            ));
            assert_eq!(file_span(&p), Some(Span { from, to }), "{channel}");
        }
        // An old name: to is the modification time.
        let old = d.path().join("my-ch-20261122T213000.123Z.avro");
        fs::write(&old, b"x").unwrap();
        let modified = at("2026-11-22T21:45:00Z");
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(file_span(&old), Some(Span { from, to: modified }));
        // An old name that does not exist has no span.
        assert_eq!(
            file_span(&d.path().join("ch-20261122T213000.123Z.avro")),
            None
        );
        for bad in [
            "20261122T213000.123Z.avro",
            "-20261122T213000.123Z.avro",
            "ch-20261122T213000.123Z--20261122T223000.456Z.avro.part",
            "ch-20261122T213000.123Z-20261122T223000.456Z.avro",
            "ch-20261122T213000.123Z--.avro",
            "ch.avro",
            "notes.txt",
        ] {
            assert_eq!(file_span(&d.path().join(bad)), None, "{bad}");
        }
    }
}
