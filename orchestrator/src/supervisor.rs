//! The supervisor: one task per channel that owns its child process, and a
//! reconcile step that turns what `channels.d` holds into started, stopped
//! and restarted channels.
//!
//! Each channel task is independent: its waits, restarts and failures
//! happen in its own task, so one channel's trouble never delays another.
//! The tasks talk to the rest only through [`Fleet`] (status, events,
//! metrics) and their command queue.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use relay_channel::status::StatusLine;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::child::{self, Child, Output};
use crate::config::{self, Channel, Config, Policy};
use crate::fdlimit;
use crate::policy::{Decision, Tracker};
use crate::state::{now_rfc3339, Exit, Fleet, State};

/// A deadline that does not come.
const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);
/// How soon a spawn that ran out of descriptors is tried again.
const SPAWN_RETRY: Duration = Duration::from_secs(1);

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

/// Commands to one channel task.
#[derive(Debug)]
enum Cmd {
    /// Stop the child gracefully and end the task.
    Stop,
    /// Stop the child and start a new one now.
    Restart,
    /// The file changed: stop the child, start one with this.
    Reconfigure(Box<Channel>, String),
    /// The file changed and no longer validates: note it, keep running.
    ConfigError(String),
    /// The file validates again as it was.
    ConfigOk,
}

struct Task {
    tx: mpsc::UnboundedSender<Cmd>,
    join: JoinHandle<()>,
    file: PathBuf,
    fingerprint: u64,
    defaults: String,
}

/// All channel tasks, and the configuration they were started from.
pub struct Supervisor {
    cfg: Config,
    binary: PathBuf,
    fleet: Arc<Fleet>,
    tasks: BTreeMap<String, Task>,
    /// Channels whose file does not validate and that have no task.
    broken: BTreeMap<String, PathBuf>,
    /// Files whose configuration error was announced (log, event, counter),
    /// with a fingerprint of their text and the error: a reload that finds
    /// the same file with the same error says nothing new.
    announced: BTreeMap<PathBuf, u64>,
}

impl Supervisor {
    pub fn new(cfg: Config, binary: PathBuf, fleet: Arc<Fleet>) -> Supervisor {
        Supervisor {
            cfg,
            binary,
            fleet,
            tasks: BTreeMap::new(),
            broken: BTreeMap::new(),
            announced: BTreeMap::new(),
        }
    }

    /// Re-reads orchestrator.toml (keeping the old one if the new one is
    /// wrong) and then reconciles the channels.
    pub fn reload(&mut self, why: &str) {
        match Config::load(&self.cfg.file, Some(&self.cfg.channels_dir)) {
            Ok(new) => {
                if new.listen != self.cfg.listen
                    || new.max_connections != self.cfg.max_connections
                    || new.relay_binary != self.cfg.relay_binary
                {
                    tracing::warn!(
                        "http.listen, http.max_connections and relay_binary take effect at the next start of the orchestrator"
                    );
                }
                self.cfg.defaults = new.defaults;
                self.cfg.policy = new.policy;
            }
            Err(e) => {
                let file = self.cfg.file.clone();
                if self.first_announcement(&file, &e.to_string()) {
                    self.fleet.metrics.config_errors.inc();
                    tracing::error!("{e}\n(keeping the previous orchestrator configuration)");
                    self.fleet.emit(
                        "config_error",
                        None,
                        json!({"file": file, "error": e.to_string()}),
                    );
                }
                self.reconcile(why);
                return;
            }
        }
        self.announced.remove(&self.cfg.file);
        self.reconcile(why);
    }

