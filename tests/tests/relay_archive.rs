//! End-to-end tests of `relay-channel`'s archive: every codec, rotation by
//! size and by time, shutdown and crash recovery, a folder removed under
//! it, symlinks planted in it, and compression that adapts to the load or
//! runs on several threads. Archives are read back with fastavro and
//! apache-avro.

use std::time::{Duration, SystemTime};

use speeddata_tests::*;

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
    assert_kernel_drops_none(&last);
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
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while relay
        .last_stats()
        .is_none_or(|s| s.counters.quarantine_dropped < 20)
    {
        assert!(std::time::Instant::now() < end, "{:?}", relay.last_stats());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = relay.stderr();
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
    // The operator is told what stands there and what to do, not the
    // kernel's "Too many levels of symbolic links".
    assert!(
        log.contains("quarantine.jsonl is a symbolic link") && log.contains("remove the link"),
        "{log}"
    );
    assert!(!log.contains("Too many levels"), "{log}");
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
        // Bounded: 20,000 datagrams of about 760 bytes, 400 a millisecond
        // (300 MB/s asked: the queue passes half within a block at 19).
        relay.feed(opts.bind, &records, 400);
        relay.wait_received(records.len() as u64 / 2, Duration::from_secs(30));
        let log = relay.stderr();
        let (archive, last) = relay.stop_ok();
        assert_balanced(&last);
        let got = read_archive(&archive);
        assert_eq!(got.len() as u64, last.counters.archived);
        let degraded = last.counters.archive_degraded_ms;
        if adaptive {
            assert!(degraded > 0, "the level went down under load: {last:?}");
            // It jumps, not walks: storing is among the first two levels
            // it goes to (a walk would pass 1, -1, -4, ... first).
            let levels: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("compressing less to keep up"))
                .filter_map(|l| l.split("level=").nth(1))
                .collect();
            assert!(
                levels.iter().take(2).any(|l| l.starts_with("stored")),
                "{levels:?}\n{log}"
            );
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

/// The orchestrator ties each relay to its own life with a pipe on the
/// relay's stdin (`SPEEDDATA_LIFELINE=1`), on every platform: when the pipe
/// closes (the orchestrator ended, however), the relay stops as on SIGTERM,
/// every record received archived.
#[test]
fn a_relay_whose_supervisor_is_gone_stops_cleanly_and_keeps_every_record() {
    let dir = tempdir();
    let opts = ChannelOpts::unicast("lifeline");
    let mut relay = Relay::start_with(dir.path(), &opts, |c| {
        c.env(relay_channel::relay::LIFELINE_ENV, "1");
    });
    let records = example_records(500, "lifeline");
    Sender::new(opts.bind).send_paced(&records, 10);
    relay.wait_received(500, Duration::from_secs(30));
    let archive = relay.archive_dir();
    relay.close_stdin();
    assert_eq!(
        relay.wait_exit(Duration::from_secs(10)),
        0,
        "{}",
        relay.stderr()
    );
    let events = relay.events();
    let last = last_stats(&events).expect("a final stats line");
    assert!(last.last, "{last:?}");
    assert!(matches!(
        events.last(),
        Some(relay_channel::status::StatusLine::Stopped(_))
    ));
    assert_eq!(last.counters.archived, 500, "{last:?}");
    assert!(read_archive(&archive) == records);
    assert!(
        relay.stderr().contains("the orchestrator ended"),
        "{}",
        relay.stderr()
    );
}

/// A disk that stays full is one condition, not an error a second: logged
/// once when it starts, once when it ends (with what it lost), and while
/// it lasts at most once a minute. The archive folder is a 1 MiB tmpfs in
/// the relay's own mount namespace (needs root, as CI runs); space is given
/// back by deleting the files through /proc/PID/root.
#[test]
fn a_full_disk_is_logged_when_it_starts_and_when_it_ends_not_every_second() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("full");
    opts.archive = vec!["codec = \"null\"".into(), "block_size = \"64KiB\"".into()];
    let config = write_channel(dir.path(), &opts);
    let archive_dir = dir.path().join("archive");
    std::fs::create_dir_all(&archive_dir).unwrap();
    let mount = format!(
        "mount -t tmpfs -o size=1m tmpfs '{}' && exec \"$0\" \"$@\"",
        archive_dir.display()
    );
    let mut relay = Relay::spawn_wrapped(
        dir.path(),
        &config,
        &opts.name,
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &mount,
        ],
    );
    relay.wait_ready(Duration::from_secs(20));
    let message = "f".repeat(700);
    // About 3.8 MB of records, 4 a millisecond: the 1 MiB fills within the
    // first second, then the archive fails for about three more.
    let records = example_records(5_000, &message);
    relay.feed(opts.bind, &records, 4);
    std::thread::sleep(Duration::from_millis(1_500));
    let during = relay.stderr();
    let started = during.matches("the live outputs go on").count();
    assert_eq!(started, 1, "one line when it starts:\n{during}");
    assert!(!during.contains("still failing"), "{during}");
    assert!(!during.contains("writing again"), "{during}");
    let lost = relay.last_stats().unwrap().counters.archive_dropped;
    assert!(lost > 0, "the disk never filled");

    // Space again: the channel's files deleted where the relay sees them.
    let seen = std::path::PathBuf::from(format!("/proc/{}/root", relay.pid()))
        .join(archive_dir.strip_prefix("/").unwrap())
        .join(&opts.name);
    for f in std::fs::read_dir(&seen).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "avro" || e == "idx") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let more = example_records(200, "after");
    relay.feed(opts.bind, &more, 2);
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !relay.stderr().contains("archive writing again") {
        assert!(std::time::Instant::now() < end, "{}", relay.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = relay.stderr();
    assert_eq!(log.matches("archive writing again").count(), 1, "{log}");
    assert!(log.contains("datagrams lost in all"), "{log}");
    assert_eq!(log.matches("the live outputs go on").count(), 1, "{log}");
    let (_, last) = relay.stop_ok();
    assert_balanced(&last);
    assert!(last.archive_healthy, "{last:?}");
}
