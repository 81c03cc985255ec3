//! The frozen syscall layer: batched UDP receive and send with `recvmmsg`
//! and `sendmmsg`, and nothing else.
//!
//! Both the relay ([`crate::net`]) and the benchmarks' ceiling forwarder
//! (`benches/src/bin/ceiling.rs`) receive and send through this module, so
//! the ceiling measures the same system-call code the relay runs, not a
//! copy of it that drifts. Keep it small and change it rarely: a change here
//! moves both sides of the relay-to-ceiling ratio at once, which is the
//! point, but it must be measured (`cargo bench -p speeddata-benches`).
//!
//! What it holds: the datagram slots, their iovecs, the `mmsghdr` arrays,
//! the sender addresses and control messages, all allocated once; one
//! `recvmmsg` into N slots, giving each datagram's bytes, sender and
//! truncation, the kernel's drop counter (`SO_RXQ_OVFL`) and arrival
//! stamps (`SO_TIMESTAMPNS`) where the socket asked for them; one
//! `sendmmsg` of N slices on a connected socket, runs of equal-length
//! datagrams grouped into UDP GSO messages where the kernel offers it
//! ([`SendBatch`]; `SPEEDDATA_GSO=0` turns that off, for the relay and the
//! ceiling alike). Both retry `EINTR`. The batch calls allocate nothing.
//! Sockets and their options are the caller's.
//!
//! Linux only; [`crate::portable_io`] is the path of other kernels (and of
//! Linux with `SPEEDDATA_PORTABLE_IO=1`).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

use crate::portable_io::retry_eintr;
pub use crate::portable_io::SendOutcome;

/// Batch receiver over `recvmmsg`: `n` slots of `slot` bytes, each with
/// room for its sender's address and its control messages.
pub struct RecvBatch {
    fd: RawFd,
    n: usize,
    slot: usize,
    bufs: Box<[u8]>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    cmsgs: Vec<u64>,
    cmsg_words: usize,
    /// Latest value of the kernel's drop counter for this socket
    /// (`SO_RXQ_OVFL`, where the socket asked for it; 0 otherwise).
    pub kernel_drops: u32,
}

