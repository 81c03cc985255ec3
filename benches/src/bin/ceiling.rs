//! `ceiling`: the smallest possible forwarder, this machine's ceiling for the
//! relay's job.
//!
//! Receives datagrams on a loopback address with `recvmmsg` and sends every
//! one, unchanged, with `sendmmsg` to a multicast group (interface
//! 127.0.0.1, TTL 0) or a loopback address. No validation, no disk, one
//! thread. Its batch calls are `relay_channel::mmsg`, the ones the relay
//! makes, UDP GSO included: runs of equal-length datagrams go out as one
//! GSO message each where the kernel offers it, unless `SPEEDDATA_GSO=0`
//! (which turns it off in the relay too, so both are measured the same
//! way). Prints one JSON line on stdout once its socket is bound:
//!
//! `{"event":"ready","pid":N,"listen":"127.0.0.1:PORT","to":"GROUP:PORT","recv_buffer_granted":N,"drop_counter":true,"gso":true}`
//!
//! and, on SIGTERM or SIGINT (or after --max-duration), its counters
//! (`gso`: still on at the end, false if the kernel refused it):
//!
//! `{"event":"final","received":N,"bytes_received":N,"forwarded":N,"send_errors":N,"kernel_drops":N,"elapsed_s":F,"gso":true}`

use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use relay_channel::mmsg::{RecvBatch, SendBatch};
use speeddata_benches::lines::{self, CeilingLine};
use speeddata_benches::sockets::{enable_drop_counter, open_sender, open_unicast_receiver};

/// Space for one datagram: the IPv4 UDP maximum, rounded up.
const SLOT: usize = 65_536;
/// How long a blocking receive waits before the loop looks at its flags.
const RECV_TIMEOUT: Duration = Duration::from_millis(100);
/// After a stop request, what the kernel already holds is still forwarded
/// for at most this long.
const DRAIN: Duration = Duration::from_millis(200);

/// The smallest possible forwarder: recvmmsg from --listen, sendmmsg
/// everything unchanged to --to. No validation, no disk.
///
/// Stops on SIGTERM or SIGINT (or after --max-duration) and prints its
/// counters as one JSON line on stdout. Network safety: --listen must be a
/// loopback address; --to a loopback address or a multicast group, which is
/// sent through interface 127.0.0.1 with TTL 0 (it never leaves this host).
///
/// Sends as relay-channel does (relay_channel::mmsg::SendBatch): runs of
/// equal-length datagrams as one UDP GSO message each (UDP_SEGMENT) where
/// the kernel offers it. Environment: SPEEDDATA_GSO=0 turns GSO off, here
/// and in relay-channel alike; "gso" on the ready and final lines says
/// whether it was used.
#[derive(Debug, Parser)]
#[command(name = "ceiling", version, verbatim_doc_comment)]
struct Args {
    /// Loopback ADDR:PORT to receive on (port 0: any free port, printed in
    /// the ready line).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddrV4,

    /// Where to forward: a multicast GROUP:PORT (interface 127.0.0.1, TTL 0)
    /// or a loopback ADDR:PORT.
    #[arg(long, value_name = "GROUP:PORT")]
    to: SocketAddrV4,

    /// SO_RCVBUF to ask for, in bytes (SO_RCVBUFFORCE where rmem_max is
    /// lower and the process may).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    recv_buffer: usize,

    /// Datagrams per recvmmsg / sendmmsg call (1..=1024).
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,

    /// Stop by itself after this long (e.g. 30s, 10m).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    max_duration: Duration,
}

fn main() {
    let args = Args::parse();
    if let Err(err) = run(&args) {
        eprintln!("ceiling: error: {err:#}");
        std::process::exit(1);
    }
}

#[derive(Default)]
struct ForwardCounts {
    received: u64,
    bytes_received: u64,
    forwarded: u64,
    send_errors: u64,
}

fn run(args: &Args) -> Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!("--listen {}: must be a loopback address", args.listen);
    }
    if !args.to.ip().is_loopback() && !args.to.ip().is_multicast() {
        bail!(
            "--to {}: must be a multicast group or a loopback address",
            args.to
        );
    }
    speeddata_benches::install_stop_signals();
    let (rx, granted) = open_unicast_receiver(args.listen, args.recv_buffer, RECV_TIMEOUT)
        .with_context(|| format!("listen on {}", args.listen))?;
    let tx = open_sender(args.to).with_context(|| format!("send to {}", args.to))?;
    let listen = rx
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket_ipv4())
        .unwrap_or(args.listen);
    let drop_counter = enable_drop_counter(&rx);
    let batch = args.batch as usize;
    let mut recv = RecvBatch::new(rx.as_raw_fd(), batch, SLOT);
    let mut send = SendBatch::new(tx.as_raw_fd(), batch);
    lines::print(&CeilingLine::Ready {
        pid: std::process::id(),
        listen: listen.to_string(),
        to: args.to.to_string(),
        recv_buffer_granted: granted,
        drop_counter,
        gso: send.gso(),
    });
    let mut c = ForwardCounts::default();
    let start = Instant::now();
    let end = start + args.max_duration;
    let mut drain_until: Option<Instant> = None;

    loop {
        if drain_until.is_none() && (speeddata_benches::stop_requested() || Instant::now() >= end) {
            drain_until = Some(Instant::now() + DRAIN);
        }
        let draining = drain_until.is_some();
        match recv.recv(draining) {
            Ok(0) => {
                if draining {
                    break;
                }
            }
            Ok(n) => {
                for i in 0..n {
                    c.bytes_received += recv.datagram(i).len() as u64;
                }
                c.received += n as u64;
                let out = send.send((0..n).map(|i| recv.datagram(i)));
                c.forwarded += out.sent;
                c.send_errors += out.failed;
                if let Some(t) = drain_until {
                    if Instant::now() >= t {
                        break;
                    }
                }
            }
            Err(e) => match e.kind() {
                std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted => {
                    if draining {
                        break;
                    }
                }
                _ => return Err(e).context("recvmmsg"),
            },
        }
    }
    lines::print(&CeilingLine::Final {
        received: c.received,
        bytes_received: c.bytes_received,
        forwarded: c.forwarded,
        send_errors: c.send_errors,
        kernel_drops: u64::from(recv.kernel_drops),
        elapsed_s: start.elapsed().as_secs_f64(),
        gso: send.gso(),
    });
    Ok(())
}
