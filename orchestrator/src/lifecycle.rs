//! One channel's lifecycle as a pure transition function: the channel task
//! turns what happens (the child started, spoke, ended; a deadline passed;
//! a command came) into an [`Input`], hands it to [`Lifecycle::step`] with
//! the time, and performs the [`Effect`]s it returns. Nothing here touches
//! processes, clocks or IO, so tests drive every transition by hand.
//!
//! The phases, and what moves them (see [`Lifecycle::step`] for the table):
//!
//! ```text
//! Idle -Begin-> Spawning -Spawned-> Starting -ready-> Ready
//!   Starting/Ready -exit-> (failure) -> Backoff | Cooling | Parked
//!   Starting -start timeout-> Stopping(TERM) ; Ready -silence-> Stopping(KILL)
//!   Stopping -exit-> (failure) | Spawning (restart) | Done (stop)
//!   Backoff -deadline-> Spawning ; Cooling -deadline-> Spawning (history forgotten)
//!   Parked (exit 78) -restart or reconfigure-> Spawning
//! ```
//!
//! The timers that judge the child (start, liveness, stop) judge only what
//! the orchestrator saw: one that ran across a stall of the orchestrator
//! itself starts again from the stall's end, and one that passes while
//! the child's stdout holds unread bytes waits [`GRACE`] for them to be
//! read (see [`Watch`]).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::Level;

use crate::config::Policy;
use crate::policy::{Decision, Tracker};
use crate::state::{Exit, State};

/// How soon a spawn that ran out of descriptors is tried again.
pub const SPAWN_RETRY: Duration = Duration::from_secs(1);
/// How long a timer that passed with output waiting in the child's stdout
/// waits for it to be read.
pub const GRACE: Duration = Duration::from_secs(1);
/// The exit code by which a relay says its configuration is wrong.
const EX_CONFIG: i32 = 78;

/// One child's run: its pid and when it was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub pid: u32,
    pub since: Instant,
}

/// Where a channel is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not begun.
    Idle,
    /// A spawn was asked for; its outcome comes next.
    Spawning,
    /// The child runs and has not said `ready`; stopped at `deadline`.
    Starting { run: Run, deadline: Instant },
    /// The child said `ready`; hung if silent until `silent_at` (`None`:
    /// liveness off).
    Ready {
        run: Run,
        silent_at: Option<Instant>,
    },
    /// The orchestrator is ending the child; `then` follows its exit.
    Stopping { run: Run, stage: Stage, then: Then },
    /// Started again at `until`.
    Backoff { until: Instant },
    /// Too many failures: started again at `until`, history forgotten.
    Cooling { until: Instant },
    /// Exited 78 (configuration error): waits for its file to change or an
    /// operator's restart.
    Parked,
    /// Stopped for good; the task ends.
    Done,
}

/// How far a stop has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// SIGTERM sent; SIGKILL at `kill_at`.
    Term { kill_at: Instant },
    /// SIGKILL sent; the pipes are given up at `abandon_at` (a descendant
    /// may hold them open).
    Kill { abandon_at: Instant },
    /// Only the exit is awaited.
    Abandoned,
}

/// What follows a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// A failure the orchestrator found: counted like an exit.
    Fail(Cause),
    /// Start again at once, failure history forgotten.
    Restart(Why),
    /// End the task.
    End,
}

/// Why the orchestrator ended a failing child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Not `ready` within `start_timeout`.
    StartTimeout,
    /// Silent for `liveness_timeout` once ready.
    Hung,
    /// Its stdout or stderr could not be read.
    PipesLost,
}

/// Why a running child is restarted on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Requested,
    Reconfigured,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Requested => "restart requested",
            Why::Reconfigured => "configuration changed",
        }
    }
}

/// A command from the supervisor to a channel. `Reconfigure` carries the
/// new configuration `C` on its way to the channel task, which keeps it
/// and hands the lifecycle the command without it (`C = ()`): see
/// [`Command::split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<C = ()> {
    /// Stop the child gracefully and end.
    Stop,
    /// Stop the child and start a new one now.
    Restart,
    /// The file changed: stop the child and start one with the new file.
    Reconfigure(C),
    /// The file changed and no longer validates: show it, keep running.
    ConfigError(String),
    /// The file validates again as it was.
    ConfigOk,
}

impl<C> Command<C> {
    /// The command as the lifecycle takes it, and the new configuration a
    /// `Reconfigure` carried.
    pub fn split(self) -> (Command, Option<C>) {
        match self {
            Command::Stop => (Command::Stop, None),
            Command::Restart => (Command::Restart, None),
            Command::Reconfigure(c) => (Command::Reconfigure(()), Some(c)),
            Command::ConfigError(e) => (Command::ConfigError(e), None),
            Command::ConfigOk => (Command::ConfigOk, None),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The task begins.
    Begin,
    Spawned {
        pid: u32,
    },
    SpawnFailed(SpawnFailure),
    /// A stdout line; `ready` if it was the `ready` line.
    Stdout {
        ready: bool,
    },
    /// A stderr line.
    Stderr(String),
    /// Reading the child's pipes failed.
    PipesLost {
        error: String,
    },
    /// The child ended, as described by `child::describe`.
    Exited(Exit),
    /// The deadline ([`Lifecycle::deadline`]) may have passed; what the
    /// task knows as it does.
    Tick(Watch),
    Command(Command),
}

/// What the channel task knows when a deadline passes, so that a timer
/// judges the child and not the orchestrator's own delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watch {
    /// When the orchestrator last resumed after a stall of its own
    /// (stopped, or starved of CPU: see `crate::stall`).
    pub resumed_at: Option<Instant>,
    /// The child's stdout holds bytes the task has not read yet.
    pub output_waiting: bool,
}

/// Why and when a spawn failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnFailure {
    pub error: String,
    /// EMFILE, ENFILE: the orchestrator's trouble, not the channel's.
    pub out_of_descriptors: bool,
    /// RFC 3339.
    pub at: String,
}

/// What the task is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Start a child; answer with `Spawned` or `SpawnFailed`.
    Spawn,
    /// Signal the child's process group.
    Signal(Signal),
    /// Stop reading the child's pipes; wait only for its exit.
    AbandonPipes,
    Log(Level, String),
    Emit(ChannelEvent),
    Show(Show),
    /// One more restart, in the status and the metric.
    CountRestart,
    /// Forget the ended child's counters.
    ClearStats,
}