// SAFETY: the raw pointers in `hdrs` and `iovs` point into heap buffers
// owned by the same value; moving the value to another thread keeps them
// valid.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// A receiver for the socket `fd` reading up to `n` datagrams of at
    /// most `slot` bytes per call (the kernel cuts longer ones short, see
    /// [`RecvBatch::truncated`]). `fd` must stay open while it is used.
    pub fn new(fd: RawFd, n: usize, slot: usize) -> RecvBatch {
        // Room for the drop counter and an arrival stamp.
        // SAFETY: CMSG_SPACE is a pure computation.
        let cmsg_space = unsafe {
            libc::CMSG_SPACE(size_of::<u32>() as u32)
                + libc::CMSG_SPACE(size_of::<libc::timespec>() as u32)
        } as usize;
        let cmsg_words = cmsg_space.div_ceil(8);
        let mut r = RecvBatch {
            fd,
            n,
            slot,
            bufs: vec![0u8; n * slot].into_boxed_slice(),
            // SAFETY: all-zero is a valid mmsghdr / iovec / sockaddr_in.
            hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            iovs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            addrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            cmsgs: vec![0u64; n * cmsg_words],
            cmsg_words,
            kernel_drops: 0,
        };
        for i in 0..n {
            r.iovs[i] = libc::iovec {
                iov_base: r.bufs[i * slot..].as_mut_ptr() as *mut libc::c_void,
                iov_len: slot,
            };
        }
        for i in 0..n {
            let h = &mut r.hdrs[i].msg_hdr;
            h.msg_iov = &mut r.iovs[i];
            h.msg_iovlen = 1;
        }
        r
    }

    /// Receives up to `n` datagrams with one `recvmmsg` (again on `EINTR`).
    /// Blocks until one arrives (or the socket's read timeout passes:
    /// `WouldBlock`) unless `nonblocking`; then takes what is queued without
    /// waiting. Returns how many arrived, and updates
    /// [`RecvBatch::kernel_drops`].
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<usize> {
        for i in 0..self.n {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_control = self.cmsgs[i * self.cmsg_words..].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = (self.cmsg_words * 8) as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        let flags = if nonblocking {
            libc::MSG_DONTWAIT
        } else {
            libc::MSG_WAITFORONE
        };
        let got = retry_eintr(|| {
            // SAFETY: every header points at buffers owned by self, sized as
            // declared.
            unsafe {
                libc::recvmmsg(
                    self.fd,
                    self.hdrs.as_mut_ptr(),
                    self.n as libc::c_uint,
                    flags,
                    std::ptr::null_mut(),
                ) as isize
            }
        })?;
        self.read_drop_counter(got);
        Ok(got)
    }

    fn read_drop_counter(&mut self, got: usize) {
        // The counter is cumulative: the last message that carries it wins.
        for i in (0..got).rev() {
            if let Some(v) = self.control::<u32>(i, libc::SO_RXQ_OVFL) {
                self.kernel_drops = v;
                return;
            }
        }
    }

    /// The `i`-th datagram's control message of `cmsg_type` (level
    /// `SOL_SOCKET`), if the kernel sent one.
    fn control<T>(&self, i: usize, cmsg_type: libc::c_int) -> Option<T> {
        let h = &self.hdrs[i].msg_hdr;
        // SAFETY: the kernel filled msg_control up to msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == cmsg_type {
                    return Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const T));
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }

    /// The bytes of the `i`-th datagram of the last call.
    #[inline]
    pub fn datagram(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(self.slot);
        &self.bufs[i * self.slot..i * self.slot + len]
    }

    /// The sender of the `i`-th datagram of the last call.
    #[inline]
    pub fn sender(&self, i: usize) -> SocketAddrV4 {
        let a = &self.addrs[i];
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        )
    }

    /// Whether the kernel cut the `i`-th datagram of the last call short
    /// (it was longer than a slot).
    #[inline]
    pub fn truncated(&self, i: usize) -> bool {
        self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// The kernel's arrival time of the `i`-th datagram of the last call,
    /// in ns since the epoch, if the socket asked for it (`SO_TIMESTAMPNS`).
    // time_t and c_long are i64 on 64-bit targets (the conversions are
    // no-ops there) and i32 on 32-bit ones (armv7).
    #[allow(clippy::useless_conversion)]
    pub fn timestamp_ns(&self, i: usize) -> Option<i64> {
        self.control::<libc::timespec>(i, libc::SCM_TIMESTAMPNS)
            // time_t is 32 bits on 32-bit ARM: widen before multiplying.
            .map(|ts| {
                #[allow(clippy::useless_conversion)]
                let (sec, nsec) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
                sec * 1_000_000_000 + nsec
            })
    }
}

/// The environment variable that turns UDP GSO off in every [`SendBatch`]:
/// `SPEEDDATA_GSO=0` (also `off`, `false`, `no`). Read by
/// [`SendBatch::new`].
pub const GSO_ENV: &str = "SPEEDDATA_GSO";

/// Most datagrams one GSO message carries: `UDP_MAX_SEGMENTS` of the
/// kernels that introduced UDP GSO (4.18; newer ones allow 128).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most payload bytes one GSO message carries in all: the IPv4 UDP maximum
/// (65,535 less the IP and UDP headers).
pub const GSO_MAX_BYTES: usize = 65_507;

/// `UDP_SEGMENT` (linux/udp.h): as a socket option, the default segment
/// size; as a control message of level `SOL_UDP`, the segment size of one
/// send. Not in `libc` for glibc targets.
const UDP_SEGMENT: libc::c_int = 103;

/// Whether the value of [`GSO_ENV`] leaves GSO on: anything but `0`,
/// `off`, `false` or `no` (unset: on).
pub fn gso_wanted(value: Option<&std::ffi::OsStr>) -> bool {
    match value.and_then(|v| v.to_str()) {
        Some(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        ),
        None => true,
    }
}

