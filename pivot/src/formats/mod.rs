//! The formats an export is written in. Each takes a channel's columns a
//! batch at a time ([`Sink`]) and writes while the export reads:
//!
//! - Parquet and Arrow (IPC file): one table a channel, written by arrow-rs
//!   ([`files`]); Parquet in row groups of at most [`ROW_GROUP_BYTES`]
//!   (zstd), so its buffer stays bounded.
//! - CSV: one table a channel, flattened: nested values (arrays, maps,
//!   unions, records inside them) as JSON text ([`csv`]).
//! - HDF5, SpeedData's layout: a group a channel, a 1-D dataset a column
//!   ([`hdf5`]). libhdf5 writes to a file it can seek in, so the export is
//!   written to a temporary file first and sent when complete.
//!
//! Several channels in Parquet, Arrow or CSV: a zip of one file a channel,
//! `<channel>.<ext>`, streamed as it is written.

pub mod csv;
pub mod files;
#[cfg(feature = "hdf5")]
pub mod hdf5;

use std::io::{self, Write};

use arrow::record_batch::RecordBatch;
use speeddata_api::pivot::Format;

use crate::ChannelInfo as ChannelPlan;

/// Parquet's buffer: a row group is written out once it is this big.
pub const ROW_GROUP_BYTES: usize = 8 << 20;

/// Where an export's channels go, a batch at a time.
pub trait Sink {
    /// A channel starts.
    fn begin(&mut self, ch: &ChannelPlan) -> io::Result<()>;
    /// Rows of the channel.
    fn batch(&mut self, ch: &ChannelPlan, batch: &RecordBatch) -> io::Result<()>;
    /// The channel is done: `rows` in all.
    fn end(&mut self, ch: &ChannelPlan, rows: u64) -> io::Result<()>;
    /// The export is done.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// The sink of `format` writing to `out`; `multi` when the export has
/// several channels.
pub fn sink(
    format: Format,
    multi: bool,
    out: impl Write + Send + 'static,
) -> io::Result<Box<dyn Sink>> {
    Ok(match format {
        #[cfg(feature = "hdf5")]
        Format::Hdf5 => Box::new(hdf5::Hdf5Sink::new(out)?),
        #[cfg(not(feature = "hdf5"))]
        Format::Hdf5 => {
            drop(out);
            return Err(io::Error::other(
                "this build has no HDF5 writer (the `hdf5` feature)",
            ));
        }
        f => Box::new(files::FileSink::new(f, multi, out)),
    })
}

/// An arrow-rs or libhdf5 error as an I/O error.
pub(crate) fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}
