//! End-to-end tests of `orchestrator`: the real binary supervising real
//! `relay-channel` processes over loopback.

use std::time::{Duration, Instant};

use speeddata_api::{Event, EventKind, State};
use speeddata_tests::fleet::*;
use speeddata_tests::*;

/// Whether an event is one of `channel`'s.
fn of(e: &Event, channel: &str) -> bool {
    e.channel.as_deref() == Some(channel)
}

/// The names of `channel`'s events, in order.
fn story_of<'a>(events: &'a [Event], channel: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| of(e, channel))
        .map(|e| e.kind.name())
        .collect()
}

/// The event stream, replayed from the start, until `channel` has said
/// `ready` `times` times (or 5 s passed).
fn events_until_ready(orch: &Orchestrator, channel: &str, times: usize) -> Vec<Event> {
    orch.events(Duration::from_secs(5), |ev| {
        story_of(ev, channel)
            .iter()
            .filter(|e| **e == "ready")
            .count()
            >= times
    })
}

#[test]
fn a_killed_channel_comes_back_and_the_others_lose_nothing() {
    let fleet = FleetDir::new(&["backoff_initial = \"100ms\"", "max_restarts = 100"]);
    let mut opts = Vec::new();
    let mut receivers = Vec::new();
    for name in ["victim", "steady-a", "steady-b"] {
        let (o, full) = channel_with_output(name);
        fleet.add(&o);
        opts.push(o);
        receivers.push(full);
    }
    let orch = fleet.start();
    for o in &opts {
        orch.wait_ready(&o.name);
    }
    let rx: Vec<GroupReceiver> = receivers.iter().map(|g| GroupReceiver::join(*g)).collect();

    // Steady traffic to every channel for about 4 s.
    let records = example_records(4_000, "steady");
    let senders = send_paced_to_each(opts.iter().map(|o| o.bind), &records, 1);

    // Kill the victim's relay again and again.
    let mut kill_to_ready = Vec::new();
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(300));
        let before = orch.wait_ready("victim");
        let old = pid_of(&before);
        let t0 = Instant::now();
        kill(old, libc::SIGKILL);
        let back = orch.wait_channel("victim", Duration::from_secs(20), |c| {
            c.state == State::Ready && c.pid.is_some_and(|p| p != old)
        });
        kill_to_ready.push(t0.elapsed());
        assert_eq!(back.restarts, round as u64 + 1, "{back:?}");
    }
    assert!(
        kill_to_ready[0] < Duration::from_secs(1),
        "kill to ready took {:?} at the first backoff step",
        kill_to_ready[0]
    );
    for s in senders {
        s.join().unwrap();
    }
    for o in &opts[1..] {
        orch.wait_channel(&o.name, Duration::from_secs(30), |c| {
            counters(c).map(|n| n.received) == Some(4_000)
                && counters(c).map(|n| n.archived) == Some(4_000)
        });
    }
    let victim = orch.channel("victim").unwrap();
    assert_eq!(
        victim.last_exit.as_ref().and_then(|e| e.signal),
        Some(libc::SIGKILL),
        "{victim:?}"
    );

    // The event stream tells the story of the victim, in order.
    let events = events_until_ready(&orch, "victim", 5);
    let story = story_of(&events, "victim");
    let expected_round = ["exited", "restarting", "started", "ready"];
    assert_eq!(&story[..2], ["started", "ready"], "{story:?}");
    for round in 0..4 {
        assert_eq!(
            &story[2 + 4 * round..6 + 4 * round],
            expected_round,
            "{story:?}"
        );
    }
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "events out of order: {seqs:?}"
    );
    let untouched: Vec<&Event> = events
        .iter()
        .filter(|e| of(e, "steady-a") || of(e, "steady-b"))
        .collect();
    assert_eq!(
        untouched.len(),
        4,
        "the other channels were touched: {untouched:?}"
    );

    // Stop the fleet: the steady channels lost nothing, anywhere.
    let mut orch = orch;
    orch.signal(libc::SIGTERM);
    assert_eq!(orch.wait_exit(Duration::from_secs(30)), 0);
    std::thread::sleep(Duration::from_millis(200));
    let mut rx = rx.into_iter();
    let _victim_rx = rx.next().unwrap().finish();
    for (o, r) in opts[1..].iter().zip(rx) {
        let got = r.finish();
        assert!(
            got == records,
            "{}: the full-rate receiver lost datagrams ({} of 4000)",
            o.name,
            got.len()
        );
        let files = avro_files(&fleet.archive_dir(&o.name));
        assert!(
            read_with_apache_avro(&files) == records,
            "{}: archive differs",
            o.name
        );
        assert!(part_files(&fleet.archive_dir(&o.name)).is_empty());
    }
}

