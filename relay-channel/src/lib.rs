//! One speeddata-relay channel: the whole data path of one channel.
//!
//! - [`config`]: the channel file, parsed and validated into a
//!   [`config::ChannelSpec`] (data and validation only: no other module);
//! - [`schema`]: the channel's schema, its validator and single-object header;
//! - [`validate`]: checks that a datagram is exactly one Avro datum of the schema;
//! - `net`: the channel's sockets, read and written in batches through
//!   [`mmsg`], interface addresses;
//! - `mmsg`: the frozen `recvmmsg`/`sendmmsg` layer the relay and the
//!   benchmarks' ceiling forwarder share (Linux);
//! - [`portable_io`]: one datagram per call, for other kernels (and Linux
//!   with `SPEEDDATA_PORTABLE_IO=1`);
//! - `receive`: the receive thread, as stages (classify, outputs, archive
//!   feed, multicast membership);
//! - `handover`: the batch and the rejection the receive thread hands to
//!   the archive and quarantine threads, and the archive queue's sizing;
//! - `archive`: the archive threads (writer, closer, retention, recovery);
//! - [`decimate`]: the decimated output's windows: downsample, average, minmax, rms;
//! - [`holds`]: holds (time ranges kept past retention), and the time spans
//!   of archive files;
//! - `file_hints`: writeback, page-cache and allocation hints, per platform;
//! - `file_names`: archive file names, composed and parsed;
//! - [`container`]: the Avro object container format, written block by block;
//! - `varint`: Avro's zig-zag varints, written and read;
//! - [`avro_leaf`]: how each Avro leaf type is encoded, for the walks that
//!   step over values (the decimator's, the record-time reader's, the pivot's);
//! - `nofollow`: opening archive files without following a symlink, and
//!   saying so when one is refused;
//! - `quarantine`: rejected datagrams kept for inspection, on a path of their own;
//! - `ledger`: the counters the threads share, kept balanced;
//! - `reject`: why a datagram was rejected, the labels the stats line
//!   counts rejections under;
//! - [`status`]: the status lines on stdout, and the table of counters;
//! - [`logs`]: the logging set-up both binaries share;
//! - [`sched`]: the receive thread's CPU and realtime policy (`receive.cpu`,
//!   `receive.realtime`);
//! - [`relay`]: the threads wired together and the control loop.
//!
//! Only what the binaries, the orchestrator, the benches and the fuzz
//! targets use is public. The orchestrator uses [`config`] and [`schema`]
//! to validate channel files exactly as the relay will, and reads the status
//! lines described in [`status`]; the benchmarks use `mmsg`. The
//! orchestrator keeps holds with [`holds`], and the pivot walks records
//! with [`avro_leaf`].

pub(crate) mod archive;
pub mod avro_leaf;
pub mod config;
pub mod container;
pub mod decimate;
pub(crate) mod file_hints;
pub(crate) mod file_names;
pub(crate) mod handover;
pub mod holds;
pub mod index;
pub(crate) mod ledger;
pub mod logs;
#[cfg(target_os = "linux")]
pub mod mmsg;
pub(crate) mod net;
pub(crate) mod nofollow;
pub mod portable_io;

/// Interface addresses, resolved as the relay resolves them (the
/// orchestrator's live view joins decimated groups with it).
pub mod interface {
    pub use crate::net::resolve;
}
pub(crate) mod quarantine;
pub(crate) mod receive;
pub mod record_time;
pub(crate) mod reject;
pub mod relay;
pub mod sched;
pub mod schema;
pub mod status;
pub mod validate;
pub(crate) mod varint;
