//! The report: the markdown tables, the targets.

use super::*;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub bin_dir: PathBuf,
    pub quick: bool,
    pub trial_s: f64,
    pub latency_trial_s: f64,
    pub loss_limit: f64,
    /// `--compress-threads`, if given.
    pub compress_threads: Option<usize>,
    /// `--receive-realtime`.
    pub receive_realtime: bool,
    pub sizes: Vec<SizeReport>,
    /// `--rate-only`: the single trials, in order.
    pub rate_only: Vec<Trial>,
    pub warnings: Vec<String>,
    pub loadavg_at_end: Option<String>,
    /// CPU time other processes used during the run, as a share of all
    /// CPUs' time, in percent (it disturbs the numbers).
    pub other_work_pct: Option<f64>,
    pub wall_s: f64,
}

/// The results of one record size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub size: Size,
    /// Average datagram size in bytes.
    pub datagram_bytes: f64,
    pub ceiling: Search,
    pub relays: Vec<Search>,
    /// Rate of the latency trials: half the lossless rate of the relay
    /// with validation and zstd.
    pub latency_rate: Option<u64>,
    pub latency_ceiling: Option<Trial>,
    pub latency_relay: Option<Trial>,
    pub latency_errors: Vec<String>,
    /// `--overload`: the two 10 s trials at 1.1 times the fixed-level
    /// zstd relay's lossless rate.
    pub overload: Option<Overload>,
    /// `--pool`: the fixed-level relay's lossless rate with each number of
    /// compress threads.
    pub pool: Vec<(usize, Search)>,
}

/// The overload test (see [`Options::overload`]).
#[derive(Debug, Clone, Serialize)]
pub struct Overload {
    /// The fixed-level relay's lossless rate (1 s trials), and 1.1 times
    /// it.
    pub lossless_rate: u64,
    pub asked_rate: u64,
    /// The rate of the test: the highest, from `asked_rate` down by 5%
    /// steps, that the null codec carried for the whole trial.
    pub rate: u64,
    /// The rates the null codec lost at, and how many it lost.
    pub null_lost_above: Vec<(u64, u64)>,
    pub fixed: Option<Trial>,
    pub adaptive: Option<Trial>,
    /// The null codec at the same rate: whether the rate is one the relay
    /// carries for the length of the trial without compressing at all
    /// (the disk's sustained rate is the other limit).
    pub null: Option<Trial>,
    /// The null codec at the same rate again, after the two zstd trials:
    /// if it loses, the rate was at the edge of what the relay carries
    /// without compressing (the disk's pace moves between trials), and a
    /// loss with zstd there is not the compression's.
    pub null_after: Option<Trial>,
    pub errors: Vec<String>,
}

/// An integer with thousands separators: 1234567 → "1,234,567".
pub fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn opt_f(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

pub(super) fn size_label(size: Size) -> &'static str {
    match size {
        Size::S64 => "64 B",
        Size::S800 => "800 B",
        Size::S8k => "8 KiB",
        Size::Example => "example",
    }
}

