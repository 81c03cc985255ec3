//! Sockets of one channel: the receive socket (unicast or a joined multicast
//! group) read in batches with `recvmmsg`, and the output sockets written in
//! batches with `sendmmsg`.
//!
//! Linux only: the relay targets Linux hosts (systemd, `SO_RXQ_OVFL`,
//! `IP_MULTICAST_ALL`). Buffers are allocated once per socket; the batch
//! calls allocate nothing.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::{Interface, OutputSpec, ReceiveSpec};

/// Space for one datagram: the IPv4 UDP maximum, rounded up.
pub const SLOT: usize = 65_536;

/// How long a blocking receive waits before the loop looks at its flags.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// The bound receive socket and what the kernel granted.
pub struct ReceiveSocket {
    pub socket: Socket,
    /// The receive buffer granted, in the bytes `recv_buffer` asks for:
    /// `SO_RCVBUF` as read back, halved (Linux reports double the size
    /// asked for, the other half being its bookkeeping).
    pub recv_buffer_granted: usize,
    /// Whether the kernel delivers its drop counter (`SO_RXQ_OVFL`).
    pub drop_counter: bool,
}

/// Opens, configures and binds the receive socket. The multicast join is
/// separate ([`join`]) because it may have to wait for its interface.
pub fn open_receive(spec: &ReceiveSpec) -> io::Result<ReceiveSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if spec.group.is_some() {
        // Several channels may listen on one port, each for its own group.
        socket.set_reuse_address(true)?;
        // Without this Linux delivers every group joined anywhere on the host
        // for this port to a socket bound to 0.0.0.0:PORT.
        socket.set_multicast_all_v4(false)?;
    }
    let recv_buffer_granted = set_recv_buffer(&socket, spec.recv_buffer);
    let drop_counter = setsockopt(&socket, sockopt::RxqOvfl, &1).is_ok();
    socket.bind(&SockAddr::from(spec.bind))?;
    socket.set_read_timeout(Some(RECV_TIMEOUT))?;
    Ok(ReceiveSocket {
        socket,
        recv_buffer_granted,
        drop_counter,
    })
}

/// Asks for `size` bytes of receive buffer; where `net.core.rmem_max` clamps
/// it, tries `SO_RCVBUFFORCE` (permitted to root / CAP_NET_ADMIN). Returns
/// what the kernel granted, comparable with `size` (its report, halved).
fn set_recv_buffer(socket: &Socket, size: usize) -> usize {
    let _ = socket.set_recv_buffer_size(size);
    let mut reported = socket.recv_buffer_size().unwrap_or(0);
    if granted_of(reported) < size {
        let want = size.min(i32::MAX as usize);
        if setsockopt(socket, sockopt::RcvBufForce, &want).is_ok() {
            reported = socket.recv_buffer_size().unwrap_or(reported);
        }
    }
    granted_of(reported)
}

/// The buffer granted, in the units it was asked for, from what `SO_RCVBUF`
/// reads back: Linux doubles the request for its bookkeeping.
fn granted_of(reported: usize) -> usize {
    reported / 2
}

/// Runs a system call that returns a count or -1, again while it is
/// interrupted by a signal (`EINTR`).
fn retry_eintr(mut call: impl FnMut() -> libc::c_int) -> io::Result<usize> {
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

/// Joins `group` on `interface` (resolved now, so an interface that
/// changed its address is followed).
pub fn join(socket: &Socket, group: Ipv4Addr, interface: &Interface) -> io::Result<()> {
    socket.join_multicast_v4(&group, &resolve(interface)?)
}

/// The interface's IPv4 address now.
pub fn resolve(interface: &Interface) -> io::Result<Ipv4Addr> {
    match interface {
        Interface::Addr(a) => Ok(*a),
        Interface::Name(n) => interface_address(n),
    }
}

/// The first IPv4 address of the interface called `name`.
fn interface_address(name: &str) -> io::Result<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    for a in addrs {
        if a.interface_name == name {
            if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                return Ok(sin.ip());
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no interface {name:?} with an IPv4 address"),
    ))
}

/// Opens an output socket connected to its destination, with the multicast
/// interface, TTL and loopback of the spec.
pub fn open_output(spec: &OutputSpec) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if spec.dest.ip().is_multicast() {
        if let Some(iface) = &spec.interface {
            let iface = resolve(iface)?;
            socket.set_multicast_if_v4(&iface)?;
            socket.bind(&SockAddr::from(SocketAddrV4::new(iface, 0)))?;
        }
        socket.set_multicast_ttl_v4(spec.ttl)?;
        socket.set_multicast_loop_v4(spec.loopback)?;
    } else {
        socket.set_ttl_v4(spec.ttl.max(1))?;
    }
    socket.connect(&SockAddr::from(spec.dest))?;
    Ok(socket)
}

