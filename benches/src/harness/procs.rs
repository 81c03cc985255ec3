//! The processes and threads of a trial: forwarders, the receiver, CPU and memory of a pid.

use super::*;

/// A folder removed when dropped.
pub(super) struct TempDir(pub(super) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) struct SendSummary {
    pub(super) sent: u64,
    pub(super) bytes: u64,
    pub(super) rate: f64,
    pub(super) retries: u64,
}

/// A multicast group of this run: 239.255.(200 + pid % 50).(1 + seq % 250),
/// apart from the groups the tests use (239.255.100-199.x).
pub(super) fn unique_group(seq: u32) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(239, 255, 200 + (pid % 50) as u8, 1 + (seq % 250) as u8)
}

/// A UDP port of 127.0.0.1 that was free a moment ago.
pub(super) fn free_port() -> Result<u16> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(s.local_addr()?.port())
}

/// Children get SIGTERM when the harness dies, so nothing outlives it.
pub(super) fn set_pdeathsig(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and calls only prctl,
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Waits for `child` at most `limit`; past it, kills it (by its PID) and
/// reports an error.
pub(super) fn wait_bounded(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "process {} did not end within {limit:?}; killed",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The last lines of a log file, for error messages.
pub(super) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// A forwarder process: its stdout JSON lines arrive on a channel; stderr
/// goes to a file in the trial folder.
pub(super) struct Proc {
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) name: &'static str,
    pub(super) lines: mpsc::Receiver<String>,
    pub(super) stderr: PathBuf,
    pub(super) seen: VecDeque<String>,
}

impl Proc {
    pub(super) fn spawn(mut cmd: Command, name: &'static str, dir: &Path) -> Result<Proc> {
        let stderr = dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr)?));
        set_pdeathsig(&mut cmd);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            pid: child.id(),
            child,
            name,
            lines,
            stderr,
            seen: VecDeque::new(),
        })
    }

    /// Waits at most `limit` for a stdout JSON line that `want` accepts.
    /// Waits for a stdout line that parses as a `T` that `want` takes.
    pub(super) fn wait_line<T: serde::de::DeserializeOwned>(
        &mut self,
        limit: Duration,
        mut want: impl FnMut(&T) -> bool,
    ) -> Result<T> {
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<T>(&line) {
                        if want(&v) {
                            return Ok(v);
                        }
                    }
                    self.seen.push_back(line);
                    if self.seen.len() > 3 {
                        self.seen.pop_front();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "{} (pid {}) sent no expected line within {limit:?}; stderr: {}",
                    self.name,
                    self.pid,
                    tail(&self.stderr)
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "{} (pid {}) ended without the expected line ({}); stderr: {}",
                    self.name,
                    self.pid,
                    self.child
                        .try_wait()
                        .ok()
                        .flatten()
                        .map_or("still running".into(), |s| s.to_string()),
                    tail(&self.stderr)
                ),
            }
        }
    }

    /// SIGTERM, then the final line, then the exit (SIGKILL past `limit`).
    /// SIGTERM, then the stdout line `want` takes (see
    /// [`wait_line`](Self::wait_line)) and a successful exit.
    pub(super) fn stop<T: serde::de::DeserializeOwned>(
        &mut self,
        limit: Duration,
        want: impl FnMut(&T) -> bool,
    ) -> Result<T> {
        // SAFETY: kill on the PID of a child we started and have not reaped.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let line = self.wait_line(limit, want);
        let status = wait_bounded(&mut self.child, limit)?;
        let line = line?;
        if !status.success() {
            bail!(
                "{} (pid {}) exited with {status}; stderr: {}",
                self.name,
                self.pid,
                tail(&self.stderr)
            );
        }
        Ok(line)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Total size of the files under `dir`.
pub(super) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some(if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            })
        })
        .sum()
}

/// The receiver thread's results.
#[derive(Default)]
pub(super) struct ReceiverResult {
    pub(super) received: u64,
    pub(super) kernel_drops: u64,
    pub(super) latencies_ns: Vec<i64>,
    pub(super) socket_latencies_ns: Vec<i64>,
    /// The thread's CPU seconds, start to end.
    pub(super) cpu_s: Option<f64>,
}

/// A thread receiving the full-rate group with `recvmmsg`, counting the
/// datagrams whose counter is in this trial's range and, if asked, their
/// send-to-receipt latency (receipt: `CLOCK_REALTIME` when `recvmmsg`
/// returned; send: the record's `time`).
pub(super) struct ReceiverThread {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) got: Arc<AtomicU64>,
    pub(super) handle: Option<JoinHandle<ReceiverResult>>,
}

