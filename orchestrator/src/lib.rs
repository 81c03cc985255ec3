//! The speeddata-relay supervisor.
//!
//! - [`config`]: `orchestrator.toml` and the fleet of channel files;
//! - [`policy`]: backoff and crash-loop decisions, pure;
//! - [`child`]: one `relay-channel` process: spawn, status lines, stop;
//! - [`supervisor`]: one task per channel, reload and reconcile;
//! - [`state`]: channel status, lifecycle events, Prometheus metrics;
//! - [`http`]: the HTTP API;
//! - [`systemd`]: readiness, watchdog and status notifications.

pub mod config;
pub mod policy;
pub mod state;
pub mod supervisor;