    /// Makes the running fleet match `channels.d`.
    pub fn reconcile(&mut self, why: &str) {
        self.fleet.metrics.reloads.inc();
        let fleet = match config::load_fleet(&self.cfg) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(
                    dir = %self.cfg.channels_dir.display(), error = %e,
                    "cannot read the channels folder; channels left as they are"
                );
                self.fleet.emit(
                    "config_error",
                    None,
                    json!({"file": self.cfg.channels_dir, "error": e.to_string()}),
                );
                return;
            }
        };
        let defaults = self.cfg.defaults_text();
        let (mut started, mut restarted, mut stopped) = (0, 0, 0);
        let mut wanted: BTreeSet<String> = BTreeSet::new();

        for ch in fleet.channels {
            let name = ch.name().to_string();
            wanted.insert(name.clone());
            self.broken.remove(&name);
            match self.tasks.get_mut(&name) {
                None => {
                    self.start_task(ch, defaults.clone());
                    started += 1;
                }
                Some(t)
                    if t.fingerprint != ch.fingerprint
                        || t.defaults != defaults
                        || t.file != ch.file() =>
                {
                    tracing::info!(channel = %name, "configuration changed: restarting the channel");
                    t.fingerprint = ch.fingerprint;
                    t.file = ch.file().to_path_buf();
                    t.defaults = defaults.clone();
                    let _ = t.tx.send(Cmd::Reconfigure(Box::new(ch), defaults.clone()));
                    restarted += 1;
                }
                Some(t) => {
                    let _ = t.tx.send(Cmd::ConfigOk);
                }
            }
        }

        let mut still_broken = BTreeSet::new();
        for r in fleet.rejected {
            let text = r.error.to_string();
            still_broken.insert(r.error.file.clone());
            let new = self.first_announcement(&r.error.file, &text);
            if new {
                self.fleet.metrics.config_errors.inc();
                tracing::error!("{text}");
            }
            match self.tasks.get(&r.name) {
                // The running instance of this file is left alone.
                Some(t) if t.file == r.error.file => {
                    wanted.insert(r.name.clone());
                    let _ = t.tx.send(Cmd::ConfigError(text.clone()));
                }
                // Another file holds the name (a duplicate): report only.
                Some(_) => {}
                None => {
                    wanted.insert(r.name.clone());
                    self.broken.insert(r.name.clone(), r.error.file.clone());
                    self.fleet.update(&r.name, &r.error.file, |s| {
                        s.state = State::Failed;
                        s.reason = Some("configuration error".into());
                        s.config_error = Some(text.clone());
                    });
                }
            }
            if new {
                self.fleet.emit(
                    "config_error",
                    Some(&r.name),
                    json!({"file": r.error.file, "error": text}),
                );
            }
        }
        // A file that validates again (or is gone) is announced afresh if
        // it breaks later.
        let cfg_file = self.cfg.file.clone();
        self.announced
            .retain(|f, _| still_broken.contains(f) || *f == cfg_file);

        for name in unwanted(&self.tasks, &wanted) {
            if let Some(t) = self.tasks.remove(&name) {
                tracing::info!(channel = %name, "channel file removed: stopping the channel");
                let _ = t.tx.send(Cmd::Stop);
                let fleet = self.fleet.clone();
                tokio::spawn(async move {
                    let _ = t.join.await;
                    fleet.remove(&name);
                });
                stopped += 1;
            }
        }
        for name in unwanted(&self.broken, &wanted) {
            self.broken.remove(&name);
            self.fleet.remove(&name);
        }
        tracing::info!(
            reason = why,
            started,
            restarted,
            stopped,
            "channels reconciled"
        );
        self.fleet.emit(
            "reloaded",
            None,
            json!({"reason": why, "started": started, "restarted": restarted, "stopped": stopped}),
        );
    }

    /// Whether this error of this file, as the file reads now, is news
    /// (and remembers it): each change of a broken file is announced once.
    fn first_announcement(&mut self, file: &Path, error: &str) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::fs::read(file).unwrap_or_default().hash(&mut h);
        error.hash(&mut h);
        let print = h.finish();
        self.announced.insert(file.to_path_buf(), print) != Some(print)
    }

    fn start_task(&mut self, ch: Channel, defaults: String) {
        let (tx, rx) = mpsc::unbounded_channel();
        let name = ch.name().to_string();
        let file = ch.file().to_path_buf();
        let fingerprint = ch.fingerprint;
        // Listed (as starting) from now on, before the task first runs.
        self.fleet.update(&name, &file, |s| {
            s.state = State::Starting;
            s.config_error = None;
        });
        let task = ChannelTask {
            ch,
            defaults: defaults.clone(),
            policy: self.cfg.policy.clone(),
            binary: self.binary.clone(),
            fleet: self.fleet.clone(),
            rx,
            tracker: Tracker::default(),
            starts: 0,
        };
        let join = tokio::spawn(task.run());
        self.tasks.insert(
            name,
            Task {
                tx,
                join,
                file,
                fingerprint,
                defaults,
            },
        );
    }

    /// Handles a request from the HTTP API.
    pub fn handle(&mut self, req: Request) {
        match req {
            Request::Restart { name, reply } => {
                let r = match self.tasks.get(&name) {
                    Some(t) => {
                        let _ = t.tx.send(Cmd::Restart);
                        Ok(())
                    }
                    None if self.broken.contains_key(&name) => Err(format!(
                        "channel {name:?} cannot start: its file does not validate"
                    )),
                    None => Err(format!("no channel {name:?}")),
                };
                let _ = reply.send(r);
            }
        }
    }

    /// Stops every channel at once (SIGTERM to all, SIGKILL after
    /// `stop_timeout`) and waits for all of them.
    pub async fn shutdown(&mut self) {
        for t in self.tasks.values() {
            let _ = t.tx.send(Cmd::Stop);
        }
        for (_, t) in std::mem::take(&mut self.tasks) {
            let _ = t.join.await;
        }
    }
}