#[test]
fn a_channel_that_cannot_start_is_parked_as_failed_without_spinning() {
    let fleet = FleetDir::new(&[
        "backoff_initial = \"50ms\"",
        "max_restarts = 3",
        "restart_window = \"60s\"",
        "cooldown = \"1h\"",
    ]);
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut bad = ChannelOpts::unicast("port-taken");
    bad.bind = match taken.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let (good, _) = channel_with_output("good");
    fleet.add(&bad);
    fleet.add(&good);
    let orch = fleet.start();
    orch.wait_ready("good");
    let failed = orch.wait_channel("port-taken", Duration::from_secs(20), |c| {
        c.state == State::Failed
    });
    assert_eq!(failed.restarts, 3, "{failed:?}");
    assert!(
        failed.reason.as_deref().unwrap().contains("4 failures"),
        "{failed:?}"
    );
    let stderr = failed.last_stderr.join("\n");
    assert!(
        stderr.contains("receive.bind") && stderr.to_lowercase().contains("in use"),
        "{stderr}"
    );
    assert_eq!(failed.last_exit.as_ref().and_then(|e| e.code), Some(1));
    assert!(failed.pid.is_none());

    // Parked: no more attempts, and the orchestrator sleeps.
    let ticks = cpu_ticks(orch.pid());
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(orch.pid()) - ticks;
    assert!(
        spent <= 10,
        "the orchestrator used {spent} ticks of CPU in 2 s while the channel was parked"
    );
    assert_eq!(orch.channel("port-taken").unwrap().restarts, 3);

    // The good channel runs on and moves data.
    let records = example_records(500, "good");
    Sender::new(good.bind).send_paced(&records, 5);
    orch.wait_channel("good", Duration::from_secs(20), |c| {
        counters(c).is_some_and(|n| n.received == 500)
    });
    assert_eq!(orch.channel("good").unwrap().restarts, 0);

    // /readyz says not everything is ready; an operator restart tries again.
    let r = orch.get("/readyz");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("port-taken"), "{}", r.body);
    drop(taken);
    let r = orch.request("POST", "/api/v1/channels/port-taken/restart");
    assert!(
        r.status == 202 || r.status == 200,
        "{} {}",
        r.status,
        r.body
    );
    orch.wait_ready("port-taken");
    assert_eq!(orch.get("/readyz").status, 200);
}

