//! End-to-end tests of `relay-channel`: the real binary over loopback
//! sockets, archives read back with fastavro and apache-avro.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use relay_channel::status::StatusLine;
use speeddata_tests::*;

/// Reads a channel's archive with both readers, checks they agree and that
/// every file's header carries the schema as written; returns the records.
fn read_archive(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let files = avro_files(dir);
    assert!(!files.is_empty(), "no archive file in {}", dir.display());
    let fast = read_with_fastavro(&files);
    let apache = read_with_apache_avro(&files);
    assert_eq!(
        fast.records.len(),
        apache.len(),
        "fastavro and apache-avro disagree on the count"
    );
    assert!(
        fast.records == apache,
        "fastavro and apache-avro disagree on the records"
    );
    for (path, schema, _) in &fast.files {
        assert_eq!(
            schema.trim(),
            EXAMPLE_SCHEMA.trim(),
            "{} does not carry the schema as written",
            path.display()
        );
    }
    fast.records
}

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
    assert_eq!(last.counters.kernel_drops, 0);
    assert_eq!(last.rejected_by_reason.values().sum::<u64>(), 100);

    // Quarantine: the rejected datagrams, kept for inspection.
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
fn every_codec_round_trips() {
    let records = example_records(3_000, "codec");
    for codec in ["null", "deflate", "snappy", "zstd"] {
        let dir = tempdir();
        let mut opts = ChannelOpts::unicast(&format!("codec-{codec}"));
        opts.archive = vec![
            format!("codec = \"{codec}\""),
            "block_size = \"16KiB\"".into(),
        ];
        let relay = Relay::start(dir.path(), &opts);
        relay.feed(opts.bind, &records, 20);
        let (archive, last) = relay.stop_ok();
        assert_eq!(last.counters.archived, 3_000, "{codec}");
        let got = read_archive(&archive);
        assert!(got == records, "codec {codec}: records differ");
        let codec_name = std::process::Command::new("python3")
            .args([
                "-c",
                "import fastavro,sys; print(fastavro.reader(open(sys.argv[1],'rb')).codec)",
            ])
            .arg(&avro_files(&archive)[0])
            .output()
            .unwrap();
        let expect = if codec == "zstd" { "zstandard" } else { codec };
        assert_eq!(String::from_utf8_lossy(&codec_name.stdout).trim(), expect);
    }
}

#[test]
fn rotation_by_size_gives_whole_files_in_order() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("rot-size");
    opts.archive = vec![
        "codec = \"null\"".into(),
        "block_size = \"8KiB\"".into(),
        "rotate_size = \"64KiB\"".into(),
    ];
    let relay = Relay::start(dir.path(), &opts);
    let records = example_records(5_000, "rotation by size");
    relay.feed(opts.bind, &records, 20);
    let (archive, last) = relay.stop_ok();
    let files = avro_files(&archive);
    assert!(
        files.len() >= 5,
        "expected several files, got {}",
        files.len()
    );
    for f in &files[..files.len() - 1] {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(
            len >= 64 << 10,
            "{} closed early at {len} bytes",
            f.display()
        );
        assert!(
            len < (64 << 10) + (9 << 10),
            "{} is {len} bytes, past size + one block",
            f.display()
        );
    }
    assert_eq!(last.counters.files_closed as usize, files.len());
    let got = read_archive(&archive);
    assert!(
        got == records,
        "records across files are missing, doubled or out of order"
    );
}

#[test]
fn rotation_by_time_gives_whole_files_in_order() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("rot-time");
    opts.archive = vec![
        "rotate_interval = \"300ms\"".into(),
        "flush_interval = \"50ms\"".into(),
    ];
    let relay = Relay::start(dir.path(), &opts);
    let records = example_records(2_000, "rotation by time");
    // 2,000 records over about 2 s: several 300 ms files.
    relay.feed(opts.bind, &records, 1);
    let (archive, _) = relay.stop_ok();
    let files = avro_files(&archive);
    assert!(
        files.len() >= 4,
        "expected several files, got {}",
        files.len()
    );
    // Each closes 300 ms after its first record (give or take a tick and
    // a busy machine).
    for f in &files {
        let (_, from, to) = name_span(f).expect("a span in the name");
        let span = to.duration_since(from).unwrap();
        assert!(
            span < Duration::from_secs(1),
            "{} spans {span:?}",
            f.display()
        );
    }
    let got = read_archive(&archive);
    assert!(
        got == records,
        "records across files are missing, doubled or out of order"
    );
}

