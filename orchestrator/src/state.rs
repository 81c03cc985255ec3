//! What the orchestrator knows and shows: each channel's status, the
//! lifecycle event stream, and the Prometheus metrics.
//!
//! The supervisor writes here; the HTTP API, systemd `STATUS=` lines and
//! `/metrics` read from here. Nothing here starts or stops processes.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use relay_channel::config::ChannelSpec;
use relay_channel::status::{reject_reasons, Counters, Kind, Stats, COUNTERS};
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
    pub counters: Option<Stats>,
    /// Per-second rates of the counters between the last two stats lines;
    /// every rate reads 0 once the next line is overdue
    /// ([`REPORT_OVERDUE`]), so a relay that stopped reporting does not
    /// show its last rate as if it were still moving data.
    pub rates: Option<Map<String, Value>>,
    /// When the current child's latest stats line arrived (RFC 3339).
    pub last_report_at: Option<String>,
    /// The archive files this channel closed most recently, newest first
    /// (at most [`CLOSED_FILES`]; kept across the channel's restarts).
    pub archive_files: VecDeque<ClosedFile>,
    /// The decimated output's group and algorithm, from the channel's
    /// configuration; `None` without a `[decimated]` section.
    pub decimation: Option<Decimation>,
    #[serde(skip)]
    pub started: Option<Instant>,
    #[serde(skip)]
    last_stats_at: Option<Instant>,
}

/// An archive file a relay closed (its `file_closed` line).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClosedFile {
    pub path: PathBuf,
    pub records: u64,
    pub bytes: u64,
    /// When the orchestrator read the line (RFC 3339).
    pub closed_at: String,
}

/// What a channel's decimated output sends.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decimation {
    /// `ip:port` of the decimated group.
    pub group: String,
    /// `downsample`, `average`, `minmax` or `rms`.
    pub algorithm: &'static str,
    /// Records per window (`factor`), or
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<u32>,
    /// windows per second of arrival time (`rate_hz`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_hz: Option<f64>,
    /// Fields that take the window's last value.
    pub keep_last: Vec<String>,
}

impl Decimation {
    pub fn of(spec: &relay_channel::config::DecimatedSpec) -> Decimation {
        use relay_channel::config::DecimationWindow;
        let (factor, rate_hz) = match spec.window {
            DecimationWindow::Records(n) => (Some(n), None),
            DecimationWindow::PerSecond(r) => (None, Some(r)),
        };
        Decimation {
            group: spec.output.dest.to_string(),
            algorithm: spec.algorithm.as_str(),
            factor,
            rate_hz,
            keep_last: spec.keep_last.clone(),
        }
    }
}

