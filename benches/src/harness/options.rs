//! The benchmark's options, and what each forwarder under test runs.

use super::*;

/// Finds, for each record size, the highest rate at which the ceiling
/// forwarder and relay-channel lose under 0.01% end to end (counted at a
/// full-rate receiver and, for the relay, in the archive), and prints a
/// markdown table: the rates as ratios to the ceiling's, CPU seconds per
/// million datagrams, peak RSS, and send-to-receipt latency at half the
/// relay's lossless rate.
///
/// It builds nothing: it runs the release binaries relay-channel, loadgen
/// and ceiling (cargo build --release --bins). Everything stays on this
/// host: unicast to 127.0.0.1, multicast through interface 127.0.0.1 with
/// TTL 0. The run stops by itself (--max-total).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "throughput", version, verbatim_doc_comment)]
pub struct Options {
    /// Folder holding relay-channel, loadgen and ceiling [default: this
    /// program's folder (target/release for target/release/deps)].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// A smoke run of about a minute: the 800-byte size only, shorter
    /// trials, fewer bisection steps.
    #[arg(long)]
    pub quick: bool,

    /// Sizes to measure, comma-separated [default: 64,800,8k; --quick: 800].
    #[arg(long, value_name = "SIZES", value_delimiter = ',', value_enum)]
    pub sizes: Vec<Size>,

    /// Also write every trial's raw results to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Length of one search trial (datagrams = rate x this) [default: 1s;
    /// --quick: 500ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub trial: Option<Duration>,

    /// Length of a latency trial [default: 2s; --quick: 1s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub latency_trial: Option<Duration>,

    /// Bisection steps after the rate has been bracketed [default: 4;
    /// --quick: 2].
    #[arg(long, value_name = "N")]
    pub bisect_steps: Option<u32>,

    /// Cap on the whole run: searches still going then stop with what they
    /// have [default: 10m; --quick: 2m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_total: Option<Duration>,

    /// Folder for the temporary channel files and archives [default: the
    /// system's temporary folder]. Archives are deleted after each trial.
    #[arg(long, value_name = "DIR")]
    pub tmp_dir: Option<PathBuf>,

    /// Also the overload test at 800 B and 8 KiB: the relay with validation and zstd
    /// at a fixed level is searched for its lossless rate, then driven at
    /// 1.1 times that rate for 10 s with the fixed level and with the
    /// adaptive level (the default). The rate is first checked with the
    /// null codec for 10 s, and lowered 5% at a time (up to 4 tries) until
    /// the null codec carries it: the adaptive level's promise is for a
    /// rate the relay carries without compressing.
    #[arg(long)]
    pub overload: bool,

    /// The relay's archive.compress_threads (blocks compressed on N
    /// threads) [default: not set, the relay decides from the cores].
    #[arg(long, value_name = "N")]
    pub compress_threads: Option<usize>,

    /// The relay's receive.realtime = true: its receive thread runs
    /// SCHED_FIFO at priority 1 (needs root, CAP_SYS_NICE or an
    /// RLIMIT_RTPRIO of at least 1; refused, the relay warns and runs it at
    /// the default priority).
    #[arg(long)]
    pub receive_realtime: bool,

    /// Also the compression pool at 800 B: the relay with validation and
    /// zstd at the fixed level 9 (where compressing, not the disk, is the
    /// limit) searched with archive.compress_threads 1, then 2, in 10 s
    /// trials (a 1 s trial fits in the archive queue). Adds 5 minutes to
    /// the default --max-total.
    #[arg(long)]
    pub pool: bool,

    /// Instead of the searches: the relay with validation and zstd
    /// (adaptive, the default) at N datagrams/s only, in three single
    /// trials of --trial each, for each size: no search, no latency.
    #[arg(long, value_name = "N")]
    pub rate_only: Option<u64>,

