//! `loadgen`: a paced, bounded sender of valid records.
//!
//! Sends UDP datagrams, each exactly one Avro binary datum of
//! `channels.d/example.avsc` (`speeddata.example.Sample`, the default) or of
//! a benchmark schema of a fixed size (`--size 64|800|8k`:
//! `benches/schemas/samples-*.avsc`), at a given rate until `--count`
//! datagrams are sent or `--duration` has passed, then prints one JSON
//! summary line on stdout:
//!
//! `{"sent":N,"elapsed_s":F,"rate":F,"retries":N,"first_counter":N,"last_counter":N,"bytes":N}`

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use speeddata_benches::lines::LoadgenSummary;
use speeddata_benches::{
    encode_example, now_micros, ExampleSource, SamplesSource, Size, XorShift64,
    EXAMPLE_OVERHEAD_MAX, MAX_UDP_PAYLOAD,
};

/// Most datagrams one `sendmmsg` call accepts (Linux `UIO_MAXIOV`).
const MAX_BATCH: u32 = 1024;
/// Pacing aims at one batch per this interval at most, so low rates are not
/// sent in bursts of `--batch` datagrams.
const TARGET_BATCH_INTERVAL: Duration = Duration::from_millis(1);
/// At high rates, the last part of each wait is spent yielding instead of
/// sleeping, because a sleep may overshoot by tens of microseconds.
const SPIN_WINDOW: Duration = Duration::from_micros(100);
/// Rates at or above this use the spin window.
const SPIN_MIN_RATE: u64 = 1_000;
/// Pause before retrying a batch the kernel refused for lack of buffers.
const RETRY_SLEEP: Duration = Duration::from_micros(200);
/// Longest single sleep, so a signal is noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Paced sender of valid Avro datagrams.
///
/// With --size example (the default) each UDP datagram is exactly one Avro
/// binary datum of channels.d/example.avsc: counter increasing by one from
/// --start-counter, time = sender clock in µs, a 1 Hz sine, ramp and square
/// wave, and deterministic xorshift noise in [-1, 1).
///
/// With --size 64, 800 or 8k it is one datum of
/// benches/schemas/samples-{64,800,8k}.avsc: time (sender clock in µs since
/// the epoch, CLOCK_REALTIME, taken as the datagram is encoded: receivers
/// compute latency from it), counter, and an array of 6, 99 or 1020
/// doubles (16-bit quantised sines plus noise): about 62, 806 or 8,174
/// bytes.
///
/// The run stops by itself after --count datagrams or --duration,
/// whichever comes first, and prints one JSON line on stdout:
/// {"sent":N,"elapsed_s":F,"rate":F,"retries":N,"first_counter":N,"last_counter":N,"bytes":N}
/// (the counters are null when nothing was sent). Progress and errors go to
/// stderr.
///
/// Runs of equal-length datagrams in a batch go out as one UDP GSO message
/// each where the kernel offers it (receivers still see one datagram per
/// record); SPEEDDATA_GSO=0 turns that off, as in the relay and ceiling.
///
/// Network safety: unicast destinations must be in 127.0.0.0/8 and multicast
/// leaves through --interface (default 127.0.0.1) with --ttl (default 0);
/// anything that could leave this machine needs --allow-remote.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, verbatim_doc_comment)]
struct Args {
    /// Destination IPv4 ADDR:PORT: a unicast address in 127.0.0.0/8 (others
    /// need --allow-remote) or a multicast group (224.0.0.0/4).
    #[arg(long, value_name = "ADDR:PORT")]
    to: SocketAddrV4,

    /// Datagrams per second, averaged from the start of the run; 0 sends as
    /// fast as the socket accepts.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    rate: u64,

    /// Number of datagrams to send (at least 1; the run is always bounded).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,

    /// Upper bound on the run time (e.g. 500ms, 10s, 2m); the run stops when
    /// --count datagrams are sent or this has passed, whichever comes first.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Local IPv4 address the socket binds to (port 0), and the outgoing
    /// interface (IP_MULTICAST_IF) for multicast destinations.
    #[arg(long, value_name = "IPv4", default_value_t = Ipv4Addr::LOCALHOST)]
    interface: Ipv4Addr,

