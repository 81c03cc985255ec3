//! The supervisor: one task per channel that owns its child process, and a
//! reconcile step that turns what `channels.d` holds into started, stopped
//! and restarted channels.
//!
//! Each channel task is independent: its waits, restarts and failures
//! happen in its own task, so one channel's trouble never delays another.
//! The tasks talk to the rest only through [`Fleet`] (status, events,
//! metrics) and their command queue. A task decides nothing itself: it
//! feeds what happens to its [`Lifecycle`] and performs what that says.
//! Likewise reconcile applies what [`reconcile::plan`] says.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use relay_channel::status::StatusLine;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Level;

use crate::child::{self, Child, Output};
use crate::config::{self, Channel, Config};
use crate::fdlimit;
use crate::lifecycle::{
    fmt_duration, ChannelEvent, Command, Effect, Input, Lifecycle, Show, SpawnFailure, Watch,
};
use crate::reconcile::{self, Action, BrokenFile, Found, Running, Version};
use crate::stall::Stalls;
use crate::state::{now_rfc3339, EventKind, Exit, Fleet, State};

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

/// A command to one channel task; `Reconfigure` carries the channel's new
/// configuration and the defaults it starts with.
type Cmd = Command<(Box<Channel>, String)>;

/// A running channel task.
struct Task {
    tx: mpsc::UnboundedSender<Cmd>,
    join: JoinHandle<()>,
}

/// Channels started, stopped and restarted by reconcile.
#[derive(Debug, Default)]
struct Counts {
    started: usize,
    restarted: usize,
    stopped: usize,
}

/// All channel tasks, and the configuration they were started from.
pub struct Supervisor {
    cfg: Config,
    binary: PathBuf,
    fleet: Arc<Fleet>,
    tasks: BTreeMap<String, Task>,
    /// What the tasks run, the broken channels shown, the broken files
    /// announced: what reconcile plans from.
    running: Running,
    /// The print (see [`print_of`]) of orchestrator.toml's error, once
    /// announced: a reload that finds it as it was says nothing new.
    config_announced: Option<u64>,
    /// The orchestrator's own stalls, which the channels' timers discount;
    /// noted by `beat` as long as the supervisor lives.
    stalls: Arc<Stalls>,
    beat: JoinHandle<()>,
}

impl Supervisor {
    /// Starts noting the orchestrator's stalls (so: within a tokio runtime).
    pub fn new(cfg: Config, binary: PathBuf, fleet: Arc<Fleet>) -> Supervisor {
        let stalls = Arc::new(Stalls::new(Instant::now()));
        let beat = tokio::spawn(stalls.clone().beat());
        Supervisor {
            cfg,
            binary,
            fleet,
            tasks: BTreeMap::new(),
            running: Running::default(),
            config_announced: None,
            stalls,
            beat,
        }
    }

