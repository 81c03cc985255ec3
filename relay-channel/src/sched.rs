//! The receive thread first, where the operator asks for it: pinned to one
//! CPU (`receive.cpu`) and raised to `SCHED_FIFO` at priority 1
//! (`receive.realtime`).
//!
//! A datagram the receive thread does not read in time is lost in the
//! kernel. On a host with fewer cores than busy threads a normal-priority
//! receive thread waits for a core while others run (whole scheduler ticks:
//! the gaps of 4 to 24 ms `receive_gap_max_us` shows at the edge); at
//! `SCHED_FIFO` it runs as soon as data wakes it. The cost moves, it does
//! not vanish: what the receive thread takes, the archive, the other
//! programs of the host and its own outputs' receivers do without
//! (`benches/RESULTS.md`, "Throughput III"). So it is a key, off by default.
//!
//! `SCHED_FIFO` needs an `RLIMIT_RTPRIO` of at least 1 (the systemd unit sets
//! `LimitRTPRIO=1`, a narrower grant than `CAP_SYS_NICE`, which would also
//! let it raise others' priorities) or `CAP_SYS_NICE`. Without either the
//! kernel refuses: the relay says so once and runs the thread at the
//! default priority. The kernel's realtime throttling
//! (`kernel.sched_rt_runtime_us`, 95% of each second by default) leaves
//! every core some time for others even when a flood keeps the receive
//! thread busy.
//!
//! Lowering the archive threads instead (`SCHED_BATCH`, nice 5 or 10) was
//! measured and not kept: at nice 10 the archive thread, not the socket,
//! lost the records; `SCHED_BATCH` at nice 0 changed nothing measurable.

use std::io;

/// Realtime priority asked for the receive thread with `receive.realtime`:
/// the lowest, above every normal thread; the kernel's threaded interrupt
/// handlers (50) stay above it.
pub const RECEIVE_RT_PRIORITY: i32 = 1;

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> io::Result<()> {
    imp::pin(cpu)
}

/// Raises the calling thread to `SCHED_FIFO` at [`RECEIVE_RT_PRIORITY`].
pub fn realtime() -> io::Result<()> {
    imp::realtime()
}

/// The CPUs the process may run on (for checking `receive.cpu`); `None`
/// where threads cannot be pinned.
pub fn allowed_cpus() -> Option<Vec<usize>> {
    imp::allowed_cpus()
}

#[cfg(target_os = "linux")]
mod imp {
    use super::RECEIVE_RT_PRIORITY;
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    use std::io;

    pub(super) fn realtime() -> io::Result<()> {
        let param = libc::sched_param {
            sched_priority: RECEIVE_RT_PRIORITY,
        };
        // SAFETY: pid 0 is the calling thread; `param` outlives the call.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub(super) fn pin(cpu: usize) -> io::Result<()> {
        let mut set = CpuSet::new();
        set.set(cpu).map_err(io::Error::from)?;
        // pid 0: the calling thread.
        sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
    }

    pub(super) fn allowed_cpus() -> Option<Vec<usize>> {
        let set = sched_getaffinity(Pid::from_raw(0)).ok()?;
        Some(
            (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .collect(),
        )
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;

    pub(super) fn realtime() -> io::Result<()> {
        Err(unsupported())
    }

    pub(super) fn pin(_cpu: usize) -> io::Result<()> {
        Err(unsupported())
    }

    pub(super) fn allowed_cpus() -> Option<Vec<usize>> {
        None
    }

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "not supported on this platform (Linux only)",
        )
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn pin_to_an_allowed_cpu_changes_this_thread_only() {
        let before = allowed_cpus().unwrap();
        let last = *before.last().unwrap();
        let got = std::thread::spawn(move || {
            pin(last).unwrap();
            allowed_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(got, vec![last]);
        assert_eq!(allowed_cpus().unwrap(), before);
    }
}
