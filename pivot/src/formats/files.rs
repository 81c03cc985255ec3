//! Parquet, Arrow IPC and CSV: one file a channel, straight to the output,
//! or into a zip of several, streamed.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use speeddata_api::pivot::Format;
use zip::write::{SimpleFileOptions, StreamWriter};
use zip::{CompressionMethod, ZipWriter};

use super::csv::CsvWriter;
use super::{other, Sink, ROW_GROUP_BYTES};
use crate::ChannelInfo as ChannelPlan;

/// Parquet's settings for a channel: zstd level 1 (fast, and most of the
/// gain); dictionary encoding as Parquet does by default (it falls back
/// to plain encoding by itself where values do not repeat; digitised
/// signals repeat a lot: with it, exporting the 800 B bench records took
/// 1.6 s a million instead of 3.0 s, the file 5 % smaller, for zstd had
/// far less to compress); statistics for the time column only (what
/// readers filter row groups by; the others' cost 6 % of the time).
fn parquet_properties(ch: &ChannelPlan) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("level 1 exists"),
        ))
        .set_max_row_group_row_count(Some(1 << 20))
        .set_statistics_enabled(EnabledStatistics::None);
    for f in ch.schema().fields() {
        let path = ColumnPath::from(f.name().as_str());
        if *f.name() == ch.time_column {
            b = b.set_column_statistics_enabled(path, EnabledStatistics::Page);
        }
    }
    b.build()
}

/// The output: the client's stream, or a zip in it.
enum Out<W: Write> {
    Direct(W),
    Zip(Box<ZipWriter<StreamWriter<W>>>),
    Done,
}

/// The output, shared by the channel's writer (which needs one it owns).
struct Shared<W: Write>(Arc<Mutex<Out<W>>>);

impl<W: Write> Clone for Shared<W> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<W: Write> Write for Shared<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Out::Direct(w) => w.write(buf),
            Out::Zip(z) => z.write(buf),
            Out::Done => Err(io::Error::other("the export is finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Out::Direct(w) => w.flush(),
            Out::Zip(z) => z.flush(),
            Out::Done => Ok(()),
        }
    }
}

enum Writer<W: Write + Send> {
    Parquet(ArrowWriter<Shared<W>>),
    Arrow(FileWriter<Shared<W>>),
    Csv(CsvWriter<Shared<W>>),
}

/// Parquet, Arrow or CSV.
pub struct FileSink<W: Write + Send> {
    format: Format,
    out: Shared<W>,
    writer: Option<Writer<W>>,
}

impl<W: Write + Send> FileSink<W> {
    pub fn new(format: Format, multi: bool, out: W) -> FileSink<W> {
        let out = if multi {
            Out::Zip(Box::new(ZipWriter::new_stream(out)))
        } else {
            Out::Direct(out)
        };
        FileSink {
            format,
            out: Shared(Arc::new(Mutex::new(out))),
            writer: None,
        }
    }
}

impl<W: Write + Send + 'static> Sink for FileSink<W> {
    fn begin(&mut self, ch: &ChannelPlan) -> io::Result<()> {
        if let Out::Zip(z) = &mut *self.out.0.lock().unwrap_or_else(PoisonError::into_inner) {
            // Parquet and Arrow are compressed already (or are not worth
            // the time): stored; CSV deflated.
            let method = match self.format {
                Format::Csv => CompressionMethod::Deflated,
                _ => CompressionMethod::Stored,
            };
            let opts = SimpleFileOptions::default()
                .compression_method(method)
                .large_file(true);
            z.start_file(format!("{}.{}", ch.name, self.format.extension()), opts)
                .map_err(other)?;
        }
        let out = self.out.clone();
        let schema = ch.schema().clone();
        self.writer = Some(match self.format {
            Format::Parquet => {
                let props = parquet_properties(ch);
                Writer::Parquet(ArrowWriter::try_new(out, schema, Some(props)).map_err(other)?)
            }
            Format::Arrow => Writer::Arrow(FileWriter::try_new(out, &schema).map_err(other)?),
            Format::Csv => Writer::Csv(CsvWriter::new(out, &schema)?),
            Format::Hdf5 => unreachable!("HDF5 has a sink of its own"),
        });
        Ok(())
    }

    fn batch(&mut self, _ch: &ChannelPlan, batch: &RecordBatch) -> io::Result<()> {
        match self.writer.as_mut().expect("begin was called") {
            Writer::Parquet(w) => {
                w.write(batch).map_err(other)?;
                if w.in_progress_size() >= ROW_GROUP_BYTES {
                    w.flush().map_err(other)?;
                }
            }
            Writer::Arrow(w) => w.write(batch).map_err(other)?,
            Writer::Csv(w) => w.write(batch)?,
        }
        Ok(())
    }

    fn end(&mut self, _ch: &ChannelPlan, rows: u64) -> io::Result<()> {
        match self.writer.take().expect("begin was called") {
            Writer::Parquet(mut w) => {
                w.append_key_value_metadata(KeyValue::new(
                    "speeddata.rows".to_string(),
                    rows.to_string(),
                ));
                w.close().map_err(other)?;
            }
            Writer::Arrow(mut w) => w.finish().map_err(other)?,
            Writer::Csv(mut w) => w.finish()?,
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        let mut out = self.out.0.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *out, Out::Done) {
            Out::Direct(mut w) => w.flush(),
            Out::Zip(z) => {
                let mut w = z.finish().map_err(other)?.into_inner();
                w.flush()
            }
            Out::Done => Ok(()),
        }
    }
}
