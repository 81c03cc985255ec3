//! Hints to the kernel about archive files, in one place per platform:
//! start the writeback of a range, drop a range from the page cache,
//! allocate space ahead. On Linux `sync_file_range`, `posix_fadvise` and
//! `fallocate` (their 64-bit-offset forms, so files past 2 GiB are hinted
//! right on 32-bit ARM too); elsewhere (macOS) none of them: the kernel
//! writes back and caches by its own rules, and files grow as written.
//! Every hint is best effort: an error changes nothing but the hint.

use std::os::fd::RawFd;

/// Starts writing back `len` bytes from `from` without waiting.
#[cfg(target_os = "linux")]
pub(crate) fn start_writeback(fd: RawFd, from: u64, len: u64) {
    // SAFETY: integer arguments only; the caller keeps `fd` open.
    unsafe {
        libc::sync_file_range(
            fd,
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Lets the page cache drop `len` bytes from `from` (0: to the end).
#[cfg(target_os = "linux")]
pub(crate) fn drop_cached(fd: RawFd, from: u64, len: u64) {
    // SAFETY: integer arguments only; the caller keeps `fd` open.
    unsafe {
        libc::posix_fadvise64(
            fd,
            from as libc::off64_t,
            len as libc::off64_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// Allocates `len` bytes from `from` without changing the file's size;
/// whether the filesystem did.
#[cfg(target_os = "linux")]
pub(crate) fn allocate(fd: RawFd, from: u64, len: u64) -> bool {
    // SAFETY: integer arguments only; the caller keeps `fd` open.
    let r = unsafe {
        libc::fallocate64(
            fd,
            libc::FALLOC_FL_KEEP_SIZE,
            from as libc::off64_t,
            len as libc::off64_t,
        )
    };
    r == 0
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_fd: RawFd, _from: u64, _len: u64) {}

#[cfg(not(target_os = "linux"))]
pub(crate) fn drop_cached(_fd: RawFd, _from: u64, _len: u64) {}

#[cfg(not(target_os = "linux"))]
pub(crate) fn allocate(_fd: RawFd, _from: u64, _len: u64) -> bool {
    false
}
