//! The orchestrator's HTTP API as types: everything it sends and takes,
//! defined once. The server serializes these, the command-line tools and
//! the tests read them back with the same types, and the OpenAPI document
//! (`GET /api/v1/openapi.json`) is generated from them, so a field renamed
//! on one side cannot go unnoticed on another.
//!
//! - [`types`]: the bodies (channel status, events, holds, registration,
//!   errors, ...);
//! - [`client`]: a blocking client with one typed method per call;
//! - [`pivot`]: the pivot export's query, parsed once for the endpoint,
//!   the command line and the offline reader.
//!
//! The relay's own types appear as they are: a channel's `counters` are
//! the relay's [`relay_channel::status::Stats`] line, its `rates` the
//! [`relay_channel::status::Rates`] between two such lines.

pub mod client;
pub mod pivot;
pub mod types;

pub use client::{Client, Error};
pub use types::*;
