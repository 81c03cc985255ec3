//! Batched UDP I/O for the benchmark programs: `recvmmsg` into preallocated
//! slots with the kernel's drop counter (`SO_RXQ_OVFL`), `sendmmsg` of any
//! slices on a connected socket, and the socket setup both need.
//!
//! This is deliberately independent of `relay-channel`'s own `net` module:
//! the ceiling forwarder must stay the same program while the relay is
//! being optimised, or the ratio to it would measure a moving target.
//!
//! Linux only. Buffers are allocated once; the batch calls allocate nothing.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Sets an integer socket option.
pub fn set_int_opt(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a plain integer socket option on a valid descriptor.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks for `size` bytes of receive buffer; where `net.core.rmem_max`
/// clamps it, tries `SO_RCVBUFFORCE` (root or CAP_NET_ADMIN). Returns what
/// the kernel granted as it reports it (Linux reports double the usable
/// size).
pub fn set_recv_buffer(socket: &Socket, size: usize) -> usize {
    let _ = socket.set_recv_buffer_size(size);
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < size * 2 {
        let want = size.min(i32::MAX as usize / 2) as libc::c_int;
        if set_int_opt(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want).is_ok() {
            return socket.recv_buffer_size().unwrap_or(granted);
        }
    }
    granted
}

/// Turns on the kernel's receive drop counter (`SO_RXQ_OVFL`); false if the
/// kernel refuses.
pub fn enable_drop_counter(socket: &Socket) -> bool {
    set_int_opt(socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1).is_ok()
}

/// Asks the kernel to stamp each received datagram with its arrival time
/// (`SO_TIMESTAMPNS`, CLOCK_REALTIME), read by [`RecvBatch::timestamp_ns`].
pub fn enable_timestamps(socket: &Socket) -> io::Result<()> {
    set_int_opt(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Whether `addr` may be a destination or bind address of a benchmark
/// socket: loopback unicast, or a multicast group (sent with interface
/// 127.0.0.1 and TTL 0 by [`open_sender`]).
pub fn is_local_or_group(addr: Ipv4Addr) -> bool {
    addr.is_loopback() || addr.is_multicast()
}

/// A UDP socket bound to `bind` (a loopback address) with a large receive
/// buffer and the drop counter, for unicast receive. Returns the socket and
/// the buffer the kernel granted.
pub fn open_unicast_receiver(
    bind: SocketAddrV4,
    recv_buffer: usize,
    timeout: Duration,
) -> io::Result<(Socket, usize)> {
    if !bind.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{bind}: benchmark receivers bind loopback addresses only"),
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let granted = set_recv_buffer(&socket, recv_buffer);
    enable_drop_counter(&socket);
    socket.bind(&SockAddr::from(bind))?;
    socket.set_read_timeout(Some(timeout))?;
    Ok((socket, granted))
}

/// A UDP socket that hears only `group:port` (bound to the group address
/// itself, `IP_MULTICAST_ALL` off), joined on the interface 127.0.0.1, with
/// a large receive buffer and the drop counter.
pub fn open_group_receiver(
    group: SocketAddrV4,
    recv_buffer: usize,
    timeout: Duration,
) -> io::Result<(Socket, usize)> {
    if !group.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{group}: not a multicast group"),
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_multicast_all_v4(false)?;
    let granted = set_recv_buffer(&socket, recv_buffer);
    enable_drop_counter(&socket);
    socket.bind(&SockAddr::from(group))?;
    socket.join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)?;
    socket.set_read_timeout(Some(timeout))?;
    Ok((socket, granted))
}

/// A UDP socket connected to `to`: a loopback address, or a multicast group
/// sent through interface 127.0.0.1 with TTL 0 (it never leaves this host),
/// loopback delivery on. Anything else is refused.
pub fn open_sender(to: SocketAddrV4) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if to.ip().is_multicast() {
        socket.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
        socket.set_multicast_ttl_v4(0)?;
        socket.set_multicast_loop_v4(true)?;
    } else if !to.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{to}: benchmark senders send to loopback or a local multicast group only"),
        ));
    }
    socket.bind(&SockAddr::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)))?;
    socket.connect(&SockAddr::from(to))?;
    Ok(socket)
}

/// Batch receiver over `recvmmsg`: `n` slots of `slot` bytes, the kernel's
/// drop counter from `SO_RXQ_OVFL`, and arrival timestamps where the socket
/// asked for them ([`enable_timestamps`]).
pub struct RecvBatch {
    fd: RawFd,
    n: usize,
    slot: usize,
    bufs: Box<[u8]>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<u64>,
    cmsg_words: usize,
    /// Latest value of the kernel's drop counter for this socket.
    pub kernel_drops: u32,
}