/// Batch receiver over `recvmmsg`: one [`SLOT`] per datagram, the sender's
/// address, and the kernel's drop counter from `SO_RXQ_OVFL`.
pub struct BatchReceiver {
    fd: libc::c_int,
    n: usize,
    bufs: Box<[u8]>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    cmsgs: Vec<u64>,
    cmsg_space: usize,
    /// Latest value of the kernel's drop counter for this socket.
    pub kernel_drops: u32,
}

// SAFETY: the raw pointers in `hdrs` point into heap buffers owned by the
// same value; moving the value to another thread keeps them valid.
unsafe impl Send for BatchReceiver {}

impl BatchReceiver {
    /// A receiver for `socket` reading up to `n` datagrams per call.
    pub fn new(socket: &Socket, n: usize) -> BatchReceiver {
        // SAFETY: CMSG_SPACE is a pure computation.
        let cmsg_space = unsafe { libc::CMSG_SPACE(size_of::<u32>() as u32) } as usize;
        let words = cmsg_space.div_ceil(8);
        let mut r = BatchReceiver {
            fd: socket.as_raw_fd(),
            n,
            bufs: vec![0u8; n * SLOT].into_boxed_slice(),
            // SAFETY: all-zero is a valid mmsghdr / iovec / sockaddr_in.
            hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            iovs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            addrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            cmsgs: vec![0u64; n * words],
            cmsg_space: words * 8,
            kernel_drops: 0,
        };
        for i in 0..n {
            r.iovs[i] = libc::iovec {
                iov_base: r.bufs[i * SLOT..].as_mut_ptr() as *mut libc::c_void,
                iov_len: SLOT,
            };
        }
        for i in 0..n {
            let h = &mut r.hdrs[i].msg_hdr;
            h.msg_iov = &mut r.iovs[i];
            h.msg_iovlen = 1;
        }
        r
    }

    /// Receives up to `n` datagrams. Blocks until one arrives (or the
    /// socket's read timeout passes) unless `nonblocking`; then takes what
    /// is queued without waiting. Returns how many arrived.
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<usize> {
        for i in 0..self.n {
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_control = self.cmsgs[i * self.cmsg_space / 8..].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = self.cmsg_space as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        let flags = if nonblocking {
            libc::MSG_DONTWAIT
        } else {
            libc::MSG_WAITFORONE
        };
        let got = retry_eintr(|| {
            // SAFETY: every header points at buffers owned by self, sized as declared.
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
            let h = &self.hdrs[i].msg_hdr;
            // SAFETY: the kernel filled msg_control up to msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u32);
                        self.kernel_drops = v;
                        return;
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
    }

    /// The `i`-th datagram of the last call: its bytes, its sender, and
    /// whether the kernel cut it short.
    pub fn datagram(&self, i: usize) -> (&[u8], SocketAddrV4, bool) {
        let len = (self.hdrs[i].msg_len as usize).min(SLOT);
        let a = &self.addrs[i];
        let from = SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        );
        let truncated = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        (&self.bufs[i * SLOT..i * SLOT + len], from, truncated)
    }
}

/// Batch sender over `sendmmsg` on a connected socket.
pub struct BatchSender {
    socket: Socket,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: the header pointers are rebuilt on every call; between calls they
// point at nothing that is dereferenced.
unsafe impl Send for BatchSender {}

/// What one [`BatchSender::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    pub sent: u64,
    pub failed: u64,
    /// The last error, if any datagram failed.
    pub error: Option<i32>,
}

impl BatchSender {
    pub fn new(socket: Socket, capacity: usize) -> BatchSender {
        BatchSender {
            socket,
            // SAFETY: all-zero is a valid mmsghdr / iovec.
            hdrs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
            iovs: (0..capacity).map(|_| unsafe { zeroed() }).collect(),
        }
    }

    /// Sends every datagram of `dgrams` (at most the capacity). A datagram
    /// the kernel refuses is counted as failed and skipped.
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
            let fd = self.socket.as_raw_fd();
            let hdrs = self.hdrs[done..].as_mut_ptr();
            // SAFETY: headers point at iovecs into slices borrowed for this call.
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