/// Whether the kernel knows UDP GSO on the socket `fd`: it reads the
/// `UDP_SEGMENT` socket option. A kernel older than 4.18 refuses to
/// (`ENOPROTOOPT`), and would ignore the control message instead of
/// refusing it: it would send a run as one long datagram, so the option is
/// asked first. Other socket types refuse too.
fn kernel_offers_gso(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            UDP_SEGMENT,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    rc == 0
}

/// Errors with which a kernel or a socket refuses a GSO send as such
/// (rather than its datagrams): no GSO (`ENOPROTOOPT`, `EOPNOTSUPP`), a
/// socket or path that cannot take it (`EINVAL`: checksums off, a segment
/// longer than the path MTU on older kernels; `EIO`: IPsec, a device
/// without checksum offload on older kernels; `EMSGSIZE`: a segment longer
/// than the path MTU, which plain sends would fragment). The datagrams go
/// again one by one.
fn is_gso_refusal(errno: i32) -> bool {
    matches!(
        errno,
        libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::EMSGSIZE
    )
}

/// Batch sender over `sendmmsg` on a connected socket, with UDP GSO
/// (generic segmentation offload, `UDP_SEGMENT`) where the kernel offers
/// it: a run of consecutive datagrams of equal length (fixed-layout
/// telemetry) goes as one message, one iovec per datagram (no copy) and a
/// `UDP_SEGMENT` control message with their length; the kernel cuts it
/// back into the same datagrams, so receivers see exactly what they would
/// without it, at a fraction of the per-datagram send cost. A run holds at
/// most [`GSO_MAX_SEGMENTS`] datagrams and [`GSO_MAX_BYTES`] bytes; a
/// longer one is split. A run of one, and empty datagrams, go as plain
/// messages.
///
/// GSO is used when [`GSO_ENV`] does not turn it off and the kernel knows
/// it. If the kernel refuses a GSO message as such ([`is_gso_refusal`]),
/// that message's datagrams are sent again one by one (none is lost or
/// counted twice) and: for `EMSGSIZE` (a segment longer than the path MTU
/// allows), datagrams of that length and longer go without GSO from then
/// on (logged the first time); for the other errors (no GSO on this
/// kernel, socket or route), GSO is turned off for this sender for good
/// (logged).
pub struct SendBatch {
    fd: RawFd,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    /// Per message of the last build: how many datagrams it carries.
    segments: Vec<usize>,
    /// Per message: room for one `UDP_SEGMENT` control message.
    cmsgs: Vec<u64>,
    cmsg_words: usize,
    gso: bool,
    /// The longest datagram grouped with GSO (shorter after an `EMSGSIZE`).
    gso_longest: usize,
    /// Whether an `EMSGSIZE` refusal was logged.
    gso_logged: bool,
    /// Messages handed to the kernel by the last [`SendBatch::send`] (for
    /// the tests: how the datagrams were grouped).
    last_messages: usize,
}

