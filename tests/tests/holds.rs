//! Holds end to end: the real orchestrator and relays, retention by age
//! with files rotated every second, holds made through the API and the
//! command line, kept across restarts, and `orchestrator export` read back
//! with fastavro.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;
use speeddata_api::{ErrorBody, HoldReport, NewHold, State};
use speeddata_tests::fleet::{counters, pid_of, run_orchestrator, FleetDir, Orchestrator};
use speeddata_tests::{bin, kill, overlaps, rfc3339, ChannelOpts};

/// Milliseconds since the epoch.
fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Now, in whole milliseconds: the times of holds go to the millisecond,
/// so the ranges compared here are exactly the ones sent.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis(SystemTime::now()))
}

fn closed(dir: &Path) -> BTreeSet<PathBuf> {
    speeddata_tests::avro_files(dir).into_iter().collect()
}

/// A fleet of one channel `h` rotating every second, retention 2 s.
fn fleet(extra_archive: &[&str]) -> (FleetDir, ChannelOpts) {
    let fleet = FleetDir::new(&["backoff_initial = \"100ms\""]);
    let mut opts = ChannelOpts::unicast("h");
    opts.archive.push("rotate_interval = \"1s\"".into());
    opts.archive.push("retention_age = \"2s\"".into());
    opts.archive.push("flush_interval = \"100ms\"".into());
    for l in extra_archive {
        opts.archive.push(l.to_string());
    }
    fleet.add(&opts);
    (fleet, opts)
}