#[test]
fn sigterm_mid_stream_loses_nothing_received() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("sigterm");
    // Large blocks and a long flush: everything is still buffered at SIGTERM.
    opts.archive = vec![
        "flush_interval = \"1h\"".into(),
        "block_size = \"64MiB\"".into(),
    ];
    let relay = Relay::start(dir.path(), &opts);
    let records = example_records(60_000, "sigterm");
    let bind = opts.bind;
    let to_send = records.clone();
    let sender = std::thread::spawn(move || {
        let s = Sender::new(bind);
        // Bounded: 60,000 datagrams at 20 per ms, about 3 s.
        for (i, d) in to_send.iter().enumerate() {
            s.send(d);
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    relay.wait_received(5_000, Duration::from_secs(30));
    let archive = relay.archive_dir();
    let (code, last) = relay.stop();
    sender.join().unwrap();
    assert_eq!(code, 0);
    assert!(part_files(&archive).is_empty(), "a .part file is left");
    assert_balanced(&last);
    assert_eq!(last.counters.in_flight, 0);
    assert_eq!(last.counters.kernel_drops, 0);
    let received = last.counters.received as usize;
    assert!(
        received >= 5_000 && received < records.len(),
        "stopped mid-stream: {received}"
    );
    assert_eq!(last.counters.archived as usize, received);
    let got = read_archive(&archive);
    assert!(
        got[..] == records[..received],
        "the archive is not exactly what was received"
    );
}

#[test]
fn a_killed_relay_leaves_a_part_file_that_the_next_start_recovers() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("crash");
    opts.archive = vec!["flush_interval = \"50ms\"".into()];
    let relay = Relay::start(dir.path(), &opts);
    let records = example_records(2_000, "crash");
    Sender::new(opts.bind).send_paced(&records, 20);
    relay.wait_received(2_000, Duration::from_secs(30));
    // Wait for a stats line showing everything written as blocks.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while relay.last_stats().map(|s| s.counters.archived) != Some(2_000) {
        assert!(std::time::Instant::now() < end, "blocks were not written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let archive = relay.archive_dir();
    let mut relay = relay;
    relay.signal(libc::SIGKILL);
    relay.wait_exit(Duration::from_secs(10));
    let killed = SystemTime::now();
    let parts = part_files(&archive);
    assert_eq!(parts.len(), 1, "the crash leaves the open file as .part");
    // Half a block of garbage at the end, as a torn write would leave.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&parts[0])
        .unwrap();
    std::io::Write::write_all(&mut f, &[0x42; 300]).unwrap();
    drop(f);

    let restarted = SystemTime::now();
    let relay = Relay::start(dir.path(), &opts);
    assert!(
        part_files(&archive).is_empty(),
        "the .part was not recovered"
    );
    let (code, _) = relay.stop();
    assert_eq!(code, 0);
    // Closed as {channel}-{from}--{to}.avro, {to} the .part's last write
    // (here the torn one, after the kill; file times come from the kernel's
    // coarse clock, a tick behind).
    let files = avro_files(&archive);
    assert_eq!(files.len(), 1);
    let part_name = parts[0].file_name().unwrap().to_str().unwrap();
    let stem = part_name.strip_suffix(".avro.part").unwrap();
    let name = files[0].file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with(&format!("{stem}--")), "{name}");
    let (channel, from, to) = name_span(&files[0]).expect("a span in the name");
    assert_eq!(channel, "crash");
    assert!(from <= to, "{name}");
    assert!(
        to + Duration::from_millis(20) >= killed && to <= restarted,
        "{name}: to is not the .part's last write (killed {:?}, restarted {:?})",
        killed.duration_since(std::time::UNIX_EPOCH).unwrap(),
        restarted.duration_since(std::time::UNIX_EPOCH).unwrap()
    );
    let got = read_archive(&archive);
    assert!(
        got == records,
        "the recovered file does not hold the written records"
    );
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

// ---------------------------------------------------------------------------
// Bad configuration: a clear message and the right exit code.

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("schema.avsc"), EXAMPLE_SCHEMA).unwrap();
    let p = dir.join("bad.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn run_config(path: &std::path::Path) -> (i32, String) {
    let (code, _, err) = run_relay(&["run", "--config", path.to_str().unwrap()]);
    (code, err)
}

#[test]
fn unknown_key_exits_78_naming_file_and_key() {
    let dir = tempdir();
    let p = write_config(
        dir.path(),
        "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\nbuffer_size = 5\n[archive]\ndir = \"a\"\n",
    );
    let (code, err) = run_config(&p);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert!(
        err.contains("receive") && err.contains("buffer_size"),
        "{err}"
    );
}

#[test]
fn bad_values_exit_78_naming_every_key() {
    let dir = tempdir();
    let p = write_config(
        dir.path(),
        "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1\"\n[archive]\ndir = \"a\"\ncodec = \"lz4\"\nrotate_size = \"huge\"\n\
         [decimated]\ngroup = \"239.255.1.1:6001\"\ninterface = \"127.0.0.1\"\nttl = 0\nalgorithm = \"median\"\nfactor = 5\n",
    );
    let (code, err) = run_config(&p);
    assert_eq!(code, 78, "{err}");
    for key in [
        "receive.bind",
        "archive.codec",
        "archive.rotate_size",
        "decimated.algorithm",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}

#[test]
fn invalid_schema_exits_78() {
    let dir = tempdir();
    let p = write_config(
        dir.path(),
        "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\n[archive]\ndir = \"a\"\n",
    );
    std::fs::write(
        dir.path().join("schema.avsc"),
        r#"{"type":"record","name":"x","fields":[{"name":"a","type":"nonesuch"}]}"#,
    )
    .unwrap();
    let (code, err) = run_config(&p);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("schema.avsc") && err.contains("schema"),
        "{err}"
    );
    let (code, _, err) = run_relay(&["check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
}

#[test]
fn port_in_use_exits_1() {
    let dir = tempdir();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let p = write_config(
        dir.path(),
        &format!("schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:{port}\"\n[archive]\ndir = \"a\"\n"),
    );
    let (code, err) = run_config(&p);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("receive.bind") && err.to_lowercase().contains("in use"),
        "{err}"
    );
}

#[test]
fn archive_folder_that_cannot_be_created_exits_1() {
    let dir = tempdir();
    std::fs::write(dir.path().join("a-file"), b"not a folder").unwrap();
    let p = write_config(
        dir.path(),
        &format!(
            "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:{}\"\n[archive]\ndir = \"a-file/archive\"\n",
            free_port()
        ),
    );
    let (code, err) = run_config(&p);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("archive folder") && err.contains("a-file"),
        "{err}"
    );
}

#[test]
fn the_example_channel_file_is_valid() {
    let p = root().join("channels.d/example.toml");
    let (code, out, err) = run_relay(&["check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"example\" is valid"), "{out}");
}

#[test]
fn a_removed_archive_folder_never_stops_the_live_output() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("vanish");
    let full = group_addr(unique_group(), free_port());
    opts.full = Some(full);
    opts.archive = vec!["flush_interval = \"20ms\"".into()];
    let relay = Relay::start(dir.path(), &opts);
    let full_rx = GroupReceiver::join(full);
    let records = example_records(4_000, "vanish");
    let sender = Sender::new(opts.bind);
    sender.send_paced(&records[..1_000], 1);
    relay.wait_received(1_000, Duration::from_secs(30));
    // An operator removes the whole archive folder while a file is open.
    std::fs::remove_dir_all(relay.archive_dir()).unwrap();
    sender.send_paced(&records[1_000..], 1);
    relay.wait_received(4_000, Duration::from_secs(30));
    let (archive, last) = relay.stop_ok();
    std::thread::sleep(Duration::from_millis(200));
    let got_full = full_rx.finish();
    assert!(
        got_full == records,
        "the full-rate output lost datagrams while the archive had trouble"
    );
    assert_balanced(&last);
    assert!(last.counters.archive_errors >= 1, "{last:?}");
    assert!(last.counters.archive_dropped >= 1, "{last:?}");
    assert!(
        last.archive_healthy,
        "the archive did not recover: {last:?}"
    );
    // After the retry the archive writes again: a contiguous run of the
    // later records, up to the last one, in a readable file.
    let got = read_archive(&archive);
    assert!(
        !got.is_empty(),
        "nothing archived after the folder came back"
    );
    let start = records.iter().position(|r| *r == got[0]).unwrap();
    assert!(start >= 1_000, "a record from before the removal survived");
    assert!(
        got[..] == records[start..],
        "the records after recovery are not contiguous to the end"
    );
}