/// A change of the channel's shown status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Show {
    /// `starting`, this child, up since `since`; reason and stderr cleared.
    Started { pid: u32, since: Instant },
    /// No child any more; a failed one's exit becomes `last_exit`.
    Ended { exit: Option<Exit> },
    /// The state, and why.
    State {
        state: State,
        reason: Option<String>,
    },
    /// The file's configuration error, or none.
    ConfigError(Option<String>),
}

/// A lifecycle event of the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// `started`.
    Started { pid: u32 },
    /// `ready`.
    Ready { pid: u32 },
    /// `hung`: silent for `silent_for`.
    Hung { pid: u32, silent_for: Duration },
    /// `exited` by itself, or ended for a failure.
    Exited { pid: u32, exit: Exit },
    /// `exited` because it was stopped on purpose (`reason`).
    Ended { pid: u32, reason: &'static str },
    /// `restarting` after `delay`, because of `after`.
    Restarting { delay: Duration, after: String },
    /// `restarting` now, on a command.
    RestartingNow { reason: &'static str },
    /// `failed`, parked.
    Failed { reason: String, exit: Exit },
    /// `stopped`: the task ends.
    Stopped,
}

/// One channel's lifecycle.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    phase: Phase,
    policy: Policy,
    tracker: Tracker,
    /// The relay binary, as shown in "cannot start ...".
    binary: String,
    /// A number in [-1, 1] for the backoff's jitter.
    jitter: fn() -> f64,
    /// Children started so far (spawn attempts that were not out of
    /// descriptors).
    starts: u64,
    /// The current child's last stderr line.
    last_stderr: Option<String>,
}

impl Lifecycle {
    pub fn new(policy: Policy, binary: String, jitter: fn() -> f64) -> Lifecycle {
        Lifecycle {
            phase: Phase::Idle,
            policy,
            tracker: Tracker::default(),
            binary,
            jitter,
            starts: 0,
            last_stderr: None,
        }
    }

