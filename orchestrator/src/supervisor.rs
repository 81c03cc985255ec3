//! The supervisor: one task per channel that owns its child process.

use tokio::sync::oneshot;

/// What the HTTP API may ask of the supervisor.
#[derive(Debug)]
pub enum Request {
    /// Restart a channel now (stop its child gracefully, start a new one,
    /// forget its failure history). Answers `Err` if there is no such
    /// channel.
    Restart {
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
}
