//! One speeddata-relay channel: the whole data path of one channel.
//!
//! - [`config`]: the channel file, parsed and validated into a [`config::ChannelSpec`];
//! - [`net`]: sockets, `recvmmsg`/`sendmmsg` batches;
//! - [`validate`]: checks that a datagram is exactly one Avro datum of the schema;
//! - [`container`]: the Avro object container format, written block by block;
//! - [`handover`]: the batch and the rejection handed from the receive thread
//!   to the archive and quarantine threads;
//! - [`archive`]: the archive thread (blocks, rotation, retention);
//! - [`quarantine`]: rejected datagrams kept for inspection, on a path of their own;
//! - [`ledger`]: the counters the threads share, kept balanced;
//! - [`status`]: the status lines on stdout, and the table of counters;
//! - [`logs`]: the logging set-up both binaries share;
//! - [`receive`]: the receive thread, as stages (classify, outputs, archive
//!   feed, multicast membership);
//! - [`schema`]: the channel's schema, its validator and single-object header;
//! - [`relay`]: the threads wired together and the control loop.
//!
//! The orchestrator uses [`config`] to validate channel files exactly as the
//! relay will, and reads the status lines described in [`status`].

pub(crate) mod archive;
pub mod config;
pub mod container;
pub(crate) mod handover;
pub(crate) mod ledger;
pub mod logs;
pub mod net;
pub(crate) mod quarantine;
pub(crate) mod receive;
pub mod relay;
pub mod schema;
pub mod status;
pub mod validate;