/// What ended a child's run.
enum RunEnd {
    /// The child exited by itself (or failed its start timeout).
    Failed {
        exit: Exit,
        uptime: Duration,
        code: Option<i32>,
    },
    /// Stopped on a command; what to do next.
    Stopped(Next),
}

/// What a channel task does next.
enum Next {
    Start,
    Wait(Instant),
    /// Parked until the file changes or an operator asks.
    WaitForChange,
    End,
}

struct ChannelTask {
    ch: Channel,
    defaults: String,
    policy: Policy,
    binary: PathBuf,
    fleet: Arc<Fleet>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    tracker: Tracker,
    /// Children started so far.
    starts: u64,
}

impl ChannelTask {
    fn name(&self) -> &str {
        &self.ch.spec.name
    }

    fn file(&self) -> PathBuf {
        self.ch.spec.file.clone()
    }

    fn set(&self, f: impl FnOnce(&mut crate::state::ChannelStatus)) {
        self.fleet.update(&self.ch.spec.name, &self.ch.spec.file, f);
    }

    fn emit(&self, event: &'static str, detail: Value) {
        self.fleet.emit(event, Some(self.name()), detail);
    }

    async fn run(mut self) {
        // The series exists from the start, at 0.
        self.fleet
            .metrics
            .restarts
            .with_label_values(&[self.name()])
            .inc_by(0);
        self.set(|s| {
            s.state = State::Starting;
            s.config_error = None;
        });
        let mut next = Next::Start;
        loop {
            next = match next {
                Next::Start => self.start_and_watch().await,
                Next::Wait(until) => self.wait(Some(until)).await,
                Next::WaitForChange => self.wait(None).await,
                Next::End => break,
            };
        }
        self.set(|s| {
            s.state = State::Stopped;
            s.pid = None;
            s.reason = None;
        });
        self.emit("stopped", Value::Null);
    }

    /// Waits for `until` (then starts) or for a command.
    async fn wait(&mut self, until: Option<Instant>) -> Next {
        let sleep = async {
            match until {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                if self.fleet.get(self.name()).is_some_and(|s| s.state == State::Failed) {
                    // The cool-down is over: a fresh start.
                    self.tracker.reset();
                }
                Next::Start
            }
            cmd = self.rx.recv() => match cmd {
                None | Some(Cmd::Stop) => Next::End,
                Some(Cmd::Restart) => {
                    self.tracker.reset();
                    Next::Start
                }
                Some(Cmd::Reconfigure(ch, defaults)) => {
                    self.ch = *ch;
                    self.defaults = defaults;
                    self.tracker.reset();
                    self.set(|s| s.config_error = None);
                    Next::Start
                }
                Some(Cmd::ConfigError(e)) => {
                    self.set(|s| s.config_error = Some(e));
                    match until { Some(t) => Next::Wait(t), None => Next::WaitForChange }
                }
                Some(Cmd::ConfigOk) => {
                    self.set(|s| s.config_error = None);
                    match until { Some(t) => Next::Wait(t), None => Next::WaitForChange }
                }
            }
        }
    }