// SAFETY: the raw pointers in `hdrs`/`iovs` point into heap buffers owned by
// the same value; moving it to another thread keeps them valid.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// A receiver for `fd` reading up to `n` datagrams of at most `slot`
    /// bytes per call (longer ones are cut short by the kernel).
    pub fn new(fd: RawFd, n: usize, slot: usize) -> RecvBatch {
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
            // SAFETY: all-zero is a valid mmsghdr / iovec.
            hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            iovs: (0..n).map(|_| unsafe { zeroed() }).collect(),
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
        r
    }

    /// Receives up to `n` datagrams: blocks until one arrives (or the
    /// socket's read timeout passes: `WouldBlock`) unless `nonblocking`, then
    /// takes what is queued without waiting. Returns how many arrived.
    /// `EINTR` is returned to the caller, so a signal can end a loop.
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<usize> {
        for i in 0..self.n {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
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
        // SAFETY: every header points at buffers owned by self, sized as
        // declared.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd,
                self.hdrs.as_mut_ptr(),
                self.n as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = rc as usize;
        self.read_drop_counter(got);
        Ok(got)
    }

    fn read_drop_counter(&mut self, got: usize) {
        // The counter is cumulative: the last message that carries it wins.
        for i in (0..got).rev() {
            let h = &self.hdrs[i].msg_hdr;
            // SAFETY: the kernel filled msg_control up to msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                        self.kernel_drops =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u32);
                        return;
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
    }

    /// The kernel's arrival time of the `i`-th datagram of the last call, in
    /// ns since the epoch, if the socket asked for timestamps.
    pub fn timestamp_ns(&self, i: usize) -> Option<i64> {
        let h = &self.hdrs[i].msg_hdr;
        // SAFETY: the kernel filled msg_control up to msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                    return Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }

    /// The `i`-th datagram of the last call.
    #[inline]
    pub fn datagram(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(self.slot);
        &self.bufs[i * self.slot..i * self.slot + len]
    }
}

/// What one [`SendBatch::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Datagrams the kernel refused (each skipped after its error).
    pub failed: u64,
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
    /// A sender on the connected socket `fd`, up to `capacity` datagrams per
    /// call.
    pub fn new(fd: RawFd, capacity: usize) -> SendBatch {
        SendBatch {
            fd,
            // SAFETY: all-zero is a valid mmsghdr / iovec.
            hdrs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            iovs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
        }
    }

    /// Sends the datagrams of `dgrams` (at most the capacity; more are
    /// ignored). A datagram the kernel refuses is counted and skipped.
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
            // SAFETY: headers point at iovecs that point into slices borrowed
            // for this call; the socket is connected.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if rc > 0 {
                done += rc as usize;
                out.sent += rc as u64;
                continue;
            }
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            out.failed += 1;
            done += 1;
        }
        out
    }
}

/// `CLOCK_REALTIME` in nanoseconds since the epoch.
#[inline]
pub fn realtime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_round_trip_in_batches() {
        let (rx, _) = open_unicast_receiver(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            1 << 20,
            Duration::from_millis(500),
        )
        .unwrap();
        let to = rx.local_addr().unwrap().as_socket_ipv4().unwrap();
        let tx = open_sender(to).unwrap();
        let mut sender = SendBatch::new(tx.as_raw_fd(), 8);
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        let out = sender.send(payloads.iter().map(|p| p.as_slice()));
        assert_eq!(out, SendOutcome { sent: 5, failed: 0 });
        let mut batch = RecvBatch::new(rx.as_raw_fd(), 8, 64);
        let mut got = Vec::new();
        while got.len() < 5 {
            let n = batch.recv(false).unwrap();
            got.extend((0..n).map(|i| batch.datagram(i).to_vec()));
            assert_eq!(batch.timestamp_ns(0), None, "not asked for");
        }
        assert_eq!(got, payloads);
        assert_eq!(batch.kernel_drops, 0);
    }

    #[test]
    fn refuses_remote_addresses() {
        assert!(open_sender("192.0.2.1:9".parse().unwrap()).is_err());
        assert!(open_unicast_receiver(
            "0.0.0.0:0".parse().unwrap(),
            1 << 16,
            Duration::from_millis(10)
        )
        .is_err());
        assert!(is_local_or_group("239.255.1.1".parse().unwrap()));
        assert!(!is_local_or_group("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn group_round_trip_with_timestamps() {
        let group = SocketAddrV4::new(
            Ipv4Addr::new(239, 255, 250, (std::process::id() % 250) as u8 + 1),
            {
                let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                probe.local_addr().unwrap().port()
            },
        );
        let (rx, granted) =
            open_group_receiver(group, 1 << 20, Duration::from_millis(500)).unwrap();
        assert!(granted >= 1 << 20);
        enable_timestamps(&rx).unwrap();
        let tx = open_sender(group).unwrap();
        assert_eq!(tx.multicast_ttl_v4().unwrap(), 0);
        assert_eq!(tx.multicast_if_v4().unwrap(), Ipv4Addr::LOCALHOST);
        let before = realtime_ns();
        let mut sender = SendBatch::new(tx.as_raw_fd(), 4);
        let out = sender.send([b"one".as_slice(), b"two".as_slice()]);
        assert_eq!(out.sent, 2);
        let mut batch = RecvBatch::new(rx.as_raw_fd(), 4, 64);
        let mut got = 0;
        while got < 2 {
            let n = batch.recv(false).unwrap();
            for i in 0..n {
                let t = batch.timestamp_ns(i).expect("timestamp");
                assert!(t >= before - 1_000_000 && t <= realtime_ns() + 1_000_000);
            }
            got += n;
        }
    }
}