#[test]
fn kernel_drops_are_reported_so_every_datagram_sent_is_accounted_for() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("kdrops");
    // A small socket buffer, and the relay frozen: the kernel must drop.
    opts.recv_buffer = "64KiB".into();
    let relay = Relay::start(dir.path(), &opts);
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

#[test]
fn a_join_whose_interface_is_missing_is_retried_until_it_appears() {
    // In a network namespace of its own, so the test can add the interface
    // address the channel waits for without touching the host's network.
    let dir = tempdir();
    let port = free_port();
    let group = unique_group();
    let mut opts = ChannelOpts::unicast("late-join");
    opts.bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    opts.group = Some(group);
    let config = write_channel(dir.path(), &opts);
    // The join interface: an address (TEST-NET-1) no interface has yet.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interface = \"127.0.0.1\"", "interface = \"192.0.2.1\"");
    std::fs::write(&config, text).unwrap();
    let mut relay = Relay::spawn_in_netns(dir.path(), &config, "late-join");
    relay.wait_ready(Duration::from_secs(20));
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
    let out = relay
        .in_netns(bin("loadgen"))
        .args([
            "--to",
            &format!("{group}:{port}"),
            "--interface",
            "192.0.2.1",
            "--ttl",
            "0",
        ])
        .args(["--count", "200", "--rate", "2000", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let port = free_port();
    let group = unique_group();
    let mut opts = ChannelOpts::unicast("rejoin");
    opts.bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    opts.group = Some(group);
    let config = write_channel(dir.path(), &opts);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interface = \"127.0.0.1\"", "interface = \"v0\"");
    std::fs::write(&config, text).unwrap();
    let mut relay = Relay::spawn_in_netns(dir.path(), &config, "rejoin");
    relay.wait_ready(Duration::from_secs(20));
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
    let send = |relay: &Relay, first: u32| {
        let out = relay
            .in_netns(bin("loadgen"))
            .args([
                "--to",
                &format!("{group}:{port}"),
                "--interface",
                "192.0.2.1",
                "--ttl",
                "0",
            ])
            .args([
                "--count",
                "100",
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
    };
    sh(&relay, up);
    joined_is(&relay, true);
    send(&relay, 0);
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
    send(&relay, 100);
    relay.wait_received(200, Duration::from_secs(20));
    let (archive, last) = relay.stop_ok();
    assert_eq!(last.counters.received, 200);
    assert_eq!(read_archive(&archive).len(), 200);
}

#[test]
fn senders_outside_allow_from_are_rejected_with_their_reason() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("allowlist");
    let full = group_addr(unique_group(), free_port());
    opts.full = Some(full);
    opts.receive = vec!["allow_from = [\"127.0.0.2\"]".into()];
    let relay = Relay::start(dir.path(), &opts);
    let full_rx = GroupReceiver::join(full);
    let allowed = example_records(300, "allowed");
    let stranger = example_records(200, "stranger");
    Sender::from_addr(opts.bind, Ipv4Addr::new(127, 0, 0, 2)).send_paced(&allowed, 10);
    Sender::from_addr(opts.bind, Ipv4Addr::LOCALHOST).send_paced(&stranger, 10);
    relay.wait_received(500, Duration::from_secs(20));
    let (archive, last) = relay.stop_ok();
    assert_eq!(last.counters.rejected, 200, "{last:?}");
    assert_eq!(
        last.rejected_by_reason.get("sender_not_allowed"),
        Some(&200),
        "{last:?}"
    );
    assert_balanced(&last);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        full_rx.finish() == allowed,
        "the full-rate output carried a stranger's datagrams"
    );
    assert!(read_archive(&archive) == allowed);
}

#[test]
fn single_object_encoding_is_checked_archived_as_datums_and_forwarded_whole() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("single-object");
    let full = group_addr(unique_group(), free_port());
    opts.full = Some(full);
    opts.receive = vec!["encoding = \"single_object\"".into()];
    let relay = Relay::start(dir.path(), &opts);
    let full_rx = GroupReceiver::join(full);
    let schema = example_schema();
    let objects: Vec<Vec<u8>> = (0..500)
        .map(|i| example_single_object(&schema, i, "so"))
        .collect();
    let datums: Vec<Vec<u8>> = (0..500).map(|i| example_datum(&schema, i, "so")).collect();
    assert!(objects
        .iter()
        .zip(&datums)
        .all(|(o, d)| o[..2] == [0xC3, 0x01] && o[10..] == d[..]));
    // Plain datums (no header) and another schema's fingerprint are refused.
    let mut other = objects[0].clone();
    other[5] ^= 0xff;
    let mut stream = objects.clone();
    stream.extend(datums[..20].iter().cloned());
    stream.push(other);
    relay.feed(opts.bind, &stream, 10);
    let (archive, last) = relay.stop_ok();
    assert_eq!(last.counters.archived, 500, "{last:?}");
    assert_eq!(
        last.rejected_by_reason.get("wrong_header"),
        Some(&21),
        "{last:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        full_rx.finish() == objects,
        "the full-rate output did not carry the datagrams unchanged"
    );
    assert!(
        read_archive(&archive) == datums,
        "the archive does not hold the bare datums"
    );
}