    async fn start_and_watch(&mut self) -> Next {
        let spawned = child::spawn(&self.binary, &self.ch.spec.file, &self.defaults);
        if let Err(e) = &spawned {
            if fdlimit::is_exhausted(e) {
                return self.spawn_later(e);
            }
        }
        let restart = self.starts > 0;
        self.starts += 1;
        if restart {
            self.set(|s| s.restarts += 1);
            self.fleet
                .metrics
                .restarts
                .with_label_values(&[self.name()])
                .inc();
        }
        self.fleet.clear_stats(self.name());
        let end = match spawned {
            Ok(child) => self.watch(child).await,
            Err(e) => RunEnd::Failed {
                exit: Exit {
                    code: None,
                    signal: None,
                    at: now_rfc3339(),
                    description: format!("cannot start {}: {e}", self.binary.display()),
                },
                uptime: Duration::ZERO,
                code: None,
            },
        };
        match end {
            RunEnd::Stopped(next) => next,
            RunEnd::Failed { exit, uptime, code } => self.after_failure(exit, uptime, code),
        }
    }

    /// The orchestrator ran out of descriptors (EMFILE, ENFILE) while
    /// spawning: not the channel's failure, so not counted towards
    /// `failed`, nor as a restart; tried again shortly.
    fn spawn_later(&mut self, e: &std::io::Error) -> Next {
        let reason = format!(
            "cannot start {}: {e}; trying again in {}",
            self.binary.display(),
            fmt_duration(SPAWN_RETRY)
        );
        self.back_off(SPAWN_RETRY, reason, &e.to_string())
    }

    /// Shows the channel in `backoff` (with why), says so on the event
    /// stream, and waits `after` before the next start.
    fn back_off(&mut self, after: Duration, reason: String, cause: &str) -> Next {
        tracing::warn!(channel = %self.name(), "{reason}");
        self.set(|s| {
            s.state = State::Backoff;
            s.reason = Some(reason);
        });
        self.emit(
            "restarting",
            json!({"delay_ms": after.as_millis() as u64, "after": cause}),
        );
        Next::Wait(Instant::now() + after)
    }

    /// Decides what follows a failure, and says so.
    fn after_failure(&mut self, exit: Exit, uptime: Duration, code: Option<i32>) -> Next {
        let last_stderr = self
            .fleet
            .get(self.name())
            .map(|s| s.last_stderr)
            .unwrap_or_default();
        let last_line = last_stderr.last().cloned().unwrap_or_default();
        if code == Some(78) {
            let reason = format!("configuration error (exit 78): {last_line}");
            tracing::error!(channel = %self.name(), "{reason}; not restarted until its file changes");
            self.mark_failed(reason, &exit, last_stderr);
            return Next::WaitForChange;
        }
        let jitter = fastrand::f64() * 2.0 - 1.0;
        match self
            .tracker
            .on_failure(Instant::now(), uptime, &self.policy, jitter)
        {
            Decision::Restart { after } => {
                let reason = format!(
                    "{}; restarting in {}",
                    exit.description,
                    fmt_duration(after)
                );
                self.back_off(after, reason, &exit.description)
            }
            Decision::Park { until } => {
                let reason = format!(
                    "{} failures within {}, the last: {}; trying again in {}",
                    self.tracker.recent_failures(),
                    fmt_duration(self.policy.restart_window),
                    exit.description,
                    fmt_duration(self.policy.cooldown)
                );
                tracing::error!(channel = %self.name(), last_stderr = %last_line, "failed: {reason}");
                self.mark_failed(reason, &exit, last_stderr);
                Next::Wait(until)
            }
        }
    }

    /// Shows the channel as `failed`, with why, and says so on the event
    /// stream.
    fn mark_failed(&self, reason: String, exit: &Exit, last_stderr: Vec<String>) {
        self.set(|s| {
            s.state = State::Failed;
            s.reason = Some(reason.clone());
        });
        self.emit(
            "failed",
            json!({"reason": reason, "exit": exit, "last_stderr": last_stderr}),
        );
    }

