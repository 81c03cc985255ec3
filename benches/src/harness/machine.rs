//! The machine a run measures on: cores, CPU busy, other work, disk.

use super::*;

/// The machine the run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    /// /proc/loadavg (1, 5, 15 minutes) when the run started: other work
    /// on the machine disturbs the numbers.
    pub loadavg_at_start: Option<String>,
    /// Share of all CPUs busy (with other work: the harness is idle then)
    /// during the second before the run, in percent.
    pub busy_before_pct: Option<f64>,
    pub cpu_model: String,
    pub kernel: String,
    pub date: String,
    pub rmem_max: Option<u64>,
    pub source: Option<String>,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            // SAFETY: sysconf has no preconditions.
            nproc: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
            loadavg_at_start: loadavg(),
            busy_before_pct: cpu_busy(Duration::from_secs(1)).map(|f| f * 100.0),
            cpu_model,
            kernel,
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            rmem_max: std::fs::read_to_string("/proc/sys/net/core/rmem_max")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            source: source_revision(),
        }
    }
}

/// The share of all CPUs' time spent busy (not idle, not waiting for I/O)
/// over the next `over`, from /proc/stat.
pub(super) fn cpu_busy(over: Duration) -> Option<f64> {
    let (t0, i0) = cpu_stat()?;
    std::thread::sleep(over);
    let (t1, i1) = cpu_stat()?;
    let dt = t1.checked_sub(t0).filter(|d| *d > 0)?;
    Some(1.0 - (i1 - i0) as f64 / dt as f64)
}

/// All CPUs' (total, idle + iowait) time from /proc/stat, in clock ticks.
pub(super) fn cpu_stat() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

/// CPU seconds (user + system) of this process and of its waited-for
/// children.
pub(super) fn own_cpu_s() -> f64 {
    rusage_cpu_s(libc::RUSAGE_SELF) + children_cpu_s()
}

/// CPU seconds (user + system) of the children this process has waited for.
pub(super) fn children_cpu_s() -> f64 {
    rusage_cpu_s(libc::RUSAGE_CHILDREN)
}

fn rusage_cpu_s(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Measures how much CPU other processes used over a stretch of time:
/// everything busy on the machine minus this process and its children.
pub(super) struct OtherWork {
    pub(super) stat: Option<(u64, u64)>,
    pub(super) own: f64,
}

impl OtherWork {
    pub(super) fn start() -> OtherWork {
        OtherWork {
            stat: cpu_stat(),
            own: own_cpu_s(),
        }
    }

    /// Other processes' share of all CPUs since `start`, in percent.
    pub(super) fn percent(&self) -> Option<f64> {
        let (t0, i0) = self.stat?;
        let (t1, i1) = cpu_stat()?;
        let hz = clock_ticks_per_s();
        let total = t1.checked_sub(t0).filter(|d| *d > 0)? as f64 / hz;
        let busy = total - (i1 - i0) as f64 / hz;
        let other = (busy - (own_cpu_s() - self.own)).max(0.0);
        Some(100.0 * other / total)
    }
}

/// The first three fields of /proc/loadavg.
pub(super) fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// `git rev-parse --short HEAD` of the source tree this harness was built
/// from, with a note when relay-channel/ has uncommitted changes.
pub(super) fn source_revision() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let rev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["status", "--porcelain", "--", "relay-channel"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{rev} with uncommitted changes in relay-channel/")
    } else {
        rev
    })
}

pub(super) fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let m = e.metadata().ok()?;
        let t = if m.is_dir() {
            newest_mtime(&e.path())
        } else {
            m.modified().ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// Waits until the filesystem holding `dir` has written out what it has
/// in flight (`syncfs`); errors are ignored (then nothing is waited for).
pub(super) fn settle_disk(dir: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(d) = std::fs::File::open(dir) {
        // SAFETY: syncfs takes an open file descriptor, valid while `d` is.
        unsafe { libc::syncfs(d.as_raw_fd()) };
    }
}
