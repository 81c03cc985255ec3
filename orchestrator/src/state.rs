//! What the orchestrator knows and shows: each channel's status, the
//! lifecycle event stream, and the Prometheus metrics.
//!
//! The supervisor writes here; the HTTP API, systemd `STATUS=` lines and
//! `/metrics` read from here. Nothing here starts or stops processes.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

/// A channel's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A child was started and has not said `ready` yet.
    Starting,
    /// The child said `ready`.
    Ready,
    /// The child failed; it is started again after a delay.
    Backoff,
    /// Parked: too many failures (tried again after the cool-down), or a
    /// configuration error (tried again when its file changes).
    Failed,
    /// Not running, on purpose.
    Stopped,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Starting,
        State::Ready,
        State::Backoff,
        State::Failed,
        State::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Backoff => "backoff",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }
}

/// How a child process ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal ended it.
    pub signal: Option<i32>,
    /// When (RFC 3339).
    pub at: String,
    /// In words: "exited with 1", "killed by SIGKILL", "not ready within 10s".
    pub description: String,
}

/// Everything shown about one channel.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStatus {
    pub name: String,
    /// The channel file.
    pub file: PathBuf,
    pub state: State,
    /// The running child's process id.
    pub pid: Option<u32>,
    /// Seconds the current child has been running.
    pub uptime_s: Option<f64>,
    /// Times a child of this channel was started again (after a failure,
    /// a change of its file, or a restart asked through the API).
    pub restarts: u64,
    pub last_exit: Option<Exit>,
    /// Why the channel is `failed` or in `backoff`.
    pub reason: Option<String>,
    /// The last lines the child wrote on stderr.
    pub last_stderr: Vec<String>,
    /// Set while the channel's file does not validate; a running instance
    /// keeps running meanwhile.
    pub config_error: Option<String>,
    /// The child's latest `stats` line (counters since the child started).
    pub counters: Option<Map<String, Value>>,
    /// Per-second rates of the counters between the last two stats lines;
    /// every rate reads 0 once the next line is overdue
    /// ([`REPORT_OVERDUE`]), so a relay that stopped reporting does not
    /// show its last rate as if it were still moving data.
    pub rates: Option<Map<String, Value>>,
    /// When the current child's latest stats line arrived (RFC 3339).
    pub last_report_at: Option<String>,
    #[serde(skip)]
    pub started: Option<Instant>,
    #[serde(skip)]
    last_stats_at: Option<Instant>,
}

/// A relay writes a stats line every second; one that has written none
/// for this long is overdue, and its rates read 0.
pub const REPORT_OVERDUE: Duration = Duration::from_millis(2500);

/// How many stderr lines a status keeps.
pub const STDERR_LINES: usize = 20;
/// How many past events `/api/v1/events` can replay.
const EVENT_HISTORY: usize = 1024;

impl ChannelStatus {
    pub fn new(name: &str, file: PathBuf) -> ChannelStatus {
        ChannelStatus {
            name: name.into(),
            file,
            state: State::Stopped,
            pid: None,
            uptime_s: None,
            restarts: 0,
            last_exit: None,
            reason: None,
            last_stderr: Vec::new(),
            config_error: None,
            counters: None,
            rates: None,
            last_report_at: None,
            started: None,
            last_stats_at: None,
        }
    }

    pub fn push_stderr(&mut self, line: String) {
        if self.last_stderr.len() == STDERR_LINES {
            self.last_stderr.remove(0);
        }
        self.last_stderr.push(line);
    }
}

/// One lifecycle event: `started`, `ready`, `hung`, `exited`, `restarting`,
/// `failed`, `stopped`, `reloaded`, `config_error`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increases by one per event, from 1.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    pub event: &'static str,
    /// The channel, for channel events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Event-specific fields (pid, exit, delay, reason, ...).
    #[serde(flatten)]
    pub detail: Map<String, Value>,
}