    /// Follows a child from start to end.
    async fn watch(&mut self, mut child: Child) -> RunEnd {
        let pid = child.pid;
        let started = Instant::now();
        tracing::info!(channel = %self.name(), pid, "started");
        self.set(|s| {
            s.state = State::Starting;
            s.pid = Some(pid);
            s.started = Some(started);
            s.reason = None;
            s.last_stderr.clear();
        });
        self.emit("started", json!({"pid": pid, "file": self.file()}));
        let start_deadline = tokio::time::sleep(self.policy.start_timeout);
        tokio::pin!(start_deadline);
        // Once ready, every stdout line (a stats line comes each second) is
        // the relay's heartbeat; silence for `liveness_timeout` means hung.
        let liveness = self.policy.liveness_timeout;
        let silence = tokio::time::sleep(liveness.unwrap_or(NEVER));
        tokio::pin!(silence);
        let mut ready = false;
        loop {
            tokio::select! {
                // Output first: lines already in the pipe (after the
                // orchestrator itself was stalled, say) count before any
                // deadline is looked at.
                biased;
                out = child.next() => match out {
                    Ok(Output::Stdout(line)) => {
                        if self.on_status_line(&line, pid) {
                            ready = true;
                        }
                        if let Some(limit) = liveness {
                            silence.as_mut().reset((Instant::now() + limit).into());
                        }
                    }
                    Ok(Output::Stderr(line)) => self.on_log_line(line),
                    Ok(Output::Exited(status)) => {
                        return self.exited(&status, started, pid, None);
                    }
                    Err(e) => {
                        tracing::error!(channel = %self.name(), error = %e, "lost the child's pipes; stopping it");
                        let status = self.stop_child(&mut child).await;
                        return self.exited(&status, started, pid, None);
                    }
                },
                cmd = self.rx.recv() => match cmd {
                    None | Some(Cmd::Stop) => {
                        self.stop_child(&mut child).await;
                        self.emit("exited", json!({"pid": pid, "reason": "stopped"}));
                        return RunEnd::Stopped(Next::End);
                    }
                    Some(Cmd::Restart) => {
                        self.emit("restarting", json!({"reason": "requested", "delay_ms": 0}));
                        self.stop_child(&mut child).await;
                        self.emit("exited", json!({"pid": pid, "reason": "restart requested"}));
                        self.tracker.reset();
                        return RunEnd::Stopped(Next::Start);
                    }
                    Some(Cmd::Reconfigure(ch, defaults)) => {
                        self.emit("restarting", json!({"reason": "configuration changed", "delay_ms": 0}));
                        self.stop_child(&mut child).await;
                        self.emit("exited", json!({"pid": pid, "reason": "configuration changed"}));
                        self.ch = *ch;
                        self.defaults = defaults;
                        self.tracker.reset();
                        self.set(|s| s.config_error = None);
                        return RunEnd::Stopped(Next::Start);
                    }
                    Some(Cmd::ConfigError(e)) => {
                        tracing::warn!(channel = %self.name(), "the changed file does not validate; the running instance is left as it is");
                        self.set(|s| s.config_error = Some(e));
                    }
                    Some(Cmd::ConfigOk) => self.set(|s| s.config_error = None),
                },
                _ = &mut start_deadline, if !ready => {
                    let limit = fmt_duration(self.policy.start_timeout);
                    tracing::warn!(channel = %self.name(), pid, "not ready within {limit}; stopping it");
                    let status = self.stop_child(&mut child).await;
                    let cause = format!("not ready within {limit}");
                    let mut end = self.exited(&status, started, pid, Some(&cause));
                    if let RunEnd::Failed { code, .. } = &mut end {
                        *code = None;
                    }
                    return end;
                }
                _ = &mut silence, if ready && liveness.is_some() => {
                    let limit = fmt_duration(liveness.unwrap_or_default());
                    tracing::error!(channel = %self.name(), pid, "no status line for {limit}: the relay is hung; killing it");
                    self.emit("hung", json!({"pid": pid, "silent_for": limit}));
                    let status = self.kill_child(&mut child).await;
                    let cause = format!("stopped reporting: no status line for {limit}");
                    return self.exited(&status, started, pid, Some(&cause));
                }
            }
        }
    }

