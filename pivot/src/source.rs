//! Which files and blocks of a channel's archive a range needs.
//!
//! Files are listed from the channel's folder: closed ones
//! (`{stem}--{to}.avro`, spanning their name's times) and the one being
//! written (`{stem}.avro.part`, from its name's time to now, read up to its
//! last whole block). By arrival, a file is read when its span, widened by
//! [`SLACK`], meets the range; by record time, every file's index is
//! consulted (a record's own time need not lie in its file's span). Within
//! a file, the blocks whose span (arrival, or least to greatest record
//! time) meets the range are read; a block the index lacks is read
//! whatever its times.

use std::fs::{self, File};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use relay_channel::holds::file_span;
use relay_channel::index::{self, epoch_us, Block, FileBlocks};
use relay_channel::record_time::RecordTime;
use speeddata_api::pivot::TimeBasis;

use crate::{epoch_ns, unit_ns, Channel};

/// How far outside a file's named span its records' arrival may lie: the
/// name holds the first record's arrival to the millisecond, made unique.
const SLACK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot list the archive folder {0}: {1}")]
    List(PathBuf, std::io::Error),
    #[error("{0} was written under another schema than the channel's current one; exports read a range under one schema: export the range before or after the change, or read the file with an Avro reader")]
    OtherSchema(PathBuf),
}

/// A file to read, open (retention may delete it meanwhile), and the
/// blocks of it to read.
pub(crate) struct FileRead {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) blocks_of: FileBlocks,
    pub(crate) blocks: Vec<Block>,
}

/// The files of `ch` and their blocks that `[start, end)` needs, oldest
/// first.
pub(crate) fn select(
    ch: &Channel,
    schema: &apache_avro::Schema,
    start: SystemTime,
    end: SystemTime,
    basis: TimeBasis,
    record_time: Option<&RecordTime>,
) -> Result<Vec<FileRead>, SourceError> {
    let rd = match fs::read_dir(&ch.dir) {
        Ok(rd) => rd,
        // A channel that never archived anything has no folder yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SourceError::List(ch.dir.clone(), e)),
    };
    let prefix = format!("{}-", ch.name);
    let now = SystemTime::now();
    let mut files = Vec::new();
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = e.path();
        let span = if let Some(stem) = name.strip_suffix(".avro.part") {
            match stem
                .strip_prefix(&prefix)
                .and_then(relay_channel::holds::parse_stamp)
            {
                Some(from) => (from, now.max(from)),
                None => continue,
            }
        } else if name.ends_with(".avro") {
            match file_span(&path) {
                Some(s) => (s.from, s.to),
                None => continue,
            }
        } else {
            continue;
        };
        files.push((span, path));
    }
    files.sort();
    let (start_ns, end_ns) = (epoch_ns(start), epoch_ns(end));
    let mut out = Vec::new();
    for ((from, to), path) in files {
        if basis == TimeBasis::Arrival && (from > end + SLACK || to + SLACK < start) {
            continue;
        }
        let read = File::open(&path)
            .and_then(|file| Ok((index::load(&path, (epoch_us(from), epoch_us(to)))?, file)));
        let (blocks_of, file) = match read {
            Ok(r) => r,
            // Gone since it was listed (retention), or not a container.
            Err(e) => {
                if path.exists() {
                    tracing::warn!(file = %path.display(), error = %e, "export: file left out: it cannot be read");
                }
                continue;
            }
        };
        let same = blocks_of.header.schema_json == ch.schema_json
            || apache_avro::Schema::parse_str(&blocks_of.header.schema_json)
                .is_ok_and(|s| s.canonical_form() == schema.canonical_form());
        let blocks: Vec<Block> = blocks_of
            .blocks
            .iter()
            .filter(|b| match (basis, b.time, record_time) {
                (TimeBasis::Arrival, ..) => {
                    let (first, last) = b.arrival_us;
                    (last as i128) * 1000 >= start_ns && (first as i128) * 1000 < end_ns
                }
                (TimeBasis::Record, Some((lo, hi)), Some(rt)) => {
                    let u = unit_ns(rt.unit());
                    hi as i128 * u >= start_ns && (lo as i128) * u < end_ns
                }
                (TimeBasis::Record, ..) => true,
            })
            .copied()
            .collect();
        if !blocks.is_empty() && !same {
            return Err(SourceError::OtherSchema(path));
        }
        if !blocks.is_empty() {
            out.push(FileRead {
                path,
                file,
                blocks_of,
                blocks,
            });
        }
    }
    Ok(out)
}
