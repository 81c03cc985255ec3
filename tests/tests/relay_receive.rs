//! End-to-end tests of `relay-channel`'s receive path and outputs: the real
//! binary over loopback sockets (and network namespaces of their own where
//! a test adds or removes interfaces): every valid datagram archived and
//! re-emitted, multicast groups joined, left and joined again, kernel drops
//! and receive buffers reported.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use relay_channel::status::IoPath;
use speeddata_tests::*;

#[test]
fn valid_datagrams_are_archived_forwarded_and_decimated_exactly() {
    let dir = tempdir();
    let factor = 5;
    let mut opts = ChannelOpts::unicast("exact");
    let full = group_addr(unique_group(), free_port());
    let dec = group_addr(unique_group(), free_port());
    opts.full = Some(full);
    opts.decimated = Some((dec, factor));
    let relay = Relay::start(dir.path(), &opts);
    let full_rx = GroupReceiver::join(full);
    let dec_rx = GroupReceiver::join(dec);

    let valid = example_records(10_000, "exact");
    // 100 malformed datagrams of five kinds, spread through the stream.
    let mut stream = Vec::new();
    let mut bad = 0;
    for (i, v) in valid.iter().enumerate() {
        stream.push(v.clone());
        if i % 100 == 50 {
            stream.push(malformed(v, bad));
            bad += 1;
        }
    }
    assert_eq!(bad, 100);
    let sender = Sender::new(opts.bind);
    sender.send_paced(&stream, 20);
    relay.wait_received(stream.len() as u64, Duration::from_secs(30));
    let (archive, last) = relay.stop_ok();

    // Archive: exactly the valid records, byte for byte, in order.
    let records = read_archive(&archive);
    assert_eq!(records.len(), valid.len());
    assert!(records == valid, "archived records differ from those sent");
    assert!(part_files(&archive).is_empty(), "a .part file is left");

    // Full-rate group: every valid datagram, none of the bad.
    std::thread::sleep(Duration::from_millis(200));
    let got_full = full_rx.finish();
    assert_eq!(got_full.len(), valid.len());
    assert!(
        got_full == valid,
        "full-rate stream differs from what was sent"
    );
    // Decimated: every 5th valid datagram.
    let got_dec = dec_rx.finish();
    let expect_dec: Vec<Vec<u8>> = valid
        .iter()
        .skip(factor as usize - 1)
        .step_by(factor as usize)
        .cloned()
        .collect();
    assert_eq!(got_dec.len(), 10_000 / factor as usize);
    assert!(
        got_dec == expect_dec,
        "decimated stream is not every 5th datagram"
    );

    // The final stats line agrees with all of it.
    assert_balanced(&last);
    assert_eq!(last.counters.received, 10_100);
    assert_eq!(last.counters.archived, 10_000);
    assert_eq!(last.counters.rejected, 100);
    assert_eq!(last.counters.in_flight, 0);
    assert_eq!(last.counters.archive_dropped, 0);
    assert_eq!(last.counters.forwarded_full, 10_000);
    assert_eq!(last.counters.forwarded_decimated, 2_000);
    assert_kernel_drops_none(&last);
    assert_eq!(last.rejected_by_reason.values().sum::<u64>(), 100);

    // Quarantine: the rejected datagrams, kept for inspection.
    // Its lines are JSON, the format it keeps for people and their tools.
    let q = std::fs::read_to_string(archive.join("quarantine.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, last.counters.quarantined);
    assert_eq!(
        last.counters.quarantined + last.counters.quarantine_dropped,
        100
    );
    assert!(lines
        .iter()
        .all(|l| l["from"].as_str().unwrap().starts_with("127.0.0.1:")));
    assert!(lines.iter().any(|l| l["reason"] == "trailing_bytes"));
}

#[test]
fn two_channels_on_one_port_each_hear_only_their_group() {
    let dir_a = tempdir();
    let dir_b = tempdir();
    let port = free_port();
    let (ga, gb) = (unique_group(), unique_group());
    let mut a = ChannelOpts::unicast("group-a");
    a.bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    a.group = Some(ga);
    let mut b = a.clone();
    b.name = "group-b".into();
    b.group = Some(gb);
    let ra = Relay::start(dir_a.path(), &a);
    let rb = Relay::start(dir_b.path(), &b);
    let recs_a = example_records(300, "group a");
    let recs_b = example_records(200, "group b");
    Sender::new(SocketAddrV4::new(ga, port)).send_paced(&recs_a, 10);
    Sender::new(SocketAddrV4::new(gb, port)).send_paced(&recs_b, 10);
    ra.wait_received(300, Duration::from_secs(30));
    rb.wait_received(200, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let (arch_a, arch_b) = (ra.archive_dir(), rb.archive_dir());
    let (ca, la) = ra.stop();
    let (cb, lb) = rb.stop();
    assert_eq!((ca, cb), (0, 0));
    assert_eq!(la.counters.received, 300, "channel a heard another group");
    assert_eq!(lb.counters.received, 200, "channel b heard another group");
    assert!(read_archive(&arch_a) == recs_a);
    assert!(read_archive(&arch_b) == recs_b);
}

#[test]
fn kernel_drops_are_reported_so_every_datagram_sent_is_accounted_for() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("kdrops");
    // A small socket buffer, and the relay frozen: the kernel must drop.
    opts.recv_buffer = "64KiB".into();
    let relay = Relay::start(dir.path(), &opts);
    if expected_io() == IoPath::Portable {
        // No kernel counter on the portable path: the relay says so
        // (null), and nothing more can be accounted for here.
        let (_, last) = relay.stop_ok();
        assert!(last.kernel_drops_absent, "{last:?}");
        return;
    }
    let records = example_records(3_000, "kernel drops");
    let sender = Sender::new(opts.bind);
    relay.signal(libc::SIGSTOP);
    for d in &records[..2_900] {
        sender.send(d);
    }
    relay.signal(libc::SIGCONT);
    // The kernel reports its drop count with the datagrams that arrive after
    // the drops.
    std::thread::sleep(Duration::from_millis(300));
    sender.send_paced(&records[2_900..], 1);
    let end = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = relay.last_stats().unwrap_or_default();
        let seen = s.counters.received + s.counters.kernel_drops;
        if seen >= 3_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "not every datagram accounted for: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (archive, last) = relay.stop_ok();
    let received = last.counters.received;
    let drops = last.counters.kernel_drops;
    assert!(
        drops > 0,
        "the kernel dropped nothing: the test did not overflow the socket"
    );
    assert_eq!(received + drops, 3_000, "{last:?}");
    assert_balanced(&last);
    // What was received is archived, in order, as a subsequence of what was sent.
    let got = read_archive(&archive);
    assert_eq!(got.len() as u64, received);
    let mut it = records.iter();
    assert!(
        got.iter().all(|g| it.any(|r| r == g)),
        "archive is not an ordered subsequence of the stream"
    );
}

/// A channel on `0.0.0.0:PORT` that joins a group on `interface` (an
/// address or an interface name), started alone in a network namespace of
/// its own and ready; the relay and the group's address.
fn start_in_netns(dir: &Path, name: &str, interface: &str) -> (Relay, SocketAddrV4) {
    let port = free_port();
    let group = unique_group();
    let mut opts = ChannelOpts::unicast(name);
    opts.bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    opts.group = Some(group);
    let config = write_channel(dir, &opts);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "interface = \"127.0.0.1\"",
        &format!("interface = \"{interface}\""),
    );
    std::fs::write(&config, text).unwrap();
    let mut relay = Relay::spawn_in_netns(dir, &config, name);
    relay.wait_ready(Duration::from_secs(20));
    (relay, SocketAddrV4::new(group, port))
}

/// loadgen inside the relay's network namespace: `count` example records,
/// counters from `first` on, to the group `to`, leaving by 192.0.2.1 with
/// TTL 0.
fn send_in_netns(relay: &Relay, to: SocketAddrV4, first: u32, count: u32) {
    let out = relay
        .in_netns(bin("loadgen"))
        .args([
            "--to",
            &to.to_string(),
            "--interface",
            "192.0.2.1",
            "--ttl",
            "0",
        ])
        .args([
            "--count",
            &count.to_string(),
            "--rate",
            "2000",
            "--quiet",
            "--start-counter",
            &first.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_join_whose_interface_is_missing_is_retried_until_it_appears() {
    // In a network namespace of its own, so the test can add the interface
    // address the channel waits for without touching the host's network.
    let dir = tempdir();
    // The join interface: an address (TEST-NET-1) no interface has yet.
    let (relay, to) = start_in_netns(dir.path(), "late-join", "192.0.2.1");
    std::thread::sleep(Duration::from_millis(1_200));
    let s = relay.last_stats().expect("a stats line");
    assert!(!s.joined, "joined an interface that does not exist: {s:?}");
    assert!(relay
        .stderr()
        .contains("cannot join the multicast group yet"));

    // The interface appears: the channel joins and receives.
    let ok = relay
        .in_netns("ip")
        .args(["addr", "add", "192.0.2.1/32", "dev", "lo"])
        .status()
        .unwrap();
    assert!(ok.success());
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !relay.last_stats().unwrap().joined {
        assert!(std::time::Instant::now() < end, "the join was not retried");
        std::thread::sleep(Duration::from_millis(100));
    }
    send_in_netns(&relay, to, 0, 200);
    relay.wait_received(200, Duration::from_secs(20));
    let (archive, last) = relay.stop_ok();
    assert_eq!(last.counters.received, 200);
    assert_eq!(read_archive(&archive).len(), 200);
}

#[test]
fn a_membership_lost_with_its_interface_is_joined_again_when_it_returns() {
    // In a network namespace of its own: the test creates, removes and
    // re-creates the interface (a veth pair) the channel joins on, named
    // in the channel file by its name, v0.
    let dir = tempdir();
    let (relay, to) = start_in_netns(dir.path(), "rejoin", "v0");
    let sh = |relay: &Relay, script: &str| {
        let ok = relay.in_netns("sh").args(["-c", script]).status().unwrap();
        assert!(ok.success(), "{script}");
    };
    let up = "ip link add v0 type veth peer name v1 && ip addr add 192.0.2.1/24 dev v0 \
              && ip link set v1 up && ip link set v0 up";
    let joined_is = |relay: &Relay, want: bool| {
        let end = std::time::Instant::now() + Duration::from_secs(15);
        while relay.last_stats().map(|s| s.joined) != Some(want) {
            assert!(
                std::time::Instant::now() < end,
                "joined never became {want}: {:?}",
                relay.last_stats()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    sh(&relay, up);
    joined_is(&relay, true);
    send_in_netns(&relay, to, 0, 100);
    relay.wait_received(100, Duration::from_secs(20));

    // The interface goes away (its memberships with it), then comes back.
    sh(&relay, "ip link del v0");
    joined_is(&relay, false);
    sh(&relay, up);
    joined_is(&relay, true);
    assert!(
        relay.stderr().contains("joined the multicast group again"),
        "{}",
        relay.stderr()
    );
    send_in_netns(&relay, to, 100, 100);
    relay.wait_received(200, Duration::from_secs(20));
    let (archive, last) = relay.stop_ok();
    assert_eq!(last.counters.received, 200);
    assert_eq!(read_archive(&archive).len(), 200);
}

#[test]
fn a_receive_buffer_smaller_than_asked_is_reported() {
    // Without CAP_NET_ADMIN the kernel clamps SO_RCVBUF to rmem_max, and
    // reads it back doubled: ask for 1.5 × rmem_max, which the doubled
    // figure would seem to cover.
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("small-buffer");
    opts.recv_buffer = (rmem_max + rmem_max / 2).to_string();
    let config = write_channel(dir.path(), &opts);
    let mut relay = Relay::spawn_wrapped(
        dir.path(),
        &config,
        &opts.name,
        &[
            "setpriv",
            "--bounding-set",
            "-net_admin",
            "--inh-caps",
            "-net_admin",
        ],
    );
    let ready = relay.wait_ready(Duration::from_secs(20));
    assert_eq!(ready.recv_buffer_granted, rmem_max, "{ready:?}");
    // Logged before `ready`; the stderr reader may lag a little behind.
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while !relay
        .stderr()
        .contains("granted less receive buffer than asked")
    {
        assert!(
            std::time::Instant::now() < end,
            "no warning:\n{}",
            relay.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _) = relay.stop();
    assert_eq!(code, 0);
}
