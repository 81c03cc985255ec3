//! The portable I/O path: one datagram per system call, on any POSIX
//! kernel (macOS, the BSDs), where Linux's batch calls ([`crate::mmsg`])
//! are missing.
//!
//! - receive: `recvmsg` once per datagram, filling the same slots a batch
//!   would (the first call waits, the others take what is queued), with
//!   the arrival stamp of `SO_TIMESTAMP` (microseconds) where the socket
//!   asked for it;
//! - send: `send` once per datagram on a connected socket, no UDP GSO;
//! - no kernel drop counter: `SO_RXQ_OVFL` is Linux's, so the stats line
//!   reports `kernel_drops` as absent (`null`), never as 0.
//!
//! On Linux the relay takes this path when [`PORTABLE_ENV`] asks for it
//! (`SPEEDDATA_PORTABLE_IO=1`), so that the path macOS runs is tested here;
//! the ready line says which path runs (`"io": "mmsg"` or `"portable"`).
//! What the two paths share ([`SendOutcome`], [`retry_eintr`]) lives here,
//! where every platform compiles it.

use std::ffi::OsStr;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

use crate::status::IoPath;

/// The environment variable that forces the portable path on Linux:
/// `SPEEDDATA_PORTABLE_IO=1` (also `on`, `true`, `yes`).
pub const PORTABLE_ENV: &str = "SPEEDDATA_PORTABLE_IO";

/// Whether the value of [`PORTABLE_ENV`] asks for the portable path.
pub fn portable_wanted(value: Option<&OsStr>) -> bool {
    value.and_then(|v| v.to_str()).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "true" | "yes"
        )
    })
}

/// The path this process runs: the batch calls on Linux unless
/// [`PORTABLE_ENV`] asks otherwise; the portable path everywhere else.
pub fn io_path() -> IoPath {
    if cfg!(target_os = "linux") && !portable_wanted(std::env::var_os(PORTABLE_ENV).as_deref()) {
        IoPath::Mmsg
    } else {
        IoPath::Portable
    }
}

/// Runs a system call that returns a count or -1, again while it is
/// interrupted by a signal (`EINTR`).
pub fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let rc = call();
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What one send of a batch did, counted in datagrams (with GSO, a message
/// counts as the datagrams it carries).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Datagrams the kernel refused (each skipped after its error).
    pub failed: u64,
    /// The last error (errno), if any datagram failed.
    pub error: Option<i32>,
}

/// Receiver of up to `n` datagrams per [`RecvOne::recv`], one `recvmsg`
/// each, into slots of `slot` bytes; the same interface as
/// [`crate::mmsg::RecvBatch`].
pub struct RecvOne {
    fd: RawFd,
    n: usize,
    slot: usize,
    bufs: Box<[u8]>,
    lens: Vec<usize>,
    senders: Vec<SocketAddrV4>,
    truncated: Vec<bool>,
    stamps: Vec<Option<i64>>,
    /// Room for the control messages of one datagram (an arrival stamp).
    cmsg: Vec<u64>,
}

impl RecvOne {
    /// A receiver for the socket `fd`; `fd` must stay open while it is used.
    pub fn new(fd: RawFd, n: usize, slot: usize) -> RecvOne {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(size_of::<libc::timeval>() as u32) } as usize;
        RecvOne {
            fd,
            n,
            slot,
            bufs: vec![0u8; n * slot].into_boxed_slice(),
            lens: vec![0; n],
            senders: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); n],
            truncated: vec![false; n],
            stamps: vec![None; n],
            // Twice the room: some kernels align the first header further.
            cmsg: vec![0u64; 2 * space.div_ceil(8)],
        }
    }

    /// Receives up to `n` datagrams, one system call each. The first waits
    /// (until one arrives or the socket's read timeout passes: `WouldBlock`)
    /// unless `nonblocking`; the others take what is queued. An error after
    /// the first datagram ends the batch; the next call meets it again.
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<usize> {
        let mut got = 0;
        while got < self.n {
            let flags = if got == 0 && !nonblocking {
                0
            } else {
                libc::MSG_DONTWAIT
            };
            match self.recv_one(got, flags) {
                Ok(()) => got += 1,
                Err(e) if got == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(got)
    }

    fn recv_one(&mut self, i: usize, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: all-zero is a valid sockaddr_in / msghdr.
        let mut addr: libc::sockaddr_in = unsafe { zeroed() };
        let mut iov = libc::iovec {
            iov_base: self.bufs[i * self.slot..].as_mut_ptr() as *mut libc::c_void,
            iov_len: self.slot,
        };
        let mut h: libc::msghdr = unsafe { zeroed() };
        h.msg_name = &mut addr as *mut libc::sockaddr_in as *mut libc::c_void;
        h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = self.cmsg.as_mut_ptr() as *mut libc::c_void;
        h.msg_controllen = (self.cmsg.len() * 8) as _;
        let fd = self.fd;
        // SAFETY: the header points at a buffer of `slot` bytes, an address
        // and a control buffer, all sized as declared and alive for the call.
        let len = retry_eintr(|| unsafe { libc::recvmsg(fd, &mut h, flags) })?;
        self.lens[i] = len.min(self.slot);
        self.truncated[i] = h.msg_flags & libc::MSG_TRUNC != 0;
        self.senders[i] = SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u16::from_be(addr.sin_port),
        );
        self.stamps[i] = stamp(&h);
        Ok(())
    }

    /// The bytes of the `i`-th datagram of the last call.
    #[inline]
    pub fn datagram(&self, i: usize) -> &[u8] {
        &self.bufs[i * self.slot..i * self.slot + self.lens[i]]
    }

    /// The sender of the `i`-th datagram of the last call.
    #[inline]
    pub fn sender(&self, i: usize) -> SocketAddrV4 {
        self.senders[i]
    }

    /// Whether the kernel cut the `i`-th datagram short.
    #[inline]
    pub fn truncated(&self, i: usize) -> bool {
        self.truncated[i]
    }

    /// The kernel's arrival time of the `i`-th datagram, in ns since the
    /// epoch, if the socket asked for it (`SO_TIMESTAMP`).
    #[inline]
    pub fn timestamp_ns(&self, i: usize) -> Option<i64> {
        self.stamps[i]
    }
}