/// How many closed archive files a channel's status lists.
pub const CLOSED_FILES: usize = 10;

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
            archive_files: VecDeque::new(),
            decimation: None,
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

    /// Notes a closed archive file, newest first.
    pub fn push_closed_file(&mut self, file: ClosedFile) {
        self.archive_files.truncate(CLOSED_FILES - 1);
        self.archive_files.push_front(file);
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

/// A health flag of a relay's `stats` line exported as a gauge (1 or 0):
/// (metric name, help, the flag).
type Flag = (&'static str, &'static str, fn(&Stats) -> bool);

const FLAGS: &[Flag] = &[
    (
        "archive_healthy",
        "1 while the archive writes, 0 during disk trouble",
        |s| s.archive_healthy,
    ),
    (
        "multicast_joined",
        "1 once the multicast group is joined (or none is configured)",
        |s| s.joined,
    ),
    (
        "archive_stored",
        "1 while the archive stores blocks uncompressed to keep up (adaptive zstd)",
        |s| s.archive_stored,
    ),
];

/// A series for each counter of [`COUNTERS`], in its order.
enum Series {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
}

const NAMESPACE: &str = "speeddata";

/// The Prometheus registry and its series.
pub struct Metrics {
    pub registry: Registry,
    counters: Vec<Series>,
    flags: Vec<IntGaugeVec>,
    /// The zstd level the archive compresses at (adaptive).
    archive_level: IntGaugeVec,
    /// Rejections by channel and reason.
    rejected_by_reason: IntCounterVec,
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
        let counters: Vec<Series> = COUNTERS
            .iter()
            .map(|c| {
                let o = opts(c.metric, c.help.trim());
                match c.kind {
                    Kind::Counter => {
                        Series::Counter(IntCounterVec::new(o, &["channel"]).expect("metric"))
                    }
                    Kind::Gauge => {
                        Series::Gauge(IntGaugeVec::new(o, &["channel"]).expect("metric"))
                    }
                }
            })
            .collect();
        let flags: Vec<IntGaugeVec> = FLAGS
            .iter()
            .map(|(name, help, _)| {
                IntGaugeVec::new(opts(name, help), &["channel"]).expect("metric")
            })
            .collect();
        let archive_level = IntGaugeVec::new(
            opts(
                "archive_zstd_level",
                "The zstd level the archive compresses at now (below archive.level while it keeps up with load; absent with other codecs and while blocks are stored)",
            ),
            &["channel"],
        )
        .expect("metric");
        let rejected_by_reason = IntCounterVec::new(
            opts(
                "rejected_by_reason_total",
                "Datagrams rejected, by reason (the labels of rejected_by_reason)",
            ),
            &["channel", "reason"],
        )
        .expect("metric");
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
            match c {
                Series::Counter(c) => registry.register(Box::new(c.clone())),
                Series::Gauge(g) => registry.register(Box::new(g.clone())),
            }
            .expect("register");
        }
        for g in &flags {
            registry.register(Box::new(g.clone())).expect("register");
        }
        registry
            .register(Box::new(archive_level.clone()))
            .expect("register");
        registry
            .register(Box::new(rejected_by_reason.clone()))
            .expect("register");
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
            flags,
            archive_level,
            rejected_by_reason,
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
            let _ = match c {
                Series::Counter(c) => c.remove_label_values(&[channel]),
                Series::Gauge(g) => g.remove_label_values(&[channel]),
            };
        }
        for g in &self.flags {
            let _ = g.remove_label_values(&[channel]);
        }
        let _ = self.archive_level.remove_label_values(&[channel]);
        for reason in reject_reasons() {
            let _ = self
                .rejected_by_reason
                .remove_label_values(&[channel, reason]);
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
    /// Each channel's configuration as last validated (for the live view).
    specs: Mutex<BTreeMap<String, Arc<ChannelSpec>>>,
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
            specs: Mutex::new(BTreeMap::new()),
            metrics: Metrics::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ChannelStatus>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many channels the fleet holds (running, starting or broken).
    pub fn channel_count(&self) -> usize {
        self.lock().len()
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
        let st = map.entry(name.to_string()).or_insert_with(|| {
            let mut st = ChannelStatus::new(name, file.to_path_buf());
            st.decimation = self
                .spec(name)
                .and_then(|s| s.decimated.as_ref().map(Decimation::of));
            st
        });
        let r = f(st);
        self.metrics.set_state(name, st.state);
        self.metrics
            .config_error
            .with_label_values(&[name])
            .set(i64::from(st.config_error.is_some()));
        r
    }

    /// Notes a channel's configuration, as validated for its next start.
    pub fn set_spec(&self, spec: ChannelSpec) {
        if let Some(st) = self.lock().get_mut(&spec.name) {
            st.decimation = spec.decimated.as_ref().map(Decimation::of);
        }
        self.specs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.name.clone(), Arc::new(spec));
    }

    /// A channel's configuration, as last validated.
    pub fn spec(&self, name: &str) -> Option<Arc<ChannelSpec>> {
        self.specs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Forgets a channel whose file was removed.
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
        self.specs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.metrics.forget(name);
    }

    /// Records a child's `stats` line: counters, rates, metrics.
    pub fn record_stats(&self, name: &str, stats: Stats) {
        let mut map = self.lock();
        let Some(st) = map.get_mut(name) else { return };
        let now = Instant::now();
        let previous = st.counters.take();
        let zero = Counters::default();
        let old = previous.as_ref().map_or(&zero, |p| &p.counters);
        for ((info, new), (series, (_, old))) in stats
            .counters
            .values()
            .zip(self.metrics.counters.iter().zip(old.values()))
        {
            match series {
                // Prometheus counters keep counting across child restarts:
                // add what this child counted since its previous line (an
                // increase by 0 makes the series exist from the first line).
                Series::Counter(c) => {
                    c.with_label_values(&[name])
                        .inc_by(if new >= old { new - old } else { new })
                }
                Series::Gauge(g) => g
                    .with_label_values(&[name])
                    .set(i64::try_from(new).unwrap_or(i64::MAX)),
            }
            debug_assert_eq!(
                info.kind == Kind::Counter,
                matches!(series, Series::Counter(_))
            );
        }
        for (reason, new) in reject_reasons().map(|r| (r, stats.rejected_by_reason.get(r))) {
            let old = previous
                .as_ref()
                .and_then(|p| p.rejected_by_reason.get(reason))
                .copied()
                .unwrap_or(0);
            let new = new.copied().unwrap_or(0);
            self.metrics
                .rejected_by_reason
                .with_label_values(&[name, reason])
                .inc_by(if new >= old { new - old } else { new });
        }
        for ((_, _, flag), g) in FLAGS.iter().zip(&self.metrics.flags) {
            g.with_label_values(&[name]).set(i64::from(flag(&stats)));
        }
        match stats.archive_level {
            Some(l) => self
                .metrics
                .archive_level
                .with_label_values(&[name])
                .set(i64::from(l)),
            None => {
                let _ = self.metrics.archive_level.remove_label_values(&[name]);
            }
        }
        if let (Some(prev), Some(at)) = (&previous, st.last_stats_at) {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                let rates: Map<String, Value> = stats
                    .counters
                    .values()
                    .zip(prev.counters.values())
                    .filter(|((info, _), _)| info.kind == Kind::Counter)
                    .map(|((info, new), (_, old))| {
                        let r = new.saturating_sub(old) as f64 / secs;
                        (
                            format!("{}_per_s", info.key),
                            Value::from((r * 10.0).round() / 10.0),
                        )
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

    fn stats(received: u64) -> Stats {
        let mut s = Stats {
            channel: "a".into(),
            archive_healthy: true,
            ..Stats::default()
        };
        s.counters.received = received;
        s.counters.archived = received;
        s
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
    fn every_counter_reaches_prometheus_the_api_and_the_rates() {
        let f = Fleet::new();
        f.update("a", "a.toml".as_ref(), |s| s.state = State::Ready);
        let mut line = stats(10);
        line.rejected_by_reason.insert("truncated".into(), 3);
        f.record_stats("a", line.clone());
        f.update("a", "a.toml".as_ref(), |s| {
            s.last_stats_at = Some(Instant::now() - Duration::from_secs(1));
        });
        line.rejected_by_reason.insert("truncated".into(), 5);
        f.record_stats("a", line);
        let text = f.metrics.render();
        let api = serde_json::to_value(f.get("a").unwrap()).unwrap();
        for c in COUNTERS {
            let series = format!("speeddata_channel_{}{{channel=\"a\"}}", c.metric);
            assert!(text.contains(&series), "{series} missing:\n{text}");
            assert!(
                api["counters"][c.key].is_u64(),
                "{} missing from the API",
                c.key
            );
            let rate = &api["rates"][format!("{}_per_s", c.key)];
            assert_eq!(
                rate.is_f64(),
                c.kind == Kind::Counter,
                "{} rate: {rate}",
                c.key
            );
        }
        for reason in reject_reasons() {
            let expected = if reason == "truncated" { 5 } else { 0 };
            let series = format!(
                "speeddata_channel_rejected_by_reason_total{{channel=\"a\",reason=\"{reason}\"}} {expected}"
            );
            assert!(text.contains(&series), "{series} missing:\n{text}");
        }
        assert_eq!(api["counters"]["rejected_by_reason"]["truncated"], 5);
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