/// A flood of invalid datagrams (short and long) next to a valid stream, at
/// a rate the relay keeps up with: every valid record is archived. `quarantine`
/// is the `archive.quarantine_size` line.
fn flood_next_to_valid_stream(name: &str, quarantine: &str) {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast(name);
    // The smallest archive queue there is.
    opts.archive = vec!["queue = \"1MiB\"".into(), quarantine.into()];
    let relay = Relay::start(dir.path(), &opts);
    let valid = example_records(3_000, "flood");
    let mut stream = Vec::new();
    for (i, v) in valid.iter().enumerate() {
        stream.push(v.clone());
        for k in 0..20 {
            stream.push(match (i + k) % 2 {
                // Short: a varint that never ends.
                0 => vec![0x80u8; 3],
                // Long: a string length far past the end, and junk.
                _ => {
                    let mut x = vec![0xffu8; 1_400];
                    x[0] = 0x02;
                    x
                }
            });
        }
    }
    Sender::new(opts.bind).send_paced(&stream, 20);
    relay.wait_received(stream.len() as u64, Duration::from_secs(60));
    let (archive, last) = relay.stop_ok();
    assert_eq!(
        last.counters.kernel_drops, 0,
        "the flood was too fast to judge: {last:?}"
    );
    assert_balanced(&last);
    assert_eq!(last.counters.rejected, 60_000, "{last:?}");
    assert_eq!(
        last.counters.archive_dropped, 0,
        "valid records lost to the flood: {last:?}"
    );
    assert_eq!(last.counters.archived, 3_000, "{last:?}");
    assert!(read_archive(&archive) == valid, "archive differs");
    // Every reject is kept or counted as not kept.
    assert_eq!(
        last.counters.quarantined + last.counters.quarantine_dropped,
        60_000,
        "{last:?}"
    );
}

#[test]
fn a_flood_of_garbage_never_costs_a_valid_record_its_place() {
    flood_next_to_valid_stream("flood-kept", "quarantine_size = \"16MiB\"");
}

#[test]
fn a_flood_of_garbage_without_quarantine_never_costs_a_valid_record_its_place() {
    flood_next_to_valid_stream("flood-unkept", "quarantine_size = 0");
}

#[test]
fn symlinks_in_the_channel_folder_are_never_followed() {
    use std::os::unix::fs::symlink;
    let dir = tempdir();
    let outside = tempdir();
    let precious_q = outside.path().join("notes.txt");
    let precious_p = outside.path().join("data.bin");
    std::fs::write(&precious_q, "precious\n").unwrap();
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&precious_p, &bytes).unwrap();

    let opts = ChannelOpts::unicast("links");
    let folder = dir.path().join("archive").join("links");
    std::fs::create_dir_all(&folder).unwrap();
    // Planted where the relay appends rejects and where recovery truncates.
    symlink(&precious_q, folder.join("quarantine.jsonl")).unwrap();
    let planted_part = folder.join("links-20260101T000000.000Z.avro.part");
    symlink(&precious_p, &planted_part).unwrap();

    let relay = Relay::start(dir.path(), &opts);
    let valid = example_records(200, "links");
    let mut stream = valid.clone();
    for i in 0..20 {
        stream.push(malformed(&valid[0], i % 4));
    }
    relay.feed(opts.bind, &stream, 5);
    let (archive, last) = relay.stop_ok();

    assert_eq!(std::fs::read_to_string(&precious_q).unwrap(), "precious\n");
    assert!(
        std::fs::read(&precious_p).unwrap() == bytes,
        "recovery wrote through a symlink"
    );
    assert!(std::fs::symlink_metadata(&planted_part)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(last.counters.rejected, 20, "{last:?}");
    assert_eq!(last.counters.quarantined, 0, "{last:?}");
    assert_eq!(last.counters.quarantine_dropped, 20, "{last:?}");
    assert!(read_archive(&archive) == valid);
}

