//! The relay's stdout protocol: one JSON object per line, tagged by its
//! `event` field, defined once here. The relay writes [`StatusLine`]s and the
//! orchestrator reads them with the same type, so a field renamed on one
//! side cannot go unnoticed on the other.
//!
//! The channel's counters are described once, in [`COUNTERS`]: that table
//! drives the [`Counters`] struct on the stats line, and the orchestrator's
//! Prometheus series, rates, API and status table.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One line on the relay's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StatusLine {
    /// Sockets open, threads running: the channel relays from now on.
    Ready(Ready),
    /// Every second, and once more (`final`) when the channel stops.
    Stats(Stats),
    /// An archive file was closed and renamed to `.avro`.
    FileClosed(FileClosed),
    /// The last line: everything buffered was written out.
    Stopped(Stopped),
}

/// The `ready` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub channel: String,
    pub pid: u32,
    /// The receive address, `ip:port`.
    pub bind: String,
    /// The multicast group joined, if any.
    pub group: Option<String>,
    /// The receive buffer the kernel granted, in bytes.
    pub recv_buffer_granted: usize,
    /// The channel's archive folder.
    pub archive_dir: PathBuf,
    /// The full-rate output's destination, if any.
    pub full: Option<String>,
    /// The decimated output's destination, if any.
    pub decimated: Option<String>,
    /// Whether the outputs send runs of equal-length datagrams with UDP GSO
    /// (false without outputs, with `SPEEDDATA_GSO=0`, or where the kernel
    /// does not offer it). Missing from relays older than it: false.
    #[serde(default)]
    pub gso: bool,
    /// Which I/O path runs: the batch calls of Linux, or one datagram per
    /// call (other kernels; Linux with `SPEEDDATA_PORTABLE_IO=1`). Missing
    /// from relays older than it: `mmsg`.
    #[serde(default)]
    pub io: IoPath,
}

/// The relay's I/O path (see [`crate::portable_io`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoPath {
    /// `recvmmsg`/`sendmmsg` (with UDP GSO where the kernel offers it) and
    /// the kernel's drop counter: Linux.
    #[default]
    Mmsg,
    /// One `recvmsg`/`send` per datagram, no kernel drop counter.
    Portable,
}

impl IoPath {
    pub fn as_str(self) -> &'static str {
        match self {
            IoPath::Mmsg => "mmsg",
            IoPath::Portable => "portable",
        }
    }
}

/// The `stats` line: the counters since the relay started, and health.
///
/// Where the relay has no kernel drop counter ([`Stats::kernel_drops_absent`])
/// `kernel_drops` is written as `null`: unknown, not 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    pub channel: String,
    #[serde(flatten)]
    pub counters: Counters,
    /// Rejections by reason label (see [`reject_reasons`]); only reasons
    /// seen so far appear.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// False while the archive cannot write (disk full, folder gone, ...).
    pub archive_healthy: bool,
    /// False while a multicast join waits for its interface.
    pub joined: bool,
    /// With zstd, the level the archive compresses at now (the adaptive
    /// level, `archive.level` when it keeps up); `null` with other codecs
    /// and while blocks are stored.
    #[serde(default)]
    pub archive_level: Option<i32>,
    /// True while the archive stores blocks uncompressed (raw blocks in the
    /// zstd frame) to keep up.
    #[serde(default)]
    pub archive_stored: bool,
    /// True on the line written as the relay stops.
    #[serde(rename = "final")]
    pub last: bool,
    /// The kernel reports no receive drops for this relay's socket (the
    /// portable I/O path): `kernel_drops` reads `null` on the line and in
    /// the API, and has no Prometheus series.
    #[serde(skip)]
    pub kernel_drops_absent: bool,
}

impl Serialize for Stats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !self.kernel_drops_absent {
            return Stats::serialize(self, s);
        }
        let mut v = Stats::serialize(self, serde_json::value::Serializer)
            .map_err(serde::ser::Error::custom)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("kernel_drops".into(), serde_json::Value::Null);
        }
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Stats {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Stats, D::Error> {
        let mut v = serde_json::Value::deserialize(d)?;
        let absent = v
            .get("kernel_drops")
            .is_some_and(serde_json::Value::is_null);
        if absent {
            v["kernel_drops"] = 0.into();
        }
        let mut stats = Stats::deserialize(v).map_err(serde::de::Error::custom)?;
        stats.kernel_drops_absent = absent;
        Ok(stats)
    }
}

/// The `file_closed` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileClosed {
    pub channel: String,
    /// The closed file (`.avro`).
    pub path: PathBuf,
    pub records: u64,
    pub bytes: u64,
}

/// The `stopped` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    pub channel: String,
}

