//! The orchestrator's file descriptors. At start it raises its soft
//! `RLIMIT_NOFILE` to the hard limit; HTTP connections get only what is
//! left after a reserve for the relays (their pipes and pidfds, and what
//! spawning one takes for a moment), so that starting a relay never fails
//! for want of a descriptor. Relays get the original soft limit back.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Descriptors kept for everything but relays and HTTP connections: the
/// runtime, signals, inotify, the listener, stdio, reading channel files,
/// the one a refused connection holds for a moment, and what a spawn uses
/// for a moment (the child's pipe ends, /dev/null, the exec-error pipe).
pub const RESERVE_BASE: u64 = 64;
/// Per channel: its relay's stdout and stderr pipes and its pidfd (3,
/// measured), plus one to spare.
pub const RESERVE_PER_CHANNEL: u64 = 4;
/// The reserve counts at least this many channels, so that channels added
/// by a later reload find room too.
pub const RESERVE_MIN_CHANNELS: u64 = 16;
/// HTTP connections allowed even when the limit leaves less than this.
pub const MIN_HTTP_CONNECTIONS: usize = 4;

/// The soft limit before [`raise`], which children get back; `u64::MAX`
/// while not raised.
static ORIGINAL_SOFT: AtomicU64 = AtomicU64::new(u64::MAX);

/// `RLIMIT_NOFILE` before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now: the hard limit (or the kernel's `nr_open` if
    /// the hard limit is unlimited), unless raising failed.
    pub soft: u64,
    pub hard: u64,
}

fn get() -> io::Result<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// `rlim_t` is u64 on 64-bit Linux and u32 on 32-bit targets (armv7):
/// the limits are u64 here, converted at the system calls.
#[allow(clippy::useless_conversion)]
fn to_u64(v: libc::rlim_t) -> u64 {
    u64::from(v)
}

/// See [`to_u64`]; a value beyond a 32-bit `rlim_t` becomes `RLIM_INFINITY`.
#[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
fn to_rlim(v: u64) -> libc::rlim_t {
    libc::rlim_t::try_from(v).unwrap_or(libc::RLIM_INFINITY)
}

/// The soft `RLIMIT_NOFILE` now.
pub fn current() -> io::Result<u64> {
    Ok(to_u64(get()?.rlim_cur))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and remembers the old
/// one for [`child_limit`].
pub fn raise() -> io::Result<NoFile> {
    let r = get()?;
    let (before, hard) = (to_u64(r.rlim_cur), to_u64(r.rlim_max));
    // No process may have more than nr_open descriptors, whatever its limit.
    let mut target = hard;
    if r.rlim_max == libc::RLIM_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if target <= before {
        return Ok(NoFile {
            before,
            soft: before,
            hard,
        });
    }
    let new = libc::rlimit {
        rlim_cur: to_rlim(target),
        rlim_max: r.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(io::Error::last_os_error());
    }
    ORIGINAL_SOFT.store(before, Ordering::Relaxed);
    Ok(NoFile {
        before,
        soft: target,
        hard,
    })
}

/// The limit a relay gets: the soft limit the orchestrator was started
/// with (and the same hard limit), if [`raise`] raised it. A relay needs a
/// few dozen descriptors, and a program that is not ready for a huge soft
/// limit (select(), loops closing every descriptor) should not get one.
/// Set it between fork and exec (setrlimit is a plain system call).
pub fn child_limit() -> Option<libc::rlimit> {
    let soft = ORIGINAL_SOFT.load(Ordering::Relaxed);
    if soft == u64::MAX {
        return None;
    }
    let r = get().ok()?;
    Some(libc::rlimit {
        rlim_cur: to_rlim(soft),
        rlim_max: r.rlim_max,
    })
}

/// Descriptors kept out of the HTTP API's reach for `channels` channels.
pub fn reserve(channels: usize) -> u64 {
    RESERVE_BASE + RESERVE_PER_CHANNEL * (channels as u64).max(RESERVE_MIN_CHANNELS)
}

/// The HTTP connection cap: `wanted` (`http.max_connections`), lowered so
/// that the cap plus the reserve for `channels` channels fits in `limit`
/// (never below [`MIN_HTTP_CONNECTIONS`]).
pub fn http_cap(wanted: usize, limit: u64, channels: usize) -> usize {
    let room = limit.saturating_sub(reserve(channels));
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    wanted.min(room).max(MIN_HTTP_CONNECTIONS.min(wanted))
}

/// The channel files in `dir` (`*.toml`), for sizing the reserve at start.
pub fn count_channel_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
                .count()
        })
        .unwrap_or(0)
}

/// Whether an error means that descriptors ran out (EMFILE for this
/// process, ENFILE for the whole system): a reason to try again shortly,
/// not a fault of what was being done.
pub fn is_exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve_free() {
        // The minimal reserve: 64 + 4 × 16.
        assert_eq!(reserve(0), 128);
        assert_eq!(reserve(16), 128);
        assert_eq!(reserve(100), 464);
        // Plenty of room: the configured cap.
        assert_eq!(http_cap(256, 524_288, 10), 256);
        assert_eq!(http_cap(256, 384, 2), 256);
        // Too little: lowered so that cap + reserve fits.
        assert_eq!(http_cap(256, 256, 2), 128);
        assert_eq!(http_cap(256, 1024, 200), 1024 - 864);
        // Hardly any room: a few connections still.
        assert_eq!(http_cap(256, 100, 2), MIN_HTTP_CONNECTIONS);
        assert_eq!(http_cap(2, 100, 2), 2);
    }

    #[test]
    fn exhaustion_is_emfile_or_enfile() {
        assert!(is_exhausted(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhausted(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhausted(&io::Error::from_raw_os_error(libc::ENOENT)));
        assert!(!is_exhausted(&io::Error::other("x")));
    }
}