#[test]
fn a_channel_folder_that_is_a_symlink_is_refused_but_archive_dir_may_be_one() {
    use std::os::unix::fs::symlink;
    // The channel's own folder, <archive.dir>/<name>, is a symlink: exit 78.
    let dir = tempdir();
    let elsewhere = tempdir();
    let opts = ChannelOpts::unicast("moved");
    let config = write_channel(dir.path(), &opts);
    std::fs::create_dir_all(dir.path().join("archive")).unwrap();
    symlink(elsewhere.path(), dir.path().join("archive").join("moved")).unwrap();
    let (code, _out, err) = run_relay(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("moved.toml") && err.contains("archive.dir") && err.contains("symlink"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

    // archive.dir itself a symlink (a mount elsewhere, say): fine.
    let dir = tempdir();
    let real = tempdir();
    symlink(real.path(), dir.path().join("archive")).unwrap();
    let opts = ChannelOpts::unicast("linked-root");
    let relay = Relay::start(dir.path(), &opts);
    let valid = example_records(50, "root");
    relay.feed(opts.bind, &valid, 5);
    relay.stop_ok();
    assert!(read_archive(&real.path().join("linked-root")) == valid);
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

/// The records of `got` are the last ones of `sent`, in order.
fn is_suffix_of(got: &[Vec<u8>], sent: &[Vec<u8>]) -> bool {
    got.len() <= sent.len() && got == &sent[sent.len() - got.len()..]
}

#[test]
fn retention_by_size_deletes_the_oldest_files_and_keeps_the_folder_bounded() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("ret-size");
    opts.archive = vec![
        "codec = \"null\"".into(),
        "block_size = \"8KiB\"".into(),
        "rotate_size = \"64KiB\"".into(),
        "retention_size = \"200KiB\"".into(),
    ];
    let relay = Relay::start(dir.path(), &opts);
    let records = example_records(12_000, "retention by size");
    relay.feed(opts.bind, &records, 20);
    let (archive, last) = relay.stop_ok();
    let files = avro_files(&archive);
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let closed = last.counters.files_closed as usize;
    assert!(closed >= 6, "expected many files closed, got {closed}");
    assert!(
        files.len() < closed,
        "nothing was deleted: {} of {closed} files left",
        files.len()
    );
    assert!(
        total <= 200 << 10,
        "the folder holds {total} bytes, over 200KiB"
    );
    // The kept files are the newest: whole, in order, with no gap.
    let got = read_archive(&archive);
    assert!(!got.is_empty());
    assert!(
        is_suffix_of(&got, &records),
        "the kept records are not the newest ones"
    );
    // Files other than closed archives are never touched by retention.
    assert!(archive.join("quarantine.jsonl").exists() || last.counters.rejected == 0);
}

#[test]
fn retention_by_age_deletes_files_older_than_it() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("ret-age");
    opts.archive = vec![
        "codec = \"null\"".into(),
        "flush_interval = \"100ms\"".into(),
        "rotate_interval = \"300ms\"".into(),
        "retention_age = \"1s\"".into(),
    ];
    let relay = Relay::start(dir.path(), &opts);
    // About 3 s of traffic: about ten files, of which the last second's stay.
    let records = example_records(3_000, "retention by age");
    relay.feed(opts.bind, &records, 1);
    let (archive, last) = relay.stop_ok();
    let stopped = SystemTime::now();
    let files = avro_files(&archive);
    let closed = last.counters.files_closed as usize;
    assert!(closed >= 6, "expected many files closed, got {closed}");
    assert!(
        !files.is_empty() && files.len() <= closed / 2,
        "{} of {closed} files left",
        files.len()
    );
    // Files age from the end of their span, named in the file name.
    for f in &files {
        let (_, _, to) = name_span(f).expect("a span in the name");
        let age = stopped.duration_since(to).unwrap_or_default();
        assert!(
            age < Duration::from_millis(2_500),
            "{} is {age:?} old, past retention_age",
            f.display()
        );
    }
    let got = read_archive(&archive);
    assert!(
        is_suffix_of(&got, &records),
        "the kept records are not the newest ones"
    );
}

// ---------------------------------------------------------------------------
// Logical types: values no reader can convert are rejected, not archived.

/// A schema with logical types at the top and in a nested record.
const LOGICAL_SCHEMA: &str = r#"{
  "type": "record", "name": "Reading", "namespace": "test.logical",
  "fields": [
    {"name": "time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
    {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
      {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}},
    {"name": "counter", "type": "int"}
  ]
}"#;

/// `n` as a decimal's unscaled bytes: big-endian two's complement, fewest
/// bytes.
fn unscaled(n: i64) -> Vec<u8> {
    let b = n.to_be_bytes();
    let sign = if n < 0 { 0xff } else { 0x00 };
    let mut start = 0;
    while start < 7 && b[start] == sign && (b[start + 1] & 0x80) == (sign & 0x80) {
        start += 1;
    }
    b[start..].to_vec()
}

/// The logical-typed values of one record of [`LOGICAL_SCHEMA`].
#[derive(Clone, Copy)]
struct Reading {
    time: i64,
    day: i32,
    amount: i64,
    when: i64,
}

/// One record of [`LOGICAL_SCHEMA`], encoded by apache-avro.
fn logical_datum(schema: &apache_avro::Schema, r: Reading, counter: i32) -> Vec<u8> {
    use apache_avro::types::Value;
    let value = Value::Record(vec![
        ("time".into(), Value::TimestampMicros(r.time)),
        ("day".into(), Value::Date(r.day)),
        (
            "amount".into(),
            Value::Decimal(apache_avro::Decimal::from(unscaled(r.amount))),
        ),
        (
            "inner".into(),
            Value::Record(vec![("when".into(), Value::TimestampMillis(r.when))]),
        ),
        ("counter".into(), Value::Int(counter)),
    ]);
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap()
}

#[test]
fn out_of_range_logical_values_are_rejected_so_fastavro_reads_the_whole_archive() {
    let dir = tempdir();
    let opts = ChannelOpts::unicast("logical");
    let relay = Relay::start_with_schema(dir.path(), &opts, LOGICAL_SCHEMA);
    let schema = apache_avro::Schema::parse_str(LOGICAL_SCHEMA).unwrap();

    // 2026-11-22T21:30:00Z, in microseconds and in days.
    const T0: i64 = 1_795_383_000_000_000;
    const DAY0: i32 = 20_779;
    let valid_at = |i: i32| Reading {
        time: T0 + i64::from(i) * 1_000,
        day: DAY0 + i % 7,
        // Up to nine digits: 9,999,999.99 at most.
        amount: if i % 2 == 0 {
            999_999_999 - i64::from(i)
        } else {
            -123_456 * i64::from(i)
        },
        when: T0 / 1_000 + i64::from(i),
    };
    // Valid as Avro, out of range for their logical types: (field, values).
    let ok = valid_at(0);
    let bad_kinds = [
        // Issue 7's value: in the year 132,177.
        (
            "time",
            Reading {
                time: 4_108_947_283_768_568_201,
                ..ok
            },
        ),
        (
            "time",
            Reading {
                time: 253_402_300_800_000_000,
                ..ok
            },
        ), // 10000-01-01
        (
            "time",
            Reading {
                time: -62_135_596_800_000_001,
                ..ok
            },
        ), // before 0001-01-01
        (
            "day",
            Reading {
                day: 2_932_897,
                ..ok
            },
        ), // 10000-01-01
        (
            "amount",
            Reading {
                amount: 1_000_000_000,
                ..ok
            },
        ), // ten digits
        (
            "amount",
            Reading {
                amount: -1_000_000_000,
                ..ok
            },
        ),
        (
            "inner.when",
            Reading {
                when: i64::MAX,
                ..ok
            },
        ),
    ];
    let mut stream = Vec::new();
    let mut valid = Vec::new();
    let mut bad = Vec::new();
    for i in 0..2_000 {
        let d = logical_datum(&schema, valid_at(i), i);
        stream.push(d.clone());
        valid.push(d);
        if i % 50 == 25 {
            let (field, r) = bad_kinds[bad.len() % bad_kinds.len()];
            let d = logical_datum(&schema, r, -1);
            stream.push(d.clone());
            bad.push((field, d));
        }
    }
    assert_eq!(bad.len(), 40);
    relay.feed(opts.bind, &stream, 10);
    let (archive, last) = relay.stop_ok();

    // Exactly the out-of-range ones are rejected, under their own reason.
    assert_balanced(&last);
    assert_eq!(last.counters.received, 2_040, "{last:?}");
    assert_eq!(last.counters.archived, 2_000, "{last:?}");
    assert_eq!(last.counters.rejected, 40, "{last:?}");
    assert_eq!(
        last.rejected_by_reason.get("logical_type_range"),
        Some(&40),
        "{last:?}"
    );
    assert_eq!(last.rejected_by_reason.len(), 1, "{last:?}");

    // Quarantine: each entry says why and names the field.
    let q = std::fs::read_to_string(archive.join("quarantine.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40, "{q}");
    for (line, (field, d)) in lines.iter().zip(&bad) {
        assert_eq!(line["reason"], "logical_type_range", "{line}");
        assert_eq!(line["length"], d.len(), "{line}");
        let detail = line["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("field `{field}`")), "{detail}");
    }
    assert!(lines[0]["detail"]
        .as_str()
        .unwrap()
        .contains("timestamp-micros value at offset 0 is outside years 1 to 9999"));

    // The archive holds exactly the valid records, and reads to its end with
    // fastavro's default reader (logical types converted) and apache-avro.
    let files = avro_files(&archive);
    assert!(!files.is_empty() && part_files(&archive).is_empty());
    let values = read_values_with_fastavro(&files);
    assert_eq!(values.len(), 2_000);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v["counter"], i as i64, "{v}");
    }
    assert_eq!(values[0]["time"], "2026-11-22T21:30:00+00:00");
    assert_eq!(values[0]["day"], "2026-11-22");
    assert_eq!(values[0]["amount"], "9999999.99");
    assert_eq!(values[1]["amount"], "-1234.56");
    assert_eq!(
        values[1]["inner"]["when"],
        "2026-11-22T21:30:00.001000+00:00"
    );
    assert_eq!(values[1_999]["time"], "2026-11-22T21:30:01.999000+00:00");
    assert!(
        read_with_apache_avro(&files) == valid,
        "apache-avro reads other records"
    );
}

// ---------------------------------------------------------------------------
// File names carry each file's span; holds keep files past retention.

/// SIGTERM, a clean exit; the events the relay wrote, and its stderr.
fn stop_with_events(mut relay: Relay) -> (Vec<StatusLine>, String) {
    relay.signal(libc::SIGTERM);
    assert_eq!(
        relay.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        relay.stderr()
    );
    (relay.events(), relay.stderr())
}

#[test]
fn closed_files_are_named_from_their_first_record_to_their_close() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("span-names");
    // Blocks are written once a second, files close 300 ms after their first
    // record: a name from the first block's write would be late.
    opts.archive = vec![
        "rotate_interval = \"300ms\"".into(),
        "flush_interval = \"1s\"".into(),
    ];
    let relay = Relay::start(dir.path(), &opts);
    let records = example_records(1_500, "span names");
    let first_sent = SystemTime::now();
    relay.feed(opts.bind, &records, 1);
    let archive = relay.archive_dir();
    let (events, _) = stop_with_events(relay);
    let stopped = SystemTime::now();

    let files = avro_files(&archive);
    assert!(files.len() >= 4, "expected several files, got {files:?}");
    assert!(part_files(&archive).is_empty());
    // What file_closed reported is what is on disk, name for name.
    let mut reported = closed_paths(&events);
    reported.sort();
    assert_eq!(reported, files);
    let spans: Vec<(SystemTime, SystemTime)> = files
        .iter()
        .map(|f| {
            let (channel, from, to) = name_span(f).unwrap_or_else(|| {
                panic!("{} is not {{channel}}-{{from}}--{{to}}.avro", f.display())
            });
            assert_eq!(channel, "span-names");
            assert!(from <= to, "{}", f.display());
            assert!(
                to.duration_since(from).unwrap() < Duration::from_secs(1),
                "{} spans a second or more: it closed late",
                f.display()
            );
            (from, to)
        })
        .collect();
    let (first_from, _) = spans[0];
    assert!(
        first_from + Duration::from_millis(5) >= first_sent,
        "the first file starts before the first record was sent"
    );
    assert!(
        first_from.duration_since(first_sent).unwrap_or_default() < Duration::from_millis(500),
        "the first file starts well after the first record arrived"
    );
    for w in spans.windows(2) {
        assert!(
            w[0].0 < w[1].0 && w[0].1 <= w[1].1,
            "files out of order: {w:?}"
        );
    }
    assert!(spans.last().unwrap().1 <= stopped);
    assert!(read_archive(&archive) == records);
}

/// Waits up to `limit` until `ok()`; panics with `what()` otherwise.
fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool, what: impl Fn() -> String) {
    let end = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < end, "{}", what());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn set(paths: impl IntoIterator<Item = PathBuf>) -> BTreeSet<PathBuf> {
    paths.into_iter().collect()
}