#[test]
fn channels_d_changes_start_stop_and_restart_exactly_the_channels_concerned() {
    let fleet = FleetDir::new(&[]);
    let (a, _) = channel_with_output("alpha");
    let (b, _) = channel_with_output("beta");
    fleet.add(&a);
    fleet.add(&b);
    let orch = fleet.start();
    let pid_a = pid_of(&orch.wait_ready("alpha"));
    let pid_b = pid_of(&orch.wait_ready("beta"));
    Sender::new(b.bind).send_paced(&example_records(100, "beta"), 5);
    orch.wait_channel("beta", Duration::from_secs(20), |c| {
        counters(c).is_some_and(|n| n.received == 100)
    });

    // Added file: a new channel starts; the others keep their pids.
    let (c, _) = channel_with_output("gamma");
    fleet.add(&c);
    let pid_c = pid_of(&orch.wait_ready("gamma"));

    // Removed file: that channel stops, its archive finalized.
    fleet.remove("beta.toml");
    let end = Instant::now() + Duration::from_secs(20);
    while orch.channel("beta").is_some() {
        assert!(Instant::now() < end, "beta was not stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!running(pid_b));
    assert!(part_files(&fleet.archive_dir("beta")).is_empty());
    assert_eq!(
        read_with_apache_avro(&avro_files(&fleet.archive_dir("beta"))).len(),
        100
    );

    // Changed file: only that channel restarts.
    let mut a2 = a.clone();
    a2.archive = vec!["codec = \"deflate\"".into()];
    fleet.add(&a2);
    let a_now = orch.wait_channel("alpha", Duration::from_secs(20), |c| {
        c.state == State::Ready && c.pid.is_some_and(|p| p != pid_a)
    });
    assert_eq!(a_now.restarts, 1);
    assert_eq!(pid_of(&orch.channel("gamma").unwrap()), pid_c);

    // Broken file: reported, and the running instance is left alone.
    fleet.write("gamma.toml", "this is not = [valid toml");
    let broken = orch.wait_channel("gamma", Duration::from_secs(20), |c| {
        c.config_error.is_some()
    });
    assert!(
        broken
            .config_error
            .as_deref()
            .unwrap()
            .contains("gamma.toml"),
        "{broken:?}"
    );
    assert_eq!(pid_of(&broken), pid_c);
    assert_eq!(broken.state, State::Ready);
    assert!(orch
        .metrics()
        .contains("speeddata_channel_config_error{channel=\"gamma\"} 1"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pid_of(&orch.channel("gamma").unwrap()), pid_c);

    // A broken new file: reported as a failed channel, nothing started.
    fleet.write("delta.toml", "[receive]\nbind = \"nowhere\"\n");
    let delta = orch.wait_channel("delta", Duration::from_secs(20), |c| {
        c.state == State::Failed
    });
    assert!(
        delta
            .config_error
            .as_deref()
            .unwrap()
            .contains("receive.bind"),
        "{delta:?}"
    );
    assert!(delta.pid.is_none());

    // Fixed file, same as before: the error clears, no restart.
    fleet.add(&c);
    orch.wait_channel("gamma", Duration::from_secs(20), |c| {
        c.config_error.is_none()
    });
    assert_eq!(pid_of(&orch.channel("gamma").unwrap()), pid_c);
    assert_eq!(orch.channel("gamma").unwrap().restarts, 0);

    // SIGHUP reloads too: nothing changed, nothing restarts.
    orch.signal(libc::SIGHUP);
    let reloaded_on_sighup =
        |e: &Event| matches!(&e.kind, EventKind::Reloaded { reason, .. } if reason == "SIGHUP");
    let events = orch.events(Duration::from_secs(10), |ev| {
        ev.iter().any(reloaded_on_sighup)
    });
    assert!(events.iter().any(reloaded_on_sighup));
    assert!(events
        .iter()
        .any(|e| matches!(e.kind, EventKind::ConfigError { .. }) && of(e, "gamma")));
    assert_eq!(pid_of(&orch.channel("gamma").unwrap()), pid_c);
    assert_eq!(pid_of(&orch.channel("alpha").unwrap()), pid_of(&a_now));
}

#[test]
fn sigterm_finalizes_every_archive_and_kill_9_leaves_no_child() {
    let fleet = FleetDir::new(&[]);
    let (a, _) = channel_with_output("one");
    let (b, _) = channel_with_output("two");
    fleet.add(&a);
    fleet.add(&b);
    let mut orch = fleet.start();
    orch.wait_ready("one");
    orch.wait_ready("two");
    let records = example_records(1_000, "finalize");
    Sender::new(a.bind).send_paced(&records, 5);
    Sender::new(b.bind).send_paced(&records, 5);
    for n in ["one", "two"] {
        orch.wait_channel(n, Duration::from_secs(20), |c| {
            counters(c).is_some_and(|s| s.received == 1_000)
        });
    }
    let pids: Vec<u32> = ["one", "two"]
        .iter()
        .map(|n| pid_of(&orch.channel(n).unwrap()))
        .collect();
    orch.signal(libc::SIGTERM);
    assert_eq!(orch.wait_exit(Duration::from_secs(30)), 0, "{}", orch.log());
    for (n, pid) in ["one", "two"].iter().zip(pids) {
        assert!(!running(pid), "{n} still runs");
        assert!(
            part_files(&fleet.archive_dir(n)).is_empty(),
            "{n} left a .part"
        );
        assert!(
            read_with_apache_avro(&avro_files(&fleet.archive_dir(n))) == records,
            "{n}"
        );
    }

    // kill -9 of the orchestrator: its children follow within 2 s, and
    // still close their archives (they get SIGTERM).
    let mut orch = fleet.start();
    orch.wait_ready("one");
    orch.wait_ready("two");
    Sender::new(a.bind).send_paced(&records, 5);
    orch.wait_channel("one", Duration::from_secs(20), |c| {
        counters(c).is_some_and(|n| n.received == 1_000)
    });
    let pids: Vec<u32> = ["one", "two"]
        .iter()
        .map(|n| pid_of(&orch.channel(n).unwrap()))
        .collect();
    orch.signal(libc::SIGKILL);
    orch.wait_exit(Duration::from_secs(10));
    let t0 = Instant::now();
    while pids.iter().any(|p| running(*p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "children still run 2 s after kill -9"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(part_files(&fleet.archive_dir("one")).is_empty());
    let all = read_with_apache_avro(&avro_files(&fleet.archive_dir("one")));
    assert_eq!(all.len(), 2_000);
}

#[test]
fn metrics_parse_as_prometheus_text_and_match_the_api() {
    let fleet = FleetDir::new(&[]);
    let (a, _) = channel_with_output("metered");
    fleet.add(&a);
    let orch = fleet.start();
    orch.wait_ready("metered");
    let mut stream = example_records(700, "metered");
    stream.push(b"junk".to_vec());
    Sender::new(a.bind).send_paced(&stream, 5);
    let status = orch.wait_channel("metered", Duration::from_secs(20), |c| {
        counters(c).is_some_and(|n| n.received == 701 && n.archived == 700)
    });
    assert_eq!(counters(&status).map(|n| n.rejected), Some(1));
    let text = orch.metrics();
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out[s.name + str(sorted(s.labels.items()))] = s.value
print(len(out))
for k, v in sorted(out.items()):
    print(k, float(v))
"#;
    let mut py = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(py.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client cannot parse /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "speeddata_channel_received_datagrams_total[('channel', 'metered')] 701.0",
        "speeddata_channel_archived_records_total[('channel', 'metered')] 700.0",
        "speeddata_channel_rejected_datagrams_total[('channel', 'metered')] 1.0",
        "speeddata_channel_state[('channel', 'metered'), ('state', 'ready')] 1.0",
        "speeddata_channel_restarts_total[('channel', 'metered')] 0.0",
    ] {
        assert!(parsed.contains(needle), "{needle} not in:\n{parsed}");
    }
    // The receive thread's longest gap since the last stats line, a gauge
    // in seconds.
    assert!(
        parsed.contains("speeddata_channel_receive_gap_max_seconds[('channel', 'metered')] "),
        "{parsed}"
    );
    // How long ago the relay wrote its last stats line: one comes every
    // second, so well under the 2.5 s after which a report is overdue.
    let age: f64 = parsed
        .lines()
        .find_map(|l| {
            l.strip_prefix("speeddata_channel_stats_age_seconds[('channel', 'metered')] ")
        })
        .unwrap_or_else(|| panic!("no stats_age_seconds for metered in:\n{parsed}"))
        .parse()
        .unwrap();
    assert!((0.0..2.5).contains(&age), "stats age {age} s");
}

#[test]
fn check_catches_every_fleet_conflict_with_file_and_key() {
    let fleet = FleetDir::new(&[]);
    let (a, full) = channel_with_output("first");
    fleet.add(&a);
    // Same receive address as `first`.
    let mut b = ChannelOpts::unicast("second");
    b.bind = a.bind;
    fleet.add(&b);
    // Same name as `first`, in another file.
    let mut c = ChannelOpts::unicast("first");
    c.name = "first".into();
    let text = c
        .toml()
        .replace("\n[archive]\ndir = \"archive\"\n", "\n[archive]\n");
    fleet.write("third.toml", &text);
    // Same output group and port as `first`.
    let mut d = ChannelOpts::unicast("fourth");
    d.full = Some(full);
    fleet.add(&d);
    // Same archive folder as `fifth` (another root, same name).
    let e = ChannelOpts::unicast("fifth");
    fleet.add(&e);
    let f = ChannelOpts::unicast("sixth");
    let text = f
        .toml()
        .replace("name = \"sixth\"", "name = \"fifth\"")
        .replace("\n[archive]\ndir = \"archive\"\n", "\n[archive]\n");
    fleet.write("sixth.toml", &text);

    let cfg = fleet.config();
    let (code, out, err) = run_orchestrator(
        &["check", "--config", cfg.to_str().unwrap()],
        fleet.dir.path(),
    );
    assert_eq!(code, 78, "{out}\n{err}");
    for needle in [
        "second.toml: receive.bind: the receive address",
        "third.toml: name: the name \"first\"",
        "fourth.toml: full.group: the output",
        "sixth.toml: archive.dir: the archive folder",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }

    // Without the conflicting files, all is well.
    for f in ["second.toml", "third.toml", "fourth.toml", "sixth.toml"] {
        fleet.remove(f);
    }
    let (code, out, err) = run_orchestrator(
        &["check", "--config", cfg.to_str().unwrap()],
        fleet.dir.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("2 channel(s), all valid"), "{out}");
}

#[test]
fn status_prints_a_table_of_the_channels() {
    let fleet = FleetDir::new(&[]);
    let (a, _) = channel_with_output("tabled");
    fleet.add(&a);
    let orch = fleet.start();
    orch.wait_ready("tabled");
    let url = format!("http://127.0.0.1:{}", orch.port);
    let (code, out, err) = run_orchestrator(&["status", "--url", &url], fleet.dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("NAME") && out.contains("tabled") && out.contains("ready"),
        "{out}"
    );
    let (code, _, err) =
        run_orchestrator(&["status", "--url", "http://127.0.0.1:1"], fleet.dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("the orchestrator is not running at http://127.0.0.1:1 (connection refused"),
        "{err}"
    );
}

#[test]
fn a_child_never_ready_is_stopped_term_then_kill_and_restarted_with_backoff() {
    let fleet = FleetDir::new(&[
        "start_timeout = \"500ms\"",
        "stop_timeout = \"300ms\"",
        "backoff_initial = \"100ms\"",
        "max_restarts = 2",
        "cooldown = \"1h\"",
    ]);
    // A relay that hangs before `ready` and ignores SIGTERM.
    let fake = fleet.dir.path().join("hanging-relay");
    std::fs::write(
        &fake,
        "#!/bin/sh\ntrap '' TERM\necho 'starting, slowly' >&2\nwhile :; do sleep 1; done\n",
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&fake).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fleet.set_top(&format!("relay_binary = \"{}\"", fake.display()));
    fleet.add(&ChannelOpts::unicast("hangs"));
    let orch = fleet.start();
    let first = orch.wait_channel("hangs", Duration::from_secs(10), |c| {
        c.state == State::Backoff
    });
    assert!(
        first
            .reason
            .as_deref()
            .unwrap()
            .contains("not ready within 500ms"),
        "{first:?}"
    );
    assert_eq!(
        first.last_exit.as_ref().and_then(|e| e.signal),
        Some(libc::SIGKILL),
        "SIGTERM was ignored, so SIGKILL: {first:?}"
    );
    assert!(
        orch.log().contains("did not stop within 300ms; killing it"),
        "{}",
        orch.log()
    );
    let failed = orch.wait_channel("hangs", Duration::from_secs(20), |c| {
        c.state == State::Failed
    });
    assert_eq!(failed.restarts, 2, "{failed:?}");
    assert!(
        failed.last_stderr.join("\n").contains("starting, slowly"),
        "{failed:?}"
    );
}

#[test]
fn systemd_hears_ready_status_watchdog_and_stopping() {
    let fleet = FleetDir::new(&[]);
    fleet.add(&ChannelOpts::unicast("notified"));
    let sock_path = fleet.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut orch = fleet.start_with_watchdog(&[
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    orch.wait_ready("notified");
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let all = got.join("\n");
    assert!(all.contains("READY=1"), "{all}");
    assert!(all.contains("STATUS=1 channels:"), "{all}");
    let pings = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        pings >= 5,
        "{pings} watchdog pings in 3 s at WatchdogSec=0.2s:\n{all}"
    );
    orch.signal(libc::SIGTERM);
    assert_eq!(orch.wait_exit(Duration::from_secs(20)), 0);
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1");
}

#[test]
fn a_hung_relay_is_killed_and_replaced_and_the_others_lose_nothing() {
    let fleet = FleetDir::new(&["liveness_timeout = \"3s\"", "backoff_initial = \"100ms\""]);
    let (frozen, _) = channel_with_output("frozen");
    let (steady, steady_full) = channel_with_output("steady");
    fleet.add(&frozen);
    fleet.add(&steady);
    let orch = fleet.start();
    let old = pid_of(&orch.wait_ready("frozen"));
    orch.wait_ready("steady");
    let rx = GroupReceiver::join(steady_full);

    // Steady traffic to both channels for about 6 s.
    let records = example_records(6_000, "steady");
    let senders = send_paced_to_each([frozen.bind, steady.bind], &records, 1);
    std::thread::sleep(Duration::from_millis(1_500));

    // Freeze the relay: it stays alive but says nothing.
    let t0 = Instant::now();
    kill(old, libc::SIGSTOP);
    let back = orch.wait_channel("frozen", Duration::from_secs(20), |c| {
        c.state == State::Ready && c.pid.is_some_and(|p| p != old)
    });
    let took = t0.elapsed();
    // liveness_timeout (3 s) + backoff (100 ms ± 20%) + a start, with room
    // for a loaded machine.
    assert!(
        took < Duration::from_secs(5),
        "a hung relay took {took:?} to be replaced"
    );
    assert!(
        took >= Duration::from_secs(2),
        "replaced after {took:?}, before liveness_timeout could pass"
    );
    assert!(!running(old), "the hung relay {old} is still there");
    assert_eq!(back.restarts, 1, "{back:?}");
    let last_exit = back.last_exit.as_ref().unwrap();
    assert_eq!(last_exit.signal, Some(libc::SIGKILL), "{back:?}");
    let description = &last_exit.description;
    assert!(description.contains("stopped reporting"), "{description}");

    let events = events_until_ready(&orch, "frozen", 2);
    let story = story_of(&events, "frozen");
    assert_eq!(
        story,
        [
            "started",
            "ready",
            "hung",
            "exited",
            "restarting",
            "started",
            "ready"
        ],
        "{events:?}"
    );
    let hung = events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::Hung { pid, .. } => Some(pid),
            _ => None,
        })
        .unwrap();
    assert_eq!(hung, old, "{events:?}");
    // /metrics counts the kill, for the alert on hung relays.
    let metrics = orch.metrics();
    for series in [
        "speeddata_channel_hung_kills_total{channel=\"frozen\"} 1\n",
        "speeddata_channel_hung_kills_total{channel=\"steady\"} 0\n",
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }

    // The other channel lost nothing and was not touched.
    for s in senders {
        s.join().unwrap();
    }
    let st = orch.wait_channel("steady", Duration::from_secs(30), |c| {
        counters(c).is_some_and(|n| n.received == 6_000 && n.archived == 6_000)
    });
    assert_eq!(st.restarts, 0);
    assert_eq!(counters(&st).map(|n| n.kernel_drops), Some(0), "{st:?}");
    let mut orch = orch;
    orch.signal(libc::SIGTERM);
    assert_eq!(orch.wait_exit(Duration::from_secs(30)), 0);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        rx.finish() == records,
        "steady's full-rate output lost datagrams"
    );
    assert!(read_with_apache_avro(&avro_files(&fleet.archive_dir("steady"))) == records);
}

/// The orchestrator stopped (SIGSTOP, as Ctrl-Z or a
/// debugger would) for longer than `liveness_timeout` while its relays run
/// on. Its own pause must not count against them: once it continues, no
/// healthy relay is killed and every record sent meanwhile is archived. A
/// relay that really is stopped is still replaced, once the orchestrator
/// has watched it for `liveness_timeout`.
#[test]
fn a_paused_orchestrator_kills_no_healthy_relay_and_still_replaces_a_stopped_one() {
    let fleet = FleetDir::new(&["liveness_timeout = \"3s\"", "backoff_initial = \"100ms\""]);
    let mut steady = Vec::new();
    for name in ["steady-a", "steady-b"] {
        let (o, _) = channel_with_output(name);
        fleet.add(&o);
        steady.push(o);
    }
    let (frozen, _) = channel_with_output("frozen");
    fleet.add(&frozen);
    let orch = fleet.start();
    for o in &steady {
        orch.wait_ready(&o.name);
    }
    let old = pid_of(&orch.wait_ready("frozen"));

    // 2,000 records/s to each steady channel for about 13 s.
    let records = example_records(26_000, "paused");
    let senders = send_paced_to_each(steady.iter().map(|o| o.bind), &records, 2);
    std::thread::sleep(Duration::from_millis(1_500));

    // The orchestrator stops for 10 s (over three liveness timeouts); one
    // relay stops with it and stays stopped.
    orch.signal(libc::SIGSTOP);
    kill(old, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(10));
    let resumed = Instant::now();
    orch.signal(libc::SIGCONT);

    let back = orch.wait_channel("frozen", Duration::from_secs(20), |c| {
        c.state == State::Ready && c.pid.is_some_and(|p| p != old)
    });
    let took = resumed.elapsed();
    // Watched for liveness_timeout (3 s) after the orchestrator continued,
    // killed, restarted after 100 ms and ready: within liveness_timeout +
    // 1 s for the kill, with room for a loaded machine for the start.
    assert!(
        took >= Duration::from_secs(2),
        "the stopped relay was replaced {took:?} after the orchestrator continued, before it could have watched it for liveness_timeout"
    );
    assert!(
        took < Duration::from_secs(6),
        "the stopped relay took {took:?} to be replaced after the orchestrator continued"
    );
    assert!(!running(old), "the stopped relay {old} is still there");
    assert_eq!(back.restarts, 1, "{back:?}");
    assert!(
        orch.log()
            .contains("the orchestrator itself did not run for"),
        "the pause is not in the log:\n{}",
        orch.log()
    );

    for s in senders {
        s.join().unwrap();
    }
    for o in &steady {
        let st = orch.wait_channel(&o.name, Duration::from_secs(30), |c| {
            counters(c).is_some_and(|n| n.received == 26_000 && n.archived == 26_000)
        });
        assert_eq!(st.restarts, 0, "{}: restarted: {st:?}", o.name);
        assert_eq!(counters(&st).map(|n| n.kernel_drops), Some(0), "{st:?}");
    }
    let events = events_until_ready(&orch, "frozen", 2);
    for o in &steady {
        let story = story_of(&events, &o.name);
        assert_eq!(story, ["started", "ready"], "{}: {events:?}", o.name);
    }

    let mut orch = orch;
    orch.signal(libc::SIGTERM);
    assert_eq!(orch.wait_exit(Duration::from_secs(30)), 0);
    for o in &steady {
        let files = avro_files(&fleet.archive_dir(&o.name));
        assert!(
            read_with_apache_avro(&files) == records,
            "{}: the archive is not every record sent",
            o.name
        );
    }
}

#[test]
fn a_silent_relay_shows_zero_rates_and_liveness_off_leaves_it_running() {
    let fleet = FleetDir::new(&["liveness_timeout = \"0s\""]);
    let (quiet, _) = channel_with_output("quiet");
    fleet.add(&quiet);
    let orch = fleet.start();
    let pid = pid_of(&orch.wait_ready("quiet"));
    let records = example_records(4_000, "rates");
    let sender = std::thread::spawn(move || Sender::new(quiet.bind).send_paced(&records, 1));
    let moving = orch.wait_channel("quiet", Duration::from_secs(20), |c| {
        c.rates.as_ref().is_some_and(|r| r.received > 100.0)
    });
    let last_report = moving.last_report_at.clone().unwrap();

    kill(pid, libc::SIGSTOP);
    // Past the default liveness_timeout (5 s): with it off, nothing is killed.
    std::thread::sleep(Duration::from_secs(6));
    let silent = orch.channel("quiet").unwrap();
    assert_eq!(pid_of(&silent), pid);
    assert_eq!(silent.state, State::Ready);
    assert!(running(pid));
    let stale = silent.last_report_at.clone().unwrap();
    assert!(stale >= last_report, "{silent:?}");
    let rates = silent.rates.as_ref().unwrap();
    assert!(rates.values().count() > 0);
    for (k, v) in rates.values() {
        assert_eq!(v, 0.0, "{k} of a silent relay: {silent:?}");
    }

    kill(pid, libc::SIGCONT);
    orch.wait_channel("quiet", Duration::from_secs(10), |c| {
        c.last_report_at.as_ref().is_some_and(|t| *t > stale)
    });
    sender.join().unwrap();
    assert_eq!(orch.channel("quiet").unwrap().restarts, 0);
}

#[test]
fn half_open_connections_neither_starve_the_relays_nor_lock_out_the_api() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};

    let fleet = FleetDir::new(&["backoff_initial = \"100ms\""]);
    fleet.add(&ChannelOpts::unicast("victim"));
    fleet.add(&ChannelOpts::unicast("bystander"));
    // Fewer descriptors than the 500 connections below would take, even
    // once the orchestrator has raised its soft limit to the hard one.
    let orch = fleet.start_with_fd_limit(256, 384);
    let old = pid_of(&orch.wait_ready("victim"));
    let bystander = pid_of(&orch.wait_ready("bystander"));
    assert_eq!(open_file_limit(orch.pid()), (384, 384));
    assert_eq!(
        open_file_limit(old),
        (256, 384),
        "a relay gets the soft limit the orchestrator found"
    );

    // 500 connections that never finish their request head.
    let addr: SocketAddr = ([127, 0, 0, 1], orch.port).into();
    let t0 = Instant::now();
    let mut half_open: Vec<TcpStream> = Vec::new();
    let mut not_accepted = None;
    for i in 0..500 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                // A connection already refused may be reset: fine.
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
                half_open.push(s);
            }
            // The listen queue is full: the server no longer accepts.
            Err(e) => {
                not_accepted = Some(format!("connection {i}: {e}"));
                break;
            }
        }
    }

    // Meanwhile a relay is killed: it is started again at once.
    kill(old, libc::SIGKILL);
    let end = Instant::now() + Duration::from_secs(5);
    let new = loop {
        let fresh: Vec<u32> = children(orch.pid())
            .into_iter()
            .filter(|p| *p != old && *p != bystander && running(*p))
            .collect();
        if let [p] = fresh[..] {
            break p;
        }
        assert!(
            Instant::now() < end,
            "no new relay within 5 s of the kill; log:\n{}",
            orch.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(e) = not_accepted {
        panic!("the server stopped accepting: {e}");
    }
    assert!(
        open_files(orch.pid()) < 384,
        "{} descriptors open",
        open_files(orch.pid())
    );

    // The server has closed every one of them without an answer: the
    // oldest at once, each evicted by a newer one beyond the cap (256 here:
    // 384 descriptors less the reserve), the others at the header timeout,
    // all within 15 s.
    let evicted = 500 - 256;
    let deadline = t0 + Duration::from_secs(15);
    for (i, s) in half_open.iter_mut().enumerate() {
        let at_once = i < evicted;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let left = if at_once {
                Duration::from_secs(1)
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "connection {i} still open {:?} after opening ({e}; evicted: {at_once}); log:\n{}",
                    t0.elapsed(),
                    orch.log()
                ),
            }
        }
        assert!(
            got.is_empty(),
            "connection {i}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    drop(half_open);

    // The API answers at once again; the killed channel is back.
    let t = Instant::now();
    let r = orch.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "/healthz took {:?}",
        t.elapsed()
    );
    let back = orch.wait_channel("victim", Duration::from_secs(5), |c| {
        c.state == State::Ready
    });
    assert_eq!(pid_of(&back), new, "{back:?}");
    assert_eq!(back.restarts, 1, "{back:?}");
    assert_eq!(pid_of(&orch.channel("bystander").unwrap()), bystander);
    assert!(
        !orch.log().contains("Too many open files"),
        "{}",
        orch.log()
    );
}

