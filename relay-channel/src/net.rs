//! Sockets of one channel: the receive socket (unicast or a joined multicast
//! group) read in batches, and the output sockets written in batches.
//!
//! Two I/O paths, chosen once per process ([`crate::portable_io::io_path`]):
//! on Linux the batch calls of [`crate::mmsg`] (`recvmmsg`, `sendmmsg` with
//! UDP GSO, the kernel's drop counter `SO_RXQ_OVFL`), the layer the
//! benchmarks' ceiling forwarder shares; elsewhere, and on Linux with
//! `SPEEDDATA_PORTABLE_IO=1`, one datagram per call
//! ([`crate::portable_io`]). The Linux-only socket options are here too,
//! each behind `cfg(target_os)`. Buffers are allocated once per socket; the
//! batch calls allocate nothing.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::{Interface, OutputSpec, ReceiveSpec};
#[cfg(target_os = "linux")]
use crate::mmsg::{RecvBatch, SendBatch};
pub use crate::portable_io::SendOutcome;
use crate::portable_io::{RecvOne, SendOne};
use crate::status::IoPath;

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
    /// Whether the kernel stamps each datagram's arrival (asked for, and
    /// not refused).
    pub stamps: bool,
}

/// Opens, configures and binds the receive socket for the I/O path `io`.
/// The multicast join is separate ([`join`]) because it may have to wait
/// for its interface. `stamps`: ask the kernel for each datagram's arrival
/// time (read with [`BatchReceiver::arrival`]).
pub fn open_receive(spec: &ReceiveSpec, stamps: bool, io: IoPath) -> io::Result<ReceiveSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if spec.group.is_some() {
        // Several channels may listen on one port, each for its own group.
        socket.set_reuse_address(true)?;
        if let Err(e) = only_the_group_joined(&socket) {
            // An emulator (qemu-user) or an unusual kernel may refuse it.
            tracing::warn!(
                error = %e,
                "cannot turn IP_MULTICAST_ALL off: other groups joined on this host for port {} may reach this channel too (they are rejected if not of its schema)",
                spec.bind.port()
            );
        }
    }
    let recv_buffer_granted = set_recv_buffer(&socket, spec.recv_buffer);
    let drop_counter = io == IoPath::Mmsg && ask_drop_counter(&socket);
    // On a host where no socket asked for stamps before, the kernel turns
    // them on a moment later; the first datagrams may be stamped when read.
    let stamps = stamps
        && match ask_stamps(&socket, io) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "the kernel gives no arrival stamps on this socket: decimation windows go by the time each batch is read"
                );
                false
            }
        };
    socket.bind(&SockAddr::from(spec.bind))?;
    socket.set_read_timeout(Some(RECV_TIMEOUT))?;
    Ok(ReceiveSocket {
        socket,
        recv_buffer_granted,
        drop_counter,
        stamps,
    })
}

/// A socket bound to `0.0.0.0:PORT` that joined a group receives only that
/// group's datagrams. Without `IP_MULTICAST_ALL` off, Linux delivers every
/// group joined anywhere on the host for this port to it. Other kernels
/// (macOS, the BSDs) deliver by the socket's own memberships already: only
/// groups this socket joined reach it, but any of them on this port, so
/// two channels on one port there must not share a socket (each channel
/// has its own).
#[cfg(target_os = "linux")]
fn only_the_group_joined(socket: &Socket) -> io::Result<()> {
    socket.set_multicast_all_v4(false)
}

#[cfg(not(target_os = "linux"))]
fn only_the_group_joined(_socket: &Socket) -> io::Result<()> {
    Ok(())
}

/// Asks for the kernel's receive drop counter (`SO_RXQ_OVFL`, Linux):
/// whether it will come.
#[cfg(target_os = "linux")]
fn ask_drop_counter(socket: &Socket) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::RxqOvfl, &1).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn ask_drop_counter(_socket: &Socket) -> bool {
    false
}

