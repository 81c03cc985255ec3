//! Exports: channels' archives over a time range, pivoted into columns.
//!
//! One code path serves the orchestrator's `GET /api/v1/pivot/export`,
//! `orchestrator pivot` through it, and `orchestrator pivot --offline`
//! over the archive folders: [`plan`] picks, for each channel, the files
//! and the blocks a range needs from the block indexes
//! ([`relay_channel::index`]), without reading a block; [`Plan::write`]
//! reads just those blocks, decodes the records in range straight into
//! Arrow columns ([`columns`]) a batch at a time, and hands each batch to
//! the format's writer ([`formats`]), which writes it out while the next
//! is read. Memory is bounded by a batch ([`BATCH_ROWS`], [`BATCH_BYTES`])
//! and the format's own buffer, whatever the range.
//!
//! # Which records
//!
//! The range is `[start, end)`. By record time (the channel's
//! `archive.time_field`, the default when it has one) a record is in when
//! its own time is; by arrival time (`time=arrival`, the default without a
//! time field) when its arrival is. The archive keeps arrival per block,
//! not per record: the first and last record's; a record's arrival is
//! placed between them by its position in the block (linearly), so it is
//! exact for the first and last record of every block and within the
//! block's span (at most `archive.flush_interval`, 1 s by default) for
//! the rest.

pub mod columns;
pub mod formats;
mod source;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arrow::array::{ArrayRef, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use relay_channel::index::{self, Block};
use relay_channel::record_time::{RecordTime, TimeUnit as FieldUnit};
use speeddata_api::pivot::{Format, TimeBasis};

use crate::columns::Columns;
pub use crate::source::SourceError;

/// Rows a batch holds at most before it goes to the writer.
pub const BATCH_ROWS: usize = 65_536;
/// Decoded record bytes a batch holds at most before it goes to the writer.
pub const BATCH_BYTES: usize = 4 << 20;

/// A channel to export: where its archive is, its schema.
#[derive(Debug, Clone)]
pub struct Channel {
    pub name: String,
    /// Its archive folder (`archive.dir`/`name`).
    pub dir: PathBuf,
    pub schema_json: String,
    /// `archive.time_field`.
    pub time_field: Option<String>,
}

/// What to export.
#[derive(Debug, Clone)]
pub struct Request {
    pub channels: Vec<Channel>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub signals: Option<Vec<String>>,
    pub format: Format,
    /// `None`: by record time where a channel has a time field.
    pub time: Option<TimeBasis>,
}

/// Whether this build writes HDF5 (the `hdf5` feature, on by default: it
/// links Debian's libhdf5). Builds without it refuse `format=hdf5` with a
/// message naming the other formats.
pub const HDF5: bool = cfg!(feature = "hdf5");

/// Why an export cannot be made; `field` is the query parameter at fault,
/// if one is.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExportError {
    pub field: Option<&'static str>,
    pub message: String,
    /// The archive, not the query, is at fault: a file written under
    /// another schema, a folder that cannot be read.
    pub archive: bool,
}

impl ExportError {
    fn of(field: &'static str, message: impl Into<String>) -> ExportError {
        ExportError {
            field: Some(field),
            message: message.into(),
            archive: false,
        }
    }
}

/// One channel's part of a plan.
/// What a format's writer knows of a channel.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub name: String,
    pub basis: TimeBasis,
    /// The time column: its name and unit.
    pub time_column: String,
    pub time_unit: FieldUnit,
    schema: SchemaRef,
}