/// Counters of a relay's `stats` line exported as Prometheus counters:
/// (stats key, metric name, help).
const COUNTERS: &[(&str, &str, &str)] = &[
    (
        "received",
        "received_datagrams_total",
        "Datagrams read from the receive socket",
    ),
    (
        "bytes_received",
        "received_bytes_total",
        "Bytes of datagrams read from the receive socket",
    ),
    (
        "archived",
        "archived_records_total",
        "Records written to archive files",
    ),
    (
        "rejected",
        "rejected_datagrams_total",
        "Datagrams rejected (invalid, sender not allowed, wrong header, oversized)",
    ),
    (
        "archive_dropped",
        "archive_dropped_datagrams_total",
        "Valid datagrams the archive could not take",
    ),
    (
        "forwarded_full",
        "forwarded_full_datagrams_total",
        "Datagrams sent on the full-rate output",
    ),
    (
        "forwarded_decimated",
        "forwarded_decimated_datagrams_total",
        "Datagrams sent on the decimated output",
    ),
    (
        "send_errors_full",
        "send_errors_full_datagrams_total",
        "Datagrams the kernel refused on the full-rate output",
    ),
    (
        "send_errors_decimated",
        "send_errors_decimated_datagrams_total",
        "Datagrams the kernel refused on the decimated output",
    ),
    (
        "files_closed",
        "archive_files_closed_total",
        "Archive files closed",
    ),
    (
        "archive_errors",
        "archive_errors_total",
        "Archive open, write or rename failures",
    ),
    (
        "quarantined",
        "quarantined_datagrams_total",
        "Rejected datagrams kept in quarantine",
    ),
    (
        "quarantine_dropped",
        "quarantine_dropped_datagrams_total",
        "Rejected datagrams not kept in quarantine",
    ),
    (
        "receive_errors",
        "receive_errors_total",
        "Receive socket errors",
    ),
    (
        "kernel_drops",
        "kernel_dropped_datagrams_total",
        "Datagrams the kernel dropped on the receive socket (SO_RXQ_OVFL)",
    ),
];

/// Relay values exported as gauges: (stats key, metric name, help).
const GAUGES: &[(&str, &str, &str)] = &[
    (
        "in_flight",
        "in_flight_records",
        "Valid datagrams queued for the archive or in its open block",
    ),
    (
        "archive_healthy",
        "archive_healthy",
        "1 while the archive writes, 0 during disk trouble",
    ),
    (
        "joined",
        "multicast_joined",
        "1 once the multicast group is joined (or none is configured)",
    ),
];

const NAMESPACE: &str = "speeddata";

/// The Prometheus registry and its series.
pub struct Metrics {
    pub registry: Registry,
    counters: Vec<IntCounterVec>,
    gauges: Vec<IntGaugeVec>,
    pub restarts: IntCounterVec,
    pub state: IntGaugeVec,
    pub config_error: IntGaugeVec,
    pub config_errors: IntCounter,
    pub reloads: IntCounter,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| {
            Opts::new(format!("channel_{name}"), help).namespace(NAMESPACE)
        };
        let counters: Vec<IntCounterVec> = COUNTERS
            .iter()
            .map(|(_, name, help)| {
                IntCounterVec::new(opts(name, help), &["channel"]).expect("metric")
            })
            .collect();
        let gauges: Vec<IntGaugeVec> = GAUGES
            .iter()
            .map(|(_, name, help)| {
                IntGaugeVec::new(opts(name, help), &["channel"]).expect("metric")
            })
            .collect();
        let restarts = IntCounterVec::new(
            opts(
                "restarts_total",
                "Times a channel's relay was started again",
            ),
            &["channel"],
        )
        .expect("metric");
        let state = IntGaugeVec::new(
            opts(
                "state",
                "1 for the channel's current state, 0 for the others",
            ),
            &["channel", "state"],
        )
        .expect("metric");
        let config_error = IntGaugeVec::new(
            opts(
                "config_error",
                "1 while the channel's file does not validate",
            ),
            &["channel"],
        )
        .expect("metric");
        let config_errors = IntCounter::with_opts(
            Opts::new(
                "config_errors_total",
                "Channel files found invalid at a load or reload",
            )
            .namespace(NAMESPACE),
        )
        .expect("metric");
        let reloads = IntCounter::with_opts(
            Opts::new(
                "reloads_total",
                "Reloads of channels.d (SIGHUP or a file change)",
            )
            .namespace(NAMESPACE),
        )
        .expect("metric");
        for c in &counters {
            registry.register(Box::new(c.clone())).expect("register");
        }
        for g in &gauges {
            registry.register(Box::new(g.clone())).expect("register");
        }
        registry
            .register(Box::new(restarts.clone()))
            .expect("register");
        registry
            .register(Box::new(state.clone()))
            .expect("register");
        registry
            .register(Box::new(config_error.clone()))
            .expect("register");
        registry
            .register(Box::new(config_errors.clone()))
            .expect("register");
        registry
            .register(Box::new(reloads.clone()))
            .expect("register");
        Metrics {
            registry,
            counters,
            gauges,
            restarts,
            state,
            config_error,
            config_errors,
            reloads,
        }
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        buf
    }

    fn set_state(&self, channel: &str, state: State) {
        for s in State::ALL {
            self.state
                .with_label_values(&[channel, s.as_str()])
                .set(i64::from(s == state));
        }
    }

    fn forget(&self, channel: &str) {
        for c in &self.counters {
            let _ = c.remove_label_values(&[channel]);
        }
        for g in &self.gauges {
            let _ = g.remove_label_values(&[channel]);
        }
        let _ = self.restarts.remove_label_values(&[channel]);
        let _ = self.config_error.remove_label_values(&[channel]);
        for s in State::ALL {
            let _ = self.state.remove_label_values(&[channel, s.as_str()]);
        }
    }
}