/// Asks for arrival stamps: nanoseconds (`SO_TIMESTAMPNS`) on Linux's
/// batch path, microseconds (`SO_TIMESTAMP`) on the portable one.
fn ask_stamps(socket: &Socket, io: IoPath) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    match io {
        #[cfg(target_os = "linux")]
        IoPath::Mmsg => setsockopt(socket, sockopt::ReceiveTimestampns, &true)?,
        _ => setsockopt(socket, sockopt::ReceiveTimestamp, &true)?,
    }
    Ok(())
}

/// Asks for `size` bytes of receive buffer; where `net.core.rmem_max` clamps
/// it, tries `SO_RCVBUFFORCE` (Linux, permitted to root / CAP_NET_ADMIN).
/// Returns what the kernel granted, comparable with `size`.
fn set_recv_buffer(socket: &Socket, size: usize) -> usize {
    let _ = socket.set_recv_buffer_size(size);
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut reported = socket.recv_buffer_size().unwrap_or(0);
    #[cfg(target_os = "linux")]
    if granted_of(reported) < size {
        use nix::sys::socket::{setsockopt, sockopt};
        let want = size.min(i32::MAX as usize);
        if setsockopt(socket, sockopt::RcvBufForce, &want).is_ok() {
            reported = socket.recv_buffer_size().unwrap_or(reported);
        }
    }
    granted_of(reported)
}

/// The buffer granted, in the units it was asked for, from what `SO_RCVBUF`
/// reads back: Linux doubles the request for its bookkeeping.
#[cfg(target_os = "linux")]
fn granted_of(reported: usize) -> usize {
    reported / 2
}