    /// IP_MULTICAST_TTL for multicast destinations. 0 keeps datagrams on
    /// this host; a TTL above 0 on an interface outside 127.0.0.0/8 needs
    /// --allow-remote.
    #[arg(long, value_name = "N", default_value_t = 0)]
    ttl: u32,

    /// Record schema and size: the example record, or a benchmark record of
    /// about 64 bytes, 800 bytes or 8 KiB.
    #[arg(long, value_name = "SIZE", value_enum, default_value_t = Size::Example)]
    size: Size,

    /// Text of the `message` field of every record (--size example only).
    #[arg(long, value_name = "TEXT", default_value = "speeddata")]
    message: String,

    /// Counter of the first record; it increases by one per datagram
    /// (wrapping at the int range).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    start_counter: i32,

    /// Datagrams per sendmmsg call (1..=1024). At paced rates a batch is
    /// smaller when fewer datagrams are due (about one batch per ms).
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BATCH)))]
    batch: u32,

    /// Stamp the records with synthetic times instead of the clock: the
    /// first with --start-time, each next one this much later (e.g. 1ms:
    /// an hour of record time in 3.6 M records, sent as fast as --rate
    /// allows). For building archives that span long times quickly.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    time_step: Option<Duration>,

    /// The first record's time with --time-step (RFC 3339; default: now
    /// minus --count times --time-step, so the last record is stamped now).
    #[arg(long, value_name = "TIME", requires = "time_step", value_parser = humantime::parse_rfc3339)]
    start_time: Option<std::time::SystemTime>,

    /// Seed of the xorshift noise generator (same seed, same noise).
    #[arg(long, value_name = "N", default_value_t = XorShift64::DEFAULT_SEED)]
    seed: u64,

    /// Allow destinations that can leave this host: unicast outside
    /// 127.0.0.0/8, or multicast with --ttl above 0 through an interface
    /// outside 127.0.0.0/8. Without it such runs are refused.
    #[arg(long)]
    allow_remote: bool,

    /// No progress lines on stderr (the JSON summary is still printed).
    #[arg(long, short)]
    quiet: bool,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => {}
        Err(err) => {
            eprintln!("loadgen: error: {err:#}");
            std::process::exit(1);
        }
    }
}

/// Refuses destinations and interfaces that could send outside this host
/// unless `--allow-remote` is given.
fn check_safety(args: &Args) -> Result<()> {
    let dest = *args.to.ip();
    if args.to.port() == 0 {
        bail!("--to {}: port 0 is not a destination", args.to);
    }
    if args.interface.is_multicast() || args.interface.is_broadcast() {
        bail!(
            "--interface {}: must be a local unicast address",
            args.interface
        );
    }
    if dest.is_multicast() {
        if args.ttl > 255 {
            bail!("--ttl {}: must be 0..=255", args.ttl);
        }
        if args.ttl > 0 && !args.interface.is_loopback() && !args.allow_remote {
            bail!(
                "multicast to {} through {} with TTL {} could leave this host; \
                 use --ttl 0, --interface 127.0.0.1, or pass --allow-remote",
                args.to,
                args.interface,
                args.ttl
            );
        }
    } else if !dest.is_loopback() && !args.allow_remote {
        bail!(
            "--to {}: unicast destinations outside 127.0.0.0/8 are refused without --allow-remote",
            args.to
        );
    }
    if args.size == Size::Example && EXAMPLE_OVERHEAD_MAX + args.message.len() > MAX_UDP_PAYLOAD {
        bail!(
            "--message is {} bytes; a datagram holds at most {} bytes of message",
            args.message.len(),
            MAX_UDP_PAYLOAD - EXAMPLE_OVERHEAD_MAX
        );
    }
    Ok(())
}

fn open_socket(args: &Args) -> Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).context("socket")?;
    if args.to.ip().is_multicast() {
        socket
            .set_multicast_if_v4(&args.interface)
            .with_context(|| format!("IP_MULTICAST_IF {}", args.interface))?;
        socket
            .set_multicast_ttl_v4(args.ttl)
            .with_context(|| format!("IP_MULTICAST_TTL {}", args.ttl))?;
        socket
            .set_multicast_loop_v4(true)
            .context("IP_MULTICAST_LOOP")?;
    }
    let local = SocketAddr::V4(SocketAddrV4::new(args.interface, 0));
    socket
        .bind(&SockAddr::from(local))
        .with_context(|| format!("bind {local}"))?;
    // A send that cannot make progress (full send buffer) returns EAGAIN
    // after this, so the run stays bounded in time; it is retried.
    socket
        .set_write_timeout(Some(Duration::from_millis(100)))
        .context("SO_SNDTIMEO")?;
    socket
        .connect(&SockAddr::from(SocketAddr::V4(args.to)))
        .with_context(|| format!("connect {}", args.to))?;
    Ok(socket)
}