impl ChannelInfo {
    /// The columns' names and types.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

pub struct ChannelPlan {
    pub info: ChannelInfo,
    columns: Columns,
    /// No column: walks over a record.
    skipper: Columns,
    /// Reads each record's time, selecting by record time.
    record_time: Option<RecordTime>,
    /// The arrival column's name, selecting by arrival.
    arrival_column: Option<String>,
    files: Vec<source::FileRead>,
    /// Blocks to read, and the records in them.
    pub blocks: usize,
    pub block_records: u64,
}

/// What an export reads: for each channel, its columns and blocks.
pub struct Plan {
    pub channels: Vec<ChannelPlan>,
    pub format: Format,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// What [`Plan::write`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// `(channel, rows)`.
    pub rows: Vec<(String, u64)>,
    pub blocks_read: u64,
    pub bytes_decoded: u64,
}

/// Picks the columns and the blocks of each channel of `req`.
pub fn plan(req: &Request) -> Result<Plan, ExportError> {
    if req.format == Format::Hdf5 && !HDF5 {
        return Err(ExportError::of(
            "format",
            "this build has no HDF5 writer (built without the `hdf5` feature, as the macOS \
             builds are): ask for format=parquet, arrow or csv",
        ));
    }
    let mut channels = Vec::new();
    let mut found = vec![false; req.signals.as_ref().map_or(0, Vec::len)];
    for ch in &req.channels {
        let schema = apache_avro::Schema::parse_str(&ch.schema_json)
            .map_err(|e| ExportError::of("channels", format!("channel {}: {e}", ch.name)))?;
        let basis = match (req.time, &ch.time_field) {
            (Some(TimeBasis::Record), None) => {
                return Err(ExportError::of(
                    "time",
                    format!(
                    "channel {} has no archive.time_field: only time=arrival selects its records",
                    ch.name
                ),
                ))
            }
            (Some(b), _) => b,
            (None, Some(_)) => TimeBasis::Record,
            (None, None) => TimeBasis::Arrival,
        };
        let record_time = match &ch.time_field {
            Some(f) => Some(RecordTime::new(&schema, f).map_err(|e| {
                ExportError::of(
                    "channels",
                    format!("channel {}: archive.time_field: {e}", ch.name),
                )
            })?),
            None => None,
        };
        // Signals this channel has; those it lacks are left out of it.
        let signals = req.signals.as_ref().map(|wanted| {
            wanted
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    let has = Columns::new(&schema, Some(std::slice::from_ref(*s)), None).is_ok();
                    found[*i] |= has;
                    has
                })
                .map(|(_, s)| s.clone())
                .collect::<Vec<_>>()
        });
        let columns = Columns::new(&schema, signals.as_deref(), ch.time_field.as_deref())
            .map_err(|e| ExportError::of("signals", format!("channel {}: {e}", ch.name)))?;
        let skipper = Columns::new(&schema, Some(&[]), None)
            .map_err(|e| ExportError::of("channels", format!("channel {}: {e}", ch.name)))?;
        let mut fields: Vec<Field> = columns.fields().to_vec();
        let arrival_column = (basis == TimeBasis::Arrival).then(|| {
            let mut name = "arrival".to_string();
            while fields.iter().any(|f| *f.name() == name) {
                name.insert(0, '_');
            }
            fields.insert(
                0,
                Field::new(
                    &name,
                    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
                    false,
                ),
            );
            name
        });
        let (time_column, time_unit) = match (&arrival_column, &ch.time_field, &record_time) {
            (None, Some(f), Some(rt)) => (f.clone(), rt.unit()),
            (Some(a), _, _) => (a.clone(), FieldUnit::Micros),
            _ => unreachable!("a basis of record time has a time field"),
        };
        let files = source::select(ch, &schema, req.start, req.end, basis, record_time.as_ref())
            .map_err(|e| ExportError {
                field: None,
                message: format!("channel {}: {e}", ch.name),
                archive: true,
            })?;
        let blocks = files.iter().map(|f| f.blocks.len()).sum();
        let block_records = files.iter().flat_map(|f| &f.blocks).map(|b| b.count).sum();
        channels.push(ChannelPlan {
            info: ChannelInfo {
                name: ch.name.clone(),
                basis,
                time_column,
                time_unit,
                schema: Arc::new(ArrowSchema::new(fields)),
            },
            columns,
            skipper,
            record_time: if basis == TimeBasis::Record {
                record_time
            } else {
                None
            },
            arrival_column,
            files,
            blocks,
            block_records,
        });
    }
    if let Some(missing) = found
        .iter()
        .position(|f| !f)
        .and_then(|i| req.signals.as_ref()?.get(i))
    {
        return Err(ExportError::of(
            "signals",
            format!(
                "no channel asked for has a signal \"{missing}\" (signals are field names, dotted through nested records)"
            ),
        ));
    }
    Ok(Plan {
        channels,
        format: req.format,
        start: req.start,
        end: req.end,
    })
}