/// The `SCM_TIMESTAMP` control message of a received header, in ns.
fn stamp(h: &libc::msghdr) -> Option<i64> {
    // SAFETY: the kernel filled msg_control up to msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMP {
                let tv: libc::timeval = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const _);
                #[allow(clippy::useless_conversion)] // time_t is i32 on 32-bit Linux
                return Some(i64::from(tv.tv_sec) * 1_000_000_000 + i64::from(tv.tv_usec) * 1_000);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Sender of one datagram per `send` on a connected socket; the same
/// interface as [`crate::mmsg::SendBatch::send`], without GSO.
pub struct SendOne {
    fd: RawFd,
}

impl SendOne {
    /// A sender on the connected socket `fd`, which must stay open while it
    /// is used.
    pub fn new(fd: RawFd) -> SendOne {
        SendOne { fd }
    }

    /// Sends every datagram of `dgrams`, one call each (again on `EINTR`).
    /// A datagram the kernel refuses is counted as failed and skipped.
    pub fn send<'a>(&mut self, dgrams: impl IntoIterator<Item = &'a [u8]>) -> SendOutcome {
        let mut out = SendOutcome::default();
        for d in dgrams {
            let fd = self.fd;
            // SAFETY: the slice is alive and `len` bytes long for the call.
            let r = retry_eintr(|| unsafe {
                libc::send(fd, d.as_ptr() as *const libc::c_void, d.len(), 0)
            });
            match r {
                Ok(_) => out.sent += 1,
                Err(e) => {
                    out.failed += 1;
                    out.error = e.raw_os_error();
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        (tx, rx)
    }

    #[test]
    fn the_environment_asks_for_the_portable_path_with_1() {
        for v in ["1", "on", "TRUE", " yes "] {
            assert!(portable_wanted(Some(OsStr::new(v))), "{v}");
        }
        for v in ["0", "", "off", "mmsg"] {
            assert!(!portable_wanted(Some(OsStr::new(v))), "{v}");
        }
        assert!(!portable_wanted(None));
    }

    #[test]
    fn datagrams_go_one_by_one_and_come_back_with_lengths_and_senders() {
        let (tx, rx) = pair();
        let mut send = SendOne::new(tx.as_raw_fd());
        let dgrams: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let out = send.send(dgrams.iter().map(Vec::as_slice));
        assert_eq!(
            out,
            SendOutcome {
                sent: 5,
                failed: 0,
                error: None
            }
        );
        std::thread::sleep(Duration::from_millis(20));
        let mut recv = RecvOne::new(rx.as_raw_fd(), 8, 64);
        assert_eq!(recv.recv(false).unwrap(), 5);
        let from = match tx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        for (i, d) in dgrams.iter().enumerate() {
            assert_eq!(recv.datagram(i), d.as_slice());
            assert_eq!(recv.sender(i), from);
            assert!(!recv.truncated(i));
            assert_eq!(recv.timestamp_ns(i), None);
        }
        // Nothing queued: the first call waits for the read timeout.
        let e = recv.recv(false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(
            recv.recv(true).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_batch_takes_at_most_n_and_a_long_datagram_is_cut_and_says_so() {
        let (tx, rx) = pair();
        let mut send = SendOne::new(tx.as_raw_fd());
        let long = vec![7u8; 100];
        let short = vec![1u8; 3];
        send.send([long.as_slice(), short.as_slice(), short.as_slice()]);
        std::thread::sleep(Duration::from_millis(20));
        let mut recv = RecvOne::new(rx.as_raw_fd(), 2, 64);
        assert_eq!(recv.recv(true).unwrap(), 2);
        assert!(recv.truncated(0));
        assert_eq!(recv.datagram(0), &long[..64]);
        assert_eq!(recv.datagram(1), short.as_slice());
        assert_eq!(recv.recv(true).unwrap(), 1);
    }

    #[test]
    fn a_refused_datagram_is_counted_and_skipped() {
        let (tx, _rx) = pair();
        let mut send = SendOne::new(tx.as_raw_fd());
        let huge = vec![0u8; 70_000];
        let ok = vec![0u8; 8];
        let out = send.send([huge.as_slice(), ok.as_slice()]);
        assert_eq!(out.sent, 1);
        assert_eq!(out.failed, 1);
        assert_eq!(out.error, Some(libc::EMSGSIZE));
    }

    #[test]
    fn arrival_stamps_come_from_so_timestamp() {
        let (tx, rx) = pair();
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads an int.
        let rc = unsafe {
            libc::setsockopt(
                rx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMP,
                &on as *const libc::c_int as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        tx.send(b"x").unwrap();
        let mut recv = RecvOne::new(rx.as_raw_fd(), 4, 64);
        assert_eq!(recv.recv(false).unwrap(), 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let t = recv.timestamp_ns(0).expect("a stamp");
        assert!(t <= now && now - t < 5_000_000_000, "{t} {now}");
    }
}
