//! What `ceiling` and `loadgen` print on stdout, one JSON object a line,
//! as types: the programs write them and the harness reads them back with
//! the same types (the relay's own lines are
//! `relay_channel::status::StatusLine`).

use serde::{Deserialize, Serialize};

/// A line of `ceiling`, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CeilingLine {
    /// Listening and forwarding.
    Ready {
        pid: u32,
        /// The receive address, `ip:port`.
        listen: String,
        /// The group it forwards to.
        to: String,
        recv_buffer_granted: usize,
        /// Whether the kernel counts the socket's drops (SO_RXQ_OVFL).
        drop_counter: bool,
        gso: bool,
    },
    /// The last line: its counters.
    Final {
        received: u64,
        bytes_received: u64,
        forwarded: u64,
        send_errors: u64,
        kernel_drops: u64,
        elapsed_s: f64,
        gso: bool,
    },
}

/// `loadgen`'s one line: what it sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadgenSummary {
    pub sent: u64,
    pub elapsed_s: f64,
    /// Datagrams a second, over the whole run.
    pub rate: f64,
    /// Sends the kernel refused at first (ENOBUFS) and that were retried.
    pub retries: u64,
    /// The counters of the first and last datagram sent; `null` when
    /// nothing was sent.
    pub first_counter: Option<i32>,
    pub last_counter: Option<i32>,
    pub bytes: u64,
}

/// Prints one line on stdout.
pub fn print(line: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string(line).expect("the lines serialize")
    );
}
