//! The archive of one channel, by concern:
//!
//! - [`writer`]: the archive thread: blocks, files, rotation;
//! - [`block`]: the open block, the records gathered for the next block;
//! - [`file`]: the open file, and opening the next one;
//! - [`adaptive`]: the zstd level under load, down to storing blocks;
//! - [`level`]: what the adaptive level is shown, and how often;
//! - [`pool`]: blocks compressed on several threads, on hosts with cores
//!   to spare (`archive.compress_threads`);
//! - [`closer`]: fsync, rename to `.avro`, the `file_closed` report, then
//!   retention, on a thread of its own;
//! - [`retention`]: which closed files go;
//! - [`recovery`]: `.avro.part` files a crash left, closed at start.
//!
//! The container format itself is [`crate::container`]'s; rejected
//! datagrams go to [`crate::quarantine`].

mod adaptive;
mod block;
mod closer;
mod file;
mod level;
mod pool;
mod recovery;
mod retention;
mod writer;

pub(crate) use file::refuse_symlinked_folder;
pub(crate) use writer::Archive;