/// The orchestrator's shared picture of the fleet.
pub struct Fleet {
    channels: Mutex<BTreeMap<String, ChannelStatus>>,
    history: Mutex<VecDeque<Event>>,
    events: broadcast::Sender<Event>,
    pub metrics: Metrics,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new()
    }
}

impl Fleet {
    pub fn new() -> Fleet {
        Fleet {
            channels: Mutex::new(BTreeMap::new()),
            history: Mutex::new(VecDeque::with_capacity(EVENT_HISTORY)),
            events: broadcast::channel(EVENT_HISTORY).0,
            metrics: Metrics::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ChannelStatus>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every channel's status, by name, with uptimes as of now.
    pub fn list(&self) -> Vec<ChannelStatus> {
        self.lock().values().map(with_uptime).collect()
    }

    pub fn get(&self, name: &str) -> Option<ChannelStatus> {
        self.lock().get(name).map(with_uptime)
    }

    /// Whether every channel is ready (a channel whose changed file does
    /// not validate but whose instance runs on counts as ready).
    pub fn all_ready(&self) -> bool {
        self.lock().values().all(|c| c.state == State::Ready)
    }

    /// Applies `f` to a channel's status, creating it if needed, and keeps
    /// the state metric in step.
    pub fn update<R>(
        &self,
        name: &str,
        file: &std::path::Path,
        f: impl FnOnce(&mut ChannelStatus) -> R,
    ) -> R {
        let mut map = self.lock();
        let st = map
            .entry(name.to_string())
            .or_insert_with(|| ChannelStatus::new(name, file.to_path_buf()));
        let r = f(st);
        self.metrics.set_state(name, st.state);
        self.metrics
            .config_error
            .with_label_values(&[name])
            .set(i64::from(st.config_error.is_some()));
        r
    }

    /// Forgets a channel whose file was removed.
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
        self.metrics.forget(name);
    }

    /// Records a child's `stats` line: counters, rates, metrics.
    pub fn record_stats(&self, name: &str, stats: Map<String, Value>) {
        let mut map = self.lock();
        let Some(st) = map.get_mut(name) else { return };
        let now = Instant::now();
        let previous = st.counters.take();
        // Prometheus counters keep counting across child restarts: add what
        // this child counted since its previous line.
        for (i, (key, _, _)) in COUNTERS.iter().enumerate() {
            let new = stats.get(*key).and_then(Value::as_u64).unwrap_or(0);
            let old = previous
                .as_ref()
                .and_then(|p| p.get(*key))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let delta = if new >= old { new - old } else { new };
            if delta > 0 {
                self.metrics.counters[i]
                    .with_label_values(&[name])
                    .inc_by(delta);
            } else {
                // Make the series exist from the first line on.
                self.metrics.counters[i]
                    .with_label_values(&[name])
                    .inc_by(0);
            }
        }
        for (i, (key, _, _)) in GAUGES.iter().enumerate() {
            let v = match stats.get(*key) {
                Some(Value::Bool(b)) => i64::from(*b),
                Some(v) => v.as_i64().unwrap_or(0),
                None => 0,
            };
            self.metrics.gauges[i].with_label_values(&[name]).set(v);
        }
        if let (Some(prev), Some(at)) = (&previous, st.last_stats_at) {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let rates: Map<String, Value> = COUNTERS
                    .iter()
                    .filter_map(|(key, _, _)| {
                        let new = stats.get(*key)?.as_u64()?;
                        let old = prev.get(*key)?.as_u64()?;
                        let r = new.saturating_sub(old) as f64 / secs;
                        Some((
                            format!("{key}_per_s"),
                            Value::from((r * 10.0).round() / 10.0),
                        ))
                    })
                    .collect();
                st.rates = Some(rates);
            }
        }
        st.counters = Some(stats);
        st.last_stats_at = Some(now);
        st.last_report_at = Some(now_rfc3339());
    }

    /// Forgets a child's counters (it ended); Prometheus totals stay.
    pub fn clear_stats(&self, name: &str) {
        if let Some(st) = self.lock().get_mut(name) {
            st.counters = None;
            st.rates = None;
            st.last_stats_at = None;
            st.last_report_at = None;
        }
    }

