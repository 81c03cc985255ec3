//! What the orchestrator knows and shows: each channel's status, the
//! lifecycle event stream, and the Prometheus metrics.
//!
//! The supervisor writes here; the HTTP API, systemd `STATUS=` lines and
//! `/metrics` read from here. Nothing here starts or stops processes.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{CounterVec, GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use relay_channel::config::ChannelSpec;
use relay_channel::status::{reject_reasons, Counters, Kind, Rates, Stats, COUNTERS};
use tokio::sync::broadcast;

pub use speeddata_api::{
    ArchiveFile, ChannelSettings, ChannelStatus, Decimation, Event, EventKind, Exit,
    RegistrationStatus, State,
};

/// One channel as the orchestrator tracks it: the status the API shows,
/// and when its child started and last reported (for uptime and rates).
#[derive(Debug, Clone)]
pub struct Tracked {
    pub status: ChannelStatus,
    pub started: Option<Instant>,
    last_stats_at: Option<Instant>,
}

impl std::ops::Deref for Tracked {
    type Target = ChannelStatus;
    fn deref(&self) -> &ChannelStatus {
        &self.status
    }
}

impl std::ops::DerefMut for Tracked {
    fn deref_mut(&mut self) -> &mut ChannelStatus {
        &mut self.status
    }
}

/// What a channel's decimated output sends, from its configuration.
pub fn decimation_of(spec: &relay_channel::config::DecimatedSpec) -> Decimation {
    use relay_channel::config::DecimationWindow;
    let (factor, rate_hz) = match spec.window {
        DecimationWindow::Records(n) => (Some(n), None),
        DecimationWindow::PerSecond(r) => (None, Some(r)),
    };
    Decimation {
        group: spec.output.dest.to_string(),
        algorithm: spec.algorithm.as_str().to_string(),
        factor,
        rate_hz,
        keep_last: spec.keep_last.clone(),
    }
}

/// Notes in a channel's status what its configuration says: the
/// decimation, and SpeedData v0.5's `port`, `schema_path`, `config` and
/// `created_at` (the channel file's modification time).
fn describe(st: &mut ChannelStatus, spec: &ChannelSpec) {
    use relay_channel::config::DecimationWindow;
    st.decimation = spec.decimated.as_ref().map(decimation_of);
    st.port = Some(spec.receive.bind.port());
    st.schema_path = Some(spec.schema_path.clone());
    st.config = Some(ChannelSettings {
        decimation: spec.decimated.as_ref().and_then(|d| match d.window {
            DecimationWindow::Records(n) => Some(n),
            DecimationWindow::PerSecond(_) => None,
        }),
        rotation: Some(spec.archive.rotate_interval.as_secs()),
    });
    st.created_at = std::fs::metadata(&spec.file)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| humantime::format_rfc3339_seconds(t).to_string());
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

