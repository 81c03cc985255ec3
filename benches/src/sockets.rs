//! The benchmark programs' sockets: loopback or local-group only (with
//! interface 127.0.0.1 and TTL 0), large receive buffers, the kernel's drop
//! counter and arrival stamps.
//!
//! The batched I/O on them is `relay_channel::mmsg`, the frozen
//! `recvmmsg`/`sendmmsg` layer the relay itself runs: the ceiling forwarder
//! makes the same system calls as the relay, so the ratio between them
//! measures what the relay does around those calls.
//!
//! Linux only.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
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
/// (`SO_TIMESTAMPNS`, CLOCK_REALTIME), read by
/// [`RecvBatch::timestamp_ns`](relay_channel::mmsg::RecvBatch::timestamp_ns).
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
    use relay_channel::mmsg::{RecvBatch, SendBatch, SendOutcome};

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