    /// Publishes a lifecycle event.
    pub fn emit(&self, event: &'static str, channel: Option<&str>, detail: Value) {
        let detail = match detail {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                let mut m = Map::new();
                m.insert("detail".into(), other);
                m
            }
        };
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let seq = history.back().map_or(1, |e| e.seq + 1);
        let e = Event {
            seq,
            time: now_rfc3339(),
            event,
            channel: channel.map(String::from),
            detail,
        };
        if history.len() == EVENT_HISTORY {
            history.pop_front();
        }
        history.push_back(e.clone());
        let _ = self.events.send(e);
    }

    /// Past events with `seq > after`, and a receiver of the ones to come,
    /// taken together so none falls between the two.
    pub fn subscribe(&self, after: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.events.subscribe();
        let past = history.iter().filter(|e| e.seq > after).cloned().collect();
        (past, rx)
    }

    /// One line for systemd's `STATUS=`: "3 channels: 2 ready, 1 failed".
    pub fn summary(&self) -> String {
        let map = self.lock();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for c in map.values() {
            *counts.entry(c.state.as_str()).or_default() += 1;
        }
        let parts: Vec<String> = State::ALL
            .iter()
            .filter_map(|s| {
                counts
                    .get(s.as_str())
                    .map(|n| format!("{n} {}", s.as_str()))
            })
            .collect();
        format!("{} channels: {}", map.len(), parts.join(", "))
    }
}

/// A status as shown now: the uptime as of now, and rates at 0 when the
/// child's report is overdue.
fn with_uptime(c: &ChannelStatus) -> ChannelStatus {
    let mut c = c.clone();
    c.uptime_s = c
        .started
        .filter(|_| c.pid.is_some())
        .map(|s| (s.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    if c.last_stats_at
        .is_some_and(|t| t.elapsed() >= REPORT_OVERDUE)
    {
        if let Some(rates) = &mut c.rates {
            for v in rates.values_mut() {
                *v = Value::from(0.0);
            }
        }
    }
    c
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stats(received: u64) -> Map<String, Value> {
        json!({"event": "stats", "received": received, "archived": received, "in_flight": 0, "archive_healthy": true})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn prometheus_totals_survive_a_child_restart() {
        let f = Fleet::new();
        f.update("a", "a.toml".as_ref(), |s| s.state = State::Ready);
        f.record_stats("a", stats(100));
        f.record_stats("a", stats(150));
        // A new child starts counting from zero.
        f.clear_stats("a");
        f.record_stats("a", stats(30));
        let text = f.metrics.render();
        assert!(
            text.contains("speeddata_channel_received_datagrams_total{channel=\"a\"} 180"),
            "{text}"
        );
        assert!(text.contains("speeddata_channel_state{channel=\"a\",state=\"ready\"} 1"));
        assert!(text.contains("speeddata_channel_archive_healthy{channel=\"a\"} 1"));
        f.remove("a");
        assert!(!f.metrics.render().contains("channel=\"a\""));
    }

    #[test]
    fn events_are_numbered_and_replayable() {
        let f = Fleet::new();
        f.emit("started", Some("a"), json!({"pid": 7}));
        f.emit("ready", Some("a"), Value::Null);
        let (past, _rx) = f.subscribe(1);
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].seq, 2);
        assert_eq!(past[0].event, "ready");
        let v = serde_json::to_value(&f.subscribe(0).0[0]).unwrap();
        assert_eq!(v["pid"], 7);
        assert_eq!(v["channel"], "a");
    }

    #[test]
    fn rates_read_zero_once_a_report_is_overdue() {
        let f = Fleet::new();
        f.update("a", "a.toml".as_ref(), |s| s.state = State::Ready);
        f.record_stats("a", stats(100));
        f.update("a", "a.toml".as_ref(), |s| {
            s.last_stats_at = Some(Instant::now() - Duration::from_secs(1));
        });
        f.record_stats("a", stats(600));
        let live = f.get("a").unwrap();
        let rate = live.rates.as_ref().unwrap()["received_per_s"].as_f64();
        assert!(rate.is_some_and(|r| r > 400.0), "{:?}", live.rates);
        assert!(live.last_report_at.is_some());
        // No line since: once overdue, the rates read 0, not the last value.
        f.update("a", "a.toml".as_ref(), |s| {
            s.last_stats_at = Some(Instant::now() - REPORT_OVERDUE);
        });
        let silent = f.get("a").unwrap();
        let rates = silent.rates.unwrap();
        assert!(rates.values().all(|v| v.as_f64() == Some(0.0)), "{rates:?}");
        assert_eq!(silent.last_report_at, live.last_report_at);
    }

    #[test]
    fn summary_counts_states() {
        let f = Fleet::new();
        f.update("a", "a.toml".as_ref(), |s| s.state = State::Ready);
        f.update("b", "b.toml".as_ref(), |s| s.state = State::Failed);
        f.update("c", "c.toml".as_ref(), |s| s.state = State::Ready);
        assert_eq!(f.summary(), "3 channels: 2 ready, 1 failed");
    }
}
