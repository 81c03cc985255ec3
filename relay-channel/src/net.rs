//! Sockets of one channel: the receive socket (unicast or a joined multicast
//! group) read in batches with `recvmmsg`, and the output sockets written in
//! batches with `sendmmsg`.
//!
//! The batch calls themselves are [`crate::mmsg`]'s, the layer the
//! benchmarks' ceiling forwarder shares. Linux only: the relay targets
//! Linux hosts (systemd, `SO_RXQ_OVFL`, `IP_MULTICAST_ALL`). Buffers are
//! allocated once per socket; the batch calls allocate nothing.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::{Interface, OutputSpec, ReceiveSpec};
pub use crate::mmsg::SendOutcome;
use crate::mmsg::{RecvBatch, SendBatch};

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
/// `stamps`: ask the kernel for each datagram's arrival time
/// (`SO_TIMESTAMPNS`, read with [`BatchReceiver::arrival`]).
pub fn open_receive(spec: &ReceiveSpec, stamps: bool) -> io::Result<ReceiveSocket> {
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
    if stamps {
        // On a host where no socket asked for stamps before, the kernel turns
        // them on a moment later; the first datagrams may be stamped when read.
        setsockopt(&socket, sockopt::ReceiveTimestampns, &true)?;
    }
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

/// Batch receiver over `recvmmsg` ([`RecvBatch`]): one [`SLOT`] per
/// datagram, the sender's address, and the kernel's drop counter from
/// `SO_RXQ_OVFL`.
pub struct BatchReceiver {
    batch: RecvBatch,
    /// Whether the socket asked for arrival stamps.
    stamps: bool,
    /// Latest value of the kernel's drop counter for this socket.
    pub kernel_drops: u32,
}

impl BatchReceiver {
    /// A receiver for `socket` reading up to `n` datagrams per call;
    /// `stamps`: the socket asked for arrival stamps (see [`open_receive`]).
    pub fn new(socket: &Socket, n: usize, stamps: bool) -> BatchReceiver {
        BatchReceiver {
            batch: RecvBatch::new(socket.as_raw_fd(), n, SLOT),
            stamps,
            kernel_drops: 0,
        }
    }

    /// Receives up to `n` datagrams. Blocks until one arrives (or the
    /// socket's read timeout passes) unless `nonblocking`; then takes what
    /// is queued without waiting. Returns how many arrived.
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<usize> {
        let got = self.batch.recv(nonblocking)?;
        self.kernel_drops = self.batch.kernel_drops;
        Ok(got)
    }

    /// When the `i`-th datagram of the last call arrived, by the kernel's
    /// stamp if the socket asked for stamps, else `clock`'s instant.
    #[inline]
    pub fn arrival(&self, i: usize, clock: &ArrivalClock) -> Instant {
        if !self.stamps {
            return clock.instant;
        }
        clock.at(self.batch.timestamp_ns(i))
    }

    /// The `i`-th datagram of the last call: its bytes, its sender, and
    /// whether the kernel cut it short.
    #[inline]
    pub fn datagram(&self, i: usize) -> (&[u8], SocketAddrV4, bool) {
        (
            self.batch.datagram(i),
            self.batch.sender(i),
            self.batch.truncated(i),
        )
    }
}

/// Turns the kernel's arrival stamps (`CLOCK_REALTIME`) into [`Instant`]s:
/// both clocks read once per batch.
#[derive(Debug, Clone, Copy)]
pub struct ArrivalClock {
    instant: Instant,
    real_ns: i64,
}

impl ArrivalClock {
    pub fn now() -> ArrivalClock {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        ArrivalClock {
            instant: Instant::now(),
            real_ns: real,
        }
    }

    /// The wall-clock time the clock was read at.
    pub fn wall(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(self.real_ns).unwrap_or(0))
    }

    /// The instant of a realtime stamp (ns since the epoch); now without one
    /// or for one from the future (the clock was set back).
    pub fn at(&self, stamp_ns: Option<i64>) -> Instant {
        match stamp_ns {
            Some(t) if t <= self.real_ns => {
                let ago = Duration::from_nanos((self.real_ns - t) as u64);
                self.instant.checked_sub(ago).unwrap_or(self.instant)
            }
            _ => self.instant,
        }
    }
}

/// Batch sender over `sendmmsg` ([`SendBatch`]) on a connected socket,
/// with UDP GSO unless `SPEEDDATA_GSO=0` or the kernel lacks it.
pub struct BatchSender {
    batch: SendBatch,
    /// Owned so that its descriptor, which `batch` writes to, stays open.
    _socket: Socket,
}

impl BatchSender {
    pub fn new(socket: Socket, capacity: usize) -> BatchSender {
        BatchSender {
            batch: SendBatch::new(socket.as_raw_fd(), capacity),
            _socket: socket,
        }
    }

    /// Whether it groups equal-length datagrams with UDP GSO
    /// ([`SendBatch::gso`]).
    pub fn gso(&self) -> bool {
        self.batch.gso()
    }

    /// Sends every datagram of `dgrams` (at most the capacity), runs of
    /// equal length with UDP GSO where it is on. A datagram the kernel
    /// refuses is counted as failed and skipped.
    pub fn send<'a>(&mut self, dgrams: impl IntoIterator<Item = &'a [u8]>) -> SendOutcome {
        self.batch.send(dgrams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Encoding;

    fn spec() -> ReceiveSpec {
        ReceiveSpec {
            bind: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            group: None,
            interface: Interface::Addr(Ipv4Addr::UNSPECIFIED),
            recv_buffer: 1 << 20,
            validate: false,
            batch: 4,
            allow_from: Vec::new(),
            encoding: Encoding::Datum,
        }
    }

    /// Sends two datagrams 30 ms apart, reads them after both arrived.
    fn arrivals(stamps: bool) -> (Instant, Vec<Instant>, ArrivalClock) {
        let rs = open_receive(&spec(), stamps).unwrap();
        let to = rs.socket.local_addr().unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rx = BatchReceiver::new(&rs.socket, 4, stamps);
        if stamps {
            // The first socket on a host to ask for stamps turns them on in
            // the kernel a moment later (a deferred static key); until then
            // datagrams are stamped when read. Wait for a real stamp.
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                tx.send_to(b"w", to.as_socket().unwrap()).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                assert_eq!(rx.recv(false).unwrap(), 1);
                let clock = ArrivalClock::now();
                if clock.instant - rx.arrival(0, &clock) >= Duration::from_millis(10) {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "the kernel never stamped a datagram"
                );
            }
        }
        let start = Instant::now();
        tx.send_to(b"a", to.as_socket().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        tx.send_to(b"b", to.as_socket().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(rx.recv(false).unwrap(), 2);
        let clock = ArrivalClock::now();
        let at = (0..2).map(|i| rx.arrival(i, &clock)).collect();
        (start, at, clock)
    }

    #[test]
    fn arrival_stamps_are_the_kernel_s_not_the_read_s() {
        let (start, at, clock) = arrivals(true);
        assert!(
            at[0] >= start - Duration::from_millis(5),
            "{:?}",
            at[0] - start
        );
        assert!(
            at[1] - at[0] >= Duration::from_millis(25),
            "{:?}",
            at[1] - at[0]
        );
        assert!(clock.instant - at[1] >= Duration::from_millis(25));
        let (_, at, clock) = arrivals(false);
        assert_eq!(at, [clock.instant, clock.instant]);
    }
}