/// The report as markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# speeddata-relay throughput\n");
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), Linux {}, net.core.rmem_max {}. Run {}{}, {:.0} s wall; \
         other processes used {} of the CPUs just before it and {} during it (load average {} \
         at the start, {} at the end).",
        m.nproc,
        m.cpu_model,
        m.kernel,
        m.rmem_max.map_or("?".into(), fmt_int),
        m.date,
        if r.quick { " (--quick)" } else { "" },
        r.wall_s,
        m.busy_before_pct.map_or("?".into(), |b| format!("{b:.0}%")),
        r.other_work_pct.map_or("?".into(), |b| format!("{b:.0}%")),
        m.loadavg_at_start.as_deref().unwrap_or("?"),
        r.loadavg_at_end.as_deref().unwrap_or("?"),
    );
    if let Some(src) = &m.source {
        let _ = writeln!(s, "Source: {src}; binaries from {}.", r.bin_dir.display());
    }
    if let Some(n) = r.compress_threads {
        let _ = writeln!(s, "The relay's archive.compress_threads: {n}.");
    }
    if r.receive_realtime {
        let _ = writeln!(
            s,
            "The relay's receive.realtime: true (its receive thread SCHED_FIFO at priority 1)."
        );
    }
    for w in &r.warnings {
        let _ = writeln!(s, "\n**Warning:** {w}");
    }
    if !r.rate_only.is_empty() {
        rate_only_table(&mut s, r);
        return s;
    }
    let _ = writeln!(
        s,
        "\nLossless: fewer than {:.2}% of the datagrams sent are lost at a receiver of the \
         full-rate group (and, for the relay, in the archive: `archived` of its final stats \
         line). Each search trial sends rate × {} s datagrams from loadgen through a fresh \
         forwarder process to the harness's receiver thread, all on this machine: the rate \
         doubles until a trial loses and is bisected, then the best rate is repeated (a repeat \
         that loses counts as a failure and the search bisects below it again). Ratios are to \
         the ceiling forwarder measured in the same run. \"≥\": the sender could not go \
         faster (loadgen, the forwarder and the receiver share the CPUs), so the forwarder's \
         own limit was not reached. CPU: user + system time of the forwarder process from \
         ready to the end of the trial at the lossless rate; peak RSS: its VmHWM.\n",
        r.loss_limit * 100.0,
        r.trial_s
    );
    let _ = writeln!(
        s,
        "| size | forwarder | lossless rate (datagrams/s) | MB/s | ratio to ceiling | CPU s per 10⁶ datagrams | peak RSS (MiB) | first loss above it |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|");
    for z in &r.sizes {
        let ceiling = z.ceiling.lossless_rate();
        for search in std::iter::once(&z.ceiling).chain(z.relays.iter()) {
            let rate = search.lossless_rate();
            let best = search.best_trial();
            let ratio = if ceiling > 0 && rate > 0 {
                format!("{:.2}", rate as f64 / ceiling as f64)
            } else {
                "–".into()
            };
            let mut fail = search
                .fail_trial()
                .map(|t| format!("at {}/s: {}", fmt_int(t.target_rate), t.loss_story()))
                .unwrap_or_else(|| "–".into());
            if let Some(n) = &search.note {
                let _ = write!(fail, " ({n})");
            } else if !search.repeated && rate > 0 {
                fail.push_str(" (best rate not repeated)");
            }
            let rate_text = match rate {
                0 => "–".to_string(),
                r if search.sender_bound() => format!("≥ {}", fmt_int(r)),
                r => fmt_int(r),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {} | {} | {} | {} |",
                size_label(z.size),
                search.forwarder.label(),
                rate_text,
                rate as f64 * z.datagram_bytes / 1e6,
                ratio,
                opt_f(best.and_then(|t| t.cpu_s_per_million), 2),
                opt_f(
                    best.and_then(|t| t.peak_rss_kib).map(|k| k as f64 / 1024.0),
                    1
                ),
                fail
            );
        }
    }
    let _ = writeln!(s);
    for z in &r.sizes {
        let zstd: Vec<String> = z
            .relays
            .iter()
            .filter(|sr| {
                matches!(
                    sr.forwarder,
                    Forwarder::Relay {
                        codec: ArchiveCodec::Zstd,
                        ..
                    }
                )
            })
            .filter_map(|sr| Some((sr.forwarder, sr.best_trial()?)))
            .filter_map(|(f, t)| {
                let a = t.archive_bytes? as f64;
                let without = matches!(
                    f,
                    Forwarder::Relay {
                        validate: false,
                        ..
                    }
                );
                (t.sent_bytes > 0).then(|| {
                    format!(
                        "{:.0}% {}",
                        100.0 * a / t.sent_bytes as f64,
                        if without {
                            "without validation"
                        } else {
                            "with validation"
                        }
                    )
                })
            })
            .collect();
        if !zstd.is_empty() {
            let _ = writeln!(
                s,
                "- {} ({:.0} bytes a datagram): the zstd archive files hold {} of the datagram \
                 bytes sent ({}).",
                size_label(z.size),
                z.datagram_bytes,
                zstd.first()
                    .map_or("", |z| z.split(' ').next().unwrap_or("")),
                zstd.join(", ")
            );
        }
    }
    receive_gaps_table(&mut s, r);
    for z in &r.sizes {
        if z.pool.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "\n## Compression pool, {}: zstd at the fixed level {POOL_LEVEL}\n\n\
             The relay with validation and zstd at level {POOL_LEVEL}, `adaptive = false`: \
             compressing is its limit. Its lossless rate with `archive.compress_threads` 1 \
             (the archive thread compresses) and 2 (a pool; the archive thread writes), in \
             {} s trials.\n",
            size_label(z.size),
            OVERLOAD_TRIAL.as_secs(),
        );
        let _ = writeln!(
            s,
            "| compress threads | lossless rate (datagrams/s) | against 1 thread | ratio to ceiling | CPU s per 10⁶ datagrams | first loss above it |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---|");
        let one = z.pool.first().map_or(0, |(_, p)| p.lossless_rate());
        let ceiling = z.ceiling.lossless_rate();
        for (threads, p) in &z.pool {
            let rate = p.lossless_rate();
            let ratio = |d: u64| {
                if d > 0 {
                    format!("{:.2}", rate as f64 / d as f64)
                } else {
                    "–".into()
                }
            };
            let _ = writeln!(
                s,
                "| {threads} | {} | {} | {} | {} | {} |",
                fmt_int(rate),
                ratio(one),
                ratio(ceiling),
                opt_f(p.best_trial().and_then(|t| t.cpu_s_per_million), 2),
                p.fail_trial()
                    .map(|t| format!("at {}/s: {}", fmt_int(t.target_rate), t.loss_story()))
                    .unwrap_or_else(|| "–".into()),
            );
        }
    }
    for z in &r.sizes {
        let Some(o) = &z.overload else { continue };
        let _ = writeln!(
            s,
            "\n## Overload, {}: beyond the fixed-level zstd relay's lossless rate, for {} s\n\n\
             The relay with validation and zstd at its fixed default level loses nothing up to \
             {}/s in 1 s trials. The test asks for 1.1 times that, {}/s, for {} s, at a rate the \
             relay carries with the null codec (the promise is for such a rate: above it the \
             limit is not compression but the receive path or the disk's sustained write rate, \
             page cache and writeback, which a 1 s trial does not reach); {}. Lost: datagrams \
             sent that did not reach the archive. The null codec runs again after the zstd \
             trials: if it loses then, the rate is at the edge of what the relay carries \
             without compressing (the disk's pace moves from trial to trial), and a loss there \
             is not the compression's to prevent.\n",
            size_label(z.size),
            OVERLOAD_TRIAL.as_secs(),
            fmt_int(o.lossless_rate),
            fmt_int(o.asked_rate),
            OVERLOAD_TRIAL.as_secs(),
            {
                let lost = o
                    .null_lost_above
                    .iter()
                    .map(|(r, l)| format!("{} at {}/s", fmt_int(*l), fmt_int(*r)))
                    .collect::<Vec<_>>()
                    .join(", ");
                match (lost.is_empty(), &o.null) {
                    (true, _) => format!("the null codec carried {}/s", fmt_int(o.rate)),
                    (false, None) => format!("the null codec lost {lost}: no rate to test"),
                    (false, Some(_)) => format!(
                        "the null codec lost {lost}, and carried {}/s",
                        fmt_int(o.rate)
                    ),
                }
            }
        );
        let _ = writeln!(
            s,
            "| archive | sent | archived | lost | kernel drops | archive dropped | time below the preferred level | level at the end | archive bytes / sent bytes | CPU s per 10⁶ | receive gap per stats line, µs (lines: p50 / p90 / max) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|");
        for (name, t) in [
            ("zstd, fixed level", &o.fixed),
            ("zstd, adaptive", &o.adaptive),
            ("null", &o.null),
            ("null, again after the zstd trials", &o.null_after),
        ] {
            let Some(t) = t else { continue };
            let c = &t.forwarder_counters;
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt_int(t.sent),
                c.archived.map_or("–".into(), fmt_int),
                t.lost_in_archive.map_or("–".into(), fmt_int),
                fmt_int(c.kernel_drops),
                c.archive_dropped.map_or("–".into(), fmt_int),
                c.archive_degraded_ms
                    .map_or("–".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
                match (c.archive_level, c.archive_stored) {
                    (_, Some(true)) => "stored".to_string(),
                    (Some(l), _) => l.to_string(),
                    _ => "–".into(),
                },
                match (t.archive_bytes, t.sent_bytes) {
                    (Some(a), b) if b > 0 => format!("{:.0}%", 100.0 * a as f64 / b as f64),
                    _ => "–".into(),
                },
                opt_f(t.cpu_s_per_million, 2),
                gaps_text(t),
            );
        }
        for e in &o.errors {
            let _ = writeln!(s, "\n- {e}");
        }
    }
    let _ = writeln!(
        s,
        "\n## Latency, send to receipt on the full-rate group\n\nAt half the lossless rate of \
         the relay with validation and zstd, the same rate through both forwarders; {} s per \
         trial, the first {:.0}% of each trial left out as warm-up. Send: the record's `time` \
         (CLOCK_REALTIME, µs, taken as loadgen encodes it). Receipt: CLOCK_REALTIME when the \
         receiver's `recvmmsg` returns; \"at socket\": the kernel's arrival stamp on the \
         receiver's socket (SO_TIMESTAMPNS), without the receiver thread's wake-up.\n",
        r.latency_trial_s,
        WARMUP_FRACTION * 100.0
    );
    let _ = writeln!(
        s,
        "| size | rate (datagrams/s) | forwarder | p50 (µs) | p99 (µs) | p99.9 (µs) | max (µs) | p50 / p99 / p99.9 at socket (µs) | samples | lost |"
    );
    let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for z in &r.sizes {
        for t in [&z.latency_ceiling, &z.latency_relay].into_iter().flatten() {
            let l = t.latency.as_ref();
            let k = t.latency_at_socket.as_ref();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                size_label(z.size),
                fmt_int(t.target_rate),
                t.forwarder.label(),
                opt_f(l.map(|l| l.p50_us), 0),
                opt_f(l.map(|l| l.p99_us), 0),
                opt_f(l.map(|l| l.p999_us), 0),
                opt_f(l.map(|l| l.max_us), 0),
                k.map_or("–".into(), |k| format!(
                    "{:.0} / {:.0} / {:.0}",
                    k.p50_us, k.p99_us, k.p999_us
                )),
                l.map_or("0".into(), |l| fmt_int(l.samples as u64)),
                fmt_int(t.lost_at_receiver)
            );
        }
        for e in &z.latency_errors {
            let _ = writeln!(s, "\n{}: latency not measured: {e}", size_label(z.size));
        }
    }
    if let Some(z) = r.sizes.iter().find(|z| z.size == Size::S800) {
        let _ = writeln!(s, "\n## Issue 4 targets (800 B, validation on, zstd)\n");
        for line in targets(z) {
            let _ = writeln!(s, "- {line}");
        }
    }
    s
}