/// Nanoseconds since the epoch.
fn epoch_ns(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn unit_ns(u: FieldUnit) -> i128 {
    match u {
        FieldUnit::Millis => 1_000_000,
        FieldUnit::Micros => 1_000,
        FieldUnit::Nanos => 1,
    }
}

impl Plan {
    /// Channels with no block in the range: their part of the export is
    /// empty.
    pub fn empty_channels(&self) -> Vec<&str> {
        self.channels
            .iter()
            .filter(|c| c.blocks == 0)
            .map(|c| c.info.name.as_str())
            .collect()
    }

    /// The file name of the export: `{channel}.{ext}` for one channel in
    /// any format, or `speeddata-export.h5`; a zip of several otherwise.
    pub fn file_name(&self) -> String {
        let stamp = relay_channel::holds::stamp(self.start);
        match (self.channels.as_slice(), self.format) {
            ([one], f) => format!("{}-{stamp}.{}", one.info.name, f.extension()),
            (_, Format::Hdf5) => format!("export-{stamp}.h5"),
            _ => format!("export-{stamp}.{}.zip", self.format.extension()),
        }
    }

    /// The export's media type.
    pub fn content_type(&self) -> &'static str {
        match (self.channels.len(), self.format) {
            (_, Format::Hdf5) => "application/x-hdf5",
            (1, Format::Parquet) => "application/vnd.apache.parquet",
            (1, Format::Arrow) => "application/vnd.apache.arrow.file",
            (1, Format::Csv) => "text/csv; charset=utf-8",
            _ => "application/zip",
        }
    }

    /// Writes the export to `out`. An error writing (the client gone) stops
    /// the work at once.
    ///
    /// Two threads share the work: this one reads and decodes, a second
    /// one encodes and writes, a batch behind (at most one batch waits
    /// between them).
    pub fn write(self, out: impl Write + Send + 'static) -> io::Result<Summary> {
        enum Msg {
            Begin(ChannelInfo),
            Batch(ChannelInfo, RecordBatch),
            End(ChannelInfo, u64),
        }
        let multi = self.channels.len() > 1;
        let format = self.format;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(1);
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the writer stopped");
        std::thread::scope(|scope| {
            let writer = std::thread::Builder::new()
                .name("export-writer".into())
                .spawn_scoped(scope, move || -> io::Result<()> {
                    let mut sink = formats::sink(format, multi, out)?;
                    for m in rx {
                        match m {
                            Msg::Begin(info) => sink.begin(&info)?,
                            Msg::Batch(info, b) => sink.batch(&info, &b)?,
                            Msg::End(info, rows) => sink.end(&info, rows)?,
                        }
                    }
                    sink.finish()
                })?;
            let mut summary = Summary::default();
            let (start, end) = (epoch_ns(self.start), epoch_ns(self.end));
            let read = (|| -> io::Result<()> {
                for mut ch in self.channels {
                    let info = ch.info.clone();
                    tx.send(Msg::Begin(info.clone())).map_err(|_| gone())?;
                    let mut emit =
                        |b: RecordBatch| tx.send(Msg::Batch(info.clone(), b)).map_err(|_| gone());
                    let rows = read_channel(&mut ch, start, end, &mut emit, &mut summary)?;
                    tx.send(Msg::End(info.clone(), rows)).map_err(|_| gone())?;
                    summary.rows.push((info.name.clone(), rows));
                }
                Ok(())
            })();
            drop(tx);
            // The writer's error first: it is why the reading stopped.
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the export's writer panicked")));
            written.and(read).map(|()| summary)
        })
    }
}

