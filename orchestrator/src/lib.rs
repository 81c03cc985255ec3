//! The speeddata-relay supervisor.
//!
//! - [`config`]: `orchestrator.toml` and the fleet of channel files;
//! - `policy`: backoff and crash-loop decisions, pure;
//! - `child`: one `relay-channel` process: spawn, status lines, stop;
//! - [`daemon`]: `orchestrator run`: the API, the channels, signals, reload;
//! - [`supervisor`]: one task per channel, reload and reconcile;
//! - `stall`: the orchestrator's own pauses, which the watchdog discounts;
//! - `lifecycle`: one channel's lifecycle as a pure transition table;
//! - `reconcile`: running vs wanted channels as a pure diff;
//! - [`state`]: channel status, lifecycle events, Prometheus metrics;
//! - `holds`: holds, an incident's data kept past retention;
//! - [`hold_cmd`]: `orchestrator hold add|ls|rm` and `export`, through the API;
//! - `export`: a hold's archive files copied (or cut) out for an analyst;
//! - `http`: the HTTP API;
//! - `registry`: channel files written through the API;
//! - `console`: the web console's embedded pages;
//! - `live`: the live stream of a channel's decimated records (WebSocket);
//! - `fdlimit`: the descriptor limit, and the share HTTP connections get;
//! - [`status_cmd`]: `orchestrator status`, a table from a running API;
//! - [`channel_cmd`]: `orchestrator channel add|rm|show`, through the API;
//! - [`speeddata_import`]: `orchestrator import speeddata`, a SpeedData
//!   configuration (YAML, its SQLite registry) as channel files;
//! - `systemd`: readiness, watchdog and status notifications.

pub mod channel_cmd;
pub(crate) mod child;
pub mod config;
pub(crate) mod console;
pub mod daemon;
pub(crate) mod export;
pub(crate) mod fdlimit;
pub mod hold_cmd;
pub(crate) mod holds;
pub(crate) mod http;
pub(crate) mod lifecycle;
pub(crate) mod live;
pub mod pivot;
pub mod pivot_cmd;
pub(crate) mod policy;
pub(crate) mod reconcile;
pub(crate) mod registry;
pub mod speeddata_import;
pub(crate) mod stall;
pub mod state;
pub mod status_cmd;
pub mod supervisor;
pub(crate) mod systemd;

pub use http::openapi;