    /// Handles one stdout line; true if it was `ready`.
    fn on_status_line(&self, line: &str, pid: u32) -> bool {
        let Some(status) = StatusLine::parse(line) else {
            tracing::warn!(channel = %self.name(), line, "unexpected line on the relay's stdout");
            return false;
        };
        match status {
            StatusLine::Ready(_) => {
                tracing::info!(channel = %self.name(), pid, "ready");
                self.set(|s| {
                    s.state = State::Ready;
                    s.reason = None;
                });
                self.emit("ready", json!({"pid": pid}));
                true
            }
            StatusLine::Stats(stats) => {
                self.fleet.record_stats(self.name(), stats);
                false
            }
            StatusLine::FileClosed(f) => {
                tracing::debug!(channel = %self.name(), path = %f.path.display(), "archive file closed");
                false
            }
            StatusLine::Stopped(_) => false,
        }
    }

    fn on_log_line(&self, line: String) {
        tracing::info!(target: "relay", channel = %self.name(), "{line}");
        self.set(|s| s.push_stderr(line));
    }

    /// Records how a child ended; `cause`, when the orchestrator ended it,
    /// says why ("not ready within 10s").
    fn exited(
        &mut self,
        status: &std::process::ExitStatus,
        started: Instant,
        pid: u32,
        cause: Option<&str>,
    ) -> RunEnd {
        use std::os::unix::process::ExitStatusExt;
        let description = match cause {
            Some(c) => format!("{c} ({})", child::describe(status)),
            None => child::describe(status),
        };
        let exit = Exit {
            code: status.code(),
            signal: status.signal(),
            at: now_rfc3339(),
            description,
        };
        self.set(|s| {
            s.pid = None;
            s.last_exit = Some(exit.clone());
        });
        self.emit("exited", json!({"pid": pid, "exit": exit}));
        RunEnd::Failed {
            code: status.code(),
            exit,
            uptime: started.elapsed(),
        }
    }

    /// SIGKILL at once (a hung child would not act on SIGTERM); reads what
    /// is left in its pipes.
    async fn kill_child(&mut self, child: &mut Child) -> std::process::ExitStatus {
        child.signal(Signal::SIGKILL);
        let drain = async {
            loop {
                match child.next().await {
                    Ok(Output::Stdout(_)) => {}
                    Ok(Output::Stderr(line)) => self.on_log_line(line),
                    Ok(Output::Exited(status)) => return Some(status),
                    Err(_) => return None,
                }
            }
        };
        let status = match tokio::time::timeout(self.policy.stop_timeout, drain).await {
            Ok(Some(status)) => status,
            _ => child.wait_exit().await,
        };
        self.set(|s| s.pid = None);
        status
    }

    /// SIGTERM, then SIGKILL after `stop_timeout`; reads the child's last
    /// lines meanwhile (its final stats).
    async fn stop_child(&mut self, child: &mut Child) -> std::process::ExitStatus {
        child.signal(Signal::SIGTERM);
        let deadline = tokio::time::sleep(self.policy.stop_timeout);
        tokio::pin!(deadline);
        let mut killed = false;
        loop {
            tokio::select! {
                out = child.next() => match out {
                    Ok(Output::Stdout(line)) => { self.on_status_line(&line, child.pid); }
                    Ok(Output::Stderr(line)) => self.on_log_line(line),
                    Ok(Output::Exited(status)) => {
                        self.set(|s| s.pid = None);
                        return status;
                    }
                    Err(_) => {
                        child.signal(Signal::SIGKILL);
                        return child.wait_exit().await;
                    }
                },
                _ = &mut deadline, if !killed => {
                    tracing::warn!(
                        channel = %self.name(), pid = child.pid,
                        "did not stop within {}; killing it", fmt_duration(self.policy.stop_timeout)
                    );
                    child.signal(Signal::SIGKILL);
                    killed = true;
                }
            }
        }
    }
}

/// Names in `map` that are not `wanted` any more.
fn unwanted<V>(map: &BTreeMap<String, V>, wanted: &BTreeSet<String>) -> Vec<String> {
    map.keys()
        .filter(|n| !wanted.contains(*n))
        .cloned()
        .collect()
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// The relay binary: the configured one, else `relay-channel` beside this
/// executable.
pub fn relay_binary(cfg: &Config) -> std::io::Result<PathBuf> {
    if let Some(b) = &cfg.relay_binary {
        return Ok(b.clone());
    }
    let exe = std::env::current_exe()?;
    Ok(exe.parent().unwrap_or(Path::new(".")).join("relay-channel"))
}