impl ReceiverThread {
    pub(super) fn start(
        group: SocketAddrV4,
        lo: i32,
        count: u64,
        latency: bool,
        size: Size,
    ) -> Result<ReceiverThread> {
        let (socket, _granted) = open_group_receiver(group, BIG_RCVBUF, Duration::from_millis(20))
            .with_context(|| format!("receiver on {group}"))?;
        if latency {
            enable_timestamps(&socket).context("SO_TIMESTAMPNS")?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(AtomicU64::new(0));
        let slot = (size.max_datum() + 64).next_power_of_two();
        let warmup = (count as f64 * WARMUP_FRACTION) as u64;
        let handle = {
            let stop = stop.clone();
            let got = got.clone();
            std::thread::Builder::new()
                .name("receiver".into())
                .spawn(move || {
                    let cpu0 = thread_cpu_s();
                    let mut batch = RecvBatch::new(socket.as_raw_fd(), 256, slot);
                    let mut received = 0u64;
                    let cap = if latency { count as usize } else { 0 };
                    let mut latencies = Vec::with_capacity(cap);
                    let mut at_socket = Vec::with_capacity(cap);
                    let mut take = |batch: &RecvBatch, n: usize, received: &mut u64| {
                        let now = realtime_ns();
                        for i in 0..n {
                            let Some((time, counter)) = samples_header(batch.datagram(i)) else {
                                continue;
                            };
                            let k = u64::from(counter.wrapping_sub(lo) as u32);
                            if k < count {
                                *received += 1;
                                if latency && k >= warmup && latencies.len() < cap {
                                    latencies.push(now - time * 1000);
                                    if let Some(t) = batch.timestamp_ns(i) {
                                        at_socket.push(t - time * 1000);
                                    }
                                }
                            }
                        }
                    };
                    loop {
                        let stopping = stop.load(Ordering::Relaxed);
                        match batch.recv(stopping) {
                            Ok(n) if n > 0 => {
                                take(&batch, n, &mut received);
                                got.store(received, Ordering::Relaxed);
                            }
                            _ if stopping => break,
                            _ => {}
                        }
                    }
                    ReceiverResult {
                        received,
                        kernel_drops: u64::from(batch.kernel_drops),
                        latencies_ns: latencies,
                        socket_latencies_ns: at_socket,
                        cpu_s: cpu0.zip(thread_cpu_s()).map(|(a, b)| b - a),
                    }
                    // The socket closes here, leaving the group.
                })?
        };
        Ok(ReceiverThread {
            stop,
            got,
            handle: Some(handle),
        })
    }

    pub(super) fn got(&self) -> u64 {
        self.got.load(Ordering::Relaxed)
    }

    pub(super) fn finish(mut self) -> ReceiverResult {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ReceiverThread {
    /// A trial that ends early (an error) still stops its receiver.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A relay's stdout line, and the `receive_gap_max_us` of a stats line.
/// Relays older than that counter (before `6d511ba`) write stats lines
/// without it, which [`StatusLine`] refuses: it is taken as 0 there, and
/// `receive_gap_max_us` is `None`.
pub(super) struct RelayLine {
    pub(super) line: StatusLine,
    pub(super) receive_gap_max_us: Option<u64>,
}

impl<'de> serde::Deserialize<'de> for RelayLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RelayLine, D::Error> {
        let mut v = serde_json::Value::deserialize(d)?;
        let gap = v.get("receive_gap_max_us").and_then(|g| g.as_u64());
        if v.get("event").and_then(|e| e.as_str()) == Some("stats") {
            if let Some(o) = v.as_object_mut() {
                o.entry("receive_gap_max_us").or_insert(0.into());
            }
        }
        let line = StatusLine::deserialize(v).map_err(serde::de::Error::custom)?;
        Ok(RelayLine {
            line,
            receive_gap_max_us: gap,
        })
    }
}

/// The distribution of the relay's `receive_gap_max_us` over the stats
/// lines of a trial (one a second from ready, and the final one), in µs,
/// nearest rank; `None` if a line lacked it (an older relay).
pub fn receive_gaps(per_line: &[Option<u64>]) -> Option<ReceiveGaps> {
    let mut us: Vec<u64> = per_line.iter().copied().collect::<Option<_>>()?;
    let lines = us.clone();
    us.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len().max(1));
        us.get(rank - 1).copied().unwrap_or(0)
    };
    Some(ReceiveGaps {
        lines: us.len(),
        p50_us: at(0.50),
        p90_us: at(0.90),
        max_us: us.last().copied().unwrap_or(0),
        per_line_us: lines,
    })
}

/// Percentiles of latencies in nanoseconds (nearest rank).
pub fn latency_stats(mut ns: Vec<i64>) -> Option<Latency> {
    if ns.is_empty() {
        return None;
    }
    ns.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len());
        ns[rank - 1] as f64 / 1000.0
    };
    Some(Latency {
        samples: ns.len(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        p999_us: at(0.999),
        max_us: *ns.last().expect("not empty") as f64 / 1000.0,
    })
}

/// User + system CPU seconds of the calling thread.
pub fn thread_cpu_s() -> Option<f64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    (unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0)
        .then(|| t.tv_sec as f64 + t.tv_nsec as f64 / 1e9)
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses):
    // state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident set size (VmHWM) of a process, KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub(super) fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}