/// A trial's receive gaps for tables.
fn gaps_text(t: &Trial) -> String {
    t.forwarder_counters
        .receive_gaps
        .as_ref()
        .map_or("–".into(), ReceiveGaps::text)
}

/// The relay's `receive_gap_max_us` over the stats lines of the trial at
/// each relay search's lossless rate and of its first failing trial.
fn receive_gaps_table(s: &mut String, r: &Report) {
    let rows: Vec<(Size, &Search)> = r
        .sizes
        .iter()
        .flat_map(|z| z.relays.iter().map(move |sr| (z.size, sr)))
        .filter(|(_, sr)| {
            sr.trials
                .iter()
                .any(|t| t.forwarder_counters.receive_gaps.is_some())
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## Relay receive gaps\n\nThe relay's `receive_gap_max_us` on each stats line of a \
         trial (one a second from ready, and the final one): the receive thread's longest gap \
         since the line before between a receive call that filled its batch (data left in the \
         socket) and the next call. Per trial: lines, then p50 / p90 / max over the lines, in \
         µs.\n"
    );
    let _ = writeln!(
        s,
        "| size | forwarder | at the lossless rate | at the first loss above it |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for (size, sr) in rows {
        let at = |t: Option<&Trial>| {
            t.map_or("–".into(), |t| {
                format!("{}/s, {}", fmt_int(t.target_rate), gaps_text(t))
            })
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            size_label(size),
            sr.forwarder.label(),
            at(sr.best_trial()),
            at(sr.fail_trial())
        );
    }
}

/// `--rate-only`: each trial's loss and receive gaps.
fn rate_only_table(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "\nSingle trials of {} s at one rate (`--rate-only`), each a fresh relay (with \
         `--with-ceiling` alternated with the ceiling's, at the same rate). Loss share: \
         the larger of lost at the receiver and not archived, of the datagrams sent (limit \
         {:.2}%). Receive gaps: the relay's `receive_gap_max_us` per stats line, µs (lines: \
         p50 / p90 / max). CPU: seconds per 10⁶ datagrams sent of loadgen, the \
         forwarder and the harness's receiver thread, and their sum.\n",
        r.trial_s,
        r.loss_limit * 100.0
    );
    let _ = writeln!(
        s,
        "| size | forwarder | rate (datagrams/s) | sent | sender reached (/s) | lost at receiver | not archived | kernel drops | archive dropped | loss share | level at the end | receive gaps | CPU: sender / forwarder / receiver = sum |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    );
    for t in &r.rate_only {
        let c = &t.forwarder_counters;
        let lost = t.lost_at_receiver.max(t.lost_in_archive.unwrap_or(0));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.4}% | {} | {} | {} |",
            size_label(t.size),
            t.forwarder.label(),
            fmt_int(t.target_rate),
            fmt_int(t.sent),
            fmt_int(t.achieved_rate as u64),
            fmt_int(t.lost_at_receiver),
            t.lost_in_archive.map_or("–".into(), fmt_int),
            fmt_int(c.kernel_drops),
            c.archive_dropped.map_or("–".into(), fmt_int),
            100.0 * lost as f64 / t.sent.max(1) as f64,
            match (c.archive_level, c.archive_stored) {
                (_, Some(true)) => "stored".to_string(),
                (Some(l), _) => l.to_string(),
                _ => "–".into(),
            },
            gaps_text(t),
            cpu_text(t),
        );
    }
}