impl StatusLine {
    /// The line as written: one JSON object, no newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("status lines serialize")
    }

    /// Reads one line; `None` for anything that is not a status line.
    pub fn parse(line: &str) -> Option<StatusLine> {
        serde_json::from_str(line).ok()
    }

    /// Writes the line on stdout. A supervisor that went away (closed pipe)
    /// is not the relay's problem: errors are ignored.
    pub fn emit(&self) {
        let mut line = self.to_json();
        line.push('\n');
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let _ = lock.write_all(line.as_bytes());
        let _ = lock.flush();
    }
}

/// How a counter behaves, for Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows while the relay runs.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One counter of the stats line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterInfo {
    /// The key on the stats line and in the API.
    pub key: &'static str,
    pub kind: Kind,
    /// The Prometheus series, after `speeddata_channel_`.
    pub metric: &'static str,
    pub help: &'static str,
    /// The column of `speeddata-orchestrator status` it adds to, if any.
    pub column: Option<&'static str>,
}

impl CounterInfo {
    /// What one unit of the stats line is in the metric's unit: a key
    /// counted in milliseconds (`_ms`) or microseconds (`_us`) is exported
    /// in seconds, Prometheus's base unit; any other as it is (1).
    pub fn metric_scale(&self) -> f64 {
        if self.key.ends_with("_ms") {
            1e-3
        } else if self.key.ends_with("_us") {
            1e-6
        } else {
            1.0
        }
    }
}

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $(@$schema:ident)? $key:ident: $kind:ident, $metric:literal, $column:expr $(, $rate:tt)?;)*) => {
        /// Every counter of one channel, in the order of [`COUNTERS`].
        #[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub struct Counters {
            $($(#[doc = $doc])* $(#[cfg_attr(feature = "openapi", schema($schema))])? pub $key: u64,)*
        }

        /// Per-second rates of the counters that only grow (not the
        /// gauges), between two stats lines: `<counter>_per_s`.
        #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub struct Rates {
            $($(#[doc = concat!("`", stringify!($key), "` a second.")] #[serde(rename = $rate)] pub $key: f64,)?)*
        }

        impl Rates {
            /// From `old` to `new` over `secs` seconds, to 0.1 a second.
            pub fn between(new: &Counters, old: &Counters, secs: f64) -> Rates {
                Rates {
                    $($($key: {
                        let _: &str = $rate;
                        per_second(new.$key, old.$key, secs)
                    },)?)*
                }
            }

            /// Each rate's key and value.
            pub fn values(&self) -> impl Iterator<Item = (&'static str, f64)> {
                [$($(($rate, self.$key),)?)*].into_iter()
            }
        }

        /// The counters of the stats line, described once.
        pub const COUNTERS: &[CounterInfo] = &[
            $(CounterInfo {
                key: stringify!($key),
                kind: Kind::$kind,
                metric: $metric,
                help: concat!($($doc),*),
                column: $column,
            },)*
        ];

        impl Counters {
            /// Each counter's value, in the order of [`COUNTERS`].
            pub fn values(&self) -> impl Iterator<Item = (&'static CounterInfo, u64)> {
                COUNTERS.iter().zip([$(self.$key),*])
            }
        }
    };
}

counters! {
    /// Datagrams read from the receive socket.
    received: Counter, "received_datagrams_total", None, "received_per_s";
    /// Bytes of the datagrams read from the receive socket.
    bytes_received: Counter, "received_bytes_total", None, "bytes_received_per_s";
    /// Records written to an archive file (a whole block written).
    archived: Counter, "archived_records_total", Some("ARCHIVED"), "archived_per_s";
    /// Datagrams rejected (not exactly one datum of the schema, a sender not
    /// allowed, a wrong header, too long): never archived nor re-emitted.
    rejected: Counter, "rejected_datagrams_total", Some("REJECTED"), "rejected_per_s";
    /// Valid datagrams the archive could not take (queue full, disk trouble).
    archive_dropped: Counter, "archive_dropped_datagrams_total", Some("DROPPED"), "archive_dropped_per_s";
    /// Valid datagrams on their way to disk: queued or in the open block.
    in_flight: Gauge, "in_flight_records", None;
    /// Datagrams sent on the full-rate output.
    forwarded_full: Counter, "forwarded_full_datagrams_total", None, "forwarded_full_per_s";
    /// Datagrams sent on the decimated output.
    forwarded_decimated: Counter, "forwarded_decimated_datagrams_total", None, "forwarded_decimated_per_s";
    /// Datagrams the kernel refused to send on the full-rate output.
    send_errors_full: Counter, "send_errors_full_datagrams_total", None, "send_errors_full_per_s";
    /// Datagrams the kernel refused to send on the decimated output.
    send_errors_decimated: Counter, "send_errors_decimated_datagrams_total", None, "send_errors_decimated_per_s";
    /// Archive files closed (renamed from `.avro.part` to `.avro`).
    files_closed: Counter, "archive_files_closed_total", None, "files_closed_per_s";
    /// Archive open, write, close or rename failures.
    archive_errors: Counter, "archive_errors_total", None, "archive_errors_per_s";
    /// Bytes of the channel's closed archive files that a hold covering the
    /// channel overlaps: kept past retention while the hold stands (0
    /// without a holds folder). As of the last retention pass (every second).
    held_bytes: Gauge, "archive_held_bytes", None;
    /// Rejected datagrams written to the quarantine file.
    quarantined: Counter, "quarantined_datagrams_total", None, "quarantined_per_s";
    /// Rejected datagrams not written to quarantine (queue full, cap, error).
    quarantine_dropped: Counter, "quarantine_dropped_datagrams_total", None, "quarantine_dropped_per_s";
    /// Receive-socket errors other than timeouts.
    receive_errors: Counter, "receive_errors_total", None, "receive_errors_per_s";
    /// Time the archive compressed below `archive.level` (or stored blocks)
    /// to keep up with the input: milliseconds on the stats line, seconds
    /// in /metrics.
    archive_degraded_ms: Counter, "archive_degraded_seconds_total", None, "archive_degraded_ms_per_s";
    /// The receive thread's longest gap between a receive call that left
    /// datagrams in the socket (it filled its batch) and the next call,
    /// since the previous stats line: how long the socket went unread while
    /// it held data (processing a batch, or waiting for a core). Set back
    /// to 0 by each line. Microseconds on the stats line, seconds in
    /// /metrics.
    receive_gap_max_us: Gauge, "receive_gap_max_seconds", None;
    /// Datagrams the kernel dropped on the receive socket (SO_RXQ_OVFL):
    /// they never reached the relay, so they are not part of `received`.
    /// `null` where the kernel does not count them (the portable I/O path).
    @nullable kernel_drops: Counter, "kernel_dropped_datagrams_total", Some("DROPPED"), "kernel_drops_per_s";
}

fn per_second(new: u64, old: u64, secs: f64) -> f64 {
    let r = new.saturating_sub(old) as f64 / secs;
    (r * 10.0).round() / 10.0
}

impl Counters {
    /// Whether the accounting identity holds:
    /// `received = archived + rejected + archive_dropped + in_flight`.
    pub fn balanced(&self) -> bool {
        self.received == self.archived + self.rejected + self.archive_dropped + self.in_flight
    }
}

/// Every label a rejection can carry in `rejected_by_reason`: the receive
/// path's own checks, then the validator's reasons.
pub fn reject_reasons() -> impl Iterator<Item = &'static str> {
    crate::reject::labels()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn stats() -> Stats {
        let mut s = Stats {
            channel: "ch".into(),
            archive_healthy: true,
            joined: true,
            ..Stats::default()
        };
        s.counters.received = 5;
        s.counters.archived = 2;
        s.counters.rejected = 2;
        s.counters.in_flight = 1;
        s.rejected_by_reason.insert("truncated".into(), 2);
        s
    }

    #[test]
    fn every_growing_counter_and_no_gauge_has_a_rate_named_after_it() {
        let rates = Rates::default();
        let keys: Vec<&str> = rates.values().map(|(k, _)| k).collect();
        let want: Vec<String> = COUNTERS
            .iter()
            .filter(|c| c.kind == Kind::Counter)
            .map(|c| format!("{}_per_s", c.key))
            .collect();
        assert_eq!(keys, want);
        let old = Counters {
            received: 10,
            ..Counters::default()
        };
        let mut new = old.clone();
        new.received = 35;
        new.in_flight = 1_000;
        let r = Rates::between(&new, &old, 2.0);
        assert_eq!(r.received, 12.5);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["received_per_s"], 12.5);
        assert!(json.get("in_flight_per_s").is_none());
    }

    #[test]
    fn every_line_round_trips_and_carries_its_event_first() {
        let lines = [
            StatusLine::Ready(Ready {
                channel: "ch".into(),
                pid: 7,
                bind: "127.0.0.1:9000".into(),
                group: None,
                recv_buffer_granted: 1 << 20,
                archive_dir: "/var/lib/speeddata/archive/ch".into(),
                full: Some("239.1.1.1:9001".into()),
                decimated: None,
                gso: true,
                io: IoPath::Portable,
            }),
            StatusLine::Stats(stats()),
            StatusLine::Stats(Stats {
                kernel_drops_absent: true,
                ..stats()
            }),
            StatusLine::FileClosed(FileClosed {
                channel: "ch".into(),
                path: "/a/b.avro".into(),
                records: 3,
                bytes: 400,
            }),
            StatusLine::Stopped(Stopped {
                channel: "ch".into(),
            }),
        ];
        for (line, event) in lines
            .iter()
            .zip(["ready", "stats", "stats", "file_closed", "stopped"])
        {
            let text = line.to_json();
            assert!(
                text.starts_with(&format!("{{\"event\":\"{event}\"")),
                "{text}"
            );
            assert!(!text.contains('\n'));
            assert_eq!(StatusLine::parse(&text).as_ref(), Some(line), "{text}");
        }
    }

    #[test]
    fn a_ready_line_without_gso_reads_as_false() {
        let line = r#"{"event":"ready","channel":"ch","pid":7,"bind":"127.0.0.1:9000","group":null,"recv_buffer_granted":1,"archive_dir":"/a","full":null,"decimated":null}"#;
        match StatusLine::parse(line) {
            Some(StatusLine::Ready(r)) => assert!(!r.gso),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_stats_line_has_exactly_the_table_s_counters_at_top_level() {
        let v: Value = serde_json::from_str(&StatusLine::Stats(stats()).to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec!["event", "channel"];
        expected.extend(COUNTERS.iter().map(|c| c.key));
        expected.extend([
            "rejected_by_reason",
            "archive_healthy",
            "joined",
            "archive_level",
            "archive_stored",
            "final",
        ]);
        assert_eq!(keys, expected);
        assert_eq!(v["received"], 5);
        assert_eq!(v["rejected_by_reason"]["truncated"], 2);
        assert_eq!(v["final"], false);
        for (info, value) in stats().counters.values() {
            assert_eq!(v[info.key], value, "{}", info.key);
        }
    }

    #[test]
    fn absent_kernel_drops_are_null_not_0() {
        let absent = Stats {
            kernel_drops_absent: true,
            ..stats()
        };
        let v: Value = serde_json::from_str(&StatusLine::Stats(absent).to_json()).unwrap();
        assert_eq!(v["kernel_drops"], Value::Null);
        assert_eq!(v["received"], 5);
        let v: Value = serde_json::from_str(&StatusLine::Stats(stats()).to_json()).unwrap();
        assert_eq!(v["kernel_drops"], 0);
        let ready = r#"{"event":"ready","channel":"c","pid":1,"bind":"127.0.0.1:1","group":null,
            "recv_buffer_granted":1,"archive_dir":"/a","full":null,"decimated":null}"#;
        let Some(StatusLine::Ready(r)) = StatusLine::parse(&ready.replace('\n', "")) else {
            panic!("an older relay's ready line")
        };
        assert_eq!((r.io, r.gso), (IoPath::Mmsg, false));
    }

    #[test]
    fn a_line_missing_a_counter_is_not_a_stats_line() {
        let mut v: Value = serde_json::from_str(&StatusLine::Stats(stats()).to_json()).unwrap();
        v.as_object_mut().unwrap().remove("kernel_drops");
        assert_eq!(StatusLine::parse(&v.to_string()), None);
        assert_eq!(StatusLine::parse("not json"), None);
        assert_eq!(StatusLine::parse(r#"{"event":"launched"}"#), None);
    }

    #[test]
    fn counter_names_are_unique_and_metrics_well_formed() {
        let mut keys: Vec<_> = COUNTERS.iter().map(|c| c.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), COUNTERS.len());
        for c in COUNTERS {
            assert!(!c.help.is_empty(), "{}", c.key);
            assert!(
                c.metric
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{}",
                c.metric
            );
            assert_eq!(
                c.kind == Kind::Counter,
                c.metric.ends_with("_total"),
                "{}",
                c.key
            );
            // Prometheus's base units: time in seconds, never ms or µs.
            for unit in ["milliseconds", "microseconds", "_ms", "_us"] {
                assert!(!c.metric.contains(unit), "{}: {unit}", c.metric);
            }
            assert_eq!(
                c.metric_scale() != 1.0,
                c.metric.contains("_seconds"),
                "{}: a key in ms or µs is exported in seconds",
                c.key
            );
        }
    }

    #[test]
    fn balanced_is_the_accounting_identity() {
        let mut c = stats().counters;
        assert!(c.balanced());
        c.archive_dropped += 1;
        assert!(!c.balanced());
    }

    #[test]
    fn reject_reasons_are_unique_labels() {
        let mut all: Vec<_> = reject_reasons().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(all.contains(&"sender_not_allowed"));
        assert!(all.contains(&"trailing_bytes"));
    }
}