/// Sleeps until `deadline` (or returns at once if it has passed); with
/// `spin`, the last [`SPIN_WINDOW`] is spent yielding for precision. Each
/// call sleeps at most [`MAX_SLEEP`] so signals are seen promptly.
fn wait_until(deadline: Instant, spin: bool) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    let left = deadline - now;
    let margin = if spin { SPIN_WINDOW } else { Duration::ZERO };
    if left > margin {
        std::thread::sleep((left - margin).min(MAX_SLEEP));
        if left - margin > MAX_SLEEP {
            return;
        }
    }
    while Instant::now() < deadline {
        std::thread::yield_now();
    }
}

struct Summary {
    sent: u64,
    /// Bytes of the datagrams sent.
    bytes: u64,
    elapsed: Duration,
    retries: u64,
    /// A send error that ended the run early.
    failure: Option<anyhow::Error>,
}

fn run(args: &Args) -> Result<()> {
    check_safety(args)?;
    let socket = open_socket(args)?;
    let fd = socket.as_raw_fd();
    speeddata_benches::install_stop_signals();

    let batch = args.batch as usize;
    if !args.quiet {
        let rate = if args.rate == 0 {
            "as fast as possible".to_string()
        } else {
            format!("{}/s", args.rate)
        };
        eprintln!(
            "loadgen: sending {} {} datagrams to {} from {} at {}, batch {}, for at most {}",
            args.count,
            args.size.label(),
            args.to,
            socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map_or_else(|| args.interface.to_string(), |a| a.to_string()),
            rate,
            batch,
            humantime::format_duration(args.duration)
        );
    }

    let summary = send_loop(args, fd);

    let secs = summary.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        summary.sent as f64 / secs
    } else {
        0.0
    };
    let (first_counter, last_counter) = if summary.sent == 0 {
        (None, None)
    } else {
        let last = (args.start_counter as u32).wrapping_add((summary.sent - 1) as u32) as i32;
        (Some(args.start_counter), Some(last))
    };
    speeddata_benches::lines::print(&LoadgenSummary {
        sent: summary.sent,
        elapsed_s: (secs * 1e6).round() / 1e6,
        rate: (rate * 1e3).round() / 1e3,
        retries: summary.retries,
        first_counter,
        last_counter,
        bytes: summary.bytes,
    });
    match summary.failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