// SAFETY: the header pointers are rebuilt on every call; between calls they
// point at nothing that is dereferenced.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// A sender on the connected socket `fd`, up to `capacity` datagrams
    /// per call, with GSO unless [`GSO_ENV`] turns it off (read now) or the
    /// kernel does not offer it. `fd` must stay open while it is used.
    pub fn new(fd: RawFd, capacity: usize) -> SendBatch {
        let wanted = gso_wanted(std::env::var_os(GSO_ENV).as_deref());
        SendBatch::with_gso(fd, capacity, wanted)
    }

    /// [`SendBatch::new`] with GSO asked for (`gso`, still only where the
    /// kernel offers it) or not, whatever the environment says.
    pub fn with_gso(fd: RawFd, capacity: usize, gso: bool) -> SendBatch {
        // SAFETY: CMSG_SPACE is a pure computation.
        let cmsg_space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
        let cmsg_words = cmsg_space.div_ceil(8);
        SendBatch {
            fd,
            // SAFETY: all-zero is a valid mmsghdr / iovec.
            hdrs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            iovs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            segments: vec![0; capacity],
            cmsgs: vec![0u64; capacity * cmsg_words],
            cmsg_words,
            gso: gso && kernel_offers_gso(fd),
            gso_longest: GSO_MAX_BYTES,
            gso_logged: false,
            last_messages: 0,
        }
    }

    /// Whether this sender groups equal-length datagrams with UDP GSO (false
    /// when turned off, not offered by the kernel, or refused by it; while
    /// true, datagrams the path MTU refused GSO for still go without it).
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Sends every datagram of `dgrams` (at most the capacity; more are
    /// ignored) with `sendmmsg` (again on `EINTR`, and again after a
    /// partial send), runs of equal length as GSO messages. A message the
    /// kernel refuses counts all its datagrams as failed and is skipped
    /// (after a refusal of GSO itself, its datagrams go again one by one).
    pub fn send<'a>(&mut self, dgrams: impl IntoIterator<Item = &'a [u8]>) -> SendOutcome {
        let n = self.load(dgrams);
        let mut out = SendOutcome::default();
        self.last_messages = 0;
        // The first datagram not sent or counted as failed yet.
        let mut first = 0;
        while first < n {
            let m = self.build(first, n);
            let mut done = 0;
            while done < m {
                let fd = self.fd;
                let hdrs = self.hdrs[done..].as_mut_ptr();
                // SAFETY: headers point at iovecs into slices borrowed for
                // this call and at control data owned by self; the socket
                // is connected.
                let sent = retry_eintr(|| unsafe {
                    libc::sendmmsg(fd, hdrs, (m - done) as libc::c_uint, 0) as isize
                });
                let errno = match sent {
                    Ok(k) if k > 0 => {
                        let k = k.min(m - done);
                        let segs: usize = self.segments[done..done + k].iter().sum();
                        self.last_messages += k;
                        out.sent += segs as u64;
                        first += segs;
                        done += k;
                        continue;
                    }
                    // Nothing sent, no error reported: take the first
                    // remaining message as refused.
                    Ok(_) => io::Error::last_os_error().raw_os_error(),
                    Err(e) => e.raw_os_error(),
                };
                self.last_messages += 1;
                let segs = self.segments[done];
                if let Some(e) = errno.filter(|&e| segs > 1 && is_gso_refusal(e)) {
                    self.refuse_gso(e, self.iovs[first].iov_len);
                    // Build again from this message's first datagram,
                    // which no longer goes with GSO.
                    break;
                }
                out.failed += segs as u64;
                out.error = errno;
                first += segs;
                done += 1;
            }
        }
        out
    }

    /// Points the iovecs at `dgrams` (at most the capacity); returns how
    /// many.
    fn load<'a>(&mut self, dgrams: impl IntoIterator<Item = &'a [u8]>) -> usize {
        let mut n = 0;
        for d in dgrams.into_iter().take(self.hdrs.len()) {
            self.iovs[n] = libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            };
            n += 1;
        }
        n
    }

    /// One `sendmmsg` call for `dgrams` (at most the capacity; again on
    /// `EINTR`), laid out as [`SendBatch::send`] does, for a sender that
    /// keeps its datagrams in order and sends again what the kernel did not
    /// take: returns how many of the first datagrams went (at least 1), or
    /// the error with which the kernel refused the first message (nothing
    /// sent). A refusal of GSO as such is handled as in `send`: the call is
    /// made again without it.
    pub fn send_some<'a>(
        &mut self,
        dgrams: impl IntoIterator<Item = &'a [u8]>,
    ) -> io::Result<usize> {
        let n = self.load(dgrams);
        if n == 0 {
            return Ok(0);
        }
        loop {
            let m = self.build(0, n);
            let fd = self.fd;
            let hdrs = self.hdrs.as_mut_ptr();
            // SAFETY: as in `send`: headers point at iovecs into slices
            // borrowed for this call and at control data owned by self.
            let sent =
                retry_eintr(|| unsafe { libc::sendmmsg(fd, hdrs, m as libc::c_uint, 0) as isize });
            self.last_messages = m;
            let e = match sent {
                Ok(k) if k > 0 => return Ok(self.segments[..k.min(m)].iter().sum()),
                Ok(_) => io::Error::last_os_error(),
                Err(e) => e,
            };
            match e.raw_os_error() {
                Some(errno) if self.segments[0] > 1 && is_gso_refusal(errno) => {
                    self.refuse_gso(errno, self.iovs[0].iov_len);
                }
                _ => return Err(e),
            }
        }
    }

    /// The kernel refused a GSO message of `len`-byte datagrams: no GSO
    /// for datagrams of `len` bytes and more (`EMSGSIZE`), or none at all.
    fn refuse_gso(&mut self, errno: i32, len: usize) {
        let error = io::Error::from_raw_os_error(errno);
        if errno == libc::EMSGSIZE {
            self.gso_longest = self.gso_longest.min(len - 1);
            if !self.gso_logged {
                self.gso_logged = true;
                tracing::warn!(
                    error = %error, length = len,
                    "the kernel refused UDP GSO for datagrams this long (longer than the path MTU): they are sent one by one"
                );
            }
        } else {
            // Once at most: GSO stays off.
            self.gso = false;
            tracing::warn!(
                error = %error,
                "the kernel refused a UDP GSO send on this socket: sending datagrams one by one from now on"
            );
        }
    }

    /// Lays out the datagrams `first..n` as messages from `hdrs[0]`:
    /// equal-length runs as GSO messages (while GSO is on), the rest one
    /// each. Returns how many messages.
    fn build(&mut self, first: usize, n: usize) -> usize {
        let mut m = 0;
        let mut i = first;
        while i < n {
            let len = self.iovs[i].iov_len;
            let mut k = 1;
            if self.gso && len > 0 && len <= self.gso_longest {
                let most = GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / len);
                while k < most && i + k < n && self.iovs[i + k].iov_len == len {
                    k += 1;
                }
            }
            // SAFETY: all-zero is a valid msghdr.
            let h = &mut self.hdrs[m].msg_hdr;
            *h = unsafe { zeroed() };
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = k as _;
            if k > 1 {
                let control = self.cmsgs[m * self.cmsg_words..].as_mut_ptr();
                h.msg_control = control as *mut libc::c_void;
                // SAFETY: CMSG_SPACE is a pure computation; the control
                // buffer holds cmsg_words words, at least that much, and
                // the header points at it, so CMSG_FIRSTHDR is inside it.
                unsafe {
                    h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    // len <= GSO_MAX_BYTES here, which fits a u16.
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, len as u16);
                }
            }
            self.segments[m] = k;
            m += 1;
            i += k;
        }
        m
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
        rx.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        (rx, tx)
    }

    #[test]
    fn a_batch_goes_out_and_comes_back_with_lengths_and_senders() {
        let (rx, tx) = pair();
        let from = match tx.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("{other}"),
        };
        let mut sender = SendBatch::new(tx.as_raw_fd(), 8);
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        let out = sender.send(payloads.iter().map(|p| p.as_slice()));
        assert_eq!(
            out,
            SendOutcome {
                sent: 5,
                failed: 0,
                error: None
            }
        );
        let mut batch = RecvBatch::new(rx.as_raw_fd(), 8, 64);
        let mut got = Vec::new();
        while got.len() < 5 {
            let n = batch.recv(false).unwrap();
            for i in 0..n {
                got.push(batch.datagram(i).to_vec());
                assert_eq!(batch.sender(i), from);
                assert!(!batch.truncated(i));
                assert_eq!(batch.timestamp_ns(i), None, "not asked for");
            }
        }
        assert_eq!(got, payloads);
        assert_eq!(batch.kernel_drops, 0);
    }

    #[test]
    fn a_datagram_longer_than_a_slot_is_cut_and_says_so() {
        let (rx, tx) = pair();
        let mut sender = SendBatch::new(tx.as_raw_fd(), 1);
        assert_eq!(sender.send([[7u8; 100].as_slice()]).sent, 1);
        let mut batch = RecvBatch::new(rx.as_raw_fd(), 2, 32);
        assert_eq!(batch.recv(false).unwrap(), 1);
        assert_eq!(batch.datagram(0), [7u8; 32]);
        assert!(batch.truncated(0));
    }

    #[test]
    fn more_datagrams_than_the_capacity_are_ignored_and_nothing_waiting_is_not_an_error() {
        let (rx, tx) = pair();
        let mut sender = SendBatch::new(tx.as_raw_fd(), 2);
        let out = sender.send([b"a".as_slice(), b"b", b"c"]);
        assert_eq!(out.sent, 2);
        let mut batch = RecvBatch::new(rx.as_raw_fd(), 4, 16);
        let mut n = 0;
        while n < 2 {
            n += batch.recv(false).unwrap();
        }
        let e = batch.recv(true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_refused_datagram_is_counted_and_skipped() {
        let (_rx, tx) = pair();
        let mut sender = SendBatch::new(tx.as_raw_fd(), 4);
        let big = vec![0u8; 70_000];
        let out = sender.send([b"a".as_slice(), &big, b"c"]);
        assert_eq!((out.sent, out.failed), (2, 1));
        assert_eq!(out.error, Some(libc::EMSGSIZE));
    }

    #[test]
    fn send_some_sends_in_order_and_stops_at_the_first_refusal() {
        let (_rx, tx) = pair();
        let mut sender = SendBatch::new(tx.as_raw_fd(), 4);
        let big = vec![0u8; 70_000];
        // The first message refused: nothing sent, the error.
        let e = sender.send_some([big.as_slice(), b"a"]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE));
        // A refused message after others: the ones before it went.
        assert_eq!(
            sender
                .send_some([b"a".as_slice(), b"b", &big, b"c"])
                .unwrap(),
            2
        );
        assert_eq!(sender.send_some(std::iter::empty()).unwrap(), 0);
    }

    // UDP GSO, for real, over loopback: every datagram must arrive whole,
    // in order, with its length, at a unicast receiver and at every receiver
    // of a multicast group joined on 127.0.0.1.

    use socket2::{Domain, Protocol, SockAddr, Socket, Type};

    const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn udp() -> Socket {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // Room for every case at once (rmem_max permitting).
        let _ = s.set_recv_buffer_size(4 << 20);
        s
    }

    fn local(s: &Socket) -> SocketAddrV4 {
        s.local_addr().unwrap().as_socket_ipv4().unwrap()
    }

    /// Where a case is sent: its receivers and a connected sender.
    struct Dest {
        receivers: Vec<Socket>,
        sender: Socket,
    }

    fn unicast() -> Dest {
        let rx = udp();
        rx.bind(&SockAddr::from(SocketAddrV4::new(LOCALHOST, 0)))
            .unwrap();
        let tx = udp();
        tx.bind(&SockAddr::from(SocketAddrV4::new(LOCALHOST, 0)))
            .unwrap();
        tx.connect(&SockAddr::from(local(&rx))).unwrap();
        Dest {
            receivers: vec![rx],
            sender: tx,
        }
    }

    /// A group of its own (`which`, and this process) with two receivers
    /// joined on 127.0.0.1; the sender sends through 127.0.0.1, TTL 0,
    /// loopback on: nothing leaves the host.
    fn multicast(which: u8) -> Dest {
        let group = Ipv4Addr::new(239, 255, 200 + which, (std::process::id() % 250) as u8 + 1);
        let mut receivers: Vec<Socket> = Vec::new();
        for _ in 0..2 {
            let rx = udp();
            rx.set_reuse_address(true).unwrap();
            rx.set_multicast_all_v4(false).unwrap();
            let port = receivers.first().map_or(0, |r| local(r).port());
            rx.bind(&SockAddr::from(SocketAddrV4::new(group, port)))
                .unwrap();
            rx.join_multicast_v4(&group, &LOCALHOST).unwrap();
            receivers.push(rx);
        }
        let tx = udp();
        tx.bind(&SockAddr::from(SocketAddrV4::new(LOCALHOST, 0)))
            .unwrap();
        tx.set_multicast_if_v4(&LOCALHOST).unwrap();
        tx.set_multicast_ttl_v4(0).unwrap();
        tx.set_multicast_loop_v4(true).unwrap();
        let to = SocketAddrV4::new(group, local(&receivers[0]).port());
        tx.connect(&SockAddr::from(to)).unwrap();
        Dest {
            receivers,
            sender: tx,
        }
    }

    /// Datagrams of these lengths, each telling its index in every byte it
    /// has room for (a merged, cut, swapped or missing one shows).
    fn datagrams(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .enumerate()
            .map(|(j, &len)| {
                let tag = (j as u32).to_le_bytes();
                (0..len)
                    .map(|b| if b < 4 { tag[b] } else { (j + b) as u8 })
                    .collect()
            })
            .collect()
    }

    /// Everything `rx` receives until nothing more comes (half a second).
    fn received(rx: &Socket, expected: usize) -> Vec<Vec<u8>> {
        let mut batch = RecvBatch::new(rx.as_raw_fd(), 64, 65_536);
        let mut got = Vec::new();
        loop {
            let nonblocking = got.len() >= expected;
            match batch.recv(nonblocking) {
                Ok(n) => {
                    for i in 0..n {
                        assert!(!batch.truncated(i));
                        got.push(batch.datagram(i).to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("recvmmsg: {e}"),
            }
        }
        assert_eq!(batch.kernel_drops, 0);
        got
    }

    /// Lengths to send, and how many messages GSO makes of them.
    fn cases() -> Vec<(&'static str, Vec<usize>, usize)> {
        let mut mixed = vec![10, 10, 10, 20, 20, 10, 0, 0, 1, 1, 1, 7];
        mixed.extend([300; 4]);
        mixed.push(5);
        vec![
            // 64 + 64 + 64 + 8.
            ("200 of 100 bytes", vec![100; 200], 4),
            // 10x3, 20x2, 10, 0, 0, 1x3, 7, 300x4, 5.
            ("mixed lengths", mixed, 9),
            // 64 + 64 + 2.
            ("130 of 1 byte", vec![1; 130], 3),
            // 65,507 / 3,000 = 21 a message: 21 + 19.
            ("40 of 3,000 bytes", vec![3000; 40], 2),
            // 3 + 2.
            ("5 of 20,000 bytes", vec![20_000; 5], 2),
            // One a message: no run fits twice in 65,507 bytes.
            ("2 of 40,000 bytes", vec![40_000; 2], 2),
            ("2 of 65,507 bytes", vec![65_507; 2], 2),
        ]
    }

    /// Sends every case through `dest` and checks each receiver got every
    /// datagram, whole and in order, and the counts. With `gso`, that it
    /// stayed on and grouped as expected.
    fn send_cases(dest: impl Fn() -> Dest, gso: bool) {
        for (name, sizes, gso_messages) in cases() {
            let dest = dest();
            let mut sender = SendBatch::with_gso(dest.sender.as_raw_fd(), sizes.len(), gso);
            assert_eq!(sender.gso(), gso, "{name}: the kernel offers UDP GSO");
            let sent = datagrams(&sizes);
            let out = sender.send(sent.iter().map(|d| d.as_slice()));
            assert_eq!(
                out,
                SendOutcome {
                    sent: sizes.len() as u64,
                    failed: 0,
                    error: None
                },
                "{name}"
            );
            assert_eq!(sender.gso(), gso, "{name}: GSO still on");
            let messages = if gso { gso_messages } else { sizes.len() };
            assert_eq!(sender.last_messages, messages, "{name}");
            for (r, rx) in dest.receivers.iter().enumerate() {
                let got = received(rx, sent.len());
                let lens: Vec<usize> = got.iter().map(Vec::len).collect();
                assert_eq!(lens, sizes, "{name}: receiver {r}: lengths");
                assert!(got == sent, "{name}: receiver {r}: contents");
            }
            // The same through send_some, again until all went.
            let mut done = 0;
            while done < sent.len() {
                done += sender
                    .send_some(sent[done..].iter().map(|d| d.as_slice()))
                    .unwrap();
            }
            for (r, rx) in dest.receivers.iter().enumerate() {
                let got = received(rx, sent.len());
                assert!(got == sent, "{name}: send_some: receiver {r}: contents");
            }
        }
    }

    #[test]
    fn gso_runs_arrive_as_separate_datagrams_on_unicast() {
        send_cases(unicast, true);
    }

    #[test]
    fn gso_runs_arrive_as_separate_datagrams_on_multicast_loopback() {
        send_cases(|| multicast(1), true);
    }

    #[test]
    fn without_gso_every_datagram_is_a_message_of_its_own() {
        send_cases(unicast, false);
        send_cases(|| multicast(2), false);
    }

    #[test]
    fn a_socket_that_refuses_gso_turns_it_off_and_loses_nothing() {
        // With UDP checksums off (SO_NO_CHECK) the kernel refuses GSO sends
        // (EINVAL), as a kernel without GSO would.
        const SO_NO_CHECK: libc::c_int = 11;
        let dest = unicast();
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads an int from `one`.
        let rc = unsafe {
            libc::setsockopt(
                dest.sender.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NO_CHECK,
                &one as *const libc::c_int as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let mut sender = SendBatch::with_gso(dest.sender.as_raw_fd(), 16, true);
        assert!(sender.gso());
        let sizes = [7, 50, 50, 50, 9, 9];
        let sent = datagrams(&sizes);
        let out = sender.send(sent.iter().map(|d| d.as_slice()));
        assert_eq!((out.sent, out.failed, out.error), (6, 0, None));
        assert!(!sender.gso(), "turned off after the refusal");
        // 7 and the refused 50x3, then one by one: 50, 50, 50, 9, 9.
        assert_eq!(sender.last_messages, 7);
        assert_eq!(received(&dest.receivers[0], sizes.len()), sent);
        // Off for good: one message per datagram from now on.
        let out = sender.send(sent.iter().map(|d| d.as_slice()));
        assert_eq!(out.sent, 6);
        assert_eq!(sender.last_messages, 6);
        assert_eq!(received(&dest.receivers[0], sizes.len()), sent);
    }

    #[test]
    fn a_refused_gso_message_counts_every_datagram_it_carried() {
        // Nobody listens: the first datagram's port unreachable comes back
        // as ECONNREFUSED on the next send, here a GSO message of five.
        let dest = unicast();
        let to = local(&dest.receivers[0]);
        drop(dest.receivers);
        let tx = dest.sender;
        let mut sender = SendBatch::with_gso(tx.as_raw_fd(), 8, true);
        assert_eq!(sender.send([b"x".as_slice()]).sent, 1);
        let sent = datagrams(&[20; 5]);
        let out = sender.send(sent.iter().map(|d| d.as_slice()));
        assert_eq!(
            out,
            SendOutcome {
                sent: 0,
                failed: 5,
                error: Some(libc::ECONNREFUSED)
            },
            "to {to}"
        );
        assert!(sender.gso(), "not a refusal of GSO itself");
    }

    #[test]
    fn the_environment_turns_gso_off_with_0() {
        use std::ffi::OsStr;
        for off in ["0", "off", "false", "no", " OFF "] {
            assert!(!gso_wanted(Some(OsStr::new(off))), "{off}");
        }
        for on in ["1", "on", "yes", ""] {
            assert!(gso_wanted(Some(OsStr::new(on))), "{on}");
        }
        assert!(gso_wanted(None));
        let (_rx, tx) = pair();
        let env = std::env::var_os(GSO_ENV);
        assert_eq!(
            SendBatch::new(tx.as_raw_fd(), 1).gso(),
            gso_wanted(env.as_deref())
        );
    }
}