    /// The orchestrator's configuration, as last (re)loaded.
    pub fn config(&self) -> &Config {
        &self.cfg
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
                self.config_announced = None;
            }
            Err(e) => {
                let print = print_of(&self.cfg.file, &e.to_string());
                if self.config_announced.replace(print) != Some(print) {
                    self.fleet.metrics.config_errors.inc();
                    tracing::error!("{e}\n(keeping the previous orchestrator configuration)");
                    self.fleet.emit(
                        None,
                        EventKind::ConfigError {
                            file: self.cfg.file.clone(),
                            error: e.to_string(),
                        },
                    );
                }
            }
        }
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
                    None,
                    EventKind::ConfigError {
                        file: self.cfg.channels_dir.clone(),
                        error: e.to_string(),
                    },
                );
                return;
            }
        };
        let defaults = self.cfg.defaults_text();
        let found = found(&fleet, &defaults);
        let actions = reconcile::plan(&self.running, &found);
        let n = self.apply(actions, fleet.channels, &defaults);
        self.running.announced = found.prints();
        tracing::info!(
            reason = why,
            started = n.started,
            restarted = n.restarted,
            stopped = n.stopped,
            "channels reconciled"
        );
        self.fleet.emit(
            None,
            EventKind::Reloaded {
                reason: why.to_string(),
                started: n.started,
                restarted: n.restarted,
                stopped: n.stopped,
            },
        );
    }

    /// Performs reconcile's actions.
    fn apply(&mut self, actions: Vec<Action>, channels: Vec<Channel>, defaults: &str) -> Counts {
        let mut channels: BTreeMap<String, Channel> = channels
            .into_iter()
            .map(|c| (c.name().to_string(), c))
            .collect();
        let mut n = Counts::default();
        // Every channel about to start is listed first, so that each relay
        // is told how many share the host (SPEEDDATA_CHANNELS), whichever
        // starts first.
        for action in &actions {
            if let Action::Start(name) = action {
                if let Some(ch) = channels.get(name) {
                    self.fleet.set_spec(ch.spec.clone());
                    self.fleet.update(name, ch.file(), |s| {
                        s.state = State::Starting;
                        s.config_error = None;
                    });
                }
            }
        }
        for action in actions {
            match action {
                Action::Start(name) => {
                    let Some(ch) = channels.remove(&name) else {
                        continue;
                    };
                    self.start_task(ch, defaults);
                    n.started += 1;
                }
                Action::Reconfigure(name) => {
                    let Some(ch) = channels.remove(&name) else {
                        continue;
                    };
                    tracing::info!(channel = %name, "configuration changed: restarting the channel");
                    self.fleet.set_spec(ch.spec.clone());
                    self.running
                        .tasks
                        .insert(name.clone(), version(&ch, defaults));
                    self.send(
                        &name,
                        Cmd::Reconfigure((Box::new(ch), defaults.to_string())),
                    );
                    n.restarted += 1;
                }
                Action::Unchanged(name) => self.send(&name, Cmd::ConfigOk),
                Action::KeepRunning { name, error } => self.send(&name, Cmd::ConfigError(error)),
                Action::ShowBroken { name, file, error } => {
                    self.fleet.update(&name, &file, |s| {
                        s.state = State::Failed;
                        s.reason = Some("configuration error".into());
                        s.config_error = Some(error);
                    });
                    self.running.broken.insert(name);
                }
                Action::Announce { name, file, error } => {
                    self.fleet.metrics.config_errors.inc();
                    tracing::error!("{error}");
                    self.fleet
                        .emit(Some(&name), EventKind::ConfigError { file, error });
                }
                Action::Stop(name) => {
                    self.stop_task(&name);
                    n.stopped += 1;
                }
                Action::Forget(name) => {
                    self.running.broken.remove(&name);
                    self.fleet.remove(&name);
                }
            }
        }
        n
    }

    fn send(&self, name: &str, cmd: Cmd) {
        if let Some(t) = self.tasks.get(name) {
            let _ = t.tx.send(cmd);
        }
    }

    fn start_task(&mut self, ch: Channel, defaults: &str) {
        let (tx, rx) = mpsc::unbounded_channel();
        let name = ch.name().to_string();
        let version = version(&ch, defaults);
        self.fleet.set_spec(ch.spec.clone());
        // Listed (as starting) from now on, before the task first runs.
        self.fleet.update(&name, ch.file(), |s| {
            s.state = State::Starting;
            s.config_error = None;
        });
        let life = Lifecycle::new(
            self.cfg.policy.clone(),
            self.binary.display().to_string(),
            || fastrand::f64() * 2.0 - 1.0,
        );
        let task = ChannelTask {
            ch,
            defaults: defaults.to_string(),
            binary: self.binary.clone(),
            holds_dir: self.cfg.holds_dir(),
            fleet: self.fleet.clone(),
            stalls: self.stalls.clone(),
            rx,
            life,
            child: None,
        };
        let join = tokio::spawn(task.run());
        self.running.broken.remove(&name);
        self.running.tasks.insert(name.clone(), version);
        self.tasks.insert(name, Task { tx, join });
    }

    /// Stops a task whose file is gone; its status goes once it has ended.
    fn stop_task(&mut self, name: &str) {
        self.running.tasks.remove(name);
        let Some(t) = self.tasks.remove(name) else {
            return;
        };
        tracing::info!(channel = %name, "channel file removed: stopping the channel");
        let _ = t.tx.send(Cmd::Stop);
        let fleet = self.fleet.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let _ = t.join.await;
            fleet.remove(&name);
        });
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
                    None if self.running.broken.contains(&name) => Err(format!(
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
        self.running.tasks.clear();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

/// What `channels.d` holds, for [`reconcile::plan`]; reads each broken
/// file for its print.
fn found(fleet: &config::ChannelSet, defaults: &str) -> Found {
    let valid = fleet
        .channels
        .iter()
        .map(|c| (c.name().to_string(), version(c, defaults)))
        .collect();
    let broken = fleet
        .rejected
        .iter()
        .map(|r| {
            let error = r.error.to_string();
            BrokenFile {
                name: r.name.clone(),
                file: r.error.file.clone(),
                print: print_of(&r.error.file, &error),
                error,
            }
        })
        .collect();
    Found { valid, broken }
}

/// What a task of `ch` runs with these defaults.
fn version(ch: &Channel, defaults: &str) -> Version {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (ch.fingerprint, defaults).hash(&mut h);
    Version {
        file: ch.file().to_path_buf(),
        fingerprint: h.finish(),
    }
}

/// A fingerprint of a broken file as it reads now and its error: each
/// change of a broken file is announced once.
fn print_of(file: &Path, error: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(file).unwrap_or_default().hash(&mut h);
    error.hash(&mut h);
    h.finish()
}

/// Performs one channel's [`Lifecycle`]: owns the child, turns what it
/// says and does, deadlines and commands into inputs, and carries out the
/// effects.
struct ChannelTask {
    ch: Channel,
    defaults: String,
    binary: PathBuf,
    /// Handed to the relay (`SPEEDDATA_HOLDS_DIR`): its retention keeps
    /// what the holds there cover.
    holds_dir: PathBuf,
    fleet: Arc<Fleet>,
    stalls: Arc<Stalls>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    life: Lifecycle,
    child: Option<Child>,
}

impl ChannelTask {
    fn name(&self) -> &str {
        &self.ch.spec.name
    }

    fn set(&self, f: impl FnOnce(&mut crate::state::Tracked)) {
        self.fleet.update(&self.ch.spec.name, &self.ch.spec.file, f);
    }

    fn emit(&self, kind: EventKind) {
        self.fleet.emit(Some(self.name()), kind);
    }

    async fn run(mut self) {
        // The series exists from the start, at 0.
        self.fleet
            .metrics
            .restarts
            .with_label_values(&[self.name()])
            .inc_by(0);
        self.fleet
            .metrics
            .hung_kills
            .with_label_values(&[self.name()])
            .inc_by(0);
        let mut input = Input::Begin;
        loop {
            self.feed(input);
            if self.life.is_done() {
                return;
            }
            input = self.next_input().await;
        }
    }

    /// Steps the lifecycle and performs its effects; a spawn's outcome is
    /// fed back at once.
    fn feed(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            for effect in self.life.step(input, Instant::now()) {
                inputs.extend(self.perform(effect));
            }
        }
    }

    /// The next thing that happens.
    async fn next_input(&mut self) -> Input {
        let deadline = self.life.deadline();
        let sleep = async move {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let takes_commands = self.life.takes_commands();
        tokio::select! {
            // Output first: lines already in the pipe (after the
            // orchestrator itself was stalled, say) count before any
            // deadline is looked at.
            biased;
            out = next_output(&mut self.child) => self.on_output(out),
            cmd = self.rx.recv(), if takes_commands => self.on_command(cmd),
            () = sleep => Input::Tick(self.watch()),
        }
    }

    /// What a passing deadline is judged with: the orchestrator's last
    /// stall, and whether the child's stdout holds lines not read yet.
    fn watch(&self) -> Watch {
        Watch {
            resumed_at: self.stalls.resumed_at(Instant::now()),
            output_waiting: self.child.as_ref().is_some_and(Child::output_waiting),
        }
    }

    fn on_output(&mut self, out: std::io::Result<Output>) -> Input {
        match out {
            Ok(Output::Stdout(line)) => Input::Stdout {
                ready: self.on_status_line(&line),
            },
            Ok(Output::Stderr(line)) => {
                self.on_log_line(line.clone());
                Input::Stderr(line)
            }
            Ok(Output::Exited(status)) => {
                self.child = None;
                Input::Exited(exit_of(&status))
            }
            Err(e) => {
                if let Some(c) = &mut self.child {
                    c.abandon_pipes();
                }
                Input::PipesLost {
                    error: e.to_string(),
                }
            }
        }
    }

    fn on_command(&mut self, cmd: Option<Cmd>) -> Input {
        // The supervisor gone: stop.
        let (cmd, next) = cmd.unwrap_or(Command::Stop).split();
        if let Some((ch, defaults)) = next {
            // The running child has its configuration; the next one
            // starts with this.
            self.ch = *ch;
            self.defaults = defaults;
        }
        Input::Command(cmd)
    }

    /// Carries out one effect; a spawn answers with its outcome.
    fn perform(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Spawn => return Some(self.spawn()),
            Effect::Signal(sig) => {
                if let Some(c) = &self.child {
                    c.signal(sig);
                }
            }
            Effect::AbandonPipes => {
                if let Some(c) = &mut self.child {
                    c.abandon_pipes();
                }
            }
            Effect::Log(level, message) => self.log(level, &message),
            Effect::Emit(event) => self.announce(event),
            Effect::Show(change) => self.show(change),
            Effect::CountRestart => {
                self.set(|s| s.restarts += 1);
                self.fleet
                    .metrics
                    .restarts
                    .with_label_values(&[self.name()])
                    .inc();
            }
            Effect::ClearStats => self.fleet.clear_stats(self.name()),
        }
        None
    }

    fn spawn(&mut self) -> Input {
        match child::spawn(
            &self.binary,
            self.ch.file(),
            &self.defaults,
            &self.holds_dir,
            self.fleet.channel_count(),
        ) {
            Ok(c) => {
                let pid = c.pid;
                self.child = Some(c);
                Input::Spawned { pid }
            }
            Err(e) => Input::SpawnFailed(SpawnFailure {
                out_of_descriptors: fdlimit::is_exhausted(&e),
                error: e.to_string(),
                at: now_rfc3339(),
            }),
        }
    }

    fn log(&self, level: Level, message: &str) {
        let channel = self.name();
        let pid = self.child.as_ref().map(|c| c.pid);
        if level == Level::ERROR {
            tracing::error!(channel = %channel, pid, "{message}");
        } else if level == Level::WARN {
            tracing::warn!(channel = %channel, pid, "{message}");
        } else {
            tracing::info!(channel = %channel, pid, "{message}");
        }
    }

    /// Writes a change into the channel's status.
    fn show(&self, change: Show) {
        self.set(|s| match change {
            Show::Started { pid, since } => {
                s.state = State::Starting;
                s.pid = Some(pid);
                s.started = Some(since);
                s.reason = None;
                s.last_stderr.clear();
            }
            Show::Ended { exit } => {
                s.pid = None;
                if exit.is_some() {
                    s.last_exit = exit;
                }
            }
            Show::State { state, reason } => {
                s.state = state;
                s.reason = reason;
            }
            Show::ConfigError(error) => s.config_error = error,
        });
    }

    /// Publishes a lifecycle event.
    fn announce(&self, event: ChannelEvent) {
        let kind = match event {
            ChannelEvent::Started { pid } => EventKind::Started {
                pid,
                file: self.ch.file().to_path_buf(),
            },
            ChannelEvent::Ready { pid } => EventKind::Ready { pid },
            ChannelEvent::Hung { pid, silent_for } => {
                self.fleet
                    .metrics
                    .hung_kills
                    .with_label_values(&[self.name()])
                    .inc();
                EventKind::Hung {
                    pid,
                    silent_for: fmt_duration(silent_for),
                }
            }
            ChannelEvent::Exited { pid, exit } => EventKind::Exited {
                pid,
                exit: Some(exit),
                reason: None,
            },
            ChannelEvent::Ended { pid, reason } => EventKind::Exited {
                pid,
                exit: None,
                reason: Some(reason.to_string()),
            },
            ChannelEvent::Restarting { delay, after } => EventKind::Restarting {
                delay_ms: delay.as_millis() as u64,
                after: Some(after),
                reason: None,
            },
            ChannelEvent::RestartingNow { reason } => EventKind::Restarting {
                delay_ms: 0,
                after: None,
                reason: Some(reason.to_string()),
            },
            ChannelEvent::Failed { reason, exit } => EventKind::Failed {
                reason,
                exit,
                last_stderr: self
                    .fleet
                    .get(self.name())
                    .map(|s| s.last_stderr)
                    .unwrap_or_default(),
            },
            ChannelEvent::Stopped => EventKind::Stopped,
        };
        self.emit(kind);
    }

    /// Handles one stdout line; true if it was `ready`.
    fn on_status_line(&self, line: &str) -> bool {
        let Some(status) = StatusLine::parse(line) else {
            tracing::warn!(channel = %self.name(), line, "unexpected line on the relay's stdout");
            return false;
        };
        match status {
            // Shown, said and logged as the lifecycle decides.
            StatusLine::Ready(_) => true,
            StatusLine::Stats(stats) => {
                self.fleet.record_stats(self.name(), stats);
                false
            }
            StatusLine::FileClosed(f) => {
                tracing::debug!(channel = %self.name(), path = %f.path.display(), "archive file closed");
                self.set(|s| {
                    s.push_closed_file(crate::state::ArchiveFile {
                        path: f.path,
                        records: f.records,
                        bytes: f.bytes,
                        closed_at: now_rfc3339(),
                    })
                });
                false
            }
            StatusLine::Stopped(_) => false,
        }
    }

    fn on_log_line(&self, line: String) {
        tracing::info!(target: "relay", channel = %self.name(), "{line}");
        self.set(|s| s.push_stderr(line));
    }
}

/// The child's next output; never, without a child.
async fn next_output(child: &mut Option<Child>) -> std::io::Result<Output> {
    match child {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// How a child ended, as of now.
fn exit_of(status: &std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    Exit {
        code: status.code(),
        signal: status.signal(),
        at: now_rfc3339(),
        description: child::describe(status),
    }
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