/// The buffer granted: other kernels read back what they granted.
#[cfg(not(target_os = "linux"))]
fn granted_of(reported: usize) -> usize {
    reported
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

/// The receive calls of one I/O path.
enum Receive {
    #[cfg(target_os = "linux")]
    Mmsg(RecvBatch),
    Portable(RecvOne),
}

/// Batch receiver: one [`SLOT`] per datagram, the sender's address, and
/// the kernel's drop counter where it has one.
pub struct BatchReceiver {
    rx: Receive,
    /// Whether the socket asked for arrival stamps.
    stamps: bool,
    /// Latest value of the kernel's drop counter for this socket; `None`
    /// on the portable path, which has none.
    pub kernel_drops: Option<u32>,
}

impl BatchReceiver {
    /// A receiver for `socket` reading up to `n` datagrams per call on the
    /// I/O path `io`; `stamps`: the socket asked for arrival stamps (see
    /// [`open_receive`]).
    pub fn new(socket: &Socket, n: usize, stamps: bool, io: IoPath) -> BatchReceiver {
        let fd = socket.as_raw_fd();
        let rx = match io {
            #[cfg(target_os = "linux")]
            IoPath::Mmsg => Receive::Mmsg(RecvBatch::new(fd, n, SLOT)),
            _ => Receive::Portable(RecvOne::new(fd, n, SLOT)),
        };
        BatchReceiver {
            rx,
            stamps,
            kernel_drops: None,
        }
    }

    /// Receives up to `n` datagrams. Blocks until one arrives (or the
    /// socket's read timeout passes) unless `nonblocking`; then takes what
    /// is queued without waiting. Returns how many arrived.
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<usize> {
        match &mut self.rx {
            #[cfg(target_os = "linux")]
            Receive::Mmsg(b) => {
                let got = b.recv(nonblocking)?;
                self.kernel_drops = Some(b.kernel_drops);
                Ok(got)
            }
            Receive::Portable(r) => r.recv(nonblocking),
        }
    }

    /// When the `i`-th datagram of the last call arrived, by the kernel's
    /// stamp if the socket asked for stamps, else `clock`'s instant.
    #[inline]
    pub fn arrival(&self, i: usize, clock: &ArrivalClock) -> Instant {
        if !self.stamps {
            return clock.instant;
        }
        clock.at(match &self.rx {
            #[cfg(target_os = "linux")]
            Receive::Mmsg(b) => b.timestamp_ns(i),
            Receive::Portable(r) => r.timestamp_ns(i),
        })
    }

    /// The `i`-th datagram of the last call: its bytes, its sender, and
    /// whether the kernel cut it short.
    #[inline]
    pub fn datagram(&self, i: usize) -> (&[u8], SocketAddrV4, bool) {
        match &self.rx {
            #[cfg(target_os = "linux")]
            Receive::Mmsg(b) => (b.datagram(i), b.sender(i), b.truncated(i)),
            Receive::Portable(r) => (r.datagram(i), r.sender(i), r.truncated(i)),
        }
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

/// The send calls of one I/O path.
enum Send {
    #[cfg(target_os = "linux")]
    Mmsg(SendBatch),
    Portable(SendOne),
}

/// Batch sender on a connected socket: `sendmmsg` with UDP GSO (unless
/// `SPEEDDATA_GSO=0` or the kernel lacks it) on Linux's batch path, one
/// `send` per datagram on the portable one.
pub struct BatchSender {
    tx: Send,
    /// Owned so that its descriptor, which `tx` writes to, stays open.
    _socket: Socket,
}

impl BatchSender {
    pub fn new(socket: Socket, capacity: usize, io: IoPath) -> BatchSender {
        let fd = socket.as_raw_fd();
        let tx = match io {
            #[cfg(target_os = "linux")]
            IoPath::Mmsg => Send::Mmsg(SendBatch::new(fd, capacity)),
            _ => {
                let _ = capacity;
                Send::Portable(SendOne::new(fd))
            }
        };
        BatchSender {
            tx,
            _socket: socket,
        }
    }

    /// Whether it groups equal-length datagrams with UDP GSO
    /// (`SendBatch::gso`); never on the portable path.
    pub fn gso(&self) -> bool {
        match &self.tx {
            #[cfg(target_os = "linux")]
            Send::Mmsg(b) => b.gso(),
            Send::Portable(_) => false,
        }
    }

    /// Sends every datagram of `dgrams` (at most the capacity), runs of
    /// equal length with UDP GSO where it is on. A datagram the kernel
    /// refuses is counted as failed and skipped.
    pub fn send<'a>(&mut self, dgrams: impl IntoIterator<Item = &'a [u8]>) -> SendOutcome {
        match &mut self.tx {
            #[cfg(target_os = "linux")]
            Send::Mmsg(b) => b.send(dgrams),
            Send::Portable(s) => s.send(dgrams),
        }
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
            cpu: None,
            realtime: false,
        }
    }

    /// Sends two datagrams 30 ms apart, reads them after both arrived.
    fn arrivals(stamps: bool, io: IoPath) -> (Instant, Vec<Instant>, ArrivalClock) {
        let rs = open_receive(&spec(), stamps, io).unwrap();
        let to = rs.socket.local_addr().unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rx = BatchReceiver::new(&rs.socket, 4, stamps, io);
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

    /// Both paths where both run: the batch calls on Linux only.
    fn paths() -> Vec<IoPath> {
        if cfg!(target_os = "linux") {
            vec![IoPath::Mmsg, IoPath::Portable]
        } else {
            vec![IoPath::Portable]
        }
    }

    #[test]
    fn arrival_stamps_are_the_kernel_s_not_the_read_s() {
        for io in paths() {
            let (start, at, clock) = arrivals(true, io);
            assert!(
                at[0] >= start - Duration::from_millis(5),
                "{io:?}: {:?}",
                at[0] - start
            );
            assert!(
                at[1] - at[0] >= Duration::from_millis(25),
                "{io:?}: {:?}",
                at[1] - at[0]
            );
            assert!(clock.instant - at[1] >= Duration::from_millis(25));
            let (_, at, clock) = arrivals(false, io);
            assert_eq!(at, [clock.instant, clock.instant]);
        }
    }

    #[test]
    fn only_the_batch_path_has_the_kernel_s_drop_counter() {
        for io in paths() {
            let rs = open_receive(&spec(), false, io).unwrap();
            assert_eq!(rs.drop_counter, io == IoPath::Mmsg, "{io:?}");
            let to = rs.socket.local_addr().unwrap();
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            tx.send_to(b"abc", to.as_socket().unwrap()).unwrap();
            let mut rx = BatchReceiver::new(&rs.socket, 4, false, io);
            assert_eq!(rx.recv(false).unwrap(), 1);
            assert_eq!(rx.datagram(0).0, b"abc");
            assert_eq!(rx.kernel_drops.is_some(), io == IoPath::Mmsg, "{io:?}");
        }
    }
}