fn send_loop(args: &Args, fd: RawFd) -> Summary {
    let batch = args.batch as usize;
    let rate = args.rate;
    // At paced rates, aim at about one batch per TARGET_BATCH_INTERVAL.
    let paced_batch = if rate == 0 {
        batch
    } else {
        let per_interval = (rate as f64 * TARGET_BATCH_INTERVAL.as_secs_f64()) as usize;
        per_interval.clamp(1, batch)
    };
    let spin = rate >= SPIN_MIN_RATE;
    let message = args.message.as_str();
    // Synthetic record times (--time-step): the first's, in µs, and the
    // step.
    let synthetic = args.time_step.map(|step| {
        let step_us = step.as_micros() as i64;
        let first = match args.start_time {
            Some(t) => t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
            None => now_micros() - step_us * args.count as i64,
        };
        (first, step_us)
    });
    let mut stamped: i64 = 0;
    let mut source = Source::new(args.size, args.start_counter, args.seed);
    let datum_cap = args.size.max_datum()
        + if args.size == Size::Example {
            message.len()
        } else {
            0
        };
    let mut bufs: Vec<Vec<u8>> = (0..batch).map(|_| Vec::with_capacity(datum_cap)).collect();
    // Runs of equal-length datagrams go as one GSO message each, unless
    // SPEEDDATA_GSO=0 (read by SendBatch::new).
    let mut sender = relay_channel::mmsg::SendBatch::new(fd, batch);

    let mut sent: u64 = 0;
    let mut bytes: u64 = 0;
    let mut retries: u64 = 0;
    let mut refused_warned = false;
    let mut failure = None;
    let start = Instant::now();
    let end = start + args.duration;
    let mut next_progress = start + Duration::from_secs(1);
    // Token scheme: by time t after start, floor(t·rate) datagrams are due.
    let due_at = |n: u64| start + Duration::from_secs_f64(n as f64 / rate as f64);

    'run: while sent < args.count && !speeddata_benches::stop_requested() {
        let now = Instant::now();
        let past_end = now >= end;
        if past_end && rate == 0 {
            break;
        }
        if !args.quiet && now >= next_progress {
            let secs = (now - start).as_secs_f64();
            eprintln!(
                "loadgen: {:.1}s sent {} of {} ({:.0}/s), retries {}",
                secs,
                sent,
                args.count,
                sent as f64 / secs,
                retries
            );
            next_progress += Duration::from_secs(1);
        }
        let remaining = args.count - sent;
        let n = if rate == 0 {
            remaining.min(batch as u64) as usize
        } else {
            // Datagrams due by the end of the run still go out.
            let t = now.min(end) - start;
            let tokens = (t.as_secs_f64() * rate as f64) as u64;
            let available = tokens.min(args.count).saturating_sub(sent);
            let wanted = remaining.min(paced_batch as u64);
            if past_end && available == 0 {
                break;
            }
            if available < wanted && !past_end {
                wait_until(due_at(sent + wanted).min(end), spin);
                continue;
            }
            available.min(batch as u64) as usize
        };

        for buf in &mut bufs[..n] {
            buf.clear();
            let time_us = match synthetic {
                Some((first, step)) => first + step * stamped,
                None => now_micros(),
            };
            stamped += 1;
            source.encode_next(time_us, message, buf);
        }

        let mut done = 0;
        while done < n {
            match sender.send_some(bufs[done..n].iter().map(Vec::as_slice)) {
                Ok(k) => {
                    bytes += bufs[done..done + k]
                        .iter()
                        .map(|b| b.len() as u64)
                        .sum::<u64>();
                    done += k;
                    sent += k as u64;
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {
                        if speeddata_benches::stop_requested() {
                            break 'run;
                        }
                    }
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                        retries += 1;
                        if speeddata_benches::stop_requested() || Instant::now() >= end {
                            break 'run;
                        }
                        std::thread::sleep(RETRY_SLEEP);
                    }
                    Some(libc::ECONNREFUSED) => {
                        // An ICMP port-unreachable from an earlier datagram;
                        // the kernel reported it instead of sending this one.
                        retries += 1;
                        if !refused_warned {
                            eprintln!(
                                "loadgen: {} refused a datagram (nothing listening?); retrying",
                                args.to
                            );
                            refused_warned = true;
                        }
                        if speeddata_benches::stop_requested() || Instant::now() >= end {
                            break 'run;
                        }
                    }
                    _ => {
                        failure =
                            Some(anyhow::Error::new(e).context(format!("sendmmsg to {}", args.to)));
                        break 'run;
                    }
                },
            }
        }
    }
    let elapsed = start.elapsed();
    if failure.is_some() {
        // Reported by the caller after the summary.
    } else if speeddata_benches::stop_requested() && !args.quiet {
        eprintln!("loadgen: interrupted");
    } else if sent < args.count && !args.quiet {
        eprintln!(
            "loadgen: --duration {} reached after {} of {} datagrams",
            humantime::format_duration(args.duration),
            sent,
            args.count
        );
    }
    Summary {
        sent,
        bytes,
        elapsed,
        retries,
        failure,
    }
}

/// The record generator for `--size`.
// One value per run: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Source {
    Example(ExampleSource),
    Samples(SamplesSource),
}

impl Source {
    fn new(size: Size, start_counter: i32, seed: u64) -> Source {
        match size.values() {
            None => Source::Example(ExampleSource::new(start_counter, seed)),
            Some(n) => Source::Samples(SamplesSource::new(n, start_counter, seed)),
        }
    }

    /// Appends the next record, stamped with `time_us`, to `out`.
    #[inline]
    fn encode_next(&mut self, time_us: i64, message: &str, out: &mut Vec<u8>) {
        match self {
            Source::Example(s) => encode_example(&s.next_record(time_us, message), out),
            Source::Samples(s) => {
                s.encode_next(time_us, out);
            }
        }
    }
}