    #[cfg(test)]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When to send `Tick`, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Starting { deadline, .. } => Some(deadline),
            Phase::Ready { silent_at, .. } => silent_at,
            Phase::Stopping { stage, .. } => match stage {
                Stage::Term { kill_at } => Some(kill_at),
                Stage::Kill { abandon_at } => Some(abandon_at),
                Stage::Abandoned => None,
            },
            Phase::Backoff { until } | Phase::Cooling { until } => Some(until),
            Phase::Idle | Phase::Spawning | Phase::Parked | Phase::Done => None,
        }
    }

    /// Whether commands are read now: not while a child is being stopped
    /// (they wait in the queue until it has ended) or spawned.
    pub fn takes_commands(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting { .. }
                | Phase::Ready { .. }
                | Phase::Backoff { .. }
                | Phase::Cooling { .. }
                | Phase::Parked
        )
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The transition table: the new phase is set, the effects returned in
    /// the order they are to be performed.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        use Command as C;
        use Input as I;
        use Phase as P;
        if let I::Tick(watch) = input {
            if self.deadline().is_none_or(|d| now < d) {
                return vec![];
            }
            if self.rearm(watch, now) {
                return vec![];
            }
        }
        match (self.phase, input) {
            (_, I::Stderr(line)) => {
                self.last_stderr = Some(line);
                vec![]
            }
            (P::Idle, I::Begin) => self.begin(),
            (P::Spawning, I::Spawned { pid }) => self.spawned(pid, now),
            (P::Spawning, I::SpawnFailed(failure)) => self.spawn_failed(failure, now),
            (P::Starting { run, .. }, I::Stdout { ready: true }) => self.ready(run, now),
            (P::Ready { run, .. }, I::Stdout { .. }) => self.heard(run, now),
            (P::Starting { run, .. } | P::Ready { run, .. }, I::Exited(exit)) => {
                self.exited(run, exit, now)
            }
            (P::Starting { run, .. }, I::Tick(_)) => self.start_timeout(run, now),
            (P::Ready { run, .. }, I::Tick(_)) => self.hung(run, now),
            (P::Starting { run, .. } | P::Ready { run, .. }, I::PipesLost { error }) => {
                self.pipes_lost(run, &error, now)
            }
            (P::Starting { run, .. } | P::Ready { run, .. }, I::Command(C::Stop)) => {
                self.terminate(run, Then::End, now)
            }
            (P::Starting { run, .. } | P::Ready { run, .. }, I::Command(C::Restart)) => {
                self.restart_running(run, Why::Requested, now)
            }
            (P::Starting { run, .. } | P::Ready { run, .. }, I::Command(C::Reconfigure(()))) => {
                self.restart_running(run, Why::Reconfigured, now)
            }
            (P::Starting { .. } | P::Ready { .. }, I::Command(C::ConfigError(e))) => {
                self.config_error_running(e)
            }
            (_, I::Command(C::ConfigError(e))) => vec![Effect::Show(Show::ConfigError(Some(e)))],
            (_, I::Command(C::ConfigOk)) => vec![Effect::Show(Show::ConfigError(None))],
            (P::Stopping { run, stage, then }, I::Tick(_)) => self.escalate(run, stage, then, now),
            (P::Stopping { run, stage, then }, I::PipesLost { .. }) => match stage {
                Stage::Term { .. } => self.kill(run, then, now),
                Stage::Kill { .. } | Stage::Abandoned => vec![],
            },
            (P::Stopping { run, then, .. }, I::Exited(exit)) => self.stopped(run, then, exit, now),
            (P::Backoff { .. }, I::Tick(_)) => self.spawn(),
            (P::Cooling { .. }, I::Tick(_)) => {
                self.tracker.reset();
                self.spawn()
            }
            (P::Backoff { .. } | P::Cooling { .. } | P::Parked, I::Command(C::Stop)) => self.end(),
            (P::Backoff { .. } | P::Cooling { .. } | P::Parked, I::Command(C::Restart)) => {
                self.tracker.reset();
                self.spawn()
            }
            (P::Backoff { .. } | P::Cooling { .. } | P::Parked, I::Command(C::Reconfigure(()))) => {
                self.tracker.reset();
                let mut fx = vec![Effect::Show(Show::ConfigError(None))];
                fx.extend(self.spawn());
                fx
            }
            // Nothing else changes anything: stdout before `ready` or
            // during a stop, commands while a child is being spawned or
            // stopped (not read then, see `takes_commands`).
            _ => vec![],
        }
    }

    /// The period of the timer that judges the child now, if one runs.
    fn judging_period(&self) -> Option<Duration> {
        match self.phase {
            Phase::Starting { .. } => Some(self.policy.start_timeout),
            Phase::Ready { silent_at, .. } => silent_at.and(self.policy.liveness_timeout),
            Phase::Stopping { stage, .. } => match stage {
                Stage::Term { .. } | Stage::Kill { .. } => Some(self.policy.stop_timeout),
                Stage::Abandoned => None,
            },
            _ => None,
        }
    }

    /// A judging timer whose deadline passed counts only if the
    /// orchestrator ran the whole period before it and read what the
    /// child said. Otherwise it is set again (true): from the end of the
    /// orchestrator's stall, or [`GRACE`] from now for the waiting output
    /// (stdout says the child lives; a stop does not wait for it).
    fn rearm(&mut self, watch: Watch, now: Instant) -> bool {
        let (Some(period), Some(deadline)) = (self.judging_period(), self.deadline()) else {
            return false;
        };
        let mut again = None;
        if let Some(resumed) = watch.resumed_at {
            let watched_from = deadline.checked_sub(period);
            if watched_from.is_none_or(|from| resumed > from) && resumed + period > now {
                again = Some(resumed + period);
            }
        }
        if watch.output_waiting
            && matches!(self.phase, Phase::Starting { .. } | Phase::Ready { .. })
        {
            again = again.max(Some(now + GRACE));
        }
        let Some(at) = again else {
            return false;
        };
        match &mut self.phase {
            Phase::Starting { deadline, .. } => *deadline = at,
            Phase::Ready { silent_at, .. } => *silent_at = Some(at),
            Phase::Stopping { stage, .. } => match stage {
                Stage::Term { kill_at } => *kill_at = at,
                Stage::Kill { abandon_at } => *abandon_at = at,
                Stage::Abandoned => {}
            },
            _ => {}
        }
        true
    }

    fn begin(&mut self) -> Vec<Effect> {
        let mut fx = vec![
            Effect::Show(Show::State {
                state: State::Starting,
                reason: None,
            }),
            Effect::Show(Show::ConfigError(None)),
        ];
        fx.extend(self.spawn());
        fx
    }

    fn spawn(&mut self) -> Vec<Effect> {
        self.phase = Phase::Spawning;
        vec![Effect::Spawn]
    }

    /// A start that counts: every one after the first is a restart.
    fn count_start(&mut self) -> Vec<Effect> {
        self.starts += 1;
        let mut fx = Vec::new();
        if self.starts > 1 {
            fx.push(Effect::CountRestart);
        }
        fx.push(Effect::ClearStats);
        fx
    }

    fn spawned(&mut self, pid: u32, now: Instant) -> Vec<Effect> {
        let run = Run { pid, since: now };
        self.phase = Phase::Starting {
            run,
            deadline: now + self.policy.start_timeout,
        };
        self.last_stderr = None;
        let mut fx = self.count_start();
        fx.extend([
            Effect::Log(Level::INFO, "started".into()),
            Effect::Show(Show::Started { pid, since: now }),
            Effect::Emit(ChannelEvent::Started { pid }),
        ]);
        fx
    }

    /// Out of descriptors is not the channel's failure: counted neither as
    /// a failure nor as a restart, and tried again shortly. Any other
    /// error is the child's failure.
    fn spawn_failed(&mut self, failure: SpawnFailure, now: Instant) -> Vec<Effect> {
        let SpawnFailure {
            error,
            out_of_descriptors,
            at,
        } = failure;
        if out_of_descriptors {
            let reason = format!(
                "cannot start {}: {error}; trying again in {}",
                self.binary,
                fmt_duration(SPAWN_RETRY)
            );
            return self.back_off(SPAWN_RETRY, reason, error, now);
        }
        let exit = Exit {
            code: None,
            signal: None,
            at,
            description: format!("cannot start {}: {error}", self.binary),
        };
        let mut fx = self.count_start();
        fx.extend(self.failure(exit, Duration::ZERO, now));
        fx
    }

    /// The `ready` line of a starting child (not of one being stopped:
    /// that one is not shown ready).
    fn ready(&mut self, run: Run, now: Instant) -> Vec<Effect> {
        self.heard(run, now);
        vec![
            Effect::Log(Level::INFO, "ready".into()),
            Effect::Show(Show::State {
                state: State::Ready,
                reason: None,
            }),
            Effect::Emit(ChannelEvent::Ready { pid: run.pid }),
        ]
    }

    /// A stdout line: the child is (still) ready, and not silent.
    fn heard(&mut self, run: Run, now: Instant) -> Vec<Effect> {
        self.phase = Phase::Ready {
            run,
            silent_at: self.policy.liveness_timeout.map(|limit| now + limit),
        };
        vec![]
    }

    /// The child ended by itself.
    fn exited(&mut self, run: Run, exit: Exit, now: Instant) -> Vec<Effect> {
        let mut fx = ended_with(run, &exit);
        if exit.code == Some(EX_CONFIG) {
            fx.extend(self.config_exit(exit));
        } else {
            fx.extend(self.failure(exit, now - run.since, now));
        }
        fx
    }

    fn start_timeout(&mut self, run: Run, now: Instant) -> Vec<Effect> {
        let limit = fmt_duration(self.policy.start_timeout);
        let mut fx = vec![Effect::Log(
            Level::WARN,
            format!("not ready within {limit}; stopping it"),
        )];
        fx.extend(self.terminate(run, Then::Fail(Cause::StartTimeout), now));
        fx
    }

    /// Silent once ready: SIGKILL at once (a hung child would not act on
    /// SIGTERM).
    fn hung(&mut self, run: Run, now: Instant) -> Vec<Effect> {
        let limit = self.policy.liveness_timeout.unwrap_or_default();
        let mut fx = vec![
            Effect::Log(
                Level::ERROR,
                format!(
                    "no status line for {}: the relay is hung; killing it",
                    fmt_duration(limit)
                ),
            ),
            Effect::Emit(ChannelEvent::Hung {
                pid: run.pid,
                silent_for: limit,
            }),
        ];
        fx.extend(self.kill(run, Then::Fail(Cause::Hung), now));
        fx
    }

    fn pipes_lost(&mut self, run: Run, error: &str, now: Instant) -> Vec<Effect> {
        let mut fx = vec![Effect::Log(
            Level::ERROR,
            format!("lost the child's pipes ({error}); stopping it"),
        )];
        fx.extend(self.terminate(run, Then::Fail(Cause::PipesLost), now));
        fx
    }

    fn config_error_running(&self, error: String) -> Vec<Effect> {
        vec![
            Effect::Log(
                Level::WARN,
                "the changed file does not validate; the running instance is left as it is".into(),
            ),
            Effect::Show(Show::ConfigError(Some(error))),
        ]
    }

    fn restart_running(&mut self, run: Run, why: Why, now: Instant) -> Vec<Effect> {
        let reason = match why {
            Why::Requested => "requested",
            Why::Reconfigured => "configuration changed",
        };
        let mut fx = vec![Effect::Emit(ChannelEvent::RestartingNow { reason })];
        fx.extend(self.terminate(run, Then::Restart(why), now));
        fx
    }

    /// SIGTERM; SIGKILL after `stop_timeout`.
    fn terminate(&mut self, run: Run, then: Then, now: Instant) -> Vec<Effect> {
        let kill_at = now + self.policy.stop_timeout;
        self.phase = Phase::Stopping {
            run,
            stage: Stage::Term { kill_at },
            then,
        };
        vec![Effect::Signal(Signal::SIGTERM)]
    }

    /// The stop's deadline passed: SIGKILL after SIGTERM; after SIGKILL,
    /// give up the pipes.
    fn escalate(&mut self, run: Run, stage: Stage, then: Then, now: Instant) -> Vec<Effect> {
        match stage {
            Stage::Term { .. } => self.kill_stubborn(run, then, now),
            Stage::Kill { .. } => {
                self.phase = Phase::Stopping {
                    run,
                    stage: Stage::Abandoned,
                    then,
                };
                vec![Effect::AbandonPipes]
            }
            Stage::Abandoned => vec![],
        }
    }

    fn kill_stubborn(&mut self, run: Run, then: Then, now: Instant) -> Vec<Effect> {
        let mut fx = vec![Effect::Log(
            Level::WARN,
            format!(
                "did not stop within {}; killing it",
                fmt_duration(self.policy.stop_timeout)
            ),
        )];
        fx.extend(self.kill(run, then, now));
        fx
    }

    fn kill(&mut self, run: Run, then: Then, now: Instant) -> Vec<Effect> {
        let abandon_at = now + self.policy.stop_timeout;
        self.phase = Phase::Stopping {
            run,
            stage: Stage::Kill { abandon_at },
            then,
        };
        vec![Effect::Signal(Signal::SIGKILL)]
    }

    /// The child the orchestrator stopped has ended.
    fn stopped(&mut self, run: Run, then: Then, mut exit: Exit, now: Instant) -> Vec<Effect> {
        match then {
            Then::Fail(cause) => {
                if let Some(why) = self.describe(cause) {
                    exit.description = format!("{why} ({})", exit.description);
                }
                let mut fx = ended_with(run, &exit);
                // Whatever its code, the orchestrator ended it: not exit 78.
                fx.extend(self.failure(exit, now - run.since, now));
                fx
            }
            Then::Restart(why) => {
                let mut fx = ended_on_purpose(run, why.as_str());
                if why == Why::Reconfigured {
                    fx.push(Effect::Show(Show::ConfigError(None)));
                }
                self.tracker.reset();
                fx.extend(self.spawn());
                fx
            }
            Then::End => {
                let mut fx = ended_on_purpose(run, "stopped");
                fx.extend(self.end());
                fx
            }
        }
    }

    /// What the orchestrator ended a child for, in words.
    fn describe(&self, cause: Cause) -> Option<String> {
        match cause {
            Cause::StartTimeout => Some(format!(
                "not ready within {}",
                fmt_duration(self.policy.start_timeout)
            )),
            Cause::Hung => Some(format!(
                "stopped reporting: no status line for {}",
                fmt_duration(self.policy.liveness_timeout.unwrap_or_default())
            )),
            Cause::PipesLost => None,
        }
    }

    fn end(&mut self) -> Vec<Effect> {
        self.phase = Phase::Done;
        vec![
            Effect::Show(Show::State {
                state: State::Stopped,
                reason: None,
            }),
            Effect::Emit(ChannelEvent::Stopped),
        ]
    }

    /// Exit 78: the configuration is wrong; parked until the file changes.
    fn config_exit(&mut self, exit: Exit) -> Vec<Effect> {
        let last = self.last_stderr.clone().unwrap_or_default();
        let reason = format!("configuration error (exit 78): {last}");
        self.phase = Phase::Parked;
        let mut fx = vec![Effect::Log(
            Level::ERROR,
            format!("{reason}; not restarted until its file changes"),
        )];
        fx.extend(failed(reason, exit));
        fx
    }

    /// A failure of a child that was up for `uptime`: backoff, or parked
    /// for the cool-down after too many.
    fn failure(&mut self, exit: Exit, uptime: Duration, now: Instant) -> Vec<Effect> {
        let jitter = (self.jitter)();
        match self.tracker.on_failure(now, uptime, &self.policy, jitter) {
            Decision::Restart { after } => {
                let reason = format!(
                    "{}; restarting in {}",
                    exit.description,
                    fmt_duration(after)
                );
                self.back_off(after, reason, exit.description, now)
            }
            Decision::Park { until } => {
                let reason = format!(
                    "{} failures within {}, the last: {}; trying again in {}",
                    self.tracker.recent_failures(),
                    fmt_duration(self.policy.restart_window),
                    exit.description,
                    fmt_duration(self.policy.cooldown)
                );
                self.phase = Phase::Cooling { until };
                let mut fx = vec![Effect::Log(Level::ERROR, format!("failed: {reason}"))];
                fx.extend(failed(reason, exit));
                fx
            }
        }
    }

    /// Shows `backoff` (with why), says so, and waits `after`.
    fn back_off(
        &mut self,
        after: Duration,
        reason: String,
        cause: String,
        now: Instant,
    ) -> Vec<Effect> {
        self.phase = Phase::Backoff { until: now + after };
        vec![
            Effect::Log(Level::WARN, reason.clone()),
            Effect::Show(Show::State {
                state: State::Backoff,
                reason: Some(reason),
            }),
            Effect::Emit(ChannelEvent::Restarting {
                delay: after,
                after: cause,
            }),
        ]
    }
}