    /// With --rate-only: the ceiling forwarder at the same rate too, its
    /// trials alternated with the relay's (ceiling, relay, ceiling, ...),
    /// so that both see the same moments of a noisy machine.
    #[arg(long, requires = "rate_only")]
    pub with_ceiling: bool,

    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Options {
    pub(super) fn sizes(&self) -> Vec<Size> {
        let mut v: Vec<Size> = self
            .sizes
            .iter()
            .copied()
            .filter(|s| *s != Size::Example)
            .collect();
        if v.is_empty() {
            v = if self.quick {
                vec![Size::S800]
            } else {
                Size::SAMPLES.to_vec()
            };
        }
        v.dedup();
        v
    }
    pub(super) fn trial(&self) -> Duration {
        self.trial.unwrap_or(if self.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        })
    }
    pub(super) fn latency_trial(&self) -> Duration {
        self.latency_trial.unwrap_or(if self.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(2)
        })
    }
    pub(super) fn bisect_steps(&self) -> u32 {
        self.bisect_steps.unwrap_or(if self.quick { 2 } else { 4 })
    }
    /// A search from `start` up to [`MAX_RATE`], with this run's bisection.
    pub(super) fn plan(&self, start: u64) -> SearchPlan {
        SearchPlan {
            start,
            max_rate: MAX_RATE,
            bisect_steps: self.bisect_steps(),
        }
    }

    pub(super) fn max_total(&self) -> Duration {
        let pool = if self.pool {
            Duration::from_secs(300)
        } else {
            Duration::ZERO
        };
        self.max_total.unwrap_or(if self.quick {
            Duration::from_secs(120)
        } else {
            Duration::from_secs(600)
        }) + pool
    }
}

/// What forwards the datagrams in a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarder {
    /// The `ceiling` program.
    Ceiling,
    /// `relay-channel` with this validation, archive codec and decimated
    /// output.
    Relay {
        validate: bool,
        codec: ArchiveCodec,
        decimation: Decimation,
    },
}

/// The decimated output of a relay trial: none, or windows of
/// [`DECIMATION_FACTOR`] records on a group nobody listens to (the relay's
/// work is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decimation {
    Off,
    Downsample,
    Average,
}

impl Decimation {
    pub(super) fn algorithm(self) -> Option<&'static str> {
        match self {
            Decimation::Off => None,
            Decimation::Downsample => Some("downsample"),
            Decimation::Average => Some("average"),
        }
    }
}

/// Archive codecs the benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveCodec {
    /// zstd at its default level, adaptive (the relay's default).
    Zstd,
    /// zstd at its default level, `archive.adaptive = false`.
    ZstdFixed,
    Null,
}

impl ArchiveCodec {
    pub(super) fn name(self) -> &'static str {
        match self {
            ArchiveCodec::Zstd | ArchiveCodec::ZstdFixed => "zstd",
            ArchiveCodec::Null => "null",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            ArchiveCodec::Zstd => "zstd",
            ArchiveCodec::ZstdFixed => "zstd fixed level",
            ArchiveCodec::Null => "null",
        }
    }
}

impl Forwarder {
    /// The relay configurations measured, in report order.
    pub const RELAYS: [Forwarder; 4] = [
        Forwarder::relay(true, ArchiveCodec::Zstd, Decimation::Off),
        Forwarder::relay(true, ArchiveCodec::Null, Decimation::Off),
        Forwarder::relay(false, ArchiveCodec::Zstd, Decimation::Off),
        // Validation's cost where zstd is not what limits the relay.
        Forwarder::relay(false, ArchiveCodec::Null, Decimation::Off),
    ];

    /// The decimated configurations, measured at 800 B: what `average`
    /// costs next to `downsample`, validation and zstd on.
    pub const DECIMATED: [Forwarder; 2] = [
        Forwarder::relay(true, ArchiveCodec::Zstd, Decimation::Downsample),
        Forwarder::relay(true, ArchiveCodec::Zstd, Decimation::Average),
    ];

    pub const fn relay(validate: bool, codec: ArchiveCodec, decimation: Decimation) -> Forwarder {
        Forwarder::Relay {
            validate,
            codec,
            decimation,
        }
    }

    /// A short name for tables.
    pub fn label(self) -> String {
        match self {
            Forwarder::Ceiling => "ceiling".into(),
            Forwarder::Relay {
                validate,
                codec,
                decimation,
            } => format!(
                "relay, {}, {}{}",
                if validate {
                    "validate"
                } else {
                    "no validation"
                },
                codec.label(),
                match decimation.algorithm() {
                    Some(a) => format!(", {a} by {DECIMATION_FACTOR}"),
                    None => String::new(),
                }
            ),
        }
    }

    pub(super) fn is_relay(self) -> bool {
        matches!(self, Forwarder::Relay { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::Options;
    use clap::Parser;

    #[test]
    fn with_ceiling_needs_rate_only() {
        let err = Options::try_parse_from(["throughput", "--with-ceiling"]).unwrap_err();
        assert!(err.to_string().contains("--rate-only"), "{err}");
        let o = Options::try_parse_from(["throughput", "--rate-only", "400000", "--with-ceiling"])
            .unwrap();
        assert_eq!((o.rate_only, o.with_ceiling), (Some(400_000), true));
    }
}