impl Tracked {
    pub fn new(name: &str, file: PathBuf) -> Tracked {
        Tracked {
            status: ChannelStatus::new(name, file),
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
    pub fn push_closed_file(&mut self, file: ArchiveFile) {
        self.archive_files.truncate(CLOSED_FILES - 1);
        self.archive_files.insert(0, file);
    }
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

/// A series for each counter of [`COUNTERS`], in its order: counts as
/// integers, times in seconds (the stats line's value times the scale).
enum Series {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    Seconds(CounterVec, f64),
    SecondsGauge(GaugeVec, f64),
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
    /// Relays killed as hung (silent for `liveness_timeout` once ready).
    pub hung_kills: IntCounterVec,
    /// Seconds since the running relay's last stats line (or its start).
    stats_age: GaugeVec,
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
                let scale = c.metric_scale();
                match c.kind {
                    Kind::Counter if scale != 1.0 => {
                        Series::Seconds(CounterVec::new(o, &["channel"]).expect("metric"), scale)
                    }
                    Kind::Gauge if scale != 1.0 => {
                        Series::SecondsGauge(GaugeVec::new(o, &["channel"]).expect("metric"), scale)
                    }
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
        let hung_kills = IntCounterVec::new(
            opts(
                "hung_kills_total",
                "Times the channel's relay was killed as hung: ready, then no stats line for supervisor.liveness_timeout",
            ),
            &["channel"],
        )
        .expect("metric");
        let stats_age = GaugeVec::new(
            opts(
                "stats_age_seconds",
                "Seconds since the channel's running relay wrote its last stats line (one a second when well), or since it started before its first; absent while no relay runs",
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
                Series::Seconds(c, _) => registry.register(Box::new(c.clone())),
                Series::SecondsGauge(g, _) => registry.register(Box::new(g.clone())),
            }
            .expect("register");
        }
        for g in &flags {
            registry.register(Box::new(g.clone())).expect("register");
        }
        let others: [Box<dyn prometheus::core::Collector>; 9] = [
            Box::new(archive_level.clone()),
            Box::new(rejected_by_reason.clone()),
            Box::new(restarts.clone()),
            Box::new(hung_kills.clone()),
            Box::new(stats_age.clone()),
            Box::new(state.clone()),
            Box::new(config_error.clone()),
            Box::new(config_errors.clone()),
            Box::new(reloads.clone()),
        ];
        for c in others {
            registry.register(c).expect("register");
        }
        Metrics {
            registry,
            counters,
            flags,
            archive_level,
            rejected_by_reason,
            restarts,
            hung_kills,
            stats_age,
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
                Series::Seconds(c, _) => c.remove_label_values(&[channel]),
                Series::SecondsGauge(g, _) => g.remove_label_values(&[channel]),
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
        let _ = self.hung_kills.remove_label_values(&[channel]);
        let _ = self.stats_age.remove_label_values(&[channel]);
        let _ = self.config_error.remove_label_values(&[channel]);
        for s in State::ALL {
            let _ = self.state.remove_label_values(&[channel, s.as_str()]);
        }
    }
}

/// The orchestrator's shared picture of the fleet.
pub struct Fleet {
    channels: Mutex<BTreeMap<String, Tracked>>,
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

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Tracked>> {
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

    /// When the channel's current child started.
    pub fn started(&self, name: &str) -> Option<Instant> {
        self.lock().get(name).and_then(|t| t.started)
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
        f: impl FnOnce(&mut Tracked) -> R,
    ) -> R {
        let mut map = self.lock();
        let st = map.entry(name.to_string()).or_insert_with(|| {
            let mut st = Tracked::new(name, file.to_path_buf());
            if let Some(spec) = self.spec(name) {
                describe(&mut st, &spec);
            }
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
            describe(st, &spec);
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
            if info.key == "kernel_drops" && stats.kernel_drops_absent {
                // No counter on this relay's platform: no series, rather
                // than a 0 nobody measured.
                continue;
            }
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
                Series::Seconds(c, scale) => c
                    .with_label_values(&[name])
                    .inc_by(if new >= old { new - old } else { new } as f64 * scale),
                Series::SecondsGauge(g, scale) => {
                    g.with_label_values(&[name]).set(new as f64 * scale)
                }
            }
            debug_assert_eq!(
                info.kind == Kind::Counter,
                matches!(series, Series::Counter(_) | Series::Seconds(..))
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
                st.rates = Some(Rates::between(&stats.counters, &prev.counters, secs));
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

    /// The text exposition of every series, with each running relay's
    /// `stats_age_seconds` as of now.
    pub fn render_metrics(&self) -> String {
        for (name, t) in self.lock().iter() {
            let since = t.pid.and(t.last_stats_at.or(t.started));
            match since {
                Some(at) => self
                    .metrics
                    .stats_age
                    .with_label_values(&[name])
                    .set((at.elapsed().as_secs_f64() * 1000.0).round() / 1000.0),
                None => {
                    let _ = self.metrics.stats_age.remove_label_values(&[name]);
                }
            }
        }
        self.metrics.render()
    }

    /// Publishes a lifecycle event.
    pub fn emit(&self, channel: Option<&str>, kind: EventKind) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let seq = history.back().map_or(1, |e| e.seq + 1);
        let e = Event {
            seq,
            time: now_rfc3339(),
            channel: channel.map(String::from),
            kind,
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
fn with_uptime(t: &Tracked) -> ChannelStatus {
    let mut c = t.status.clone();
    c.status = RegistrationStatus::of(c.state);
    c.uptime_s = t
        .started
        .filter(|_| c.pid.is_some())
        .map(|s| (s.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    if t.last_stats_at
        .is_some_and(|t| t.elapsed() >= REPORT_OVERDUE)
    {
        if let Some(rates) = &mut c.rates {
            *rates = Rates::default();
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
        f.emit(
            Some("a"),
            EventKind::Started {
                pid: 7,
                file: "a.toml".into(),
            },
        );
        f.emit(Some("a"), EventKind::Ready { pid: 7 });
        let (past, _rx) = f.subscribe(1);
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].seq, 2);
        assert_eq!(past[0].kind.name(), "ready");
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
        let rate = live.rates.as_ref().unwrap().received;
        assert!(rate > 400.0, "{:?}", live.rates);
        assert!(live.last_report_at.is_some());
        // No line since: once overdue, the rates read 0, not the last value.
        f.update("a", "a.toml".as_ref(), |s| {
            s.last_stats_at = Some(Instant::now() - REPORT_OVERDUE);
        });
        let silent = f.get("a").unwrap();
        let rates = silent.rates.unwrap();
        assert!(rates.values().all(|(_, v)| v == 0.0), "{rates:?}");
        assert_eq!(silent.last_report_at, live.last_report_at);
    }

    #[test]
    fn times_are_exported_in_seconds() {
        let f = Fleet::new();
        f.update("a", "a.toml".as_ref(), |s| s.state = State::Ready);
        let mut line = stats(10);
        line.counters.archive_degraded_ms = 1_500;
        line.counters.receive_gap_max_us = 250_000;
        f.record_stats("a", line.clone());
        line.counters.archive_degraded_ms = 2_000;
        f.record_stats("a", line);
        let text = f.metrics.render();
        for series in [
            "speeddata_channel_archive_degraded_seconds_total{channel=\"a\"} 2\n",
            "speeddata_channel_receive_gap_max_seconds{channel=\"a\"} 0.25\n",
        ] {
            assert!(text.contains(series), "no {series} in:\n{text}");
        }
    }

    #[test]
    fn stats_age_runs_from_the_last_line_while_a_relay_runs() {
        let f = Fleet::new();
        let age = |f: &Fleet| -> Option<f64> {
            f.render_metrics().lines().find_map(|l| {
                l.strip_prefix("speeddata_channel_stats_age_seconds{channel=\"a\"} ")
                    .map(|v| v.parse().unwrap())
            })
        };
        f.update("a", "a.toml".as_ref(), |s| s.state = State::Failed);
        assert_eq!(age(&f), None, "no relay runs: no age");
        // Started 20 s ago, no line yet: the age counts from the start.
        f.update("a", "a.toml".as_ref(), |s| {
            s.state = State::Ready;
            s.pid = Some(7);
            s.started = Some(Instant::now() - Duration::from_secs(20));
        });
        assert!(
            age(&f).is_some_and(|a| (20.0..25.0).contains(&a)),
            "{:?}",
            age(&f)
        );
        // A line 12 s ago: 12 s.
        f.record_stats("a", stats(1));
        f.update("a", "a.toml".as_ref(), |s| {
            s.last_stats_at = Some(Instant::now() - Duration::from_secs(12));
        });
        assert!(
            age(&f).is_some_and(|a| (12.0..17.0).contains(&a)),
            "{:?}",
            age(&f)
        );
        // The relay ended: the series goes.
        f.update("a", "a.toml".as_ref(), |s| s.pid = None);
        f.clear_stats("a");
        assert_eq!(age(&f), None);
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
