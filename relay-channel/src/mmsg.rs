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
//! `sendmmsg` of N slices on a connected socket. Both retry `EINTR`. The
//! batch calls allocate nothing. Sockets and their options are the
//! caller's.
//!
//! Linux only.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

/// Runs a system call that returns a count or -1, again while it is
/// interrupted by a signal (`EINTR`).
pub fn retry_eintr(mut call: impl FnMut() -> libc::c_int) -> io::Result<usize> {
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
                )
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
    pub fn timestamp_ns(&self, i: usize) -> Option<i64> {
        self.control::<libc::timespec>(i, libc::SCM_TIMESTAMPNS)
            .map(|ts| ts.tv_sec * 1_000_000_000 + ts.tv_nsec)
    }
}

/// What one [`SendBatch::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Datagrams the kernel refused (each skipped after its error).
    pub failed: u64,
    /// The last error (errno), if any datagram failed.
    pub error: Option<i32>,
}

/// Batch sender over `sendmmsg` on a connected socket.
pub struct SendBatch {
    fd: RawFd,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: the header pointers are rebuilt on every call; between calls they
// point at nothing that is dereferenced.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// A sender on the connected socket `fd`, up to `capacity` datagrams
    /// per call. `fd` must stay open while it is used.
    pub fn new(fd: RawFd, capacity: usize) -> SendBatch {
        SendBatch {
            fd,
            // SAFETY: all-zero is a valid mmsghdr / iovec.
            hdrs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            iovs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
        }
    }

    /// Sends every datagram of `dgrams` (at most the capacity; more are
    /// ignored) with `sendmmsg` (again on `EINTR`, and again after a
    /// partial send). A datagram the kernel refuses is counted as failed
    /// and skipped.
    pub fn send<'a>(&mut self, dgrams: impl IntoIterator<Item = &'a [u8]>) -> SendOutcome {
        let mut n = 0;
        for d in dgrams.into_iter().take(self.hdrs.len()) {
            self.iovs[n] = libc::iovec {
                iov_base: d.as_ptr() as *mut libc::c_void,
                iov_len: d.len(),
            };
            n += 1;
        }
        for i in 0..n {
            // SAFETY: all-zero is a valid msghdr.
            self.hdrs[i].msg_hdr = unsafe { zeroed() };
            self.hdrs[i].msg_hdr.msg_iov = &mut self.iovs[i];
            self.hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut out = SendOutcome::default();
        let mut done = 0;
        while done < n {
            let fd = self.fd;
            let hdrs = self.hdrs[done..].as_mut_ptr();
            // SAFETY: headers point at iovecs into slices borrowed for this
            // call; the socket is connected.
            let sent =
                retry_eintr(|| unsafe { libc::sendmmsg(fd, hdrs, (n - done) as libc::c_uint, 0) });
            match sent {
                Ok(k) if k > 0 => {
                    done += k;
                    out.sent += k as u64;
                }
                // The first remaining datagram failed: count it and go on.
                Ok(_) => {
                    out.failed += 1;
                    out.error = io::Error::last_os_error().raw_os_error();
                    done += 1;
                }
                Err(e) => {
                    out.failed += 1;
                    out.error = e.raw_os_error();
                    done += 1;
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
}
