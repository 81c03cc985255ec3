//! Trials and the search for the highest lossless rate.

use super::*;

/// The forwarder's own counters at the end of a trial.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForwarderCounters {
    pub received: u64,
    pub forwarded: u64,
    pub kernel_drops: u64,
    pub send_errors: u64,
    /// Relay only.
    pub archived: Option<u64>,
    pub archive_dropped: Option<u64>,
    pub rejected: Option<u64>,
    pub in_flight: Option<u64>,
    /// Relay with zstd: milliseconds compressed below the preferred level,
    /// the level at the end (`None` while storing), whether it stored.
    pub archive_degraded_ms: Option<u64>,
    pub archive_level: Option<i64>,
    pub archive_stored: Option<bool>,
    /// Relay only: `receive_gap_max_us` of every stats line of the trial.
    pub receive_gaps: Option<ReceiveGaps>,
}

/// The relay's `receive_gap_max_us` over a trial's stats lines: each line
/// holds the receive thread's longest gap, since the line before, between
/// a receive call that filled its batch (data left in the socket) and the
/// next call.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiveGaps {
    pub lines: usize,
    pub p50_us: u64,
    pub p90_us: u64,
    pub max_us: u64,
    /// Line by line, in order.
    pub per_line_us: Vec<u64>,
}

impl ReceiveGaps {
    /// "lines: p50 / p90 / max" for tables.
    pub fn text(&self) -> String {
        format!(
            "{}: {} / {} / {}",
            self.lines,
            fmt_int(self.p50_us),
            fmt_int(self.p90_us),
            fmt_int(self.max_us)
        )
    }
}

/// Send-to-receipt latency percentiles, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One trial: a fresh forwarder, one loadgen run, the receiver's count.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub forwarder: Forwarder,
    pub size: Size,
    /// Datagrams per second asked of loadgen.
    pub target_rate: u64,
    /// Datagrams asked of loadgen.
    pub count: u64,
    /// Datagrams loadgen sent, and at what rate.
    pub sent: u64,
    pub sent_bytes: u64,
    pub achieved_rate: f64,
    pub sender_retries: u64,
    /// The sender reached less than 95% of the asked rate or count.
    pub sender_short: bool,
    /// Datagrams of this trial the receiver thread got.
    pub received_at_receiver: u64,
    /// The receiver thread's own socket drops (a measurement problem if
    /// not 0).
    pub receiver_kernel_drops: u64,
    pub forwarder_counters: ForwarderCounters,
    pub lost_at_receiver: u64,
    /// Relay only: sent minus archived.
    pub lost_in_archive: Option<u64>,
    pub pass: bool,
    /// CPU seconds (user + system) of the forwarder from ready to the end
    /// of the trial, and per million datagrams sent.
    pub cpu_s: Option<f64>,
    pub cpu_s_per_million: Option<f64>,
    /// CPU seconds per million datagrams sent of the two programs beside
    /// the forwarder: loadgen (its whole run; on loopback the delivery to
    /// the forwarder's socket runs in its system calls) and the harness's
    /// receiver thread. With the forwarder's, what one datagram costs the
    /// whole machine.
    pub sender_cpu_s_per_million: Option<f64>,
    pub receiver_cpu_s_per_million: Option<f64>,
    /// Peak RSS (VmHWM) of the forwarder, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Relay only: bytes of the archive files the trial left.
    pub archive_bytes: Option<u64>,
    /// Latency trials: send to the receiver's `recvmmsg` returning.
    pub latency: Option<Latency>,
    /// Latency trials: send to the kernel's arrival stamp on the receiver's
    /// socket (`SO_TIMESTAMPNS`), which leaves out the receiver thread's
    /// own wake-up.
    pub latency_at_socket: Option<Latency>,
    pub wall_s: f64,
}

impl Trial {
    /// The rate this trial demonstrates if it passed: the asked rate, or
    /// what the sender reached if it fell short.
    pub fn effective_rate(&self) -> u64 {
        if self.sender_short {
            (self.achieved_rate as u64).min(self.target_rate)
        } else {
            self.target_rate
        }
    }