/// loadgen: `rate` example records a second for `seconds`, then it stops.
fn send(opts: &ChannelOpts, rate: u32, seconds: u32) -> std::process::Child {
    Command::new(bin("loadgen"))
        .args(["--to", &opts.bind.to_string(), "--rate", &rate.to_string()])
        .args(["--count", &(rate * seconds).to_string()])
        .args(["--duration", &format!("{}s", seconds + 5), "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("loadgen")
}

/// A hold of every channel, without a note.
fn new_hold(name: &str, from: &str, to: &str) -> NewHold {
    NewHold {
        name: name.into(),
        from: from.into(),
        to: to.into(),
        channels: None,
        note: None,
    }
}

/// `POST /api/v1/holds`: the status and the hold made, or the status and
/// what is wrong.
fn post_hold(o: &Orchestrator, hold: &NewHold) -> Result<(u16, HoldReport), (u16, ErrorBody)> {
    o.call("POST", "/api/v1/holds", Some(hold))
}

/// The status of a `POST /api/v1/holds`, whatever its body.
fn post_status(o: &Orchestrator, hold: &NewHold) -> u16 {
    match post_hold(o, hold) {
        Ok((status, _)) | Err((status, _)) => status,
    }
}

/// Polls `dir` until `limit`, collecting every closed file seen.
fn watch(dir: &Path, limit: Duration, seen: &mut BTreeSet<PathBuf>) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        seen.extend(closed(dir));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_hold_keeps_exactly_the_files_that_overlap_it_and_its_removal_lets_them_go() {
    let (fleet, opts) = fleet(&[]);
    let o = fleet.start();
    o.wait_ready("h");
    let dir = fleet.archive_dir("h");
    let mut sender = send(&opts, 20, 9);
    let mut seen = BTreeSet::new();
    watch(&dir, Duration::from_secs(3), &mut seen);
    // A hold over the last second (the files that overlap it are at most
    // about 1 s old, retention takes them at 2 s).
    let to = now() - Duration::from_millis(200);
    let from = to - Duration::from_millis(800);
    let (status, body) = post_hold(
        &o,
        &NewHold {
            note: Some("odd spike".into()),
            ..new_hold("incident", &rfc3339(from, 0), &rfc3339(to, 0))
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(status, 201, "{body:?}");
    assert_eq!(body.hold.name, "incident");
    assert_eq!(body.hold.created_by.as_deref(), Some("local"));
    assert_eq!(body.channels[0].channel, "h");
    watch(&dir, Duration::from_secs(6), &mut seen);
    sender.wait().unwrap();
    watch(&dir, Duration::from_secs(4), &mut seen);

    let left = closed(&dir);
    let held: BTreeSet<PathBuf> = seen
        .iter()
        .filter(|p| overlaps(p, from, to))
        .cloned()
        .collect();
    assert!(!held.is_empty(), "some file overlaps the hold: {seen:?}");
    assert_eq!(
        left,
        held,
        "exactly the files that overlap the hold are left (seen {})",
        seen.len()
    );
    assert!(seen.len() >= held.len() + 4, "the others went: {seen:?}");

    // The hold and its bytes, in the API and the stats line.
    let h = o.client().hold("incident").unwrap();
    let files = &h.channels[0].files;
    assert_eq!(files.len(), held.len(), "{h:?}");
    let bytes: u64 = held
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(h.bytes, bytes);
    o.wait_channel("h", Duration::from_secs(5), |c| {
        counters(c).is_some_and(|n| n.held_bytes == bytes)
    });

    // Removed: the files go at the next pass.
    assert_eq!(
        o.send("DELETE", "/api/v1/holds/incident", None, &[]).status,
        204
    );
    let end = Instant::now() + Duration::from_secs(5);
    while !closed(&dir).is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(closed(&dir).is_empty(), "{:?}", closed(&dir));
    assert_eq!(o.get("/api/v1/holds/incident").status, 404);
    assert_eq!(
        o.send("DELETE", "/api/v1/holds/incident", None, &[]).status,
        404
    );
}

#[test]
fn a_hold_made_before_its_range_keeps_later_files_across_restarts_of_everything() {
    let (fleet, opts) = fleet(&[]);
    let mut o = fleet.start();
    let first_pid = pid_of(&o.wait_ready("h"));
    let dir = fleet.archive_dir("h");
    // Made from the command line, its range still to come.
    let config = fleet.config();
    let config = config.to_str().unwrap();
    let from = now() + Duration::from_millis(1500);
    let to = from + Duration::from_millis(1000);
    let (code, out, err) = run_orchestrator(
        &[
            "hold",
            "add",
            "ahead",
            "--from",
            &rfc3339(from, 0),
            "--to",
            &rfc3339(to, 0),
            "--channel",
            "h",
            "--config",
            config,
        ],
        fleet.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("hold ahead: ") && out.contains("h (0 files"),
        "{out}"
    );
    // Relative times, and removal, from the command line too.
    let (code, out, err) = run_orchestrator(
        &[
            "hold", "add", "recent", "--from", "-15m", "--to", "now", "--note", "a look",
            "--config", config,
        ],
        fleet.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let recent = o.client().hold("recent").unwrap();
    let (f, t) = (&recent.hold.from, &recent.hold.to);
    assert!(f < t && t.ends_with('Z'), "{recent:?}");
    let (code, out, _) = run_orchestrator(
        &["hold", "rm", "recent", "--config", config],
        fleet.dir.path(),
    );
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = run_orchestrator(
        &["hold", "rm", "recent", "--config", config],
        fleet.dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    let mut sender = send(&opts, 20, 8);
    let mut seen = BTreeSet::new();
    watch(&dir, Duration::from_secs(5), &mut seen);
    // The relay killed, then the orchestrator stopped and started again.
    kill(first_pid, libc::SIGKILL);
    o.wait_channel("h", Duration::from_secs(10), |c| {
        c.state == State::Ready && c.pid.is_some_and(|p| p != first_pid)
    });
    watch(&dir, Duration::from_secs(1), &mut seen);
    o.signal(libc::SIGTERM);
    assert_eq!(o.wait_exit(Duration::from_secs(20)), 0);
    let o = fleet.start();
    o.wait_ready("h");
    sender.wait().unwrap();
    watch(&dir, Duration::from_secs(4), &mut seen);

    let (code, out, _) = run_orchestrator(&["hold", "ls", "--config", config], fleet.dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("ahead") && out.contains(" h "), "{out}");
    let left = closed(&dir);
    let held: BTreeSet<PathBuf> = seen
        .iter()
        .filter(|p| overlaps(p, from, to))
        .cloned()
        .collect();
    assert!(
        !held.is_empty(),
        "files were written in the range: {seen:?}"
    );
    assert_eq!(
        left, held,
        "the hold survived the restarts and kept what it covers"
    );
}

#[test]
fn export_copies_or_cuts_the_held_records_with_a_manifest() {
    let (fleet, opts) = fleet(&["time_field = \"time\""]);
    let o = fleet.start();
    o.wait_ready("h");
    let dir = fleet.archive_dir("h");
    let mut sender = send(&opts, 50, 6);
    std::thread::sleep(Duration::from_millis(2500));
    let to = now() - Duration::from_millis(300);
    let from = to - Duration::from_millis(1000);
    let (status, _) = post_hold(&o, &new_hold("cut", &rfc3339(from, 0), &rfc3339(to, 0)))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(status, 201);
    sender.wait().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let held: Vec<PathBuf> = closed(&dir).into_iter().collect();
    assert!(!held.is_empty());

    let config = fleet.config();
    let config = config.to_str().unwrap();
    let work = speeddata_tests::tempdir();
    let whole = work.path().join("whole");
    let (code, out, err) = run_orchestrator(
        &[
            "export",
            "cut",
            "--out",
            whole.to_str().unwrap(),
            "--config",
            config,
        ],
        work.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let cut = work.path().join("cut");
    let (code, out, err) = run_orchestrator(
        &[
            "export",
            "cut",
            "--out",
            cut.to_str().unwrap(),
            "--cut",
            "--config",
            config,
        ],
        work.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cut to the range by time"), "{out}");
    // Into a folder that is not empty: refused.
    let (code, _, err) = run_orchestrator(
        &[
            "export",
            "cut",
            "--out",
            cut.to_str().unwrap(),
            "--config",
            config,
        ],
        work.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");

    // fastavro reads everything; the manifests' sha256 and counts match.
    let script = r#"
import hashlib, json, sys, fastavro
whole, cut, lo, hi = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def check(folder):
    m = json.load(open(folder + "/MANIFEST.json"))
    for c in m["channels"]:
        for f in c["files"]:
            data = open(folder + "/" + f["file"], "rb").read()
            assert hashlib.sha256(data).hexdigest() == f["sha256"], f
            assert len(data) == f["bytes"], f
            with open(folder + "/" + f["file"], "rb") as fh:
                assert sum(1 for _ in fastavro.reader(fh)) == f["records"], f
    return m
mw, mc = check(whole), check(cut)
assert mw["hold"]["hold"]["name"] == "cut" and not mw["channels"][0]["cut"]
assert mc["channels"][0]["cut"] and mc["channels"][0]["time_field"] == "time"
records = []
for f in sorted(mw["channels"][0]["files"], key=lambda f: f["file"]):
    with open(whole + "/" + f["file"], "rb") as fh:
        records.extend(fastavro.reader(fh))
def micros(r):
    t = r["time"]
    return int(t.timestamp() * 1_000_000) if hasattr(t, "timestamp") else t
want = [r for r in records if lo * 1000 <= micros(r) <= hi * 1000]
[cf] = mc["channels"][0]["files"]
with open(cut + "/" + cf["file"], "rb") as fh:
    reader = fastavro.reader(fh)
    codec = reader.codec
    got = list(reader)
assert got == want, (len(got), len(want))
assert len(got) > 10, len(got)
print(json.dumps({"whole": len(records), "cut": len(got), "codec": codec}))
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            whole.to_str().unwrap(),
            cut.to_str().unwrap(),
            &millis(from).to_string(),
            &millis(to).to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["codec"], "zstandard", "same codec as the archive: {v}");
    assert!(v["whole"].as_u64() > v["cut"].as_u64(), "{v}");
}

#[test]
fn refusals_name_the_field() {
    let (fleet, _) = fleet(&[]);
    let o = fleet.start();
    o.wait_ready("h");
    let t = now();
    let ms = Duration::from_millis;
    let utc = |t: SystemTime| rfc3339(t, 0);
    let ok = new_hold("one", &utc(t - ms(1000)), &utc(t));
    assert_eq!(post_status(&o, &ok), 201);
    let again = post_hold(&o, &ok);
    assert!(matches!(again, Err((409, _))), "{again:?}");
    for (hold, field) in [
        (new_hold("two", &utc(t), &utc(t - ms(1000))), "to"),
        (new_hold("two", "yesterday", &utc(t)), "from"),
        (new_hold("two", &utc(t), "2026-13-40T00:00:00Z"), "to"),
        (
            NewHold {
                channels: Some(vec!["nope".into()]),
                ..new_hold("two", &utc(t - ms(1)), &utc(t))
            },
            "channels",
        ),
        (new_hold("Two/..", &utc(t - ms(1)), &utc(t)), "name"),
    ] {
        let (s, b) = post_hold(&o, &hold).expect_err("refused");
        assert_eq!(s, 422, "{hold:?}: {b:?}");
        assert_eq!(b.field.as_deref(), Some(field), "{hold:?}: {b:?}");
    }
    // With a token file, no token: 401.
    let fleet2 = FleetDir::new(&[]);
    fleet2.set_token("0123456789abcdef0123456789abcdef");
    fleet2.add(&ChannelOpts::unicast("x"));
    let o2 = fleet2.start();
    o2.wait_ready("x");
    let hold = new_hold("one", &utc(t - ms(1000)), &utc(t));
    assert_eq!(post_status(&o2, &hold), 401);
    assert_eq!(
        o2.send("DELETE", "/api/v1/holds/one", None, &[]).status,
        401
    );
    let r = o2.send(
        "POST",
        "/api/v1/holds",
        Some(&serde_json::to_value(&hold).unwrap()),
        &[("Authorization", "Bearer 0123456789abcdef0123456789abcdef")],
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.parse::<HoldReport>().hold.created_by.as_deref(),
        Some("token")
    );
}