/// Reads a channel's blocks and hands its rows to `sink` a batch at a
/// time; the rows written.
fn read_channel(
    ch: &mut ChannelPlan,
    start: i128,
    end: i128,
    emit: &mut dyn FnMut(RecordBatch) -> io::Result<()>,
    summary: &mut Summary,
) -> io::Result<u64> {
    let (mut raw, mut data) = (Vec::new(), Vec::new());
    let mut arrival = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut rows = 0u64;
    let mut batch_bytes = 0usize;
    let unit = unit_ns(ch.info.time_unit);
    let files = std::mem::take(&mut ch.files);
    for f in &files {
        for b in &f.blocks {
            index::read_block(&f.file, &f.blocks_of, b, &mut raw, &mut data)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", f.path.display())))?;
            summary.blocks_read += 1;
            summary.bytes_decoded += data.len() as u64;
            let mut pos = 0;
            for i in 0..b.count {
                let keep = match (&ch.record_time, &ch.arrival_column) {
                    (Some(rt), _) => {
                        let t = rt.read(&data[pos..]).map(|t| t as i128 * unit);
                        t.is_some_and(|t| t >= start && t < end)
                    }
                    (None, _) => {
                        let us = arrival_of(b, i);
                        let ns = us as i128 * 1000;
                        let keep = ns >= start && ns < end;
                        if keep {
                            arrival.append_value(us);
                        }
                        keep
                    }
                };
                let before = pos;
                let walked = if keep {
                    ch.columns.decode(&data, &mut pos).is_ok()
                } else {
                    skip(ch, &data, &mut pos)
                };
                if !walked {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: block at offset {}: record {i} does not decode under the file's schema",
                            f.path.display(),
                            b.offset
                        ),
                    ));
                }
                if keep {
                    batch_bytes += pos - before;
                    if ch.columns.rows() >= BATCH_ROWS || batch_bytes >= BATCH_BYTES {
                        rows += flush(ch, &mut arrival, emit)?;
                        batch_bytes = 0;
                    }
                }
            }
        }
    }
    rows += flush(ch, &mut arrival, emit)?;
    Ok(rows)
}

/// Walks over a record not in range.
fn skip(ch: &mut ChannelPlan, data: &[u8], pos: &mut usize) -> bool {
    match &ch.record_time {
        Some(rt) => rt.walk(data, pos).is_some(),
        None => ch.skipper.decode(data, pos).is_ok(),
    }
}

/// The arrival of record `i` of block `b`, in µs: between its first and
/// last record's, by its place in the block.
fn arrival_of(b: &Block, i: u64) -> i64 {
    let (first, last) = b.arrival_us;
    if b.count <= 1 || last <= first {
        return first;
    }
    first + ((last - first) as i128 * i as i128 / (b.count - 1) as i128) as i64
}

/// Hands the rows decoded so far to `sink`; how many.
fn flush(
    ch: &mut ChannelPlan,
    arrival: &mut TimestampMicrosecondBuilder,
    emit: &mut dyn FnMut(RecordBatch) -> io::Result<()>,
) -> io::Result<u64> {
    let n = ch.columns.rows();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    if ch.arrival_column.is_some() {
        arrays.push(Arc::new(arrival.finish()));
    }
    if n == 0 && ch.columns.fields().is_empty() && arrays.first().is_none_or(|a| a.is_empty()) {
        return Ok(0);
    }
    arrays.extend(ch.columns.finish());
    let rows = arrays.first().map_or(0, |a| a.len());
    if rows == 0 {
        return Ok(0);
    }
    let batch = RecordBatch::try_new(ch.info.schema.clone(), arrays)
        .map_err(|e| io::Error::other(e.to_string()))?;
    emit(batch)?;
    Ok(rows as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_s_arrival_lies_between_its_block_s_first_and_last() {
        let b = Block {
            offset: 0,
            end: 1,
            count: 5,
            arrival_us: (1_000, 1_400),
            time: None,
            indexed: true,
        };
        let at: Vec<i64> = (0..5).map(|i| arrival_of(&b, i)).collect();
        assert_eq!(at, [1_000, 1_100, 1_200, 1_300, 1_400]);
        let one = Block { count: 1, ..b };
        assert_eq!(arrival_of(&one, 0), 1_000);
        let backwards = Block {
            arrival_us: (5, 3),
            ..b
        };
        assert_eq!(
            arrival_of(&backwards, 4),
            5,
            "a clock stepped back: the first"
        );
    }
}