    /// Where the datagrams went, for a trial that lost some.
    pub fn loss_story(&self) -> String {
        let c = &self.forwarder_counters;
        let who = if self.forwarder.is_relay() {
            "relay"
        } else {
            "ceiling"
        };
        let mut parts = vec![format!(
            "{} lost of {} ({:.3}%)",
            fmt_int(self.lost_at_receiver),
            fmt_int(self.sent),
            100.0 * self.lost_at_receiver as f64 / self.sent.max(1) as f64
        )];
        if c.kernel_drops > 0 {
            parts.push(format!("{who} socket drops {}", fmt_int(c.kernel_drops)));
        }
        let unaccounted_in = self.sent.saturating_sub(c.received + c.kernel_drops);
        if unaccounted_in > 0 {
            parts.push(format!(
                "missing at the {who} without a kernel drop count {}",
                fmt_int(unaccounted_in)
            ));
        }
        if c.send_errors > 0 {
            parts.push(format!("{who} send errors {}", fmt_int(c.send_errors)));
        }
        if let Some(d) = c.archive_dropped.filter(|d| *d > 0) {
            parts.push(format!("archive_dropped {}", fmt_int(d)));
        }
        if let Some(r) = c.rejected.filter(|r| *r > 0) {
            parts.push(format!("rejected {}", fmt_int(r)));
        }
        if self.receiver_kernel_drops > 0 {
            parts.push(format!(
                "receiver socket drops {}",
                fmt_int(self.receiver_kernel_drops)
            ));
        }
        let lost_after = c
            .forwarded
            .saturating_sub(self.received_at_receiver + self.receiver_kernel_drops);
        if lost_after > 0 {
            parts.push(format!(
                "forwarded but not received {}",
                fmt_int(lost_after)
            ));
        }
        if let Some(a) = self.lost_in_archive.filter(|a| *a > 0) {
            parts.push(format!("not archived {}", fmt_int(a)));
        }
        if self.sender_short {
            parts.push(format!(
                "sender reached {}/s",
                fmt_int(self.achieved_rate as u64)
            ));
        }
        parts.join(", ")
    }
}

/// The outcome of one rate search.
#[derive(Debug, Clone, Serialize)]
pub struct Search {
    pub forwarder: Forwarder,
    pub size: Size,
    pub trials: Vec<Trial>,
    /// Index in `trials` of the passing trial with the highest rate.
    pub best: Option<usize>,
    /// Index of the failing trial with the lowest rate.
    pub first_fail: Option<usize>,
    /// Why the search ended early, if it did (sender-bound, time cap,
    /// error), or that the best rate lost on its repeat.
    pub note: Option<String>,
    /// The lossless rate passed a second, identical trial.
    pub repeated: bool,
}

impl Search {
    /// The lossless rate found (0 if none passed).
    pub fn lossless_rate(&self) -> u64 {
        self.best.map_or(0, |i| self.trials[i].effective_rate())
    }
    /// Whether the search stopped because the sender could not go faster.
    pub fn sender_bound(&self) -> bool {
        self.note
            .as_deref()
            .is_some_and(|n| n.starts_with("sender-bound"))
    }
    pub fn best_trial(&self) -> Option<&Trial> {
        self.best.map(|i| &self.trials[i])
    }
    pub fn fail_trial(&self) -> Option<&Trial> {
        self.first_fail.map(|i| &self.trials[i])
    }
}

/// How a search proceeds.
#[derive(Debug, Clone, Copy)]
pub struct SearchPlan {
    pub start: u64,
    pub max_rate: u64,
    pub bisect_steps: u32,
}

/// What [`search_rate`] found.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub trials: Vec<Trial>,
    /// Index of the passing trial with the highest rate.
    pub best: Option<usize>,
    /// Index of the failing trial with the lowest rate.
    pub first_fail: Option<usize>,
    /// Why the search ended early, or what the repeat changed.
    pub note: Option<String>,
    /// The best rate passed a second trial.
    pub repeated: bool,
}

