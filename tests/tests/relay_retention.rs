//! End-to-end tests of `relay-channel`'s closed files and retention: file
//! names that carry each file's span, retention by size and by age, and
//! holds (files in `--holds-dir`) that keep the files they overlap past
//! retention until they are removed.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use relay_channel::status::StatusLine;
use speeddata_tests::*;

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

/// The records of `got` are the last ones of `sent`, in order.
fn is_suffix_of(got: &[Vec<u8>], sent: &[Vec<u8>]) -> bool {
    got.len() <= sent.len() && got == &sent[sent.len() - got.len()..]
}

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

/// A channel whose archive rotates every second and keeps files 2 s
/// (`retention_age`), for [`hold_against_age`].
fn rotating_every_second(name: &str) -> ChannelOpts {
    let mut opts = ChannelOpts::unicast(name);
    opts.archive = vec![
        "codec = \"null\"".into(),
        "flush_interval = \"200ms\"".into(),
        "rotate_interval = \"1s\"".into(),
        "retention_age = \"2s\"".into(),
    ];
    opts
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
    let opts = rotating_every_second("hold-age");
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
    let opts = rotating_every_second("hold-ahead");
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