/// A failed child ended: shown and said with its exit.
fn ended_with(run: Run, exit: &Exit) -> Vec<Effect> {
    vec![
        Effect::Show(Show::Ended {
            exit: Some(exit.clone()),
        }),
        Effect::Emit(ChannelEvent::Exited {
            pid: run.pid,
            exit: exit.clone(),
        }),
    ]
}

/// A child stopped on purpose ended.
fn ended_on_purpose(run: Run, reason: &'static str) -> Vec<Effect> {
    vec![
        Effect::Show(Show::Ended { exit: None }),
        Effect::Emit(ChannelEvent::Ended {
            pid: run.pid,
            reason,
        }),
    ]
}

/// Shown as `failed`, with why, and said.
fn failed(reason: String, exit: Exit) -> Vec<Effect> {
    vec![
        Effect::Show(Show::State {
            state: State::Failed,
            reason: Some(reason.clone()),
        }),
        Effect::Emit(ChannelEvent::Failed { reason, exit }),
    ]
}

/// "10s", "500ms".
pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect::{ClearStats, CountRestart, Emit, Spawn};

    fn policy() -> Policy {
        Policy {
            max_restarts: 3,
            ..Policy::default()
        }
    }

    fn life_with(policy: Policy) -> Lifecycle {
        Lifecycle::new(policy, "relay".into(), || 0.0)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn exit(code: Option<i32>, signal: Option<i32>, description: &str) -> Exit {
        Exit {
            code,
            signal,
            at: "T".into(),
            description: description.into(),
        }
    }

    fn exited(code: i32) -> Input {
        Input::Exited(exit(Some(code), None, &format!("exited with {code}")))
    }

    fn sigkilled() -> Input {
        Input::Exited(exit(None, Some(9), "killed by SIGKILL"))
    }

    fn tick() -> Input {
        Input::Tick(Watch::default())
    }

    fn cmd(c: Command) -> Input {
        Input::Command(c)
    }

    fn log(level: Level, message: &str) -> Effect {
        Effect::Log(level, message.into())
    }

    fn show_state(state: State, reason: Option<&str>) -> Effect {
        Effect::Show(Show::State {
            state,
            reason: reason.map(String::from),
        })
    }

    fn ended(exit: Exit) -> [Effect; 2] {
        [
            Effect::Show(Show::Ended {
                exit: Some(exit.clone()),
            }),
            Emit(ChannelEvent::Exited { pid: 7, exit }),
        ]
    }

    fn backing_off(delay: Duration, after: &str) -> [Effect; 3] {
        let reason = format!("{after}; restarting in {}", fmt_duration(delay));
        [
            log(Level::WARN, &reason),
            show_state(State::Backoff, Some(&reason)),
            Emit(ChannelEvent::Restarting {
                delay,
                after: after.into(),
            }),
        ]
    }

    /// A lifecycle whose child (pid 7) was spawned at `t0`.
    fn starting(policy: Policy, t0: Instant) -> Lifecycle {
        let mut l = life_with(policy);
        l.step(Input::Begin, t0);
        l.step(Input::Spawned { pid: 7 }, t0);
        l
    }

    /// A lifecycle whose child (pid 7) was spawned and said `ready` at `t0`.
    fn ready(policy: Policy, t0: Instant) -> Lifecycle {
        let mut l = starting(policy, t0);
        l.step(Input::Stdout { ready: true }, t0);
        l
    }

    fn run(t0: Instant) -> Run {
        Run { pid: 7, since: t0 }
    }

    #[test]
    fn begin_shows_starting_and_spawns() {
        let mut l = life_with(policy());
        let fx = l.step(Input::Begin, Instant::now());
        assert_eq!(
            fx,
            [
                show_state(State::Starting, None),
                Effect::Show(Show::ConfigError(None)),
                Spawn
            ]
        );
        assert_eq!(l.phase(), Phase::Spawning);
        assert!(!l.takes_commands());
    }

    #[test]
    fn a_spawned_child_is_shown_and_has_start_timeout_to_be_ready() {
        let t0 = Instant::now();
        let mut l = life_with(policy());
        l.step(Input::Begin, t0);
        let fx = l.step(Input::Spawned { pid: 7 }, t0);
        assert_eq!(
            fx,
            [
                ClearStats,
                log(Level::INFO, "started"),
                Effect::Show(Show::Started { pid: 7, since: t0 }),
                Emit(ChannelEvent::Started { pid: 7 }),
            ],
            "the first start is no restart"
        );
        assert_eq!(l.deadline(), Some(t0 + secs(10)));
        assert!(l.takes_commands());
    }

    #[test]
    fn ready_trades_the_start_timeout_for_the_liveness_timeout() {
        let t0 = Instant::now();
        let mut l = starting(policy(), t0);
        assert_eq!(l.step(Input::Stdout { ready: false }, t0 + secs(1)), []);
        assert_eq!(
            l.deadline(),
            Some(t0 + secs(10)),
            "a stats line is not ready"
        );
        assert_eq!(
            l.step(Input::Stdout { ready: true }, t0 + secs(2)),
            [
                log(Level::INFO, "ready"),
                show_state(State::Ready, None),
                Emit(ChannelEvent::Ready { pid: 7 })
            ]
        );
        assert_eq!(l.deadline(), Some(t0 + secs(7)));
        // Every line afterwards pushes the deadline back.
        l.step(Input::Stdout { ready: false }, t0 + secs(4));
        assert_eq!(l.deadline(), Some(t0 + secs(9)));
        assert_eq!(l.step(tick(), t0 + secs(8)), []);
    }

    #[test]
    fn exit_0_is_a_failure_restarted_after_the_first_backoff() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        let fx = l.step(exited(0), t0 + secs(1));
        let mut want = ended(exit(Some(0), None, "exited with 0")).to_vec();
        want.extend(backing_off(ms(100), "exited with 0"));
        assert_eq!(fx, want);
        assert_eq!(
            l.phase(),
            Phase::Backoff {
                until: t0 + secs(1) + ms(100)
            }
        );
        assert_eq!(l.step(tick(), t0 + secs(1) + ms(100)), [Spawn]);
        let fx = l.step(Input::Spawned { pid: 8 }, t0 + secs(2));
        assert_eq!(fx[..2], [CountRestart, ClearStats]);
    }

    #[test]
    fn exit_1_again_and_again_doubles_the_delay() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        let mut delays = Vec::new();
        for i in 0..3 {
            let t = t0 + secs(i);
            l.step(exited(1), t);
            let Phase::Backoff { until } = l.phase() else {
                panic!("{:?}", l.phase())
            };
            delays.push(until - t);
            l.step(tick(), until);
            l.step(Input::Spawned { pid: 7 }, until);
        }
        assert_eq!(delays, [ms(100), ms(200), ms(400)]);
    }

    #[test]
    fn death_by_a_signal_is_a_failure_like_an_exit() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        let fx = l.step(sigkilled(), t0 + secs(1));
        let mut want = ended(exit(None, Some(9), "killed by SIGKILL")).to_vec();
        want.extend(backing_off(ms(100), "killed by SIGKILL"));
        assert_eq!(fx, want);
    }

    #[test]
    fn exit_78_parks_the_channel_until_its_file_changes() {
        let t0 = Instant::now();
        let mut l = starting(policy(), t0);
        l.step(Input::Stderr("error: receive.bind: bad".into()), t0);
        let fx = l.step(exited(78), t0 + secs(1));
        let reason = "configuration error (exit 78): error: receive.bind: bad";
        let mut want = ended(exit(Some(78), None, "exited with 78")).to_vec();
        want.extend([
            log(
                Level::ERROR,
                &format!("{reason}; not restarted until its file changes"),
            ),
            show_state(State::Failed, Some(reason)),
            Emit(ChannelEvent::Failed {
                reason: reason.into(),
                exit: exit(Some(78), None, "exited with 78"),
            }),
        ]);
        assert_eq!(fx, want);
        assert_eq!((l.phase(), l.deadline()), (Phase::Parked, None));
        assert_eq!(l.step(tick(), t0 + secs(3600)), []);
        // A reload that finds the file as it was changes nothing.
        assert_eq!(
            l.step(cmd(Command::ConfigOk), t0 + secs(2)),
            [Effect::Show(Show::ConfigError(None))]
        );
        assert_eq!(l.phase(), Phase::Parked);
        assert_eq!(
            l.step(cmd(Command::Reconfigure(())), t0 + secs(3)),
            [Effect::Show(Show::ConfigError(None)), Spawn]
        );
    }

    #[test]
    fn start_timeout_terms_then_kills_and_counts_a_failure() {
        let t0 = Instant::now();
        let mut l = starting(policy(), t0);
        let fx = l.step(tick(), t0 + secs(10));
        assert_eq!(
            fx,
            [
                log(Level::WARN, "not ready within 10s; stopping it"),
                Effect::Signal(Signal::SIGTERM)
            ]
        );
        assert!(!l.takes_commands());
        assert_eq!(l.deadline(), Some(t0 + secs(20)));
        let fx = l.step(tick(), t0 + secs(20));
        assert_eq!(
            fx,
            [
                log(Level::WARN, "did not stop within 10s; killing it"),
                Effect::Signal(Signal::SIGKILL)
            ]
        );
        let fx = l.step(sigkilled(), t0 + secs(21));
        let description = "not ready within 10s (killed by SIGKILL)";
        let mut want = ended(exit(None, Some(9), description)).to_vec();
        want.extend(backing_off(ms(100), description));
        assert_eq!(fx, want);
    }

    #[test]
    fn exit_78_after_a_start_timeout_is_no_configuration_error() {
        let t0 = Instant::now();
        let mut l = starting(policy(), t0);
        l.step(tick(), t0 + secs(10));
        l.step(exited(78), t0 + secs(11));
        assert!(
            matches!(l.phase(), Phase::Backoff { .. }),
            "{:?}",
            l.phase()
        );
    }

    #[test]
    fn liveness_timeout_kills_a_silent_relay_at_once() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        let fx = l.step(tick(), t0 + secs(5));
        assert_eq!(
            fx,
            [
                log(
                    Level::ERROR,
                    "no status line for 5s: the relay is hung; killing it"
                ),
                Emit(ChannelEvent::Hung {
                    pid: 7,
                    silent_for: secs(5)
                }),
                Effect::Signal(Signal::SIGKILL),
            ]
        );
        let fx = l.step(sigkilled(), t0 + secs(5));
        let description = "stopped reporting: no status line for 5s (killed by SIGKILL)";
        let mut want = ended(exit(None, Some(9), description)).to_vec();
        want.extend(backing_off(ms(100), description));
        assert_eq!(fx, want);
    }

    #[test]
    fn liveness_off_leaves_a_silent_relay_alone() {
        let t0 = Instant::now();
        let l = ready(
            Policy {
                liveness_timeout: None,
                ..policy()
            },
            t0,
        );
        assert_eq!(l.deadline(), None);
    }

    #[test]
    fn a_kill_that_does_not_end_the_child_gives_up_its_pipes() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        l.step(tick(), t0 + secs(5));
        assert_eq!(l.deadline(), Some(t0 + secs(15)));
        assert_eq!(l.step(tick(), t0 + secs(15)), [Effect::AbandonPipes]);
        assert_eq!(l.deadline(), None);
        assert!(matches!(
            l.step(sigkilled(), t0 + secs(16))[1],
            Emit(ChannelEvent::Exited { .. })
        ));
    }

    #[test]
    fn stop_terms_the_child_and_ends() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        assert_eq!(
            l.step(cmd(Command::Stop), t0 + secs(1)),
            [Effect::Signal(Signal::SIGTERM)]
        );
        assert!(
            !l.takes_commands(),
            "commands wait until the child has ended"
        );
        let fx = l.step(exited(0), t0 + secs(2));
        assert_eq!(
            fx,
            [
                Effect::Show(Show::Ended { exit: None }),
                Emit(ChannelEvent::Ended {
                    pid: 7,
                    reason: "stopped"
                }),
                show_state(State::Stopped, None),
                Emit(ChannelEvent::Stopped),
            ]
        );
        assert!(l.is_done());
    }

    #[test]
    fn stop_while_waiting_ends_at_once() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        l.step(exited(1), t0);
        assert_eq!(
            l.step(cmd(Command::Stop), t0),
            [
                show_state(State::Stopped, None),
                Emit(ChannelEvent::Stopped)
            ]
        );
        assert!(l.is_done());
    }

    #[test]
    fn restart_stops_the_child_and_starts_anew_with_history_forgotten() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        for _ in 0..2 {
            l.step(exited(1), t0);
            l.step(tick(), t0 + secs(1));
            l.step(Input::Spawned { pid: 7 }, t0 + secs(1));
        }
        let fx = l.step(cmd(Command::Restart), t0 + secs(2));
        assert_eq!(
            fx,
            [
                Emit(ChannelEvent::RestartingNow {
                    reason: "requested"
                }),
                Effect::Signal(Signal::SIGTERM)
            ]
        );
        let fx = l.step(exited(0), t0 + secs(2));
        assert_eq!(
            fx,
            [
                Effect::Show(Show::Ended { exit: None }),
                Emit(ChannelEvent::Ended {
                    pid: 7,
                    reason: "restart requested"
                }),
                Spawn,
            ]
        );
        assert_eq!(
            l.step(Input::Spawned { pid: 8 }, t0 + secs(2))[0],
            CountRestart
        );
        l.step(exited(1), t0 + secs(3));
        assert_eq!(
            l.deadline(),
            Some(t0 + secs(3) + ms(100)),
            "the backoff starts over"
        );
    }

    #[test]
    fn restart_while_backing_off_starts_at_once() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        l.step(exited(1), t0);
        assert_eq!(l.step(cmd(Command::Restart), t0), [Spawn]);
    }

    #[test]
    fn reconfigure_restarts_the_child_and_clears_the_config_error() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        let fx = l.step(cmd(Command::Reconfigure(())), t0 + secs(1));
        assert_eq!(
            fx,
            [
                Emit(ChannelEvent::RestartingNow {
                    reason: "configuration changed"
                }),
                Effect::Signal(Signal::SIGTERM)
            ]
        );
        let fx = l.step(exited(0), t0 + secs(1));
        assert_eq!(
            fx,
            [
                Effect::Show(Show::Ended { exit: None }),
                Emit(ChannelEvent::Ended {
                    pid: 7,
                    reason: "configuration changed"
                }),
                Effect::Show(Show::ConfigError(None)),
                Spawn,
            ]
        );
    }

    #[test]
    fn a_config_error_leaves_the_running_child_alone() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        let fx = l.step(cmd(Command::ConfigError("bad".into())), t0);
        assert_eq!(
            fx,
            [
                log(
                    Level::WARN,
                    "the changed file does not validate; the running instance is left as it is"
                ),
                Effect::Show(Show::ConfigError(Some("bad".into()))),
            ]
        );
        assert_eq!(
            l.phase(),
            Phase::Ready {
                run: run(t0),
                silent_at: Some(t0 + secs(5))
            }
        );
        assert_eq!(
            l.step(cmd(Command::ConfigOk), t0),
            [Effect::Show(Show::ConfigError(None))]
        );
        l.step(exited(1), t0);
        assert_eq!(
            l.step(cmd(Command::ConfigError("bad".into())), t0),
            [Effect::Show(Show::ConfigError(Some("bad".into())))],
            "no child to leave alone"
        );
    }

    #[test]
    fn too_many_failures_park_until_the_cooldown_then_start_afresh() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        for i in 0..3 {
            l.step(exited(1), t0 + secs(i));
            assert!(matches!(l.phase(), Phase::Backoff { .. }));
            l.step(tick(), t0 + secs(i) + ms(500));
            l.step(Input::Spawned { pid: 7 }, t0 + secs(i) + ms(500));
        }
        let fx = l.step(exited(1), t0 + secs(3));
        let reason = "4 failures within 1m, the last: exited with 1; trying again in 5m";
        let mut want = ended(exit(Some(1), None, "exited with 1")).to_vec();
        want.extend([
            log(Level::ERROR, &format!("failed: {reason}")),
            show_state(State::Failed, Some(reason)),
            Emit(ChannelEvent::Failed {
                reason: reason.into(),
                exit: exit(Some(1), None, "exited with 1"),
            }),
        ]);
        assert_eq!(fx, want);
        let until = t0 + secs(303);
        assert_eq!(l.phase(), Phase::Cooling { until });
        assert_eq!(l.step(tick(), until - ms(1)), []);
        assert_eq!(l.step(tick(), until), [Spawn]);
        l.step(Input::Spawned { pid: 8 }, until);
        l.step(exited(1), until);
        assert_eq!(
            l.phase(),
            Phase::Backoff {
                until: until + ms(100)
            },
            "the cool-down forgot the history"
        );
    }

    #[test]
    fn a_spawn_out_of_descriptors_is_retried_in_a_second_uncounted() {
        let t0 = Instant::now();
        let mut l = life_with(policy());
        l.step(Input::Begin, t0);
        let error = "Too many open files (os error 24)";
        let fx = l.step(
            Input::SpawnFailed(SpawnFailure {
                error: error.into(),
                out_of_descriptors: true,
                at: "T".into(),
            }),
            t0,
        );
        let reason = format!("cannot start relay: {error}; trying again in 1s");
        assert_eq!(
            fx,
            [
                log(Level::WARN, &reason),
                show_state(State::Backoff, Some(&reason)),
                Emit(ChannelEvent::Restarting {
                    delay: secs(1),
                    after: error.into()
                }),
            ]
        );
        assert_eq!(l.deadline(), Some(t0 + secs(1)));
        assert_eq!(l.step(tick(), t0 + secs(1)), [Spawn]);
        assert_eq!(
            l.step(Input::Spawned { pid: 7 }, t0 + secs(1))[0],
            ClearStats,
            "still the first start"
        );
    }

    #[test]
    fn a_spawn_that_fails_otherwise_is_a_failure() {
        let t0 = Instant::now();
        let mut l = life_with(policy());
        l.step(Input::Begin, t0);
        let failed = Input::SpawnFailed(SpawnFailure {
            error: "No such file or directory (os error 2)".into(),
            out_of_descriptors: false,
            at: "T".into(),
        });
        let fx = l.step(failed.clone(), t0);
        let description = "cannot start relay: No such file or directory (os error 2)";
        let mut want = vec![ClearStats];
        want.extend(backing_off(ms(100), description));
        assert_eq!(fx, want);
        l.step(tick(), t0 + secs(1));
        assert_eq!(
            l.step(failed, t0 + secs(1))[..2],
            [CountRestart, ClearStats]
        );
    }

    #[test]
    fn lost_pipes_stop_the_child_as_a_failure() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        let fx = l.step(
            Input::PipesLost {
                error: "broken".into(),
            },
            t0,
        );
        assert_eq!(
            fx,
            [
                log(Level::ERROR, "lost the child's pipes (broken); stopping it"),
                Effect::Signal(Signal::SIGTERM)
            ]
        );
        let fx = l.step(exited(0), t0 + secs(1));
        let mut want = ended(exit(Some(0), None, "exited with 0")).to_vec();
        want.extend(backing_off(ms(100), "exited with 0"));
        assert_eq!(fx, want);
    }

    /// A tick after the orchestrator itself resumed at `resumed`.
    fn tick_after_stall(resumed: Instant) -> Input {
        Input::Tick(Watch {
            resumed_at: Some(resumed),
            output_waiting: false,
        })
    }

    fn is_hung_kill(fx: &[Effect]) -> bool {
        matches!(
            fx,
            [
                _,
                Emit(ChannelEvent::Hung { .. }),
                Effect::Signal(Signal::SIGKILL)
            ]
        )
    }

    #[test]
    fn a_stall_of_the_orchestrator_restarts_the_liveness_timer() {
        // Ready at t0 (liveness 5 s); the orchestrator is stopped from
        // t0+1 s to t0+11 s while the relay keeps writing status lines.
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        let fx = l.step(tick_after_stall(t0 + secs(11)), t0 + secs(11));
        assert_eq!(
            fx,
            [],
            "a healthy relay was judged by the orchestrator's pause"
        );
        assert_eq!(l.deadline(), Some(t0 + secs(16)));
        // The lines waiting in the pipe are read next.
        l.step(Input::Stdout { ready: false }, t0 + secs(11) + ms(2));
        assert_eq!(l.deadline(), Some(t0 + secs(16) + ms(2)));
    }

    #[test]
    fn a_relay_silent_through_a_stall_is_killed_once_watched_for_the_timeout() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        let resumed = t0 + secs(11);
        assert_eq!(l.step(tick_after_stall(resumed), resumed), []);
        // Still silent 5 s after the orchestrator resumed: hung.
        let fx = l.step(tick_after_stall(resumed), resumed + secs(5));
        assert!(is_hung_kill(&fx), "{fx:?}");
    }

    #[test]
    fn a_stall_before_the_silence_began_excuses_nothing() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0 + secs(20));
        let fx = l.step(tick_after_stall(t0 + secs(10)), t0 + secs(25));
        assert!(is_hung_kill(&fx), "{fx:?}");
    }

    #[test]
    fn output_waiting_in_the_pipe_gets_a_grace_then_silence_is_hung() {
        let t0 = Instant::now();
        let mut l = ready(policy(), t0);
        let waiting = Input::Tick(Watch {
            resumed_at: None,
            output_waiting: true,
        });
        assert_eq!(l.step(waiting, t0 + secs(5)), []);
        assert_eq!(l.deadline(), Some(t0 + secs(5) + GRACE));
        let fx = l.step(tick(), t0 + secs(5) + GRACE);
        assert!(is_hung_kill(&fx), "{fx:?}");
    }

    #[test]
    fn a_stall_restarts_the_start_and_stop_timers_but_not_a_backoff() {
        let t0 = Instant::now();
        // Starting: the ready line may be waiting in the pipe.
        let mut l = starting(policy(), t0);
        assert_eq!(l.step(tick_after_stall(t0 + secs(12)), t0 + secs(12)), []);
        assert_eq!(l.deadline(), Some(t0 + secs(22)));
        // Stopping: the child may have been finishing its archive.
        let mut l = ready(policy(), t0);
        l.step(cmd(Command::Stop), t0 + secs(1));
        assert_eq!(l.deadline(), Some(t0 + secs(11)));
        assert_eq!(l.step(tick_after_stall(t0 + secs(30)), t0 + secs(30)), []);
        assert_eq!(l.deadline(), Some(t0 + secs(40)));
        assert_eq!(
            l.step(tick_after_stall(t0 + secs(30)), t0 + secs(40)),
            [
                log(Level::WARN, "did not stop within 10s; killing it"),
                Effect::Signal(Signal::SIGKILL)
            ]
        );
        // A backoff judges no child: it ends when it is due.
        let mut l = ready(policy(), t0);
        l.step(exited(1), t0 + secs(1));
        let fx = l.step(tick_after_stall(t0 + secs(30)), t0 + secs(30));
        assert_eq!(fx, [Spawn]);
    }

    #[test]
    fn early_ticks_change_nothing() {
        let t0 = Instant::now();
        let mut l = starting(policy(), t0);
        let before = l.phase();
        assert_eq!(l.step(tick(), t0 + secs(9)), []);
        assert_eq!(l.phase(), before);
        l.step(tick(), t0 + secs(10));
        let stopping = l.phase();
        assert_eq!(l.step(tick(), t0 + secs(19)), []);
        assert_eq!(l.phase(), stopping);
    }

    #[test]
    fn a_ready_line_while_the_child_is_stopped_is_not_shown() {
        let t0 = Instant::now();
        let mut l = starting(policy(), t0);
        l.step(cmd(Command::Stop), t0 + secs(1));
        assert_eq!(l.step(Input::Stdout { ready: true }, t0 + secs(1)), []);
        assert!(matches!(l.phase(), Phase::Stopping { .. }));
    }

    #[test]
    fn stdout_while_stopping_changes_nothing() {
        let t0 = Instant::now();
        let mut l = starting(policy(), t0);
        l.step(cmd(Command::Stop), t0);
        let stopping = l.phase();
        assert_eq!(l.step(Input::Stdout { ready: true }, t0), []);
        assert_eq!(l.phase(), stopping);
    }
}
