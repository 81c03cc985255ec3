//! Exports (`GET /api/v1/pivot/export`, `orchestrator pivot`): what the
//! endpoint and the command line share on top of `speeddata_pivot`. The
//! channels are those of the configuration: their archive folders, schemas
//! and time fields.

use std::io::{self, Write};
use std::time::Duration;

use relay_channel::config::ChannelSpec;
use speeddata_api::pivot::PivotQuery;
use speeddata_pivot::{Channel, ExportError, Request};

/// What the export of a query needs of the channels it names; the channel
/// missing or unreadable is the error (`field` = `channels`).
pub fn request(
    query: &PivotQuery,
    spec_of: impl Fn(&str) -> Option<ChannelSpec>,
) -> Result<Request, Refused> {
    let mut channels = Vec::new();
    for name in &query.channels {
        let spec =
            spec_of(name).ok_or_else(|| Refused::NotFound(format!("no channel {name:?}")))?;
        let schema_json = std::fs::read_to_string(&spec.schema_path).map_err(|e| {
            Refused::Bad(ExportError {
                field: Some("channels"),
                message: format!(
                    "channel {name}: cannot read its schema {}: {e}",
                    spec.schema_path.display()
                ),
                archive: true,
            })
        })?;
        channels.push(Channel {
            name: name.clone(),
            dir: spec.archive.channel_dir(name),
            schema_json,
            time_field: spec.archive.time_field.clone(),
        });
    }
    Ok(Request {
        channels,
        start: query.start,
        end: query.end,
        signals: query.signals.clone(),
        format: query.format,
        time: query.time,
    })
}

/// Why an export is refused before it starts.
#[derive(Debug)]
pub enum Refused {
    /// 404: a channel that does not exist.
    NotFound(String),
    /// 413: over a limit; the message names it.
    TooLarge(String),
    /// 400: a parameter is wrong; 409 when the archive is at fault.
    Bad(ExportError),
}

/// Checks `query` against the limits (`http.export_max_duration`,
/// `http.export_max_channels`).
pub fn check_limits(
    query: &PivotQuery,
    max_duration: Duration,
    max_channels: usize,
) -> Result<(), Refused> {
    if query.channels.len() > max_channels {
        return Err(Refused::TooLarge(format!(
            "{} channels asked for; an export takes at most {max_channels} (http.export_max_channels)",
            query.channels.len()
        )));
    }
    if query.duration() > max_duration {
        return Err(Refused::TooLarge(format!(
            "the range is {}; an export covers at most {} (http.export_max_duration)",
            humantime::format_duration(query.duration()),
            humantime::format_duration(max_duration)
        )));
    }
    Ok(())
}

/// A writer that hands what is written to the HTTP response in chunks; a
/// client gone makes every write fail, which stops the export.
pub struct ToBody {
    tx: tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

/// Bytes handed to the response at a time.
const CHUNK: usize = 256 << 10;

impl ToBody {
    pub fn new(tx: tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>) -> ToBody {
        ToBody {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ToBody {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for ToBody {
    fn drop(&mut self) {
        let _ = self.send();
    }
}