#[test]
fn http_max_connections_below_1_is_a_configuration_error() {
    let fleet = FleetDir::new(&[]);
    let text = std::fs::read_to_string(fleet.config()).unwrap();
    std::fs::write(
        fleet.config(),
        text.replace("[http]\n", "[http]\nmax_connections = 0\n"),
    )
    .unwrap();
    let cfg = fleet.config();
    let (code, out, err) = run_orchestrator(
        &["run", "--config", cfg.to_str().unwrap()],
        fleet.dir.path(),
    );
    assert_eq!(code, 78, "{out}\n{err}");
    let needle = format!("{}: http.max_connections: 0 is out of range", cfg.display());
    assert!(err.contains(&needle), "{needle:?} not in:\n{err}");
}

#[test]
fn a_broken_file_is_counted_and_announced_once_per_change() {
    let fleet = FleetDir::new(&[]);
    fleet.write("broken.toml", "[receive]\nbind = \"nowhere\"\n");
    let orch = fleet.start();
    let count =
        |kind: &str, events: &[Event]| events.iter().filter(|e| e.kind.name() == kind).count();
    let errors_total = || {
        orch.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("speeddata_config_errors_total "))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap()
    };
    orch.wait_channel("broken", Duration::from_secs(20), |c| {
        c.state == State::Failed
    });

    // Reloads that find the file as it was say nothing new.
    for _ in 0..3 {
        orch.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = orch.events(Duration::from_secs(10), |ev| count("reloaded", ev) >= 4);
    assert_eq!(count("reloaded", &events), 4, "{events:?}");
    assert_eq!(count("config_error", &events), 1, "{events:?}");
    assert_eq!(errors_total(), 1);

    // A change of the file, still broken: announced once more.
    fleet.write("broken.toml", "[receive]\nbind = \"still nowhere\"\n");
    let events = orch.events(Duration::from_secs(10), |ev| count("config_error", ev) >= 2);
    assert_eq!(count("config_error", &events), 2, "{events:?}");
    orch.signal(libc::SIGHUP);
    let events = orch.events(Duration::from_secs(10), |ev| count("reloaded", ev) >= 6);
    assert_eq!(count("config_error", &events), 2, "{events:?}");
    assert_eq!(errors_total(), 2);
}