/// Doubles the rate from `plan.start` until a trial fails (halving instead
/// if the first fails), then bisects between the best pass and the lowest
/// failure for at most `plan.bisect_steps` trials, then repeats the best
/// rate: if the repeat loses, that rate counts as a failure and the search
/// bisects again below it and repeats again (at most [`MAX_REPEAT_ROUNDS`]
/// times). `time_left` is asked before each trial; `trial` runs one at the
/// given rate.
pub fn search_rate(
    plan: SearchPlan,
    mut time_left: impl FnMut() -> bool,
    mut trial: impl FnMut(u64) -> Result<Trial>,
) -> SearchOutcome {
    let mut trials: Vec<Trial> = Vec::new();
    let mut good: Option<(u64, usize)> = None;
    let mut bad: Option<(u64, usize)> = None;
    let mut note = None;
    let mut rate = plan.start.clamp(1, plan.max_rate);
    let record = |t: Trial,
                  trials: &mut Vec<Trial>,
                  good: &mut Option<(u64, usize)>,
                  bad: &mut Option<(u64, usize)>| {
        let i = trials.len();
        let (pass, eff, target) = (t.pass, t.effective_rate(), t.target_rate);
        trials.push(t);
        if pass {
            if good.is_none_or(|(g, _)| eff > g) {
                *good = Some((eff, i));
            }
        } else if bad.is_none_or(|(b, _)| target < b) {
            *bad = Some((target, i));
        }
        pass
    };
    let mut stopped = false;
    for _ in 0..MAX_BRACKET_TRIALS {
        if !time_left() {
            note = Some("time cap reached".to_string());
            stopped = true;
            break;
        }
        let t = match trial(rate) {
            Ok(t) => t,
            Err(e) => {
                note = Some(format!("error: {e:#}"));
                stopped = true;
                break;
            }
        };
        let short = t.sender_short;
        let achieved = t.achieved_rate;
        if record(t, &mut trials, &mut good, &mut bad) {
            if short {
                note = Some(format!(
                    "sender-bound: loadgen reached only {}/s",
                    fmt_int(achieved as u64)
                ));
                stopped = true;
                break;
            }
            if bad.is_some() {
                break;
            }
            if rate >= plan.max_rate {
                note = Some(format!(
                    "no loss up to the highest rate tried ({})",
                    fmt_int(rate)
                ));
                stopped = true;
                break;
            }
            rate = (rate * 2).min(plan.max_rate);
        } else {
            if good.is_some() {
                break;
            }
            rate /= 2;
            if rate < 100 {
                note = Some("loss at every rate tried".to_string());
                stopped = true;
                break;
            }
        }
    }
    let mut repeated = false;
    let mut rounds = 0;
    while !stopped && rounds <= MAX_REPEAT_ROUNDS {
        rounds += 1;
        for _ in 0..plan.bisect_steps {
            let (Some((g, _)), Some((b, _))) = (good, bad) else {
                break;
            };
            if b <= g || (b - g) as f64 <= MIN_GAP * g as f64 {
                break;
            }
            if !time_left() {
                note = Some("time cap reached".to_string());
                stopped = true;
                break;
            }
            let mid = round_rate((g + b) / 2);
            if mid <= g || mid >= b {
                break;
            }
            match trial(mid) {
                Ok(t) => {
                    let short = t.sender_short;
                    let achieved = t.achieved_rate;
                    let pass = record(t, &mut trials, &mut good, &mut bad);
                    if pass && short {
                        note = Some(format!(
                            "sender-bound: loadgen reached only {}/s",
                            fmt_int(achieved as u64)
                        ));
                        stopped = true;
                        break;
                    }
                }
                Err(e) => {
                    note = Some(format!("error: {e:#}"));
                    stopped = true;
                    break;
                }
            }
        }
        let Some((g, gi)) = good.filter(|_| !stopped) else {
            break;
        };
        // Repeat the best rate: a single lucky trial is not a lossless rate.
        if !time_left() {
            note = Some("time cap reached before the repeat".to_string());
            break;
        }
        let rate = trials[gi].target_rate;
        match trial(rate) {
            Ok(t) => {
                let i = trials.len();
                let pass = t.pass;
                trials.push(t);
                if pass {
                    repeated = true;
                    break;
                }
                if bad.is_none_or(|(b, _)| rate <= b) {
                    bad = Some((rate, i));
                }
                // The best pass below it, then bisect again from there.
                good = trials
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.pass && t.effective_rate() < g)
                    .max_by_key(|(_, t)| t.effective_rate())
                    .map(|(i, t)| (t.effective_rate(), i));
                note = Some(format!(
                    "{}/s passed once, then lost on its repeat",
                    fmt_int(rate)
                ));
            }
            Err(e) => {
                note = Some(format!("error: {e:#}"));
                break;
            }
        }
    }
    SearchOutcome {
        trials,
        best: good.map(|g| g.1),
        first_fail: bad.map(|b| b.1),
        note,
        repeated,
    }
}

/// Rounds a rate to 2-3 significant digits, so tables stay readable.
pub(super) fn round_rate(r: u64) -> u64 {
    let step = match r {
        0..=9_999 => 100,
        10_000..=99_999 => 500,
        100_000..=999_999 => 5_000,
        _ => 50_000,
    };
    ((r + step / 2) / step * step).max(step)
}