/// A channel with `retention_age = "2s"` and `rotate_interval = "1s"`, a few
/// records every 100 ms for `stream`; a hold of `range` (from the start of
/// the stream) for this channel is written `hold_at` into it. Returns the
/// relay, still running, and the files that overlap the hold (the ones
/// kept), once every other file has gone.
fn hold_against_age(
    name: &str,
    holds: &Path,
    relay: &Relay,
    bind: SocketAddrV4,
    stream: Duration,
    hold_at: Duration,
    range: (Duration, Duration),
) -> BTreeSet<PathBuf> {
    let sender = Sender::new(bind);
    let records = example_records(5 * (stream.as_millis() / 100) as usize, name);
    let start = SystemTime::now();
    let started = Instant::now();
    let (from, to) = (start + range.0, start + range.1);
    let mut hold_written = None;
    for (i, chunk) in records.chunks(5).enumerate() {
        if hold_written.is_none() && started.elapsed() >= hold_at {
            // Written in local time two hours east of UTC.
            write_hold(
                holds,
                "incident",
                &rfc3339(from, 120),
                &rfc3339(to, 120),
                Some(&[name]),
            );
            hold_written = Some(SystemTime::now());
        }
        for d in chunk {
            sender.send(d);
        }
        let due = started + Duration::from_millis(100 * (i as u64 + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    relay.wait_received(records.len() as u64, Duration::from_secs(30));
    let archive = relay.archive_dir();
    // Every file closed overlapping the hold is kept; every other one goes
    // once its span ended 2 s ago (the last one closes a second after the
    // stream and goes 2 s later, at the next pass).
    let expected = || {
        set(closed_paths(&relay.events())
            .into_iter()
            .filter(|p| overlaps(p, from, to)))
    };
    wait_until(
        Duration::from_secs(20),
        || part_files(&archive).is_empty() && set(avro_files(&archive)) == expected(),
        || {
            format!(
                "the files left are not the held ones:\nleft {:#?}\nheld {:#?}\n{}",
                avro_files(&archive),
                expected(),
                relay.stderr()
            )
        },
    );
    let closed = closed_paths(&relay.events());
    let kept = expected();
    assert!(kept.len() >= 2, "the hold overlaps {} files", kept.len());
    assert!(
        closed.len() >= kept.len() + 4,
        "{} files closed, {} kept",
        closed.len(),
        kept.len()
    );
    // held_bytes is the bytes of the held files.
    let held_bytes: u64 = kept
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    wait_until(
        Duration::from_secs(5),
        || {
            relay
                .last_stats()
                .is_some_and(|s| s.counters.held_bytes == held_bytes)
        },
        || format!("held_bytes is not {held_bytes}: {:?}", relay.last_stats()),
    );
    // Made before its range, a hold keeps files written after it was made.
    if hold_at < range.0 {
        let made = hold_written.unwrap();
        assert!(
            kept.iter().all(|f| name_span(f).unwrap().1 > made),
            "a kept file was closed before the hold was made"
        );
    }
    kept
}

#[test]
fn a_hold_keeps_exactly_the_files_it_overlaps_until_it_is_removed() {
    let dir = tempdir();
    let holds = dir.path().join("holds");
    let mut opts = ChannelOpts::unicast("hold-age");
    opts.archive = vec![
        "codec = \"null\"".into(),
        "flush_interval = \"200ms\"".into(),
        "rotate_interval = \"1s\"".into(),
        "retention_age = \"2s\"".into(),
    ];
    let relay = Relay::start_with(dir.path(), &opts, |c| {
        c.arg("--holds-dir").arg(&holds);
    });
    // A 2 s window in the middle of 8 s of records, held from within it.
    let kept = hold_against_age(
        "hold-age",
        &holds,
        &relay,
        opts.bind,
        Duration::from_secs(8),
        Duration::from_millis(3_500),
        (Duration::from_secs(3), Duration::from_secs(5)),
    );
    let archive = relay.archive_dir();
    let records_kept = read_archive(&archive);
    assert!(!records_kept.is_empty());
    // The hold goes: so do its files, at the next pass.
    std::fs::remove_file(holds.join("incident.json")).unwrap();
    let removed = Instant::now();
    wait_until(
        Duration::from_secs(5),
        || avro_files(&archive).is_empty(),
        || format!("held files outlived their hold: {:?}", avro_files(&archive)),
    );
    assert!(
        removed.elapsed() < Duration::from_secs(3),
        "{:?}",
        removed.elapsed()
    );
    assert!(kept.iter().all(|f| !f.exists()));
    let (events, stderr) = stop_with_events(relay);
    let last = last_stats(&events).unwrap();
    assert_eq!(last.counters.held_bytes, 0, "{last:?}");
    assert!(
        stderr.contains("retention: keeping files past the retention limits for holds"),
        "{stderr}"
    );
}

#[test]
fn a_hold_made_before_its_range_keeps_the_files_written_in_it() {
    let dir = tempdir();
    let holds = dir.path().join("holds");
    let mut opts = ChannelOpts::unicast("hold-ahead");
    opts.archive = vec![
        "codec = \"null\"".into(),
        "flush_interval = \"200ms\"".into(),
        "rotate_interval = \"1s\"".into(),
        "retention_age = \"2s\"".into(),
    ];
    // The holds folder from the environment this time.
    let relay = Relay::start_with(dir.path(), &opts, |c| {
        c.env("SPEEDDATA_HOLDS_DIR", &holds);
    });
    let kept = hold_against_age(
        "hold-ahead",
        &holds,
        &relay,
        opts.bind,
        Duration::from_secs(7),
        Duration::ZERO,
        (Duration::from_secs(2), Duration::from_secs(4)),
    );
    assert!(kept.iter().all(|f| f.exists()));
    stop_with_events(relay);
}

#[test]
fn held_files_count_toward_retention_size_but_are_never_deleted() {
    let dir = tempdir();
    let holds = dir.path().join("holds");
    let mut opts = ChannelOpts::unicast("hold-size");
    opts.archive = vec![
        "codec = \"null\"".into(),
        "block_size = \"8KiB\"".into(),
        "rotate_size = \"64KiB\"".into(),
        "retention_size = \"200KiB\"".into(),
    ];
    let relay = Relay::start_with(dir.path(), &opts, |c| {
        c.arg("--holds-dir").arg(&holds);
    });
    let archive = relay.archive_dir();
    let schema = example_schema();
    let records: Vec<Vec<u8>> = (0..12_000)
        .map(|i| example_datum(&schema, i, if i < 6_000 { "held" } else { "not held" }))
        .collect();
    // A hold from an hour ago to 5 s from now, then the first half (more
    // than retention_size: the hold keeps it all), then, past the hold's
    // end, the rest.
    let before = SystemTime::now() - Duration::from_secs(3_600);
    let held_until = SystemTime::now() + Duration::from_secs(5);
    write_hold(
        &holds,
        "first-half",
        &rfc3339(before, 0),
        &rfc3339(held_until, -300),
        None,
    );
    relay.feed(opts.bind, &records[..6_000], 20);
    let wait = held_until
        .duration_since(SystemTime::now())
        .expect("the first half took longer than the hold");
    std::thread::sleep(wait + Duration::from_millis(100));
    relay.feed(opts.bind, &records[6_000..], 20);
    let is_held = |f: &Path| overlaps(f, before, held_until);
    // Every closed file not held goes: the held ones alone are over 200KiB.
    wait_until(
        Duration::from_secs(10),
        || avro_files(&archive).iter().all(|f| is_held(f)),
        || format!("unheld files left: {:?}", avro_files(&archive)),
    );
    let logged = |stderr: &str| {
        stderr
            .matches("retention: keeping files past the retention limits for holds")
            .count()
    };
    // Logged when the files kept change, not at every pass.
    std::thread::sleep(Duration::from_secs(3));
    let logged_before = logged(&relay.stderr());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        logged(&relay.stderr()),
        logged_before,
        "logged at every pass"
    );
    let (events, stderr) = stop_with_events(relay);

    let files = avro_files(&archive);
    assert!(
        !files.is_empty() && files.iter().all(|f| is_held(f)),
        "{files:?}"
    );
    let sizes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(sizes > 200 << 10, "the held files hold {sizes} bytes");
    let closed = closed_paths(&events);
    assert!(
        closed.len() > files.len() + 2,
        "{} closed, {} kept",
        closed.len(),
        files.len()
    );
    let last = last_stats(&events).unwrap();
    assert!(last.last);
    assert_eq!(last.counters.held_bytes, sizes, "{last:?}");
    // Kept: the first half, then what went on into the file open when the
    // hold was made.
    let got = read_archive(&archive);
    assert!(got.len() >= 6_000 && got[..] == records[..got.len()]);
    let n = logged(&stderr);
    assert!((1..=3).contains(&n), "logged {n} times:\n{stderr}");
}

#[test]
fn time_field_must_be_a_timestamp_field_of_the_schema() {
    let dir = tempdir();
    for (field, ok, says) in [
        ("time", true, ""),
        ("nonesuch", false, "has no field \"nonesuch\""),
        ("counter", false, "\"counter\" is int"),
        ("time.x", false, "not a record"),
    ] {
        let p = write_config(
            dir.path(),
            &format!(
                "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\n[archive]\ndir = \"a\"\ntime_field = \"{field}\"\n"
            ),
        );
        let (code, _, err) = run_relay(&["check", "--config", p.to_str().unwrap()]);
        if ok {
            assert_eq!(code, 0, "{field}: {err}");
            continue;
        }
        assert_eq!(code, 78, "{field}: {err}");
        assert!(
            err.contains("bad.toml") && err.contains("archive.time_field") && err.contains(says),
            "{field}: {err}"
        );
    }
}

/// An archive that cannot keep up at its zstd level (19, slow, with a
/// small queue) compresses less instead of dropping: the level on the
/// stats lines goes down, the time below it is counted, and every file
/// (stored blocks among them) reads back whole with both readers.
/// `adaptive = false` keeps the level.
#[test]
fn an_archive_that_cannot_keep_up_compresses_less_and_stays_readable() {
    let message = "x".repeat(700);
    let records = example_records(20_000, &message);
    for adaptive in [true, false] {
        let dir = tempdir();
        let mut opts = ChannelOpts::unicast(&format!("adaptive-{adaptive}"));
        opts.archive = vec![
            "codec = \"zstd\"".into(),
            "level = 19".into(),
            format!("adaptive = {adaptive}"),
            "queue = \"1MiB\"".into(),
        ];
        let relay = Relay::start(dir.path(), &opts);
        // Bounded: 20,000 datagrams of about 760 bytes, 40 a millisecond.
        relay.feed(opts.bind, &records, 40);
        relay.wait_received(records.len() as u64 / 2, Duration::from_secs(30));
        let (archive, last) = relay.stop_ok();
        assert_balanced(&last);
        let got = read_archive(&archive);
        assert_eq!(got.len() as u64, last.counters.archived);
        let degraded = last.counters.archive_degraded_ms;
        if adaptive {
            assert!(degraded > 0, "the level went down under load: {last:?}");
        } else {
            assert_eq!(degraded, 0, "{last:?}");
            assert_eq!(last.archive_level, Some(19), "{last:?}");
            assert!(!last.archive_stored);
        }
    }
}

/// With `compress_threads = 3`, blocks are compressed on three threads and
/// written in order: rotated by size and flushed by time, the files read
/// back whole with both readers, every record once and in order, and the
/// log says how many threads compress.
#[test]
fn blocks_compressed_on_several_threads_are_archived_whole_and_in_order() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("pool");
    opts.archive = vec![
        "codec = \"zstd\"".into(),
        "level = 3".into(),
        "compress_threads = 3".into(),
        "block_size = \"8KiB\"".into(),
        "rotate_size = \"64KiB\"".into(),
        "flush_interval = \"20ms\"".into(),
    ];
    let relay = Relay::start(dir.path(), &opts);
    let records = example_records(20_000, &"pooled ".repeat(40));
    relay.feed(opts.bind, &records, 40);
    let stderr = relay.stderr();
    let (archive, last) = relay.stop_ok();
    assert_balanced(&last);
    assert!(
        stderr.contains("compressed on 3 threads"),
        "the log does not say how many threads compress:\n{stderr}"
    );
    let files = avro_files(&archive);
    assert!(
        files.len() >= 5,
        "expected several files, got {}",
        files.len()
    );
    assert_eq!(last.counters.files_closed as usize, files.len());
    assert_eq!(last.counters.archived, records.len() as u64);
    let got = read_archive(&archive);
    assert!(
        got == records,
        "records across files are missing, doubled or out of order"
    );
}

#[test]
fn compress_threads_must_be_in_range() {
    let dir = tempdir();
    for (n, ok) in [("1", true), ("8", true), ("0", false), ("65", false)] {
        let p = write_config(
            dir.path(),
            &format!(
                "schema = \"schema.avsc\"\n[receive]\nbind = \"127.0.0.1:1\"\n[archive]\ndir = \"a\"\ncompress_threads = {n}\n"
            ),
        );
        let (code, _, err) = run_relay(&["check", "--config", p.to_str().unwrap()]);
        if ok {
            assert_eq!(code, 0, "{n}: {err}");
            continue;
        }
        assert_eq!(code, 78, "{n}: {err}");
        assert!(
            err.contains("bad.toml")
                && err.contains("archive.compress_threads")
                && err.contains("out of range (1 to 64)"),
            "{n}: {err}"
        );
    }
}