/// The CPU per 10⁶ datagrams of the three programs of a trial, and the sum.
pub(super) fn cpu_text(t: &Trial) -> String {
    let parts = [
        t.sender_cpu_s_per_million,
        t.cpu_s_per_million,
        t.receiver_cpu_s_per_million,
    ];
    let sum = parts.iter().copied().sum::<Option<f64>>();
    format!(
        "{} / {} / {} = {}",
        opt_f(parts[0], 2),
        opt_f(parts[1], 2),
        opt_f(parts[2], 2),
        opt_f(sum, 2)
    )
}

/// The relay search of one configuration, if it ran.
pub(super) fn relay_search(z: &SizeReport, validate: bool, codec: ArchiveCodec) -> Option<&Search> {
    z.relays
        .iter()
        .find(|s| s.forwarder == Forwarder::relay(validate, codec, Decimation::Off))
}

/// The targets, checked against one size's results.
pub fn targets(z: &SizeReport) -> Vec<String> {
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    let mut out = Vec::new();
    let ceiling = z.ceiling.lossless_rate();
    if let Some(vz) = relay_search(z, true, ArchiveCodec::Zstd) {
        let rate = vz.lossless_rate();
        if ceiling > 0 {
            let ratio = rate as f64 / ceiling as f64;
            out.push(format!(
                "lossless rate ≥ 70% of the ceiling: {:.0}% ({} of {}/s{}): {}",
                ratio * 100.0,
                fmt_int(rate),
                fmt_int(ceiling),
                if z.ceiling.sender_bound() {
                    "; the ceiling was sender-bound, so this ratio is an upper bound"
                } else {
                    ""
                },
                mark(ratio >= 0.7)
            ));
        }
        if let Some(nv) = relay_search(z, false, ArchiveCodec::Zstd) {
            let off = nv.lossless_rate();
            if off > 0 {
                let cost = 1.0 - rate as f64 / off as f64;
                let mut line = format!(
                    "validation costs < 15% of the lossless rate: {:.0}% with zstd ({}/s with, {}/s without): {}",
                    cost * 100.0,
                    fmt_int(rate),
                    fmt_int(off),
                    mark(cost < 0.15)
                );
                let null_on = relay_search(z, true, ArchiveCodec::Null).map(Search::lossless_rate);
                let null_off =
                    relay_search(z, false, ArchiveCodec::Null).map(Search::lossless_rate);
                if let (Some(on), Some(off)) = (null_on, null_off.filter(|r| *r > 0)) {
                    let _ = write!(
                        line,
                        "; with the null codec, where the archive is less of a limit: {:.0}% \
                         ({}/s with, {}/s without)",
                        100.0 * (1.0 - on as f64 / off as f64),
                        fmt_int(on),
                        fmt_int(off)
                    );
                }
                out.push(line);
            }
        }
        let rss = z
            .relays
            .iter()
            .filter_map(|s| {
                s.best_trial()
                    .and_then(|t| t.peak_rss_kib)
                    .map(|k| (k, s.forwarder.label()))
            })
            .max();
        if let Some((k, which)) = rss {
            out.push(format!(
                "peak RSS < 64 MiB at full load: {:.1} MiB (the largest of the relay \
                 configurations: {which}): {}",
                k as f64 / 1024.0,
                mark(k < 64 * 1024)
            ));
        }
    }
    if let Some(l) = z.latency_relay.as_ref().and_then(|t| t.latency.as_ref()) {
        out.push(format!(
            "p99 send-to-receipt latency < 1 ms at half the lossless rate: {:.0} µs: {}",
            l.p99_us,
            mark(l.p99_us < 1000.0)
        ));
    }
    let find = |d| {
        let f = Forwarder::relay(true, ArchiveCodec::Zstd, d);
        z.relays.iter().find(|s| s.forwarder == f)
    };
    if let (Some(down), Some(avg)) = (find(Decimation::Downsample), find(Decimation::Average)) {
        let (d, a) = (down.lossless_rate(), avg.lossless_rate());
        let cpu = |s: &Search| {
            s.best_trial()
                .and_then(|t| t.cpu_s_per_million)
                .map_or("-".to_string(), |c| format!("{c:.2}"))
        };
        if d > 0 {
            let ratio = a as f64 / d as f64;
            out.push(format!(
                "average by {DECIMATION_FACTOR} within 5% of downsample by {DECIMATION_FACTOR} \
                 (validate, zstd): {:.0}% ({}/s against {}/s; CPU s per 10⁶ datagrams {} \
                 against {}): {}",
                ratio * 100.0,
                fmt_int(a),
                fmt_int(d),
                cpu(avg),
                cpu(down),
                mark(ratio >= 0.95)
            ));
        }
    }
    out
}
